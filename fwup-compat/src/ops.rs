//! The operations behind fwup's modes: create, apply, metadata, list, verify, sign, gen-keys.

use crate::cache::BlockCache;
use crate::config::{self, Mode as CfgMode, Section, Vars};
use crate::error::{Error, Result};
use crate::exec::{requirements_met, run_plan, Executor};
use crate::plan::Plan;
use crate::progress::Progress;
use common::hex::encode as hex;

use crate::uuid::{blake2b_256, meta_uuid};
use crate::zip::{pack, ZipStream, ZipWriter};
use base64::Engine;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::Path;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Create-time options.
pub struct CreateOptions<'a> {
    pub config: &'a str,
    pub output: &'a str,
    pub level: u32,
    pub private_key: Option<[u8; 64]>,
}

fn read_path(p: &str) -> Result<Vec<u8>> {
    if p == "-" {
        let mut v = Vec::new();
        std::io::stdin()
            .read_to_end(&mut v)
            .map_err(|e| Error::io("stdin", e))?;
        Ok(v)
    } else {
        std::fs::read(p).map_err(|e| Error::io(p, e))
    }
}

/// fwup's update_relative_path: relative paths are taken from the directory of `from`.
fn relative_path(from: &str, path: &str) -> std::path::PathBuf {
    if path.starts_with('/') || path.starts_with('~') {
        return path.into();
    }
    let dir = Path::new(from)
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    dir.join(path)
}

/// A resource's bytes as stored in the archive (data segments only) and its sparse map.
struct ResourceData {
    data: Vec<u8>,
    map: Vec<u64>,
}

fn host_resource(r: &Section) -> Result<ResourceData> {
    let host = r.get_str("host-path").unwrap_or("");
    let skip_holes = r.get_bool("skip-holes");
    let open = |part: &str| {
        File::open(relative_path(&r.file, part)).map_err(|_| {
            Error::msg(format!(
                "can't open path '{part}' in file-resource '{}'",
                r.title()
            ))
        })
    };
    let parts: Vec<&str> = host.split(';').filter(|p| !p.is_empty()).collect();
    let mut map = Vec::new();
    for part in &parts {
        crate::sparse::build_map(&open(part)?, !skip_holes, &mut map)
            .map_err(|e| Error::msg(format!("{part}: {e}")))?;
    }
    if map.is_empty() {
        map.push(0);
    }
    let mut data = Vec::new();
    let mut it = crate::sparse::ReadIter::new(&map);
    for part in &parts {
        let f = open(part)?;
        it.read_file(&f, &mut data)
            .map_err(|e| Error::msg(format!("{part}: {e}")))?;
    }
    Ok(ResourceData { data, map })
}

/// fwup's resource_name_to_archive_path.
fn archive_path(name: &str) -> Result<String> {
    if name.is_empty() {
        return Err(Error::msg("resource name can't be empty"));
    }
    if name.len() + 6 > 256 {
        return Err(Error::msg(format!("resource name '{name}' is too long")));
    }
    if name.ends_with('/') {
        return Err(Error::msg(format!(
            "resource name '{name}' can't end in a '/'"
        )));
    }
    match name.strip_prefix('/') {
        Some("") => Err(Error::msg("resource name can't be the root directory")),
        Some("meta.conf") => Err(Error::msg("resources can't be named /meta.conf")),
        Some(p) if p == "data" || p.starts_with("data/") => Err(Error::msg(
            "use a normal resource name rather than specifying /data",
        )),
        Some(p) => Ok(p.to_string()),
        None => Ok(format!("data/{name}")),
    }
}

