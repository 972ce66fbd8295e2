//! FAT12/16/32 filesystems in a region of an image, on the fatfs crate: format, copy files in,
//! and the file operations of fwup's `fat_*` actions.
//!
//! Spec: Microsoft "FAT: General Overview of On-Disk Format" (fatgen103),
//! <https://academy.cba.mit.edu/classes/networking_communications/SD/FAT.pdf>.
//!
//! Everything works on any `Read + Write + Seek` that *is* the filesystem: give a [`Region`]
//! over the image file for a partition. Timestamps are fixed at 1980-01-01 00:00 and the volume
//! id is derived from the label and size, so the same inputs give the same bytes.

pub mod ff;
mod raw;

use std::cell::RefCell;
use std::fmt;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::rc::Rc;

pub use raw::{ATTR_HIDDEN, ATTR_READ_ONLY, ATTR_SYSTEM};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
    #[error("not a FAT filesystem: {0}")]
    NotFat(String),
    #[error("{0}: no such file or directory in the FAT filesystem")]
    NotFound(String),
    #[error("{0}: already exists in the FAT filesystem (use the overwrite variant to replace it)")]
    Exists(String),
    #[error("invalid volume label `{label}`: {why}")]
    Label { label: String, why: String },
    #[error("invalid FAT attributes `{0}`: use the letters R (read-only), H (hidden), S (system)")]
    Attributes(String),
    #[error("cannot format {size} bytes as FAT: {why}")]
    Size { size: u64, why: String },
    #[error("{host}: {source} (copying to {dest} in the FAT filesystem)")]
    Host {
        host: PathBuf,
        dest: String,
        source: io::Error,
    },
    #[error("filesystem full: {0}")]
    Full(String),
}

impl Error {
    fn io(what: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
        let what = what.into();
        move |source| Error::Io { what, source }
    }

    /// Map a fatfs error on `path` to NotFound/Exists where it is one of those.
    fn on(op: &str, path: &str) -> impl FnOnce(io::Error) -> Error {
        let (op, path) = (op.to_string(), path.to_string());
        move |e| match e.kind() {
            io::ErrorKind::NotFound => Error::NotFound(path),
            io::ErrorKind::AlreadyExists => Error::Exists(path),
            _ => Error::Io {
                what: format!("{op} {path}"),
                source: e,
            },
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FatType {
    Fat12,
    Fat16,
    Fat32,
}

impl fmt::Display for FatType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FatType::Fat12 => "FAT12",
            FatType::Fat16 => "FAT16",
            FatType::Fat32 => "FAT32",
        })
    }
}

impl From<fatfs::FatType> for FatType {
    fn from(t: fatfs::FatType) -> Self {
        match t {
            fatfs::FatType::Fat12 => FatType::Fat12,
            fatfs::FatType::Fat16 => FatType::Fat16,
            fatfs::FatType::Fat32 => FatType::Fat32,
        }
    }
}

/// A window `[offset, offset + len)` of a seekable stream, seen as a whole device: positions
/// are relative to `offset`, reads stop at the end and writes past it fail.
pub struct Region<T> {
    inner: T,
    offset: u64,
    len: u64,
    pos: u64,
}

impl<T: Seek> Region<T> {
    pub fn new(inner: T, offset: u64, len: u64) -> Self {
        Region {
            inner,
            offset,
            len,
            pos: 0,
        }
    }

    pub fn into_inner(self) -> T {
        self.inner
    }
}

impl<T: Read + Seek> Read for Region<T> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.len.saturating_sub(self.pos);
        let n = (buf.len() as u64).min(left) as usize;
        if n == 0 {
            return Ok(0);
        }
        self.inner.seek(SeekFrom::Start(self.offset + self.pos))?;
        let k = self.inner.read(&mut buf[..n])?;
        self.pos += k as u64;
        Ok(k)
    }
}

