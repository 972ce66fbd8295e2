//! FAT12/16/32 filesystems in a region of an image, with one formatting engine: [`ff`], which
//! lays volumes out byte-for-byte as the FatFs build inside fwup 1.16 does. `imgtool build`'s
//! FAT fill ([`format_with_files`]) and fwup-compat's `fat_*` actions both go through it, so
//! the same inputs give the same bytes whichever tool formatted the region.
//!
//! Spec: Microsoft "FAT: General Overview of On-Disk Format" (fatgen103),
//! <https://academy.cba.mit.edu/classes/networking_communications/SD/FAT.pdf>; FatFs
//! <http://elm-chan.org/fsw/ff/> for the layout and allocation rules [`ff`] follows.
//!
//! Why not the fatfs crate: its volumes differ from fwup's (cluster size, volume serial,
//! allocation order, 8.3 names), and 0.3 puts long-name entries before "." and "..". The tests
//! read volumes back with mtools and fsck.fat. [`probe`] (for `inspect`) reads the boot sector
//! and root label directly, checking each field, so a damaged volume is reported, not mounted.
//!
//! Timestamps are fixed at 1980-01-01 00:00 and the volume serial is fwup's (sectors + that
//! time), so the same inputs give the same bytes.

pub mod ff;
mod raw;

use std::fmt;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
    #[error("{what}: {source}")]
    Ff { what: String, source: ff::FfError },
    #[error("not a FAT filesystem: {0}")]
    NotFat(String),
    #[error("{0}: already exists in the FAT filesystem")]
    Exists(String),
    #[error("invalid volume label `{label}`: {why}")]
    Label { label: String, why: String },
    #[error("invalid FAT file name `{0}`: use a non-empty path of ASCII names (FatFs as fwup builds it reads path bytes as code page 850, not UTF-8)")]
    Name(String),
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

    fn ff(what: impl Into<String>) -> impl FnOnce(ff::FfError) -> Error {
        let what = what.into();
        move |source| Error::Ff { what, source }
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
    /// Volume label (up to 11 characters), written to the root directory as fwup's
    /// `fat_setlabel` (FatFs `f_setlabel`) does, and to the boot sector as mkfs.fat does, so
    /// that fsck.fat finds them equal. Without a label the bytes are exactly fwup's.
    pub label: String,
}

/// Sector access to a `Read + Write + Seek` that is the volume.
struct Seekable<T>(T);

impl<T: Read + Write + Seek> ff::BlockDev for Seekable<T> {
    fn read(&mut self, lba: u64, buf: &mut [u8]) -> io::Result<()> {
        self.0.seek(SeekFrom::Start(lba * ff::SS as u64))?;
        self.0.read_exact(buf)
    }
    fn write(&mut self, lba: u64, buf: &[u8]) -> io::Result<()> {
        self.0.seek(SeekFrom::Start(lba * ff::SS as u64))?;
        self.0.write_all(buf)
    }
}