/// `fwup -c`: parse, hash resources, write meta.conf and the archive.
pub fn create(o: &CreateOptions) -> Result<()> {
    let text = read_path(o.config)?;
    let mut vars = Vars::from_env();
    vars.set("FWUP_META_UUID", "${FWUP_META_UUID}");
    vars.set("FWUP_META_NICKNAME", "${FWUP_META_NICKNAME}");
    let mut parser = config::Parser::new(&text, o.config, &mut vars, CfgMode::Create);
    if o.config != "-" {
        parser.top_is_file(Path::new(o.config));
    }
    parser.on_section = Some(Box::new(validate_section));
    parser.on_call = Some(Box::new(crate::plan::check_call));
    let mut top = parser.parse_top()?;
    for t in top.secs("task") {
        for r in t.secs("on-resource") {
            if top.sec("file-resource", r.title()).is_none() {
                return Err(Error::msg(format!("unknown resource: {}", r.title())));
            }
        }
    }
    if let Some(v) = top.get_str("require-fwup-version") {
        if !version_ok(v) {
            return Err(Error::msg(format!(
                "fwup version '{v}' required. This is fwup version '{}'.",
                crate::VERSION
            )));
        }
    }
    // Resources: sparse map, data, hash, size assertions.
    let mut blobs = Vec::new();
    let names: Vec<String> = top
        .secs("file-resource")
        .iter()
        .map(|r| r.title().to_string())
        .collect();
    for name in &names {
        let r = top.sec("file-resource", name).unwrap();
        let rd = match r.get_str("host-path") {
            Some(_) => host_resource(r)?,
            None => {
                let c = r.get_str("contents").unwrap_or("").as_bytes().to_vec();
                ResourceData {
                    map: vec![c.len() as u64],
                    data: c,
                }
            }
        };
        let h = blake2b_256(&[&rd.data]);
        let r = top
            .secs_mut("file-resource")
            .iter_mut()
            .find(|r| r.title() == name)
            .unwrap();
        r.set_list("length", rd.map.iter().map(|v| v.to_string()).collect());
        r.set("blake2b-256", hex(&h));
        blobs.push((name.clone(), rd));
    }
    let mut meta = config::to_meta_conf(&top);
    if meta.is_empty() {
        meta = "# Empty file\n".to_string();
    }
    let mtime = creation_time();
    // Write to a temporary file next to the output and rename it at the end: a failed
    // create leaves no partial archive and does not touch an existing one.
    let tmp = format!("{}.tmp{}", o.output, std::process::id());
    let out: Box<dyn Write> = if o.output == "-" {
        Box::new(std::io::stdout().lock())
    } else {
        Box::new(
            File::create(&tmp)
                .map_err(|_| Error::msg(format!("error creating archive '{}'", o.output)))?,
        )
    };
    let r = (|| {
        let mut z = ZipWriter::new(std::io::BufWriter::with_capacity(1 << 20, out));
        let wr = |e: std::io::Error| Error::io(o.output, e);
        if let Some(k) = &o.private_key {
            let sig = sign(k, meta.as_bytes());
            z.add("meta.conf.ed25519", &pack_stored(&sig), 315_532_800, false)
                .map_err(wr)?;
        }
        z.add("meta.conf", &pack(meta.as_bytes(), o.level), mtime, true)
            .map_err(wr)?;
        for (name, rd) in &blobs {
            let r = top.sec("file-resource", name).unwrap();
            if let Some(host) = r.get_str("host-path") {
                if host.is_empty() {
                    return Err(Error::msg(format!(
                        "must specify a host-path for resource '{name}'"
                    )));
                }
                let total: u64 = rd.map.iter().sum();
                let gte = r.get_int("assert-size-gte").saturating_mul(512);
                if gte >= 0 && (total as i64) < gte {
                    return Err(Error::msg(format!(
                        "file size assertion failed on '{host}'. Size is {total} bytes. It must be >= {gte} bytes ({} blocks)",
                        gte / 512
                    )));
                }
                let lte = r.get_int("assert-size-lte").saturating_mul(512);
                if lte >= 0 && (total as i64) > lte {
                    return Err(Error::msg(format!(
                        "file size assertion failed on '{host}'. Size is {total} bytes. It must be <= {lte} bytes ({} blocks)",
                        lte / 512
                    )));
                }
            }
            z.add(
                &archive_path(name)?,
                &pack(&rd.data, o.level),
                315_532_800,
                false,
            )
            .map_err(wr)?;
        }
        z.finish().map_err(wr)?;
        Ok(())
    })();
    if o.output == "-" {
        return r;
    }
    match r {
        Ok(()) => std::fs::rename(&tmp, o.output).map_err(|e| Error::io(o.output, e)),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

fn pack_stored(d: &[u8]) -> crate::zip::Packed {
    let mut h = crc32fast::Hasher::new();
    h.update(d);
    crate::zip::Packed {
        method: 0,
        data: d.to_vec(),
        crc: h.finalize(),
        size: d.len() as u64,
    }
}

/// The archive timestamp: $SOURCE_DATE_EPOCH, else $NOW (YYYY-MM-DDTHH:MM:SSZ), else now.
fn creation_time() -> i64 {
    if let Ok(s) = std::env::var("SOURCE_DATE_EPOCH") {
        return crate::config::strtoull(&s) as i64;
    }
    if let Some(t) = std::env::var("NOW").ok().and_then(|n| parse_iso8601(&n)) {
        return t;
    }
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn parse_iso8601(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
        || b[19] != b'Z'
    {
        return None;
    }
    let n = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d, h, mi, se) = (
        n(0..4)?,
        n(5..7)?,
        n(8..10)?,
        n(11..13)?,
        n(14..16)?,
        n(17..19)?,
    );
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    Some(crate::zip::days_from_civil(y, mo as u32, d as u32) * 86400 + h * 3600 + mi * 60 + se)
}

fn version_ok(req: &str) -> bool {
    let p = |s: &str| -> Vec<u64> { s.split('.').map(|x| x.parse().unwrap_or(0)).collect() };
    p(req) <= p(crate::VERSION)
}

/// Create-time checks that fwup runs as each top-level section closes.
fn validate_section(
    kind: &str,
    sec: &mut Section,
    vars: &mut Vars,
) -> std::result::Result<(), String> {
    match kind {
        "file-resource" => {
            let (hp, c) = (sec.get_str("host-path"), sec.get_str("contents"));
            if hp.is_none() && c.is_none() {
                return Err(format!(
                    "host-path or contents must be set for file-resource '{}'",
                    sec.title()
                ));
            }
            if hp.is_some() && c.is_some() {
                return Err(format!(
                    "only one of host-path or contents should be set for file-resource '{}'",
                    sec.title()
                ));
            }
            if let Some(p) = hp {
                let key: String = format!("FWUP_SIZE_{}", sec.title())
                    .chars()
                    .map(|c| if matches!(c, '-' | '/' | '.') { '_' } else { c })
                    .collect();
                // fwup stats the path as written (not relative to the config file).
                if let Ok(m) = std::fs::metadata(p) {
                    vars.set(&key, &m.len().to_string());
                }
            }
        }
        "gpt" => {
            verify_gpt(sec)?;
            for p in sec.secs_mut("partition") {
                if p.get_bool("boot") {
                    let f = crate::config::strtoull(p.get_str("flags").unwrap_or("0")) | 4;
                    p.set("flags", format!("0x{f:x}"));
                    p.unset("boot");
                }
            }
        }
        "uboot-environment" => {
            let off = sec.get_str("block-offset");
            if off.is_none_or(|o| crate::config::parse_c_int(o).is_none()) {
                return Err("block-offset must be specified".into());
            }
            let count = sec.get_int("block-count");
            if count <= 0 || count >= u16::MAX as i64 {
                return Err(
                    "block-count must be specified, greater than 0 and less than 2^16 - 1".into(),
                );
            }
            if let Some(r) = sec.get_str("block-offset-redund") {
                let (o, r) = (
                    crate::config::strtoull(off.unwrap()) as i64,
                    crate::config::strtoull(r) as i64,
                );
                let right = r + count;
                if (r >= o && r < o + count) || (right > o && right < o + count) {
                    return Err(
                        "block-offset-redund can't overlap primary U-Boot environment".into(),
                    );
                }
            }
        }
        "mbr" => {
            if let (Some(path), None) = (
                sec.get_str("bootstrap-code-host-path"),
                sec.get_str("bootstrap-code"),
            ) {
                let b = std::fs::read(path).map_err(|_| {
                    format!("mbr bootstrap code path '{path}' required, but can't be read")
                })?;
                if b.len() < 440 {
                    return Err(format!(
                        "mbr bootstrap code in '{path}' should be 440 bytes"
                    ));
                }
                sec.set("bootstrap-code", hex(&b[..440]));
            }
            crate::mbr::verify_cfg(sec)?;
        }
        _ => {}
    }
    Ok(())
}

/// fwup's gpt_verify_cfg: GUIDs, offsets, counts and overlaps.
fn verify_gpt(sec: &Section) -> std::result::Result<(), String> {
    let guid_ok = |g: Option<&str>| g.is_some_and(|g| g.parse::<partition_table::Guid>().is_ok());
    if !guid_ok(sec.get_str("guid")) {
        return Err("GPT must have a valid disk guid".into());
    }
    let mut found = 0u128;
    let mut parts: Vec<(usize, u32, u32, bool)> = Vec::new();
    for p in sec.secs("partition") {
        let ix = crate::config::strtoull(p.title()) as usize;
        if ix >= 128 {
            return Err("partition must be numbered 0 through 127".into());
        }
        if found & (1 << ix) != 0 {
            return Err(format!(
                "invalid or duplicate partition number found for {ix}"
            ));
        }
        found |= 1 << ix;
        if !guid_ok(p.get_str("type")) {
            return Err(format!("partition {ix}'s type must set to a UUID"));
        }
        if !guid_ok(p.get_str("guid")) {
            return Err(format!("partition {ix} must have a valid guid"));
        }
        let off = p.get_str("block-offset").unwrap_or("");
        if off.is_empty() {
            return Err(format!("partition {ix}'s block_offset is required"));
        }
        let off = match crate::config::parse_c_int(off) {
            Some(v) if (0..u32::MAX as i64).contains(&v) => v as u32,
            Some(_) => {
                return Err(format!(
                    "partition {ix}'s block_offset must be positive and less than 2^32 - 1: '{off}'"
                ))
            }
            None => return Err(format!("error parsing partition {ix}'s block offset")),
        };
        let count = p.get_int("block-count");
        if count >= i32::MAX as i64 {
            return Err(format!(
                "partition {ix}'s block-count must be specified and less than 2^31 - 1"
            ));
        }
        if let Some(f) = p.get_str("flags") {
            if crate::config::parse_c_int(f).is_none() && f.parse::<u64>().is_err() {
                return Err(format!("error parsing partition {ix}'s flags"));
            }
        }
        parts.push((ix, off, count as u32, p.get_bool("expand")));
    }
    if parts.is_empty() {
        return Err("empty partition table?".into());
    }
    parts.sort();
    let mut expanding = false;
    for &(i, il, ic, expand) in &parts {
        let ir = il.wrapping_add(ic);
        if il == ir && !expand {
            continue;
        }
        if expanding {
            return Err(
                "a partition can't be specified after the one with \"expand = true\"".into(),
            );
        }
        expanding |= expand;
        for &(j, jl, jc, _) in &parts {
            if j == i {
                continue;
            }
            let jr = jl.wrapping_add(jc);
            if (il >= jl && il < jr) || (ir > jl && ir <= jr) {
                return Err(format!(
                    "partitions {i} (blocks {il} to {ir}) and {j} (blocks {jl} to {jr}) overlap"
                ));
            }
        }
    }
    Ok(())
}

/// An opened archive: signature checked, meta.conf parsed with the apply-time variables.
pub struct Opened<R: Read> {
    pub zip: ZipStream<R>,
    pub cfg: Section,
    pub meta_conf: Vec<u8>,
    pub signed: bool,
    pub mtime: i64,
}

/// `framing`: stdin carries `--framing` frames.
pub fn open_input(path: Option<&str>, framing: bool) -> Result<Box<dyn Read>> {
    match path {
        None | Some("-") | Some("") if framing => Ok(Box::new(Framed {
            inner: std::io::stdin(),
            left: 0,
            eof: false,
        })),
        None | Some("-") | Some("") => Ok(Box::new(std::io::stdin())),
        Some(p) => {
            let f = File::open(p).map_err(|e| {
                Error::msg(format!(
                    "Failed to open '{p}': {}",
                    std::io::Error::from(e.kind())
                ))
            })?;
            Ok(match Mapped::new(&f) {
                Some(m) => Box::new(m),
                None => Box::new(f),
            })
        }
    }
}

/// A regular input file read through a read-only mapping: no kernel copy per read. Pages
/// already consumed are released every 8 MiB, so the mapping never holds more than that
/// much of the archive in memory.
struct Mapped {
    ptr: *mut libc::c_void,
    len: usize,
    pos: usize,
    released: usize,
    populated: usize,
}

impl Mapped {
    const RELEASE: usize = 8 << 20;

    fn new(f: &File) -> Option<Self> {
        use std::os::unix::io::AsRawFd;
        let m = f.metadata().ok()?;
        if !m.file_type().is_file() || m.len() == 0 || m.len() > usize::MAX as u64 {
            return None;
        }
        let len = m.len() as usize;
        // SAFETY: mapping a regular file read-only; the result is checked.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                f.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return None;
        }
        // SAFETY: ptr/len is the mapping just made.
        unsafe { libc::madvise(ptr, len, libc::MADV_SEQUENTIAL) };
        let mut m = Mapped {
            ptr,
            len,
            pos: 0,
            released: 0,
            populated: 0,
        };
        m.populate();
        Some(m)
    }

    /// Map the next stretch of pages in one call instead of one fault per page.
    fn populate(&mut self) {
        const MADV_POPULATE_READ: i32 = 22;
        let end = (self.populated + Self::RELEASE).min(self.len);
        if end > self.populated {
            // SAFETY: a page-aligned range inside the mapping; failure (old kernels) only
            // means the pages fault in one by one.
            unsafe {
                libc::madvise(
                    (self.ptr as *mut u8).add(self.populated) as *mut libc::c_void,
                    end - self.populated,
                    MADV_POPULATE_READ,
                )
            };
            self.populated = end;
        }
    }
}

impl Read for Mapped {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.len - self.pos);
        // SAFETY: pos + n is inside the mapping.
        let src = unsafe { std::slice::from_raw_parts((self.ptr as *const u8).add(self.pos), n) };
        buf[..n].copy_from_slice(src);
        self.pos += n;
        if self.pos + Self::RELEASE / 2 > self.populated {
            self.populate();
        }
        let page = 4096;
        let upto = self.pos / page * page;
        if upto - self.released >= Self::RELEASE {
            // SAFETY: a page-aligned range of the mapping that was read already.
            unsafe {
                libc::madvise(
                    (self.ptr as *mut u8).add(self.released) as *mut libc::c_void,
                    upto - self.released,
                    libc::MADV_DONTNEED,
                )
            };
            self.released = upto;
        }
        Ok(n)
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: the mapping made in new().
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

/// Stdin with `--framing`: frames of a 32-bit big-endian length and that many bytes; a
/// zero length ends the input.
struct Framed<R> {
    inner: R,
    left: usize,
    eof: bool,
}

impl<R: Read> Read for Framed<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.eof || buf.is_empty() {
            return Ok(0);
        }
        if self.left == 0 {
            let mut len = [0u8; 4];
            self.inner.read_exact(&mut len).map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "Error reading stdin")
            })?;
            self.left = u32::from_be_bytes(len) as usize;
            if self.left == 0 {
                self.eof = true;
                return Ok(0);
            }
        }
        let n = buf.len().min(self.left);
        let got = self.inner.read(&mut buf[..n])?;
        if got == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "Received EOF even though framing indicated more bytes",
            ));
        }
        self.left -= got;
        Ok(got)
    }
}

