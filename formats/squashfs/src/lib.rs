//! Reproducible squashfs 4.0 images from a directory, like `mksquashfs DIR OUT -noappend`.
//!
//! Spec: <https://dr-emann.github.io/squashfs/> and the kernel's
//! <https://www.kernel.org/doc/Documentation/filesystems/squashfs.rst>.
//!
//! The image layout is backhand's `FilesystemWriter`; data blocks are compressed in parallel
//! (see [`compress`]). The same tree and [`Options`] always give the same bytes: entries are
//! sorted by name, every inode gets [`Options::mtime`], and nothing of the host (time, user,
//! thread count) reaches the image.

mod compress;
pub mod image;
pub mod ondisk;

use std::fmt;
use std::fs;
use std::io::{self, BufWriter, Seek, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc, Mutex};

use backhand::compression::{CompressionOptions, Compressor, Lz4};
use backhand::kind::Kind;
use backhand::{BackhandError, FilesystemCompressor, FilesystemWriter, NodeHeader};

pub use ondisk::{read_superblock, CompressorId, SuperBlock};

/// Default data block size, as mksquashfs.
pub const DEFAULT_BLOCK_SIZE: u32 = 128 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{0}: not a directory (give the directory whose contents become the image root)")]
    NotADirectory(PathBuf),
    #[error("block size {0} is invalid: use a power of two from 4 KiB to 1 MiB (default 128 KiB)")]
    BlockSize(u32),
    #[error("{path}: {what}")]
    Unsupported { path: PathBuf, what: String },
    #[error("writing the squashfs image failed: {0}")]
    Backhand(#[from] BackhandError),
    #[error("bad squashfs superblock: {0}")]
    BadSuperblock(String),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Data and metadata compressor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    #[default]
    Gzip,
    Xz,
    Zstd,
    Lz4,
}

impl Compression {
    pub const ALL: [Compression; 4] = [Self::Gzip, Self::Xz, Self::Zstd, Self::Lz4];

    pub fn name(self) -> &'static str {
        match self {
            Self::Gzip => "gzip",
            Self::Xz => "xz",
            Self::Zstd => "zstd",
            Self::Lz4 => "lz4",
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Compression {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "gzip" => Ok(Self::Gzip),
            "xz" => Ok(Self::Xz),
            "zstd" => Ok(Self::Zstd),
            "lz4" => Ok(Self::Lz4),
            _ => Err(format!(
                "unknown compressor `{s}`: use gzip, xz, zstd or lz4"
            )),
        }
    }
}

/// Build options. `Default` is mksquashfs's defaults with a fixed mtime of 0.
#[derive(Clone)]
pub struct Options {
    pub compression: Compression,
    /// Data block size: a power of two, 4 KiB..=1 MiB.
    pub block_size: u32,
    /// Modification time of every inode and of the image (seconds since 1970).
    pub mtime: u32,
    /// Make every file owned by uid 0, gid 0 (mksquashfs `-all-root`).
    pub all_root: bool,
    /// Compression level; None is mksquashfs's default (gzip 9, xz 6, zstd 15).
    pub level: Option<u32>,
    /// Compression threads; None is one per CPU.
    pub threads: Option<usize>,
    /// Called with the number of file bytes read as the build goes on.
    pub progress: Option<Arc<dyn Fn(u64) + Send + Sync>>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            compression: Compression::Gzip,
            block_size: DEFAULT_BLOCK_SIZE,
            mtime: 0,
            all_root: false,
            level: None,
            threads: None,
            progress: None,
        }
    }
}

impl fmt::Debug for Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Options")
            .field("compression", &self.compression)
            .field("block_size", &self.block_size)
            .field("mtime", &self.mtime)
            .field("all_root", &self.all_root)
            .field("level", &self.level)
            .field("threads", &self.threads)
            .finish_non_exhaustive()
    }
}

/// What a build wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Inodes in the image (the root directory included).
    pub inode_count: u32,
    /// The superblock's `bytes_used`: the filesystem without the 4 KiB end padding.
    pub bytes_used: u64,
    /// Bytes written, padding included.
    pub image_size: u64,
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    /// Device nodes, fifos and sockets.
    pub special: u64,
    /// Sum of the regular files' sizes.
    pub file_bytes: u64,
    /// Compress calls served by the parallel workers / compressed on the writer thread.
    pub parallel_blocks: u64,
    pub inline_blocks: u64,
}

/// One entry of the source tree, in image order.
struct Entry {
    /// Path inside the image, relative ("" for the root).
    rel: PathBuf,
    source: PathBuf,
    meta: fs::Metadata,
}

/// Walk `root` depth first with each directory's entries sorted by name bytes. That is the
/// order of backhand's node list (paths compared component by component), so every push is
/// an append and the data is read in the order backhand writes it.
fn walk(root: &Path) -> Result<Vec<Entry>, Error> {
    let meta = fs::metadata(root).map_err(io_err(root))?;
    if !meta.is_dir() {
        return Err(Error::NotADirectory(root.to_path_buf()));
    }
    let mut out = vec![Entry {
        rel: PathBuf::new(),
        source: root.to_path_buf(),
        meta,
    }];
    walk_dir(root, Path::new(""), &mut out)?;
    Ok(out)
}