impl<T: Write + Seek> Write for Region<T> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.pos + buf.len() as u64 > self.len {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!(
                    "write of {} bytes at {} would pass the end of the {}-byte FAT region",
                    buf.len(),
                    self.pos,
                    self.len
                ),
            ));
        }
        self.inner.seek(SeekFrom::Start(self.offset + self.pos))?;
        let k = self.inner.write(buf)?;
        self.pos += k as u64;
        Ok(k)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<T: Seek> Seek for Region<T> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let new = match pos {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        match new {
            Some(p) => {
                self.pos = p;
                Ok(p)
            }
            None => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before the start of the FAT region",
            )),
        }
    }
}

/// Fixed timestamps: 1980-01-01 00:00:00, the DOS epoch.
#[derive(Debug)]
struct FixedTime;

impl fatfs::TimeProvider for FixedTime {
    fn get_current_date(&self) -> fatfs::Date {
        fatfs::Date {
            year: 1980,
            month: 1,
            day: 1,
        }
    }
    fn get_current_date_time(&self) -> fatfs::DateTime {
        fatfs::DateTime {
            date: self.get_current_date(),
            time: fatfs::Time {
                hour: 0,
                min: 0,
                sec: 0,
                millis: 0,
            },
        }
    }
}

static FIXED_TIME: FixedTime = FixedTime;

fn fs_options() -> fatfs::FsOptions {
    fatfs::FsOptions::new()
        .update_accessed_date(false)
        .time_provider(&FIXED_TIME)
}

/// A label as stored: upper-case, space-padded to 11 bytes. Empty gives None.
pub fn encode_label(label: &str) -> Result<Option<[u8; 11]>> {
    let bad = |why: &str| Error::Label {
        label: label.to_string(),
        why: why.to_string(),
    };
    if label.is_empty() {
        return Ok(None);
    }
    if !label.is_ascii() {
        return Err(bad("only ASCII characters are allowed"));
    }
    if label.len() > 11 {
        return Err(bad("longer than 11 characters"));
    }
    if let Some(c) = label
        .chars()
        .find(|c| c.is_ascii_control() || "\"*+,./:;<=>?[\\]|".contains(*c))
    {
        return Err(bad(&format!(
            "character `{c}` is not allowed in a FAT label"
        )));
    }
    let mut out = [b' '; 11];
    for (o, b) in out.iter_mut().zip(label.bytes()) {
        *o = b.to_ascii_uppercase();
    }
    Ok(Some(out))
}

fn decode_label(b: &[u8; 11]) -> Option<String> {
    let s = String::from_utf8_lossy(b).trim_end().to_string();
    (!s.is_empty() && s != "NO NAME").then_some(s)
}

/// Formatting options.
#[derive(Debug, Clone, Default)]
pub struct FormatOptions {
    /// Volume label (up to 11 characters), written to the boot sector and the root directory.
    pub label: String,
    /// Volume id (serial number); None derives one from the label and size.
    pub volume_id: Option<u32>,
    /// Force a FAT type; None picks one from the size as mkfs.fat does.
    pub fat_type: Option<FatType>,
}

/// FNV-1a: a stable, dependency-free hash for the default volume id.
fn fnv1a(parts: &[&[u8]]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for p in parts {
        for &b in *p {
            h ^= b as u32;
            h = h.wrapping_mul(0x0100_0193);
        }
    }
    h
}

/// Format `dev` (the whole region, `size` bytes) as an empty FAT filesystem.
pub fn format<T: Read + Write + Seek>(mut dev: T, size: u64, opts: &FormatOptions) -> Result<()> {
    let label = encode_label(&opts.label)?;
    let sectors = size / 512;
    if sectors < 64 {
        return Err(Error::Size {
            size,
            why: "a FAT filesystem needs at least 32 KiB".into(),
        });
    }
    let sectors = u32::try_from(sectors).map_err(|_| Error::Size {
        size,
        why: "more than 2^32 sectors".into(),
    })?;
    let volume_id = opts
        .volume_id
        .unwrap_or_else(|| fnv1a(&[&label.unwrap_or(*b"NO NAME    "), &size.to_le_bytes()]));
    let mut fo = fatfs::FormatVolumeOptions::new()
        .total_sectors(sectors)
        .volume_id(volume_id);
    if let Some(l) = label {
        fo = fo.volume_label(l);
    }
    if let Some(t) = opts.fat_type {
        fo = fo.fat_type(match t {
            FatType::Fat12 => fatfs::FatType::Fat12,
            FatType::Fat16 => fatfs::FatType::Fat16,
            FatType::Fat32 => fatfs::FatType::Fat32,
        });
    }
    dev.seek(SeekFrom::Start(0))
        .map_err(Error::io("seeking to the start of the region"))?;
    fatfs::format_volume(&mut dev, fo).map_err(|e| Error::Size {
        size,
        why: e.to_string(),
    })?;
    dev.flush().map_err(Error::io("flushing the FAT region"))
}