/// Open an archive: signature entry, meta.conf, signature check, and meta.conf parsed with
/// the apply-time variables. `meta_only` selects the wording fwup uses for -l and -m.
pub fn open_archive<R: Read>(
    r: R,
    name: &str,
    keys: &[[u8; 32]],
    meta_only: bool,
) -> Result<Opened<R>> {
    let mut zip = ZipStream::new(r);
    let first = zip.next_entry();
    let mut e = match first {
        Ok(Some(e)) => e,
        // fwup says only this; the cause after it tells the user what is wrong.
        Ok(None) if meta_only => {
            return Err(Error::msg(format!(
                "Corrupt archive '{name}': Truncated ZIP file header"
            )))
        }
        Err(e) if meta_only => return Err(Error::msg(format!("Corrupt archive '{name}': {e}"))),
        Ok(None) => return Err(Error::msg("Truncated ZIP file header")),
        Err(e) => return Err(e),
    };
    let mut sig = None;
    if e.name == "meta.conf.ed25519" {
        let s = zip.read_all(64)?;
        if s.len() != 64 {
            return Err(Error::msg(format!(
                "Unexpected meta.conf.ed25519 size: {}",
                s.len()
            )));
        }
        sig = Some(s);
        e = zip
            .next_entry()
            .ok()
            .flatten()
            .ok_or_else(|| Error::msg("Expecting more than meta.conf.ed25519 in archive"))?;
    }
    if e.name != "meta.conf" {
        return Err(Error::msg(if meta_only {
            format!("Expecting meta.conf to be at beginning of {name}")
        } else {
            format!("Expecting meta.conf to be at the beginning of {name}")
        }));
    }
    let meta = zip.read_all(50_000)?;
    if meta.len() < 10 || meta.len() >= 50_000 {
        return Err(Error::msg(format!(
            "Unexpected meta.conf size: {}",
            meta.len()
        )));
    }
    if !keys.is_empty() {
        let Some(s) = &sig else {
            return Err(Error::msg("Expecting signed firmware archive."));
        };
        if !keys.iter().any(|k| verify(k, &meta, s)) {
            return Err(Error::msg(
                "Firmware archive's meta.conf fails digital signature verification.",
            ));
        }
    }
    let (uuid, nick) = meta_uuid(&meta);
    let mut vars = Vars::from_env();
    vars.set("FWUP_META_UUID", &uuid);
    vars.set("FWUP_META_NICKNAME", &nick);
    let mut cfg = config::parse(&meta, "meta.conf", &mut vars, CfgMode::Apply)
        .map_err(|e| Error::msg(format!("Unexpected error parsing meta.conf: {e}")))?;
    // The creation date comes from meta.conf's timestamp unless an old meta.conf set it.
    if !cfg.is_set("meta-creation-date") {
        cfg.set("meta-creation-date", crate::zip::iso8601(e.mtime));
    }
    // meta-uuid and the nickname are computed; meta.conf may not change them.
    let changed = |k: &str, want: &str| cfg.is_set(k) && cfg.get_str(k) != Some(want);
    if changed("meta-uuid", &uuid)
        || changed("meta-nickname", &nick)
        || vars.get("FWUP_META_UUID") != Some(uuid.as_str())
        || vars.get("FWUP_META_NICKNAME") != Some(nick.as_str())
    {
        return Err(Error::msg(
            "meta.conf isn't allowed to change 'meta-uuid', 'meta-nickname', '$FWUP_META_UUID' or '$FWUP_META_NICKNAME'",
        ));
    }
    cfg.set("meta-uuid", uuid);
    cfg.set("meta-nickname", nick);
    validate_meta(&cfg)?;
    Ok(Opened {
        zip,
        cfg,
        meta_conf: meta,
        signed: sig.is_some(),
        mtime: e.mtime,
    })
}

