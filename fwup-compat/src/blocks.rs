//! Block addresses on the destination: the one checked type every action and table writer
//! turns its 512-byte block numbers into byte offsets with.
//!
//! meta.conf is untrusted, so a block offset or count can be anything up to 2^64 - 1. A
//! [`Blocks`] range only exists if its first and last byte offsets fit an `off_t` (i64), so
//! no later multiplication or addition can wrap (fwup's own `off_t` arithmetic wraps on
//! such values and writes at the wrong place). [`Blocks::within`] then checks the range
//! against the destination's hard end (a device's size or `--max-size`). The executor
//! checks every action of a task this way before its first write ([`crate::plan::Plan`]).

use crate::error::{Error, Result};

/// fwup's block size.
pub const BLOCK: u64 = 512;

/// Largest byte offset a destination can have: `off_t` is signed 64-bit.
pub const MAX_BYTES: u64 = i64::MAX as u64;

/// `count` blocks from block `offset`, with both ends known to fit in an `off_t`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Blocks {
    offset: u64,
    count: u64,
}

impl Blocks {
    /// `what` names the action or section and its value in the error, e.g.
    /// `raw_memset(1024, 16, 0xff)`.
    pub fn new(what: &str, offset: u64, count: u64) -> Result<Blocks> {
        let end = offset.checked_add(count);
        let ok = |b: Option<u64>| {
            b.and_then(|b| b.checked_mul(BLOCK))
                .is_some_and(|x| x <= MAX_BYTES)
        };
        if !ok(Some(offset)) {
            return Err(Error::msg(format!(
                "{what}: block offset {offset} is past the largest byte offset a device can have (2^63 - 1 bytes)"
            )));
        }
        if !ok(end) {
            return Err(Error::msg(format!(
                "{what}: {count} blocks from block {offset} end past the largest byte offset a device can have (2^63 - 1 bytes)"
            )));
        }
        Ok(Blocks { offset, count })
    }

    /// The blocks that hold `bytes` bytes written from block `offset` (a partial last block
    /// is padded to a whole one).
    pub fn for_bytes(what: &str, offset: u64, bytes: u64) -> Result<Blocks> {
        Blocks::new(what, offset, bytes.div_ceil(BLOCK))
    }

    /// First block.
    pub fn offset(&self) -> u64 {
        self.offset
    }
    /// Blocks covered.
    pub fn count(&self) -> u64 {
        self.count
    }
    /// First byte.
    pub fn byte_offset(&self) -> u64 {
        self.offset * BLOCK
    }
    /// Bytes covered.
    pub fn byte_len(&self) -> u64 {
        self.count * BLOCK
    }
    /// One past the last byte.
    pub fn byte_end(&self) -> u64 {
        (self.offset + self.count) * BLOCK
    }

    /// Fail unless the range ends at or before `end` bytes (0: the size is not known, as for
    /// a regular file that may grow).
    pub fn within(&self, what: &str, end: u64) -> Result<()> {
        if end > 0 && self.byte_end() > end {
            return Err(Error::msg(format!(
                "{what}: blocks {} to {} (bytes {} to {}) are past the end of the destination ({end} bytes). Check the block offset and count, the media size or --max-size.",
                self.offset,
                self.offset + self.count,
                self.byte_offset(),
                self.byte_end()
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overflow_and_end_are_errors_naming_the_action() {
        let b = Blocks::new("raw_memset(10, 2, 0)", 10, 2).unwrap();
        assert_eq!(
            (b.byte_offset(), b.byte_len(), b.byte_end()),
            (5120, 1024, 6144)
        );
        assert!(b.within("x", 6144).is_ok());
        assert!(b.within("x", 0).is_ok());
        let e = b.within("raw_memset(10, 2, 0)", 6000).unwrap_err();
        assert!(e.to_string().contains("raw_memset(10, 2, 0)"), "{e}");
        // 2^55 blocks is 2^64 bytes: wraps to 0 without the check.
        let e = Blocks::new("raw_write(36028797018963968)", 1 << 55, 1).unwrap_err();
        assert!(
            e.to_string().starts_with("raw_write(36028797018963968)"),
            "{e}"
        );
        assert!(Blocks::new("x", 0, 1 << 55).is_err());
        assert!(Blocks::new("x", u64::MAX, 0).is_err());
        assert!(Blocks::new("x", (MAX_BYTES / BLOCK) - 1, 1).is_ok());
        assert!(Blocks::new("x", MAX_BYTES / BLOCK, 1).is_err());
        assert_eq!(Blocks::for_bytes("x", 1, 513).unwrap().count(), 2);
    }
}
