//! The staging tree: a host directory that becomes the guest's `/`. Every write goes through
//! here so that nothing escapes the tree (no `..`, no writing through symlinks), and so that
//! `/bin`, `/sbin`, `/lib` fold into `/usr` the way Debian bookworm lays them out.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use crate::{Error, Result};

/// Top-level directories that are symlinks into /usr in a merged-/usr tree.
pub const MERGED_DIRS: [&str; 3] = ["bin", "sbin", "lib"];

pub struct Tree {
    pub root: PathBuf,
    pub merged_usr: bool,
}

impl Tree {
    pub fn new(root: &Path, merged_usr: bool) -> Result<Tree> {
        std::fs::create_dir_all(root).map_err(|e| Error::io(root, e))?;
        // Modes are set explicitly everywhere, so the host's umask never reaches the image.
        set_mode(root, 0o755)?;
        let t = Tree {
            root: root.to_path_buf(),
            merged_usr,
        };
        if merged_usr {
            for d in MERGED_DIRS {
                t.mkdir(&format!("usr/{d}"), 0o755)?;
                let link = root.join(d);
                if std::fs::symlink_metadata(&link).is_err() {
                    std::os::unix::fs::symlink(format!("usr/{d}"), &link)
                        .map_err(|e| Error::io(&link, e))?;
                }
            }
        }
        Ok(t)
    }

    /// Where a guest path lives in the tree (relative): no `..`, leading `/` and `./` dropped,
    /// `lib/x` -> `usr/lib/x` when merged.
    pub fn map(&self, guest: &str) -> Result<PathBuf> {
        let mut out = PathBuf::new();
        for c in Path::new(guest).components() {
            match c {
                Component::Normal(s) => out.push(s),
                Component::RootDir | Component::CurDir => {}
                Component::ParentDir | Component::Prefix(_) => {
                    return Err(Error::Other(format!(
                        "path `{guest}` leaves the root filesystem (`..`)"
                    )))
                }
            }
        }
        if self.merged_usr {
            let first = out
                .components()
                .next()
                .map(|c| c.as_os_str().to_string_lossy().into_owned());
            if let Some(f) = first.filter(|f| MERGED_DIRS.contains(&f.as_str())) {
                let rest = out.strip_prefix(&f).unwrap().to_path_buf();
                out = PathBuf::from("usr").join(f).join(rest);
            }
        }
        Ok(out)
    }

