//! Direct, read-only parsing of FAT on-disk structures for [`crate::probe`]: the boot sector
//! and the root directory's volume label entry. It checks what it reads, so a damaged volume
//! is reported rather than mounted.
//!
//! Spec: Microsoft "FAT: General Overview of On-Disk Format" (fatgen103),
//! <https://academy.cba.mit.edu/classes/networking_communications/SD/FAT.pdf>, and
//! <https://en.wikipedia.org/wiki/Design_of_the_FAT_file_system>.

use std::io::{self, Read, Seek, SeekFrom};

use crate::{Error, FatType};

pub const ATTR_VOLUME_ID: u8 = 0x08;
pub const ATTR_LFN: u8 = 0x0f;
const ENTRY: u64 = 32;

/// The BIOS parameter block fields we need, and the geometry derived from them.
#[derive(Debug, Clone)]
pub struct Bpb {
    pub bytes_per_sector: u32,
    pub sectors_per_cluster: u32,
    pub reserved_sectors: u32,
    pub fats: u32,
    pub root_entries: u32,
    pub total_sectors: u32,
    pub sectors_per_fat: u32,
    pub root_cluster: u32,
    pub volume_id: u32,
    pub boot_label: [u8; 11],
    pub fat_type: FatType,
    pub clusters: u32,
}

impl Bpb {
    pub fn parse(b: &[u8; 512]) -> Result<Bpb, String> {
        let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as u32;
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
        if b[510] != 0x55 || b[511] != 0xaa {
            return Err("no 0x55AA boot sector signature".into());
        }
        let bps = u16_at(11);
        let spc = b[13] as u32;
        let reserved = u16_at(14);
        let fats = b[16] as u32;
        let root_entries = u16_at(17);
        let total16 = u16_at(19);
        let fat16 = u16_at(22);
        let total32 = u32_at(32);
        if !bps.is_power_of_two() || !(512..=4096).contains(&bps) {
            return Err(format!("bytes per sector {bps} is not 512..4096"));
        }
        if spc == 0 || !spc.is_power_of_two() {
            return Err(format!("sectors per cluster {spc} is not a power of two"));
        }
        if reserved == 0 || fats == 0 {
            return Err("no reserved sectors or no FATs".into());
        }
        let total = if total16 != 0 { total16 } else { total32 };
        let spf = if fat16 != 0 { fat16 } else { u32_at(36) };
        if total == 0 || spf == 0 {
            return Err("zero total sectors or sectors per FAT".into());
        }
        let root_sectors = (root_entries * 32).div_ceil(bps);
        let data_start = reserved + fats * spf + root_sectors;
        if data_start >= total {
            return Err("the FATs and root directory fill the whole volume".into());
        }
        let clusters = (total - data_start) / spc;
        // fatgen103: the type follows from the cluster count alone.
        let fat_type = if clusters < 4085 {
            FatType::Fat12
        } else if clusters < 65525 {
            FatType::Fat16
        } else {
            FatType::Fat32
        };
        let (volume_id, label_at, root_cluster) = if fat_type == FatType::Fat32 {
            (u32_at(67), 71, u32_at(44))
        } else {
            (u32_at(39), 43, 0)
        };
        let mut boot_label = [0u8; 11];
        boot_label.copy_from_slice(&b[label_at..label_at + 11]);
        Ok(Bpb {
            bytes_per_sector: bps,
            sectors_per_cluster: spc,
            reserved_sectors: reserved,
            fats,
            root_entries,
            total_sectors: total,
            sectors_per_fat: spf,
            root_cluster,
            volume_id,
            boot_label,
            fat_type,
            clusters,
        })
    }

    pub fn cluster_size(&self) -> u64 {
        (self.bytes_per_sector * self.sectors_per_cluster) as u64
    }

    fn fat_offset(&self) -> u64 {
        (self.reserved_sectors * self.bytes_per_sector) as u64
    }

    fn root_offset(&self) -> u64 {
        ((self.reserved_sectors + self.fats * self.sectors_per_fat) * self.bytes_per_sector) as u64
    }

    fn data_offset(&self) -> u64 {
        self.root_offset()
            + (self.root_entries * 32).div_ceil(self.bytes_per_sector) as u64
                * self.bytes_per_sector as u64
    }

    pub(crate) fn cluster_offset(&self, c: u32) -> u64 {
        self.data_offset() + (c as u64 - 2) * self.cluster_size()
    }
}

pub fn read_bpb<T: Read + Seek>(dev: &mut T) -> Result<Bpb, Error> {
    let mut b = [0u8; 512];
    dev.seek(SeekFrom::Start(0))
        .map_err(Error::io("reading the boot sector"))?;
    dev.read_exact(&mut b).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => Error::NotFat("region shorter than a boot sector".into()),
        _ => Error::Io {
            what: "reading the boot sector".into(),
            source: e,
        },
    })?;
    Bpb::parse(&b).map_err(Error::NotFat)
}

