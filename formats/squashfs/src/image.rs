//! Reading an existing squashfs image (someone else's root filesystem) and writing it back with a
//! few files put in or replaced, everything else (owners, modes, device nodes, compressor, block
//! size, mtime) kept as it was. backhand does the reading and the writing; this module resolves
//! paths through the image's symlinks, bounds what untrusted images can make us read, and turns
//! backhand's panics on corrupt input into errors.
//!
//! Spec: <https://dr-emann.github.io/squashfs/>.

use std::collections::BTreeMap;
use std::io::{Cursor, Read};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Component, Path, PathBuf};

use backhand::{FilesystemReader, FilesystemWriter, InnerNode, NodeHeader};

use crate::Error;

/// Symlinks followed while resolving one path (the kernel's own limit is 40).
const MAX_LINKS: usize = 40;

/// What a path names inside the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    File { size: u64 },
    Dir,
    Symlink(String),
    Other,
}

/// An image opened for reading.
pub struct Image<'a> {
    fs: FilesystemReader<'a>,
    /// fullpath ("/etc/x") -> index into fs.root.nodes
    index: BTreeMap<PathBuf, usize>,
}

/// A file to put into the image: replaced if it exists, added (with its parent directories,
/// mode 0755, root-owned) if not.
#[derive(Debug, Clone)]
pub struct Put {
    pub path: String,
    pub data: Vec<u8>,
    pub mode: u16,
}

fn corrupt(what: impl std::fmt::Display) -> Error {
    Error::BadSuperblock(format!("not a readable squashfs image: {what}"))
}

/// backhand panics on some corrupt images; an untrusted image must give an error instead.
fn guarded<T>(f: impl FnOnce() -> Result<T, Error>) -> Result<T, Error> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|p| {
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "corrupt data".into());
        Err(corrupt(msg))
    })
}

fn normalize(path: &str) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in Path::new(path).components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    out
}

