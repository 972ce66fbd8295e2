//! GPT: protective MBR, primary header and entries, backup entries and header.
//!
//! Spec: UEFI 2.10 section 5.3 (<https://uefi.org/specs/UEFI/2.10/05_GUID_Partition_Table_Format.html>).
//! The layout matches fwup's src/gpt.c byte for byte: 128 entries of 128 bytes (32 sectors),
//! entry N of the spec at slot N (gaps stay zero), first usable LBA 34, last usable
//! `sectors - 34`, whole header sectors zeroed past the 92-byte header, and a protective MBR
//! with CHS 0/0/2 .. ff/ff/ff covering LBA 1 .. end.
//!
//! The on-disk structs are written here rather than with the `gpt` crate: its writer packs used
//! entries to the front of the array (fwup keeps slot positions) and takes the disk size from
//! the device's length (we are given it, and a sparse image may still be shorter). The `gpt`
//! crate is used to read tables back.

use std::io::{Read, Seek, SeekFrom, Write};

use mbrman::{MBRHeader, MBRPartitionEntry, BOOT_INACTIVE, CHS};

use crate::{Error, Guid, SECTOR_SIZE};

/// Bytes per partition entry.
pub const ENTRY_SIZE: usize = 128;
/// Entries in the array (32 sectors), as fwup and most tools write.
pub const ENTRY_COUNT: usize = 128;
/// Sectors of the entry array.
pub const ENTRIES_SECTORS: u64 = (ENTRY_SIZE * ENTRY_COUNT) as u64 / SECTOR_SIZE;
/// First LBA a partition may use: protective MBR, header, entries.
pub const FIRST_USABLE_LBA: u64 = 2 + ENTRIES_SECTORS;
/// Legacy-BIOS-bootable attribute bit (what fwup's `boot = true` sets).
pub const ATTR_LEGACY_BIOS_BOOTABLE: u64 = 1 << 2;
/// Maximum name length in UTF-16 code units.
pub const NAME_UNITS: usize = 36;
/// Bytes of a GPT header that its CRC covers.
pub const HEADER_SIZE: usize = 92;

/// One partition entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GptPartition {
    pub start_lba: u64,
    pub sectors: u64,
    pub type_guid: Guid,
    pub guid: Guid,
    /// At most 36 UTF-16 code units.
    pub name: String,
    /// Attribute bits as stored; `bootable` is ORed in as bit 2 on write.
    pub attributes: u64,
    /// Legacy BIOS bootable (attribute bit 2).
    pub bootable: bool,
}

/// A GPT: disk GUID and entries by slot (`partitions[i]` is entry i; `None` = unused).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GptSpec {
    pub disk_guid: Guid,
    pub partitions: Vec<Option<GptPartition>>,
}

/// The GPT header as stored (one per copy).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GptHeader {
    pub current_lba: u64,
    pub backup_lba: u64,
    pub first_usable_lba: u64,
    pub last_usable_lba: u64,
    pub disk_guid: Guid,
    pub entries_lba: u64,
    pub entry_count: u32,
    pub entry_size: u32,
    pub entries_crc: u32,
}

/// Partition entries a GPT read here may declare (2 MiB of entries): more is not a real disk,
/// and the reader would scan them all.
pub const MAX_READ_ENTRIES: u32 = 16384;

impl GptHeader {
    /// A header as read (its first [`HEADER_SIZE`] bytes are enough): `None` without the
    /// "EFI PART" signature or with a bad CRC (over those bytes, as the `gpt` crate checks it).
    pub fn from_sector(s: &[u8]) -> Option<GptHeader> {
        let h = s.get(..HEADER_SIZE)?;
        if &h[0..8] != b"EFI PART" {
            return None;
        }
        let mut zeroed = [0u8; HEADER_SIZE];
        zeroed.copy_from_slice(h);
        zeroed[16..20].fill(0);
        let u32_at = |a: usize| u32::from_le_bytes(h[a..a + 4].try_into().expect("4 bytes"));
        let u64_at = |a: usize| u64::from_le_bytes(h[a..a + 8].try_into().expect("8 bytes"));
        if crc32fast::hash(&zeroed) != u32_at(16) {
            return None;
        }
        Some(GptHeader {
            current_lba: u64_at(24),
            backup_lba: u64_at(32),
            first_usable_lba: u64_at(40),
            last_usable_lba: u64_at(48),
            disk_guid: Guid::from_disk_bytes(h[56..72].try_into().expect("16 bytes")),
            entries_lba: u64_at(72),
            entry_count: u32_at(80),
            entry_size: u32_at(84),
            entries_crc: u32_at(88),
        })
    }

