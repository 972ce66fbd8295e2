//! The ZIP container of a .fw archive: a writer, and a reader that streams entries in order
//! from any `Read` (a file or stdin), as fwup's single-pass apply needs.
//!
//! Spec: PKWARE APPNOTE.TXT (<https://pkware.cachefly.net/webdocs/casestudies/APPNOTE.TXT>):
//! local file headers (4.3.7), data descriptors (4.3.9), extended timestamp extra field 0x5455
//! (4.5 / Info-ZIP extra.fld).

use crate::error::{Error, Result};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use rayon::prelude::*;
use std::io::{self, BufRead, BufReader, Read, Write};

const LOCAL_SIG: u32 = 0x0403_4b50;
const CENTRAL_SIG: u32 = 0x0201_4b50;
const DESCRIPTOR_SIG: u32 = 0x0807_4b50;

/// DOS date/time of a Unix time, in UTC (fwup runs with TZ unset in CI).
pub fn dos_datetime(t: i64) -> (u16, u16) {
    let days = t.div_euclid(86400);
    let secs = t.rem_euclid(86400);
    let (y, m, d) = civil_from_days(days);
    if y < 1980 {
        return (0, (1 << 5) | 1);
    }
    let time = ((secs / 3600) << 11) | (((secs % 3600) / 60) << 5) | ((secs % 60) / 2);
    let date = ((y - 1980) << 9) | ((m as i64) << 5) | d as i64;
    (time as u16, date as u16)
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 } as i64;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

pub fn unix_from_dos(time: u16, date: u16) -> i64 {
    let y = 1980 + (date >> 9) as i64;
    let m = ((date >> 5) & 0xf).max(1) as u32;
    let d = (date & 0x1f).max(1) as u32;
    days_from_civil(y, m, d) * 86400
        + ((time >> 11) as i64) * 3600
        + (((time >> 5) & 0x3f) as i64) * 60
        + ((time & 0x1f) as i64) * 2
}

/// `YYYY-MM-DDTHH:MM:SSZ` as fwup prints meta-creation-date.
pub fn iso8601(t: i64) -> String {
    let (y, m, d) = civil_from_days(t.div_euclid(86400));
    let s = t.rem_euclid(86400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        s / 3600,
        (s % 3600) / 60,
        s % 60
    )
}

/// Compressed form of one entry.
pub struct Packed {
    pub method: u16,
    pub data: Vec<u8>,
    pub crc: u32,
    pub size: u64,
}

/// Does this piece look incompressible? Deflates three 16 KiB samples at level 1; if none
/// shrinks by 3%, the piece is taken to be already-compressed or random data.
fn looks_incompressible(p: &[u8]) -> bool {
    const SAMPLE: usize = 16 * 1024;
    if p.len() < 4 * SAMPLE {
        return false;
    }
    let starts = [0, p.len() / 2 - SAMPLE / 2, p.len() - SAMPLE];
    starts.iter().all(|&at| {
        let s = &p[at..at + SAMPLE];
        let mut c = Compress::new(Compression::new(1), false);
        let mut out = Vec::with_capacity(SAMPLE + 1024);
        let _ = c.compress_vec(s, &mut out, FlushCompress::Finish);
        out.len() * 100 >= s.len() * 97
    })
}

/// A piece as deflate "stored" blocks (RFC 1951 3.2.4), starting byte-aligned; `last`
/// sets BFINAL on its final block.
fn stored_blocks(p: &[u8], last: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(p.len() + p.len() / 65535 * 5 + 10);
    let mut chunks = p.chunks(65535).peekable();
    if p.is_empty() {
        out.extend_from_slice(&[u8::from(last), 0, 0, 0xff, 0xff]);
    }
    while let Some(c) = chunks.next() {
        let fin = last && chunks.peek().is_none();
        out.push(u8::from(fin));
        out.extend_from_slice(&(c.len() as u16).to_le_bytes());
        out.extend_from_slice(&(!(c.len() as u16)).to_le_bytes());
        out.extend_from_slice(c);
    }
    out
}

