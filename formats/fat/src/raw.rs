//! Direct reads and edits of FAT on-disk structures that fatfs 0.3 does not expose: probing,
//! the root-directory volume label entry, and attribute bytes.
//!
//! Spec: Microsoft "FAT: General Overview of On-Disk Format" (fatgen103),
//! <https://academy.cba.mit.edu/classes/networking_communications/SD/FAT.pdf>, and
//! <https://en.wikipedia.org/wiki/Design_of_the_FAT_file_system>.

use std::io::{self, Read, Seek, SeekFrom, Write};

use crate::{Error, FatType};

pub const ATTR_READ_ONLY: u8 = 0x01;
pub const ATTR_HIDDEN: u8 = 0x02;
pub const ATTR_SYSTEM: u8 = 0x04;
pub const ATTR_VOLUME_ID: u8 = 0x08;
pub const ATTR_DIRECTORY: u8 = 0x10;
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

    /// Byte offset of the boot sector's volume label field.
    pub fn boot_label_offset(&self) -> u64 {
        if self.fat_type == FatType::Fat32 {
            71
        } else {
            43
        }
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
    /// Byte offset of the 32-byte entry in the volume.
    pub offset: u64,
    pub bytes: [u8; 32],
    /// The long name if one precedes it, else the 8.3 name as "NAME.EXT".
    pub name: String,
}

impl RawEntry {
    pub fn attr(&self) -> u8 {
        self.bytes[11]
    }
    pub fn first_cluster(&self) -> u32 {
        ((u16::from_le_bytes([self.bytes[20], self.bytes[21]]) as u32) << 16)
            | u16::from_le_bytes([self.bytes[26], self.bytes[27]]) as u32
    }
}

fn short_name(b: &[u8; 32]) -> String {
    let mut n = b[..8].to_vec();
    if n[0] == 0x05 {
        n[0] = 0xe5;
    }
    let base = String::from_utf8_lossy(&n).trim_end().to_string();
    let ext = String::from_utf8_lossy(&b[8..11]).trim_end().to_string();
    if ext.is_empty() {
        base
    } else {
        format!("{base}.{ext}")
    }
}

/// Every live entry of a directory (volume labels included), and the offset of the first free
/// slot if there is one.
fn list_dir<T: Read + Seek>(
    dev: &mut T,
    bpb: &Bpb,
    first: u32,
) -> io::Result<(Vec<RawEntry>, Option<u64>)> {
    let mut out = Vec::new();
    let mut free = None;
    let mut lfn: Vec<u16> = Vec::new();
    for (start, len) in dir_extents(dev, bpb, first)? {
        let mut buf = vec![0u8; len as usize];
        dev.seek(SeekFrom::Start(start))?;
        dev.read_exact(&mut buf)?;
        for (i, e) in buf.chunks_exact(32).enumerate() {
            let offset = start + i as u64 * ENTRY;
            let e: [u8; 32] = e.try_into().unwrap();
            if e[0] == 0 {
                free.get_or_insert(offset);
                return Ok((out, free));
            }
            if e[0] == 0xe5 {
                free.get_or_insert(offset);
                lfn.clear();
                continue;
            }
            if e[11] & 0x3f == ATTR_LFN {
                let order = (e[0] & 0x1f) as usize;
                if e[0] & 0x40 != 0 {
                    lfn = vec![0xffff; order * 13];
                }
                if order == 0 || order * 13 > lfn.len() {
                    lfn.clear();
                    continue;
                }
                let at = (order - 1) * 13;
                let units = (0..5)
                    .map(|k| 1 + 2 * k)
                    .chain((0..6).map(|k| 14 + 2 * k))
                    .chain((0..2).map(|k| 28 + 2 * k));
                for (j, o) in units.enumerate() {
                    lfn[at + j] = u16::from_le_bytes([e[o], e[o + 1]]);
                }
                continue;
            }
            let name = if lfn.is_empty() {
                short_name(&e)
            } else {
                let end = lfn
                    .iter()
                    .position(|&u| u == 0 || u == 0xffff)
                    .unwrap_or(lfn.len());
                String::from_utf16_lossy(&lfn[..end])
            };
            lfn.clear();
            out.push(RawEntry {
                offset,
                bytes: e,
                name,
            });
        }
    }
    Ok((out, free))
}

fn same_name(a: &str, b: &str) -> bool {
    a.to_lowercase() == b.to_lowercase()
}

/// Find the short entry of `path` ('/'-separated, relative to the root).
pub fn find<T: Read + Seek>(dev: &mut T, bpb: &Bpb, path: &str) -> Result<Option<RawEntry>, Error> {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let mut dir = 0u32;
    for (i, part) in parts.iter().enumerate() {
        let (entries, _) =
            list_dir(dev, bpb, dir).map_err(Error::io(format!("reading directory of {path}")))?;
        let hit = entries.into_iter().find(|e| {
            e.attr() & ATTR_VOLUME_ID == 0
                && (same_name(&e.name, part) || same_name(&short_name(&e.bytes), part))
        });
        match hit {
            None => return Ok(None),
            Some(e) if i + 1 == parts.len() => return Ok(Some(e)),
            Some(e) if e.attr() & ATTR_DIRECTORY != 0 => dir = e.first_cluster(),
            Some(_) => return Ok(None),
        }
    }
    Ok(None)
}