    /// Create the parents of `rel` as real directories; refuse to go through a symlink.
    fn parents(&self, rel: &Path) -> Result<()> {
        let mut cur = self.root.clone();
        if let Some(parent) = rel.parent() {
            for c in parent.components() {
                cur.push(c);
                match std::fs::symlink_metadata(&cur) {
                    Ok(m) if m.is_dir() => {}
                    Ok(m) if m.file_type().is_symlink() => {
                        return Err(Error::Other(format!(
                            "`/{}` would be written through the symlink `{}`",
                            rel.display(),
                            cur.strip_prefix(&self.root).unwrap_or(&cur).display()
                        )))
                    }
                    Ok(_) => {
                        return Err(Error::Other(format!(
                            "`/{}`: `{}` is a file, not a directory",
                            rel.display(),
                            cur.strip_prefix(&self.root).unwrap_or(&cur).display()
                        )))
                    }
                    Err(_) => {
                        std::fs::create_dir(&cur).map_err(|e| Error::io(&cur, e))?;
                        set_mode(&cur, 0o755)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Remove whatever is at `full` unless it is a directory (overlays replace files).
    fn clear(full: &Path) -> Result<()> {
        match std::fs::symlink_metadata(full) {
            Ok(m) if m.is_dir() => Err(Error::Other(format!(
                "{}: a directory is in the way of a file",
                full.display()
            ))),
            Ok(_) => std::fs::remove_file(full).map_err(|e| Error::io(full, e)),
            Err(_) => Ok(()),
        }
    }

    pub fn mkdir(&self, guest: &str, mode: u32) -> Result<PathBuf> {
        let rel = self.map(guest)?;
        if rel.as_os_str().is_empty() {
            return Ok(rel);
        }
        self.parents(&rel)?;
        let full = self.root.join(&rel);
        match std::fs::symlink_metadata(&full) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                std::fs::remove_file(&full).map_err(|e| Error::io(&full, e))?;
                std::fs::create_dir(&full).map_err(|e| Error::io(&full, e))?;
            }
            Err(_) => std::fs::create_dir(&full).map_err(|e| Error::io(&full, e))?,
        }
        set_mode(&full, mode)?;
        Ok(rel)
    }

    pub fn write(&self, guest: &str, data: &mut dyn Read, mode: u32) -> Result<PathBuf> {
        let rel = self.map(guest)?;
        self.parents(&rel)?;
        let full = self.root.join(&rel);
        Self::clear(&full)?;
        let mut f = std::fs::File::create(&full).map_err(|e| Error::io(&full, e))?;
        std::io::copy(data, &mut f).map_err(|e| Error::io(&full, e))?;
        set_mode(&full, mode)?;
        Ok(rel)
    }

    pub fn symlink(&self, guest: &str, target: &str) -> Result<PathBuf> {
        let rel = self.map(guest)?;
        self.parents(&rel)?;
        let full = self.root.join(&rel);
        // A package's `lib -> usr/lib` style link over our own merged-/usr link is a no-op.
        if let Ok(m) = std::fs::symlink_metadata(&full) {
            if m.is_dir() {
                return Ok(rel);
            }
        }
        Self::clear(&full)?;
        std::os::unix::fs::symlink(target, &full).map_err(|e| Error::io(&full, e))?;
        Ok(rel)
    }

    pub fn hardlink(&self, guest: &str, existing_guest: &str) -> Result<PathBuf> {
        let rel = self.map(guest)?;
        let src = self.root.join(self.map(existing_guest)?);
        self.parents(&rel)?;
        let full = self.root.join(&rel);
        Self::clear(&full)?;
        std::fs::hard_link(&src, &full).map_err(|e| Error::io(&full, e))?;
        Ok(rel)
    }

    /// Copy a host directory into the tree at `dest` (overlay: later files win). Returns the
    /// number of entries copied.
    pub fn copy_dir(&self, src: &Path, dest: &str) -> Result<usize> {
        let mut n = 0;
        let mut stack = vec![(src.to_path_buf(), dest.trim_end_matches('/').to_string())];
        while let Some((dir, gdir)) = stack.pop() {
            let mut entries: Vec<_> = std::fs::read_dir(&dir)
                .map_err(|e| Error::io(&dir, e))?
                .collect::<std::io::Result<_>>()
                .map_err(|e| Error::io(&dir, e))?;
            entries.sort_by_key(|e| e.file_name());
            for e in entries {
                let p = e.path();
                let name = e.file_name().to_string_lossy().into_owned();
                let g = format!("{gdir}/{name}");
                let m = std::fs::symlink_metadata(&p).map_err(|e| Error::io(&p, e))?;
                let mode = m.permissions().mode() & 0o7777;
                if m.file_type().is_symlink() {
                    let t = std::fs::read_link(&p).map_err(|e| Error::io(&p, e))?;
                    self.symlink(&g, &t.to_string_lossy())?;
                } else if m.is_dir() {
                    self.mkdir(&g, mode)?;
                    stack.push((p, g));
                } else if m.is_file() {
                    let mut f = std::fs::File::open(&p).map_err(|e| Error::io(&p, e))?;
                    self.write(&g, &mut f, mode)?;
                } else {
                    return Err(Error::Other(format!(
                        "{}: only files, directories and symlinks can go into a rootfs",
                        p.display()
                    )));
                }
                n += 1;
            }
        }
        Ok(n)
    }

    /// Delete everything matching `patterns` (see [`glob_match`]); returns (entries, bytes).
    pub fn trim(&self, patterns: &[String], keep: &[String]) -> Result<(u64, u64)> {
        let mut removed = (0u64, 0u64);
        let mut stack = vec![PathBuf::new()];
        while let Some(rel) = stack.pop() {
            let dir = self.root.join(&rel);
            let rd = match std::fs::read_dir(&dir) {
                Ok(r) => r,
                Err(_) => continue,
            };
            for e in rd {
                let e = e.map_err(|e| Error::io(&dir, e))?;
                let r = rel.join(e.file_name());
                let rs = r.to_string_lossy();
                let ft = e.file_type().map_err(|err| Error::io(e.path(), err))?;
                let hit = patterns.iter().any(|p| glob_match(p, &rs));
                let kept = keep
                    .iter()
                    .any(|k| glob_match(k, &rs) || glob_prefix(&rs, k));
                if hit && !kept {
                    let (n, b) = du(&e.path());
                    removed.0 += n;
                    removed.1 += b;
                    let res = if ft.is_dir() {
                        std::fs::remove_dir_all(e.path())
                    } else {
                        std::fs::remove_file(e.path())
                    };
                    res.map_err(|err| Error::io(e.path(), err))?;
                } else if ft.is_dir() {
                    stack.push(r);
                }
            }
        }
        Ok(removed)
    }
}

fn set_mode(p: &Path, mode: u32) -> Result<()> {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode & 0o7777))
        .map_err(|e| Error::io(p, e))
}

/// Entry count and byte size under `p` (not following symlinks).
fn du(p: &Path) -> (u64, u64) {
    let Ok(m) = std::fs::symlink_metadata(p) else {
        return (0, 0);
    };
    if !m.is_dir() {
        return (1, m.len());
    }
    let mut t = (1, 0);
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            let (n, b) = du(&e.path());
            t.0 += n;
            t.1 += b;
        }
    }
    t
}