/// Deflate `data` in 1 MiB pieces on all cores (each piece ends on a byte boundary with a
/// sync flush, so the pieces concatenate into one valid stream). Pieces that do not compress
/// go in as stored deflate blocks without spending a level-9 pass on them, and an entry that
/// does not shrink at all is stored.
pub fn pack(data: &[u8], level: u32) -> Packed {
    const PIECE: usize = 1 << 20;
    let crc = {
        let mut h = crc32fast::Hasher::new();
        h.update(data);
        h.finalize()
    };
    let pieces: Vec<&[u8]> = if data.is_empty() {
        vec![&[][..]]
    } else {
        data.chunks(PIECE).collect()
    };
    let n = pieces.len();
    let parts: Vec<Vec<u8>> = pieces
        .par_iter()
        .enumerate()
        .map(|(i, p)| {
            let last = i + 1 == n;
            if looks_incompressible(p) {
                return stored_blocks(p, last);
            }
            let mut c = Compress::new(Compression::new(level), false);
            let mut out = Vec::with_capacity(p.len() / 2 + 1024);
            let flush = if last {
                FlushCompress::Finish
            } else {
                FlushCompress::Sync
            };
            loop {
                if out.capacity() - out.len() < 64 * 1024 {
                    out.reserve(p.len() / 2 + 64 * 1024);
                }
                let before = c.total_in() as usize;
                let st = c
                    .compress_vec(&p[before..], &mut out, flush)
                    .expect("deflate");
                if (c.total_in() as usize) == p.len()
                    && (st == Status::StreamEnd
                        || (flush == FlushCompress::Sync && out.capacity() > out.len()))
                {
                    break;
                }
            }
            out
        })
        .collect();
    let total: usize = parts.iter().map(|p| p.len()).sum();
    if total >= data.len() && !data.is_empty() {
        return Packed {
            method: 0,
            data: data.to_vec(),
            crc,
            size: data.len() as u64,
        };
    }
    Packed {
        method: 8,
        data: parts.concat(),
        crc,
        size: data.len() as u64,
    }
}

/// Writes entries with sizes in the local headers (no data descriptors), then the central
/// directory.
pub struct ZipWriter<W: Write> {
    w: W,
    offset: u64,
    central: Vec<u8>,
    count: u16,
}

impl<W: Write> ZipWriter<W> {
    pub fn new(w: W) -> Self {
        ZipWriter {
            w,
            offset: 0,
            central: Vec::new(),
            count: 0,
        }
    }

    /// `mtime`: Unix time for the DOS fields and, when `ut` is set, an extended timestamp.
    pub fn add(&mut self, name: &str, p: &Packed, mtime: i64, ut: bool) -> io::Result<()> {
        if p.size >= 0xffff_ffff || p.data.len() as u64 >= 0xffff_ffff {
            return Err(io::Error::other(format!(
                "{name}: resources of 4 GiB or more need ZIP64, which is not supported yet"
            )));
        }
        let (t, d) = dos_datetime(mtime);
        let mut extra = Vec::new();
        if ut {
            extra.extend_from_slice(&0x5455u16.to_le_bytes());
            extra.extend_from_slice(&5u16.to_le_bytes());
            extra.push(1);
            extra.extend_from_slice(&(mtime as u32).to_le_bytes());
        }
        let version: u16 = if p.method == 8 { 20 } else { 10 };
        let mut h = Vec::with_capacity(30 + name.len() + extra.len());
        h.extend_from_slice(&LOCAL_SIG.to_le_bytes());
        h.extend_from_slice(&version.to_le_bytes());
        h.extend_from_slice(&0u16.to_le_bytes());
        h.extend_from_slice(&p.method.to_le_bytes());
        h.extend_from_slice(&t.to_le_bytes());
        h.extend_from_slice(&d.to_le_bytes());
        h.extend_from_slice(&p.crc.to_le_bytes());
        h.extend_from_slice(&(p.data.len() as u32).to_le_bytes());
        h.extend_from_slice(&(p.size as u32).to_le_bytes());
        h.extend_from_slice(&(name.len() as u16).to_le_bytes());
        h.extend_from_slice(&(extra.len() as u16).to_le_bytes());
        h.extend_from_slice(name.as_bytes());
        h.extend_from_slice(&extra);
        self.w.write_all(&h)?;
        self.w.write_all(&p.data)?;

        let c = &mut self.central;
        c.extend_from_slice(&CENTRAL_SIG.to_le_bytes());
        c.extend_from_slice(&(0x0300u16 | version).to_le_bytes()); // made by Unix
        c.extend_from_slice(&version.to_le_bytes());
        c.extend_from_slice(&0u16.to_le_bytes());
        c.extend_from_slice(&p.method.to_le_bytes());
        c.extend_from_slice(&t.to_le_bytes());
        c.extend_from_slice(&d.to_le_bytes());
        c.extend_from_slice(&p.crc.to_le_bytes());
        c.extend_from_slice(&(p.data.len() as u32).to_le_bytes());
        c.extend_from_slice(&(p.size as u32).to_le_bytes());
        c.extend_from_slice(&(name.len() as u16).to_le_bytes());
        c.extend_from_slice(&(extra.len() as u16).to_le_bytes());
        c.extend_from_slice(&0u16.to_le_bytes()); // comment
        c.extend_from_slice(&0u16.to_le_bytes()); // disk
        c.extend_from_slice(&0u16.to_le_bytes()); // internal attrs
        c.extend_from_slice(&(0o100644u32 << 16).to_le_bytes());
        c.extend_from_slice(&(self.offset as u32).to_le_bytes());
        c.extend_from_slice(name.as_bytes());
        c.extend_from_slice(&extra);
        self.offset += (h.len() + p.data.len()) as u64;
        self.count += 1;
        Ok(())
    }

