//! On-disk squashfs 4.0 superblock, read without backhand so `imgtool inspect` stays cheap.
//!
//! Spec: <https://dr-emann.github.io/squashfs/> ("Superblock") and the kernel's
//! <https://www.kernel.org/doc/Documentation/filesystems/squashfs.rst>. All fields are
//! little-endian; the superblock is the first 96 bytes of the image.

use std::io::Read;

use crate::Error;

/// `hsqs` read as a little-endian u32.
pub const MAGIC: u32 = 0x7371_7368;
/// Size of the superblock in bytes.
pub const SUPERBLOCK_SIZE: usize = 96;
/// Table pointers that are not present hold all ones.
pub const NO_TABLE: u64 = u64::MAX;

/// Compressor ids (superblock `compression_id`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompressorId {
    Gzip,
    Lzma,
    Lzo,
    Xz,
    Lz4,
    Zstd,
    Unknown(u16),
}

impl CompressorId {
    pub fn from_u16(v: u16) -> Self {
        match v {
            1 => Self::Gzip,
            2 => Self::Lzma,
            3 => Self::Lzo,
            4 => Self::Xz,
            5 => Self::Lz4,
            6 => Self::Zstd,
            n => Self::Unknown(n),
        }
    }

    /// The name mksquashfs and unsquashfs use.
    pub fn name(&self) -> String {
        match self {
            Self::Gzip => "gzip".into(),
            Self::Lzma => "lzma".into(),
            Self::Lzo => "lzo".into(),
            Self::Xz => "xz".into(),
            Self::Lz4 => "lz4".into(),
            Self::Zstd => "zstd".into(),
            Self::Unknown(n) => format!("unknown({n})"),
        }
    }
}

/// Superblock flag bits.
pub mod flags {
    pub const UNCOMPRESSED_INODES: u16 = 0x0001;
    pub const UNCOMPRESSED_DATA: u16 = 0x0002;
    pub const UNCOMPRESSED_FRAGMENTS: u16 = 0x0008;
    pub const NO_FRAGMENTS: u16 = 0x0010;
    pub const ALWAYS_FRAGMENTS: u16 = 0x0020;
    pub const DUPLICATES: u16 = 0x0040;
    pub const EXPORTABLE: u16 = 0x0080;
    pub const UNCOMPRESSED_XATTRS: u16 = 0x0100;
    pub const NO_XATTRS: u16 = 0x0200;
    pub const COMPRESSOR_OPTIONS: u16 = 0x0400;
    pub const UNCOMPRESSED_IDS: u16 = 0x0800;
}

/// The 96-byte superblock, field for field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SuperBlock {
    pub magic: u32,
    pub inode_count: u32,
    pub mod_time: u32,
    pub block_size: u32,
    pub fragment_entry_count: u32,
    pub compression_id: u16,
    pub block_log: u16,
    pub flags: u16,
    pub id_count: u16,
    pub version_major: u16,
    pub version_minor: u16,
    pub root_inode_ref: u64,
    pub bytes_used: u64,
    pub id_table_start: u64,
    pub xattr_id_table_start: u64,
    pub inode_table_start: u64,
    pub directory_table_start: u64,
    pub fragment_table_start: u64,
    pub export_table_start: u64,
}

impl SuperBlock {
    /// Parse and check a superblock: magic, version 4.0, block size a power of two in
    /// 4 KiB..=1 MiB that agrees with `block_log`.
    pub fn parse(b: &[u8; SUPERBLOCK_SIZE]) -> Result<Self, Error> {
        let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
        let sb = SuperBlock {
            magic: u32_at(0),
            inode_count: u32_at(4),
            mod_time: u32_at(8),
            block_size: u32_at(12),
            fragment_entry_count: u32_at(16),
            compression_id: u16_at(20),
            block_log: u16_at(22),
            flags: u16_at(24),
            id_count: u16_at(26),
            version_major: u16_at(28),
            version_minor: u16_at(30),
            root_inode_ref: u64_at(32),
            bytes_used: u64_at(40),
            id_table_start: u64_at(48),
            xattr_id_table_start: u64_at(56),
            inode_table_start: u64_at(64),
            directory_table_start: u64_at(72),
            fragment_table_start: u64_at(80),
            export_table_start: u64_at(88),
        };
        if sb.magic != MAGIC {
            return Err(Error::BadSuperblock(format!(
                "magic is {:#010x}, not {MAGIC:#010x} (\"hsqs\"): not a squashfs image",
                sb.magic
            )));
        }
        if (sb.version_major, sb.version_minor) != (4, 0) {
            return Err(Error::BadSuperblock(format!(
                "version {}.{}: only squashfs 4.0 is supported",
                sb.version_major, sb.version_minor
            )));
        }
        let bs = sb.block_size;
        if !bs.is_power_of_two()
            || !(4096..=1 << 20).contains(&bs)
            || bs.ilog2() != sb.block_log as u32
        {
            return Err(Error::BadSuperblock(format!(
                "block_size {bs} with block_log {} is invalid",
                sb.block_log
            )));
        }
        Ok(sb)
    }

