//! MBR (DOS) partition tables, written and read with `mbrman`.
//!
//! Spec: <https://en.wikipedia.org/wiki/Master_boot_record#PTE> (classic generic MBR: 440 bytes
//! bootstrap, disk signature at 440, four 16-byte entries at 446, 0x55AA at 510).
//! CHS fields follow fwup's src/mbr.c (`lba_to_chs`): 255 heads, 63 sectors per track; an LBA
//! past 1023 cylinders gets the conventional maximum 1023/254/63 (fwup leaves those bytes
//! uninitialised, so no byte-exact answer exists there).

use std::io::{Read, Seek, Write};

use mbrman::{MBRHeader, MBRPartitionEntry, BOOT_ACTIVE, BOOT_INACTIVE, CHS};

use crate::{Error, SECTOR_SIZE};

const HEADS: u32 = 255;
const SECTORS_PER_TRACK: u32 = 63;

/// One primary partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MbrPartition {
    pub start_lba: u32,
    pub sectors: u32,
    /// Partition type byte (0x83 Linux, 0x0c FAT32 LBA, 0x82 swap, ...). Must not be 0.
    pub kind: u8,
    pub bootable: bool,
}

/// An MBR: disk signature and the four primary slots (index = slot; `None` = unused).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MbrSpec {
    pub disk_signature: u32,
    pub partitions: [Option<MbrPartition>; 4],
}

/// CHS address of `lba` as fwup computes it.
pub fn lba_to_chs(lba: u32) -> CHS {
    if lba <= SECTORS_PER_TRACK * HEADS * 0x3ff {
        CHS {
            cylinder: (lba / (SECTORS_PER_TRACK * HEADS)) as u16,
            head: ((lba / SECTORS_PER_TRACK) % HEADS) as u8,
            sector: (lba % SECTORS_PER_TRACK + 1) as u8,
        }
    } else {
        CHS {
            cylinder: 1023,
            head: 254,
            sector: 63,
        }
    }
}

impl MbrSpec {
    /// Check slots against each other and the disk size (in bytes).
    pub fn validate(&self, disk_size: u64) -> Result<(), Error> {
        let disk_sectors = disk_size / SECTOR_SIZE;
        let used: Vec<(usize, &MbrPartition)> = self
            .partitions
            .iter()
            .enumerate()
            .filter_map(|(i, p)| Some((i, p.as_ref()?)))
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
            for &(j, q) in used.iter().filter(|(j, _)| *j > i) {
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

    /// The on-disk header this spec serializes to.
    pub fn to_header(&self) -> MBRHeader {
        let mut h = MBRHeader::new(self.disk_signature.to_le_bytes());
        for (i, p) in self.partitions.iter().enumerate() {
            let Some(p) = p else { continue };
            // mbrman numbers slots from 1.
            *h.get_mut(i + 1).expect("four slots") = MBRPartitionEntry {
                boot: if p.bootable {
                    BOOT_ACTIVE
                } else {
                    BOOT_INACTIVE
                },
                first_chs: lba_to_chs(p.start_lba),
                sys: p.kind,
                last_chs: lba_to_chs(p.start_lba + (p.sectors - 1)),
                starting_lba: p.start_lba,
                sectors: p.sectors,
            };
        }
        h
    }

    /// The 512 bytes of sector 0.
    pub fn to_bytes(&self) -> Result<[u8; 512], Error> {
        let mut cur = std::io::Cursor::new(vec![0u8; 512]);
        self.to_header().write_into(&mut cur)?;
        let mut out = [0u8; 512];
        out.copy_from_slice(cur.get_ref());
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

/// Write the MBR into sector 0 of `dev` (nothing else is touched: the bootstrap area is
/// zeroed, as fwup does without a bootstrap file).
pub fn write_mbr<D: Read + Write + Seek>(
    dev: &mut D,
    spec: &MbrSpec,
    disk_size: u64,
) -> Result<(), Error> {
    spec.validate(disk_size)?;
    let bytes = spec.to_bytes()?;
    dev.seek(std::io::SeekFrom::Start(0))?;
    dev.write_all(&bytes)?;
    Ok(())
}
