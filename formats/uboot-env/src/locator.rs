//! Where a disk keeps its env: a 32-byte record in the boot-code area of the disk's first
//! sector (bytes 0..440 of an MBR, or of a GPT's protective MBR: nothing on an arm64 qemu
//! disk reads them).
//!
//! imgtool's layout writer puts one there when the env is not where Nerves' qemu systems and
//! little_loader look for it (one copy of 128 KiB at LBA 16,
//! <https://github.com/fhunleth/little_loader/blob/main/src/main.c>). imgtool's loader reads it
//! first and falls back to that place, so a disk without a record boots with either loader.
//!
//! Layout (little-endian):
//!
//! | bytes | field |
//! |---|---|
//! | 0..8 | magic `imgtENV1` |
//! | 8..16 | offset of the (first) copy, bytes |
//! | 16..20 | size of one copy, bytes |
//! | 20..28 | offset of the redundant copy, bytes; 0: single env |
//! | 28..32 | CRC-32 (IEEE) of bytes 0..28 |

use crate::Error;

/// Record length in bytes.
pub const LEN: usize = 32;
/// Where it sits in sector 0.
pub const OFFSET: usize = 0;
const MAGIC: &[u8; 8] = b"imgtENV1";

/// The place Nerves' qemu layout and little_loader use: one 128 KiB copy at LBA 16.
pub const DEFAULT: Locator = Locator {
    offset: 16 * 512,
    size: 128 * 1024,
    redundant_offset: None,
};

/// Where the env is, in bytes from the start of the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Locator {
    pub offset: u64,
    pub size: u32,
    pub redundant_offset: Option<u64>,
}

impl Locator {
    /// Whether a disk needs a record for imgtool's loader to find this env.
    pub fn is_default(&self) -> bool {
        *self == DEFAULT
    }

    /// The 32 bytes to store at [`OFFSET`] of sector 0.
    pub fn encode(&self) -> [u8; LEN] {
        let mut b = [0u8; LEN];
        b[0..8].copy_from_slice(MAGIC);
        b[8..16].copy_from_slice(&self.offset.to_le_bytes());
        b[16..20].copy_from_slice(&self.size.to_le_bytes());
        b[20..28].copy_from_slice(&self.redundant_offset.unwrap_or(0).to_le_bytes());
        let crc = crc32fast::hash(&b[..28]);
        b[28..32].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Read a record from the start of sector 0 (`sector` may be longer).
    ///
    /// `Ok(None)`: no record (no magic), so the env is at [`DEFAULT`]. `Err`: the magic is there
    /// but the record is damaged or describes an impossible env; the disk should not be booted
    /// from a guess.
    pub fn decode(sector: &[u8]) -> Result<Option<Locator>, Error> {
        let Some(b) = sector.get(OFFSET..OFFSET + LEN) else {
            return Ok(None);
        };
        if &b[0..8] != MAGIC {
            return Ok(None);
        }
        let le64 =
            |r: core::ops::Range<usize>| u64::from_le_bytes(b[r].try_into().expect("8 bytes"));
        let stored = u32::from_le_bytes(b[28..32].try_into().expect("4 bytes"));
        let computed = crc32fast::hash(&b[..28]);
        if stored != computed {
            return Err(Error::LocatorCrc { stored, computed });
        }
        let loc = Locator {
            offset: le64(8..16),
            size: u32::from_le_bytes(b[16..20].try_into().expect("4 bytes")),
            redundant_offset: match le64(20..28) {
                0 => None,
                r => Some(r),
            },
        };
        loc.check()?;
        Ok(Some(loc))
    }

    /// Offsets and size are whole 512-byte blocks, the env is big enough for a header and
    /// does not cover sector 0, and the two copies do not overlap.
    pub fn check(&self) -> Result<(), Error> {
        let size = self.size as u64;
        let block_ok = |v: u64| v.is_multiple_of(512) && v >= 512;
        let ok = block_ok(self.offset)
            && size >= 512
            && size.is_multiple_of(512)
            && self.offset.checked_add(size).is_some()
            && match self.redundant_offset {
                None => true,
                Some(r) => {
                    block_ok(r)
                        && r.checked_add(size).is_some()
                        && (r >= self.offset + size || self.offset >= r + size)
                }
            };
        if ok {
            Ok(())
        } else {
            Err(Error::BadLocator)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_default() {
        let l = Locator {
            offset: 1 << 20,
            size: 0x2000,
            redundant_offset: Some((1 << 20) + 0x2000),
        };
        let mut sector = [0u8; 512];
        sector[..LEN].copy_from_slice(&l.encode());
        assert_eq!(Locator::decode(&sector), Ok(Some(l)));
        assert!(!l.is_default());
        assert!(DEFAULT.is_default());
        let single = Locator {
            redundant_offset: None,
            ..l
        };
        assert_eq!(Locator::decode(&single.encode()), Ok(Some(single)));
    }

    #[test]
    fn no_magic_is_no_record() {
        assert_eq!(Locator::decode(&[0u8; 512]), Ok(None));
        assert_eq!(Locator::decode(&[0u8; 8]), Ok(None));
    }

    #[test]
    fn damaged_or_impossible_records_are_errors() {
        let good = Locator {
            offset: 0x4000,
            size: 0x2000,
            redundant_offset: None,
        };
        let mut b = good.encode();
        b[9] ^= 1;
        assert!(matches!(Locator::decode(&b), Err(Error::LocatorCrc { .. })));
        for bad in [
            Locator { offset: 0, ..good },
            Locator {
                offset: 100,
                ..good
            },
            Locator { size: 10, ..good },
            Locator {
                redundant_offset: Some(0x5000),
                ..good
            },
            Locator {
                offset: u64::MAX - 511,
                ..good
            },
        ] {
            assert_eq!(
                Locator::decode(&bad.encode()),
                Err(Error::BadLocator),
                "{bad:?}"
            );
        }
    }
}
