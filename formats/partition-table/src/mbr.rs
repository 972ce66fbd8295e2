//! MBR (DOS) partition tables: the one encoder for every MBR imgtool writes (the layout
//! writer and fwup's `mbr_write`), and the reader for `inspect`.
//!
//! Spec: <https://en.wikipedia.org/wiki/Master_boot_record#PTE> (classic generic MBR: 440 bytes
//! bootstrap, disk signature at 440, four 16-byte entries at 446, 0x55AA at 510) and
//! <https://en.wikipedia.org/wiki/Extended_boot_record> (EBRs); Intel's OSIP header as fwup's
//! docs/fwup.md "mbr" describes it.
//!
//! Byte-identical to fwup 1.16 (src/mbr.c):
//! - CHS uses 255 heads and 63 sectors per track. An LBA past cylinder 1023 gets zero CHS
//!   bytes, which is what fwup writes there (it skips those bytes of a zeroed record).
//! - An entry of type 0 still carries its start and count (some layouts keep data there).
//! - Each logical partition has an EBR at its own sector; an EBR's second entry links to the
//!   next EBR (type 0x0f, start relative to the extended partition, one sector).
//!
//! Sectors are serialized with mbrman's `MBRHeader` (an EBR has the same shape). mbrman's own
//! logical-partition writer places EBRs and computes CHS by its own rules, which are not
//! fwup's, so the records are built here.

use std::io::{Read, Seek, Write};

use mbrman::{MBRHeader, MBRPartitionEntry, BOOT_ACTIVE, BOOT_INACTIVE, CHS};

use crate::{Error, SECTOR_SIZE};

const HEADS: u32 = 255;
const SECTORS_PER_TRACK: u32 = 63;
/// Bytes before the disk signature (bootstrap code or an OSIP header).
pub const BOOT_AREA: usize = 440;

/// One partition entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MbrPartition {
    pub start_lba: u32,
    pub sectors: u32,
    /// Partition type (0x83 Linux, 0x0c FAT32 LBA, 0x82 swap, 0x0f extended, ...).
    /// [`MbrSpec::validate`] refuses 0; the encoder writes a type-0 entry with zero flags and
    /// CHS but keeps its start and count, as fwup does.
    pub kind: u8,
    pub bootable: bool,
}

/// A logical partition in the extended partition (primary slot 3, type 0x05 or 0x0f).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogicalPartition {
    /// Sector of the EBR that describes it.
    pub ebr_lba: u32,
    /// `start_lba` is absolute; the EBR stores it relative to `ebr_lba`.
    pub partition: MbrPartition,
}

/// One OS image descriptor (OSII) of an OSIP header.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OsImage {
    pub os_minor: u16,
    pub os_major: u16,
    pub start_block: u32,
    pub ddr_load_address: u32,
    pub entry_point: u32,
    pub size_blocks: u32,
    pub attribute: u8,
}

/// Intel's OS image profile header, kept in the bootstrap area.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Osip {
    pub major: u8,
    pub minor: u8,
    pub pointers: u8,
    /// At most 17 fit the bootstrap area; fwup allows 15.
    pub images: Vec<OsImage>,
}

/// What the first 440 bytes hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum BootArea {
    /// Zeros, as fwup writes without a bootstrap file.
    #[default]
    Zero,
    Code(Box<[u8; BOOT_AREA]>),
    Osip(Osip),
}

/// An MBR: disk signature, the four primary slots (index = slot; `None` = unused), logical
/// partitions and the bootstrap area.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MbrSpec {
    pub disk_signature: u32,
    pub partitions: [Option<MbrPartition>; 4],
    pub logical: Vec<LogicalPartition>,
    pub boot_area: BootArea,
}

/// CHS address of `lba` as fwup computes it: `None` past cylinder 1023 (written as zeros).
pub fn lba_to_chs(lba: u32) -> Option<CHS> {
    (lba <= SECTORS_PER_TRACK * HEADS * 0x3ff).then(|| CHS {
        cylinder: (lba / (SECTORS_PER_TRACK * HEADS)) as u16,
        head: ((lba / SECTORS_PER_TRACK) % HEADS) as u8,
        sector: (lba % SECTORS_PER_TRACK + 1) as u8,
    })
}

fn is_extended(kind: u8) -> bool {
    kind == 0x05 || kind == 0x0f
}

