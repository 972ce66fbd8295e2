//! fwup-compatible firmware archives: the config language ([`config`]), archive creation and
//! reading ([`zip`], [`ops`]), task plans with typed actions ([`plan`]) and the executor that
//! owns the destination ([`exec`]). [`cli::run`] is fwup's command line.
//!
//! Spec: fwup 1.16 (<https://github.com/fwup-home/fwup/blob/main/docs/fwup.md>).

pub mod blocks;
pub mod cache;
pub mod cli;
pub mod config;
pub mod crypt;
pub mod error;
pub mod eval;
pub mod exec;
pub mod fat;
#[doc(hidden)]
pub mod fuzzing;
pub mod host;
pub mod mbr;
pub mod ops;
pub mod out;
pub mod plan;
pub mod progress;
pub mod rewrite;
pub mod sparse;
pub mod uuid;
pub mod vcdiff;
pub mod zip;

pub use error::{Error, Result};

/// The fwup version this crate matches (`--version`, `require-fwup-version`).
pub const VERSION: &str = "1.16.0";
