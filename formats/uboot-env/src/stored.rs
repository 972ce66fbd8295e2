//! One environment as read from where it lives, single or redundant, with what writing it back
//! needs: a single copy is rewritten in place; a redundant pair gets its *other* copy with the
//! next flag ([`Redundant::next_write`]), as fw_setenv does, so the current copy survives a torn
//! write.

use alloc::vec::Vec;

use crate::{Copy, Env, Error, FlagRule, NextWrite, Redundant, WriteOptions};

/// An environment read from one copy or a redundant pair.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stored {
    Single(Env),
    Redundant(Redundant),
}

/// A block to write back: which copy it replaces, and its bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteBack {
    pub copy: Copy,
    pub block: Vec<u8>,
    next: Option<NextWrite>,
}

impl Stored {
    /// Parse `first` alone (single layout) or with `second` (redundant layout). A single copy
    /// must be good; of a pair, at least one.
    pub fn parse(first: &[u8], second: Option<&[u8]>, rule: FlagRule) -> Result<Stored, Error> {
        match second {
            None => Env::parse_single(first).map(Stored::Single),
            Some(second) => Redundant::parse(first, second, rule).map(Stored::Redundant),
        }
    }

    pub fn env(&self) -> &Env {
        match self {
            Stored::Single(e) => e,
            Stored::Redundant(r) => &r.env,
        }
    }

    pub fn env_mut(&mut self) -> &mut Env {
        match self {
            Stored::Single(e) => e,
            Stored::Redundant(r) => &mut r.env,
        }
    }

    /// The block that stores the current variables: the single copy in place, or the inactive
    /// copy of a pair with the active flag + 1. Write it, then [`Stored::commit`] it.
    pub fn encode(&self, size: usize, opts: WriteOptions) -> Result<WriteBack, Error> {
        match self {
            Stored::Single(env) => Ok(WriteBack {
                copy: Copy::First,
                block: env.to_block(size, None, opts)?,
                next: None,
            }),
            Stored::Redundant(r) => {
                let (next, block) = r.encode_next(size, opts)?;
                Ok(WriteBack {
                    copy: next.copy,
                    block,
                    next: Some(next),
                })
            }
        }
    }

    /// Record that `w` is on disk (for a pair, its copy becomes the active one).
    pub fn commit(&mut self, w: &WriteBack) {
        if let (Stored::Redundant(r), Some(next)) = (self, w.next) {
            r.commit(next);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIZE: usize = 4096;

    fn env(v: &str) -> Env {
        Env::from_pairs([("bootcmd", "run x"), ("nerves_serial_number", v)]).unwrap()
    }

    #[test]
    fn single_is_rewritten_in_place() {
        let block = env("a").to_block(SIZE, None, WriteOptions::FWUP).unwrap();
        let mut s = Stored::parse(&block, None, FlagRule::UBoot).unwrap();
        s.env_mut().set("nerves_serial_number", "b").unwrap();
        let w = s.encode(SIZE, WriteOptions::FWUP).unwrap();
        assert_eq!(w.copy, Copy::First);
        s.commit(&w);
        let again = Stored::parse(&w.block, None, FlagRule::UBoot).unwrap();
        assert_eq!(again.env().get("nerves_serial_number"), Some("b"));
        assert_eq!(again.env().get("bootcmd"), Some("run x"));
    }

    #[test]
    fn redundant_writes_the_older_copy_with_the_next_flag_twice_in_a_row() {
        let mut copies = [
            env("a")
                .to_block(SIZE, Some(7), WriteOptions::FWUP)
                .unwrap(),
            env("b")
                .to_block(SIZE, Some(8), WriteOptions::FWUP)
                .unwrap(),
        ];
        let mut s = Stored::parse(&copies[0], Some(&copies[1]), FlagRule::UBoot).unwrap();
        assert_eq!(s.env().get("nerves_serial_number"), Some("b"));
        for (value, copy, flag) in [("c", Copy::First, 9), ("d", Copy::Second, 10)] {
            s.env_mut().set("nerves_serial_number", value).unwrap();
            let w = s.encode(SIZE, WriteOptions::FWUP).unwrap();
            assert_eq!((w.copy, w.block[4]), (copy, flag));
            copies[w.copy.index()] = w.block.clone();
            s.commit(&w);
            let read = Stored::parse(&copies[0], Some(&copies[1]), FlagRule::UBoot).unwrap();
            assert_eq!(read.env().get("nerves_serial_number"), Some(value));
            assert_eq!(read, s);
        }
    }

    #[test]
    fn a_bad_single_copy_is_an_error() {
        let mut block = env("a").to_block(SIZE, None, WriteOptions::FWUP).unwrap();
        block[9] ^= 1;
        assert!(matches!(
            Stored::parse(&block, None, FlagRule::UBoot),
            Err(Error::BadCrc { .. })
        ));
    }
}
