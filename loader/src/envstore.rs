//! The U-Boot environment on the boot disk: where it is, which copy is current, writing it back.
//!
//! Nerves' qemu layout keeps a 128 KiB env at LBA 16 (`uboot-env` in fwup's config,
//! <https://github.com/nerves-project/nerves_system_qemu_aarch64/blob/main/fwup.conf>). A
//! redundant env keeps its second copy right after the first (LBA 272). Parsing and CRCs are the
//! shared `uboot-env` crate's; this module only decides which blocks to hand it.

use alloc::vec;
use core::fmt;

use uboot_env::{Env, FlagRule, Layout, Redundant, WriteOptions};

use crate::{BlockDevice, DiskError, BLOCK};

/// First block of the env.
pub const ENV_LBA: u64 = 16;
/// Bytes of one env copy.
pub const ENV_SIZE: usize = 128 * 1024;
/// First block of the redundant copy, if there is one.
pub const ENV_REDUNDANT_LBA: u64 = ENV_LBA + (ENV_SIZE / BLOCK) as u64;

/// An env as found on disk, with what is needed to write it back the same way.
#[derive(Clone, Debug)]
pub struct StoredEnv {
    pub env: Env,
    pub kind: Kind,
}

#[derive(Clone, Debug)]
pub enum Kind {
    /// One copy at [`ENV_LBA`], rewritten in place.
    Single,
    /// Two copies; writes go to the older one.
    Redundant(Redundant),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EnvError {
    Disk(DiskError),
    /// Neither a valid single env nor a valid redundant pair at the expected place.
    Invalid {
        lba: u64,
        error: uboot_env::Error,
    },
    /// The changed env does not fit back.
    Encode(uboot_env::Error),
}

impl fmt::Display for EnvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EnvError::Disk(e) => write!(f, "reading the U-Boot env: {e}"),
            EnvError::Invalid { lba, error } => write!(
                f,
                "no valid U-Boot env at LBA {lba} ({ENV_SIZE} bytes): {error}"
            ),
            EnvError::Encode(e) => write!(f, "writing the U-Boot env: {e}"),
        }
    }
}

impl From<DiskError> for EnvError {
    fn from(e: DiskError) -> Self {
        EnvError::Disk(e)
    }
}

/// Read the env: a single copy if its CRC holds, else a redundant pair.
pub fn load(dev: &mut impl BlockDevice) -> Result<StoredEnv, EnvError> {
    let mut first = vec![0u8; ENV_SIZE];
    dev.read(ENV_LBA, &mut first)?;
    let single_err = match Env::parse(&first, Layout::Single) {
        Ok(env) => {
            return Ok(StoredEnv {
                env,
                kind: Kind::Single,
            })
        }
        Err(e) => e,
    };
    // A redundant pair: copy 1 has a flag byte after the CRC, copy 2 follows it.
    let mut second = vec![0u8; ENV_SIZE];
    if dev.read(ENV_REDUNDANT_LBA, &mut second).is_ok() {
        if let Ok(r) = Redundant::parse(&first, &second, FlagRule::UBoot) {
            return Ok(StoredEnv {
                env: r.env.clone(),
                kind: Kind::Redundant(r),
            });
        }
    }
    Err(EnvError::Invalid {
        lba: ENV_LBA,
        error: single_err,
    })
}

