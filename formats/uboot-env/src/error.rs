//! Errors of the env crate. `Display` is written by hand: the crate is `no_std` and the
//! workspace's `thiserror` is inherited with its `std` feature.

use alloc::boxed::Box;
use alloc::string::String;
use core::fmt;

/// Everything that can go wrong reading or writing an environment block.
///
/// Byte offsets are from the start of the block (CRC at offset 0).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Error {
    /// The block cannot even hold the header and the terminating NUL.
    BlockTooSmall { len: usize, min: usize },
    /// Stored CRC32 does not match the data area: the block is not an environment or is torn.
    BadCrc { stored: u32, computed: u32 },
    /// A `name=value` entry has no `=`.
    MissingEquals { offset: usize },
    /// An entry starts with `=` (empty name).
    EmptyName { offset: usize },
    /// The data area ends inside an entry (no terminating NUL).
    Unterminated { offset: usize },
    /// A name or value is not UTF-8.
    NotUtf8 { offset: usize },
    /// A variable name that cannot be stored (empty, or contains `=` or NUL).
    InvalidName { name: String },
    /// A value containing NUL.
    InvalidValue { name: String },
    /// The variables do not fit: `needed` bytes of data area, `available` in the block.
    TooBig { needed: usize, available: usize },
    /// The two copies of a redundant environment have different sizes.
    SizeMismatch { first: usize, second: usize },
    /// Neither copy of a redundant environment is usable.
    NoValidCopy {
        first: Box<Error>,
        second: Box<Error>,
    },
    /// A [`crate::locator`] record whose CRC does not match.
    LocatorCrc { stored: u32, computed: u32 },
    /// A [`crate::locator`] record describing an env no disk can have.
    BadLocator,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::BlockTooSmall { len, min } => {
                write!(
                    f,
                    "environment block is {len} bytes; at least {min} are needed"
                )
            }
            Error::BadCrc { stored, computed } => write!(
                f,
                "bad CRC32: stored 0x{stored:08x}, data gives 0x{computed:08x} \
                 (not an environment, wrong offset/size, or a torn write)"
            ),
            Error::MissingEquals { offset } => {
                write!(f, "entry at byte {offset} has no '=' (expected name=value)")
            }
            Error::EmptyName { offset } => write!(f, "entry at byte {offset} has an empty name"),
            Error::Unterminated { offset } => {
                write!(
                    f,
                    "entry at byte {offset} runs past the end of the block (no NUL)"
                )
            }
            Error::NotUtf8 { offset } => write!(f, "entry at byte {offset} is not valid UTF-8"),
            Error::InvalidName { name } => write!(
                f,
                "invalid variable name {name:?}: names must be non-empty, without '=' or NUL"
            ),
            Error::InvalidValue { name } => {
                write!(f, "invalid value for {name:?}: values cannot contain NUL")
            }
            Error::TooBig { needed, available } => write!(
                f,
                "variables need {needed} bytes but the environment holds {available}; \
                 remove variables or use a bigger environment"
            ),
            Error::SizeMismatch { first, second } => write!(
                f,
                "redundant copies differ in size ({first} and {second} bytes); they must match"
            ),
            Error::NoValidCopy { first, second } => {
                write!(f, "no valid copy: copy 1: {first}; copy 2: {second}")
            }
            Error::LocatorCrc { stored, computed } => write!(
                f,
                "env locator in sector 0 has a bad CRC32 (stored 0x{stored:08x}, \
                 data gives 0x{computed:08x}): rewrite the image with `imgtool build`"
            ),
            Error::BadLocator => write!(
                f,
                "env locator in sector 0 describes an impossible env (offsets and size must be \
                 whole blocks past sector 0, copies must not overlap): rewrite the image"
            ),
        }
    }
}

impl core::error::Error for Error {}