/// meta.conf is untrusted: check every section and task the way `fwup -c` checks them when
/// the archive is made, so that -a, -V, -m and -l refuse what create would have refused
/// (fwup itself only finds some of these when an action runs, after earlier writes).
pub fn validate_meta(cfg: &Section) -> Result<()> {
    let bad = |kind: &str, title: &str, msg: String| {
        Error::msg(format!("meta.conf: {kind} '{title}': {msg}"))
    };
    for s in cfg.secs("uboot-environment") {
        crate::plan::env_blocks(s, "uboot-environment")
            .map_err(|e| bad("uboot-environment", s.title(), e.to_string()))?;
    }
    for s in cfg.secs("mbr") {
        crate::mbr::verify_cfg(s).map_err(|e| bad("mbr", s.title(), e))?;
    }
    for s in cfg.secs("gpt") {
        verify_gpt(s).map_err(|e| bad("gpt", s.title(), e))?;
    }
    for s in cfg.secs("file-resource") {
        crate::plan::resource_total_len_checked(s)
            .map_err(|e| bad("file-resource", s.title(), e.to_string()))?;
    }
    let known = |kind: &str, title: &str| cfg.sec(kind, title).is_some();
    for t in cfg.secs("task") {
        let plan = Plan::from_task(t).map_err(|e| bad("task", t.title(), e))?;
        for sec in [
            t.single("on-init"),
            t.single("on-finish"),
            t.single("on-error"),
        ]
        .into_iter()
        .flatten()
        .chain(t.secs("on-resource"))
        {
            for argv in crate::plan::split_funlist(sec.list("funlist"))
                .map_err(|e| bad("task", t.title(), e))?
            {
                crate::plan::check_references(&argv, known)
                    .map_err(|e| bad("task", t.title(), e))?;
            }
        }
        for argv in
            crate::plan::split_funlist(t.list("reqlist")).map_err(|e| bad("task", t.title(), e))?
        {
            crate::plan::validate_requirement(&argv).map_err(|e| bad("task", t.title(), e))?;
        }
        for r in t.secs("on-resource") {
            crate::plan::check_delta_source(r).map_err(|e| bad("task", t.title(), e))?;
        }
        plan.check(cfg, 0)
            .map_err(|e| bad("task", t.title(), e.to_string()))?;
    }
    Ok(())
}

