//! The environment as an ordered list of variables.

use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use crate::block::{self, Layout, RawBlock, WriteOptions};
use crate::Error;

/// Ordered `name -> value` variables. Keeps insertion (or parse) order; `set` on an existing
/// name changes the value in place. Serialization sorts by default (see [`WriteOptions`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Env {
    vars: Vec<(String, String)>,
}

impl Env {
    pub fn new() -> Self {
        Env::default()
    }

    /// Parse a single-layout block (CRC + data), checking the CRC.
    pub fn parse_single(block: &[u8]) -> Result<Env, Error> {
        Self::parse(block, Layout::Single)
    }

    /// Parse one copy in the given layout, checking the CRC (the flag byte is ignored here;
    /// use [`crate::Redundant`] to pick between two copies).
    pub fn parse(block: &[u8], layout: Layout) -> Result<Env, Error> {
        Ok(Env::from_decoded(RawBlock::parse(block, layout)?.vars()?))
    }

    /// From `block::decode_vars` output (names already unique and valid).
    pub(crate) fn from_decoded(vars: Vec<(String, String)>) -> Env {
        Env { vars }
    }

    /// Build from pairs; later duplicates overwrite earlier ones.
    pub fn from_pairs<'a>(
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Env, Error> {
        let mut env = Env::new();
        for (n, v) in pairs {
            env.set(n, v)?;
        }
        Ok(env)
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Set a variable; an existing one keeps its position.
    pub fn set(&mut self, name: &str, value: &str) -> Result<(), Error> {
        block::validate(name, value)?;
        match self.vars.iter_mut().find(|(n, _)| n == name) {
            Some(slot) => slot.1 = String::from(value),
            None => self.vars.push((String::from(name), String::from(value))),
        }
        Ok(())
    }

    /// Remove a variable, returning its value if it was set.
    pub fn unset(&mut self, name: &str) -> Option<String> {
        let i = self.vars.iter().position(|(n, _)| n == name)?;
        Some(self.vars.remove(i).1)
    }

    pub fn clear(&mut self) {
        self.vars.clear();
    }

    pub fn len(&self) -> usize {
        self.vars.len()
    }

    pub fn is_empty(&self) -> bool {
        self.vars.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.vars.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// Reorder by name (byte-wise), as U-Boot and fwup store them.
    pub fn sort(&mut self) {
        self.vars
            .sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    }

    /// Bytes of data area these variables need (entries plus the final NUL).
    pub fn encoded_len(&self) -> usize {
        block::encoded_len(self.iter())
    }

    /// Serialize into `block` (the whole slice is written: header, data, padding).
    /// `flag` is `None` for the single layout, `Some(serial)` for one redundant copy.
    /// Returns the data bytes used; [`Error::TooBig`] names the bytes needed.
    pub fn write_block(
        &self,
        block: &mut [u8],
        flag: Option<u8>,
        opts: WriteOptions,
    ) -> Result<usize, Error> {
        let vars: Vec<(&str, &str)> = self.iter().collect();
        block::encode_block(&vars, flag, opts, block)
    }

    /// [`Env::write_block`] into a new block of `size` bytes.
    pub fn to_block(
        &self,
        size: usize,
        flag: Option<u8>,
        opts: WriteOptions,
    ) -> Result<Vec<u8>, Error> {
        let mut block = vec![0u8; size];
        self.write_block(&mut block, flag, opts)?;
        Ok(block)
    }
}
