//! Debian binary packages: a mirror's signed Release file, its Packages.xz index, pool
//! downloads verified by sha256 and cached by it, and .deb reading (ar + data.tar.{xz,zst,gz}).
//!
//! Repository format: <https://wiki.debian.org/DebianRepository/Format>;
//! .deb format: <https://manpages.debian.org/bookworm/dpkg-dev/deb.5.en.html>.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::Digest;

use common::hex::encode as hex;

use crate::{Error, Progress, Result};

pub const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";
pub const DEFAULT_SUITE: &str = "bookworm";
pub const DEFAULT_KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// One package's entry in a Packages index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageInfo {
    pub name: String,
    pub version: String,
    pub arch: String,
    pub filename: String,
    pub size: u64,
    pub sha256: String,
    /// Depends and Pre-Depends: a list of alternatives, names only.
    pub depends: Vec<Vec<String>>,
    pub provides: Vec<String>,
}

/// A parsed Packages index.
#[derive(Debug, Default)]
pub struct Index {
    /// The Release file's `Date` (which state of the suite this is).
    pub release_date: Option<String>,
    pub packages: BTreeMap<String, PackageInfo>,
    /// Virtual name -> real packages providing it.
    pub provides: BTreeMap<String, Vec<String>>,
}

impl Index {
    /// A real package for `name` (itself, or the first provider of a virtual name).
    pub fn lookup(&self, name: &str) -> Option<&PackageInfo> {
        self.packages.get(name).or_else(|| {
            self.provides
                .get(name)
                .and_then(|v| v.first())
                .and_then(|p| self.packages.get(p))
        })
    }
}

