//! `imgtool mkfs f2fs FILE --size SIZE [--offset BYTES]`: format a region of FILE as an empty
//! f2fs, like mkfs.f2fs, with the native formatter in the `f2fs` crate.

use std::fs::{self, File, OpenOptions};
use std::path::PathBuf;

use anyhow::{bail, Context};
use common::size::parse_size;

#[derive(clap::Args)]
pub struct Args {
    /// The image file (created, sparse, if missing; grown to offset + size if shorter).
    pub file: PathBuf,
    /// Size of the region, with a unit: `64 MiB`, `131072 B` (README, "Sizes").
    #[arg(long, value_parser = parse_size)]
    pub size: u64,
    /// Offset of the region in FILE (units as for --size).
    #[arg(long, value_parser = parse_size, default_value = "0")]
    pub offset: u64,
    /// Volume label.
    #[arg(short = 'l', long, default_value = "")]
    pub label: String,
    /// Volume UUID; default: derived from the label and size (reproducible).
    #[arg(short = 'U', long, value_parser = parse_uuid)]
    pub uuid: Option<[u8; 16]>,
    /// Where the region starts on its final disk, for 2 MiB alignment of segment 0 (default:
    /// --offset; give it when formatting a partition image that will be placed elsewhere).
    #[arg(long, value_parser = parse_size)]
    pub disk_offset: Option<u64>,
    /// Leave out the superblock checksum feature (for kernels older than 4.19).
    #[arg(long)]
    pub no_sb_checksum: bool,
    /// Zero the areas f2fs must read as zero even if they look zero already (default: zero
    /// only the blocks that are not zero; nothing in a new file or past the old end).
    #[arg(long)]
    pub zero: bool,
    /// Copy this host directory's files, directories and symlinks into the new root
    /// (a small tree: about 1.7 MiB of data, files up to 3.6 MiB each).
    #[arg(long)]
    pub root: Option<PathBuf>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

fn parse_uuid(s: &str) -> Result<[u8; 16], String> {
    f2fs::parse_uuid(s).ok_or_else(|| {
        format!(
            "`{s}` is not a UUID: write 32 hex digits, e.g. 0f2e7c1a-5b3d-4e6f-8a9b-0c1d2e3f4a5b"
        )
    })
}

fn source_date_epoch() -> anyhow::Result<u64> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Err(_) => Ok(0),
        Ok(v) => v.trim().parse().with_context(|| {
            format!("SOURCE_DATE_EPOCH=`{v}` is not a whole number of seconds; fix or unset it")
        }),
    }
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let end = a
        .offset
        .checked_add(a.size)
        .context("--offset + --size overflows")?;
    let mut opts = f2fs::Options {
        label: a.label.clone(),
        uuid: a.uuid,
        timestamp: source_date_epoch()?,
        sb_checksum: !a.no_sb_checksum,
        disk_offset: a.disk_offset.unwrap_or(a.offset),
        zero: f2fs::ZeroMode::Detect,
        root: match &a.root {
            None => Default::default(),
            Some(dir) => f2fs::tree_from_host(dir)
                .with_context(|| format!("--root {}: cannot read the tree", dir.display()))?,
        },
    };
    // Check everything before touching the file.
    f2fs::plan(a.size, &opts).with_context(|| {
        format!(
            "{}: cannot format {} bytes at offset {}",
            a.file.display(),
            a.size,
            a.offset
        )
    })?;

    let t0 = std::time::Instant::now();
    let plan = if a.file.exists() {
        let meta = fs::metadata(&a.file).with_context(|| a.file.display().to_string())?;
        if !meta.is_file() {
            bail!(
                "{}: not a regular file (format block devices with mkfs.f2fs)",
                a.file.display()
            );
        }
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&a.file)
            .with_context(|| format!("{}: cannot open for writing", a.file.display()))?;
        // Past the old end the file is a fresh hole: it reads as zero.
        opts.zero = if a.zero {
            f2fs::ZeroMode::Always
        } else if a.offset >= meta.len() {
            f2fs::ZeroMode::Assume
        } else {
            f2fs::ZeroMode::Detect
        };
        if meta.len() < end {
            f.set_len(end)
                .with_context(|| format!("{}: cannot grow to {end} bytes", a.file.display()))?;
        }
        let p = f2fs::format(&mut f, a.offset, a.size, &opts)
            .with_context(|| format!("{}: formatting failed", a.file.display()))?;
        f.sync_all()?;
        p
    } else {
        // A new file: build it under a temporary name and rename it into place on success.
        opts.zero = f2fs::ZeroMode::Assume;
        let tmp = common::fs::temp_path(&a.file);
        let res = (|| -> anyhow::Result<f2fs::Plan> {
            let mut f = File::create_new(&tmp)
                .with_context(|| format!("{}: cannot create", tmp.display()))?;
            f.set_len(end)?;
            let p = f2fs::format(&mut f, a.offset, a.size, &opts)?;
            f.sync_all()?;
            fs::rename(&tmp, &a.file).with_context(|| {
                format!("cannot rename {} to {}", tmp.display(), a.file.display())
            })?;
            Ok(p)
        })();
        if res.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        res.with_context(|| format!("{}: formatting failed", a.file.display()))?
    };
    tracing::debug!(elapsed = ?t0.elapsed(), blocks = plan.blocks.len(), "f2fs formatted");

    let g = &plan.geometry;
    let sb = &plan.superblock;
    if a.json {
        let v = serde_json::json!({
            "file": a.file,
            "offset": a.offset,
            "size": a.size,
            "label": sb.label(),
            "uuid": f2fs::format_uuid(&sb.uuid),
            "block_size": 4096,
            "block_count": g.block_count,
            "segment_count": g.segment_count,
            "section_count": g.section_count,
            "segment_count_main": g.segment_count_main,
            "segment0_blkaddr": g.segment0_blkaddr,
            "main_blkaddr": g.main_blkaddr,
            "overprovision_percent": g.overprovision,
            "reserved_segments": g.reserved_segments,
            "overprov_segments": g.overprov_segments,
            "user_blocks": g.user_block_count(),
            "sb_checksum": opts.sb_checksum,
            "blocks_written": plan.blocks.len(),
            "inodes": plan.checkpoint.valid_inode_count,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "{}: f2fs at offset {} size {} bytes: label \"{}\", uuid {}",
            a.file.display(),
            a.offset,
            a.size,
            sb.label(),
            f2fs::format_uuid(&sb.uuid)
        );
        println!(
            "  {} blocks of 4096, {} segments ({} main, {} sections), main area at block {}, \
             {} user blocks ({:.2}% overprovision)",
            g.block_count,
            g.segment_count,
            g.segment_count_main,
            g.section_count,
            g.main_blkaddr,
            g.user_block_count(),
            g.overprovision
        );
    }
    Ok(())
}