/// Format `dev` and copy `files` (destination path in the filesystem, host file) into it,
/// creating parent directories. Files are written in the given order.
pub fn format_with_files<T: Read + Write + Seek>(
    mut dev: T,
    size: u64,
    opts: &FormatOptions,
    files: &[(String, PathBuf)],
) -> Result<()> {
    format(&mut dev, size, opts)?;
    let vol = Volume::open(&mut dev)?;
    for (dest, host) in files {
        vol.copy_from_host(host, dest)?;
    }
    vol.close()
}

fn clean(path: &str) -> String {
    path.split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect::<Vec<_>>()
        .join("/")
}

fn parent_of(path: &str) -> Option<&str> {
    path.rfind('/').map(|i| &path[..i])
}

/// The device shared between fatfs and our raw fix-ups. Each handle keeps its own position
/// and seeks before every access, so neither side depends on where the other left it.
struct Shared<T> {
    dev: Rc<RefCell<T>>,
    pos: u64,
}

impl<T: Read + Seek> Read for Shared<T> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut d = self.dev.borrow_mut();
        d.seek(SeekFrom::Start(self.pos))?;
        let n = d.read(buf)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl<T: Write + Seek> Write for Shared<T> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut d = self.dev.borrow_mut();
        d.seek(SeekFrom::Start(self.pos))?;
        let n = d.write(buf)?;
        self.pos += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.dev.borrow_mut().flush()
    }
}

impl<T: Seek> Seek for Shared<T> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.pos = match pos {
            SeekFrom::Start(p) => p,
            // Resolve against the device's own end, then keep the result as ours.
            SeekFrom::End(_) => self.dev.borrow_mut().seek(pos)?,
            SeekFrom::Current(d) => self.pos.checked_add_signed(d).ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidInput, "seek before the start")
            })?,
        };
        Ok(self.pos)
    }
}

/// A mounted FAT filesystem. Paths are '/'-separated from the root ("/a/b" and "a/b" are the
/// same); names compare case-insensitively as in FAT.
pub struct Volume<T: Read + Write + Seek> {
    fs: fatfs::FileSystem<Shared<T>>,
    /// The same device, for the raw fix-ups fatfs 0.3 needs (see [`Volume::mkdir`]).
    dev: Rc<RefCell<T>>,
}

impl<T: Read + Write + Seek> Volume<T> {
    pub fn open(mut dev: T) -> Result<Self> {
        // Check the boot sector ourselves first: fatfs's errors are terse.
        raw::read_bpb(&mut dev)?;
        let dev = Rc::new(RefCell::new(dev));
        let shared = Shared {
            dev: Rc::clone(&dev),
            pos: 0,
        };
        let fs = fatfs::FileSystem::new(shared, fs_options())
            .map_err(|e| Error::NotFat(format!("fatfs cannot mount it: {e}")))?;
        Ok(Volume { fs, dev })
    }

    pub fn fat_type(&self) -> FatType {
        self.fs.fat_type().into()
    }

    /// Unmount, writing back the FSInfo sector and clearing the dirty flag.
    pub fn close(self) -> Result<()> {
        self.fs
            .unmount()
            .map_err(Error::io("unmounting the FAT filesystem"))
    }