/// Write `stored.env` back (fwup's encoding: sorted, 0xff padding).
pub fn save(dev: &mut impl BlockDevice, stored: &mut StoredEnv) -> Result<(), EnvError> {
    let opts = WriteOptions::FWUP;
    match &mut stored.kind {
        Kind::Single => {
            let block = stored
                .env
                .to_block(ENV_SIZE, None, opts)
                .map_err(EnvError::Encode)?;
            dev.write(ENV_LBA, &block)?;
        }
        Kind::Redundant(r) => {
            r.env = stored.env.clone();
            let (next, block) = r.encode_next(ENV_SIZE, opts).map_err(EnvError::Encode)?;
            let lba = match next.copy {
                uboot_env::Copy::First => ENV_LBA,
                uboot_env::Copy::Second => ENV_REDUNDANT_LBA,
            };
            dev.write(lba, &block)?;
            r.commit(next);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemDisk;
    use alloc::vec::Vec;

    fn disk_with(blocks: &[(u64, Vec<u8>)]) -> MemDisk {
        let mut d = MemDisk(vec![0u8; 1 << 20]);
        for (lba, b) in blocks {
            let at = *lba as usize * BLOCK;
            d.0[at..at + b.len()].copy_from_slice(b);
        }
        d
    }

    fn env(active: &str) -> Env {
        Env::from_pairs([("nerves_fw_active", active), ("a.kernel_lba", "272")]).unwrap()
    }

    #[test]
    fn single_env_round_trip() {
        let block = env("a")
            .to_block(ENV_SIZE, None, WriteOptions::FWUP)
            .unwrap();
        let mut d = disk_with(&[(ENV_LBA, block)]);
        let mut s = load(&mut d).unwrap();
        assert!(matches!(s.kind, Kind::Single));
        assert_eq!(s.env.get("nerves_fw_active"), Some("a"));
        s.env.set("bootcount", "1").unwrap();
        save(&mut d, &mut s).unwrap();
        let again = load(&mut d).unwrap();
        assert_eq!(again.env.get("bootcount"), Some("1"));
        // Written where it was read, nothing at the redundant place.
        let at = ENV_REDUNDANT_LBA as usize * BLOCK;
        assert!(d.0[at..at + 16].iter().all(|&b| b == 0));
    }

    #[test]
    fn redundant_env_picks_newer_and_writes_the_older_copy() {
        let c1 = env("a")
            .to_block(ENV_SIZE, Some(4), WriteOptions::FWUP)
            .unwrap();
        let c2 = env("b")
            .to_block(ENV_SIZE, Some(5), WriteOptions::FWUP)
            .unwrap();
        let mut d = disk_with(&[(ENV_LBA, c1.clone()), (ENV_REDUNDANT_LBA, c2)]);
        let mut s = load(&mut d).unwrap();
        assert_eq!(s.env.get("nerves_fw_active"), Some("b"));
        s.env.set("bootcount", "1").unwrap();
        save(&mut d, &mut s).unwrap();
        // The write went to copy 1 with flag 6; copy 2 is intact.
        let at = ENV_LBA as usize * BLOCK;
        assert_eq!(d.0[at + 4], 6);
        let s2 = load(&mut d).unwrap();
        assert_eq!(s2.env.get("bootcount"), Some("1"));
        assert_eq!(s2.env.get("nerves_fw_active"), Some("b"));
    }

    #[test]
    fn redundant_env_with_a_torn_first_copy_uses_the_second() {
        let mut c1 = env("a")
            .to_block(ENV_SIZE, Some(7), WriteOptions::FWUP)
            .unwrap();
        c1[100] ^= 0xff;
        let c2 = env("b")
            .to_block(ENV_SIZE, Some(6), WriteOptions::FWUP)
            .unwrap();
        let mut d = disk_with(&[(ENV_LBA, c1), (ENV_REDUNDANT_LBA, c2)]);
        assert_eq!(load(&mut d).unwrap().env.get("nerves_fw_active"), Some("b"));
    }

    #[test]
    fn corrupt_env_names_lba_and_crc() {
        let mut block = env("a")
            .to_block(ENV_SIZE, None, WriteOptions::FWUP)
            .unwrap();
        block[10] ^= 1;
        let mut d = disk_with(&[(ENV_LBA, block)]);
        let e = load(&mut d).unwrap_err();
        let msg = alloc::format!("{e}");
        assert!(
            msg.starts_with("no valid U-Boot env at LBA 16 (131072 bytes): bad CRC32"),
            "{msg}"
        );
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
