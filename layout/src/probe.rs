//! Recognise what sits at an offset of an image by its signature: partition tables, kernel
//! images, filesystems. Used by `imgtool inspect`.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct Table {
    #[serde(rename = "type")]
    pub kind: String,
    /// MBR disk signature (`0x...`) or GPT disk GUID.
    pub disk_id: String,
    pub partitions: Vec<Partition>,
}

#[derive(Debug, Serialize)]
pub struct Partition {
    /// 1-based, as Linux names them (vda1).
    pub number: u32,
    pub first_lba: u64,
    pub blocks: u64,
    /// MBR type byte (`0x83`) or GPT type GUID.
    #[serde(rename = "type")]
    pub kind: String,
    pub boot: bool,
    pub name: Option<String>,
    pub guid: Option<String>,
}

pub fn table(file: &File) -> io::Result<Option<Table>> {
    let mut dev = crate::window::Window::new(file, 0, file.metadata()?.len());
    let t = match partition_table::read(&mut dev) {
        Ok(t) => t,
        // A damaged table is reported as none rather than failing the whole inspection.
        Err(partition_table::Error::Io(e)) => return Err(e),
        Err(_) => None,
    };
    Ok(t.map(|t| match t {
        partition_table::Table::Mbr(m) => Table {
            kind: "mbr".into(),
            disk_id: format!("0x{:08x}", m.disk_signature),
            partitions: m
                .partitions
                .iter()
                .enumerate()
                .filter_map(|(i, p)| p.as_ref().map(|p| (i, p)))
                .map(|(i, p)| Partition {
                    number: i as u32 + 1,
                    first_lba: p.start_lba.into(),
                    blocks: p.sectors.into(),
                    kind: format!("0x{:02x}", p.kind),
                    boot: p.bootable,
                    name: None,
                    guid: None,
                })
                .collect(),
        },
        partition_table::Table::Gpt(g) => Table {
            kind: "gpt".into(),
            disk_id: g.disk_guid.to_string(),
            partitions: g
                .partitions
                .iter()
                .enumerate()
                .filter_map(|(i, p)| p.as_ref().map(|p| (i, p)))
                .map(|(i, p)| Partition {
                    number: i as u32 + 1,
                    first_lba: p.start_lba,
                    blocks: p.sectors,
                    kind: p.type_guid.to_string(),
                    boot: p.bootable,
                    name: Some(p.name.clone()),
                    guid: Some(p.guid.to_string()),
                })
                .collect(),
        },
    }))
}

/// What a kernel slot holds.
#[derive(Debug, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Kernel {
    /// An arm64 `Image` (Documentation/arch/arm64/booting.rst): "ARM\x64" at 0x38.
    Arm64Image {
        image_size: u64,
        text_offset: u64,
    },
    /// An x86 bzImage (Documentation/arch/x86/boot.rst): "HdrS" at 0x202.
    X86Bzimage {
        protocol: String,
    },
    Empty,
    Unrecognised,
}

pub fn kernel(file: &File, offset: u64) -> io::Result<Kernel> {
    let mut h = [0u8; 4096];
    let n = file.read_at(&mut h, offset)?;
    let h = &h[..n];
    if h.len() < 0x240 || h.iter().all(|&b| b == 0) {
        return Ok(Kernel::Empty);
    }
    let u64_at = |o: usize| u64::from_le_bytes(h[o..o + 8].try_into().unwrap());
    if &h[0x38..0x3c] == b"ARM\x64" {
        return Ok(Kernel::Arm64Image {
            image_size: u64_at(0x10),
            text_offset: u64_at(0x08),
        });
    }
    if &h[0x202..0x206] == b"HdrS" {
        let v = u16::from_le_bytes([h[0x206], h[0x207]]);
        return Ok(Kernel::X86Bzimage {
            protocol: format!("{}.{:02}", v >> 8, v & 0xff),
        });
    }
    Ok(Kernel::Unrecognised)
}

/// What a partition holds.
#[derive(Debug, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Filesystem {
    Squashfs {
        compression: String,
        inodes: u32,
        bytes_used: u64,
        block_size: u32,
    },
    Fat {
        fat_type: String,
        label: Option<String>,
    },
    F2fs {
        label: String,
        block_size: u32,
        blocks: u64,
        segments: u32,
        uuid: String,
    },
    Empty,
    Unrecognised,
}

pub fn filesystem(file: &File, offset: u64, len: u64) -> io::Result<Filesystem> {
    let mut head = vec![0u8; 8192.min(len as usize)];
    let n = file.read_at(&mut head, offset)?;
    head.truncate(n);
    if head.iter().all(|&b| b == 0) {
        return Ok(Filesystem::Empty);
    }
    if head.len() >= squashfs::ondisk::SUPERBLOCK_SIZE && squashfs::ondisk::is_squashfs(&head) {
        if let Ok(sb) = squashfs::read_superblock(&head[..]) {
            return Ok(Filesystem::Squashfs {
                compression: sb.compressor().name(),
                inodes: sb.inode_count,
                bytes_used: sb.bytes_used,
                block_size: sb.block_size,
            });
        }
    }
    if head.len() >= 1028 && head[1024..1028] == 0xF2F5_2010u32.to_le_bytes() {
        let mut dev = crate::window::Window::new(file, 0, offset + len);
        if let Ok(i) = f2fs::inspect(&mut dev, offset) {
            return Ok(Filesystem::F2fs {
                label: i.label,
                block_size: i.block_size,
                blocks: i.block_count,
                segments: i.segment_count,
                uuid: i.uuid,
            });
        }
    }
    let window = crate::window::Window::new(file, offset, len);
    if let Ok(Some(info)) = fat::probe(window) {
        return Ok(Filesystem::Fat {
            fat_type: info.fat_type.to_string(),
            label: info.label,
        });
    }
    Ok(Filesystem::Unrecognised)
}
