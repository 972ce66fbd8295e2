//! Redundant environments: two copies, each with a flag byte that counts writes.
//!
//! Which copy is current follows U-Boot's `env_import_redund` (env/common.c) and
//! tools/env/fw_env.c: a copy with a bad CRC is ignored; of two good copies the higher flag
//! wins, except that 0 beats 255 (wrap). A write goes to the *other* copy with flag + 1, so
//! the current copy stays intact until the new one is complete. fwup (src/uboot_env.c) does
//! the same but compares flags as a wrapping serial number; see [`FlagRule`].
//! <https://github.com/u-boot/u-boot/blob/master/env/common.c>

use alloc::boxed::Box;
use alloc::vec::Vec;

use crate::block::{Layout, RawBlock, WriteOptions};
use crate::{Env, Error};

/// One of the two copies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Copy {
    /// At the first offset (`block-offset`, first line of fw_env.config).
    First,
    /// At the redundant offset.
    Second,
}

impl Copy {
    pub fn other(self) -> Copy {
        match self {
            Copy::First => Copy::Second,
            Copy::Second => Copy::First,
        }
    }

    /// 0 for the first copy, 1 for the second.
    pub fn index(self) -> usize {
        match self {
            Copy::First => 0,
            Copy::Second => 1,
        }
    }
}

/// How two good copies are ordered by their flags.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FlagRule {
    /// U-Boot and u-boot-tools: higher flag wins, 0 beats 255, equal picks the first copy.
    #[default]
    UBoot,
    /// fwup: the second copy wins iff `flag2 - flag1` (mod 256) is in 1..=127. Agrees with
    /// `UBoot` whenever the flags are close, which they are when only these tools wrote them.
    Fwup,
}

impl FlagRule {
    /// Which copy is newer when both are good.
    pub fn newer(self, flag1: u8, flag2: u8) -> Copy {
        let second = match self {
            FlagRule::UBoot => match (flag1, flag2) {
                (255, 0) => true,
                (0, 255) => false,
                _ => flag2 > flag1,
            },
            FlagRule::Fwup => (1..128).contains(&flag2.wrapping_sub(flag1)),
        };
        if second {
            Copy::Second
        } else {
            Copy::First
        }
    }
}

/// What was found in one copy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CopyStatus {
    pub flag: u8,
    pub crc_ok: bool,
    /// Why the copy cannot be used (`None` when it is good).
    pub error: Option<Error>,
}

/// A redundant environment as read from its two copies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Redundant {
    pub env: Env,
    /// The copy `env` came from.
    pub active: Copy,
    /// The active copy's flag.
    pub flag: u8,
    /// Status of the first and second copy.
    pub copies: [CopyStatus; 2],
}

/// Where the next write goes and with which flag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NextWrite {
    pub copy: Copy,
    pub flag: u8,
}

impl Redundant {
    /// Read both copies and pick the current one. Fails only if neither copy is good.
    pub fn parse(first: &[u8], second: &[u8], rule: FlagRule) -> Result<Redundant, Error> {
        if first.len() != second.len() {
            return Err(Error::SizeMismatch {
                first: first.len(),
                second: second.len(),
            });
        }
        let (s1, e1) = read_copy(first)?;
        let (s2, e2) = read_copy(second)?;
        let active = match (&e1, &e2) {
            (Ok(_), Ok(_)) => rule.newer(s1.flag, s2.flag),
            (Ok(_), Err(_)) => Copy::First,
            (Err(_), Ok(_)) => Copy::Second,
            (Err(a), Err(b)) => {
                return Err(Error::NoValidCopy {
                    first: Box::new(a.clone()),
                    second: Box::new(b.clone()),
                })
            }
        };
        let flag = [s1.flag, s2.flag][active.index()];
        let env = match active {
            Copy::First => e1,
            Copy::Second => e2,
        }?;
        Ok(Redundant {
            env,
            active,
            flag,
            copies: [s1, s2],
        })
    }

    /// The inactive copy, with the active flag + 1 (wrapping), as fw_setenv and fwup write.
    pub fn next_write(&self) -> NextWrite {
        NextWrite {
            copy: self.active.other(),
            flag: self.flag.wrapping_add(1),
        }
    }

    /// Serialize `self.env` for [`Redundant::next_write`] into a block of `size` bytes.
    /// After writing it to disk, call [`Redundant::commit`] to keep this state in step.
    pub fn encode_next(
        &self,
        size: usize,
        opts: WriteOptions,
    ) -> Result<(NextWrite, Vec<u8>), Error> {
        let next = self.next_write();
        Ok((next, self.env.to_block(size, Some(next.flag), opts)?))
    }

    /// Record that `next` was written: it becomes the active, good copy.
    pub fn commit(&mut self, next: NextWrite) {
        self.active = next.copy;
        self.flag = next.flag;
        self.copies[next.copy.index()] = CopyStatus {
            flag: next.flag,
            crc_ok: true,
            error: None,
        };
    }
}

fn read_copy(block: &[u8]) -> Result<(CopyStatus, Result<Env, Error>), Error> {
    let raw = RawBlock::parse(block, Layout::Redundant)?;
    let env = raw.vars().map(Env::from_decoded);
    let status = CopyStatus {
        flag: raw.header.flag.unwrap_or(0),
        crc_ok: raw.crc_ok(),
        error: env.as_ref().err().cloned(),
    };
    Ok((status, env))
}

/// The block of a freshly created redundant environment: flag 1. fwup's `uboot_clearenv`
/// writes it to both copies; mkenvimage -r writes it to one.
pub fn initial_block(env: &Env, size: usize, opts: WriteOptions) -> Result<Vec<u8>, Error> {
    env.to_block(size, Some(1), opts)
}
