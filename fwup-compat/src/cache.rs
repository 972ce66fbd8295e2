//! The destination's block cache, as fwup's src/block_cache.c: 128 KiB segments, every
//! destination read and write is a whole segment at a segment-aligned offset from a
//! page-aligned buffer, with pread/pwrite on the one descriptor opened by the caller. A
//! trimmed segment reads as zeros.

use crate::blocks::{BLOCK, MAX_BYTES};
use crate::error::{Error, Result};
use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::os::unix::fs::FileExt;

pub const SEGMENT: u64 = 128 * 1024;
const BLOCKS_PER_SEG: usize = (SEGMENT / BLOCK) as usize;

/// A page-aligned 128 KiB buffer.
pub(crate) struct SegBuf(*mut u8);
impl SegBuf {
    fn layout() -> Layout {
        Layout::from_size_align(SEGMENT as usize, 4096).unwrap()
    }
    pub(crate) fn new() -> Self {
        // SAFETY: non-zero size, valid alignment.
        let p = unsafe { alloc_zeroed(Self::layout()) };
        assert!(!p.is_null(), "out of memory");
        SegBuf(p)
    }
    pub(crate) fn bytes(&self) -> &[u8] {
        // SAFETY: allocated with SEGMENT bytes and owned by self.
        unsafe { std::slice::from_raw_parts(self.0, SEGMENT as usize) }
    }
    pub(crate) fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above, and &mut self guarantees exclusivity.
        unsafe { std::slice::from_raw_parts_mut(self.0, SEGMENT as usize) }
    }
}
// SAFETY: SegBuf owns its allocation exclusively; moving it to another thread is fine.
unsafe impl Send for SegBuf {}

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
    dirty: [bool; BLOCKS_PER_SEG],
    last_access: u64,
}

impl Segment {
    fn any_dirty(&self) -> bool {
        self.dirty.iter().any(|d| *d)
    }
}

/// Segment cache over the destination (fwup's block_cache.c): least recently used segments
/// are written back first, trimmed segments read as zeros without I/O, and the destination's
/// end is either hard (a device or `--max-size`: I/O is clipped, past it fails) or soft (an
/// existing image file: writes past it grow it).
pub struct BlockCache {
    file: File,
    segs: BTreeMap<u64, Segment>,
    trimmed: HashSet<u64>,
    /// Every segment from here on counts as trimmed (past a hard end).
    trimmed_from: Option<u64>,
    max_segs: usize,
    clock: u64,
    /// Bytes the destination holds (0 = unknown).
    pub end_offset: u64,
    pub soft_end: bool,
    /// Read every write back and compare (`--verify-writes`).
    pub verify_writes: bool,
    /// Skip writes that would not change the destination (`--minimize-writes`).
    pub minimize_writes: bool,
    /// Decrypts segments as they are read (delta sources on encrypted partitions).
    pub decrypt: Option<crate::crypt::DiskCrypto>,
    /// Buffers of dropped segments, reused instead of mapping fresh memory each time.
    spare: Vec<SegBuf>,
    /// Scratch segment for reads that merge into a cached one.
    scratch: Option<SegBuf>,
    /// When set, every write that reaches the destination is also recorded here, in order
    /// (offset, bytes): the power-cut tests replay prefixes of it.
    pub write_log: Option<Vec<(u64, Vec<u8>)>>,
}

impl BlockCache {
    pub fn new(file: File, cache_mb: u64, end_offset: u64) -> Self {
        BlockCache {
            file,
            segs: BTreeMap::new(),
            trimmed: HashSet::new(),
            trimmed_from: None,
            max_segs: (((cache_mb.max(1) * 1024 * 1024) / SEGMENT) as usize).max(8),
            clock: 0,
            end_offset,
            soft_end: false,
            verify_writes: false,
            minimize_writes: false,
            decrypt: None,
            spare: Vec::new(),
            scratch: None,
            write_log: None,
        }
    }

    /// The destination.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The destination's hard end in bytes (a device's size or `--max-size`), or 0 when
    /// there is none (a regular file grows).
    pub fn hard_end(&self) -> u64 {
        if self.soft_end {
            0
        } else {
            self.end_offset
        }
    }

    /// Last line of defence behind [`Blocks`]: no I/O whose end does not fit an `off_t`.
    fn check_span(offset: u64, len: usize) -> Result<()> {
        match offset.checked_add(len as u64) {
            Some(e) if e <= MAX_BYTES => Ok(()),
            _ => Err(Error::msg(format!(
                "I/O of {len} bytes at offset {offset} is past the largest offset a device can have"
            ))),
        }
    }

    /// Call once the end and its kind are set: past a hard end everything reads as zeros.
    pub fn init_end(&mut self) {
        if !self.soft_end && self.end_offset > 0 {
            self.trimmed_from = Some(self.end_offset.div_ceil(SEGMENT));
        }
    }

