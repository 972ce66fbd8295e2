//! A Nerves firmware (.fw) that imgtool did not build: what is in it ([`inspect`]) and the same
//! firmware with an imgtool memory profile applied, as far as the firmware allows ([`tune`]).
//!
//! A Nerves firmware is a fwup archive (fwup-compat reads and writes it) whose root filesystem
//! is a squashfs (the squashfs crate reads and rewrites it) with erlinit as PID 1 and an OTP
//! release under erlinit's release path (/srv/erlang). The layout follows erlinit 1.15's
//! README (<https://github.com/nerves-project/erlinit>): `-r` release path,
//! `releases/start_erl.data`, `releases/VSN/{NAME.boot,vm.args,sys.config}`, `--pre-run-exec`.

pub mod inspect;
pub mod release;
pub mod tune;

pub use inspect::{inspect, Info};
pub use tune::{tune, TuneOptions, TuneReport};

/// The largest archive entry read into memory (a Nerves rootfs slot is 50-150 MiB).
pub const MAX_ENTRY: usize = 512 << 20;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{file}: not a firmware archive (.fw): {why}")]
    NotFirmware { file: String, why: String },
    #[error("{file}: no root filesystem: no file-resource holds a squashfs image (resources: {resources})")]
    NoRootfs { file: String, resources: String },
    #[error("{file}: PID 1 is {pid1}, not erlinit: fw tune adds its helper through erlinit's --pre-run-exec (/etc/erlinit.config)")]
    NoErlinit { file: String, pid1: String },
    #[error("{file}: no OTP release under {dir} (erlinit's release path): expected {dir}/releases/VSN/NAME.boot")]
    NoRelease { file: String, dir: String },
    #[error("{file}: the release in {dir} is not a BEAM release: {why}")]
    NotBeam {
        file: String,
        dir: String,
        why: String,
    },
    #[error("{file}: {why}")]
    Rootfs { file: String, why: String },
    #[error(transparent)]
    Profile(#[from] rootfs::Error),
    #[error("{0}")]
    Io(String),
}

impl Error {
    /// The input is at fault (exit 2), not the machine.
    pub fn is_input(&self) -> bool {
        match self {
            Error::Io(_) => false,
            Error::Profile(e) => e.is_input(),
            _ => true,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;