impl<'a> Image<'a> {
    /// Open an image held in memory.
    pub fn open(bytes: &'a [u8]) -> Result<Image<'a>, Error> {
        guarded(|| {
            let fs = FilesystemReader::from_reader(Cursor::new(bytes)).map_err(corrupt)?;
            let index = fs
                .root
                .nodes
                .iter()
                .enumerate()
                .map(|(i, n)| (normalize(&n.fullpath.to_string_lossy()), i))
                .collect();
            Ok(Image { fs, index })
        })
    }

    /// The image's compressor and block size, as `Options` to write it again with.
    pub fn compression(&self) -> Option<crate::Compression> {
        use backhand::compression::Compressor as C;
        match C::from(self.fs.compressor?) {
            C::Gzip => Some(crate::Compression::Gzip),
            C::Xz => Some(crate::Compression::Xz),
            C::Zstd => Some(crate::Compression::Zstd),
            C::Lz4 => Some(crate::Compression::Lz4),
            _ => None,
        }
    }

    pub fn block_size(&self) -> u32 {
        self.fs.block_size
    }

    /// Follow symlinks (absolute ones relative to the image root) to the node a path names.
    fn resolve(&self, path: &str) -> Option<usize> {
        let mut p = normalize(path);
        for _ in 0..MAX_LINKS {
            // Resolve intermediate components too: /sbin may itself be a link (merged /usr).
            let mut cur = PathBuf::from("/");
            let comps: Vec<_> = p.components().skip(1).collect();
            let mut restarted = false;
            for (i, c) in comps.iter().enumerate() {
                cur.push(c);
                let idx = *self.index.get(&cur)?;
                if let InnerNode::Symlink(l) = &self.fs.root.nodes[idx].inner {
                    let target = l.link.to_string_lossy().into_owned();
                    let base = if target.starts_with('/') {
                        PathBuf::from("/")
                    } else {
                        cur.parent().map(Path::to_path_buf).unwrap_or_default()
                    };
                    let mut next = base.join(target);
                    for rest in &comps[i + 1..] {
                        next.push(rest);
                    }
                    p = normalize(&next.to_string_lossy());
                    restarted = true;
                    break;
                }
            }
            if !restarted {
                return self.index.get(&p).copied();
            }
        }
        None
    }

    /// What `path` is, symlinks followed.
    pub fn kind(&self, path: &str) -> Option<Kind> {
        let i = self.resolve(path)?;
        Some(match &self.fs.root.nodes[i].inner {
            InnerNode::File(f) => Kind::File {
                size: f.file_len() as u64,
            },
            InnerNode::Dir(_) => Kind::Dir,
            InnerNode::Symlink(l) => Kind::Symlink(l.link.to_string_lossy().into_owned()),
            _ => Kind::Other,
        })
    }

    /// The real path `path` resolves to (for messages and edits).
    pub fn real_path(&self, path: &str) -> Option<String> {
        let i = self.resolve(path)?;
        Some(
            normalize(&self.fs.root.nodes[i].fullpath.to_string_lossy())
                .to_string_lossy()
                .into_owned(),
        )
    }

    /// A regular file's bytes; None when it is missing or not a file; an error when it is larger
    /// than `max` or its data is corrupt.
    pub fn read(&self, path: &str, max: u64) -> Result<Option<Vec<u8>>, Error> {
        let Some(i) = self.resolve(path) else {
            return Ok(None);
        };
        let InnerNode::File(f) = &self.fs.root.nodes[i].inner else {
            return Ok(None);
        };
        let len = f.file_len() as u64;
        if len > max {
            return Err(corrupt(format!("{path} is {len} bytes, more than {max}")));
        }
        guarded(|| {
            let mut out = Vec::with_capacity(len as usize);
            self.fs
                .file(f)
                .reader()
                .take(max + 1)
                .read_to_end(&mut out)
                .map_err(|e| corrupt(format!("{path}: {e}")))?;
            Ok(Some(out))
        })
    }

    /// The names in a directory (symlinks followed to it), sorted.
    pub fn list(&self, dir: &str) -> Vec<String> {
        let Some(i) = self.resolve(dir) else {
            return Vec::new();
        };
        let d = normalize(&self.fs.root.nodes[i].fullpath.to_string_lossy());
        self.index
            .keys()
            .filter(|p| p.parent() == Some(d.as_path()) && **p != d)
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect()
    }

    /// Write the image again with `puts` applied, keeping its compressor, block size and
    /// mtime. The same input and puts give the same bytes.
    pub fn rewrite(&self, puts: &[Put]) -> Result<Vec<u8>, Error> {
        guarded(|| {
            let mut w = FilesystemWriter::from_fs_reader(&self.fs)?;
            let mtime = self.fs.mod_time;
            for p in puts {
                let data = Cursor::new(p.data.clone());
                match self.kind(&p.path) {
                    Some(Kind::File { .. }) => {
                        let target = self.real_path(&p.path).unwrap_or_else(|| p.path.clone());
                        w.replace_file(&target, data)?
                    }
                    Some(_) => {
                        return Err(Error::Unsupported {
                            path: PathBuf::from(&p.path),
                            what: "exists in the image and is not a regular file".into(),
                        })
                    }
                    None => {
                        // A new file goes where its parent really is (/sbin may be a link).
                        let full = normalize(&p.path);
                        let (parent, name) = match (full.parent(), full.file_name()) {
                            (Some(d), Some(n)) => (d.to_string_lossy().into_owned(), n),
                            _ => {
                                return Err(Error::Unsupported {
                                    path: PathBuf::from(&p.path),
                                    what: "is not a file path".into(),
                                })
                            }
                        };
                        let real_parent = match self.real_path(&parent) {
                            Some(d) => d,
                            None => {
                                w.push_dir_all(&parent, NodeHeader::new(0o755, 0, 0, mtime))?;
                                parent
                            }
                        };
                        let target = Path::new(&real_parent).join(name);
                        w.push_file(data, &target, NodeHeader::new(p.mode, 0, 0, mtime))?;
                    }
                }
            }
            let mut out = Cursor::new(Vec::new());
            w.write(&mut out)?;
            Ok(out.into_inner())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn image_of(dir: &Path) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        crate::build(dir, &mut out, &crate::Options::default()).unwrap();
        out.into_inner()
    }

    fn tree() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("usr/sbin")).unwrap();
        std::fs::create_dir_all(d.path().join("etc")).unwrap();
        std::fs::write(d.path().join("usr/sbin/init"), b"init!").unwrap();
        std::fs::write(d.path().join("etc/a.conf"), b"a=1\n").unwrap();
        symlink("usr/sbin", d.path().join("sbin")).unwrap();
        d
    }

    #[test]
    fn reads_through_symlinks_and_lists() {
        let d = tree();
        let bytes = image_of(d.path());
        let img = Image::open(&bytes).unwrap();
        assert_eq!(img.read("/sbin/init", 100).unwrap().unwrap(), b"init!");
        assert_eq!(img.real_path("/sbin/init").unwrap(), "/usr/sbin/init");
        assert_eq!(img.kind("/etc").unwrap(), Kind::Dir);
        assert_eq!(img.list("/etc"), vec!["a.conf".to_string()]);
        assert!(img.read("/nope", 100).unwrap().is_none());
        assert!(img.read("/etc/a.conf", 2).is_err(), "size cap");
        assert_eq!(img.compression(), Some(crate::Compression::Gzip));
    }

    #[test]
    fn rewrite_replaces_adds_and_is_reproducible() {
        let d = tree();
        let bytes = image_of(d.path());
        let img = Image::open(&bytes).unwrap();
        let puts = vec![
            Put {
                path: "/etc/a.conf".into(),
                data: b"a=2\n".to_vec(),
                mode: 0o644,
            },
            Put {
                path: "/sbin/helper".into(),
                data: b"helper".to_vec(),
                mode: 0o755,
            },
            Put {
                path: "/opt/x/y.txt".into(),
                data: b"y".to_vec(),
                mode: 0o644,
            },
        ];
        let out = img.rewrite(&puts).unwrap();
        assert_eq!(out, img.rewrite(&puts).unwrap(), "same input, same bytes");
        let again = Image::open(&out).unwrap();
        assert_eq!(again.read("/etc/a.conf", 100).unwrap().unwrap(), b"a=2\n");
        assert_eq!(
            again.read("/usr/sbin/helper", 100).unwrap().unwrap(),
            b"helper"
        );
        assert_eq!(again.read("/opt/x/y.txt", 100).unwrap().unwrap(), b"y");
        assert_eq!(again.read("/sbin/init", 100).unwrap().unwrap(), b"init!");
        // The real tool reads it.
        let p = d.path().join("out.sqfs");
        std::fs::write(&p, &out).unwrap();
        let o = std::process::Command::new("unsquashfs")
            .args(["-lls", "-no-progress"])
            .arg(&p)
            .output()
            .expect("unsquashfs (squashfs-tools, scripts/install-deps) must be installed");
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success(), "{text}");
        assert!(text.contains("/usr/sbin/helper"), "{text}");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(Image::open(b"hsqs and then nothing useful at all").is_err());
        let d = tree();
        let mut bytes = image_of(d.path());
        for b in bytes.iter_mut().skip(96).step_by(7) {
            *b ^= 0x5a;
        }
        if let Ok(img) = Image::open(&bytes) {
            let _ = img.read("/etc/a.conf", 1 << 20);
            let _ = img.rewrite(&[]);
        };
    }
}
