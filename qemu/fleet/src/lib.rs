//! Running imgtool guests in numbers: the engines behind `imgtool demo`, `experiment`,
//! `template` and `fleet`, as a library that tests and other programs call directly.
//!
//! - [`pipeline`]: from a memory profile to a bootable image (kernel, root filesystem, layout,
//!   or a fwup archive applied), all in-process.
//! - [`measure`]: one guest booted and measured (qemu argv from the `qemu` crate, the engine from
//!   `validate`).
//! - [`experiment`]: profiles side by side, N runs, M guests at once, density sweeps.
//! - [`fleet`]: N clones of a saved template, or N cold boots of a raw image (someone else's
//!   firmware), each with its own identity, held and reported.
//!
//! The `validate` crate stays free of orchestration: it measures one process it is given.

pub mod experiment;
pub mod fleet;
pub mod host;
pub mod ksm;
pub mod measure;
pub mod pipeline;
pub mod preflight;

use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The user's input is wrong (a file, a field, a flag): exit status 2 at the CLI.
    #[error("{0}")]
    Usage(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Kernel(#[from] kernel_configs::Error),
    #[error(transparent)]
    Rootfs(#[from] rootfs::Error),
    #[error(transparent)]
    Layout(#[from] layout::Error),
    #[error(transparent)]
    Validate(#[from] validate::Error),
    #[error(transparent)]
    Qemu(#[from] qemu::Error),
    /// A step failed; its own message is in the text.
    #[error("{0}")]
    Failed(String),
}

impl Error {
    pub fn io(what: impl std::fmt::Display, source: std::io::Error) -> Error {
        Error::Io {
            what: what.to_string(),
            source,
        }
    }

    /// Bad input rather than a failing machine.
    pub fn is_usage(&self) -> bool {
        match self {
            Error::Usage(_) => true,
            Error::Kernel(e) => e.is_usage(),
            Error::Rootfs(e) => e.is_input(),
            Error::Layout(e) => e.is_input_error(),
            Error::Qemu(e) => e.is_usage(),
            _ => false,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// [`common::fs::write_atomic`], with the fleet's error.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    common::fs::write_atomic(path, bytes).map_err(|e| Error::io("writing a result", e))
}