/// Parse `Key: value` paragraphs (deb822) into one map per paragraph.
pub fn parse_paragraphs(text: &str) -> Vec<BTreeMap<String, String>> {
    let mut out = Vec::new();
    let mut cur: BTreeMap<String, String> = BTreeMap::new();
    let mut last: Option<String> = None;
    for line in text.lines() {
        if line.trim().is_empty() {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            last = None;
        } else if line.starts_with([' ', '\t']) {
            if let Some(k) = &last {
                let v = cur.entry(k.clone()).or_default();
                v.push('\n');
                v.push_str(line.trim());
            }
        } else if let Some((k, v)) = line.split_once(':') {
            cur.insert(k.to_string(), v.trim().to_string());
            last = Some(k.to_string());
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// `libc6 (>= 2.34), libtinfo6 | libncurses6, foo:any` -> [[libc6], [libtinfo6, libncurses6], [foo]].
pub fn parse_depends(s: &str) -> Vec<Vec<String>> {
    s.split(',')
        .map(|alts| {
            alts.split('|')
                .filter_map(|a| {
                    let name = a.trim().split([' ', '(', '[']).next()?.trim();
                    let name = name.split(':').next()?;
                    (!name.is_empty()).then(|| name.to_string())
                })
                .collect::<Vec<_>>()
        })
        .filter(|v| !v.is_empty())
        .collect()
}

pub fn parse_index(text: &str) -> Index {
    let mut idx = Index::default();
    for p in parse_paragraphs(text) {
        let get = |k: &str| p.get(k).cloned().unwrap_or_default();
        let name = get("Package");
        if name.is_empty() {
            continue;
        }
        let mut depends = parse_depends(&get("Pre-Depends"));
        depends.extend(parse_depends(&get("Depends")));
        let provides: Vec<String> = parse_depends(&get("Provides"))
            .into_iter()
            .flatten()
            .collect();
        for v in &provides {
            idx.provides
                .entry(v.clone())
                .or_default()
                .push(name.clone());
        }
        let info = PackageInfo {
            name: name.clone(),
            version: get("Version"),
            arch: get("Architecture"),
            filename: get("Filename"),
            size: get("Size").parse().unwrap_or(0),
            sha256: get("SHA256"),
            depends,
            provides,
        };
        // A suite lists one version per package; keep the first if it repeats.
        idx.packages.entry(name).or_insert(info);
    }
    idx
}

/// The part of a clearsigned InRelease file that was signed, dash-escaping undone.
pub fn clearsigned_body(text: &str) -> &str {
    let Some(start) = text.find("-----BEGIN PGP SIGNED MESSAGE-----") else {
        return text;
    };
    let rest = &text[start..];
    // The armor headers end at the first empty line.
    let body_start = rest.find("\n\n").map(|i| i + 2).unwrap_or(rest.len());
    let body = &rest[body_start..];
    let end = body
        .find("\n-----BEGIN PGP SIGNATURE-----")
        .unwrap_or(body.len());
    &body[..end]
}

/// The SHA256 section of a Release file: path -> (sha256, size).
pub fn release_sha256(release: &str) -> BTreeMap<String, (String, u64)> {
    let mut m = BTreeMap::new();
    let mut in_sha = false;
    for line in release.lines() {
        if !line.starts_with(' ') {
            in_sha = line.trim_end() == "SHA256:";
            continue;
        }
        if in_sha {
            let f: Vec<&str> = line.split_whitespace().collect();
            if let [sha, size, path] = f[..] {
                m.insert(
                    path.trim_start_matches("- ").to_string(),
                    (sha.to_string(), size.parse().unwrap_or(0)),
                );
            }
        }
    }
    m
}

/// Where packages come from.
#[derive(Debug, Clone)]
pub struct Mirror {
    pub url: String,
    pub suite: String,
    pub components: Vec<String>,
    pub arch: String,
    /// Keys for InRelease; `None` skips the signature check (`keyring: none`; sha256s still
    /// apply).
    pub keyring: Option<crate::openpgp::Keyring>,
    pub cache: PathBuf,
    /// Never use the network: everything must come from `cache`.
    pub offline: bool,
}

fn http_get(url: &str) -> Result<Box<dyn Read + Send + Sync>> {
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(Error::Http {
            url: url.into(),
            msg: "not an http:// or https:// URL".into(),
        });
    }
    match ureq::get(url)
        .timeout(std::time::Duration::from_secs(120))
        .call()
    {
        Ok(r) => Ok(r.into_reader()),
        Err(ureq::Error::Status(code, _)) => Err(Error::Http {
            url: url.into(),
            msg: format!("HTTP status {code}"),
        }),
        // The transport error's own text repeats the URL.
        Err(ureq::Error::Transport(t)) => Err(Error::Http {
            url: url.into(),
            msg: match t.message() {
                Some(m) => format!("{}: {m}", t.kind()),
                None => t.kind().to_string(),
            },
        }),
    }
}

/// Download `url` into `dest` (via a temp name), checking size and sha256 on the way.
pub fn download_verified(
    url: &str,
    dest: &Path,
    sha256: &str,
    size: Option<u64>,
    progress: &dyn Progress,
) -> Result<()> {
    let dir = dest.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let tmp = dest.with_extension(format!("part{}", std::process::id()));
    let mut reader = http_get(url)?;
    let mut f = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut n_total = 0u64;
    progress.start(url.rsplit('/').next().unwrap_or(url), size);
    let res = (|| -> Result<()> {
        loop {
            let n = reader.read(&mut buf).map_err(|e| Error::Http {
                url: url.into(),
                msg: e.to_string(),
            })?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            f.write_all(&buf[..n]).map_err(|e| Error::io(&tmp, e))?;
            n_total += n as u64;
            progress.advance(n as u64);
        }
        f.sync_all().map_err(|e| Error::io(&tmp, e))?;
        if let Some(s) = size.filter(|s| *s != n_total) {
            return Err(Error::Http {
                url: url.into(),
                msg: format!("got {n_total} bytes, the index says {s}"),
            });
        }
        let got = hex(&h.finalize());
        if !got.eq_ignore_ascii_case(sha256) {
            return Err(Error::Checksum {
                what: url.into(),
                expected: sha256.into(),
                got,
            });
        }
        Ok(())
    })();
    progress.finish();
    match res {
        Ok(()) => std::fs::rename(&tmp, dest).map_err(|e| Error::io(dest, e)),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// sha256 of a file, streamed.
pub fn file_sha256(path: &Path) -> Result<String> {
    common::hash::sha256_file(path).map_err(|e| Error::io(path, e))
}

impl Mirror {
    fn base(&self) -> &str {
        self.url.trim_end_matches('/')
    }

    /// Where the last verified InRelease of this mirror and suite is kept, for offline use.
    fn inrelease_cache(&self) -> PathBuf {
        let key = common::hash::sha256_hex(format!("{}\n{}", self.base(), self.suite).as_bytes());
        self.cache
            .join("debian-index")
            .join(format!("InRelease-{}-{}", self.suite, &key[..16]))
    }

    /// The suite's Release text, signature checked: fetched, or (offline) the cached copy.
    /// Returns (text, where it came from).
    fn release(&self) -> Result<(String, String)> {
        let url = format!("{}/dists/{}/InRelease", self.base(), self.suite);
        let cached = self.inrelease_cache();
        let (text, from) = if self.offline {
            let t = std::fs::read_to_string(&cached).map_err(|_| {
                Error::Offline(format!(
                    "no cached index for {url} in {}: run once with the network (or write a \
                     lockfile with `imgtool rootfs lock` while online)",
                    self.cache.display()
                ))
            })?;
            (t, cached.display().to_string())
        } else {
            let mut t = String::new();
            http_get(&url)?
                .read_to_string(&mut t)
                .map_err(|e| Error::Http {
                    url: url.clone(),
                    msg: e.to_string(),
                })?;
            (t, url.clone())
        };
        let body = match &self.keyring {
            Some(k) => {
                let (body, fpr) = k.verify_clearsigned(&text, &from)?;
                tracing::info!("{from}: good signature by {fpr}");
                body
            }
            None => clearsigned_body(&text).to_string(),
        };
        if !self.offline {
            let dir = cached.parent().unwrap_or(Path::new("."));
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
            common::fs::write_atomic(&cached, text.as_bytes())
                .map_err(|e| Error::io(&cached, e))?;
        }
        Ok((body, from))
    }

    /// Fetch InRelease (checking its signature), then each component's Packages.xz (cached by
    /// the sha256 the Release file gives), and parse them into one index.
    pub fn index(&self, progress: &dyn Progress) -> Result<Index> {
        let (release, from) = self.release()?;
        let fields = parse_paragraphs(&release)
            .into_iter()
            .next()
            .unwrap_or_default();
        let sums = release_sha256(&release);
        let idx_dir = self.cache.join("debian-index");
        std::fs::create_dir_all(&idx_dir).map_err(|e| Error::io(&idx_dir, e))?;
        let mut all = Index {
            release_date: fields.get("Date").cloned(),
            ..Index::default()
        };
        for comp in &self.components {
            let rel = format!("{comp}/binary-{}/Packages.xz", self.arch);
            let (sha, size) = sums.get(&rel).ok_or_else(|| {
                Error::Resolve(format!(
                    "{from} lists no {rel}: is `{}` an architecture of suite `{}`?",
                    self.arch, self.suite
                ))
            })?;
            let cached = idx_dir.join(format!("{sha}.Packages.xz"));
            if !cached.is_file() || file_sha256(&cached)? != *sha {
                let url = format!("{}/dists/{}/{rel}", self.base(), self.suite);
                if self.offline {
                    return Err(Error::Offline(format!(
                        "{url} (sha256 {sha}) is not in {}",
                        idx_dir.display()
                    )));
                }
                download_verified(&url, &cached, sha, Some(*size), progress)?;
            }
            let f = std::fs::File::open(&cached).map_err(|e| Error::io(&cached, e))?;
            let mut t = String::new();
            liblzma::read::XzDecoder::new(std::io::BufReader::new(f))
                .read_to_string(&mut t)
                .map_err(|e| Error::io(&cached, e))?;
            let idx = parse_index(&t);
            for (k, v) in idx.packages {
                all.packages.entry(k).or_insert(v);
            }
            for (k, v) in idx.provides {
                all.provides.entry(k).or_default().extend(v);
            }
        }
        Ok(all)
    }

    /// Where the cache keeps the .deb with this sha256.
    pub fn cached_deb(&self, sha256: &str) -> PathBuf {
        self.cache.join("debs").join(format!("{sha256}.deb"))
    }

    /// The .deb for `p`, from the cache (`<cache>/debs/<sha256>.deb`) or the pool.
    pub fn fetch(&self, p: &PackageInfo, progress: &dyn Progress) -> Result<PathBuf> {
        let path = self.cached_deb(&p.sha256);
        if path.is_file() && file_sha256(&path)? == p.sha256 {
            return Ok(path);
        }
        let url = format!("{}/{}", self.base(), p.filename);
        if self.offline {
            return Err(Error::Offline(format!(
                "{} {} ({}, sha256 {}) is not in {}: build once without --offline to \
                 fetch it",
                p.name,
                p.version,
                p.filename,
                p.sha256,
                path.parent().unwrap_or(&path).display()
            )));
        }
        download_verified(&url, &path, &p.sha256, Some(p.size), progress).map_err(|e| match e {
            Error::Http { url, msg } if msg.contains("404") => Error::Http {
                url,
                msg: format!(
                    "{msg}: {} {} is no longer in the mirror's pool (a point release replaced \
                     it?): run `imgtool rootfs lock SPEC` to move to the current versions",
                    p.name, p.version
                ),
            },
            e => e,
        })?;
        Ok(path)
    }
}

/// One entry of a package's data.tar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    Dir,
    File,
    Symlink(String),
    /// Hard link to another path in the same archive.
    Hardlink(String),
    Other,
}

/// A .deb's members: `control.tar.*` and `data.tar.*`, decompressed.
pub struct Deb {
    pub path: PathBuf,
    control_tar: Vec<u8>,
    data_tar: Vec<u8>,
}

fn decompress(name: &str, raw: Vec<u8>, file: &Path) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let r: std::io::Result<usize> = if name.ends_with(".xz") {
        liblzma::read::XzDecoder::new(&raw[..]).read_to_end(&mut out)
    } else if name.ends_with(".zst") {
        zstd::stream::read::Decoder::new(&raw[..]).and_then(|mut d| d.read_to_end(&mut out))
    } else if name.ends_with(".gz") {
        flate2::read::GzDecoder::new(&raw[..]).read_to_end(&mut out)
    } else if name.ends_with(".tar") {
        return Ok(raw);
    } else {
        return Err(Error::Format {
            file: file.display().to_string(),
            msg: format!("member `{name}` has a compression this tool does not read"),
        });
    };
    r.map_err(|e| Error::Format {
        file: file.display().to_string(),
        msg: format!("{name}: {e}"),
    })?;
    Ok(out)
}

impl Deb {
    pub fn open(path: &Path) -> Result<Deb> {
        let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let bad = |msg: String| Error::Format {
            file: path.display().to_string(),
            msg,
        };
        let mut ar = ar::Archive::new(f);
        let (mut version, mut control, mut data) = (None, None, None);
        while let Some(entry) = ar.next_entry() {
            let mut entry = entry.map_err(|e| bad(format!("not a .deb (ar archive): {e}")))?;
            let name = String::from_utf8_lossy(entry.header().identifier()).into_owned();
            let mut raw = Vec::new();
            entry
                .read_to_end(&mut raw)
                .map_err(|e| Error::io(path, e))?;
            if name == "debian-binary" {
                version = Some(String::from_utf8_lossy(&raw).trim().to_string());
            } else if name.starts_with("control.tar") {
                control = Some(decompress(&name, raw, path)?);
            } else if name.starts_with("data.tar") {
                data = Some(decompress(&name, raw, path)?);
            }
        }
        match version.as_deref() {
            Some(v) if v.starts_with("2.") => {}
            Some(v) => return Err(bad(format!("unsupported .deb format version {v}"))),
            None => return Err(bad("no debian-binary member: not a .deb".into())),
        }
        Ok(Deb {
            path: path.to_path_buf(),
            control_tar: control.ok_or_else(|| bad("no control.tar member".into()))?,
            data_tar: data.ok_or_else(|| bad("no data.tar member".into()))?,
        })
    }

    /// The `control` file's fields.
    pub fn control(&self) -> Result<BTreeMap<String, String>> {
        let mut ar = tar::Archive::new(&self.control_tar[..]);
        let entries = ar.entries().map_err(|e| Error::io(&self.path, e))?;
        for e in entries {
            let mut e = e.map_err(|e| Error::io(&self.path, e))?;
            let p = e.path().map_err(|e| Error::io(&self.path, e))?;
            if p.to_string_lossy().trim_start_matches("./") == "control" {
                let mut s = String::new();
                e.read_to_string(&mut s)
                    .map_err(|e| Error::io(&self.path, e))?;
                return Ok(parse_paragraphs(&s).into_iter().next().unwrap_or_default());
            }
        }
        Err(Error::Format {
            file: self.path.display().to_string(),
            msg: "control.tar has no control file".into(),
        })
    }

    /// Walk data.tar: `f(path without ./, kind, mode, reader)`.
    pub fn for_each_entry(
        &self,
        mut f: impl FnMut(&str, EntryKind, u32, &mut dyn Read) -> Result<()>,
    ) -> Result<()> {
        let mut ar = tar::Archive::new(&self.data_tar[..]);
        let entries = ar.entries().map_err(|e| Error::io(&self.path, e))?;
        for e in entries {
            let mut e = e.map_err(|e| Error::io(&self.path, e))?;
            let path = e
                .path()
                .map_err(|e| Error::io(&self.path, e))?
                .to_string_lossy()
                .trim_start_matches("./")
                .trim_start_matches('/')
                .trim_end_matches('/')
                .to_string();
            if path.is_empty() || path == "." {
                continue;
            }
            let link = || {
                e.link_name()
                    .ok()
                    .flatten()
                    .map(|l| l.to_string_lossy().into_owned())
                    .unwrap_or_default()
            };
            let kind = match e.header().entry_type() {
                tar::EntryType::Directory => EntryKind::Dir,
                tar::EntryType::Regular | tar::EntryType::Continuous => EntryKind::File,
                tar::EntryType::Symlink => EntryKind::Symlink(link()),
                tar::EntryType::Link => EntryKind::Hardlink(
                    link()
                        .trim_start_matches("./")
                        .trim_start_matches('/')
                        .to_string(),
                ),
                _ => EntryKind::Other,
            };
            let mode = e.header().mode().unwrap_or(0o644);
            f(&path, kind, mode, &mut e)?;
        }
        Ok(())
    }

    /// Every path in data.tar (for finding which package ships a library).
    pub fn paths(&self) -> Result<Vec<(String, EntryKind)>> {
        let mut v = Vec::new();
        self.for_each_entry(|p, k, _, _| {
            v.push((p.to_string(), k));
            Ok(())
        })?;
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depends_parsing() {
        assert_eq!(
            parse_depends("libc6 (>= 2.34), libtinfo6 | libncurses6 (>= 6), foo:any, bar [arm64]"),
            vec![
                vec!["libc6".to_string()],
                vec!["libtinfo6".into(), "libncurses6".into()],
                vec!["foo".into()],
                vec!["bar".into()],
            ]
        );
        assert!(parse_depends("").is_empty());
    }

    #[test]
    fn index_and_release() {
        let idx = parse_index(
            "Package: a\nVersion: 1\nArchitecture: arm64\nFilename: pool/a.deb\nSize: 10\n\
             SHA256: ab\nDepends: b (>= 1), c | d\nProvides: virt (= 1)\nDescription: x\n \
             more text\n\nPackage: b\nVersion: 2\nPre-Depends: e\n",
        );
        let a = &idx.packages["a"];
        assert_eq!(a.size, 10);
        assert_eq!(
            a.depends,
            vec![vec!["b".to_string()], vec!["c".into(), "d".into()]]
        );
        assert_eq!(idx.lookup("virt").unwrap().name, "a");
        assert_eq!(idx.packages["b"].depends, vec![vec!["e".to_string()]]);

        let inrel = "-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\nOrigin: Debian\n\
                     MD5Sum:\n 00 1 main/binary-arm64/Packages.xz\nSHA256:\n \
                     abcd 123 main/binary-arm64/Packages.xz\n ef 9 main/binary-arm64/Release\n\
                     -----BEGIN PGP SIGNATURE-----\nxx\n-----END PGP SIGNATURE-----\n";
        let body = clearsigned_body(inrel);
        assert!(body.starts_with("Origin: Debian"));
        assert!(!body.contains("SIGNATURE"));
        let sums = release_sha256(body);
        assert_eq!(
            sums["main/binary-arm64/Packages.xz"],
            ("abcd".to_string(), 123)
        );
        assert_eq!(sums.len(), 2);
    }

    /// A .deb written with the real `ar` and `tar` round-trips through our reader.
    #[test]
    fn reads_a_real_deb() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        std::fs::create_dir_all(r.join("data/usr/lib")).unwrap();
        std::fs::write(r.join("data/usr/lib/libq.so.1"), b"lib").unwrap();
        std::os::unix::fs::symlink("libq.so.1", r.join("data/usr/lib/libq.so")).unwrap();
        std::fs::create_dir_all(r.join("ctl")).unwrap();
        std::fs::write(r.join("ctl/control"), "Package: q\nVersion: 1\n").unwrap();
        std::fs::write(r.join("debian-binary"), "2.0\n").unwrap();
        let sh = |c: &str| {
            let s = std::process::Command::new("sh")
                .arg("-c")
                .arg(c)
                .current_dir(r)
                .status()
                .unwrap();
            assert!(s.success(), "{c}");
        };
        sh(
            "tar -C data -cJf data.tar.xz . && tar -C ctl -czf control.tar.gz . && \
            ar rc q.deb debian-binary control.tar.gz data.tar.xz",
        );
        let deb = Deb::open(&r.join("q.deb")).unwrap();
        assert_eq!(deb.control().unwrap()["Package"], "q");
        let paths = deb.paths().unwrap();
        assert!(paths.contains(&("usr/lib/libq.so.1".into(), EntryKind::File)));
        assert!(paths.contains(&(
            "usr/lib/libq.so".into(),
            EntryKind::Symlink("libq.so.1".into())
        )));
        assert!(Deb::open(&r.join("debian-binary")).is_err());
    }
}