/// The 16-byte entry for `p`, with `start` as the stored start (absolute, or relative in an EBR).
fn entry(p: &MbrPartition, start: u32) -> MBRPartitionEntry {
    if p.kind == 0 {
        return MBRPartitionEntry {
            starting_lba: start,
            sectors: p.sectors,
            ..MBRPartitionEntry::empty()
        };
    }
    let chs = |lba| lba_to_chs(lba).unwrap_or_else(CHS::empty);
    MBRPartitionEntry {
        boot: if p.bootable {
            BOOT_ACTIVE
        } else {
            BOOT_INACTIVE
        },
        first_chs: chs(start),
        sys: p.kind,
        last_chs: chs(start.wrapping_add(p.sectors).wrapping_sub(1)),
        starting_lba: start,
        sectors: p.sectors,
    }
}

fn serialize(h: &MBRHeader) -> Result<[u8; 512], Error> {
    let mut cur = std::io::Cursor::new(vec![0u8; 512]);
    h.write_into(&mut cur)?;
    let mut out = [0u8; 512];
    out.copy_from_slice(cur.get_ref());
    Ok(out)
}

impl Osip {
    /// The header bytes: "$OS$", revision, XOR checksum (the whole header XORs to 0), counts,
    /// size, then one 24-byte descriptor per image.
    pub fn to_bytes(&self) -> Result<Vec<u8>, Error> {
        let size = 32 + 24 * self.images.len();
        if size > BOOT_AREA {
            return Err(Error::Osip(format!(
                "{} images do not fit the {BOOT_AREA}-byte bootstrap area",
                self.images.len()
            )));
        }
        let mut b = vec![0u8; size];
        b[..4].copy_from_slice(b"$OS$");
        b[5] = self.minor;
        b[6] = self.major;
        b[8] = self.pointers;
        b[9] = self.images.len() as u8;
        b[10..12].copy_from_slice(&(size as u16).to_le_bytes());
        for (d, i) in b[32..].chunks_exact_mut(24).zip(&self.images) {
            d[0..2].copy_from_slice(&i.os_minor.to_le_bytes());
            d[2..4].copy_from_slice(&i.os_major.to_le_bytes());
            d[4..8].copy_from_slice(&i.start_block.to_le_bytes());
            d[8..12].copy_from_slice(&i.ddr_load_address.to_le_bytes());
            d[12..16].copy_from_slice(&i.entry_point.to_le_bytes());
            d[16..20].copy_from_slice(&i.size_blocks.to_le_bytes());
            d[20] = i.attribute;
        }
        b[7] = b.iter().fold(0, |s, x| s ^ x);
        Ok(b)
    }
}

impl MbrSpec {
    /// Check slots against each other and the disk size (in bytes).
    /// Logical partitions are numbered from 4, as in fwup configs.
    pub fn validate(&self, disk_size: u64) -> Result<(), Error> {
        let disk_sectors = disk_size / SECTOR_SIZE;
        let ext = self.partitions[3].as_ref().filter(|p| is_extended(p.kind));
        if !self.logical.is_empty() {
            let Some(ext) = ext else {
                return Err(Error::Partition {
                    index: 4,
                    why: "logical partitions need slot 3 to be an extended partition (type 0x05 or 0x0f)".into(),
                });
            };
            let (es, ee) = (
                u64::from(ext.start_lba),
                u64::from(ext.start_lba) + u64::from(ext.sectors),
            );
            for (k, l) in self.logical.iter().enumerate() {
                let (s, e) = (
                    u64::from(l.partition.start_lba),
                    u64::from(l.partition.start_lba) + u64::from(l.partition.sectors),
                );
                let ebr = u64::from(l.ebr_lba);
                if s < es || e > ee || ebr < es || ebr >= ee {
                    return Err(Error::Partition {
                        index: 4 + k,
                        why: format!(
                            "sectors {s}..{e} and its EBR at {ebr} must lie in the extended partition (sectors {es}..{ee})"
                        ),
                    });
                }
                if let Some(j) = self
                    .logical
                    .iter()
                    .position(|m| (s..e).contains(&u64::from(m.ebr_lba)))
                {
                    return Err(Error::Partition {
                        index: 4 + k,
                        why: format!("sectors {s}..{e} overlap the EBR of partition {}", 4 + j),
                    });
                }
            }
        }
        let logical = self.logical.iter().map(|l| &l.partition);
        let used: Vec<(usize, &MbrPartition)> = self
            .partitions
            .iter()
            .enumerate()
            .filter_map(|(i, p)| Some((i, p.as_ref()?)))
            .chain((4..).zip(logical))
            .collect();
        for &(i, p) in &used {
            let bad = |why: String| Error::Partition { index: i, why };
            if p.kind == 0 {
                return Err(bad(
                    "type 0 marks an unused slot; give a type such as 0x83".into()
                ));
            }
            if p.sectors == 0 {
                return Err(bad("has 0 sectors".into()));
            }
            if p.start_lba == 0 {
                return Err(bad("starts at LBA 0, which holds the MBR itself".into()));
            }
            let end = u64::from(p.start_lba) + u64::from(p.sectors);
            if end > u64::from(u32::MAX) + 1 {
                return Err(bad(format!(
                    "ends at sector {end}, past the MBR limit of 2^32"
                )));
            }
            if end > disk_sectors {
                return Err(bad(format!(
                    "ends at sector {end} but the disk has {disk_sectors} sectors ({disk_size} bytes)"
                )));
            }
            // The extended partition holds the logical ones.
            let nested = |j: usize| i == 3 && j >= 4;
            for &(j, q) in used.iter().filter(|(j, _)| *j > i && !nested(*j)) {
                let (qs, qe) = (
                    u64::from(q.start_lba),
                    u64::from(q.start_lba) + u64::from(q.sectors),
                );
                if u64::from(p.start_lba) < qe && qs < end {
                    return Err(bad(format!(
                        "sectors {}..{end} overlap partition {j} (sectors {qs}..{qe})",
                        p.start_lba
                    )));
                }
            }
        }
        Ok(())
    }