    fn is_trimmed(&self, seg: u64) -> bool {
        self.trimmed.contains(&seg) || self.trimmed_from.is_some_and(|f| seg >= f)
    }

    /// fwup's calculate_io_size: bytes of segment `seg` to read or write.
    fn io_size(&mut self, seg: u64) -> Result<usize> {
        let off = seg * SEGMENT;
        let last = off + SEGMENT;
        if self.end_offset > 0 && !self.soft_end {
            if last <= self.end_offset {
                Ok(SEGMENT as usize)
            } else if off <= self.end_offset {
                Ok((self.end_offset - off) as usize)
            } else {
                Err(Error::msg(format!(
                    "read/write failed at offset {off} since past end of media ({}).",
                    self.end_offset
                )))
            }
        } else {
            if self.soft_end && self.end_offset > 0 && last > self.end_offset {
                self.end_offset = last;
            }
            Ok(SEGMENT as usize)
        }
    }

    fn read_segment(&mut self, seg: u64, into: &mut [u8]) -> Result<()> {
        if self.is_trimmed(seg) {
            into.fill(0);
            return Ok(());
        }
        let count = self.io_size(seg)?;
        let mut got = 0usize;
        while got < count {
            match self.file.read_at(&mut into[got..count], seg * SEGMENT + got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(Error::msg(format!(
                        "unexpected error reading {count} bytes at offset {}: {e}.\nPossible causes are that the destination is too small, the device (e.g., an SD card) is going bad, or the connection to it is flaky.",
                        seg * SEGMENT
                    )))
                }
            }
        }
        into[got..].fill(0);
        if let Some(d) = self.decrypt.as_ref() {
            let n = count - count % BLOCK as usize;
            // Segments before the encrypted region's start are not decrypted.
            let _ = d.decrypt(&mut into[..n], seg * SEGMENT);
        }
        Ok(())
    }

    /// With every slot in use, write back and drop the least recently used segment.
    fn evict_if_full(&mut self) -> Result<()> {
        if self.segs.len() >= self.max_segs {
            if let Some(lru) = self
                .segs
                .iter()
                .min_by_key(|(_, s)| s.last_access)
                .map(|(k, _)| *k)
            {
                self.flush_segment(lru)?;
                self.drop_segment(lru);
            }
        }
        Ok(())
    }

    /// Find or make room for segment `seg` (writing back the least recently used one).
    fn load(&mut self, seg: u64) -> Result<&mut Segment> {
        self.clock += 1;
        if !self.segs.contains_key(&seg) {
            self.evict_if_full()?;
            let buf = self.spare.pop().unwrap_or_else(SegBuf::new);
            self.segs.insert(
                seg,
                Segment {
                    buf,
                    valid: [false; BLOCKS_PER_SEG],
                    dirty: [false; BLOCKS_PER_SEG],
                    last_access: 0,
                },
            );
        }
        let clock = self.clock;
        let s = self.segs.get_mut(&seg).unwrap();
        s.last_access = clock;
        Ok(s)
    }

    fn drop_segment(&mut self, seg: u64) {
        if let Some(s) = self.segs.remove(&seg) {
            if self.spare.len() < self.max_segs {
                self.spare.push(s.buf);
            }
        }
    }

    /// Make every block of a cached segment valid, reading what is missing.
    fn make_valid(&mut self, seg: u64) -> Result<()> {
        let s = self.segs.get(&seg).unwrap();
        if s.valid.iter().all(|v| *v) {
            return Ok(());
        }
        let mut tmp = self.scratch.take().unwrap_or_else(SegBuf::new);
        let r = self.read_segment(seg, tmp.bytes_mut());
        if let Err(e) = r {
            self.scratch = Some(tmp);
            return Err(e);
        }
        let s = self.segs.get_mut(&seg).unwrap();
        for b in 0..BLOCKS_PER_SEG {
            if !s.valid[b] {
                let r = b * BLOCK as usize..(b + 1) * BLOCK as usize;
                s.buf.bytes_mut()[r.clone()].copy_from_slice(&tmp.bytes()[r]);
                s.valid[b] = true;
            }
        }
        self.scratch = Some(tmp);
        Ok(())
    }

    /// Write a whole segment (`offset` segment-aligned) by taking `buf` as the cached
    /// segment instead of copying it. Returns a buffer for the caller to reuse.
    pub(crate) fn install(&mut self, buf: SegBuf, offset: u64) -> Result<SegBuf> {
        debug_assert!(offset.is_multiple_of(SEGMENT));
        let seg = offset / SEGMENT;
        if self.segs.contains_key(&seg) {
            self.pwrite(buf.bytes(), offset)?;
            return Ok(buf);
        }
        // Make room the way load() does, then put the buffer in place.
        self.clock += 1;
        self.evict_if_full()?;
        self.segs.insert(
            seg,
            Segment {
                buf,
                valid: [true; BLOCKS_PER_SEG],
                dirty: [true; BLOCKS_PER_SEG],
                last_access: self.clock,
            },
        );
        // A whole streamed segment goes out right away, as fwup's cache does: the write
        // overlaps the rest of the stream instead of piling up for the final flush.
        self.flush_segment(seg)?;
        Ok(self.spare.pop().unwrap_or_else(SegBuf::new))
    }

    /// Write whole blocks at a block-aligned offset.
    pub fn pwrite(&mut self, mut data: &[u8], mut offset: u64) -> Result<()> {
        debug_assert!(offset.is_multiple_of(BLOCK) && (data.len() as u64).is_multiple_of(BLOCK));
        Self::check_span(offset, data.len())?;
        while !data.is_empty() {
            let seg = offset / SEGMENT;
            let within = (offset % SEGMENT) as usize;
            let n = data.len().min(SEGMENT as usize - within);
            let s = self.load(seg)?;
            s.buf.bytes_mut()[within..within + n].copy_from_slice(&data[..n]);
            for b in within / BLOCK as usize..(within + n) / BLOCK as usize {
                s.valid[b] = true;
                s.dirty[b] = true;
            }
            data = &data[n..];
            offset += n as u64;
        }
        Ok(())
    }

    pub fn pread(&mut self, out: &mut [u8], mut offset: u64) -> Result<()> {
        Self::check_span(offset, out.len())?;
        let mut done = 0;
        while done < out.len() {
            let seg = offset / SEGMENT;
            let within = (offset % SEGMENT) as usize;
            let n = (out.len() - done).min(SEGMENT as usize - within);
            self.load(seg)?;
            self.make_valid(seg)?;
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
        let end = offset.saturating_add(count) / SEGMENT;
        for seg in first..end.min(first + (1 << 20)) {
            self.trimmed.insert(seg);
            self.drop_segment(seg);
        }
    }

    /// fwup's verified_segment_write.
    fn write_segment(&mut self, seg: u64) -> Result<()> {
        let count = self.io_size(seg)?;
        let off = seg * SEGMENT;
        let s = self.segs.get(&seg).unwrap();
        let data = &s.buf.bytes()[..count];
        if self.minimize_writes {
            let mut tmp = SegBuf::new();
            if read_exact_at(&self.file, &mut tmp.bytes_mut()[..count], off)
                && tmp.bytes()[..count] == *data
            {
                return Ok(());
            }
        }
        let mut done = 0usize;
        while done < count {
            match self.file.write_at(&data[done..], off + done as u64) {
                Ok(0) | Err(_) => {
                    return Err(Error::msg(format!(
                        "writing {count} bytes failed at offset {off}. Check media size."
                    )))
                }
                Ok(n) => done += n,
            }
        }
        if let Some(log) = self.write_log.as_mut() {
            log.push((off, data.to_vec()));
        }
        if self.verify_writes {
            let mut tmp = SegBuf::new();
            if !read_exact_at(&self.file, &mut tmp.bytes_mut()[..count], off) {
                return Err(Error::msg(format!("read back failed at offset {off}")));
            }
            if tmp.bytes()[..count] != *data {
                return Err(Error::msg(format!(
                    "write verification failed at offset {off}"
                )));
            }
        }
        Ok(())
    }

    fn flush_segment(&mut self, seg: u64) -> Result<()> {
        if !self.segs.get(&seg).is_some_and(|s| s.any_dirty()) {
            return Ok(());
        }
        let r = self.make_valid(seg).and_then(|_| self.write_segment(seg));
        // Success or not, the segment is no longer dirty or trimmed: no endless retries.
        if let Some(s) = self.segs.get_mut(&seg) {
            s.dirty = [false; BLOCKS_PER_SEG];
        }
        self.trimmed.remove(&seg);
        r
    }

    /// Write back every dirty segment, least recently used first.
    pub fn flush(&mut self) -> Result<()> {
        let mut order: Vec<(u64, u64)> = self
            .segs
            .iter()
            .filter(|(_, s)| s.any_dirty())
            .map(|(k, s)| (s.last_access, *k))
            .collect();
        order.sort();
        for (_, seg) in order {
            self.flush_segment(seg)?;
        }
        Ok(())
    }

    /// Throw away unwritten changes (before on-error runs).
    pub fn reset(&mut self) {
        let segs: Vec<u64> = self.segs.keys().copied().collect();
        for seg in segs {
            self.drop_segment(seg);
        }
    }
}

fn read_exact_at(f: &File, buf: &mut [u8], off: u64) -> bool {
    let mut got = 0;
    while got < buf.len() {
        match f.read_at(&mut buf[got..], off + got as u64) {
            Ok(0) => return false,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    true
}