/// Format `dev` (the whole region, `size` bytes; give a window over an image's partition) as fwup's `fat_mkfs` does, give it `opts`'s
/// label as `fat_setlabel` does (and in the boot sector), create the parent directories of `files` (destination path
/// in the filesystem, host file) as `fat_mkdir` does, then write the files in the given order
/// as `fat_write` does. The bytes equal fwup's for the same steps on a zeroed region, apart
/// from the boot sector's label field.
pub fn format_with_files<T: Read + Write + Seek>(
    dev: T,
    size: u64,
    opts: &FormatOptions,
    files: &[(String, PathBuf)],
) -> Result<()> {
    let label = encode_label(&opts.label)?;
    let sectors = size / ff::SS as u64;
    let mut dev = Seekable(dev);
    ff::clear_final_sector(&mut dev, sectors)
        .map_err(Error::io("writing the last sector of the FAT region"))?;
    ff::mkfs(&mut dev, sectors, ff::FWUP_FATTIME).map_err(|e| match e.code {
        ff::FResult::MkfsAborted => Error::Size {
            size,
            why: "FatFs f_mkfs refuses it: with one sector per cluster, as fwup formats, a FAT \
                  takes 64 KiB to 128 GiB"
                .into(),
        },
        _ => Error::ff("formatting")(e),
    })?;
    let mut v = ff::Volume::mount(&mut dev, ff::FWUP_FATTIME, None)
        .map_err(Error::ff("mounting the new volume"))?;
    if label.is_some() {
        v.setlabel(&opts.label)
            .map_err(Error::ff(format!("setting the label `{}`", opts.label)))?;
    }
    // Directories first, parents before children, then the files: the order a fwup.conf
    // with fat_mkdir in on-init and one fat_write per resource gives.
    let mut paths = Vec::with_capacity(files.len());
    for (dest, _) in files {
        let p = clean(dest);
        if !p.is_ascii() || p.is_empty() {
            return Err(Error::Name(dest.clone()));
        }
        let parts: Vec<&str> = p.split('/').collect();
        let mut dir = String::new();
        for part in &parts[..parts.len() - 1] {
            dir.push('/');
            dir.push_str(part);
            match v.stat(&dir) {
                Ok(st) if st.attr & ff::AM_DIR != 0 => {}
                Ok(_) => {
                    return Err(Error::Exists(format!(
                        "{dir} (a file, needed as a directory)"
                    )))
                }
                Err(_) => v
                    .mkdir(&dir)
                    .map_err(Error::ff(format!("creating directory {dir}")))?,
            }
        }
        paths.push(p);
    }
    let mut buf = vec![0u8; 128 * 1024];
    for (p, (_, host)) in paths.into_iter().zip(files) {
        let mut src = std::fs::File::open(host).map_err(|e| Error::Host {
            host: host.to_path_buf(),
            dest: p.clone(),
            source: e,
        })?;
        let path = format!("/{p}");
        let mut f = v
            .open(&path, ff::OpenMode::CreateAlways)
            .map_err(Error::ff(format!("creating {p}")))?;
        v.sync_file(&mut f)
            .map_err(Error::ff(format!("creating {p}")))?;
        loop {
            let n = match src.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(Error::Host {
                        host: host.to_path_buf(),
                        dest: p.clone(),
                        source: e,
                    })
                }
            };
            let w = v
                .write(&mut f, &buf[..n])
                .map_err(Error::ff(format!("writing {p}")))?;
            if w != n {
                return Err(Error::Full(format!(
                    "{p} needs more room than the {size}-byte region has left"
                )));
            }
            v.sync_file(&mut f)
                .map_err(Error::ff(format!("writing {p}")))?;
        }
    }
    v.sync().map_err(Error::ff("writing the FAT"))?;
    drop(v);
    if let Some(l) = label {
        ff::write_boot_label(&mut dev, &l).map_err(Error::ff("writing the boot sector label"))?;
    }
    Ok(())
}

fn clean(path: &str) -> String {
    path.split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect::<Vec<_>>()
        .join("/")
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

    fn img(size: usize, label: &str, files: &[(String, PathBuf)]) -> Cursor<Vec<u8>> {
        let mut c = Cursor::new(vec![0u8; size]);
        let opts = FormatOptions {
            label: label.into(),
        };
        format_with_files(&mut c, size as u64, &opts, files).unwrap();
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

    /// One sector per cluster, as fwup's fat_mkfs: FAT12 up to 4085 clusters, FAT32 from
    /// 65526. The label goes to the root directory only, as FatFs f_setlabel writes it.
    #[test]
    fn types_by_size_and_probe() {
        for (size, t) in [
            (1 << 20, FatType::Fat12),
            (16 << 20, FatType::Fat16),
            (64 << 20, FatType::Fat32),
        ] {
            let mut c = img(size, "BOOT", &[]);
            let info = probe(&mut c).unwrap().unwrap();
            assert_eq!(info.fat_type, t, "{size}");
            assert_eq!(info.label.as_deref(), Some("BOOT"));
            assert_eq!(info.boot_label.as_deref(), Some("BOOT"));
            assert_eq!(info.cluster_size, 512);
            assert_eq!(info.size, size as u64);
            assert_eq!(info.volume_id, (size / 512) as u32 + ff::FWUP_FATTIME);
        }
        assert_eq!(probe(Cursor::new(vec![0u8; 4096])).unwrap(), None);
        let e = format_with_files(
            Cursor::new(vec![0u8; 32 << 10]),
            32 << 10,
            &FormatOptions::default(),
            &[],
        )
        .unwrap_err();
        assert!(matches!(e, Error::Size { .. }), "{e}");
    }

    #[test]
    fn reproducible_and_names_checked() {
        let dir = std::env::temp_dir().join(format!("fat-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let host = dir.join("c.txt");
        std::fs::write(&host, b"data").unwrap();
        let files = vec![("a/b/c.txt".to_string(), host.clone())];
        let build = || img(16 << 20, "BOOT", &files).into_inner();
        let one = build();
        assert_eq!(one, build());
        let bad = vec![("caf\u{e9}.txt".to_string(), host)];
        let e = format_with_files(
            Cursor::new(vec![0u8; 1 << 20]),
            1 << 20,
            &FormatOptions::default(),
            &bad,
        )
        .unwrap_err();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(matches!(e, Error::Name(_)), "{e}");
    }
}