    /// Sector 0 as mbrman's header.
    pub fn to_header(&self) -> Result<MBRHeader, Error> {
        let mut h = MBRHeader::new(self.disk_signature.to_le_bytes());
        match &self.boot_area {
            BootArea::Zero => {}
            BootArea::Code(c) => h.bootstrap_code = **c,
            BootArea::Osip(o) => {
                let b = o.to_bytes()?;
                h.bootstrap_code[..b.len()].copy_from_slice(&b);
            }
        }
        for (i, p) in self.partitions.iter().enumerate() {
            if let Some(p) = p {
                // mbrman numbers slots from 1.
                *h.get_mut(i + 1).expect("four slots") = entry(p, p.start_lba);
            }
        }
        Ok(h)
    }

    /// The 512 bytes of sector 0.
    pub fn to_bytes(&self) -> Result<[u8; 512], Error> {
        serialize(&self.to_header()?)
    }

    /// Every sector the table occupies, in order: (sector, bytes), sector 0 first, then one
    /// EBR per logical partition. Nothing is validated (see [`MbrSpec::validate`]).
    pub fn to_sectors(&self) -> Result<Vec<(u64, [u8; 512])>, Error> {
        let mut out = vec![(0, self.to_bytes()?)];
        let ext_start = self.partitions[3].as_ref().map_or(0, |p| p.start_lba);
        for (i, l) in self.logical.iter().enumerate() {
            let mut h = MBRHeader::new([0; 4]);
            h.partition_1 = entry(&l.partition, l.partition.start_lba.wrapping_sub(l.ebr_lba));
            if let Some(next) = self.logical.get(i + 1) {
                let link = MbrPartition {
                    start_lba: next.ebr_lba.wrapping_sub(ext_start),
                    sectors: 1,
                    kind: 0x0f,
                    bootable: false,
                };
                h.partition_2 = entry(&link, link.start_lba);
            }
            out.push((u64::from(l.ebr_lba), serialize(&h)?));
        }
        Ok(out)
    }

    /// From a parsed header: primary slots only (extended/logical partitions are not read).
    pub fn from_header(h: &MBRHeader) -> MbrSpec {
        let mut spec = MbrSpec {
            disk_signature: u32::from_le_bytes(h.disk_signature),
            ..Default::default()
        };
        for (i, e) in h.iter() {
            if e.is_used() {
                spec.partitions[i - 1] = Some(MbrPartition {
                    start_lba: e.starting_lba,
                    sectors: e.sectors,
                    kind: e.sys,
                    bootable: e.boot == BOOT_ACTIVE,
                });
            }
        }
        spec
    }
}

/// Validate `spec` and write its sectors (the MBR, and the EBRs of logical partitions) to
/// `dev`; nothing else is touched.
pub fn write_mbr<D: Read + Write + Seek>(
    dev: &mut D,
    spec: &MbrSpec,
    disk_size: u64,
) -> Result<(), Error> {
    spec.validate(disk_size)?;
    for (lba, bytes) in spec.to_sectors()? {
        dev.seek(std::io::SeekFrom::Start(lba * SECTOR_SIZE))?;
        dev.write_all(&bytes)?;
    }
    Ok(())
}