    pub fn compressor(&self) -> CompressorId {
        CompressorId::from_u16(self.compression_id)
    }

    pub fn has_flag(&self, flag: u16) -> bool {
        self.flags & flag != 0
    }

    pub fn to_bytes(&self) -> [u8; SUPERBLOCK_SIZE] {
        let mut b = [0u8; SUPERBLOCK_SIZE];
        let mut o = 0;
        let mut put = |v: &[u8]| {
            b[o..o + v.len()].copy_from_slice(v);
            o += v.len();
        };
        put(&self.magic.to_le_bytes());
        put(&self.inode_count.to_le_bytes());
        put(&self.mod_time.to_le_bytes());
        put(&self.block_size.to_le_bytes());
        put(&self.fragment_entry_count.to_le_bytes());
        put(&self.compression_id.to_le_bytes());
        put(&self.block_log.to_le_bytes());
        put(&self.flags.to_le_bytes());
        put(&self.id_count.to_le_bytes());
        put(&self.version_major.to_le_bytes());
        put(&self.version_minor.to_le_bytes());
        for v in [
            self.root_inode_ref,
            self.bytes_used,
            self.id_table_start,
            self.xattr_id_table_start,
            self.inode_table_start,
            self.directory_table_start,
            self.fragment_table_start,
            self.export_table_start,
        ] {
            put(&v.to_le_bytes());
        }
        b
    }
}

/// Read the superblock at the reader's current position.
pub fn read_superblock<R: Read>(mut r: R) -> Result<SuperBlock, Error> {
    let mut b = [0u8; SUPERBLOCK_SIZE];
    r.read_exact(&mut b).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            Error::BadSuperblock("shorter than the 96-byte superblock".into())
        } else {
            Error::Io {
                path: "<superblock>".into(),
                source: e,
            }
        }
    })?;
    SuperBlock::parse(&b)
}

/// True if `bytes` starts with the squashfs magic (for format detection).
pub fn is_squashfs(bytes: &[u8]) -> bool {
    bytes.len() >= 4 && u32::from_le_bytes(bytes[..4].try_into().unwrap()) == MAGIC
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> SuperBlock {
        SuperBlock {
            magic: MAGIC,
            inode_count: 7,
            mod_time: 0,
            block_size: 131072,
            fragment_entry_count: 1,
            compression_id: 1,
            block_log: 17,
            flags: flags::DUPLICATES | flags::NO_XATTRS,
            id_count: 1,
            version_major: 4,
            version_minor: 0,
            root_inode_ref: 0x20,
            bytes_used: 4242,
            id_table_start: 4000,
            xattr_id_table_start: NO_TABLE,
            inode_table_start: 3000,
            directory_table_start: 3500,
            fragment_table_start: 3900,
            export_table_start: NO_TABLE,
        }
    }

    #[test]
    fn round_trip() {
        let sb = sample();
        let b = sb.to_bytes();
        assert_eq!(&b[..4], b"hsqs");
        assert_eq!(SuperBlock::parse(&b).unwrap(), sb);
        assert_eq!(sb.compressor(), CompressorId::Gzip);
    }

    #[test]
    fn rejects_bad_magic_version_and_block_log() {
        let mut sb = sample();
        sb.magic = 0;
        assert!(SuperBlock::parse(&sb.to_bytes())
            .unwrap_err()
            .to_string()
            .contains("not a squashfs"));
        let mut sb = sample();
        sb.version_major = 3;
        assert!(SuperBlock::parse(&sb.to_bytes())
            .unwrap_err()
            .to_string()
            .contains("4.0"));
        let mut sb = sample();
        sb.block_log = 16;
        assert!(SuperBlock::parse(&sb.to_bytes())
            .unwrap_err()
            .to_string()
            .contains("block_log"));
        assert!(read_superblock(&[0u8; 10][..])
            .unwrap_err()
            .to_string()
            .contains("shorter"));
    }
}