    pub fn finish(mut self) -> io::Result<W> {
        self.w.write_all(&self.central)?;
        let mut e = Vec::with_capacity(22);
        e.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
        e.extend_from_slice(&[0; 4]);
        e.extend_from_slice(&self.count.to_le_bytes());
        e.extend_from_slice(&self.count.to_le_bytes());
        e.extend_from_slice(&(self.central.len() as u32).to_le_bytes());
        e.extend_from_slice(&(self.offset as u32).to_le_bytes());
        e.extend_from_slice(&0u16.to_le_bytes());
        self.w.write_all(&e)?;
        self.w.flush()?;
        Ok(self.w)
    }
}

/// One local header as read.
#[derive(Clone, Debug)]
pub struct Entry {
    pub name: String,
    pub method: u16,
    pub flags: u16,
    /// Unix mtime: the extended timestamp if present, else the DOS fields (as UTC).
    pub mtime: i64,
    pub compressed_size: Option<u64>,
    pub size: Option<u64>,
    /// CRC-32 from the local header (0 when a data descriptor carries it).
    pub crc: u32,
    /// The local header's size fields as written (0 when a data descriptor carries them).
    local_sizes: (u64, u64),
    zip64: bool,
}

enum Body {
    None,
    Stored {
        left: u64,
    },
    Deflate {
        z: Box<Decompress>,
        left: Option<u64>,
        done: bool,
        /// fwup's read ended with output still to come (see [`ZipStream::read_body`]).
        drain: bool,
    },
}

/// Test hook: with the `test-hooks` feature (on only in `cargo test` builds of imgtool, through
/// its dev-dependencies) and `IMGTOOL_TEST_SKIP_CRC=1` in the environment, no CRC-32 is
/// compared (data, descriptor, central directory), so the malformed-archive suite can show
/// that it notices. Without the feature it is always false.
fn skip_crc_check() -> bool {
    #[cfg(feature = "test-hooks")]
    {
        static SKIP: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *SKIP.get_or_init(|| std::env::var_os("IMGTOOL_TEST_SKIP_CRC").is_some_and(|v| v == "1"))
    }
    #[cfg(not(feature = "test-hooks"))]
    false
}

/// What an entry turned out to hold, checked against the central directory at the end.
struct Seen {
    name: String,
    crc: u32,
    csize: u64,
    size: u64,
}

/// Streams the entries of a ZIP in file order. Every entry is checked as it ends: CRC-32
/// and both sizes against its local header or data descriptor; at the central directory,
/// every entry against its central record. Encrypted entries and bytes after the end of a
/// deflate stream are refused.
pub struct ZipStream<R: Read> {
    r: BufReader<Counted<R>>,
    /// Where libarchive, reading as fwup does, would end the blocks of the current entry.
    blocks: BlockEnds,
    body: Body,
    cur: Option<Entry>,
    ended: bool,
    crc: crc32fast::Hasher,
    /// Uncompressed and compressed bytes of the current entry so far.
    out_n: u64,
    in_n: u64,
    /// The current entry's end was checked (descriptor read, sizes and CRC compared).
    checked: bool,
    seen: Vec<Seen>,
}

/// The archive's bytes so far, so the stream knows its offset in the file.
struct Counted<R> {
    r: R,
    n: u64,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
        let k = self.r.read(b)?;
        self.n += k as u64;
        Ok(k)
    }
}

/// fwup reads the archive in 16 KiB `read`s and libarchive hands an entry's data on per read:
/// a stored entry up to the end of each read's bytes, a deflated one as much as inflates from
/// them, at most 256 KiB at a time (its output buffer).
const FWUP_READ: u64 = 16 * 1024;
const LIBARCHIVE_OUT: u64 = 256 * 1024;

/// The offsets in the current entry's data where the blocks libarchive would give fwup end,
/// so far. fwup passes each block to its action as one write, and for `fat_write` where the
/// writes end decides what FatFs leaves in a file's last sector.
#[derive(Clone, Default)]
pub struct BlockEnds(std::sync::Arc<std::sync::Mutex<Ends>>);

#[derive(Default)]
struct Ends {
    /// Not yet taken, in order.
    ends: Vec<u64>,
    /// The last end found.
    last: u64,
}

impl BlockEnds {
    fn lock(&self) -> std::sync::MutexGuard<'_, Ends> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The ends in (`from`, `to`], in order; those up to `to` are dropped (a writer moves
    /// forward only, so a long entry costs no more per write than a short one).
    pub fn take(&self, from: u64, to: u64) -> Vec<u64> {
        let mut g = self.lock();
        let n = g.ends.partition_point(|&e| e <= to);
        g.ends.drain(..n).filter(|&e| e > from).collect()
    }

    fn push(&self, end: u64) {
        let mut g = self.lock();
        // libarchive's output buffer splits what one read inflates to.
        while end.saturating_sub(g.last) > LIBARCHIVE_OUT {
            let at = g.last + LIBARCHIVE_OUT;
            g.ends.push(at);
            g.last = at;
        }
        if end > g.last {
            g.ends.push(end);
            g.last = end;
        }
    }

    fn clear(&self) {
        *self.lock() = Ends::default();
    }
}

fn corrupt(why: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why.into())
}

