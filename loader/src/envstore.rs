//! The U-Boot environment on the boot disk: where it is, which copy is current, writing it back.
//!
//! Where: the env locator record in sector 0 when the disk has one (`uboot_env::locator`,
//! written by imgtool's layout writer for an env anywhere else), else one 128 KiB copy at
//! LBA 16, the place Nerves' qemu systems use (`uboot-env` in
//! <https://github.com/nerves-project/nerves_system_qemu_aarch64/blob/main/fwup.conf>) and
//! little_loader reads. The record lives on the disk rather than in this binary so that one
//! loader boots every image (as one little_loader.elf does), and a disk that boots with
//! little_loader boots with this loader unchanged. Parsing and CRCs are the shared `uboot-env`
//! crate's; this module only decides which blocks to hand it.

use alloc::vec;
use core::fmt;

use uboot_env::locator::{self, Locator};
use uboot_env::{Copy, Env, FlagRule, Stored, WriteOptions};

use crate::{BlockDevice, DiskError, BLOCK};

/// An env as found on disk, with what is needed to write it back the same way.
#[derive(Clone, Debug)]
pub struct StoredEnv {
    /// The variables, and whether they came from one copy or a redundant pair.
    pub stored: Stored,
    /// Where it was read from.
    pub at: Locator,
    /// Whether the place came from a locator record (else it is the default).
    pub from_record: bool,
}

impl StoredEnv {
    pub fn env(&self) -> &Env {
        self.stored.env()
    }

    pub fn env_mut(&mut self) -> &mut Env {
        self.stored.env_mut()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EnvError {
    Disk(DiskError),
    /// Sector 0 has a locator record, but a damaged one.
    Locator(uboot_env::Error),
    /// No valid env (single, or redundant pair) at the expected place.
    Invalid {
        at: Locator,
        error: uboot_env::Error,
    },
    /// The changed env does not fit back.
    Encode(uboot_env::Error),
}

impl fmt::Display for EnvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EnvError::Disk(e) => write!(f, "reading the U-Boot env: {e}"),
            EnvError::Locator(e) => write!(f, "{e}"),
            EnvError::Invalid { at, error } => {
                write!(
                    f,
                    "no valid U-Boot env at LBA {} ({} bytes",
                    at.offset / BLOCK as u64,
                    at.size
                )?;
                if let Some(r) = at.redundant_offset {
                    write!(f, ", redundant copy at LBA {}", r / BLOCK as u64)?;
                }
                write!(f, "): {error}")
            }
            EnvError::Encode(e) => write!(f, "writing the U-Boot env: {e}"),
        }
    }
}

impl From<DiskError> for EnvError {
    fn from(e: DiskError) -> Self {
        EnvError::Disk(e)
    }
}

/// Where this disk keeps its env: the locator record in sector 0, else the default place.
pub fn locate(dev: &mut impl BlockDevice) -> Result<(Locator, bool), EnvError> {
    let mut sector = [0u8; BLOCK];
    dev.read(0, &mut sector)?;
    match Locator::decode(&sector) {
        Ok(Some(l)) => Ok((l, true)),
        Ok(None) => Ok((locator::DEFAULT, false)),
        Err(e) => Err(EnvError::Locator(e)),
    }
}

/// Read the env where [`locate`] says it is: one copy, or a redundant pair (each copy has a
/// flag byte after the CRC; the newer valid one wins).
pub fn load(dev: &mut impl BlockDevice) -> Result<StoredEnv, EnvError> {
    let (at, from_record) = locate(dev)?;
    let size = at.size as usize;
    let mut first = vec![0u8; size];
    dev.read(at.offset / BLOCK as u64, &mut first)?;
    let second = match at.redundant_offset {
        Some(r) => {
            let mut b = vec![0u8; size];
            dev.read(r / BLOCK as u64, &mut b)?;
            Some(b)
        }
        None => None,
    };
    match Stored::parse(&first, second.as_deref(), FlagRule::UBoot) {
        Ok(stored) => Ok(StoredEnv {
            stored,
            at,
            from_record,
        }),
        Err(error) => Err(EnvError::Invalid { at, error }),
    }
}