    pub fn exists(&self, path: &str) -> Result<bool> {
        let p = clean(path);
        if p.is_empty() {
            return Ok(true);
        }
        let root = self.fs.root_dir();
        match root.open_file(&p) {
            Ok(_) => return Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) if e.kind() == io::ErrorKind::Other => {} // a directory, fatfs says "is a directory"
            Err(e) => return Err(Error::on("looking up", &p)(e)),
        }
        match root.open_dir(&p) {
            Ok(_) => Ok(true),
            Err(_) => Ok(false),
        }
    }

    pub fn is_dir(&self, path: &str) -> bool {
        let p = clean(path);
        p.is_empty() || self.fs.root_dir().open_dir(&p).is_ok()
    }

    /// Create or truncate `path` and write `data` into it.
    pub fn write_file(&self, path: &str, data: &[u8]) -> Result<()> {
        self.write_from(path, &mut &data[..])
    }

    /// Create or truncate `path` and fill it from `src`.
    pub fn write_from(&self, path: &str, src: &mut dyn Read) -> Result<()> {
        let p = clean(path);
        if let Some(parent) = parent_of(&p) {
            if !self.is_dir(parent) {
                return Err(Error::NotFound(parent.to_string()));
            }
        }
        if self.is_dir(&p) {
            return Err(Error::Exists(format!("{p} (a directory)")));
        }
        let mut f = self
            .fs
            .root_dir()
            .create_file(&p)
            .map_err(Error::on("creating", &p))?;
        f.truncate().map_err(Error::on("truncating", &p))?;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match src.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(Error::Io {
                        what: format!("reading the data for {p}"),
                        source: e,
                    })
                }
            };
            f.write_all(&buf[..n]).map_err(|e| {
                if e.kind() == io::ErrorKind::Other && e.to_string().contains("space") {
                    Error::Full(format!("no space left writing {p}"))
                } else {
                    Error::on("writing", &p)(e)
                }
            })?;
        }
        f.flush().map_err(Error::on("writing", &p))
    }

    /// Copy the host file `host` to `dest`, creating parent directories.
    pub fn copy_from_host(&self, host: &Path, dest: &str) -> Result<()> {
        let p = clean(dest);
        if let Some(parent) = parent_of(&p) {
            self.mkdir_all(parent)?;
        }
        let mut f = std::fs::File::open(host).map_err(|e| Error::Host {
            host: host.to_path_buf(),
            dest: p.clone(),
            source: e,
        })?;
        self.write_from(&p, &mut f)
    }

    pub fn read_file(&self, path: &str) -> Result<Vec<u8>> {
        let p = clean(path);
        let mut f = self
            .fs
            .root_dir()
            .open_file(&p)
            .map_err(Error::on("opening", &p))?;
        let mut out = Vec::new();
        f.read_to_end(&mut out).map_err(Error::on("reading", &p))?;
        Ok(out)
    }

    /// Create the directory `path`; fine if it exists. Parents must exist.
    pub fn mkdir(&self, path: &str) -> Result<()> {
        let p = clean(path);
        if self.is_dir(&p) {
            return Ok(());
        }
        self.fs
            .root_dir()
            .create_dir(&p)
            .map_err(Error::on("creating directory", &p))?;
        // fatfs 0.3 writes the new directory's "." and ".." with long-name entries in front of
        // them, so they are not in slots 0 and 1 as fatgen103 requires (fsck.fat: "Expected a
        // valid '.' entry"). fatfs keeps no cache, so fixing the bytes now is seen by it too.
        let mut dev = self.dev.borrow_mut();
        let bpb = raw::read_bpb(&mut *dev)?;
        raw::fix_dot_entries(&mut *dev, &bpb, &p)
    }

    /// Create `path` and any missing parents.
    pub fn mkdir_all(&self, path: &str) -> Result<()> {
        let p = clean(path);
        let mut cur = String::new();
        for part in p.split('/').filter(|s| !s.is_empty()) {
            if !cur.is_empty() {
                cur.push('/');
            }
            cur.push_str(part);
            self.mkdir(&cur)?;
        }
        Ok(())
    }

    /// Remove a file or an empty directory. With `must_exist` false a missing path is fine.
    pub fn rm(&self, path: &str, must_exist: bool) -> Result<()> {
        let p = clean(path);
        match self.fs.root_dir().remove(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound && !must_exist => Ok(()),
            Err(e) => Err(Error::on("removing", &p)(e)),
        }
    }

    /// Rename or move `from` to `to`. With `overwrite`, an existing file at `to` is replaced;
    /// without, it is an error.
    pub fn mv(&self, from: &str, to: &str, overwrite: bool) -> Result<()> {
        let (f, t) = (clean(from), clean(to));
        if !self.exists(&f)? {
            return Err(Error::NotFound(f));
        }
        if f.eq_ignore_ascii_case(&t) {
            return Ok(());
        }
        if self.exists(&t)? {
            if !overwrite || self.is_dir(&t) {
                return Err(Error::Exists(t));
            }
            self.rm(&t, true)?;
        }
        let root = self.fs.root_dir();
        root.rename(&f, &root, &t)
            .map_err(Error::on("renaming", &f))
    }

    /// Copy `from` to `to` within this filesystem (created or truncated).
    pub fn cp(&self, from: &str, to: &str) -> Result<()> {
        let f = clean(from);
        let mut src = self
            .fs
            .root_dir()
            .open_file(&f)
            .map_err(Error::on("opening", &f))?;
        if clean(to).eq_ignore_ascii_case(&f) {
            return Ok(());
        }
        self.write_from(to, &mut src)
    }

    /// Create an empty file if `path` is missing; an existing one is left as it is.
    pub fn touch(&self, path: &str) -> Result<()> {
        let p = clean(path);
        if self.exists(&p)? {
            return Ok(());
        }
        self.fs
            .root_dir()
            .create_file(&p)
            .map(|_| ())
            .map_err(Error::on("creating", &p))
    }

    /// Names in the directory `path` (no "." or ".."), in directory order.
    pub fn list(&self, path: &str) -> Result<Vec<String>> {
        let p = clean(path);
        let root = self.fs.root_dir();
        let dir = if p.is_empty() {
            root
        } else {
            root.open_dir(&p)
                .map_err(Error::on("opening directory", &p))?
        };
        let mut out = Vec::new();
        for e in dir.iter() {
            let e = e.map_err(Error::on("listing", &p))?;
            let n = e.file_name();
            if n != "." && n != ".." {
                out.push(n);
            }
        }
        Ok(out)
    }
}

