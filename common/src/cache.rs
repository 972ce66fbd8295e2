//! The one cache root: downloaded .debs and indexes, built kernels, the loader, KVM probes.

use std::fmt;
use std::path::PathBuf;

/// Neither `IMGTOOL_CACHE`, `XDG_CACHE_HOME` nor `HOME` is set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoCacheDir;

impl fmt::Display for NoCacheDir {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "no cache directory: set IMGTOOL_CACHE (or XDG_CACHE_HOME, or HOME) to a writable directory",
        )
    }
}

impl std::error::Error for NoCacheDir {}

/// `$IMGTOOL_CACHE`, else `$XDG_CACHE_HOME/imgtool`, else `~/.cache/imgtool` (empty variables
/// count as unset).
pub fn root() -> Result<PathBuf, NoCacheDir> {
    root_from(|k| std::env::var_os(k))
}

fn root_from(var: impl Fn(&str) -> Option<std::ffi::OsString>) -> Result<PathBuf, NoCacheDir> {
    let get = |k| var(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(d) = get("IMGTOOL_CACHE") {
        return Ok(d);
    }
    if let Some(d) = get("XDG_CACHE_HOME") {
        return Ok(d.join("imgtool"));
    }
    get("HOME")
        .map(|h| h.join(".cache/imgtool"))
        .ok_or(NoCacheDir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(vars: &[(&str, &str)]) -> Result<PathBuf, NoCacheDir> {
        root_from(|k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.into()))
    }

    #[test]
    fn order_of_the_variables() {
        let all = [
            ("IMGTOOL_CACHE", "/c"),
            ("XDG_CACHE_HOME", "/x"),
            ("HOME", "/h"),
        ];
        assert_eq!(with(&all), Ok("/c".into()));
        assert_eq!(with(&all[1..]), Ok("/x/imgtool".into()));
        assert_eq!(with(&all[2..]), Ok("/h/.cache/imgtool".into()));
        assert_eq!(
            with(&[("IMGTOOL_CACHE", ""), ("HOME", "/h")]),
            Ok("/h/.cache/imgtool".into())
        );
        assert_eq!(with(&[]), Err(NoCacheDir));
    }
}
