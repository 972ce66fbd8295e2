//! Atomic file writes: a reader sees the old file or the whole new one, never half of it.

use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

/// A temporary name beside `path` (same directory, so the rename stays on one filesystem):
/// `.NAME.tmp-PID`.
pub fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// Write `bytes` to a temporary file beside `path`, fsync it, rename it over `path`. On error
/// the temporary file is removed and the error names the path.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic_mode(path, bytes, None)
}

/// [`write_atomic`], with the new file's permission bits set first (e.g. 0o755 for a program).
pub fn write_atomic_mode(path: &Path, bytes: &[u8], mode: Option<u32>) -> io::Result<()> {
    if path.file_name().is_none() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{}: not a file name", path.display()),
        ));
    }
    let tmp = temp_path(path);
    let res = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        if let Some(m) = mode {
            use std::os::unix::fs::PermissionsExt;
            f.set_permissions(std::fs::Permissions::from_mode(m))?;
        }
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    res.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io::Error::new(e.kind(), format!("writing {}: {e}", path.display()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_whole_and_leaves_no_temporary() {
        let d = std::env::temp_dir().join(format!("common-fs-test-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let p = d.join("out.txt");
        write_atomic(&p, b"old").unwrap();
        write_atomic_mode(&p, b"new contents", Some(0o700)).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"new contents");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let names: Vec<_> = std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["out.txt"]);
        // A directory that does not exist: an error that names the path, nothing left behind.
        let e = write_atomic(&d.join("no/such/dir/x"), b"x").unwrap_err();
        assert!(e.to_string().contains("no/such/dir/x"), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
