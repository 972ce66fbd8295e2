//! A native f2fs formatter: writes a ready, empty f2fs filesystem (root directory with `.` and
//! `..`) into a region of an image file or any `Read + Write + Seek`, and reads superblocks and
//! checkpoints back for inspection.
//!
//! Spec: <https://www.kernel.org/doc/html/latest/filesystems/f2fs.html>; structures in
//! [`ondisk`], geometry in [`geometry`]. The layout follows what mkfs.f2fs (f2fs-tools 1.15)
//! produces with default options, so fsck.f2fs and the kernel accept it as their own.
//!
//! Only blocks that hold non-zero data are written (about a dozen 4 KiB blocks), so a fresh
//! sparse image stays sparse. Areas f2fs reads as "empty" (the live SIT and NAT copies, the
//! first block of the warm node log) must read as zero: in a fresh file or a hole they do; in a
//! region that held data, [`ZeroMode::Detect`] (the default) reads them and zeroes the blocks
//! that are not zero, and [`ZeroMode::Always`] zeroes them without reading.
//!
//! Reproducible: the same size, label, UUID, timestamp and disk offset give the same bytes. The
//! default UUID is derived from the label and size (see [`default_uuid`]), the checkpoint
//! version from the UUID, and inode times default to 0 (the CLI honours `SOURCE_DATE_EPOCH`).

pub mod geometry;
pub mod ondisk;

mod format;
mod inspect;
pub mod tree;

pub use format::{format, plan, Block, Plan};
pub use geometry::{min_size, Geometry, MAX_SIZE};
pub use inspect::{inspect, read_superblock, Info};
pub use tree::{tree_from_host, Entry};

use sha2::{Digest, Sha256};

/// How to treat the metadata areas f2fs expects to read as zero.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ZeroMode {
    /// The region already reads as zero (a fresh sparse file, or holes): write nothing there.
    Assume,
    /// Read those areas and zero only the blocks that are not zero (keeps holes as holes).
    #[default]
    Detect,
    /// Write zeros over those areas without reading.
    Always,
}

/// Format options. `Options::default()` is what `mkfs.f2fs` does with no flags, plus the
/// superblock checksum.
#[derive(Clone, Debug)]
pub struct Options {
    /// Volume label (at most 512 UTF-16 units, no NUL).
    pub label: String,
    /// Volume UUID; `None` derives one from the label and size ([`default_uuid`]).
    pub uuid: Option<[u8; 16]>,
    /// Seconds since the epoch for the root directory's times.
    pub timestamp: u64,
    /// Enable the `sb_checksum` feature (kernel 4.19+): the superblock carries a CRC.
    pub sb_checksum: bool,
    /// Byte offset of the region on its disk: segment 0 is aligned to 2 MiB of the disk, as
    /// mkfs.f2fs does from a partition's start sector. 0 for a region that is the whole file.
    pub disk_offset: u64,
    pub zero: ZeroMode,
    /// What the root directory holds at format time (empty by default). A small tree only:
    /// at most 512 directories, 512 files/symlinks, 451 inodes, files up to 923 blocks,
    /// about 1.7 MiB of data, one 4 KiB dentry block per directory.
    pub root: std::collections::BTreeMap<String, Entry>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            label: String::new(),
            uuid: None,
            timestamp: 0,
            sb_checksum: true,
            disk_offset: 0,
            zero: ZeroMode::Detect,
            root: Default::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "a region of {size} bytes is too small for f2fs: the minimum is {min} bytes ({} MiB) \
         at this offset; give a larger size",
        min.div_ceil(1 << 20)
    )]
    TooSmall { size: u64, min: u64 },
    #[error("a region of {size} bytes is too large for f2fs: the maximum is {max} bytes (16 TiB)")]
    TooLarge { size: u64, max: u64 },
    #[error("label {label:?}: {reason}")]
    Label { label: String, reason: &'static str },
    #[error("the directory tree does not fit: {0}")]
    Tree(String),
    #[error("not an f2fs filesystem: {0}")]
    NotF2fs(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// The UUID used when none is given: the first 16 bytes of
/// SHA-256("imgtool-f2fs-uuid\0" || label || "\0" || size as u64 little-endian), with the
/// RFC 9562 version 8 (custom) and variant bits set. Same label and size, same UUID.
pub fn default_uuid(label: &str, size: u64) -> [u8; 16] {
    let mut h = Sha256::new();
    h.update(b"imgtool-f2fs-uuid\0");
    h.update(label.as_bytes());
    h.update([0]);
    h.update(size.to_le_bytes());
    let d = h.finalize();
    let mut u = [0u8; 16];
    u.copy_from_slice(&d[..16]);
    u[6] = (u[6] & 0x0f) | 0x80;
    u[8] = (u[8] & 0x3f) | 0x80;
    u
}

/// Parse `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` (hyphens optional, any case).
pub fn parse_uuid(s: &str) -> Option<[u8; 16]> {
    let hex: Vec<u8> = s.bytes().filter(|&c| c != b'-').collect();
    if hex.len() != 32 || s.len() != 32 && s.len() != 36 {
        return None;
    }
    let mut u = [0u8; 16];
    for (i, pair) in hex.chunks(2).enumerate() {
        let p = std::str::from_utf8(pair).ok()?;
        u[i] = u8::from_str_radix(p, 16).ok()?;
    }
    Some(u)
}

/// The usual text form of a UUID.
pub fn format_uuid(u: &[u8; 16]) -> String {
    let h = common::hex::encode(u);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_text_round_trips() {
        let u = default_uuid("APPDATA", 150 << 20);
        assert_eq!(u[6] >> 4, 8);
        assert_eq!(parse_uuid(&format_uuid(&u)), Some(u));
        assert_eq!(
            parse_uuid("0123456789ABCDEF0123456789abcdef"),
            parse_uuid("01234567-89ab-cdef-0123-456789abcdef")
        );
        assert_eq!(parse_uuid("0123"), None);
        assert_eq!(parse_uuid("01234567-89ab-cdef-0123-456789abcdeg"), None);
        assert_ne!(default_uuid("A", 1 << 30), default_uuid("B", 1 << 30));
        assert_ne!(default_uuid("A", 1 << 30), default_uuid("A", 2 << 30));
    }
}