/// Write the env back (fwup's encoding: sorted, 0xff padding): a single copy in place, the
/// older copy of a pair.
pub fn save(dev: &mut impl BlockDevice, s: &mut StoredEnv) -> Result<(), EnvError> {
    let w = s
        .stored
        .encode(s.at.size as usize, WriteOptions::FWUP)
        .map_err(EnvError::Encode)?;
    let offset = match w.copy {
        Copy::First => s.at.offset,
        Copy::Second => s.at.redundant_offset.unwrap_or_default(),
    };
    dev.write(offset / BLOCK as u64, &w.block)?;
    s.stored.commit(&w);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemDisk;
    use alloc::vec::Vec;

    const SIZE: usize = 128 * 1024;
    const LBA: u64 = 16;

    fn disk_with(blocks: &[(u64, Vec<u8>)]) -> MemDisk {
        let mut d = MemDisk(vec![0u8; 4 << 20]);
        for (lba, b) in blocks {
            let at = *lba as usize * BLOCK;
            d.0[at..at + b.len()].copy_from_slice(b);
        }
        d
    }

    fn env(active: &str) -> Env {
        Env::from_pairs([("nerves_fw_active", active), ("a.kernel_lba", "272")]).unwrap()
    }

    fn record(l: Locator) -> Vec<u8> {
        let mut s = vec![0u8; BLOCK];
        s[..locator::LEN].copy_from_slice(&l.encode());
        s
    }

    #[test]
    fn without_a_record_the_env_is_little_loaders_lba_16() {
        let block = env("a").to_block(SIZE, None, WriteOptions::FWUP).unwrap();
        let mut d = disk_with(&[(LBA, block)]);
        let mut s = load(&mut d).unwrap();
        assert!(matches!(s.stored, Stored::Single(_)));
        assert!(!s.from_record);
        assert_eq!(s.at, locator::DEFAULT);
        assert_eq!(s.env().get("nerves_fw_active"), Some("a"));
        s.env_mut().set("bootcount", "1").unwrap();
        save(&mut d, &mut s).unwrap();
        let again = load(&mut d).unwrap();
        assert_eq!(again.env().get("bootcount"), Some("1"));
        // Written where it was read, nothing after it.
        let at = (LBA as usize) * BLOCK + SIZE;
        assert!(d.0[at..at + 16].iter().all(|&b| b == 0));
    }

    #[test]
    fn a_record_moves_a_single_env() {
        let l = Locator {
            offset: 2048 * 512,
            size: 16 * 1024,
            redundant_offset: None,
        };
        let block = env("b").to_block(16 * 1024, None, WriteOptions::FWUP).unwrap();
        // A stale env at the default place must not be used.
        let stale = env("a").to_block(SIZE, None, WriteOptions::FWUP).unwrap();
        let mut d = disk_with(&[(0, record(l)), (LBA, stale), (2048, block)]);
        let mut s = load(&mut d).unwrap();
        assert!(s.from_record);
        assert_eq!(s.env().get("nerves_fw_active"), Some("b"));
        s.env_mut().set("bootcount", "1").unwrap();
        save(&mut d, &mut s).unwrap();
        assert_eq!(load(&mut d).unwrap().env().get("bootcount"), Some("1"));
    }

    /// A redundant env away from LBA 16: the newer copy wins, writes go to the older.
    #[test]
    fn redundant_env_at_a_record_picks_newer_and_writes_the_older_copy() {
        let size = 8 * 1024;
        let l = Locator {
            offset: 4096 * 512,
            size: size as u32,
            redundant_offset: Some(5000 * 512),
        };
        let c1 = env("a").to_block(size, Some(4), WriteOptions::FWUP).unwrap();
        let c2 = env("b").to_block(size, Some(5), WriteOptions::FWUP).unwrap();
        let mut d = disk_with(&[(0, record(l)), (4096, c1), (5000, c2)]);
        let mut s = load(&mut d).unwrap();
        assert!(matches!(s.stored, Stored::Redundant(_)));
        assert_eq!(s.env().get("nerves_fw_active"), Some("b"));
        s.env_mut().set("bootcount", "1").unwrap();
        save(&mut d, &mut s).unwrap();
        // The write went to copy 1 with flag 6; copy 2 is intact.
        assert_eq!(d.0[4096 * BLOCK + 4], 6);
        assert_eq!(d.0[5000 * BLOCK + 4], 5);
        let s2 = load(&mut d).unwrap();
        assert_eq!(s2.env().get("bootcount"), Some("1"));
        assert_eq!(s2.env().get("nerves_fw_active"), Some("b"));
    }

    #[test]
    fn redundant_env_with_a_torn_first_copy_uses_the_second() {
        let size = 8 * 1024;
        let l = Locator {
            offset: 4096 * 512,
            size: size as u32,
            redundant_offset: Some(5000 * 512),
        };
        let mut c1 = env("a").to_block(size, Some(7), WriteOptions::FWUP).unwrap();
        c1[100] ^= 0xff;
        let c2 = env("b").to_block(size, Some(6), WriteOptions::FWUP).unwrap();
        let mut d = disk_with(&[(0, record(l)), (4096, c1), (5000, c2)]);
        assert_eq!(load(&mut d).unwrap().env().get("nerves_fw_active"), Some("b"));
    }

    #[test]
    fn corrupt_env_names_lba_and_crc() {
        let mut block = env("a").to_block(SIZE, None, WriteOptions::FWUP).unwrap();
        block[10] ^= 1;
        let mut d = disk_with(&[(LBA, block)]);
        let msg = alloc::format!("{}", load(&mut d).unwrap_err());
        assert!(
            msg.starts_with("no valid U-Boot env at LBA 16 (131072 bytes): bad CRC32"),
            "{msg}"
        );
        // With a record, the message names the record's places.
        let l = Locator {
            offset: 4096 * 512,
            size: 8192,
            redundant_offset: Some(5000 * 512),
        };
        let mut d = disk_with(&[(0, record(l))]);
        let msg = alloc::format!("{}", load(&mut d).unwrap_err());
        assert!(
            msg.starts_with(
                "no valid U-Boot env at LBA 4096 (8192 bytes, redundant copy at LBA 5000): no valid copy"
            ),
            "{msg}"
        );
    }

    #[test]
    fn a_damaged_record_stops_the_boot() {
        let l = Locator {
            offset: 4096 * 512,
            size: 8192,
            redundant_offset: None,
        };
        let mut sector = record(l);
        sector[12] ^= 1;
        let mut d = disk_with(&[(0, sector)]);
        let e = load(&mut d).unwrap_err();
        assert!(matches!(e, EnvError::Locator(uboot_env::Error::LocatorCrc { .. })), "{e:?}");
        assert!(alloc::format!("{e}").contains("env locator in sector 0 has a bad CRC32"));
    }

    #[test]
    fn disk_too_small_for_the_env() {
        let mut d = MemDisk(vec![0u8; 64 * BLOCK]);
        assert!(matches!(
            load(&mut d),
            Err(EnvError::Disk(DiskError::OutOfRange { .. }))
        ));
    }
}