    /// Whether the entry array is one this crate (and the `gpt` crate under it) reads.
    pub fn check_entries(&self, which: &str) -> Result<(), Error> {
        if self.entry_size != ENTRY_SIZE as u32 {
            return Err(Error::Gpt(format!(
                "{which} header: partition entry size {} (only {ENTRY_SIZE} is supported)",
                self.entry_size
            )));
        }
        if self.entry_count > MAX_READ_ENTRIES {
            return Err(Error::Gpt(format!(
                "{which} header: {} partition entries (at most {MAX_READ_ENTRIES})",
                self.entry_count
            )));
        }
        Ok(())
    }

    /// The whole header sector, CRC filled in.
    pub fn to_sector(&self) -> [u8; 512] {
        let mut s = [0u8; 512];
        s[0..8].copy_from_slice(b"EFI PART");
        s[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
        s[12..16].copy_from_slice(&(HEADER_SIZE as u32).to_le_bytes());
        s[24..32].copy_from_slice(&self.current_lba.to_le_bytes());
        s[32..40].copy_from_slice(&self.backup_lba.to_le_bytes());
        s[40..48].copy_from_slice(&self.first_usable_lba.to_le_bytes());
        s[48..56].copy_from_slice(&self.last_usable_lba.to_le_bytes());
        s[56..72].copy_from_slice(&self.disk_guid.to_disk_bytes());
        s[72..80].copy_from_slice(&self.entries_lba.to_le_bytes());
        s[80..84].copy_from_slice(&self.entry_count.to_le_bytes());
        s[84..88].copy_from_slice(&self.entry_size.to_le_bytes());
        s[88..92].copy_from_slice(&self.entries_crc.to_le_bytes());
        let crc = crc32fast::hash(&s[..HEADER_SIZE]);
        s[16..20].copy_from_slice(&crc.to_le_bytes());
        s
    }
}

impl GptPartition {
    /// The 128-byte entry.
    pub fn to_entry(&self) -> [u8; ENTRY_SIZE] {
        let mut e = [0u8; ENTRY_SIZE];
        e[0..16].copy_from_slice(&self.type_guid.to_disk_bytes());
        e[16..32].copy_from_slice(&self.guid.to_disk_bytes());
        e[32..40].copy_from_slice(&self.start_lba.to_le_bytes());
        e[40..48].copy_from_slice(&(self.start_lba + self.sectors - 1).to_le_bytes());
        let attrs = self.attributes
            | if self.bootable {
                ATTR_LEGACY_BIOS_BOOTABLE
            } else {
                0
            };
        e[48..56].copy_from_slice(&attrs.to_le_bytes());
        for (i, unit) in self.name.encode_utf16().take(NAME_UNITS).enumerate() {
            e[56 + 2 * i..58 + 2 * i].copy_from_slice(&unit.to_le_bytes());
        }
        e
    }
}

/// Everything a GPT write puts on disk.
pub struct GptBytes {
    /// Sector 0.
    pub protective_mbr: [u8; 512],
    /// Sectors 1..=33: header then entries.
    pub primary: Vec<u8>,
    /// Entries then header, ending at the last sector of the disk.
    pub backup: Vec<u8>,
    /// Where `backup` starts.
    pub backup_lba: u64,
}

/// Smallest disk (in sectors) that holds both GPT copies and one usable sector.
pub const MIN_DISK_SECTORS: u64 = 2 * FIRST_USABLE_LBA - 1;

impl GptSpec {
    /// Check entries against each other and the usable area of a disk of `disk_size` bytes.
    pub fn validate(&self, disk_size: u64) -> Result<(), Error> {
        let n = disk_size / SECTOR_SIZE;
        if n < MIN_DISK_SECTORS {
            return Err(Error::DiskTooSmall {
                disk_size,
                min: MIN_DISK_SECTORS * SECTOR_SIZE,
            });
        }
        if self.partitions.len() > ENTRY_COUNT {
            return Err(Error::TooManyPartitions {
                count: self.partitions.len(),
                max: ENTRY_COUNT,
            });
        }
        let last_usable = n - FIRST_USABLE_LBA;
        let used: Vec<(usize, &GptPartition)> = self
            .partitions
            .iter()
            .enumerate()
            .filter_map(|(i, p)| Some((i, p.as_ref()?)))
            .collect();
        for &(i, p) in &used {
            let bad = |why: String| Error::Partition { index: i, why };
            if p.type_guid.is_nil() {
                return Err(bad(
                    "type GUID is all zero, which marks an unused entry".into()
                ));
            }
            if p.sectors == 0 {
                return Err(bad("has 0 sectors".into()));
            }
            let units = p.name.encode_utf16().count();
            if units > NAME_UNITS {
                return Err(bad(format!(
                    "name {:?} is {units} UTF-16 units; GPT names hold {NAME_UNITS}",
                    p.name
                )));
            }
            let end = p.start_lba.saturating_add(p.sectors);
            if p.start_lba < FIRST_USABLE_LBA || end - 1 > last_usable {
                return Err(bad(format!(
                    "sectors {}..{end} are outside the usable area {FIRST_USABLE_LBA}..={last_usable} \
                     of a {n}-sector disk",
                    p.start_lba
                )));
            }
            for &(j, q) in used.iter().filter(|(j, _)| *j > i) {
                let qe = q.start_lba + q.sectors;
                if p.start_lba < qe && q.start_lba < end {
                    return Err(bad(format!(
                        "sectors {}..{end} overlap partition {j} (sectors {}..{qe})",
                        p.start_lba, q.start_lba
                    )));
                }
            }
        }
        Ok(())
    }