/// Whether `path` is a directory on the way to something `pattern` could keep.
fn glob_prefix(path: &str, pattern: &str) -> bool {
    let pc: Vec<&str> = pattern.split('/').collect();
    let xc: Vec<&str> = path.split('/').collect();
    xc.len() < pc.len()
        && xc
            .iter()
            .zip(&pc)
            .all(|(x, p)| *p == "**" || seg_match(p, x))
}

/// Match a relative path against a pattern: `*` and `?` within one component, `**` any number
/// of whole components. A pattern matches a directory itself (which then goes whole).
pub fn glob_match(pattern: &str, path: &str) -> bool {
    let p: Vec<&str> = pattern
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let x: Vec<&str> = path.trim_matches('/').split('/').collect();
    fn rec(p: &[&str], x: &[&str]) -> bool {
        match (p.first(), x.first()) {
            (None, None) => true,
            (Some(&"**"), _) => rec(&p[1..], x) || (!x.is_empty() && rec(p, &x[1..])),
            (Some(ps), Some(xs)) => seg_match(ps, xs) && rec(&p[1..], &x[1..]),
            _ => false,
        }
    }
    rec(&p, &x)
}

fn seg_match(p: &str, s: &str) -> bool {
    let (p, s): (Vec<char>, Vec<char>) = (p.chars().collect(), s.chars().collect());
    fn rec(p: &[char], s: &[char]) -> bool {
        match p.first() {
            None => s.is_empty(),
            Some('*') => rec(&p[1..], s) || (!s.is_empty() && rec(p, &s[1..])),
            Some('?') => !s.is_empty() && rec(&p[1..], &s[1..]),
            Some(c) => s.first() == Some(c) && rec(&p[1..], &s[1..]),
        }
    }
    rec(&p, &s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("usr/share/doc", "usr/share/doc"));
        assert!(!glob_match("usr/share/doc", "usr/share/doc/x"));
        assert!(glob_match(
            "usr/lib/*/gconv",
            "usr/lib/aarch64-linux-gnu/gconv"
        ));
        assert!(glob_match("**/*.a", "usr/lib/x/libfoo.a"));
        assert!(glob_match("**/*.a", "libfoo.a"));
        assert!(!glob_match("**/*.a", "usr/lib/x/libfoo.so"));
        assert!(glob_match(
            "usr/lib/erlang/lib/*/src",
            "usr/lib/erlang/lib/kernel-8.5/src"
        ));
        assert!(glob_match("usr/?in", "usr/bin"));
        assert!(glob_prefix("usr/share", "usr/share/doc/x/copyright"));
    }

    #[test]
    fn merged_usr_mapping_and_safety() {
        let d = tempfile::tempdir().unwrap();
        let t = Tree::new(d.path(), true).unwrap();
        assert_eq!(t.map("/lib/ld.so").unwrap(), PathBuf::from("usr/lib/ld.so"));
        assert_eq!(t.map("./bin").unwrap(), PathBuf::from("usr/bin"));
        assert_eq!(t.map("etc/x").unwrap(), PathBuf::from("etc/x"));
        assert!(t.map("../etc/passwd").is_err());
        t.write("/lib/x/a", &mut &b"hi"[..], 0o644).unwrap();
        assert_eq!(std::fs::read(d.path().join("usr/lib/x/a")).unwrap(), b"hi");
        assert_eq!(std::fs::read(d.path().join("lib/x/a")).unwrap(), b"hi");
        // A symlink to the outside cannot be written through.
        t.symlink("/etc/evil", "/tmp").unwrap();
        let e = t
            .write("/etc/evil/file", &mut &b"x"[..], 0o644)
            .unwrap_err();
        assert!(e.to_string().contains("symlink"), "{e}");
        // A package's own lib -> usr/lib link is absorbed.
        t.symlink("/lib", "usr/lib").unwrap();
        assert!(d.path().join("usr/lib").is_dir());
    }

    #[test]
    fn overlay_and_trim() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        std::fs::create_dir_all(src.join("usr/share/doc/p")).unwrap();
        std::fs::write(src.join("usr/share/doc/p/copyright"), b"c").unwrap();
        std::fs::write(src.join("usr/share/doc/p/README"), b"r").unwrap();
        std::fs::create_dir_all(src.join("etc")).unwrap();
        std::fs::write(src.join("etc/a"), b"1").unwrap();
        let over = d.path().join("over");
        std::fs::create_dir_all(over.join("etc")).unwrap();
        std::fs::write(over.join("etc/a"), b"2").unwrap();
        let t = Tree::new(&d.path().join("root"), false).unwrap();
        t.copy_dir(&src, "/").unwrap();
        t.copy_dir(&over, "/").unwrap();
        assert_eq!(std::fs::read(t.root.join("etc/a")).unwrap(), b"2");
        let (n, _) = t
            .trim(
                &["usr/share/doc/*/*".into()],
                &["usr/share/doc/*/copyright".into()],
            )
            .unwrap();
        assert_eq!(n, 1);
        assert!(t.root.join("usr/share/doc/p/copyright").exists());
        assert!(!t.root.join("usr/share/doc/p/README").exists());
    }
}
