//! The executor: owns the destination and its block cache, runs a [`Plan`].
//!
//! The cache works like fwup's src/block_cache.c: 128 KiB segments, every destination read
//! and write is a whole segment at a segment-aligned offset from a page-aligned buffer, with
//! pread/pwrite on the one descriptor opened by the caller. A trimmed segment reads as zeros.

use crate::config::{parse_c_int, strtoull, Section};
use crate::error::{Error, Result};
use crate::plan::{Action, Plan, BLOCK};
use crate::progress::Progress;
use crate::uuid::{blake2b_256, hex};
use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;

pub const SEGMENT: u64 = 128 * 1024;
const BLOCKS_PER_SEG: usize = (SEGMENT / BLOCK) as usize;

/// A page-aligned 128 KiB buffer.
struct SegBuf(*mut u8);
impl SegBuf {
    fn layout() -> Layout {
        Layout::from_size_align(SEGMENT as usize, 4096).unwrap()
    }
    fn new() -> Self {
        // SAFETY: non-zero size, valid alignment.
        let p = unsafe { alloc_zeroed(Self::layout()) };
        assert!(!p.is_null(), "out of memory");
        SegBuf(p)
    }
    fn bytes(&self) -> &[u8] {
        // SAFETY: allocated with SEGMENT bytes and owned by self.
        unsafe { std::slice::from_raw_parts(self.0, SEGMENT as usize) }
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above, and &mut self guarantees exclusivity.
        unsafe { std::slice::from_raw_parts_mut(self.0, SEGMENT as usize) }
    }
}
impl Drop for SegBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in new() with the same layout.
        unsafe { dealloc(self.0, Self::layout()) }
    }
}

struct Segment {
    buf: SegBuf,
    /// Blocks holding data (written, or read from the destination).
    valid: [bool; BLOCKS_PER_SEG],
    dirty: bool,
}

/// Segment cache over the destination.
pub struct BlockCache {
    file: File,
    segs: BTreeMap<u64, Segment>,
    trimmed: HashSet<u64>,
    max_segs: usize,
    /// Bytes the destination is known to hold (0 = unknown; regular files grow).
    pub end_offset: u64,
}

impl BlockCache {
    pub fn new(file: File, cache_mb: u64, end_offset: u64) -> Self {
        BlockCache {
            file,
            segs: BTreeMap::new(),
            trimmed: HashSet::new(),
            max_segs: ((cache_mb.max(1) * 1024 * 1024) / SEGMENT) as usize,
            end_offset,
        }
    }

    fn load(&mut self, seg: u64) -> Result<&mut Segment> {
        if !self.segs.contains_key(&seg) {
            if self.segs.len() >= self.max_segs {
                self.flush()?;
                self.segs.clear();
            }
            self.segs.insert(
                seg,
                Segment {
                    buf: SegBuf::new(),
                    valid: [false; BLOCKS_PER_SEG],
                    dirty: false,
                },
            );
        }
        Ok(self.segs.get_mut(&seg).unwrap())
    }

