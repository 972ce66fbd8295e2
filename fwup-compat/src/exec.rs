//! The executor: owns the destination and its block cache ([`crate::cache`]), runs a [`Plan`].

use crate::blocks::Blocks;
use crate::cache::SegBuf;
pub use crate::cache::{BlockCache, SEGMENT};
use crate::config::{parse_c_int, strtoull, Section};
use crate::error::{Error, Result};
use crate::plan::{Action, Plan, BLOCK};
use crate::progress::Progress;
use common::hex::encode as hex;
use std::cell::RefCell;
use std::collections::HashSet;
use std::io::Read;

/// Where an env write goes.
#[derive(Clone, Copy)]
enum EnvTarget {
    /// A single (non-redundant) env.
    Single,
    /// A new env: both copies of a redundant one, flag 1 (fwup's uboot_clearenv).
    Fresh,
    /// The inactive redundant copy, with the next flag.
    Next(uboot_env::NextWrite),
}

/// Runs actions against the cache.
pub struct Executor<'a> {
    pub cfg: &'a Section,
    pub cache: BlockCache,
    pub progress: &'a mut Progress,
    /// FAT volumes fwup would have mounted, and the file fat_write keeps open.
    pub fat: crate::fat::Mounts,
    /// The task being run (its on-resource sections name delta sources).
    pub task: Option<String>,
    /// What host-side actions may do (`--unsafe`, `--reboot-param-path`).
    pub host: &'a crate::host::HostOptions,
}