/// The root directory's volume label entry, if any.
pub fn root_label<T: Read + Seek>(dev: &mut T, bpb: &Bpb) -> Result<Option<RawEntry>, Error> {
    let (entries, _) = list_dir(dev, bpb, 0).map_err(Error::io("reading the root directory"))?;
    Ok(entries
        .into_iter()
        .find(|e| e.attr() & 0x3f != ATTR_LFN && e.attr() & ATTR_VOLUME_ID != 0))
}

/// Write `label` (already padded to 11 bytes) into the root directory's label entry, making
/// one in the first free slot if there is none.
pub fn write_root_label<T: Read + Write + Seek>(
    dev: &mut T,
    bpb: &Bpb,
    label: &[u8; 11],
) -> Result<(), Error> {
    let (entries, free) = list_dir(dev, bpb, 0).map_err(Error::io("reading the root directory"))?;
    let existing = entries
        .into_iter()
        .find(|e| e.attr() & 0x3f != ATTR_LFN && e.attr() & ATTR_VOLUME_ID != 0);
    let (offset, mut bytes) = match existing {
        Some(e) => (e.offset, e.bytes),
        None => {
            let off = free.ok_or_else(|| {
                Error::Full("the root directory has no free entry for the volume label".into())
            })?;
            let mut b = [0u8; 32];
            b[11] = ATTR_VOLUME_ID;
            // Fixed timestamp 1980-01-01 00:00 for reproducibility (date 0x0021).
            b[24] = 0x21;
            (off, b)
        }
    };
    bytes[..11].copy_from_slice(label);
    dev.seek(SeekFrom::Start(offset))
        .map_err(Error::io("writing the volume label"))?;
    dev.write_all(&bytes)
        .map_err(Error::io("writing the volume label"))?;
    Ok(())
}

/// Set the attribute bits in `mask` of `path`'s entry to those in `attrs`.
pub fn set_attr<T: Read + Write + Seek>(
    dev: &mut T,
    bpb: &Bpb,
    path: &str,
    attrs: u8,
    mask: u8,
) -> Result<(), Error> {
    let e = find(dev, bpb, path)?.ok_or_else(|| Error::NotFound(path.to_string()))?;
    let a = (e.attr() & !mask) | (attrs & mask);
    dev.seek(SeekFrom::Start(e.offset + 11))
        .map_err(Error::io(format!("setting attributes of {path}")))?;
    dev.write_all(&[a])
        .map_err(Error::io(format!("setting attributes of {path}")))?;
    Ok(())
}

/// Put a new directory's "." and ".." short entries into its slots 0 and 1, as fatgen103
/// requires, with ".." pointing at cluster 0 when the parent is the root. The slots they
/// leave (long-name entries fatfs 0.3 wrote before them) become deleted entries.
pub fn fix_dot_entries<T: Read + Write + Seek>(
    dev: &mut T,
    bpb: &Bpb,
    path: &str,
) -> Result<(), Error> {
    let what = || format!("fixing the '.' and '..' entries of {path}");
    let e = find(dev, bpb, path)?.ok_or_else(|| Error::NotFound(path.to_string()))?;
    let start = bpb.cluster_offset(e.first_cluster());
    let mut buf = vec![0u8; bpb.cluster_size() as usize];
    dev.seek(SeekFrom::Start(start))
        .and_then(|_| dev.read_exact(&mut buf))
        .map_err(Error::io(what()))?;
    let mut dot = None;
    let mut dotdot = None;
    let mut used = 0;
    for (i, slot) in buf.chunks_exact(32).enumerate() {
        if slot[0] == 0 {
            break;
        }
        let name = &slot[..11];
        if slot[11] & 0x3f != ATTR_LFN {
            if name == b".          " {
                dot = Some(i);
            } else if name == b"..         " {
                dotdot = Some(i);
            }
        }
        used = i + 1;
        if dot.is_some() && dotdot.is_some() {
            break;
        }
    }
    let (Some(d), Some(dd)) = (dot, dotdot) else {
        return Err(Error::NotFat(format!(
            "{path}: new directory has no '.' and '..' entries"
        )));
    };
    if d == 0 && dd == 1 {
        return Ok(());
    }
    let mut head = vec![0u8; used * 32];
    head[..32].copy_from_slice(&buf[d * 32..d * 32 + 32]);
    head[32..64].copy_from_slice(&buf[dd * 32..dd * 32 + 32]);
    let parent = path.rsplit_once('/').map(|(p, _)| p).unwrap_or("");
    if parent.is_empty() {
        // fatgen103: ".." of a directory in the root holds cluster 0, even on FAT32.
        head[32 + 20..32 + 22].fill(0);
        head[32 + 26..32 + 28].fill(0);
    }
    for slot in head[64..].chunks_exact_mut(32) {
        slot.fill(0);
        slot[0] = 0xe5;
    }
    dev.seek(SeekFrom::Start(start))
        .and_then(|_| dev.write_all(&head))
        .map_err(Error::io(what()))
}