    fn fill(&mut self, seg: u64) -> Result<()> {
        let trimmed = self.trimmed.contains(&seg);
        let file = self
            .file
            .try_clone()
            .map_err(|e| Error::io("destination", e))?;
        let s = self.load(seg)?;
        if s.valid.iter().all(|v| *v) {
            return Ok(());
        }
        let mut tmp = SegBuf::new();
        if !trimmed {
            let mut got = 0usize;
            while got < SEGMENT as usize {
                match file.read_at(&mut tmp.bytes_mut()[got..], seg * SEGMENT + got as u64) {
                    Ok(0) => break,
                    Ok(n) => got += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        return Err(Error::msg(format!(
                            "unexpected error reading {SEGMENT} bytes at offset {}: {e}",
                            seg * SEGMENT
                        )))
                    }
                }
            }
        }
        for b in 0..BLOCKS_PER_SEG {
            if !s.valid[b] {
                let r = b * BLOCK as usize..(b + 1) * BLOCK as usize;
                s.buf.bytes_mut()[r.clone()].copy_from_slice(&tmp.bytes()[r]);
                s.valid[b] = true;
            }
        }
        Ok(())
    }

    /// Write whole blocks at a block-aligned offset.
    pub fn pwrite(&mut self, mut data: &[u8], mut offset: u64) -> Result<()> {
        debug_assert!(offset.is_multiple_of(BLOCK) && (data.len() as u64).is_multiple_of(BLOCK));
        while !data.is_empty() {
            let seg = offset / SEGMENT;
            let within = (offset % SEGMENT) as usize;
            let n = data.len().min(SEGMENT as usize - within);
            let s = self.load(seg)?;
            s.buf.bytes_mut()[within..within + n].copy_from_slice(&data[..n]);
            for b in within / BLOCK as usize..(within + n) / BLOCK as usize {
                s.valid[b] = true;
            }
            s.dirty = true;
            data = &data[n..];
            offset += n as u64;
        }
        Ok(())
    }

    pub fn pread(&mut self, out: &mut [u8], mut offset: u64) -> Result<()> {
        let mut done = 0;
        while done < out.len() {
            let seg = offset / SEGMENT;
            let within = (offset % SEGMENT) as usize;
            let n = (out.len() - done).min(SEGMENT as usize - within);
            self.fill(seg)?;
            let s = self.segs.get(&seg).unwrap();
            out[done..done + n].copy_from_slice(&s.buf.bytes()[within..within + n]);
            done += n;
            offset += n as u64;
        }
        Ok(())
    }

    /// Mark whole segments inside the range as trimmed (they read back as zeros) and drop
    /// them from the cache; partial segments at the edges are left alone, as fwup does.
    pub fn trim(&mut self, offset: u64, count: u64) {
        let first = offset.div_ceil(SEGMENT);
        let end = (offset + count) / SEGMENT;
        for seg in first..end {
            self.trimmed.insert(seg);
            self.segs.remove(&seg);
        }
    }

    pub fn flush(&mut self) -> Result<()> {
        let dirty: Vec<u64> = self
            .segs
            .iter()
            .filter(|(_, s)| s.dirty)
            .map(|(k, _)| *k)
            .collect();
        for seg in dirty {
            self.fill(seg)?;
            let s = self.segs.get_mut(&seg).unwrap();
            let mut off = 0usize;
            while off < SEGMENT as usize {
                let n = self
                    .file
                    .write_at(&s.buf.bytes()[off..], seg * SEGMENT + off as u64)
                    .map_err(|e| {
                        Error::msg(format!("write failed at offset {}: {e}", seg * SEGMENT))
                    })?;
                off += n;
            }
            s.dirty = false;
            self.trimmed.remove(&seg);
        }
        Ok(())
    }

    /// Throw away unwritten changes (before on-error runs).
    pub fn reset(&mut self) {
        self.segs.clear();
    }
}

/// Runs actions against the cache.
pub struct Executor<'a> {
    pub cfg: &'a Section,
    pub cache: BlockCache,
    pub progress: &'a mut Progress,
}