/// `fwup -m`: the metadata lines, or one key's value.
pub fn metadata(cfg: &Section, key: Option<&str>) -> String {
    if let Some(k) = key {
        return format!("{}\n", cfg.get_str(k).unwrap_or("(null)"));
    }
    let mut s = String::new();
    for k in [
        "meta-product",
        "meta-description",
        "meta-version",
        "meta-author",
        "meta-platform",
        "meta-architecture",
        "meta-creation-date",
        "meta-fwup-version",
        "meta-misc",
        "meta-vcs-identifier",
        "meta-uuid",
        "meta-nickname",
    ] {
        let opt = config::TOP.iter().find(|o| o.name == k).unwrap();
        config::print_opt(cfg, opt, &mut s, false);
    }
    s
}

/// `fwup -l`: task names sorted.
pub fn list(cfg: &Section) -> String {
    let mut v: Vec<&str> = cfg.secs("task").iter().map(|t| t.title()).collect();
    v.sort();
    v.iter().map(|t| format!("{t}\n")).collect()
}

/// `fwup -V`: read every entry, checking lengths and hashes.
pub fn verify_archive<R: Read>(mut o: Opened<R>) -> Result<()> {
    let mut seen = std::collections::HashSet::new();
    while let Some(e) = o.zip.next_entry()? {
        let name = crate::exec::resource_name(&e.name);
        if name.is_empty() || name == "/" {
            continue;
        }
        let Some(r) = o.cfg.sec("file-resource", &name) else {
            return Err(Error::msg(format!("Can't find file-resource for {name}")));
        };
        if seen.contains(&name) {
            return Err(Error::msg(format!(
                "Processing {name} twice. Archive is corrupt."
            )));
        }
        let expected = crate::plan::resource_data_len(r);
        if r.list("length").len() <= 1 && e.size.is_some_and(|s| s != expected) {
            // A delta: without the old contents only its hash entry and header can be checked.
            if r.get_str("blake2b-256").is_none_or(|h| h.len() != 64) {
                return Err(Error::msg(format!("invalid blake2b-256 hash for '{name}'")));
            }
            crate::vcdiff::read_header(&mut o.zip)
                .map_err(|e| Error::msg(format!("xdelta3 error: {e}")))?;
            seen.insert(name);
            continue;
        }
        let mut h = crate::uuid::Blake2b256::default();
        let mut buf = vec![0u8; 1 << 20];
        let mut n_total = 0u64;
        loop {
            let n = o
                .zip
                .read(&mut buf)
                .map_err(|e| Error::msg(e.to_string()))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            n_total += n as u64;
        }
        let out = h.finalize();
        if n_total != crate::plan::resource_data_len(r) {
            return Err(Error::msg(format!("ZIP data length mismatch for {name}")));
        }
        match r.get_str("blake2b-256") {
            Some(h) if h.len() == 64 => {
                if h != hex(&out) {
                    return Err(Error::msg(format!(
                        "Detected blake2b digest mismatch for {name}"
                    )));
                }
            }
            _ => return Err(Error::msg(format!("invalid blake2b-256 hash for '{name}'"))),
        }
        seen.insert(name);
    }
    for r in o.cfg.secs("file-resource") {
        if !seen.contains(r.title()) {
            return Err(Error::msg(format!(
                "Resource {} not found in archive",
                r.title()
            )));
        }
    }
    Ok(())
}