fn archive_err(e: io::Error) -> Error {
    Error::Archive(e.to_string())
}

/// Largest meta.conf-sized name/extra we accept in a header is 64 KiB by format; names of
/// entries past this many do not fit a .fw archive.
const MAX_ENTRIES: usize = 1 << 16;

impl<R: Read> ZipStream<R> {
    /// Where the current entry's libarchive blocks end (see [`BlockEnds`]); the handle stays
    /// valid for later entries.
    pub fn block_ends(&self) -> BlockEnds {
        self.blocks.clone()
    }

    pub fn new(r: R) -> Self {
        ZipStream {
            // 128 KiB: reads of a whole cache segment bypass the buffer (one copy less).
            r: BufReader::with_capacity(128 * 1024, Counted { r, n: 0 }),
            blocks: BlockEnds::default(),
            body: Body::None,
            cur: None,
            ended: false,
            crc: crc32fast::Hasher::new(),
            out_n: 0,
            in_n: 0,
            checked: false,
            seen: Vec::new(),
        }
    }

    fn u16(b: &[u8], at: usize) -> u16 {
        u16::from_le_bytes([b[at], b[at + 1]])
    }
    fn u32(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
    }
    fn u64(b: &[u8], at: usize) -> u64 {
        let mut v = [0u8; 8];
        v.copy_from_slice(&b[at..at + 8]);
        u64::from_le_bytes(v)
    }

