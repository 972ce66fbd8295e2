//! Root filesystem assembly for imgtool's guests: directories and overlays, inline files, target
//! Debian packages (fetched from a mirror, verified, resolved by what the binaries link), our
//! init (`rootfs/init`, embedded by build.rs) with its config, and memory profiles.

pub mod assemble;
pub mod deb;
pub mod elf;
pub mod guestenv;
pub mod initconf;
pub mod lock;
pub mod openpgp;
pub mod pack;
pub mod profile;
pub mod spec;
pub mod tree;

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Bad input: a spec or profile file, with the field and the fix in `msg`.
    #[error("{file}{}: {msg}", line.map(|l| format!(":{l}")).unwrap_or_default())]
    Input {
        file: String,
        line: Option<usize>,
        msg: String,
    },
    #[error("{url}: {msg}")]
    Http { url: String, msg: String },
    #[error("{what}: sha256 mismatch: expected {expected}, got {got}")]
    Checksum {
        what: String,
        expected: String,
        got: String,
    },
    #[error("{file}: {msg}")]
    Format { file: String, msg: String },
    /// A missing or bad OpenPGP signature.
    #[error("{what}: {msg}")]
    Signature { what: String, msg: String },
    /// `--offline` (or a lockfile build) would have needed the network.
    #[error("offline: {0}")]
    Offline(String),
    #[error("{0}")]
    Resolve(String),
    #[error("{0}")]
    Other(String),
}

impl Error {
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Error {
        Error::Io {
            path: path.as_ref().to_path_buf(),
            source,
        }
    }

    /// Errors caused by the user's input (exit code 2 in the CLI).
    pub fn is_input(&self) -> bool {
        matches!(self, Error::Input { .. })
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// Progress of long steps (downloads); the CLI draws bars, tests pass `NoProgress`.
pub trait Progress: Sync {
    fn start(&self, _what: &str, _total: Option<u64>) {}
    fn advance(&self, _bytes: u64) {}
    fn finish(&self) {}
}

pub struct NoProgress;
impl Progress for NoProgress {}

/// The Rust target the embedded init was built for.
pub const INIT_TARGET: &str = "aarch64-unknown-linux-musl";

static INIT_BIN: &[u8] = include_bytes!(env!("IMGTOOL_INIT_PATH"));

/// The static aarch64 init binary that build.rs built from rootfs/init.
pub fn init_binary() -> Result<&'static [u8]> {
    if INIT_BIN.is_empty() {
        return Err(Error::Other(format!(
            "this imgtool was built without the guest init: {}",
            env!("IMGTOOL_INIT_ERROR")
        )));
    }
    Ok(INIT_BIN)
}

/// Build root filesystem `spec` (a built-in name or a YAML path) into the squashfs file `out`:
/// assemble a stage directory beside `out`, pack it, remove the stage. `profile` overrides the
/// spec's own. The spec's lockfile is used when it fits; otherwise the build resolves against
/// the mirror's index and warns (as `imgtool rootfs build` does).
pub fn build_squashfs(
    spec: &str,
    profile: Option<String>,
    out: &Path,
    progress: &dyn Progress,
) -> Result<assemble::Report> {
    let l = spec::load_named(spec)?;
    let dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = out.file_name().unwrap_or_default().to_string_lossy();
    let stage = dir.join(format!(".{name}.stage{}", std::process::id()));
    let (status, from) = lock::find(&l, None)?;
    let lf = match status {
        lock::Status::Fresh(lf) => Some(*lf),
        lock::Status::Missing => None,
        lock::Status::Stale(why) => {
            tracing::warn!("{from} is out of date ({why}): resolving against the index");
            None
        }
    };
    let cache = common::cache::root().map_err(|e| Error::Other(e.to_string()))?;
    let mut opts = assemble::BuildOptions::new(profile, cache, progress);
    opts.lock = lf.as_ref();
    let res = assemble::assemble(&l, &stage, &opts).and_then(|report| {
        let comp = l.spec.compression.as_deref().unwrap_or("xz");
        pack::pack(&stage, out, comp)?;
        Ok(report)
    });
    let _ = std::fs::remove_dir_all(&stage);
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Our swap header matches the one util-linux's mkswap writes (same UUID, no label).
    #[test]
    fn swap_header_matches_mkswap() {
        let Some(mkswap) = ["/usr/sbin/mkswap", "/sbin/mkswap"]
            .into_iter()
            .find(|p| Path::new(p).exists())
        else {
            panic!("mkswap (util-linux) is required for this test");
        };
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("swap");
        let size = 8u64 << 20;
        std::fs::write(&f, vec![0u8; size as usize]).unwrap();
        let uuid = "6c1f6c6e-4b8c-4d2a-9d55-0a4f1f3e8b21";
        let out = std::process::Command::new(mkswap)
            .args(["-U", uuid, "-p", "4096"])
            .arg(&f)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let theirs = std::fs::read(&f).unwrap();
        let ub: Vec<u8> = (0..16)
            .map(|i| {
                let h: String = uuid.chars().filter(|c| *c != '-').collect();
                u8::from_str_radix(&h[i * 2..i * 2 + 2], 16).unwrap()
            })
            .collect();
        let ours = initconf::swap_header(4096, size, ub.try_into().unwrap()).unwrap();
        assert_eq!(&theirs[..4096], &ours[..]);
    }
}