/// Apply options.
pub struct ApplyOptions<'a> {
    pub input: Option<&'a str>,
    pub dest: &'a str,
    pub task: &'a str,
    pub keys: Vec<[u8; 32]>,
    pub progress: crate::progress::Mode,
    pub progress_low: i64,
    pub progress_high: i64,
    pub max_size_blocks: Option<u64>,
    /// None: verify unless the destination is a regular file.
    pub verify_writes: Option<bool>,
    pub minimize_writes: bool,
    /// `--enable-trim`: a regular file gets none (with fwup's warning).
    pub enable_trim: bool,
    /// How messages and progress are printed (`--framing`).
    pub out: crate::out::Out,
    /// What host-side actions may do (`--unsafe`, `--reboot-param-path`).
    pub host: crate::host::HostOptions,
}

/// How the destination was opened.
struct Dest {
    file: File,
    end: u64,
    soft_end: bool,
    regular: bool,
    dev_null: bool,
}

fn open_dest(
    path: &str,
    max_size_blocks: Option<u64>,
    enable_trim: bool,
    out: &crate::out::Out,
) -> Result<Dest> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt, PermissionsExt};
    let existing = std::fs::metadata(path).ok();
    // Like fwup's will_be_regular_file: a missing path becomes a regular file.
    let regular = existing.as_ref().is_none_or(|m| m.file_type().is_file());
    let cannot = |exists: bool| {
        eprintln!();
        Error::msg(if exists {
            format!("Cannot open '{path}' for output.\nCheck file permissions or the read-only tab if this is an SD Card.")
        } else {
            format!("Cannot create '{path}'.\nCheck the path and permissions on the containing directory.")
        })
    };
    if regular {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(path)
            .map_err(|_| cannot(existing.is_some()))?;
        let m = file.metadata().map_err(|e| Error::io(path, e))?;
        // Root can open a read-only file for writing; that is almost surely a mistake.
        if m.permissions().mode() & 0o222 == 0 {
            return Err(cannot(true));
        }
        let (mut end, mut soft_end) = (0, false);
        if m.len() > 0 {
            end = m.len();
            soft_end = true;
        }
        if enable_trim {
            out.warn("ignoring --enable-trim since operating on a regular file");
        }
        if let Some(b) = max_size_blocks {
            end = max_size_bytes(b)?;
            soft_end = false;
        }
        return Ok(Dest {
            file,
            end,
            soft_end,
            regular: true,
            dev_null: false,
        });
    }
    if path == "/dev/null" {
        let file = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|_| cannot(true))?;
        return Ok(Dest {
            file,
            end: 0,
            soft_end: false,
            regular: false,
            dev_null: true,
        });
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|_| cannot(true))?;
    let mut end = 0;
    if existing.is_some_and(|m| m.file_type().is_block_device()) {
        use std::io::{Seek, SeekFrom};
        end = (&file).seek(SeekFrom::End(0)).unwrap_or(0);
        let _ = (&file).seek(SeekFrom::Start(0));
    }
    if end == 0 {
        out.warn(&format!("Error determining the size of {path}"));
    }
    if let Some(b) = max_size_blocks {
        let b = max_size_bytes(b)?;
        if end == 0 || b < end {
            end = b;
        }
    }
    Ok(Dest {
        file,
        end,
        soft_end: false,
        regular: false,
        dev_null: false,
    })
}