impl Executor<'_> {
    fn env_geometry(&self, name: &str, fun: &str) -> Result<(u64, usize, Option<u64>)> {
        let s = self.cfg.sec("uboot-environment", name).ok_or_else(|| {
            Error::msg(format!(
                "{fun} can't find uboot-environment reference {name}"
            ))
        })?;
        let off = strtoull(s.get_str("block-offset").unwrap_or("0")) * BLOCK;
        let size = s.get_int("block-count") as usize * BLOCK as usize;
        let red = s
            .get_str("block-offset-redund")
            .map(|r| strtoull(r) * BLOCK);
        Ok((off, size, red))
    }

    /// Read an env the way fwup's uboot_env_read does. Returns (env, flag, write primary,
    /// write secondary).
    fn env_read(&mut self, name: &str, fun: &str) -> Result<(uboot_env::Env, u8, bool, bool)> {
        let (off, size, red) = self.env_geometry(name, fun)?;
        let mut a = vec![0u8; size];
        self.cache.pread(&mut a, off)?;
        let bad = || Error::msg("Invalid CRC on U-Boot environment".to_string());
        let Some(red) = red else {
            let env = uboot_env::Env::parse(&a, uboot_env::Layout::Single).map_err(|_| bad())?;
            return Ok((env, 0, true, false));
        };
        let mut b = vec![0u8; size];
        self.cache.pread(&mut b, red)?;
        let (f1, f2) = (a[4], b[4]);
        let delta = f2.wrapping_sub(f1);
        let parse = |x: &[u8]| uboot_env::Env::parse(x, uboot_env::Layout::Redundant);
        if delta == 0 || delta >= 128 {
            match parse(&a) {
                Ok(e) => Ok((e, f1, false, true)),
                Err(_) => parse(&b).map(|e| (e, f2, true, false)).map_err(|_| bad()),
            }
        } else {
            match parse(&b) {
                Ok(e) => Ok((e, f2, true, false)),
                Err(_) => parse(&a).map(|e| (e, f1, false, true)).map_err(|_| bad()),
            }
        }
    }

    fn env_write(
        &mut self,
        name: &str,
        env: &uboot_env::Env,
        flag: u8,
        primary: bool,
        secondary: bool,
    ) -> Result<()> {
        let (off, size, red) = self.env_geometry(name, "uboot")?;
        let mut block = vec![0u8; size];
        let f = red.map(|_| flag.wrapping_add(1));
        env.write_block(&mut block, f, uboot_env::WriteOptions::FWUP)
            .map_err(|e| {
                Error::msg(format!(
                    "Not enough space to store the uboot variables: {e}"
                ))
            })?;
        if primary {
            self.cache.pwrite(&block, off)?;
        }
        if let (true, Some(r)) = (secondary, red) {
            self.cache.pwrite(&block, r)?;
        }
        Ok(())
    }

    /// Run one non-resource action.
    pub fn run(&mut self, a: &Action) -> Result<()> {
        let units = a.progress_units(self.cfg, None);
        match a {
            Action::RawMemset {
                block,
                count,
                value,
            } => {
                let buf = vec![*value; BLOCK as usize];
                for i in 0..*count {
                    self.cache.pwrite(&buf, (block + i) * BLOCK)?;
                    self.progress.report(BLOCK);
                }
                return Ok(());
            }
            Action::Trim { block, count } => self.cache.trim(block * BLOCK, count * BLOCK),
            Action::MbrWrite { mbr } => {
                let bytes = self.mbr_bytes(mbr)?;
                self.cache.pwrite(&bytes, 0)?;
            }
            Action::GptWrite { gpt } => self.gpt_write(gpt)?,
            Action::UbootClearenv { env } => {
                let e = uboot_env::Env::new();
                self.env_write(env, &e, 0, true, true)?;
            }
            Action::UbootSetenv { env, name, value } => {
                let (mut e, f, p, s) = self.env_read(env, "uboot_setenv")?;
                e.set(name, value)
                    .map_err(|x| Error::msg(format!("uboot_setenv: {x}")))?;
                self.env_write(env, &e, f, p, s)?;
            }
            Action::UbootUnsetenv { env, name } => {
                let (mut e, f, p, s) = self.env_read(env, "uboot_unsetenv")?;
                e.unset(name);
                self.env_write(env, &e, f, p, s)?;
            }
            Action::UbootRecover { env } => {
                if self.env_read(env, "uboot_recover").is_err() {
                    self.env_write(env, &uboot_env::Env::new(), 0, true, true)?;
                }
            }
            Action::Info(m) => self.progress.info(m),
            Action::Error(m) => return Err(Error::msg(m.clone())),
            Action::RawWrite { .. } => {
                return Err(Error::msg("raw_write only usable in on-resource"))
            }
            Action::Unsupported { name } => {
                return Err(Error::msg(format!(
                    "{name} is not supported by this fwup yet"
                )))
            }
        }
        self.progress.report(units);
        Ok(())
    }

    fn mbr_bytes(&self, name: &str) -> Result<[u8; 512]> {
        use partition_table::{MbrPartition, MbrSpec};
        let s = self
            .cfg
            .sec("mbr", name)
            .ok_or_else(|| Error::msg("mbr_write can't find mbr reference"))?;
        let mut spec = MbrSpec {
            disk_signature: s
                .get_str("signature")
                .map(|v| strtoull(v) as u32)
                .unwrap_or(0),
            ..Default::default()
        };
        let num_blocks = (self.cache.end_offset / BLOCK) as u32;
        let mut end = num_blocks;
        let parts = s.secs("partition");
        for p in parts {
            let off = strtoull(p.get_str("block-offset").unwrap_or("0")) as u32;
            end = end.max(off.saturating_add(p.get_int("block-count") as u32));
        }
        for p in parts {
            let i = strtoull(p.title()) as usize;
            if i > 3 {
                return Err(Error::msg(
                    "mbr_write: logical partitions are not supported yet",
                ));
            }
            let off = strtoull(p.get_str("block-offset").unwrap_or("0")) as u32;
            let mut count = p.get_int("block-count") as u32;
            if p.get_bool("expand") && end > off + count {
                count = end - off;
            }
            spec.partitions[i] = Some(MbrPartition {
                start_lba: off,
                sectors: count,
                kind: p.get_int("type") as u8,
                bootable: p.get_bool("boot"),
            });
        }
        let mut out = spec
            .to_bytes()
            .map_err(|e| Error::msg(format!("mbr_write: {e}")))?;
        if let Some(code) = s.get_str("bootstrap-code") {
            let b: Vec<u8> = (0..code.len() / 2)
                .filter_map(|i| u8::from_str_radix(&code[2 * i..2 * i + 2], 16).ok())
                .collect();
            let n = b.len().min(440);
            out[..n].copy_from_slice(&b[..n]);
        }
        Ok(out)
    }

    fn gpt_write(&mut self, name: &str) -> Result<()> {
        use partition_table::{GptPartition, GptSpec, Guid};
        let s = self
            .cfg
            .sec("gpt", name)
            .ok_or_else(|| Error::msg("gpt_write can't find gpt reference"))?;
        let guid = |v: Option<&str>, what: &str| -> Result<Guid> {
            v.and_then(|g| g.parse::<Guid>().ok())
                .ok_or_else(|| Error::msg(format!("gpt_write: invalid {what} GUID")))
        };
        let mut num_blocks = self.cache.end_offset / BLOCK;
        let parts = s.secs("partition");
        if num_blocks == 0 {
            for p in parts {
                let off = strtoull(p.get_str("block-offset").unwrap_or("0"));
                num_blocks = num_blocks.max(off + p.get_int("block-count") as u64);
            }
            num_blocks += 33 + 1;
        }
        let mut spec = GptSpec {
            disk_guid: guid(s.get_str("guid"), "disk")?,
            partitions: vec![None; 128],
        };
        for p in parts {
            let i = strtoull(p.title()) as usize;
            let off = strtoull(p.get_str("block-offset").unwrap_or("0"));
            let mut count = p.get_int("block-count") as u64;
            if p.get_bool("expand") && num_blocks > off + count + 33 {
                count = num_blocks - 33 - 1 - off;
            }
            let flags = strtoull(p.get_str("flags").unwrap_or("0"));
            spec.partitions[i.min(127)] = Some(GptPartition {
                start_lba: off,
                sectors: count,
                type_guid: guid(p.get_str("type"), "partition type")?,
                guid: guid(p.get_str("guid"), "partition")?,
                name: p.get_str("name").unwrap_or("").to_string(),
                attributes: flags,
                bootable: p.get_bool("boot"),
            });
        }
        let b = spec
            .to_bytes(num_blocks * BLOCK)
            .map_err(|e| Error::msg(format!("gpt_write: {e}")))?;
        self.cache.pwrite(&b.protective_mbr, 0)?;
        self.cache.pwrite(&b.primary, BLOCK)?;
        self.cache.pwrite(&b.backup, b.backup_lba * BLOCK)?;
        Ok(())
    }

    /// Run an on-resource action list, streaming `data` (the decompressed entry).
    pub fn run_resource(
        &mut self,
        resource: &str,
        actions: &[Action],
        data: &mut dyn Read,
    ) -> Result<()> {
        let res = self.cfg.sec("file-resource", resource).ok_or_else(|| {
            Error::msg(format!(
                "Resource '{resource}' used, but metadata is missing. Archive is corrupt."
            ))
        })?;
        let expected_hash = res.get_str("blake2b-256").unwrap_or("").to_string();
        let lengths: Vec<u64> = res
            .list("length")
            .iter()
            .map(|v| parse_c_int(v).unwrap_or(0) as u64)
            .collect();
        let mut consumed = false;
        for a in actions {
            match a {
                Action::RawWrite { block, options } => {
                    if !options.is_empty() {
                        return Err(Error::msg(
                            "raw_write: disk encryption is not supported yet",
                        ));
                    }
                    if expected_hash.len() != 64 {
                        return Err(Error::msg(format!("invalid blake2b hash for '{resource}'")));
                    }
                    let src: &mut dyn Read = if consumed {
                        &mut std::io::empty()
                    } else {
                        &mut *data
                    };
                    consumed = true;
                    self.raw_write(resource, *block * BLOCK, &lengths, &expected_hash, src)?;
                }
                other => self.run(other)?,
            }
        }
        Ok(())
    }

    fn raw_write(
        &mut self,
        resource: &str,
        dest: u64,
        lengths: &[u64],
        expected: &str,
        src: &mut dyn Read,
    ) -> Result<()> {
        let mut h = blake2::Blake2bVar::new(32).unwrap();
        use blake2::digest::{Update, VariableOutput};
        // Sparse map: data, hole, data, ...
        let map: Vec<u64> = if lengths.is_empty() {
            vec![0]
        } else {
            lengths.to_vec()
        };
        let total_len: u64 = map.iter().sum();
        let data_len: u64 = map.iter().step_by(2).sum();
        let mut buf = vec![0u8; SEGMENT as usize];
        let mut pending: Vec<u8> = Vec::with_capacity(SEGMENT as usize + BLOCK as usize);
        let mut pend_off = dest;
        let mut read_total = 0u64;
        let mut pos = 0u64; // offset within the resource
        for (i, len) in map.iter().enumerate() {
            if i % 2 == 1 {
                // Hole: flush what is pending and skip.
                self.flush_pending(&mut pending, &mut pend_off, true)?;
                pos += len;
                pend_off = dest + pos;
                continue;
            }
            let mut left = *len;
            while left > 0 {
                let want = (left as usize).min(buf.len());
                let n = read_fully(src, &mut buf[..want]).map_err(|e| Error::msg(e.to_string()))?;
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
                pending.extend_from_slice(&buf[..n]);
                left -= n as u64;
                read_total += n as u64;
                pos += n as u64;
                self.flush_pending(&mut pending, &mut pend_off, false)?;
                // Report in 4 KiB steps so percentages advance like fwup's small reads.
                let mut r = n as u64;
                while r > 0 {
                    let k = r.min(4096);
                    self.progress.report(k);
                    r -= k;
                }
            }
            if left > 0 {
                break;
            }
        }
        self.flush_pending(&mut pending, &mut pend_off, true)?;
        if map.len() > 1 && map.len().is_multiple_of(2) {
            // Ending hole: write the last block of zeros so a file gets its full length.
            let last = dest + total_len - BLOCK.min(*map.last().unwrap());
            let aligned = last - last % BLOCK;
            let mut blk = vec![0u8; BLOCK as usize];
            self.cache.pread(&mut blk, aligned)?;
            let from = (last - aligned) as usize;
            blk[from..].fill(0);
            self.cache.pwrite(&blk, aligned)?;
        }
        if read_total != data_len {
            return Err(Error::msg(if read_total == 0 {
                format!("raw_write didn't write anything and was likely called twice in an on-resource for '{resource}'. Try a \"cp\" function.")
            } else {
                format!("raw_write wrote {read_total} bytes for '{resource}', but should have written {data_len}")
            }));
        }
        let mut out = [0u8; 32];
        h.finalize_variable(&mut out).unwrap();
        if hex(&out) != expected {
            return Err(Error::msg(format!(
                "raw_write detected blake2b mismatch on '{resource}'"
            )));
        }
        let _ = blake2b_256;
        Ok(())
    }

    /// Write whole blocks of `pending`; with `all`, pad the tail block by merging with what
    /// the destination holds.
    fn flush_pending(&mut self, pending: &mut Vec<u8>, off: &mut u64, all: bool) -> Result<()> {
        if pending.is_empty() {
            return Ok(());
        }
        // Align the start: merge a leading partial block with the destination.
        if !(*off).is_multiple_of(BLOCK) {
            let aligned = *off - *off % BLOCK;
            let mut blk = vec![0u8; BLOCK as usize];
            self.cache.pread(&mut blk, aligned)?;
            let from = (*off - aligned) as usize;
            let n = (BLOCK as usize - from).min(pending.len());
            if n < BLOCK as usize - from && !all {
                return Ok(());
            }
            blk[from..from + n].copy_from_slice(&pending[..n]);
            self.cache.pwrite(&blk, aligned)?;
            pending.drain(..n);
            *off += n as u64;
        }
        let whole = pending.len() - pending.len() % BLOCK as usize;
        if whole > 0 {
            self.cache.pwrite(&pending[..whole], *off)?;
            *off += whole as u64;
            pending.drain(..whole);
        }
        if all && !pending.is_empty() {
            let mut blk = vec![0u8; BLOCK as usize];
            self.cache.pread(&mut blk, *off)?;
            blk[..pending.len()].copy_from_slice(pending);
            self.cache.pwrite(&blk, *off)?;
            *off += pending.len() as u64;
            pending.clear();
        }
        Ok(())
    }
}