/// Where [`set_label`] writes the label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LabelMode {
    /// The root directory entry and the boot sector (and FAT32's backup boot sector), so every
    /// tool shows the same label. The default.
    #[default]
    Everywhere,
    /// Only the root directory entry, as fwup 1.16's `fat_setlabel` (FatFs `f_setlabel`) does.
    RootDirOnly,
}

/// Set the volume label of the FAT filesystem `dev`. An empty label removes it.
pub fn set_label<T: Read + Write + Seek>(mut dev: T, label: &str, mode: LabelMode) -> Result<()> {
    let enc = encode_label(label)?;
    let bpb = raw::read_bpb(&mut dev)?;
    match enc {
        Some(l) => raw::write_root_label(&mut dev, &bpb, &l)?,
        None => {
            if let Some(e) = raw::root_label(&mut dev, &bpb)? {
                dev.seek(SeekFrom::Start(e.offset))
                    .and_then(|_| dev.write_all(&[0xe5]))
                    .map_err(Error::io("removing the volume label"))?;
            }
        }
    }
    if mode == LabelMode::Everywhere {
        let l = enc.unwrap_or(*b"NO NAME    ");
        let mut at = vec![bpb.boot_label_offset()];
        if bpb.fat_type == FatType::Fat32 {
            let mut b = [0u8; 2];
            dev.seek(SeekFrom::Start(50))
                .and_then(|_| dev.read_exact(&mut b))
                .map_err(Error::io("reading the backup boot sector field"))?;
            let backup = u16::from_le_bytes(b) as u64;
            if backup != 0 {
                at.push(backup * bpb.bytes_per_sector as u64 + bpb.boot_label_offset());
            }
        }
        for off in at {
            dev.seek(SeekFrom::Start(off))
                .and_then(|_| dev.write_all(&l))
                .map_err(Error::io("writing the boot sector label"))?;
        }
    }
    dev.flush().map_err(Error::io("flushing the FAT region"))
}

