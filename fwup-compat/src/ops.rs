//! The operations behind fwup's modes: create, apply, metadata, list, verify, sign, gen-keys.

use crate::config::{self, Mode as CfgMode, Section, Vars};
use crate::error::{Error, Result};
use crate::exec::{requirements_met, run_plan, BlockCache, Executor};
use crate::plan::Plan;
use crate::progress::Progress;
use crate::uuid::{blake2b_256, hex, meta_uuid};
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

fn resource_bytes(cfg_file: &str, r: &Section) -> Result<Vec<u8>> {
    if let Some(c) = r.get_str("contents") {
        return Ok(c.as_bytes().to_vec());
    }
    let host = r.get_str("host-path").unwrap_or("");
    let mut out = Vec::new();
    for part in host.split(';') {
        let p = config::relative_to(cfg_file, part);
        let p = if Path::new(part).exists() {
            Path::new(part).to_path_buf()
        } else {
            p
        };
        let mut f = File::open(&p).map_err(|e| {
            Error::msg(format!(
                "can't open path '{}' in file-resource '{}': {e}",
                part,
                r.title()
            ))
        })?;
        f.read_to_end(&mut out).map_err(|e| Error::io(&p, e))?;
    }
    Ok(out)
}

/// `fwup -c`: parse, hash resources, write meta.conf and the archive.
pub fn create(o: &CreateOptions) -> Result<()> {
    let text = read_path(o.config)?;
    let mut vars = Vars::from_env();
    vars.set("FWUP_META_UUID", "${FWUP_META_UUID}");
    vars.set("FWUP_META_NICKNAME", "${FWUP_META_NICKNAME}");
    let mut parser = config::Parser::new(&text, o.config, &mut vars, CfgMode::Create);
    let cfg_file = o.config.to_string();
    parser.on_section = Some(Box::new(move |kind, sec, vars| {
        validate_section(&cfg_file, kind, sec, vars)
    }));
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
    // Resources: read, check asserts, hash.
    let mut blobs = Vec::new();
    let names: Vec<String> = top
        .secs("file-resource")
        .iter()
        .map(|r| r.title().to_string())
        .collect();
    for name in &names {
        let r = top.sec("file-resource", name).unwrap();
        let data = resource_bytes(o.config, r)?;
        let len = data.len() as i64;
        let lte = r.get_int("assert-size-lte");
        if lte >= 0 && len > lte * 512 {
            return Err(Error::msg(format!(
                "file size assertion failed on '{name}'. Size is {len} bytes. It must be <= {lte} blocks ({} bytes).",
                lte * 512
            )));
        }
        let gte = r.get_int("assert-size-gte");
        if gte >= 0 && len < gte * 512 {
            return Err(Error::msg(format!(
                "file size assertion failed on '{name}'. Size is {len} bytes. It must be >= {gte} blocks ({} bytes).",
                gte * 512
            )));
        }
        let h = blake2b_256(&[&data]);
        let r = top
            .secs_mut("file-resource")
            .iter_mut()
            .find(|r| r.title() == name)
            .unwrap();
        r.set_list("length", vec![len.to_string()]);
        r.set("blake2b-256", hex(&h));
        blobs.push((name.clone(), data));
    }
    let meta = config::to_meta_conf(&top);
    let mtime = creation_time();
    let out: Box<dyn Write> = if o.output == "-" {
        Box::new(std::io::stdout().lock())
    } else {
        Box::new(File::create(o.output).map_err(|e| Error::io(o.output, e))?)
    };
    let mut z = ZipWriter::new(std::io::BufWriter::with_capacity(1 << 20, out));
    let wr = |e: std::io::Error| Error::io(o.output, e);
    if let Some(k) = &o.private_key {
        let sig = sign(k, meta.as_bytes());
        z.add("meta.conf.ed25519", &pack_stored(&sig), 315_532_800, false)
            .map_err(wr)?;
    }
    z.add("meta.conf", &pack(meta.as_bytes(), o.level), mtime, true)
        .map_err(wr)?;
    for (name, data) in &blobs {
        let path = match name.strip_prefix('/') {
            Some(p) => p.to_string(),
            None => format!("data/{name}"),
        };
        z.add(&path, &pack(data, o.level), 315_532_800, false)
            .map_err(wr)?;
    }
    z.finish().map_err(wr)?;
    Ok(())
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

fn creation_time() -> i64 {
    if let Ok(s) = std::env::var("SOURCE_DATE_EPOCH") {
        return crate::config::strtoull(&s) as i64;
    }
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn version_ok(req: &str) -> bool {
    let p = |s: &str| -> Vec<u64> { s.split('.').map(|x| x.parse().unwrap_or(0)).collect() };
    p(req) <= p(crate::VERSION)
}

/// Create-time checks that fwup runs as each top-level section closes.
fn validate_section(
    cfg_file: &str,
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
                let path = if Path::new(p).exists() {
                    Path::new(p).to_path_buf()
                } else {
                    config::relative_to(cfg_file, p)
                };
                if let Ok(m) = std::fs::metadata(path) {
                    vars.set(&key, &m.len().to_string());
                }
            }
        }
        "gpt" => {
            for p in sec.secs_mut("partition") {
                if p.get_bool("boot") {
                    let f = crate::config::strtoull(p.get_str("flags").unwrap_or("0")) | 4;
                    p.set("flags", format!("0x{f:x}"));
                    p.unset("boot");
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
            for p in sec.secs("partition") {
                if crate::config::strtoull(p.title()) > 3 && p.title().parse::<u32>().is_err() {
                    return Err(format!("invalid partition number '{}'", p.title()));
                }
            }
        }
        _ => {}
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

pub fn open_input(path: Option<&str>) -> Result<Box<dyn Read>> {
    match path {
        None | Some("-") => Ok(Box::new(std::io::stdin())),
        Some(p) => Ok(Box::new(
            File::open(p).map_err(|e| Error::msg(format!("{p}: {e}")))?,
        )),
    }
}

pub fn open_archive<R: Read>(r: R, name: &str, keys: &[[u8; 32]]) -> Result<Opened<R>> {
    let mut zip = ZipStream::new(r);
    let mut e = zip
        .next_entry()
        .map_err(|_| Error::msg(format!("Corrupt archive '{name}'")))?
        .ok_or_else(|| Error::msg(format!("Corrupt archive '{name}'")))?;
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
            .next_entry()?
            .ok_or_else(|| Error::msg("Expecting more than meta.conf.ed25519 in archive"))?;
    }
    if e.name != "meta.conf" {
        return Err(Error::msg(format!(
            "Expecting meta.conf to be at the beginning of {name}"
        )));
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
    cfg.set("meta-creation-date", crate::zip::iso8601(e.mtime));
    cfg.set("meta-uuid", uuid);
    cfg.set("meta-nickname", nick);
    Ok(Opened {
        zip,
        cfg,
        meta_conf: meta,
        signed: sig.is_some(),
        mtime: e.mtime,
    })
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
        let Some(r) = o.cfg.sec("file-resource", &name) else {
            return Err(Error::msg(format!(
                "Unexpected file in archive: {}",
                e.name
            )));
        };
        let mut h = blake2::Blake2bVar::new(32).unwrap();
        use blake2::digest::{Update, VariableOutput};
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
        let mut out = [0u8; 32];
        h.finalize_variable(&mut out).unwrap();
        if n_total != crate::plan::resource_data_len(r)
            || r.get_str("blake2b-256") != Some(hex(&out).as_str())
        {
            return Err(Error::msg(format!(
                "Detected blake2b digest mismatch on '{name}'"
            )));
        }
        seen.insert(name);
    }
    for r in o.cfg.secs("file-resource") {
        if !seen.contains(r.title()) {
            return Err(Error::msg(format!(
                "Resource '{}' not found in archive",
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
}

pub fn apply(o: &ApplyOptions) -> Result<()> {
    let mut progress = Progress::new(o.progress, o.progress_low, o.progress_high);
    progress.report(0);
    let dest = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(o.dest)
        .map_err(|e| Error::msg(format!("{}: {e}", o.dest)))?;
    let meta = dest.metadata().map_err(|e| Error::io(o.dest, e))?;
    let mut end = if meta.file_type().is_file() {
        meta.len()
    } else {
        0
    };
    if let Some(m) = o.max_size_blocks {
        end = m * 512;
    }
    let input = open_input(o.input)?;
    let name = o.input.unwrap_or("stdin");
    let mut opened = open_archive(input, name, &o.keys)?;
    let cache_mb = opened.cfg.get_int("block-cache-size-mb").max(1) as u64;
    let cache = BlockCache::new(dest, cache_mb, end);
    let cfg = &opened.cfg;
    let mut ex = Executor {
        cfg,
        cache,
        progress: &mut progress,
        fat: Default::default(),
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
    ex.progress.total = plan.total_units(cfg);
    run_plan(&mut ex, &plan, &mut opened.zip)?;
    ex.cache.flush()?;
    drop(ex);
    progress.complete();
    Ok(())
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

/// `fwup -g`: new key pair as `<base>.pub` / `<base>.priv`.
pub fn gen_keys(base: &str) -> Result<()> {
    let mut seed = [0u8; 32];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut seed))
        .map_err(|e| Error::io("/dev/urandom", e))?;
    let k = ed25519_dalek::SigningKey::from_bytes(&seed);
    let public = k.verifying_key().to_bytes();
    let mut private = [0u8; 64];
    private[..32].copy_from_slice(&seed);
    private[32..].copy_from_slice(&public);
    for (ext, data) in [("pub", &public[..]), ("priv", &private[..])] {
        let p = format!("{base}.{ext}");
        std::fs::write(&p, B64.encode(data)).map_err(|e| Error::io(&p, e))?;
    }
    Ok(())
}

/// `fwup -S`: re-sign an archive, copying every entry unchanged.
pub fn resign(input: &str, output: &str, private: &[u8; 64]) -> Result<()> {
    let r = open_input(Some(input))?;
    let mut o = open_archive(r, input, &[])?;
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
