//! MBR and GPT partition tables for disk images: typed specs, writers that touch only the
//! table sectors, and a reader for `imgtool inspect`.
//!
//! Sizes are final: `expand` is resolved by the caller, which passes the disk size in bytes.
//! Output is byte-identical to fwup 1.16 for the same partitions (see [`mbr`] and [`gpt`]);
//! fwup-compat's `mbr_write` and `gpt_write` encode through this crate.

#[doc(hidden)]
pub mod fuzzing;
pub mod gpt;
mod guid;
pub mod mbr;

use std::fmt;
use std::io::{self, Read, Seek, SeekFrom, Write};

pub use gpt::{write_gpt, GptPartition, GptSpec};
pub use guid::{Guid, GuidParseError};
pub use mbr::{write_mbr, BootArea, LogicalPartition, MbrPartition, MbrSpec, OsImage, Osip};

/// Logical sector size; these tables are always written for 512-byte sectors.
pub const SECTOR_SIZE: u64 = 512;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `index` is the slot (0-based, as in fwup configs).
    #[error("partition {index}: {why}")]
    Partition { index: usize, why: String },
    #[error("disk of {disk_size} bytes is too small for a GPT; it needs at least {min} bytes")]
    DiskTooSmall { disk_size: u64, min: u64 },
    #[error("{count} partition entries given; a GPT here holds at most {max}")]
    TooManyPartitions { count: usize, max: usize },
    #[error("GPT: {0}")]
    Gpt(String),
    #[error("MBR: {0}")]
    Mbr(#[from] mbrman::Error),
    #[error("MBR OSIP header: {0}")]
    Osip(String),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// A partition table read from a disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Table {
    Mbr(MbrSpec),
    Gpt(GptSpec),
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Table::Mbr(m) => {
                writeln!(f, "MBR, disk signature 0x{:08x}", m.disk_signature)?;
                for (i, p) in m.partitions.iter().enumerate() {
                    if let Some(p) = p {
                        writeln!(
                            f,
                            "  {i}: start {} sectors {} type 0x{:02x}{}",
                            p.start_lba,
                            p.sectors,
                            p.kind,
                            if p.bootable { " boot" } else { "" }
                        )?;
                    }
                }
            }
            Table::Gpt(g) => {
                writeln!(f, "GPT, disk GUID {}", g.disk_guid)?;
                for (i, p) in g.partitions.iter().enumerate() {
                    if let Some(p) = p {
                        writeln!(
                            f,
                            "  {i}: start {} sectors {} type {} guid {} name {:?} attrs 0x{:x}",
                            p.start_lba, p.sectors, p.type_guid, p.guid, p.name, p.attributes
                        )?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// Read the partition table: GPT when sector 0 has a 0xEE protective entry, else MBR.
/// `Ok(None)` when sector 0 has no 0x55AA signature.
pub fn read<D: Read + Seek>(dev: &mut D) -> Result<Option<Table>, Error> {
    let mut s0 = [0u8; 512];
    dev.seek(SeekFrom::Start(0))?;
    match dev.read_exact(&mut s0) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    if s0[510..512] != [0x55, 0xaa] {
        return Ok(None);
    }
    let header = mbrman::MBRHeader::read_from(&mut io::Cursor::new(&s0[..]))?;
    if header.iter().any(|(_, e)| e.sys == 0xee) {
        return read_gpt(dev).map(|g| Some(Table::Gpt(g)));
    }
    Ok(Some(Table::Mbr(MbrSpec::from_header(&header))))
}

fn read_gpt<D: Read + Seek>(dev: &mut D) -> Result<GptSpec, Error> {
    // The `gpt` crate reads the entries of the primary header, or of the backup one (last
    // sector) when the primary is not valid, and asserts on an entry size other than 128:
    // check the header it will use first.
    // It reads the 92 header bytes only, so a disk that ends right after them counts too.
    let mut head = [0u8; gpt::HEADER_SIZE];
    let len = dev.seek(SeekFrom::End(0))?;
    for (which, lba) in [
        ("primary", 1),
        ("backup", (len / SECTOR_SIZE).saturating_sub(1)),
    ] {
        dev.seek(SeekFrom::Start(lba * SECTOR_SIZE))?;
        if dev.read_exact(&mut head).is_err() {
            continue;
        }
        if let Some(h) = gpt::GptHeader::from_sector(&head) {
            h.check_entries(which)?;
            break;
        }
    }
    let disk = ::gpt::GptConfig::new()
        .writable(false)
        .logical_block_size(::gpt::disk::LogicalBlockSize::Lb512)
        // A fwup image may be padded past its backup GPT; the primary is enough.
        .only_valid_headers(false)
        .open_from_device(ReadOnly(dev))
        .map_err(|e| Error::Gpt(e.to_string()))?;
    fn guid(u: &impl ToString) -> Result<Guid, Error> {
        u.to_string()
            .parse()
            .map_err(|e: GuidParseError| Error::Gpt(e.to_string()))
    }
    let mut spec = GptSpec {
        disk_guid: guid(disk.guid())?,
        partitions: Vec::new(),
    };
    for (&id, p) in disk.partitions() {
        let slot = id as usize - 1;
        if spec.partitions.len() <= slot {
            spec.partitions.resize(slot + 1, None);
        }
        spec.partitions[slot] = Some(GptPartition {
            start_lba: p.first_lba,
            sectors: p.last_lba + 1 - p.first_lba,
            type_guid: guid(&p.part_type_guid.guid)?,
            guid: guid(&p.part_guid)?,
            name: p.name.clone(),
            attributes: p.flags,
            bootable: p.flags & gpt::ATTR_LEGACY_BIOS_BOOTABLE != 0,
        });
    }
    Ok(spec)
}

/// Lets the `gpt` crate (which wants a writable device) read from a `Read + Seek`.
struct ReadOnly<'a, D>(&'a mut D);

impl<D> fmt::Debug for ReadOnly<'_, D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ReadOnly")
    }
}

impl<D: Read> Read for ReadOnly<'_, D> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl<D: Seek> Seek for ReadOnly<'_, D> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.0.seek(pos)
    }
}

impl<D> Write for ReadOnly<'_, D> {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "partition table reader is read-only",
        ))
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