/// Parse fwup's attribute letters: R read-only, H hidden, S system (any case, any order).
pub fn parse_attributes(s: &str) -> Result<u8> {
    let mut a = 0;
    for c in s.chars() {
        a |= match c.to_ascii_uppercase() {
            'R' => ATTR_READ_ONLY,
            'H' => ATTR_HIDDEN,
            'S' => ATTR_SYSTEM,
            _ => return Err(Error::Attributes(s.to_string())),
        };
    }
    Ok(a)
}

/// Set the read-only, hidden and system attributes of `path` to exactly `attrs` (other bits,
/// such as archive, are kept), as fwup's `fat_attrib`.
pub fn set_attributes<T: Read + Write + Seek>(mut dev: T, path: &str, attrs: u8) -> Result<()> {
    let bpb = raw::read_bpb(&mut dev)?;
    let p = clean(path);
    raw::set_attr(
        &mut dev,
        &bpb,
        &p,
        attrs,
        ATTR_READ_ONLY | ATTR_HIDDEN | ATTR_SYSTEM,
    )?;
    dev.flush().map_err(Error::io("flushing the FAT region"))
}

/// The attribute byte of `path`.
pub fn attributes<T: Read + Seek>(mut dev: T, path: &str) -> Result<u8> {
    let bpb = raw::read_bpb(&mut dev)?;
    let p = clean(path);
    raw::find(&mut dev, &bpb, &p)?
        .map(|e| e.attr())
        .ok_or(Error::NotFound(p))
}

/// What [`probe`] finds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FatInfo {
    pub fat_type: FatType,
    /// The root directory's label entry, else the boot sector's; None for no label.
    pub label: Option<String>,
    /// The boot sector's label field (None for "NO NAME" or blank).
    pub boot_label: Option<String>,
    pub volume_id: u32,
    pub cluster_size: u64,
    pub clusters: u32,
    /// Size the boot sector claims, in bytes.
    pub size: u64,
}

