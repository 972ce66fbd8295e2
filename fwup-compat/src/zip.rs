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
    },
}

/// Streams the entries of a ZIP in file order.
pub struct ZipStream<R: Read> {
    r: BufReader<R>,
    body: Body,
    cur: Option<Entry>,
    ended: bool,
}

fn corrupt(why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why.to_string())
}

impl<R: Read> ZipStream<R> {
    pub fn new(r: R) -> Self {
        ZipStream {
            // 128 KiB: reads of a whole cache segment bypass the buffer (one copy less).
            r: BufReader::with_capacity(128 * 1024, r),
            body: Body::None,
            cur: None,
            ended: false,
        }
    }

    fn u16(b: &[u8], at: usize) -> u16 {
        u16::from_le_bytes([b[at], b[at + 1]])
    }
    fn u32(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }

    /// Advance to the next entry (skipping what is left of the current one).
    pub fn next_entry(&mut self) -> Result<Option<Entry>> {
        if self.ended {
            return Ok(None);
        }
        if self.cur.is_some() {
            io::copy(self, &mut io::sink()).map_err(|e| Error::Archive(e.to_string()))?;
            self.finish_entry()
                .map_err(|e| Error::Archive(e.to_string()))?;
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
            CENTRAL_SIG | 0x0605_4b50 => {
                self.ended = true;
                return Ok(None);
            }
            _ => {
                return Err(Error::Archive(
                    "Damaged ZIP file or unsupported format variant".into(),
                ))
            }
        }
        let mut h = [0u8; 26];
        self.r
            .read_exact(&mut h)
            .map_err(|_| Error::Archive("Truncated ZIP file header".into()))?;
        let flags = Self::u16(&h, 2);
        let method = Self::u16(&h, 4);
        let (time, date) = (Self::u16(&h, 6), Self::u16(&h, 8));
        let csize = Self::u32(&h, 14) as u64;
        let usize_ = Self::u32(&h, 18) as u64;
        let nlen = Self::u16(&h, 22) as usize;
        let xlen = Self::u16(&h, 24) as usize;
        let mut nx = vec![0u8; nlen + xlen];
        self.r
            .read_exact(&mut nx)
            .map_err(|_| Error::Archive("Truncated ZIP file header".into()))?;
        let name = String::from_utf8_lossy(&nx[..nlen]).into_owned();
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
                if len >= 8 && usize_ == 0xffff_ffff {
                    usz = u64::from_le_bytes(d[0..8].try_into().unwrap());
                }
                if len >= 16 && csize == 0xffff_ffff {
                    csz = u64::from_le_bytes(d[8..16].try_into().unwrap());
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
            zip64,
        };
        self.body = match method {
            0 => {
                let left = match e.compressed_size {
                    Some(n) => n,
                    // Stored with the length after the data: only fwup's signature entry.
                    None if e.name == "meta.conf.ed25519" => 64,
                    None => {
                        return Err(Error::Archive(format!(
                            "{}: stored entry without a size",
                            e.name
                        )))
                    }
                };
                Body::Stored { left }
            }
            8 => Body::Deflate {
                z: Box::new(Decompress::new(false)),
                left: e.compressed_size,
                done: false,
            },
            m => {
                return Err(Error::Archive(format!(
                    "{}: unsupported compression method {m}",
                    e.name
                )))
            }
        };
        self.cur = Some(e.clone());
        Ok(Some(e))
    }

    fn finish_entry(&mut self) -> io::Result<()> {
        let Some(e) = self.cur.take() else {
            return Ok(());
        };
        self.body = Body::None;
        if e.flags & 8 != 0 {
            let mut first = [0u8; 4];
            self.r.read_exact(&mut first)?;
            let rest = if e.zip64 { 16 } else { 8 };
            let extra = if u32::from_le_bytes(first) == DESCRIPTOR_SIG {
                4
            } else {
                0
            };
            let mut buf = vec![0u8; rest + extra];
            self.r.read_exact(&mut buf)?;
        }
        Ok(())
    }

    /// Read the current entry whole (for meta.conf and its signature).
    pub fn read_all(&mut self, max: usize) -> Result<Vec<u8>> {
        let mut v = Vec::new();
        self.take(max as u64)
            .read_to_end(&mut v)
            .map_err(|e| Error::Archive(e.to_string()))?;
        Ok(v)
    }
}

impl<R: Read> Read for ZipStream<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        match &mut self.body {
            Body::None => Ok(0),
            Body::Stored { left } => {
                if *left == 0 {
                    return Ok(0);
                }
                let want = out.len().min(*left as usize);
                let n = self.r.read(&mut out[..want])?;
                if n == 0 {
                    return Err(corrupt("Truncated ZIP file data"));
                }
                *left -= n as u64;
                Ok(n)
            }
            Body::Deflate { z, left, done } => loop {
                if *done {
                    return Ok(0);
                }
                let input = self.r.fill_buf()?;
                let avail = match left {
                    Some(l) => input.len().min(*l as usize),
                    None => input.len(),
                };
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
                if let Some(l) = left {
                    *l -= used as u64;
                }
                if st == Status::StreamEnd {
                    *done = true;
                    if let Some(l) = left {
                        // Skip any bytes after the deflate stream end.
                        let mut rest = *l;
                        while rest > 0 {
                            let b = self.r.fill_buf()?;
                            if b.is_empty() {
                                break;
                            }
                            let k = b.len().min(rest as usize);
                            self.r.consume(k);
                            rest -= k as u64;
                        }
                        *l = 0;
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