impl Executor<'_> {
    fn env_geometry(&self, name: &str, fun: &str) -> Result<(u64, usize, Option<u64>)> {
        let s = self.cfg.sec("uboot-environment", name).ok_or_else(|| {
            Error::msg(format!(
                "{fun} can't find uboot-environment reference {name}"
            ))
        })?;
        let (a, b) = crate::plan::env_blocks(s, &format!("{fun}({name})"))?;
        let end = self.cache.hard_end();
        a.within(&format!("{fun}({name})"), end)?;
        if let Some(b) = b {
            b.within(&format!("{fun}({name})"), end)?;
        }
        // block-count < 2^16: the size fits any usize.
        Ok((
            a.byte_offset(),
            a.byte_len() as usize,
            b.map(|b| b.byte_offset()),
        ))
    }

    /// Read an env the way fwup's uboot_env_read does: of two redundant copies, the one
    /// [`uboot_env::FlagRule::Fwup`] picks (a copy with a bad CRC is skipped). Returns the env
    /// and where the next write goes.
    fn env_read(&mut self, name: &str, fun: &str) -> Result<(uboot_env::Env, EnvTarget)> {
        let (off, size, red) = self.env_geometry(name, fun)?;
        let mut a = vec![0u8; size];
        self.cache.pread(&mut a, off)?;
        let bad = || Error::msg("Invalid CRC on U-Boot environment".to_string());
        let Some(red) = red else {
            let env = uboot_env::Env::parse(&a, uboot_env::Layout::Single).map_err(|_| bad())?;
            return Ok((env, EnvTarget::Single));
        };
        let mut b = vec![0u8; size];
        self.cache.pread(&mut b, red)?;
        let r =
            uboot_env::Redundant::parse(&a, &b, uboot_env::FlagRule::Fwup).map_err(|_| bad())?;
        let next = r.next_write();
        Ok((r.env, EnvTarget::Next(next)))
    }

    fn env_write(&mut self, name: &str, env: &uboot_env::Env, to: EnvTarget) -> Result<()> {
        let (off, size, red) = self.env_geometry(name, "uboot")?;
        let mut block = vec![0u8; size];
        let flag = match (to, red) {
            (_, None) => None,
            (EnvTarget::Next(n), Some(_)) => Some(n.flag),
            (EnvTarget::Single | EnvTarget::Fresh, Some(_)) => Some(1),
        };
        env.write_block(&mut block, flag, uboot_env::WriteOptions::FWUP)
            .map_err(|e| {
                Error::msg(format!(
                    "Not enough space to store the uboot variables: {e}"
                ))
            })?;
        let (first, second) = match to {
            EnvTarget::Next(n) => (
                n.copy == uboot_env::Copy::First,
                n.copy == uboot_env::Copy::Second,
            ),
            EnvTarget::Single | EnvTarget::Fresh => (true, true),
        };
        if first {
            self.cache.pwrite(&block, off)?;
        }
        if let (true, Some(r)) = (second, red) {
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
                let what = format!("raw_memset({block}, {count}, {value})");
                let r = Blocks::new(&what, *block, *count)?;
                r.within(&what, self.cache.hard_end())?;
                let buf = vec![*value; BLOCK as usize];
                for i in 0..r.count() {
                    self.cache.pwrite(&buf, r.byte_offset() + i * BLOCK)?;
                    self.progress.report(BLOCK);
                }
                return Ok(());
            }
            Action::Trim { block, count } => {
                let r = Blocks::new(&format!("trim({block}, {count})"), *block, *count)?;
                self.cache.trim(r.byte_offset(), r.byte_len())
            }
            Action::MbrWrite { mbr } => self.mbr_write(mbr)?,
            Action::GptWrite { gpt } => self.gpt_write(gpt)?,
            Action::UbootClearenv { env } => {
                let e = uboot_env::Env::new();
                self.env_write(env, &e, EnvTarget::Fresh)?;
            }
            Action::UbootSetenv { env, name, value } => {
                let (mut e, to) = self.env_read(env, "uboot_setenv")?;
                e.set(name, value)
                    .map_err(|x| Error::msg(format!("uboot_setenv: {x}")))?;
                self.env_write(env, &e, to)?;
            }
            Action::UbootUnsetenv { env, name } => {
                let (mut e, to) = self.env_read(env, "uboot_unsetenv")?;
                e.unset(name);
                self.env_write(env, &e, to)?;
            }
            Action::UbootRecover { env } => {
                if self.env_read(env, "uboot_recover").is_err() {
                    self.env_write(env, &uboot_env::Env::new(), EnvTarget::Fresh)?;
                }
            }
            Action::FatMkfs { block, count } => self.fat.mkfs(&mut self.cache, *block, *count)?,
            Action::FatAttrib {
                block,
                path,
                attrib,
            } => {
                // fwup's fat_attrib_run returns 1, not -1, on failure, and the funlist
                // runner only stops on negative results: failures pass silently.
                if self
                    .fat
                    .attrib(&mut self.cache, *block, path, attrib)
                    .is_err()
                {
                    return Ok(());
                }
            }
            Action::FatMv {
                cmd,
                block,
                from,
                to,
                force,
            } => self
                .fat
                .mv(&mut self.cache, *block, cmd, from, to, *force)?,
            Action::FatRm {
                cmd,
                block,
                path,
                must_exist,
            } => self
                .fat
                .rm(&mut self.cache, *block, cmd, path, *must_exist)?,
            Action::FatCp {
                from_block,
                from,
                to_block,
                to,
            } => self
                .fat
                .cp(&mut self.cache, *from_block, from, *to_block, to)?,
            Action::FatMkdir { block, path } => self.fat.mkdir(&mut self.cache, *block, path)?,
            Action::FatSetlabel { block, label } => {
                self.fat.setlabel(&mut self.cache, *block, label)?
            }
            Action::FatTouch { block, path } => self.fat.touch(&mut self.cache, *block, path)?,
            Action::Execute { cmd } => crate::host::execute(cmd, self.host)?,
            Action::RebootParam { param } => crate::host::reboot_param(param, self.host)?,
            Action::Info(m) => self.progress.info(m),
            Action::Error(m) => return Err(Error::msg(m.clone())),
            Action::RawWrite { .. } => {
                return Err(Error::msg("raw_write only usable in on-resource"))
            }
            Action::FatWrite { .. } => {
                return Err(Error::msg("fat_write only usable in on-resource"))
            }
            Action::PathWrite { .. } => {
                return Err(Error::msg("path_write only usable in on-resource"))
            }
            Action::PipeWrite { .. } => {
                return Err(Error::msg("pipe_write only usable in on-resource"))
            }
            Action::UbiVolumeWrite { .. } => {
                return Err(Error::msg("ubi_volume_write only usable in on-resource"))
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

    fn mbr_write(&mut self, name: &str) -> Result<()> {
        let s = self
            .cfg
            .sec("mbr", name)
            .ok_or_else(|| Error::msg("mbr_write can't find mbr reference"))?;
        let num_blocks = u32::try_from(self.cache.end_offset / BLOCK).unwrap_or(u32::MAX);
        let blocks = crate::mbr::encode(s, num_blocks).map_err(Error::Msg)?;
        let what = format!("mbr_write({name})");
        let mut at = Vec::with_capacity(blocks.len());
        for (b, _) in &blocks {
            let r = Blocks::new(&what, *b, 1)?;
            r.within(&what, self.cache.hard_end())?;
            at.push(r.byte_offset());
        }
        for ((_, data), off) in blocks.iter().zip(at) {
            self.cache.pwrite(data, off)?;
        }
        Ok(())
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
        let what = format!("gpt_write({name})");
        let num_blocks = crate::plan::gpt_geometry(s, self.cache.end_offset, &what)?.num_blocks;
        Blocks::new(&what, 0, num_blocks)?.within(&what, self.cache.hard_end())?;
        let parts = s.secs("partition");
        let mut spec = GptSpec {
            disk_guid: guid(s.get_str("guid"), "disk")?,
            partitions: vec![None; 128],
        };
        for p in parts {
            let i = strtoull(p.title()) as usize;
            let off = strtoull(p.get_str("block-offset").unwrap_or("0"));
            let mut count = u64::try_from(p.get_int("block-count")).unwrap_or(0);
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

    /// Run an on-resource action list, streaming `data` (the decompressed entry, of
    /// `entry_size` bytes when the archive says). The first action that consumes data gets
    /// it all; a later one gets nothing and fails as in fwup.
    pub fn run_resource(
        &mut self,
        resource: &str,
        actions: &[Action],
        data: &mut dyn Read,
        entry_size: Option<u64>,
        block_ends: Option<crate::zip::BlockEnds>,
    ) -> Result<()> {
        let Some(res) = self.cfg.sec("file-resource", resource) else {
            return Err(Error::msg(format!(
                "Resource '{resource}' used, but metadata is missing. Archive is corrupt."
            )));
        };
        let delta = self.delta_source(res, resource, entry_size)?;
        let mut consumed = false;
        for a in actions {
            let sink = match a {
                Action::RawWrite { block, options } => {
                    let what = format!("raw_write({block})");
                    let len = crate::plan::resource_total_len_checked(res)?;
                    let r = Blocks::for_bytes(&what, *block, len)?;
                    r.within(&what, self.cache.hard_end())?;
                    let dest = r.byte_offset();
                    let crypto = if options.is_empty() {
                        None
                    } else {
                        Some(
                            crate::crypt::DiskCrypto::from_options(options, dest)
                                .map_err(|e| Error::msg(e.to_string()))?,
                        )
                    };
                    Sink::Raw {
                        dest,
                        ptbw: Box::default(),
                        crypto,
                    }
                }
                Action::FatWrite { block, path } => {
                    self.fat.truncate(&mut self.cache, *block, path)?;
                    Sink::Fat {
                        block: *block,
                        path: path.clone(),
                        ends: block_ends.clone(),
                        pending: Vec::new(),
                        pending_at: 0,
                    }
                }
                Action::PathWrite { path } => {
                    Sink::Path(crate::host::PathWriter::open(path, self.host)?)
                }
                Action::PipeWrite { cmd } => {
                    Sink::Pipe(crate::host::PipeWriter::open(cmd, self.host)?)
                }
                Action::UbiVolumeWrite { path } => Sink::Ubi(crate::host::UbiWriter::open(
                    path,
                    crate::plan::resource_total_len(res),
                    self.host,
                )?),
                other => {
                    self.run(other)?;
                    continue;
                }
            };
            let name = action_name(a);
            let src: &mut dyn Read = if consumed {
                &mut std::io::empty()
            } else {
                &mut *data
            };
            let delta = if consumed { None } else { delta.clone() };
            consumed = true;
            self.process_resource(resource, name, sink, src, delta)?;
        }
        Ok(())
    }

    /// Where a delta resource's source is (fwup: the entry's size differs from the resource's
    /// and the on-resource names a source), or None for a plain resource.
    fn delta_source(
        &self,
        res: &Section,
        resource: &str,
        entry_size: Option<u64>,
    ) -> Result<Option<DeltaSource>> {
        let map = res.list("length");
        let expected = crate::plan::resource_data_len(res);
        let Some(size) = entry_size else {
            return Ok(None);
        };
        if map.len() > 1 || size == expected {
            return Ok(None);
        }
        let plan_sec = self
            .task_resource_section(resource)
            .ok_or_else(|| Error::msg(format!("Resource {resource} not found in task")))?;
        let raw_off = plan_sec.get_str("delta-source-raw-offset");
        let raw_count = plan_sec.get_int("delta-source-raw-count");
        let fat_off = plan_sec.get_str("delta-source-fat-offset");
        let fat_path = plan_sec.get_str("delta-source-fat-path");
        if let (Some(off), true) = (raw_off, raw_count > 0) {
            let r = Blocks::new(
                &format!("delta-source-raw-offset {off}, delta-source-raw-count {raw_count} for '{resource}'"),
                strtoull(off),
                raw_count as u64,
            )?;
            return Ok(Some(DeltaSource::Raw {
                offset: r.byte_offset(),
                len: r.byte_len(),
                options: plan_sec
                    .get_str("delta-source-raw-options")
                    .map(|s| s.to_string()),
            }));
        }
        if let (Some(off), Some(path)) = (fat_off, fat_path) {
            return Ok(Some(DeltaSource::Fat {
                block: strtoull(off),
                path: path.to_string(),
            }));
        }
        Err(Error::msg(format!(
            "File '{resource}' isn't expected size ({size} vs {expected}) and xdelta3 patch support not enabled on it. (Add delta-source-raw-offset / delta-source-raw-count or delta-source-fat-offset / delta-source-fat-path)"
        )))
    }

    fn task_resource_section(&self, resource: &str) -> Option<&Section> {
        let task = self.task.as_deref()?;
        self.cfg.sec("task", task)?.sec("on-resource", resource)
    }

    /// fwup's `process_resource`: stream the resource (decoding a delta against its source)
    /// through the sparse map into `sink`, then check its length and BLAKE2b-256.
    fn process_resource(
        &mut self,
        resource: &str,
        name: &str,
        mut sink: Sink,
        src: &mut dyn Read,
        delta: Option<DeltaSource>,
    ) -> Result<()> {
        let res = self.cfg.sec("file-resource", resource).unwrap();
        let expected_hash = res.get_str("blake2b-256").unwrap_or("").to_string();
        if expected_hash.len() != 64 {
            return Err(Error::msg(format!("invalid blake2b hash for '{resource}'")));
        }
        let mut map: Vec<u64> = res
            .list("length")
            .iter()
            .map(|v| parse_c_int(v).unwrap_or(0) as u64)
            .collect();
        if map.is_empty() {
            map.push(0);
        }
        let count_holes = sink.counts_holes();
        // libarchive's blocks are the entry's: a sparse map or a delta cuts them otherwise.
        if let Sink::Fat { ends, .. } = &mut sink {
            if map.len() > 1 || delta.is_some() {
                *ends = None;
            }
        }
        let data_len: u64 = map.iter().step_by(2).sum();
        let total_len: u64 = map.iter().sum();
        let Executor {
            cache,
            fat,
            progress,
            ..
        } = self;
        let io = RefCell::new(Io { cache, fat });
        // The bytes to write: the entry itself, or a delta decoded against the destination.
        let mut decoder;
        let data: &mut dyn Read = match &delta {
            None => src,
            Some(d) => {
                let (source_len, options) = match d {
                    DeltaSource::Raw {
                        offset,
                        len,
                        options,
                    } => {
                        if let Some(o) = options {
                            let dc = crate::crypt::DiskCrypto::from_options(&[o.as_str()], *offset)
                                .map_err(|e| Error::msg(e.to_string()))?;
                            io.borrow_mut().cache.decrypt = Some(dc);
                        }
                        (*len, options.is_some())
                    }
                    DeltaSource::Fat { block, path } => {
                        let mut g = io.borrow_mut();
                        let Io { cache, fat } = &mut *g;
                        (fat.file_size(cache, *block, path)?, false)
                    }
                };
                let _ = options;
                let d2 = d.clone();
                let io_ref = &io;
                let source = crate::vcdiff::FnSource(move |off: u64, buf: &mut [u8]| {
                    let mut g = io_ref.borrow_mut();
                    let Io { cache, fat } = &mut *g;
                    match &d2 {
                        DeltaSource::Raw { offset, .. } => cache
                            .pread(buf, offset + off)
                            .map_err(|e| std::io::Error::other(e.to_string())),
                        DeltaSource::Fat { block, path } => {
                            let n = fat
                                .pread(cache, *block, path, off, buf)
                                .map_err(|e| std::io::Error::other(e.to_string()))?;
                            if n < buf.len() {
                                return Err(std::io::Error::new(
                                    std::io::ErrorKind::UnexpectedEof,
                                    "past the end of the FAT file",
                                ));
                            }
                            Ok(())
                        }
                    }
                });
                decoder = crate::vcdiff::Decoder::new(src, source, source_len)
                    .map_err(|e| Error::msg(format!("xdelta3 error: {e}")))?;
                &mut decoder
            }
        };
        let r = (|| {
            let mut h = HashPipe::new();
            let mut read_total = 0u64;
            let mut last_offset = 0u64;
            let mut pos = 0u64;
            let mut ended = false;
            // Chunks being hashed, written once the hasher hands them back (in order).
            let mut inflight: std::collections::VecDeque<(usize, u64)> = Default::default();
            let write_back = |h: &mut HashPipe,
                              inflight: &mut std::collections::VecDeque<(usize, u64)>,
                              sink: &mut Sink,
                              keep: usize|
             -> Result<()> {
                while inflight.len() > keep {
                    let (n, at) = inflight.pop_front().unwrap();
                    let buf = h.take_back();
                    let mut g = io.borrow_mut();
                    let spare = match sink {
                        // A whole aligned segment of a plain raw_write: the buffer becomes
                        // the cache segment, no copy.
                        Sink::Raw {
                            dest,
                            ptbw,
                            crypto: None,
                        } if n == SEGMENT as usize
                            && ptbw.is_empty()
                            && (*dest + at).is_multiple_of(SEGMENT) =>
                        {
                            g.cache.install(buf, *dest + at)?
                        }
                        _ => {
                            sink_write(&mut g, sink, &buf.bytes()[..n], at)?;
                            buf
                        }
                    };
                    h.recycle(spare);
                }
                Ok(())
            };
            for (i, len) in map.iter().enumerate() {
                if i % 2 == 1 {
                    pos += len;
                    continue;
                }
                let mut left = *len;
                while left > 0 {
                    let mut buf = h.buffer();
                    let want = (left as usize).min(SEGMENT as usize);
                    let n = read_fully(data, &mut buf.bytes_mut()[..want]).map_err(|e| {
                        if delta.is_some() {
                            Error::msg(format!("xdelta3 error: {e}"))
                        } else {
                            Error::msg(e.to_string())
                        }
                    })?;
                    if n == 0 {
                        h.recycle(buf);
                        ended = true;
                        break;
                    }
                    h.update(buf, n);
                    inflight.push_back((n, pos));
                    write_back(&mut h, &mut inflight, &mut sink, 2)?;
                    read_total += n as u64;
                    left -= n as u64;
                    pos += n as u64;
                    let units = if count_holes {
                        let u = pos - last_offset;
                        last_offset = pos;
                        u
                    } else {
                        n as u64
                    };
                    // Report in 4 KiB steps so percentages advance as with fwup's small reads.
                    let mut r = units;
                    while r > 0 {
                        let k = r.min(4096);
                        progress.report(k);
                        r -= k;
                    }
                }
                if ended {
                    break;
                }
            }
            write_back(&mut h, &mut inflight, &mut sink, 0)?;
            if let Sink::Fat {
                block,
                path,
                pending,
                pending_at,
                ..
            } = &mut sink
            {
                fat_flush(&mut io.borrow_mut(), block, path, pending, pending_at)?;
            }
            if delta.is_some() && !ended {
                // Anything the delta decodes beyond the resource's length is an error too.
                let n = read_fully(data, &mut [0u8; 1])
                    .map_err(|e| Error::msg(format!("xdelta3 error: {e}")))?;
                read_total += n as u64;
            }
            if !ended && map.len().is_multiple_of(2) {
                let hole = *map.last().unwrap();
                if hole > 0 {
                    sink_final_hole(&mut io.borrow_mut(), &mut sink, hole, total_len)?;
                    if count_holes {
                        progress.report(hole);
                    }
                }
            }
            if read_total != data_len {
                return Err(Error::msg(if read_total == 0 {
                    format!("{name} didn't write anything and was likely called twice in an on-resource for '{resource}'. Try a \"cp\" function.")
                } else {
                    format!("{name} wrote {read_total} bytes for '{resource}', but should have written {data_len}")
                }));
            }
            let out = h.finalize();
            if hex(&out) != expected_hash {
                return Err(Error::msg(format!(
                    "{name} detected blake2b mismatch on '{resource}'"
                )));
            }
            sink_finish(&mut io.borrow_mut(), sink)
        })();
        io.borrow_mut().cache.decrypt = None;
        r
    }
}

/// BLAKE2b-256 on a helper thread, so hashing overlaps reading and writing. Chunks go to
/// the hasher in page-aligned segment buffers and come back in order, ready to be written
/// (or to become cache segments) by the main thread, the only one that touches the
/// destination.
struct HashPipe {
    tx: Option<std::sync::mpsc::SyncSender<(SegBuf, usize)>>,
    back: std::sync::mpsc::Receiver<SegBuf>,
    join: Option<std::thread::JoinHandle<[u8; 32]>>,
    pool: Vec<SegBuf>,
}

impl HashPipe {
    fn new() -> Self {
        use std::sync::mpsc::sync_channel;
        let (tx, rx) = sync_channel::<(SegBuf, usize)>(8);
        let (btx, back) = sync_channel::<SegBuf>(8);
        let join = std::thread::spawn(move || {
            let mut h = crate::uuid::Blake2b256::default();
            for (b, n) in rx {
                h.update(&b.bytes()[..n]);
                if btx.send(b).is_err() {
                    break;
                }
            }
            h.finalize()
        });
        HashPipe {
            tx: Some(tx),
            back,
            join: Some(join),
            pool: Vec::new(),
        }
    }

    fn buffer(&mut self) -> SegBuf {
        self.pool.pop().unwrap_or_else(SegBuf::new)
    }

    fn recycle(&mut self, b: SegBuf) {
        if self.pool.len() < 8 {
            self.pool.push(b);
        }
    }

    /// Hash the first `n` bytes of `buf` (in the background).
    fn update(&mut self, buf: SegBuf, n: usize) {
        if let Some(tx) = &self.tx {
            let _ = tx.send((buf, n));
        }
    }

    /// The oldest chunk, once hashed.
    fn take_back(&mut self) -> SegBuf {
        self.back.recv().expect("hash thread stopped")
    }

    fn finalize(mut self) -> [u8; 32] {
        drop(self.tx.take());
        while self.back.try_recv().is_ok() {}
        self.join
            .take()
            .unwrap()
            .join()
            .expect("hash thread panicked")
    }
}

impl Drop for HashPipe {
    fn drop(&mut self) {
        drop(self.tx.take());
        // Let the hasher finish handing back what it holds, then stop it.
        while self.back.recv().is_ok() {}
        if let Some(j) = self.join.take() {
            let _ = j.join();
        }
    }
}

/// The destination and the FAT mounts, shared between a delta's source reads and the sink.
struct Io<'a> {
    cache: &'a mut BlockCache,
    fat: &'a mut crate::fat::Mounts,
}

/// Where a delta resource's old contents come from.
#[derive(Clone, Debug)]
enum DeltaSource {
    /// A range of the destination (bytes), maybe encrypted.
    Raw {
        offset: u64,
        len: u64,
        options: Option<String>,
    },
    /// A file in the FAT volume at `block`.
    Fat { block: u64, path: String },
}

fn sink_write(io: &mut Io, sink: &mut Sink, data: &[u8], offset: u64) -> Result<()> {
    match sink {
        Sink::Raw { dest, ptbw, crypto } => {
            ptbw.pwrite(io.cache, crypto.as_ref(), data, *dest + offset)
        }
        Sink::Fat {
            block,
            path,
            ends: Some(ends),
            pending,
            pending_at,
        } => {
            if !pending.is_empty() && *pending_at + pending.len() as u64 != offset {
                fat_flush(io, block, path, pending, pending_at)?;
            }
            if pending.is_empty() {
                *pending_at = offset;
            }
            pending.extend_from_slice(data);
            let base = *pending_at;
            let mut from = 0usize;
            for e in ends.take(base, base + pending.len() as u64) {
                let to = (e - base) as usize;
                io.fat.pwrite(
                    io.cache,
                    *block,
                    path,
                    base + from as u64,
                    &pending[from..to],
                )?;
                from = to;
            }
            pending.drain(..from);
            *pending_at = base + from as u64;
            Ok(())
        }
        Sink::Fat {
            block,
            path,
            ends: None,
            ..
        } => io.fat.pwrite(io.cache, *block, path, offset, data),
        Sink::Path(w) => w.pwrite(data, offset),
        Sink::Pipe(w) => w.pwrite(data, offset),
        Sink::Ubi(w) => w.pwrite(data, offset),
    }
}

fn sink_final_hole(io: &mut Io, sink: &mut Sink, hole: u64, file_size: u64) -> Result<()> {
    match sink {
        Sink::Raw { dest, ptbw, crypto } => {
            // A regular file needs its last bytes written to get its full length.
            let n = hole.min(BLOCK);
            let zeros = vec![0u8; n as usize];
            ptbw.pwrite(io.cache, crypto.as_ref(), &zeros, *dest + file_size - n)
        }
        Sink::Fat {
            block,
            path,
            pending,
            pending_at,
            ..
        } => {
            fat_flush(io, block, path, pending, pending_at)?;
            io.fat.pwrite(io.cache, *block, path, file_size, &[])
        }
        Sink::Path(w) => w.pwrite(&[0], file_size - 1),
        Sink::Pipe(w) => w.pwrite(&[0], file_size - 1),
        Sink::Ubi(w) => w.fill_to(file_size),
    }
}

/// Write what a FAT sink holds of a block whose end is not known yet, as one write.
fn fat_flush(
    io: &mut Io,
    block: &u64,
    path: &str,
    pending: &mut Vec<u8>,
    pending_at: &mut u64,
) -> Result<()> {
    if !pending.is_empty() {
        io.fat
            .pwrite(io.cache, *block, path, *pending_at, pending)?;
        *pending_at += pending.len() as u64;
        pending.clear();
    }
    Ok(())
}

fn sink_finish(io: &mut Io, sink: Sink) -> Result<()> {
    match sink {
        Sink::Raw {
            mut ptbw, crypto, ..
        } => ptbw.flush(io.cache, crypto.as_ref()),
        Sink::Fat { .. } => Ok(()),
        Sink::Path(w) => w.finish(),
        Sink::Pipe(w) => w.finish(),
        Sink::Ubi(w) => w.finish(true),
    }
}

fn action_name(a: &Action) -> &'static str {
    match a {
        Action::RawWrite { .. } => "raw_write",
        Action::FatWrite { .. } => "fat_write",
        Action::PathWrite { .. } => "path_write",
        Action::PipeWrite { .. } => "pipe_write",
        Action::UbiVolumeWrite { .. } => "ubi_volume_write",
        _ => "?",
    }
}

/// Where a resource's bytes go.
enum Sink {
    Raw {
        dest: u64,
        ptbw: Box<Ptbw>,
        crypto: Option<crate::crypt::DiskCrypto>,
    },
    Fat {
        block: u64,
        path: String,
        /// Where libarchive's blocks end: fwup writes each as one `f_write`, and where those
        /// end decides what FatFs leaves after a file's last byte in its last sector.
        ends: Option<crate::zip::BlockEnds>,
        /// Bytes of a block not yet whole, and their offset in the file.
        pending: Vec<u8>,
        pending_at: u64,
    },
    Path(crate::host::PathWriter),
    Pipe(crate::host::PipeWriter),
    Ubi(crate::host::UbiWriter),
}

impl Sink {
    /// Whether holes count as progress (fwup's `count_holes`).
    fn counts_holes(&self) -> bool {
        matches!(self, Sink::Fat { .. } | Sink::Pipe(_) | Sink::Ubi(_))
    }
}

/// fwup's pad_to_block_writer: whole 512-byte blocks go to the cache; a partial block is
/// held until it fills, and padded with zeros (not merged with the destination) otherwise.
pub struct Ptbw {
    buf: [u8; BLOCK as usize],
    index: usize,
    offset: u64,
}

impl Default for Ptbw {
    fn default() -> Self {
        Ptbw {
            buf: [0u8; BLOCK as usize],
            index: 0,
            offset: 0,
        }
    }
}

impl Ptbw {
    fn is_empty(&self) -> bool {
        self.index == 0
    }

    fn put(
        cache: &mut BlockCache,
        crypto: Option<&crate::crypt::DiskCrypto>,
        data: &[u8],
        offset: u64,
    ) -> Result<()> {
        match crypto {
            Some(c) => {
                let mut enc = data.to_vec();
                c.encrypt(&mut enc, offset)
                    .map_err(|e| Error::msg(e.to_string()))?;
                cache.pwrite(&enc, offset)
            }
            None => cache.pwrite(data, offset),
        }
    }

    pub fn pwrite(
        &mut self,
        cache: &mut BlockCache,
        crypto: Option<&crate::crypt::DiskCrypto>,
        mut data: &[u8],
        mut offset: u64,
    ) -> Result<()> {
        const B: usize = BLOCK as usize;
        if self.index != 0 {
            let mut cur = self.offset + self.index as u64;
            let max = self.offset + B as u64;
            if offset > cur && offset < max {
                let skip = (offset - cur) as usize;
                self.buf[self.index..self.index + skip].fill(0);
                cur = offset;
                self.index += skip;
            }
            if cur == offset {
                let n = (B - self.index).min(data.len());
                self.buf[self.index..self.index + n].copy_from_slice(&data[..n]);
                data = &data[n..];
                self.index += n;
                offset += n as u64;
                if self.index == B {
                    let b = self.buf;
                    Self::put(cache, crypto, &b, self.offset)?;
                    self.index = 0;
                } else {
                    return Ok(());
                }
            } else {
                self.flush(cache, crypto)?;
            }
        }
        let within = (offset % BLOCK) as usize;
        if within != 0 {
            self.buf[..within].fill(0);
            self.index = within;
            self.offset = offset - within as u64;
            return self.pwrite(cache, crypto, data, offset);
        }
        if data.len() > B {
            let n = data.len() & !(B - 1);
            Self::put(cache, crypto, &data[..n], offset)?;
            offset += n as u64;
            data = &data[n..];
        }
        if !data.is_empty() {
            self.buf[..data.len()].copy_from_slice(data);
            self.index = data.len();
            self.offset = offset;
        }
        Ok(())
    }

    pub fn flush(
        &mut self,
        cache: &mut BlockCache,
        crypto: Option<&crate::crypt::DiskCrypto>,
    ) -> Result<()> {
        if self.index > 0 {
            self.buf[self.index..].fill(0);
            let b = self.buf;
            Self::put(cache, crypto, &b, self.offset)?;
            self.index = 0;
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
/// Does a task's requirement list hold on this destination? (fwup's requirement.c; any
/// error counts as "not met".)
pub fn requirements_met(ex: &mut Executor, task: &Section) -> bool {
    let Ok(reqs) = crate::plan::split_funlist(task.list("reqlist")) else {
        return false;
    };
    let p1 = task.get_int("require-partition1-offset");
    if p1 >= 0 && mbr_partition_offset(&mut ex.cache, 1) != Some(p1 as u64) {
        return false;
    }
    for r in reqs {
        let ok = match r[0].as_str() {
            "require-partition-offset" if r.len() == 3 => {
                let i = parse_c_int(&r[1]).unwrap_or(-1);
                (0..4).contains(&i)
                    && mbr_partition_offset(&mut ex.cache, i as usize) == Some(strtoull(&r[2]))
            }
            "require-uboot-variable" if r.len() == 4 => {
                match ex.env_read(&r[1], "require-uboot-variable") {
                    Ok((env, ..)) => env.get(&r[2]) == Some(r[3].as_str()),
                    Err(_) => false,
                }
            }
            "require-fat-file-exists" if r.len() == 3 => {
                ex.fat.exists(&mut ex.cache, strtoull(&r[1]), &r[2])
            }
            "require-fat-file-match" if r.len() == 4 => {
                ex.fat
                    .file_matches(&mut ex.cache, strtoull(&r[1]), &r[2], &r[3])
            }
            "require-path-on-device" if r.len() == 3 => crate::host::path_on_device(&r[1], &r[2]),
            "require-path-at-offset" if r.len() == 3 => {
                crate::host::path_at_offset(&r[1], strtoull(&r[2]))
            }
            "require-execute" if r.len() == 2 => crate::host::require_execute(&r[1], ex.host),
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
                // fwup would write it again; a second copy of a resource is a corrupt archive.
                if done.contains(&name) {
                    return Err(Error::msg(format!(
                        "Processing {name} twice. Archive is corrupt."
                    )));
                }
                let ends = zip.block_ends();
                ex.run_resource(&name, acts, zip, entry.size, Some(ends))?;
                // The data ends where meta.conf says: more is a corrupt archive (and a zip
                // bomb is not inflated to its end to find out).
                let sinks = acts.iter().any(|a| {
                    matches!(
                        a,
                        Action::RawWrite { .. }
                            | Action::FatWrite { .. }
                            | Action::PathWrite { .. }
                            | Action::PipeWrite { .. }
                            | Action::UbiVolumeWrite { .. }
                    )
                });
                let mut one = [0u8; 1];
                if sinks && zip.read(&mut one).map_err(|e| Error::msg(e.to_string()))? > 0 {
                    return Err(Error::msg(format!(
                        "Resource {name} holds more data in the archive than its length in meta.conf. Archive is corrupt."
                    )));
                }
                done.insert(name);
            }
        }
        for (n, _) in &plan.on_resource {
            if !done.contains(n) {
                return Err(Error::msg(format!("Resource {n} not found in archive")));
            }
        }
        // FAT updates land before on-finish, which usually flips A/B partitions.
        ex.fat.close_all(&mut ex.cache);
        for a in &plan.on_finish {
            ex.run(a)?;
        }
        Ok(())
    })();
    if r.is_err() {
        ex.fat.reset();
        ex.cache.reset();
        for a in &plan.on_error {
            if ex.run(a).is_err() {
                ex.fat.reset();
                ex.cache.reset();
                break;
            }
        }
        ex.fat.close_all(&mut ex.cache);
        let _ = ex.cache.flush();
    } else {
        ex.fat.close_all(&mut ex.cache);
    }
    r
}