/// Detect a FAT filesystem at the start of `dev`. Ok(None) if it is not one.
pub fn probe<T: Read + Seek>(mut dev: T) -> Result<Option<FatInfo>> {
    let bpb = match raw::read_bpb(&mut dev) {
        Ok(b) => b,
        Err(Error::NotFat(_)) => return Ok(None),
        Err(e) => return Err(e),
    };
    let boot_label = decode_label(&bpb.boot_label);
    let root = raw::root_label(&mut dev, &bpb).ok().flatten();
    let label = match root {
        Some(e) => decode_label(e.bytes[..11].try_into().unwrap()),
        None => boot_label.clone(),
    };
    Ok(Some(FatInfo {
        fat_type: bpb.fat_type,
        label,
        boot_label,
        volume_id: bpb.volume_id,
        cluster_size: bpb.cluster_size(),
        clusters: bpb.clusters,
        size: bpb.total_sectors as u64 * bpb.bytes_per_sector as u64,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn img(size: usize, label: &str) -> Cursor<Vec<u8>> {
        let mut c = Cursor::new(vec![0u8; size]);
        format(
            &mut c,
            size as u64,
            &FormatOptions {
                label: label.into(),
                ..Default::default()
            },
        )
        .unwrap();
        c
    }

    #[test]
    fn labels_encode_and_reject() {
        assert_eq!(encode_label("boot").unwrap(), Some(*b"BOOT       "));
        assert_eq!(encode_label("").unwrap(), None);
        assert!(encode_label("twelve_chars")
            .unwrap_err()
            .to_string()
            .contains("11"));
        assert!(encode_label("a.b").unwrap_err().to_string().contains('.'));
    }

    #[test]
    fn types_by_size_and_probe() {
        for (size, t) in [
            (4 << 20, FatType::Fat12),
            (64 << 20, FatType::Fat16),
            (600 << 20, FatType::Fat32),
        ] {
            let mut c = img(size, "BOOT");
            let info = probe(&mut c).unwrap().unwrap();
            assert_eq!(info.fat_type, t, "{size}");
            assert_eq!(info.label.as_deref(), Some("BOOT"));
            assert_eq!(info.size, size as u64);
        }
        assert_eq!(probe(Cursor::new(vec![0u8; 4096])).unwrap(), None);
    }

    #[test]
    fn file_operations() {
        let mut c = img(8 << 20, "X");
        {
            let v = Volume::open(&mut c).unwrap();
            v.write_file("a.txt", b"hello").unwrap();
            v.write_file("/a.txt", b"hi").unwrap(); // truncates
            assert_eq!(v.read_file("A.TXT").unwrap(), b"hi");
            v.mkdir("dir").unwrap();
            v.mkdir("dir").unwrap();
            v.cp("a.txt", "dir/b.txt").unwrap();
            assert_eq!(v.read_file("dir/b.txt").unwrap(), b"hi");
            assert!(matches!(
                v.mv("a.txt", "dir/b.txt", false),
                Err(Error::Exists(_))
            ));
            v.mv("a.txt", "dir/b.txt", true).unwrap();
            assert!(!v.exists("a.txt").unwrap());
            assert!(v.exists("dir").unwrap());
            v.touch("dir/b.txt").unwrap();
            assert_eq!(v.read_file("dir/b.txt").unwrap(), b"hi");
            v.touch("t").unwrap();
            assert_eq!(v.read_file("t").unwrap(), b"");
            v.rm("missing", false).unwrap();
            assert!(matches!(v.rm("missing", true), Err(Error::NotFound(_))));
            assert!(matches!(
                v.write_file("nodir/x", b"1"),
                Err(Error::NotFound(_))
            ));
            let big: Vec<u8> = (0..300_000u32).map(|i| i as u8).collect();
            v.write_file("Long File Name.bin", &big).unwrap();
            assert_eq!(v.read_file("long file name.BIN").unwrap(), big);
            v.close().unwrap();
        }
        set_attributes(&mut c, "dir/b.txt", parse_attributes("rhs").unwrap()).unwrap();
        let a = attributes(&mut c, "DIR/B.TXT").unwrap();
        assert_eq!(a & 0x07, 0x07);
        set_attributes(&mut c, "Long File Name.bin", ATTR_HIDDEN).unwrap();
        assert_eq!(
            attributes(&mut c, "long file name.bin").unwrap() & 0x07,
            ATTR_HIDDEN
        );
        assert!(parse_attributes("RX").is_err());
    }

    #[test]
    fn label_modes() {
        let mut c = img(8 << 20, "");
        assert_eq!(probe(&mut c).unwrap().unwrap().label, None);
        set_label(&mut c, "fwup", LabelMode::RootDirOnly).unwrap();
        let i = probe(&mut c).unwrap().unwrap();
        assert_eq!(i.label.as_deref(), Some("FWUP"));
        assert_eq!(i.boot_label, None);
        set_label(&mut c, "both", LabelMode::Everywhere).unwrap();
        let i = probe(&mut c).unwrap().unwrap();
        assert_eq!(i.label.as_deref(), Some("BOTH"));
        assert_eq!(i.boot_label.as_deref(), Some("BOTH"));
        // The label entry is not a file.
        let v = Volume::open(&mut c).unwrap();
        assert!(v.list("/").unwrap().is_empty());
    }

    #[test]
    fn reproducible() {
        let build = || {
            let mut c = img(16 << 20, "BOOT");
            let v = Volume::open(&mut c).unwrap();
            v.mkdir_all("a/b").unwrap();
            v.write_file("a/b/c.txt", b"data").unwrap();
            v.close().unwrap();
            c.into_inner()
        };
        assert_eq!(build(), build());
    }

    #[test]
    fn region_bounds() {
        let mut backing = Cursor::new(vec![0u8; 100]);
        let mut r = Region::new(&mut backing, 10, 20);
        r.write_all(&[1u8; 20]).unwrap();
        assert!(r.write_all(&[1u8]).is_err());
        r.seek(SeekFrom::Start(0)).unwrap();
        let mut all = Vec::new();
        r.read_to_end(&mut all).unwrap();
        assert_eq!(all.len(), 20);
        assert_eq!(backing.get_ref()[9], 0);
        assert_eq!(backing.get_ref()[10], 1);
        assert_eq!(backing.get_ref()[30], 0);
    }
}