fn read_fully(src: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match src.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Does a task's requirement list hold on this destination?
pub fn requirements_met(cfg: &Section, task: &Section, cache: &mut BlockCache) -> bool {
    let Ok(reqs) = crate::plan::split_funlist(task.list("reqlist")) else {
        return false;
    };
    let p1 = task.get_int("require-partition1-offset");
    if p1 >= 0 && mbr_partition_offset(cache, 1) != Some(p1 as u64) {
        return false;
    }
    for r in reqs {
        let ok = match r[0].as_str() {
            "require-partition-offset" if r.len() == 3 => {
                mbr_partition_offset(cache, strtoull(&r[1]) as usize) == Some(strtoull(&r[2]))
            }
            "require-uboot-variable" if r.len() == 4 => {
                let mut e = Executor {
                    cfg,
                    cache: BlockCache::new(cache.file.try_clone().unwrap(), 8, cache.end_offset),
                    progress: &mut Progress::off(),
                };
                match e.env_read(&r[1], "require-uboot-variable") {
                    Ok((env, ..)) => env.get(&r[2]) == Some(r[3].as_str()),
                    Err(_) => false,
                }
            }
            _ => false,
        };
        if !ok {
            return false;
        }
    }
    true
}

fn mbr_partition_offset(cache: &mut BlockCache, i: usize) -> Option<u64> {
    if i > 3 {
        return None;
    }
    let mut b = [0u8; 512];
    cache.pread(&mut b, 0).ok()?;
    if b[510] != 0x55 || b[511] != 0xaa {
        return None;
    }
    let e = &b[446 + 16 * i..446 + 16 * (i + 1)];
    Some(u32::from_le_bytes(e[8..12].try_into().unwrap()) as u64)
}

/// Resource name of a ZIP path: `data/NAME` → `NAME`, anything else → `/PATH`.
pub fn resource_name(path: &str) -> String {
    match path.strip_prefix("data/") {
        Some(n) => n.to_string(),
        None => format!("/{path}"),
    }
}

/// Run the whole plan; resources come from the archive in archive order.
pub fn run_plan<R: Read>(
    ex: &mut Executor,
    plan: &Plan,
    zip: &mut crate::zip::ZipStream<R>,
) -> Result<()> {
    let r = (|| {
        for a in &plan.on_init {
            ex.run(a)?;
        }
        let mut done = HashSet::new();
        while let Some(entry) = zip.next_entry()? {
            let name = resource_name(&entry.name);
            if let Some((_, acts)) = plan.on_resource.iter().find(|(n, _)| *n == name) {
                ex.run_resource(&name, acts, zip)?;
                done.insert(name);
            }
        }
        for (n, _) in &plan.on_resource {
            if !done.contains(n) {
                return Err(Error::msg(format!("Resource {n} not found in archive")));
            }
        }
        for a in &plan.on_finish {
            ex.run(a)?;
        }
        Ok(())
    })();
    if r.is_err() {
        ex.cache.reset();
        for a in &plan.on_error {
            if ex.run(a).is_err() {
                ex.cache.reset();
                break;
            }
        }
        let _ = ex.cache.flush();
    }
    r
}