fn next_cluster<T: Read + Seek>(dev: &mut T, bpb: &Bpb, c: u32) -> io::Result<Option<u32>> {
    let base = bpb.fat_offset();
    let next = match bpb.fat_type {
        FatType::Fat12 => {
            let off = c as u64 + c as u64 / 2;
            let mut b = [0u8; 2];
            dev.seek(SeekFrom::Start(base + off))?;
            dev.read_exact(&mut b)?;
            let v = u16::from_le_bytes(b) as u32;
            let v = if c & 1 == 1 { v >> 4 } else { v & 0xfff };
            if v >= 0xff8 {
                return Ok(None);
            }
            v
        }
        FatType::Fat16 => {
            let mut b = [0u8; 2];
            dev.seek(SeekFrom::Start(base + c as u64 * 2))?;
            dev.read_exact(&mut b)?;
            let v = u16::from_le_bytes(b) as u32;
            if v >= 0xfff8 {
                return Ok(None);
            }
            v
        }
        FatType::Fat32 => {
            let mut b = [0u8; 4];
            dev.seek(SeekFrom::Start(base + c as u64 * 4))?;
            dev.read_exact(&mut b)?;
            let v = u32::from_le_bytes(b) & 0x0fff_ffff;
            if v >= 0x0fff_fff8 {
                return Ok(None);
            }
            v
        }
    };
    if next < 2 || next >= bpb.clusters + 2 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("cluster chain points at invalid cluster {next}"),
        ));
    }
    Ok(Some(next))
}

/// Byte ranges of a directory: the fixed root region (FAT12/16, `first` = 0) or a chain.
fn dir_extents<T: Read + Seek>(dev: &mut T, bpb: &Bpb, first: u32) -> io::Result<Vec<(u64, u64)>> {
    if first == 0 {
        if bpb.fat_type == FatType::Fat32 {
            // Cluster numbers 0 and 1 are reserved: a root there would recurse forever.
            if bpb.root_cluster < 2 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "FAT32 root cluster {} is not a data cluster",
                        bpb.root_cluster
                    ),
                ));
            }
            return dir_extents(dev, bpb, bpb.root_cluster);
        }
        return Ok(vec![(bpb.root_offset(), bpb.root_entries as u64 * ENTRY)]);
    }
    let mut out = Vec::new();
    let mut c = Some(first);
    // A directory holds at most 65536 entries of 32 bytes (FAT spec, "FAT Directory
    // Structure"): a longer chain loops or lies, and following it could take hours.
    let max = (65536 * ENTRY)
        .div_ceil(bpb.cluster_size().max(1))
        .min(bpb.clusters as u64);
    while let Some(cl) = c {
        if out.len() as u64 > max {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "cluster chain loops",
            ));
        }
        out.push((bpb.cluster_offset(cl), bpb.cluster_size()));
        c = next_cluster(dev, bpb, cl)?;
    }
    Ok(out)
}

/// A short-name directory entry found on disk.
#[derive(Debug, Clone)]
pub struct RawEntry {
    pub bytes: [u8; 32],
}

impl RawEntry {
    pub fn attr(&self) -> u8 {
        self.bytes[11]
    }
}

/// Every live short entry of a directory (volume labels included; long-name parts skipped).
fn list_dir<T: Read + Seek>(dev: &mut T, bpb: &Bpb, first: u32) -> io::Result<Vec<RawEntry>> {
    let mut out = Vec::new();
    for (start, len) in dir_extents(dev, bpb, first)? {
        let mut buf = vec![0u8; len as usize];
        dev.seek(SeekFrom::Start(start))?;
        dev.read_exact(&mut buf)?;
        for e in buf.chunks_exact(ENTRY as usize) {
            let bytes: [u8; 32] = e.try_into().unwrap();
            match bytes[0] {
                0 => return Ok(out),
                0xe5 => {}
                _ if bytes[11] & 0x3f == ATTR_LFN => {}
                _ => out.push(RawEntry { bytes }),
            }
        }
    }
    Ok(out)
}

/// The root directory's volume label entry, if any.
pub fn root_label<T: Read + Seek>(dev: &mut T, bpb: &Bpb) -> Result<Option<RawEntry>, Error> {
    let entries = list_dir(dev, bpb, 0).map_err(Error::io("reading the root directory"))?;
    Ok(entries
        .into_iter()
        .find(|e| e.attr() & 0x3f != ATTR_LFN && e.attr() & ATTR_VOLUME_ID != 0))
}