/// Free bytes on the destination's filesystem plus the destination's own size.
fn room_for(cache: &BlockCache) -> Option<u64> {
    use std::os::unix::io::AsRawFd;
    let f = cache.file();
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: fstatvfs fills `st` for a descriptor we own.
    if unsafe { libc::fstatvfs(f.as_raw_fd(), &mut st) } != 0 {
        return None;
    }
    let free = (st.f_bavail as u64).saturating_mul(st.f_frsize as u64);
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    Some(free.saturating_add(len))
}

fn max_size_bytes(blocks: u64) -> Result<u64> {
    crate::blocks::Blocks::new("--max-size", 0, blocks).map(|b| b.byte_end())
}

pub fn apply(o: &ApplyOptions) -> Result<()> {
    let mut progress = Progress::new(o.progress, o.progress_low, o.progress_high, o.out.clone());
    progress.report(0);
    let d = open_dest(o.dest, o.max_size_blocks, o.enable_trim, &o.out)?;
    let verify_writes = !d.dev_null && o.verify_writes.unwrap_or(!d.regular);
    let minimize_writes = !d.dev_null && o.minimize_writes;
    let (dest, end) = (d.file, d.end);
    let input = open_input(o.input, o.out.framing)?;
    let name = o.input.unwrap_or("stdin");
    let counted = Counted {
        inner: input,
        n: std::sync::Arc::clone(&progress.input_bytes),
    };
    let mut opened = open_archive(counted, name, &o.keys, false)?;
    let cache_mb = opened.cfg.get_int("block-cache-size-mb").max(1) as u64;
    let mut cache = BlockCache::new(dest, cache_mb, end);
    cache.soft_end = d.soft_end;
    cache.verify_writes = verify_writes;
    cache.minimize_writes = minimize_writes;
    cache.init_end();
    let cfg = &opened.cfg;
    let mut ex = Executor {
        cfg,
        cache,
        progress: &mut progress,
        fat: Default::default(),
        task: None,
        host: &o.host,
    };
    let task = cfg
        .secs("task")
        .iter()
        .find(|t| t.title().starts_with(o.task) && requirements_met(&mut ex, t))
        .ok_or_else(|| {
            Error::msg(format!(
                "Couldn't find applicable task '{}'. If task is available, the task's requirements may not be met.",
                o.task
            ))
        })?;
    let plan = Plan::from_task(task).map_err(Error::Msg)?;
    // Every block range of the task, against the destination's end, before the first write.
    plan.check(cfg, ex.cache.hard_end())?;
    if d.regular && ex.cache.hard_end() == 0 {
        if let Some(room) = room_for(&ex.cache) {
            plan.check_room(cfg, room)?;
        }
    }
    ex.task = Some(task.title().to_string());
    ex.progress.total = plan.total_units(cfg);
    run_plan(&mut ex, &plan, &mut opened.zip)?;
    ex.cache.flush()?;
    drop(ex);
    progress.complete();
    Ok(())
}

/// Counts the archive bytes read, for the progress bar.
struct Counted<R> {
    inner: R,
    n: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let k = self.inner.read(buf)?;
        self.n
            .fetch_add(k as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(k)
    }
}

/// `fwup --sparse-check PATH`: can this filesystem hold a hole of `size` bytes?
pub fn sparse_check(path: &str, size: i64) -> Result<()> {
    use std::os::unix::fs::FileExt;
    use std::os::unix::io::AsRawFd;
    let size = size.max(0) as u64;
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(|_| Error::msg(format!("Couldn't create sparse test file: {path}")))?;
    let r = (|| {
        f.write_all_at(&[1, 2, 3, 4], size)
            .map_err(|_| Error::msg(format!("Sparse check write to offset {size} failed.")))?;
        // SAFETY: a valid descriptor owned by `f`.
        let data = unsafe { libc::lseek(f.as_raw_fd(), 0, libc::SEEK_DATA) };
        if data != size as i64 {
            return Err(Error::msg(format!(
                "Hole of {size} bytes not created on filesystem"
            )));
        }
        Ok(())
    })();
    drop(f);
    let _ = std::fs::remove_file(path);
    r
}

