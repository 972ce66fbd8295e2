//! Adapters from the layout's fills to the format crates. Each returns a plain message on
//! failure; the caller adds the region and field.

use std::path::Path;

pub struct SquashfsOptions {
    pub comp: String,
    pub all_root: bool,
    pub mtime: u32,
}

/// A reproducible squashfs of `dir` at `out` (parallel block compression; see the squashfs crate).
pub fn build_squashfs(dir: &Path, out: &Path, opts: &SquashfsOptions) -> Result<(), String> {
    let compression = opts.comp.parse::<squashfs::Compression>()?;
    let o = squashfs::Options {
        compression,
        mtime: opts.mtime,
        all_root: opts.all_root,
        ..Default::default()
    };
    squashfs::build_to_file(dir, out, &o)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

pub fn check_squashfs_magic(path: &Path) -> Result<(), String> {
    use std::io::Read;
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
    if &magic != b"hsqs" {
        return Err(format!(
            "`{}` is not a squashfs image (no `hsqs` magic): give a directory to build one from, or a squashfs file",
            path.display()
        ));
    }
    Ok(())
}

/// The env block(s): one, or two for the redundant layout. Both redundant copies are valid;
/// the first (flag 1) is active and the second (flag 0) is what the next `fw_setenv` replaces.
pub fn encode_uboot_env(
    vars: &[(String, String)],
    size: usize,
    redundant: bool,
) -> Result<Vec<Vec<u8>>, String> {
    let mut env = uboot_env::Env::new();
    for (k, v) in vars {
        env.set(k, v).map_err(|e| format!("variable `{k}`: {e}"))?;
    }
    let opts = uboot_env::WriteOptions::STANDARD;
    let block = |flag| env.to_block(size, flag, opts).map_err(|e| e.to_string());
    if redundant {
        Ok(vec![block(Some(1))?, block(Some(0))?])
    } else {
        Ok(vec![block(None)?])
    }
}

/// A FAT filesystem over the whole region, holding `files` (destination path, host file).
pub fn format_fat(
    dev: &mut crate::window::Window<'_>,
    label: Option<&str>,
    files: &[(String, std::path::PathBuf)],
) -> Result<(), String> {
    let opts = fat::FormatOptions {
        label: label.unwrap_or_default().to_string(),
    };
    let size = dev.len();
    fat::format_with_files(dev, size, &opts, files).map_err(|e| e.to_string())
}

/// An empty f2fs in `[offset, offset + size)` of the (fresh, sparse) image.
pub fn format_f2fs(
    file: &std::fs::File,
    offset: u64,
    size: u64,
    label: Option<&str>,
    uuid: Option<[u8; 16]>,
    mtime: u32,
) -> Result<(), String> {
    let opts = f2fs::Options {
        label: label.unwrap_or_default().to_string(),
        uuid,
        timestamp: mtime.into(),
        disk_offset: offset,
        // The writer's temp file is new and regions never overlap: the region is all holes.
        zero: f2fs::ZeroMode::Assume,
        ..Default::default()
    };
    let mut dev = crate::window::Window::new(file, 0, offset + size);
    f2fs::format(&mut dev, offset, size, &opts)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// The partition table a plan's table resolves to.
pub(crate) fn table_spec(t: &crate::plan::TablePlan) -> partition_table::Table {
    use crate::plan::{DiskId, PartitionType};
    use partition_table::{GptPartition, GptSpec, Guid, MbrPartition, MbrSpec, Table};
    match t.disk_id {
        DiskId::Mbr(sig) => {
            let mut spec = MbrSpec {
                disk_signature: sig,
                ..Default::default()
            };
            for p in &t.partitions {
                let PartitionType::Mbr(kind) = p.kind else {
                    unreachable!("resolved with the table")
                };
                spec.partitions[p.number as usize - 1] = Some(MbrPartition {
                    start_lba: p.first_lba as u32,
                    sectors: p.blocks as u32,
                    kind,
                    bootable: p.boot,
                });
            }
            Table::Mbr(spec)
        }
        DiskId::Gpt(guid) => {
            let n = t
                .partitions
                .iter()
                .map(|p| p.number as usize)
                .max()
                .unwrap_or(0);
            let mut spec = GptSpec {
                disk_guid: Guid(guid),
                partitions: vec![None; n],
            };
            for p in &t.partitions {
                let PartitionType::Gpt(type_guid) = p.kind else {
                    unreachable!("resolved with the table")
                };
                spec.partitions[p.number as usize - 1] = Some(GptPartition {
                    start_lba: p.first_lba,
                    sectors: p.blocks,
                    type_guid: Guid(type_guid),
                    guid: Guid(p.guid.unwrap_or_default()),
                    name: p.label.clone().unwrap_or_default(),
                    attributes: p.flags,
                    bootable: p.boot,
                });
            }
            Table::Gpt(spec)
        }
    }
}

/// Write the MBR, or the protective MBR and both GPT copies. Only table sectors are touched.
pub fn write_table(
    file: &std::fs::File,
    disk_size: u64,
    t: &crate::plan::TablePlan,
) -> Result<(), String> {
    use partition_table::Table;
    let mut dev = crate::window::Window::new(file, 0, disk_size);
    match table_spec(t) {
        Table::Mbr(spec) => {
            partition_table::write_mbr(&mut dev, &spec, disk_size).map_err(|e| e.to_string())
        }
        Table::Gpt(spec) => {
            partition_table::write_gpt(&mut dev, &spec, disk_size).map_err(|e| e.to_string())
        }
    }
}