    /// Advance to the next entry (skipping what is left of the current one).
    pub fn next_entry(&mut self) -> Result<Option<Entry>> {
        if self.ended {
            return Ok(None);
        }
        if self.cur.is_some() {
            io::copy(self, &mut io::sink()).map_err(archive_err)?;
            self.finish_entry().map_err(archive_err)?;
        }
        let mut sig = [0u8; 4];
        if let Err(e) = self.r.read_exact(&mut sig) {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                self.ended = true;
                return Err(Error::Archive("Truncated ZIP file header".into()));
            }
            return Err(Error::Archive(e.to_string()));
        }
        match u32::from_le_bytes(sig) {
            LOCAL_SIG => {}
            CENTRAL_SIG => {
                self.ended = true;
                self.check_central().map_err(archive_err)?;
                return Ok(None);
            }
            EOCD_SIG => {
                self.ended = true;
                self.check_eocd(0).map_err(archive_err)?;
                return Ok(None);
            }
            _ => {
                self.ended = true;
                return Err(Error::Archive(
                    "Damaged ZIP file or unsupported format variant".into(),
                ));
            }
        }
        if self.seen.len() >= MAX_ENTRIES {
            self.ended = true;
            return Err(Error::Archive(format!(
                "ZIP archive has more than {MAX_ENTRIES} entries"
            )));
        }
        let mut h = [0u8; 26];
        self.r
            .read_exact(&mut h)
            .map_err(|_| Error::Archive("Truncated ZIP file header".into()))?;
        let flags = Self::u16(&h, 2);
        let method = Self::u16(&h, 4);
        let (time, date) = (Self::u16(&h, 6), Self::u16(&h, 8));
        let crc = Self::u32(&h, 10);
        let csize = Self::u32(&h, 14) as u64;
        let usize_ = Self::u32(&h, 18) as u64;
        let nlen = Self::u16(&h, 22) as usize;
        let xlen = Self::u16(&h, 24) as usize;
        let mut nx = vec![0u8; nlen + xlen];
        self.r
            .read_exact(&mut nx)
            .map_err(|_| Error::Archive("Truncated ZIP file header".into()))?;
        let name = String::from_utf8_lossy(&nx[..nlen]).into_owned();
        // Bit 0: traditional PKWARE encryption; bit 6: strong encryption.
        if flags & 0x41 != 0 {
            self.ended = true;
            return Err(Error::Archive(format!(
                "{name}: Passphrase required for this entry (encrypted ZIP entries are not supported)"
            )));
        }
        let mut mtime = unix_from_dos(time, date);
        let (mut csz, mut usz) = (csize, usize_);
        let mut zip64 = false;
        let mut x = &nx[nlen..];
        while x.len() >= 4 {
            let id = Self::u16(x, 0);
            let len = (Self::u16(x, 2) as usize).min(x.len() - 4);
            let d = &x[4..4 + len];
            if id == 0x5455 && len >= 5 && d[0] & 1 != 0 {
                mtime = Self::u32(d, 1) as i64;
            } else if id == 0x0001 {
                zip64 = true;
                let mut at = 0;
                if usize_ == 0xffff_ffff && len >= at + 8 {
                    usz = Self::u64(d, at);
                    at += 8;
                }
                if csize == 0xffff_ffff && len >= at + 8 {
                    csz = Self::u64(d, at);
                }
            }
            x = &x[4 + len..];
        }
        let descriptor = flags & 8 != 0;
        let known = !descriptor || csz != 0;
        let e = Entry {
            name,
            method,
            flags,
            mtime,
            compressed_size: known.then_some(csz),
            size: known.then_some(usz),
            crc,
            local_sizes: (csz, usz),
            zip64,
        };
        self.body = match method {
            0 => {
                let left = match e.compressed_size {
                    Some(n) => {
                        if e.size != Some(n) {
                            self.ended = true;
                            return Err(Error::Archive(format!(
                                "{}: ZIP uncompressed data is wrong size (stored entry of {n} bytes claims {usz})",
                                e.name
                            )));
                        }
                        n
                    }
                    // Stored with the length after the data: only fwup's signature entry.
                    None if e.name == "meta.conf.ed25519" => 64,
                    None => {
                        self.ended = true;
                        return Err(Error::Archive(format!(
                            "{}: stored entry without a size",
                            e.name
                        )));
                    }
                };
                Body::Stored { left }
            }
            8 => Body::Deflate {
                z: Box::new(Decompress::new(false)),
                left: e.compressed_size,
                done: false,
                drain: false,
            },
            m => {
                self.ended = true;
                return Err(Error::Archive(format!(
                    "{}: unsupported compression method {m}",
                    e.name
                )));
            }
        };
        self.crc = crc32fast::Hasher::new();
        self.out_n = 0;
        self.in_n = 0;
        self.checked = false;
        self.blocks.clear();
        self.cur = Some(e.clone());
        Ok(Some(e))
    }

    /// The current entry's data ended: read its data descriptor if it has one and compare
    /// CRC-32 and sizes with what was read.
    fn check_end(&mut self) -> io::Result<()> {
        if self.checked {
            return Ok(());
        }
        self.checked = true;
        let Some(e) = self.cur.as_ref() else {
            return Ok(());
        };
        let name = e.name.clone();
        let crc = std::mem::take(&mut self.crc).finalize();
        let (mut want_crc, mut want_c, mut want_u) = (e.crc, e.compressed_size, e.size);
        if e.flags & 8 != 0 {
            let mut first = [0u8; 4];
            self.r
                .read_exact(&mut first)
                .map_err(|_| corrupt(format!("{name}: Truncated ZIP data descriptor")))?;
            let wide = e.zip64;
            let mut buf = [0u8; 20];
            let (crc_at, n) = if u32::from_le_bytes(first) == DESCRIPTOR_SIG {
                (0, if wide { 20 } else { 12 })
            } else {
                buf[..4].copy_from_slice(&first);
                (0, if wide { 16 } else { 8 })
            };
            let skip = if u32::from_le_bytes(first) == DESCRIPTOR_SIG {
                0
            } else {
                4
            };
            self.r
                .read_exact(&mut buf[skip..skip + n])
                .map_err(|_| corrupt(format!("{name}: Truncated ZIP data descriptor")))?;
            let d_crc = Self::u32(&buf, crc_at);
            let (d_c, d_u) = if wide {
                (Self::u64(&buf, 4), Self::u64(&buf, 12))
            } else {
                (Self::u32(&buf, 4) as u64, Self::u32(&buf, 8) as u64)
            };
            // A descriptor that disagrees with sizes the local header did give is a lie too.
            let (lc, lu) = e.local_sizes;
            if want_c.is_some_and(|c| c != d_c)
                || want_u.is_some_and(|u| u != d_u)
                || (lc != 0 && lc != d_c)
                || (lu != 0 && lu != d_u)
            {
                return Err(corrupt(format!(
                    "{name}: ZIP data descriptor sizes disagree with the local header"
                )));
            }
            if e.crc != 0 && e.crc != d_crc && !skip_crc_check() {
                return Err(corrupt(format!(
                    "{name}: ZIP data descriptor CRC disagrees with the local header"
                )));
            }
            want_crc = d_crc;
            want_c = Some(d_c);
            want_u = Some(d_u);
        }
        if want_u.is_some_and(|u| u != self.out_n) {
            return Err(corrupt(format!(
                "{name}: ZIP uncompressed data is wrong size ({} bytes, the archive says {})",
                self.out_n,
                want_u.unwrap_or(0)
            )));
        }
        if want_c.is_some_and(|c| c != self.in_n) {
            return Err(corrupt(format!(
                "{name}: ZIP compressed data is wrong size ({} bytes, the archive says {})",
                self.in_n,
                want_c.unwrap_or(0)
            )));
        }
        if crc != want_crc && !skip_crc_check() {
            return Err(corrupt(format!(
                "{name}: ZIP bad CRC (0x{crc:08x}, the archive says 0x{want_crc:08x})"
            )));
        }
        self.seen.push(Seen {
            name,
            crc,
            csize: self.in_n,
            size: self.out_n,
        });
        Ok(())
    }

    fn finish_entry(&mut self) -> io::Result<()> {
        let r = self.check_end();
        self.cur = None;
        self.body = Body::None;
        if r.is_err() {
            self.ended = true;
        }
        r
    }

    /// The central directory (its first signature already read): one record per entry,
    /// in order, agreeing with what the entries held; then the end record.
    fn check_central(&mut self) -> io::Result<()> {
        let mut i = 0usize;
        loop {
            let mut h = [0u8; 42];
            self.r
                .read_exact(&mut h)
                .map_err(|_| corrupt("Truncated ZIP central directory"))?;
            let flags = Self::u16(&h, 4);
            let crc = Self::u32(&h, 12);
            let mut csize = Self::u32(&h, 16) as u64;
            let mut size = Self::u32(&h, 20) as u64;
            let nlen = Self::u16(&h, 24) as usize;
            let xlen = Self::u16(&h, 26) as usize;
            let clen = Self::u16(&h, 28) as usize;
            let mut nx = vec![0u8; nlen + xlen + clen];
            self.r
                .read_exact(&mut nx)
                .map_err(|_| corrupt("Truncated ZIP central directory"))?;
            let name = String::from_utf8_lossy(&nx[..nlen]).into_owned();
            let mut x = &nx[nlen..nlen + xlen];
            while x.len() >= 4 {
                let id = Self::u16(x, 0);
                let len = (Self::u16(x, 2) as usize).min(x.len() - 4);
                let d = &x[4..4 + len];
                if id == 0x0001 {
                    let mut at = 0;
                    if size == 0xffff_ffff && len >= at + 8 {
                        size = Self::u64(d, at);
                        at += 8;
                    }
                    if csize == 0xffff_ffff && len >= at + 8 {
                        csize = Self::u64(d, at);
                    }
                }
                x = &x[4 + len..];
            }
            let Some(s) = self.seen.get(i) else {
                return Err(corrupt(format!(
                    "ZIP central directory lists '{name}', which is not in the archive"
                )));
            };
            if flags & 0x41 != 0 {
                return Err(corrupt(format!(
                    "{name}: Passphrase required for this entry (encrypted ZIP entries are not supported)"
                )));
            }
            let crc_differs = s.crc != crc && !skip_crc_check();
            if s.name != name || crc_differs || s.csize != csize || s.size != size {
                return Err(corrupt(format!(
                    "ZIP central directory record for '{name}' disagrees with entry '{}' (CRC or sizes)",
                    s.name
                )));
            }
            i += 1;
            let mut sig = [0u8; 4];
            self.r
                .read_exact(&mut sig)
                .map_err(|_| corrupt("Truncated ZIP central directory"))?;
            match u32::from_le_bytes(sig) {
                CENTRAL_SIG => continue,
                EOCD_SIG => return self.check_eocd(i),
                // ZIP64 end records: the counts were already matched record by record.
                0x0606_4b50 | 0x0706_4b50 if i == self.seen.len() => return Ok(()),
                _ => return Err(corrupt("Damaged ZIP central directory")),
            }
        }
    }

    fn check_eocd(&mut self, records: usize) -> io::Result<()> {
        let mut e = [0u8; 18];
        self.r
            .read_exact(&mut e)
            .map_err(|_| corrupt("Truncated ZIP end of central directory"))?;
        let total = Self::u16(&e, 6) as usize;
        if records != self.seen.len() || (total != records && total != 0xffff) {
            return Err(corrupt(format!(
                "ZIP central directory lists {} entries, but the archive holds {}",
                total.max(records),
                self.seen.len()
            )));
        }
        Ok(())
    }

    /// Read the current entry whole (for meta.conf and its signature). Reading stops after
    /// `max` bytes; a shorter entry is checked (CRC, sizes) before it is returned.
    pub fn read_all(&mut self, max: usize) -> Result<Vec<u8>> {
        let mut v = Vec::new();
        self.take(max as u64)
            .read_to_end(&mut v)
            .map_err(archive_err)?;
        if v.len() < max {
            self.check_end().map_err(archive_err)?;
        }
        Ok(v)
    }
}