    /// Serialize for a disk of `disk_size` bytes.
    pub fn to_bytes(&self, disk_size: u64) -> Result<GptBytes, Error> {
        self.validate(disk_size)?;
        let n = disk_size / SECTOR_SIZE;
        let mut entries = vec![0u8; ENTRY_SIZE * ENTRY_COUNT];
        for (i, p) in self.partitions.iter().enumerate() {
            if let Some(p) = p {
                entries[i * ENTRY_SIZE..(i + 1) * ENTRY_SIZE].copy_from_slice(&p.to_entry());
            }
        }
        let mut header = GptHeader {
            current_lba: 1,
            backup_lba: n - 1,
            first_usable_lba: FIRST_USABLE_LBA,
            last_usable_lba: n - FIRST_USABLE_LBA,
            disk_guid: self.disk_guid,
            entries_lba: 2,
            entry_count: ENTRY_COUNT as u32,
            entry_size: ENTRY_SIZE as u32,
            entries_crc: crc32fast::hash(&entries),
        };
        let mut primary = header.to_sector().to_vec();
        primary.extend_from_slice(&entries);

        header.current_lba = n - 1;
        header.backup_lba = 1;
        header.entries_lba = n - 1 - ENTRIES_SECTORS;
        let mut backup = entries;
        backup.extend_from_slice(&header.to_sector());

        Ok(GptBytes {
            protective_mbr: protective_mbr(n)?,
            primary,
            backup,
            backup_lba: header.entries_lba,
        })
    }
}

/// Sector 0 of a GPT disk with `n` sectors: one 0xEE entry over LBA 1.. (capped at 2^32-1).
fn protective_mbr(n: u64) -> Result<[u8; 512], Error> {
    let mut h = MBRHeader::new([0; 4]);
    h.partition_1 = MBRPartitionEntry {
        boot: BOOT_INACTIVE,
        first_chs: CHS {
            cylinder: 0,
            head: 0,
            sector: 2,
        },
        sys: 0xee,
        last_chs: CHS {
            cylinder: 1023,
            head: 255,
            sector: 63,
        },
        starting_lba: 1,
        sectors: u32::try_from(n - 1).unwrap_or(u32::MAX),
    };
    let mut cur = std::io::Cursor::new(vec![0u8; 512]);
    h.write_into(&mut cur)?;
    let mut out = [0u8; 512];
    out.copy_from_slice(cur.get_ref());
    Ok(out)
}

/// Write protective MBR, primary GPT (LBA 1..=33) and backup GPT (last 33 sectors of a disk
/// of `disk_size` bytes). Only those sectors are written, so a sparse image stays sparse.
pub fn write_gpt<D: Read + Write + Seek>(
    dev: &mut D,
    spec: &GptSpec,
    disk_size: u64,
) -> Result<(), Error> {
    let b = spec.to_bytes(disk_size)?;
    dev.seek(SeekFrom::Start(0))?;
    dev.write_all(&b.protective_mbr)?;
    dev.write_all(&b.primary)?;
    dev.seek(SeekFrom::Start(b.backup_lba * SECTOR_SIZE))?;
    dev.write_all(&b.backup)?;
    Ok(())
}
