//! `imgtool inspect`: what is inside an image. Everything is recognised by its on-disk
//! signature; an env that fails its CRC is reported, never trusted.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::error::{Error, Result};
use crate::probe;

/// Where the U-Boot env sits (bytes). The default is the Nerves layout's.
#[derive(Debug, Clone, Copy)]
pub struct EnvLocation {
    pub offset: u64,
    pub size: u64,
    pub redundant_offset: Option<u64>,
}

impl Default for EnvLocation {
    fn default() -> Self {
        EnvLocation {
            offset: 0x2000,
            size: 0x20000,
            redundant_offset: None,
        }
    }
}

#[derive(Debug, serde::Serialize)]
pub struct Report {
    pub size: u64,
    pub table: Option<probe::Table>,
    pub uboot_env: Option<EnvReport>,
    pub kernel_slots: Vec<SlotReport>,
    pub partitions: Vec<PartitionReport>,
}

#[derive(Debug, serde::Serialize)]
pub struct EnvReport {
    pub offset: u64,
    pub size: u64,
    pub crc_valid: bool,
    /// For the redundant layout: which copy is active (1 or 2) and its flag byte.
    pub active_copy: Option<u8>,
    pub flag: Option<u8>,
    pub vars: Vec<(String, String)>,
}

#[derive(Debug, serde::Serialize)]
pub struct SlotReport {
    pub slot: String,
    pub lba: u64,
    pub contents: probe::Kernel,
}

#[derive(Debug, serde::Serialize)]
pub struct PartitionReport {
    pub number: u32,
    pub first_lba: u64,
    pub blocks: u64,
    pub filesystem: probe::Filesystem,
}

/// Where the image says its env is: the locator record in sector 0 (`uboot_env::locator`), else
/// the default (Nerves' LBA 16). A damaged record is an error, not a guess.
pub fn env_location(path: &Path) -> Result<EnvLocation> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io)?;
    let mut sector = [0u8; 512];
    let n = file.read_at(&mut sector, 0).map_err(io)?;
    match uboot_env::locator::Locator::decode(&sector[..n]) {
        Ok(None) => Ok(EnvLocation::default()),
        Ok(Some(l)) => Ok(EnvLocation {
            offset: l.offset,
            size: l.size.into(),
            redundant_offset: l.redundant_offset,
        }),
        Err(e) => Err(io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            e.to_string(),
        ))),
    }
}

pub fn inspect(path: &Path, env_at: EnvLocation) -> Result<Report> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io)?;
    let size = file.metadata().map_err(io)?.len();
    let table = probe::table(&file).map_err(io)?;
    let uboot_env = read_env(&file, size, env_at).map_err(io)?;

    // The kernel slots are where the (valid) env says they are.
    let mut kernel_slots = Vec::new();
    if let Some(env) = uboot_env.as_ref().filter(|e| e.crc_valid) {
        for slot in ["a", "b"] {
            let key = format!("{slot}.kernel_lba");
            let lba = env
                .vars
                .iter()
                .find(|(k, _)| *k == key)
                .and_then(|(_, v)| v.parse::<u64>().ok());
            if let Some(lba) = lba {
                let contents = probe::kernel(&file, lba * 512).map_err(io)?;
                kernel_slots.push(SlotReport {
                    slot: slot.into(),
                    lba,
                    contents,
                });
            }
        }
    }
    let mut partitions = Vec::new();
    for p in table
        .as_ref()
        .map(|t| t.partitions.as_slice())
        .unwrap_or_default()
    {
        let filesystem = probe::filesystem(&file, p.first_lba * 512, p.blocks * 512).map_err(io)?;
        partitions.push(PartitionReport {
            number: p.number,
            first_lba: p.first_lba,
            blocks: p.blocks,
            filesystem,
        });
    }
    Ok(Report {
        size,
        table,
        uboot_env,
        kernel_slots,
        partitions,
    })
}

fn read_env(file: &File, size: u64, at: EnvLocation) -> std::io::Result<Option<EnvReport>> {
    let ends = at.offset + at.size;
    if ends > size || at.redundant_offset.is_some_and(|r| r + at.size > size) {
        return Ok(None);
    }
    let read = |off: u64| -> std::io::Result<Vec<u8>> {
        let mut b = vec![0u8; at.size as usize];
        file.read_exact_at(&mut b, off)?;
        Ok(b)
    };
    let a = read(at.offset)?;
    if a.iter().all(|&b| b == 0) {
        return Ok(None);
    }
    let mut rep = EnvReport {
        offset: at.offset,
        size: at.size,
        crc_valid: false,
        active_copy: None,
        flag: None,
        vars: Vec::new(),
    };
    match at.redundant_offset {
        None => {
            if let Ok(env) = uboot_env::Env::parse_single(&a) {
                rep.crc_valid = true;
                rep.vars = env
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect();
            }
        }
        Some(ro) => {
            let b = read(ro)?;
            if let Ok(r) = uboot_env::Redundant::parse(&a, &b, uboot_env::FlagRule::UBoot) {
                rep.crc_valid = true;
                rep.active_copy = Some(r.active.index() as u8 + 1);
                rep.flag = Some(r.flag);
                rep.vars = r
                    .env
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect();
            }
        }
    }
    Ok(Some(rep))
}