fn walk_dir(dir: &Path, rel: &Path, out: &mut Vec<Entry>) -> Result<(), Error> {
    let mut names = Vec::new();
    for e in fs::read_dir(dir).map_err(io_err(dir))? {
        names.push(e.map_err(io_err(dir))?.file_name());
    }
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    for name in names {
        let source = dir.join(&name);
        let meta = fs::symlink_metadata(&source).map_err(io_err(&source))?;
        let rel = rel.join(&name);
        let is_dir = meta.is_dir();
        out.push(Entry {
            rel: rel.clone(),
            source: source.clone(),
            meta,
        });
        if is_dir {
            walk_dir(&source, &rel, out)?;
        }
    }
    Ok(())
}

/// Device number as squashfs stores it (the kernel's "new" encoding, as mksquashfs).
fn squashfs_rdev(rdev: u64) -> u32 {
    let major = ((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff);
    let minor = (rdev & 0xff) | ((rdev >> 12) & !0xff);
    ((major << 8) | (minor & 0xff) | ((minor & !0xff) << 12)) as u32
}

fn fs_compressor(c: Compression) -> Result<FilesystemCompressor, BackhandError> {
    match c {
        // No options block: these are mksquashfs's defaults, which it does not write either.
        Compression::Gzip => FilesystemCompressor::new(Compressor::Gzip, None),
        Compression::Xz => FilesystemCompressor::new(Compressor::Xz, None),
        Compression::Zstd => FilesystemCompressor::new(Compressor::Zstd, None),
        // lz4 images always carry options; version 1 is LZ4_LEGACY, the only one the kernel reads.
        Compression::Lz4 => FilesystemCompressor::new(
            Compressor::Lz4,
            Some(CompressionOptions::Lz4(Lz4 {
                version: 1,
                flags: 0,
            })),
        ),
    }
}

/// Build a squashfs image of the directory `src` into `out` (written from its position 0).
pub fn build<W: Write + Seek>(src: &Path, out: W, opts: &Options) -> Result<Stats, Error> {
    let bs = opts.block_size;
    if !bs.is_power_of_two() || !(4096..=1 << 20).contains(&bs) {
        return Err(Error::BlockSize(bs));
    }
    let entries = walk(src)?;

    static KIND: std::sync::OnceLock<Kind> = std::sync::OnceLock::new();
    let kind = KIND
        .get_or_init(|| Kind::new_v4(&compress::PARALLEL))
        .clone();
    let mut fs = FilesystemWriter::default();
    fs.set_kind(kind);
    fs.set_block_size(bs);
    fs.set_time(opts.mtime);
    fs.set_compressor(fs_compressor(opts.compression)?);

    let mut stats = Stats::default();
    let mut planned = Vec::new();
    for e in &entries {
        let m = &e.meta;
        let (uid, gid) = if opts.all_root {
            (0, 0)
        } else {
            (m.uid(), m.gid())
        };
        let header = NodeHeader::new((m.mode() & 0o7777) as u16, uid, gid, opts.mtime);
        if e.rel.as_os_str().is_empty() {
            fs.set_root_mode(header.permissions);
            fs.set_root_uid(uid);
            fs.set_root_gid(gid);
            stats.dirs += 1;
            continue;
        }
        let ft = m.file_type();
        let rel = &e.rel;
        let r = if ft.is_dir() {
            stats.dirs += 1;
            fs.push_dir(rel, header)
        } else if ft.is_file() {
            stats.files += 1;
            stats.file_bytes += m.len();
            planned.push(compress::PlannedFile {
                source: e.source.clone(),
            });
            fs.push_file_from_path(&e.source, rel, header)
        } else if ft.is_symlink() {
            stats.symlinks += 1;
            let target = fs::read_link(&e.source).map_err(io_err(&e.source))?;
            fs.push_symlink(target, rel, header)
        } else if ft.is_char_device() {
            stats.special += 1;
            fs.push_char_device(squashfs_rdev(m.rdev()), rel, header)
        } else if ft.is_block_device() {
            stats.special += 1;
            fs.push_block_device(squashfs_rdev(m.rdev()), rel, header)
        } else if ft.is_fifo() {
            stats.special += 1;
            fs.push_fifo(rel, header)
        } else if ft.is_socket() {
            stats.special += 1;
            fs.push_socket(rel, header)
        } else {
            return Err(Error::Unsupported {
                path: e.source.clone(),
                what: "unknown file type".into(),
            });
        };
        r.map_err(|err| Error::Unsupported {
            path: e.source.clone(),
            what: format!("cannot add to the image: {err}"),
        })?;
    }
    drop(entries);

    let threads = opts
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    let settings = compress::Settings {
        compression: opts.compression,
        level: opts.level,
        block_size: bs,
    };
    let pipeline = compress::Pipeline::new(settings, threads);
    let no_progress = |_: u64| {};
    let progress: &(dyn Fn(u64) + Sync) = match &opts.progress {
        Some(p) => p.as_ref(),
        None => &no_progress,
    };

    let (tx, rx) = mpsc::channel();
    let rx = Mutex::new(rx);
    let result = std::thread::scope(|s| {
        for _ in 0..threads {
            let (p, rx) = (&pipeline, &rx);
            s.spawn(move || compress::work(p, rx));
        }
        let p = &pipeline;
        let planned = &planned;
        s.spawn(move || compress::produce(p, planned, tx, progress));

        let _guard = compress::install(Arc::clone(&pipeline));
        let mut w = BufWriter::with_capacity(1 << 20, out);
        let r = fs
            .write(&mut w)
            .and_then(|x| w.flush().map(|_| x).map_err(BackhandError::from));
        // Stop the producer if backhand gave up early; workers end when it drops the channel.
        pipeline.cancel();
        r
    });

    let (sb, written) = match result {
        Ok(x) => x,
        Err(e) => {
            if let Some((path, source)) = pipeline.producer_error.lock().unwrap().take() {
                return Err(Error::Io { path, source });
            }
            return Err(e.into());
        }
    };
    stats.inode_count = sb.inode_count;
    stats.bytes_used = sb.bytes_used;
    stats.image_size = written;
    stats.parallel_blocks = pipeline.hits.load(Ordering::Relaxed);
    stats.inline_blocks = pipeline.misses.load(Ordering::Relaxed);
    tracing::debug!(?stats, "squashfs written");
    Ok(stats)
}

/// Build into a new file at `out`: written under a temporary name beside it and renamed on
/// success, so a failed build leaves nothing (and an old `out` untouched).
pub fn build_to_file(src: &Path, out: &Path, opts: &Options) -> Result<Stats, Error> {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = out.with_file_name(format!(".{name}.squashfs-{}.tmp", std::process::id()));
    let res = (|| {
        let f = fs::File::create(&tmp).map_err(io_err(&tmp))?;
        let stats = build(src, &f, opts)?;
        f.sync_all().map_err(io_err(&tmp))?;
        fs::rename(&tmp, out).map_err(io_err(out))?;
        Ok(stats)
    })();
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rdev_encoding_matches_mksquashfs() {
        // makedev(1, 3) = /dev/null; makedev(259, 65537) exercises the high bits.
        assert_eq!(squashfs_rdev((1 << 8) | 3), 0x103);
        let major: u64 = 259;
        let minor: u64 = 65537;
        let rdev = ((major & 0xfff) << 8)
            | ((major & !0xfff) << 32)
            | (minor & 0xff)
            | ((minor & !0xff) << 12);
        assert_eq!(
            squashfs_rdev(rdev) as u64,
            (major << 8) | (minor & 0xff) | ((minor & !0xff) << 12)
        );
    }

    #[test]
    fn compression_names() {
        for c in Compression::ALL {
            assert_eq!(c.name().parse::<Compression>().unwrap(), c);
        }
        assert!("lzo".parse::<Compression>().unwrap_err().contains("gzip"));
    }

    #[test]
    fn rejects_bad_block_size_and_missing_dir() {
        let o = Options {
            block_size: 5000,
            ..Options::default()
        };
        let e = build(Path::new("/"), io::Cursor::new(vec![]), &o).unwrap_err();
        assert!(e.to_string().contains("power of two"), "{e}");
        let e = build(
            Path::new("/nonexistent/imgtool-test"),
            io::Cursor::new(vec![]),
            &Options::default(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("/nonexistent/imgtool-test"), "{e}");
    }

    /// Same tree, any thread count: same bytes; and the superblock reads back.
    #[test]
    fn reproducible_across_thread_counts() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        fs::create_dir(d.join("sub")).unwrap();
        let big: Vec<u8> = (0..400_000u32).map(|i| (i * 7 % 251) as u8).collect();
        fs::write(d.join("sub/big"), &big).unwrap();
        fs::write(d.join("small"), b"hello").unwrap();
        fs::write(d.join("zeros"), vec![0u8; 300_000]).unwrap();
        fs::write(d.join("empty"), b"").unwrap();
        std::os::unix::fs::symlink("sub/big", d.join("link")).unwrap();
        for c in Compression::ALL {
            let mut images = Vec::new();
            for threads in [1, 3] {
                let o = Options {
                    compression: c,
                    threads: Some(threads),
                    ..Options::default()
                };
                let mut cur = io::Cursor::new(Vec::new());
                let st = build(d, &mut cur, &o).unwrap();
                assert_eq!(st.inode_count, 7);
                assert_eq!(st.files, 4);
                assert!(st.parallel_blocks >= 3, "{c}: {st:?}");
                let img = cur.into_inner();
                let sb = read_superblock(&img[..]).unwrap();
                assert_eq!(sb.compressor().name(), c.name());
                assert_eq!(sb.bytes_used, st.bytes_used);
                assert_eq!(sb.inode_count, 7);
                images.push(img);
            }
            assert_eq!(images[0], images[1], "{c}: thread count changed the image");
        }
    }
}