const EOCD_SIG: u32 = 0x0605_4b50;

impl<R: Read> Read for ZipStream<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        let n = self.read_body(out)?;
        if n == 0 {
            self.check_end()?;
        } else {
            self.crc.update(&out[..n]);
            self.out_n += n as u64;
            // Check the entry in the read that gives its last byte, as libarchive does: a
            // reader that stops at the length it expects then hears of a CRC lie before it
            // compares its own hash.
            if matches!(
                self.body,
                Body::Stored { left: 0 } | Body::Deflate { done: true, .. }
            ) {
                self.check_end()?;
            }
        }
        Ok(n)
    }
}

impl<R: Read> ZipStream<R> {
    fn read_body(&mut self, out: &mut [u8]) -> io::Result<usize> {
        match &mut self.body {
            Body::None => Ok(0),
            Body::Stored { left } => {
                if *left == 0 {
                    return Ok(0);
                }
                let rest = usize::try_from(*left).unwrap_or(usize::MAX);
                let want = out.len().min(rest);
                let from = self.r.get_ref().n - self.r.buffer().len() as u64;
                let n = self.r.read(&mut out[..want])?;
                if n == 0 {
                    return Err(corrupt("Truncated ZIP file data"));
                }
                *left -= n as u64;
                // Each of fwup's reads that ends inside these bytes ends a block.
                let start = self.in_n;
                let mut m = (from / FWUP_READ + 1) * FWUP_READ;
                while m <= from + n as u64 {
                    self.blocks.push(start + (m - from));
                    m += FWUP_READ;
                }
                self.in_n += n as u64;
                if *left == 0 {
                    self.blocks.push(self.in_n);
                }
                Ok(n)
            }
            Body::Deflate {
                z,
                left,
                done,
                drain,
            } => loop {
                if *done {
                    return Ok(0);
                }
                if *drain {
                    // The input up to the end of fwup's read is in; what it inflates to did
                    // not fit `out`. Its block ends once nothing more comes out.
                    let bo = z.total_out();
                    z.decompress(&[], out, FlushDecompress::None)
                        .map_err(|_| corrupt("ZIP decompression failed"))?;
                    let made = (z.total_out() - bo) as usize;
                    if made < out.len() {
                        *drain = false;
                        self.blocks.push(z.total_out());
                    }
                    if made > 0 {
                        return Ok(made);
                    }
                }
                let to_read_end = (FWUP_READ
                    - (self.r.get_ref().n - self.r.buffer().len() as u64) % FWUP_READ)
                    as usize;
                let input = self.r.fill_buf()?;
                let avail = match left {
                    Some(l) => input.len().min(usize::try_from(*l).unwrap_or(usize::MAX)),
                    None => input.len(),
                };
                let avail = avail.min(to_read_end);
                if avail == 0 && input.is_empty() {
                    return Err(corrupt("ZIP decompression failed (truncated input)"));
                }
                let (bi, bo) = (z.total_in(), z.total_out());
                let st = z
                    .decompress(&input[..avail], out, FlushDecompress::None)
                    .map_err(|_| corrupt("ZIP decompression failed"))?;
                let used = (z.total_in() - bi) as usize;
                let made = (z.total_out() - bo) as usize;
                self.r.consume(used);
                self.in_n += used as u64;
                if let Some(l) = left {
                    *l -= used as u64;
                }
                if used == to_read_end && st != Status::StreamEnd {
                    if made < out.len() {
                        self.blocks.push(z.total_out());
                    } else {
                        *drain = true;
                    }
                }
                if st == Status::StreamEnd {
                    self.blocks.push(z.total_out());
                    *done = true;
                    if left.is_some_and(|l| l > 0) {
                        let name = self.cur.as_ref().map(|e| e.name.as_str()).unwrap_or("");
                        return Err(corrupt(format!(
                            "{name}: ZIP entry has {} bytes after the end of its deflate stream",
                            left.unwrap_or(0)
                        )));
                    }
                }
                if made > 0 || *done {
                    return Ok(made);
                }
                if avail == 0 {
                    return Err(corrupt("ZIP decompression failed (truncated input)"));
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let big: Vec<u8> = (0..3_000_000u32)
            .map(|i| (i % 251) as u8 ^ (i / 7000) as u8)
            .collect();
        let mut w = ZipWriter::new(Vec::new());
        w.add(
            "meta.conf",
            &pack(b"meta-product=x\n", 9),
            1_700_000_000,
            true,
        )
        .unwrap();
        w.add("data/big", &pack(&big, 6), 315_532_800, false)
            .unwrap();
        let bytes = w.finish().unwrap();
        let mut z = ZipStream::new(&bytes[..]);
        let e = z.next_entry().unwrap().unwrap();
        assert_eq!(e.name, "meta.conf");
        assert_eq!(e.mtime, 1_700_000_000);
        assert_eq!(z.read_all(1000).unwrap(), b"meta-product=x\n");
        let e = z.next_entry().unwrap().unwrap();
        assert_eq!(e.name, "data/big");
        let mut v = Vec::new();
        z.read_to_end(&mut v).unwrap();
        assert_eq!(v, big);
        assert!(z.next_entry().unwrap().is_none());
        assert_eq!(iso8601(1_700_000_000), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn stored_blocks_end_where_fwups_reads_do() {
        let data: Vec<u8> = (0..40_000u32).map(|i| (i % 253) as u8).collect();
        let p = pack(&data, 0);
        assert_eq!(p.method, 0);
        let mut w = ZipWriter::new(Vec::new());
        w.add("data/x", &p, 315_532_800, false).unwrap();
        let bytes = w.finish().unwrap();
        let start = bytes.windows(64).position(|x| x == &data[..64]).unwrap() as u64;
        let mut z = ZipStream::new(&bytes[..]);
        z.next_entry().unwrap().unwrap();
        let ends = z.block_ends();
        // Reads of any size, the first ending on a mark: the ends are the archive's 16 KiB
        // marks, then the entry's end.
        let mut first = vec![0u8; (FWUP_READ - start) as usize];
        z.read_exact(&mut first).unwrap();
        let mut buf = [0u8; 1000];
        while z.read(&mut buf).unwrap() > 0 {}
        let mut want: Vec<u64> = (1..4)
            .map(|k| k * FWUP_READ - start)
            .filter(|&e| e < data.len() as u64)
            .collect();
        want.push(data.len() as u64);
        assert_eq!(ends.take(0, u64::MAX), want);
    }

    #[test]
    fn incompressible_pieces_are_stored_blocks() {
        // 3 MiB of noise between text: the noise goes in as stored blocks, and the stream
        // still inflates to the input.
        let mut x = 0x1234_5678u64;
        let mut data: Vec<u8> = b"some text ".repeat(100_000);
        data.extend((0..3 << 20).map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        }));
        data.extend_from_slice(&b"more text ".repeat(100_000));
        let p = pack(&data, 9);
        assert_eq!(p.method, 8);
        assert!(p.data.len() < data.len());
        let mut d = flate2::read::DeflateDecoder::new(&p.data[..]);
        let mut back = Vec::new();
        d.read_to_end(&mut back).unwrap();
        assert_eq!(back, data);
    }

    /// One deflated entry (sizes in the local header, no descriptor), then `patch` applied
    /// to the bytes; returns what reading it whole gives.
    fn read_patched(patch: impl Fn(&mut Vec<u8>)) -> std::result::Result<Vec<u8>, String> {
        let data: Vec<u8> = b"hello hello hello hello ".repeat(100);
        let mut w = ZipWriter::new(Vec::new());
        w.add("data/x", &pack(&data, 9), 0, false).unwrap();
        let mut bytes = w.finish().unwrap();
        patch(&mut bytes);
        let mut z = ZipStream::new(&bytes[..]);
        z.next_entry().map_err(|e| e.to_string())?;
        let mut v = Vec::new();
        z.read_to_end(&mut v).map_err(|e| e.to_string())?;
        z.next_entry().map_err(|e| e.to_string())?;
        Ok(v)
    }

    #[test]
    fn lies_are_errors() {
        assert!(read_patched(|_| {}).is_ok());
        // CRC-32 in the local header.
        let e = read_patched(|b| b[14] ^= 1).unwrap_err();
        assert!(e.contains("ZIP bad CRC"), "{e}");
        // Uncompressed size.
        let e = read_patched(|b| b[22] ^= 1).unwrap_err();
        assert!(e.contains("wrong size"), "{e}");
        // Encrypted.
        let e = read_patched(|b| b[6] |= 1).unwrap_err();
        assert!(e.contains("Passphrase required"), "{e}");
        // Central directory CRC disagrees with the entry.
        let e = read_patched(|b| {
            let cd = b.len() - 22 - 46 - 6;
            b[cd + 16] ^= 1;
        })
        .unwrap_err();
        assert!(e.contains("central directory"), "{e}");
        // Bytes after the end of the deflate stream (compressed size grown to cover them).
        let e = read_patched(|b| {
            let csize = u32::from_le_bytes(b[18..22].try_into().unwrap());
            let end = 30 + 6 + csize as usize;
            b.splice(end..end, *b"JUNK");
            b[18..22].copy_from_slice(&(csize + 4).to_le_bytes());
        })
        .unwrap_err();
        assert!(e.contains("after the end of its deflate stream"), "{e}");
    }

    #[test]
    fn data_descriptor_lies_are_errors() {
        // The same entry with its sizes and CRC moved to a data descriptor.
        let with_descriptor = |lie: u8| {
            move |b: &mut Vec<u8>| {
                let crc: [u8; 4] = b[14..18].try_into().unwrap();
                let sizes: [u8; 8] = b[18..26].try_into().unwrap();
                b[6] |= 8;
                b[14..26].fill(0);
                b[14 + 4] = 0; // compressed size 0: known only from the descriptor
                let csize = u32::from_le_bytes(sizes[..4].try_into().unwrap()) as usize;
                let end = 30 + 6 + csize;
                let mut d = DESCRIPTOR_SIG.to_le_bytes().to_vec();
                d.extend_from_slice(&crc);
                d.extend_from_slice(&sizes);
                d[4 + lie as usize % 12] ^= u8::from(lie > 0);
                b.splice(end..end, d);
                // The central directory offset moved by 16.
                let n = b.len();
                let off = u32::from_le_bytes(b[n - 6..n - 2].try_into().unwrap()) + 16;
                b[n - 6..n - 2].copy_from_slice(&off.to_le_bytes());
            }
        };
        assert!(read_patched(with_descriptor(0)).is_ok());
        let e = read_patched(with_descriptor(1)).unwrap_err();
        assert!(e.contains("ZIP bad CRC"), "{e}");
        let e = read_patched(with_descriptor(9)).unwrap_err();
        assert!(e.contains("wrong size"), "{e}");
    }

    #[test]
    fn truncated() {
        let big: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 256) as u8).collect();
        let mut w = ZipWriter::new(Vec::new());
        w.add("data/x", &pack(&big, 9), 0, false).unwrap();
        let bytes = w.finish().unwrap();
        let mut z = ZipStream::new(&bytes[..bytes.len() / 2]);
        z.next_entry().unwrap().unwrap();
        let err = io::copy(&mut z, &mut io::sink()).unwrap_err();
        assert!(err.to_string().contains("ZIP decompression failed"));
    }
}