// ---- keys and signatures (Ed25519; keys on disk are base64, as fwup -g writes) ----------

pub fn sign(private: &[u8; 64], msg: &[u8]) -> [u8; 64] {
    let seed: [u8; 32] = private[..32].try_into().unwrap();
    let k = ed25519_dalek::SigningKey::from_bytes(&seed);
    use ed25519_dalek::Signer;
    k.sign(msg).to_bytes()
}

pub fn verify(public: &[u8; 32], msg: &[u8], sig: &[u8]) -> bool {
    let Ok(k) = ed25519_dalek::VerifyingKey::from_bytes(public) else {
        return false;
    };
    let Ok(s) = ed25519_dalek::Signature::from_slice(sig) else {
        return false;
    };
    k.verify_strict(msg, &s).is_ok() || {
        use ed25519_dalek::Verifier;
        k.verify(msg, &s).is_ok()
    }
}

/// Decode a key given as base64 text (whitespace tolerated) or raw bytes.
pub fn decode_key<const N: usize>(bytes: &[u8], what: &str) -> Result<[u8; N]> {
    if bytes.len() == N {
        if let Ok(a) = bytes.try_into() {
            let text_ok = std::str::from_utf8(bytes).is_ok();
            if !text_ok {
                return Ok(a);
            }
        }
    }
    let s: String = String::from_utf8_lossy(bytes)
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    let d = B64
        .decode(s.as_bytes())
        .or_else(|_| {
            base64::engine::general_purpose::STANDARD_NO_PAD.decode(s.trim_end_matches('='))
        })
        .map_err(|_| Error::msg(format!("Error decoding {what}")))?;
    d.try_into()
        .map_err(|_| Error::msg(format!("{what} has the wrong length; expecting {N} bytes")))
}

pub fn read_key_file<const N: usize>(path: &str, what: &str) -> Result<[u8; N]> {
    let b = std::fs::read(path)
        .map_err(|e| Error::msg(format!("Error reading {what} '{path}': {e}")))?;
    if b.len() == N {
        return Ok(b.try_into().unwrap());
    }
    decode_key(&b, what)
}

/// `fwup -g`: new key pair as `<base>.pub` / `<base>.priv` (never overwriting either).
pub fn gen_keys(base: &str, out: &crate::out::Out) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut seed = [0u8; 32];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut seed))
        .map_err(|_| Error::msg("Could not get enough random bytes"))?;
    let k = ed25519_dalek::SigningKey::from_bytes(&seed);
    let public = k.verifying_key().to_bytes();
    let mut private = [0u8; 64];
    private[..32].copy_from_slice(&seed);
    private[32..].copy_from_slice(&public);
    let (pub_path, priv_path) = (format!("{base}.pub"), format!("{base}.priv"));
    for (p, data) in [(&pub_path, &public[..]), (&priv_path, &private[..])] {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(p)
            .map_err(|e| Error::msg(format!("Couldn't create '{p}': {}", os_text(&e))))?;
        f.write_all(B64.encode(data).as_bytes())
            .map_err(|e| Error::msg(format!("Couldn't write to '{p}': {}", os_text(&e))))?;
    }
    let name = |p: &str| {
        Path::new(p)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let (pb, pv) = (name(&pub_path), name(&priv_path));
    out.output(
        crate::out::SUCCESS,
        0,
        &format!(
            "Firmware signing keys created and saved to '{pb}' and '{pv}'\n\n\
             Distribute '{pb}' with your system so that firmware updates can be\n\
             authenticated. Keep '{pv}' in a safe location.\n"
        ),
    );
    Ok(())
}

/// An I/O error as strerror(3) words it (without Rust's "(os error N)").
fn os_text(e: &std::io::Error) -> String {
    let s = std::io::Error::from(e.kind()).to_string();
    match e.raw_os_error() {
        Some(17) => "File exists".into(),
        _ => s,
    }
}

/// `fwup -S`: re-sign an archive, copying every entry unchanged.
/// `framing`: an input of "" is read from stdin as `--framing` frames, as fwup does.
pub fn resign(input: &str, output: &str, private: &[u8; 64], framing: bool) -> Result<()> {
    let r = open_input(Some(input), framing)?;
    let mut o = open_archive(r, input, &[], true)?;
    let sig = sign(private, &o.meta_conf);
    let tmp = format!("{output}.tmp");
    let f = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let mut z = ZipWriter::new(std::io::BufWriter::new(f));
    let wr = |e: std::io::Error| Error::io(output, e);
    z.add("meta.conf.ed25519", &pack_stored(&sig), 315_532_800, false)
        .map_err(wr)?;
    z.add("meta.conf", &pack(&o.meta_conf, 9), o.mtime, true)
        .map_err(wr)?;
    while let Some(e) = o.zip.next_entry()? {
        let mut data = Vec::new();
        o.zip
            .read_to_end(&mut data)
            .map_err(|e| Error::msg(e.to_string()))?;
        z.add(&e.name, &pack(&data, 9), e.mtime, false)
            .map_err(wr)?;
    }
    z.finish().map_err(wr)?;
    std::fs::rename(&tmp, output).map_err(|e| Error::io(output, e))?;
    Ok(())
}
