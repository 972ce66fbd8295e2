//! VCDIFF decoder for the delta resources fwup applies (`delta-source-raw-*`,
//! `delta-source-fat-*`): patches made with `xdelta3 -e -A -S -s OLD NEW PATCH`.
//!
//! Spec: RFC 3284 (<https://www.rfc-editor.org/rfc/rfc3284>) with xdelta3's one extension,
//! the per-window Adler-32 of the decoded target (window indicator bit `VCD_ADLER32`, 0x04,
//! four big-endian bytes after the section lengths).
//!
//! Supported: the default code table (RFC 3284 §5.6) with its near(4)/same(3) address
//! caches, ADD/RUN/COPY, copies from the source segment and from the target window decoded
//! so far (overlapping copies repeat), an application header (skipped; `xdelta3` without
//! `-A` stores file names there). Refused with [`Error::Unsupported`], as fwup's xdelta3
//! build refuses them: secondary compression (`xdelta3` without `-S`), application-defined
//! code tables, `VCD_TARGET` windows and per-section compression.
//!
//! Memory is bounded window by window: the decoder holds one window's delta encoding and its
//! decoded target (at most [`MAX_WINDOW`] bytes; xdelta3's default window is 8 MiB) plus a
//! few [`SOURCE_BLOCK`]-sized blocks of the source. The source is never read whole.

use std::io::{self, Read};

/// xdelta3's hard limit on a target window (`XD3_HARDMAXWINSIZE`); larger claims are refused
/// before anything is allocated.
pub const MAX_WINDOW: u64 = 1 << 26;

/// The source is read in blocks of this size at offsets that are multiples of it (the last
/// block ends at the source's length). With a sector-multiple source length every read is
/// sector aligned, which encrypted sources need.
pub const SOURCE_BLOCK: usize = 64 * 1024;

/// Blocks of the source kept between copies.
const SOURCE_CACHE_BLOCKS: usize = 4;

/// Longest application header accepted (xdelta3 writes `target//source/` names there).
const MAX_APP_HEADER: u64 = 1 << 20;

const MAGIC: [u8; 3] = [0xd6, 0xc3, 0xc4];

// Header indicator bits (RFC 3284 §4.1; VCD_DECOMPRESS is xdelta3's VCD_SECONDARY).
const VCD_DECOMPRESS: u8 = 0x01;
const VCD_CODETABLE: u8 = 0x02;
const VCD_APPHEADER: u8 = 0x04;

// Window indicator bits (RFC 3284 §4.2; VCD_ADLER32 is xdelta3's extension).
const VCD_SOURCE: u8 = 0x01;
const VCD_TARGET: u8 = 0x02;
const VCD_ADLER32: u8 = 0x04;

/// Errors while decoding a delta. The messages name what is wrong and, where it helps, how
/// the delta should have been made.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "not a VCDIFF delta: it starts with {found:02x?}, expected d6 c3 c4 00 \
         (make delta resources with `xdelta3 -e -A -S -s OLD NEW DELTA`)"
    )]
    BadMagic { found: Vec<u8> },
    #[error("VCDIFF version {0:#04x} is not supported (only version 0, which xdelta3 writes)")]
    Version(u8),
    #[error("corrupt VCDIFF header: {0}")]
    BadHeader(String),
    #[error(
        "VCDIFF delta uses {0}, which is not supported; make it with `xdelta3 -e -A -S` \
         (no secondary compression)"
    )]
    Unsupported(String),
    #[error("VCDIFF delta is truncated: it ends inside {what} (delta byte {offset})")]
    Truncated { what: &'static str, offset: u64 },
    #[error("corrupt VCDIFF delta in window {window} (starting at delta byte {offset}): {reason}")]
    Corrupt {
        window: u64,
        offset: u64,
        reason: String,
    },
    #[error(
        "VCDIFF window {window} needs source bytes {start}..{end}, but the source has only \
         {source_len} bytes: the delta was made against a larger or different source \
         (check delta-source-raw-count / delta-source-fat-path)"
    )]
    SourceOutOfRange {
        window: u64,
        start: u64,
        end: u64,
        source_len: u64,
    },
    #[error(
        "VCDIFF window {window} decodes to Adler-32 {actual:08x}, but the delta expects \
         {expected:08x}: the source is not the one the delta was made from"
    )]
    Checksum {
        window: u64,
        expected: u32,
        actual: u32,
    },
    #[error("VCDIFF window {window} claims a {len}-byte target; the limit is {max} bytes")]
    WindowTooLarge { window: u64, len: u64, max: u64 },
    #[error("reading delta source bytes {offset}..{end}: {source}")]
    SourceRead {
        offset: u64,
        end: u64,
        #[source]
        source: io::Error,
    },
    #[error("reading the VCDIFF delta: {0}")]
    Io(#[source] io::Error),
    #[error("the VCDIFF decoder already failed; its output is incomplete")]
    Failed,
}

pub type Result<T> = std::result::Result<T, Error>;

impl From<Error> for io::Error {
    /// Errors reading the delta keep their kind; decoding errors become `InvalidData` with the
    /// [`Error`] inside (`io::Error::get_ref` + `downcast_ref` gets it back).
    fn from(e: Error) -> Self {
        match e {
            Error::Io(inner) => inner,
            other => io::Error::new(io::ErrorKind::InvalidData, other),
        }
    }
}

/// Where COPY instructions read the old contents from: the region named by
/// `delta-source-raw-offset`/`-count` (decrypted if `delta-source-raw-options` says so) or
/// the file named by `delta-source-fat-path`.
pub trait Source {
    /// Fill `buf` with the bytes at `offset..offset + buf.len()`. The decoder only asks for
    /// ranges inside the length it was given, in [`SOURCE_BLOCK`]-aligned blocks.
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
}

impl Source for &[u8] {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let start = usize::try_from(offset).map_err(io::Error::other)?;
        let src = start
            .checked_add(buf.len())
            .and_then(|end| self.get(start..end))
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "past end of source"))?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

impl Source for std::fs::File {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(self, buf, offset)
    }
}

impl<S: Source + ?Sized> Source for &mut S {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        (**self).read_at(offset, buf)
    }
}

impl<S: Source + ?Sized> Source for Box<S> {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        (**self).read_at(offset, buf)
    }
}

/// A [`Source`] from a closure `|offset, buf| -> io::Result<()>`.
pub struct FnSource<F>(pub F);

impl<F: FnMut(u64, &mut [u8]) -> io::Result<()>> Source for FnSource<F> {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        (self.0)(offset, buf)
    }
}

/// The file header (RFC 3284 §4.1) as far as a default-table, uncompressed delta has one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Header {
    /// xdelta3's application header (`target//source/` file names) when made without `-A`.
    pub app_header: Option<Vec<u8>>,
    /// Bytes the header took.
    pub len: u64,
}

/// Whether `prefix` starts like a VCDIFF delta (magic and version 0).
pub fn is_vcdiff(prefix: &[u8]) -> bool {
    prefix.len() >= 4 && prefix[..3] == MAGIC && prefix[3] == 0
}

/// Read and check the file header only, as `fwup --verify` does for a delta resource whose
/// target cannot be rebuilt without the device: bad magic, secondary compression or a custom
/// code table are reported here.
pub fn read_header<R: Read>(patch: R) -> Result<Header> {
    let mut r = Counting {
        inner: patch,
        pos: 0,
    };
    parse_header(&mut r)
}

/// Streaming VCDIFF decoder: pulls the delta from `R`, reads old bytes from `S`, and yields
/// the target in order, one window at a time ([`Decoder::next_window`]) or through
/// [`std::io::Read`]. Only the header is read by [`Decoder::new`].
pub struct Decoder<R, S> {
    patch: Counting<R>,
    source: SourceCache<S>,
    header: Header,
    window: u64,
    /// Reused buffer for one window's delta encoding.
    enc: Vec<u8>,
    /// The current window's decoded target.
    out: Vec<u8>,
    /// How much of `out` [`Read::read`] has handed out.
    out_pos: usize,
    total_out: u64,
    state: State,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Running,
    Done,
    Failed,
}

impl<R: Read, S: Source> Decoder<R, S> {
    /// Start decoding `patch` against `source`, whose length is `source_len` bytes (fwup:
    /// `delta-source-raw-count * 512`, or the FAT file's size). Reads the file header.
    pub fn new(patch: R, source: S, source_len: u64) -> Result<Self> {
        let mut patch = Counting {
            inner: patch,
            pos: 0,
        };
        let header = parse_header(&mut patch)?;
        Ok(Decoder {
            patch,
            source: SourceCache::new(source, source_len),
            header,
            window: 0,
            enc: Vec::new(),
            out: Vec::new(),
            out_pos: 0,
            total_out: 0,
            state: State::Running,
        })
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Target bytes produced so far.
    pub fn total_out(&self) -> u64 {
        self.total_out
    }

    /// Decode the next window and return its target bytes (`None` at the end of the delta).
    /// Don't mix with [`Read::read`]: a window returned here counts as consumed.
    pub fn next_window(&mut self) -> Result<Option<&[u8]>> {
        if !self.advance()? {
            return Ok(None);
        }
        self.out_pos = self.out.len();
        Ok(Some(&self.out))
    }

    /// Decode the next window into `self.out`; false at the clean end of the delta.
    fn advance(&mut self) -> Result<bool> {
        match self.state {
            State::Done => return Ok(false),
            State::Failed => return Err(Error::Failed),
            State::Running => {}
        }
        // The previous window is fully consumed by now.
        self.out.clear();
        self.out_pos = 0;
        match self.decode_window() {
            Ok(true) => {
                self.window += 1;
                self.total_out += self.out.len() as u64;
                Ok(true)
            }
            Ok(false) => {
                self.state = State::Done;
                Ok(false)
            }
            Err(e) => {
                self.state = State::Failed;
                self.out.clear();
                Err(e)
            }
        }
    }

    fn corrupt(&self, offset: u64, reason: impl Into<String>) -> Error {
        Error::Corrupt {
            window: self.window,
            offset,
            reason: reason.into(),
        }
    }

    /// Window header and delta encoding (RFC 3284 §4.2, §4.3), then the instructions.
    fn decode_window(&mut self) -> Result<bool> {
        let start = self.patch.pos;
        let Some(ind) = self.patch.byte_or_eof()? else {
            return Ok(false);
        };
        if ind & !(VCD_SOURCE | VCD_TARGET | VCD_ADLER32) != 0 {
            return Err(self.corrupt(start, format!("unknown window indicator bits {ind:#04x}")));
        }
        if ind & VCD_TARGET != 0 {
            return Err(Error::Unsupported(
                "VCD_TARGET windows (copies from earlier target windows)".into(),
            ));
        }
        let (seg_len, seg_pos) = if ind & VCD_SOURCE != 0 {
            let len = self.patch.varint("the source segment length")?;
            let pos = self.patch.varint("the source segment position")?;
            (len, pos)
        } else {
            (0, 0)
        };
        let seg_end = seg_pos
            .checked_add(seg_len)
            .ok_or_else(|| self.corrupt(start, "source segment overflows 64 bits"))?;
        if seg_end > self.source.len {
            return Err(Error::SourceOutOfRange {
                window: self.window,
                start: seg_pos,
                end: seg_end,
                source_len: self.source.len,
            });
        }
        let seg_len = usize::try_from(seg_len)
            .map_err(|_| self.corrupt(start, "source segment too large"))?;

        let enc_len = self.patch.varint("the delta encoding length")?;
        // Sections hold at most a target's worth of data plus instructions and addresses.
        if enc_len > 4 * MAX_WINDOW {
            return Err(self.corrupt(start, format!("delta encoding of {enc_len} bytes")));
        }
        self.enc.clear();
        let got = (&mut self.patch.inner)
            .take(enc_len)
            .read_to_end(&mut self.enc)
            .map_err(Error::Io)?;
        self.patch.pos += got as u64;
        if (got as u64) < enc_len {
            return Err(Error::Truncated {
                what: "a window's delta encoding",
                offset: self.patch.pos,
            });
        }

        let enc = std::mem::take(&mut self.enc);
        let result = self.decode_encoding(&enc, ind, start, seg_pos, seg_len);
        self.enc = enc;
        result.map(|()| true)
    }

    fn decode_encoding(
        &mut self,
        enc: &[u8],
        ind: u8,
        start: u64,
        seg_pos: u64,
        seg_len: usize,
    ) -> Result<()> {
        let mut c = Cursor { buf: enc, pos: 0 };
        let bad = |what: &str| format!("{what} runs past the delta encoding");
        let tgt_len = c
            .varint()
            .ok_or_else(|| self.corrupt(start, bad("target length")))?;
        if tgt_len > MAX_WINDOW {
            return Err(Error::WindowTooLarge {
                window: self.window,
                len: tgt_len,
                max: MAX_WINDOW,
            });
        }
        let tgt_len = tgt_len as usize;
        let del_ind = c
            .byte()
            .ok_or_else(|| self.corrupt(start, bad("delta indicator")))?;
        if del_ind != 0 {
            return Err(Error::Unsupported(format!(
                "compressed window sections (delta indicator {del_ind:#04x})"
            )));
        }
        let mut lens = [0usize; 3];
        for (len, name) in lens.iter_mut().zip(["data", "instruction", "address"]) {
            let v = c
                .varint()
                .ok_or_else(|| self.corrupt(start, bad(&format!("{name} section length"))))?;
            *len = usize::try_from(v)
                .ok()
                .filter(|&v| v <= enc.len())
                .ok_or_else(|| self.corrupt(start, format!("{name} section of {v} bytes")))?;
        }
        let checksum = if ind & VCD_ADLER32 != 0 {
            let b = c
                .take(4)
                .ok_or_else(|| self.corrupt(start, bad("Adler-32")))?;
            Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        } else {
            None
        };
        let [data_len, inst_len, addr_len] = lens;
        if c.remaining() != data_len + inst_len + addr_len {
            return Err(self.corrupt(
                start,
                format!(
                    "sections of {data_len}+{inst_len}+{addr_len} bytes don't fill the \
                     {}-byte delta encoding",
                    enc.len()
                ),
            ));
        }
        let data = c.take(data_len).unwrap_or_default();
        let inst = c.take(inst_len).unwrap_or_default();
        let addr = c.take(addr_len).unwrap_or_default();

        self.out.clear();
        self.out_pos = 0;
        self.out.reserve(tgt_len);
        let mut w = WindowDecode {
            data: Cursor { buf: data, pos: 0 },
            inst: Cursor { buf: inst, pos: 0 },
            addr: Cursor { buf: addr, pos: 0 },
            cache: AddressCache::default(),
            seg_pos,
            seg_len,
            tgt_len,
        };
        w.run(&mut self.out, &mut self.source)
            .map_err(|e| match e {
                Fault::Corrupt(reason) => self.corrupt(start, reason),
                Fault::Source(e) => e,
            })?;

        if let Some(expected) = checksum {
            let actual = adler2::adler32_slice(&self.out);
            if actual != expected {
                return Err(Error::Checksum {
                    window: self.window,
                    expected,
                    actual,
                });
            }
        }
        Ok(())
    }
}

impl<R: Read, S: Source> Read for Decoder<R, S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.out_pos == self.out.len() {
            if !self.advance()? {
                return Ok(0);
            }
        }
        let n = buf.len().min(self.out.len() - self.out_pos);
        buf[..n].copy_from_slice(&self.out[self.out_pos..self.out_pos + n]);
        self.out_pos += n;
        Ok(n)
    }
}

fn parse_header<R: Read>(r: &mut Counting<R>) -> Result<Header> {
    let mut magic = Vec::with_capacity(4);
    (&mut r.inner)
        .take(4)
        .read_to_end(&mut magic)
        .map_err(Error::Io)?;
    r.pos += magic.len() as u64;
    if magic.len() < 4 || magic[..3] != MAGIC {
        return Err(Error::BadMagic { found: magic });
    }
    if magic[3] != 0 {
        return Err(Error::Version(magic[3]));
    }
    let ind = r.byte("the header indicator")?;
    if ind & !(VCD_DECOMPRESS | VCD_CODETABLE | VCD_APPHEADER) != 0 {
        return Err(Error::BadHeader(format!(
            "unknown header indicator bits {ind:#04x}"
        )));
    }
    if ind & VCD_DECOMPRESS != 0 {
        let id = r.byte("the secondary compressor id")?;
        let name = match id {
            1 => "djw",
            2 => "lzma",
            16 => "fgk",
            _ => "unknown",
        };
        return Err(Error::Unsupported(format!(
            "secondary compression ({name}, id {id})"
        )));
    }
    if ind & VCD_CODETABLE != 0 {
        return Err(Error::Unsupported(
            "an application-defined code table (VCD_CODETABLE)".into(),
        ));
    }
    let app_header = if ind & VCD_APPHEADER != 0 {
        let len = r.varint("the application header length")?;
        if len > MAX_APP_HEADER {
            return Err(Error::BadHeader(format!(
                "application header of {len} bytes"
            )));
        }
        let mut data = Vec::new();
        let got = (&mut r.inner)
            .take(len)
            .read_to_end(&mut data)
            .map_err(Error::Io)?;
        r.pos += got as u64;
        if (got as u64) < len {
            return Err(Error::Truncated {
                what: "the application header",
                offset: r.pos,
            });
        }
        Some(data)
    } else {
        None
    };
    Ok(Header {
        app_header,
        len: r.pos,
    })
}

/// The delta reader with its position, for error messages.
struct Counting<R> {
    inner: R,
    pos: u64,
}

impl<R: Read> Counting<R> {
    fn byte_or_eof(&mut self) -> Result<Option<u8>> {
        let mut b = [0u8];
        loop {
            match self.inner.read(&mut b) {
                Ok(0) => return Ok(None),
                Ok(_) => {
                    self.pos += 1;
                    return Ok(Some(b[0]));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::Io(e)),
            }
        }
    }

    fn byte(&mut self, what: &'static str) -> Result<u8> {
        self.byte_or_eof()?.ok_or(Error::Truncated {
            what,
            offset: self.pos,
        })
    }

    /// RFC 3284 §2 integer: base-128 digits, most significant first, high bit = more follow.
    fn varint(&mut self, what: &'static str) -> Result<u64> {
        let start = self.pos;
        let mut v: u64 = 0;
        loop {
            let b = self.byte(what)?;
            if v >> 57 != 0 {
                return Err(Error::BadHeader(format!(
                    "{what} at delta byte {start} overflows 64 bits"
                )));
            }
            v = (v << 7) | u64::from(b & 0x7f);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
    }
}

/// A section of the delta encoding being consumed.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn byte(&mut self) -> Option<u8> {
        let b = *self.buf.get(self.pos)?;
        self.pos += 1;
        Some(b)
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.buf.get(self.pos..self.pos.checked_add(n)?)?;
        self.pos += n;
        Some(s)
    }

    fn varint(&mut self) -> Option<u64> {
        let mut v: u64 = 0;
        loop {
            let b = self.byte()?;
            if v >> 57 != 0 {
                return None;
            }
            v = (v << 7) | u64::from(b & 0x7f);
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
    }
}

/// What went wrong inside a window, before the window number and offset are attached.
enum Fault {
    Corrupt(String),
    Source(Error),
}

impl From<String> for Fault {
    fn from(s: String) -> Self {
        Fault::Corrupt(s)
    }
}

impl From<&str> for Fault {
    fn from(s: &str) -> Self {
        Fault::Corrupt(s.to_string())
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Noop,
    Add,
    Run,
    Copy(u8),
}

/// One half of a code table entry: operation and size (0 = size follows in the
/// instruction section).
#[derive(Clone, Copy)]
struct Half {
    op: Op,
    size: u8,
}

const NEAR: usize = 4;
const SAME: usize = 3;

/// The default code table of RFC 3284 §5.6, built from its row description.
fn default_code_table() -> &'static [[Half; 2]; 256] {
    static TABLE: std::sync::OnceLock<[[Half; 2]; 256]> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        let noop = Half {
            op: Op::Noop,
            size: 0,
        };
        let mut t = [[noop; 2]; 256];
        let mut i = 0;
        let mut push = |a: Half, b: Half| {
            t[i] = [a, b];
            i += 1;
        };
        push(
            Half {
                op: Op::Run,
                size: 0,
            },
            noop,
        );
        for size in 0..=17 {
            push(Half { op: Op::Add, size }, noop);
        }
        for mode in 0..=8u8 {
            push(
                Half {
                    op: Op::Copy(mode),
                    size: 0,
                },
                noop,
            );
            for size in 4..=18 {
                push(
                    Half {
                        op: Op::Copy(mode),
                        size,
                    },
                    noop,
                );
            }
        }
        for mode in 0..=5u8 {
            for add in 1..=4 {
                for copy in 4..=6 {
                    push(
                        Half {
                            op: Op::Add,
                            size: add,
                        },
                        Half {
                            op: Op::Copy(mode),
                            size: copy,
                        },
                    );
                }
            }
        }
        for mode in 6..=8u8 {
            for add in 1..=4 {
                push(
                    Half {
                        op: Op::Add,
                        size: add,
                    },
                    Half {
                        op: Op::Copy(mode),
                        size: 4,
                    },
                );
            }
        }
        for mode in 0..=8u8 {
            push(
                Half {
                    op: Op::Copy(mode),
                    size: 4,
                },
                Half {
                    op: Op::Add,
                    size: 1,
                },
            );
        }
        assert_eq!(i, 256);
        t
    })
}

/// RFC 3284 §5.1 address caches, reset for every window.
struct AddressCache {
    near: [u64; NEAR],
    next_near: usize,
    same: [u64; SAME * 256],
}

impl Default for AddressCache {
    fn default() -> Self {
        AddressCache {
            near: [0; NEAR],
            next_near: 0,
            same: [0; SAME * 256],
        }
    }
}

impl AddressCache {
    fn decode(
        &mut self,
        here: u64,
        mode: u8,
        addr: &mut Cursor,
    ) -> std::result::Result<u64, String> {
        let mode = usize::from(mode);
        let short = || "address section ends early".to_string();
        let a = match mode {
            0 => addr.varint().ok_or_else(short)?,
            1 => here
                .checked_sub(addr.varint().ok_or_else(short)?)
                .ok_or("HERE-relative address before the window start")?,
            m if m < 2 + NEAR => self.near[m - 2]
                .checked_add(addr.varint().ok_or_else(short)?)
                .ok_or("NEAR address overflows")?,
            m => {
                let b = addr.byte().ok_or_else(short)?;
                self.same[(m - 2 - NEAR) * 256 + usize::from(b)]
            }
        };
        self.near[self.next_near] = a;
        self.next_near = (self.next_near + 1) % NEAR;
        self.same[(a % (SAME as u64 * 256)) as usize] = a;
        Ok(a)
    }
}

struct WindowDecode<'a> {
    data: Cursor<'a>,
    inst: Cursor<'a>,
    addr: Cursor<'a>,
    cache: AddressCache,
    seg_pos: u64,
    seg_len: usize,
    tgt_len: usize,
}

impl WindowDecode<'_> {
    fn run<S: Source>(
        &mut self,
        out: &mut Vec<u8>,
        source: &mut SourceCache<S>,
    ) -> std::result::Result<(), Fault> {
        let table = default_code_table();
        while let Some(opcode) = self.inst.byte() {
            for half in table[usize::from(opcode)] {
                if half.op != Op::Noop {
                    self.half(half, out, source)?;
                }
            }
        }
        if out.len() != self.tgt_len {
            return Err(format!(
                "instructions produce {} bytes, the window header says {}",
                out.len(),
                self.tgt_len
            )
            .into());
        }
        if self.data.remaining() != 0 || self.addr.remaining() != 0 {
            return Err(format!(
                "{} data and {} address bytes left unused",
                self.data.remaining(),
                self.addr.remaining()
            )
            .into());
        }
        Ok(())
    }

    fn half<S: Source>(
        &mut self,
        half: Half,
        out: &mut Vec<u8>,
        source: &mut SourceCache<S>,
    ) -> std::result::Result<(), Fault> {
        let size = if half.size == 0 {
            self.inst
                .varint()
                .ok_or("instruction size runs past the instruction section")?
        } else {
            u64::from(half.size)
        };
        let room = (self.tgt_len - out.len()) as u64;
        if size > room {
            return Err(format!(
                "instruction of {size} bytes at target offset {} overruns the {}-byte window",
                out.len(),
                self.tgt_len
            )
            .into());
        }
        let size = size as usize;
        match half.op {
            Op::Noop => {}
            Op::Add => {
                let bytes = self
                    .data
                    .take(size)
                    .ok_or("ADD runs past the data section")?;
                out.extend_from_slice(bytes);
            }
            Op::Run => {
                let b = self.data.byte().ok_or("RUN runs past the data section")?;
                out.resize(out.len() + size, b);
            }
            Op::Copy(mode) => {
                let here = (self.seg_len + out.len()) as u64;
                let a = self.cache.decode(here, mode, &mut self.addr)?;
                if a >= here {
                    return Err(format!(
                        "COPY from address {a} at or past the current position {here}"
                    )
                    .into());
                }
                let a = a as usize;
                if a < self.seg_len {
                    if a + size > self.seg_len {
                        return Err(format!(
                            "COPY of {size} bytes from source segment offset {a} crosses its \
                             end ({})",
                            self.seg_len
                        )
                        .into());
                    }
                    source
                        .copy_into(self.seg_pos + a as u64, size, out)
                        .map_err(Fault::Source)?;
                } else {
                    // Target copies may overlap the bytes they produce (a repeating pattern),
                    // so copy in chunks no longer than the distance back.
                    let mut from = a - self.seg_len;
                    let mut left = size;
                    while left > 0 {
                        let n = left.min(out.len() - from);
                        out.extend_from_within(from..from + n);
                        from += n;
                        left -= n;
                    }
                }
            }
        }
        Ok(())
    }
}

/// A few aligned blocks of the source.
struct SourceCache<S> {
    source: S,
    len: u64,
    /// (block number, bytes), most recently used last.
    blocks: Vec<(u64, Vec<u8>)>,
}

impl<S: Source> SourceCache<S> {
    fn new(source: S, len: u64) -> Self {
        SourceCache {
            source,
            len,
            blocks: Vec::with_capacity(SOURCE_CACHE_BLOCKS),
        }
    }

    /// Append source bytes `offset..offset + size` (already checked to be in range) to `out`.
    fn copy_into(&mut self, mut offset: u64, mut size: usize, out: &mut Vec<u8>) -> Result<()> {
        while size > 0 {
            let blk = offset / SOURCE_BLOCK as u64;
            let within = (offset % SOURCE_BLOCK as u64) as usize;
            let data = self.block(blk)?;
            let n = size.min(data.len() - within);
            out.extend_from_slice(&data[within..within + n]);
            offset += n as u64;
            size -= n;
        }
        Ok(())
    }

    fn block(&mut self, blk: u64) -> Result<&[u8]> {
        if let Some(i) = self.blocks.iter().position(|(b, _)| *b == blk) {
            let entry = self.blocks.remove(i);
            self.blocks.push(entry);
        } else {
            let start = blk * SOURCE_BLOCK as u64;
            let end = (start + SOURCE_BLOCK as u64).min(self.len);
            let mut buf = if self.blocks.len() == SOURCE_CACHE_BLOCKS {
                self.blocks.remove(0).1
            } else {
                Vec::new()
            };
            buf.resize((end - start) as usize, 0);
            self.source
                .read_at(start, &mut buf)
                .map_err(|source| Error::SourceRead {
                    offset: start,
                    end,
                    source,
                })?;
            self.blocks.push((blk, buf));
        }
        Ok(&self.blocks.last().expect("just pushed").1)
    }
}

#[cfg(test)]
mod tests {
    //! Deltas come from the real `xdelta3` (scripts/install-deps installs it), made the way
    //! fwup's documentation says: `xdelta3 -e -A -S -s OLD NEW DELTA`.
    use super::*;
    use std::process::Command;

    fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    /// `xdelta3 -e -A -S -f [extra] -s OLD NEW DELTA`, run on temp files.
    fn xdelta(old: &[u8], new: &[u8], extra: &[&str]) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let (o, n, d) = (
            dir.path().join("old"),
            dir.path().join("new"),
            dir.path().join("delta"),
        );
        std::fs::write(&o, old).unwrap();
        std::fs::write(&n, new).unwrap();
        let status = Command::new("xdelta3")
            .args(["-e", "-f"])
            .args(extra)
            .arg("-s")
            .arg(&o)
            .arg(&n)
            .arg(&d)
            .status()
            .expect("xdelta3 must be installed (scripts/install-deps)");
        assert!(status.success(), "xdelta3 failed");
        std::fs::read(d).unwrap()
    }

    fn fwup_delta(old: &[u8], new: &[u8]) -> Vec<u8> {
        xdelta(old, new, &["-A", "-S"])
    }

    fn decode(delta: &[u8], old: &[u8]) -> Result<Vec<u8>> {
        let mut dec = Decoder::new(delta, old, old.len() as u64)?;
        let mut out = Vec::new();
        while let Some(w) = dec.next_window()? {
            out.extend_from_slice(w);
        }
        assert_eq!(dec.total_out(), out.len() as u64);
        Ok(out)
    }

    /// A delta reader that hands out one byte per read, like a slow stream.
    struct Trickle<'a>(&'a [u8]);
    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.0.is_empty() || buf.is_empty() {
                return Ok(0);
            }
            buf[0] = self.0[0];
            self.0 = &self.0[1..];
            Ok(1)
        }
    }

    /// Decode three ways (windows, odd-sized `Read`s from a trickling delta, through a source
    /// that checks every read is an aligned block inside the source) and compare with `new`.
    /// Returns the number of windows.
    fn check(old: &[u8], new: &[u8], delta: &[u8]) -> usize {
        let out = decode(delta, old).unwrap();
        assert!(
            out == new,
            "decoded {} bytes, want {}",
            out.len(),
            new.len()
        );

        let len = old.len() as u64;
        let mut reads = 0;
        let source = FnSource(|off: u64, buf: &mut [u8]| {
            reads += 1;
            assert_eq!(off % SOURCE_BLOCK as u64, 0, "unaligned source read");
            assert_eq!(buf.len() as u64, (len - off).min(SOURCE_BLOCK as u64));
            buf.copy_from_slice(&old[off as usize..off as usize + buf.len()]);
            Ok(())
        });
        let mut dec = Decoder::new(Trickle(delta), source, len).unwrap();
        let mut out = Vec::new();
        let mut buf = [0u8; 4093];
        let mut step = 1;
        loop {
            let n = dec.read(&mut buf[..step]).unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
            step = (step + 97) % buf.len() + 1;
        }
        assert!(out == new, "streamed decode differs");
        // Reading past the end keeps returning the end.
        assert_eq!(dec.read(&mut buf).unwrap(), 0);
        assert!(dec.next_window().unwrap().is_none());

        let mut dec = Decoder::new(delta, old, len).unwrap();
        let mut windows = 0;
        while dec.next_window().unwrap().is_some() {
            windows += 1;
        }
        windows
    }

    #[test]
    fn identical() {
        let old = pseudo_random(1, 300_000);
        let delta = fwup_delta(&old, &old);
        assert!(delta.len() < 100, "identical files give a tiny delta");
        assert_eq!(check(&old, &old, &delta), 1);
    }

    #[test]
    fn small_edits() {
        let old = pseudo_random(2, 500_000);
        let mut new = old.clone();
        for (i, at) in [17usize, 4096, 65_535, 65_536, 200_001, 499_999]
            .into_iter()
            .enumerate()
        {
            new[at] ^= 0x5a + i as u8;
        }
        check(&old, &new, &fwup_delta(&old, &new));
    }

    #[test]
    fn insertions_and_deletions() {
        let old = pseudo_random(3, 400_000);
        let mut new = Vec::new();
        new.extend_from_slice(b"inserted at the start");
        new.extend_from_slice(&old[..100_000]);
        new.extend_from_slice(&pseudo_random(30, 5_000));
        new.extend_from_slice(&old[150_000..300_000]); // 50 KB deleted
        new.extend_from_slice(&old[10_000..20_000]); // moved and duplicated
        new.extend_from_slice(&old[300_000..]);
        check(&old, &new, &fwup_delta(&old, &new));
    }

    #[test]
    fn unrelated_random() {
        let old = pseudo_random(4, 100_000);
        let new = pseudo_random(5, 120_000);
        check(&old, &new, &fwup_delta(&old, &new));
    }

    #[test]
    fn source_larger_than_target() {
        let old = pseudo_random(6, 1 << 20);
        let new = old[700_000..900_000].to_vec();
        check(&old, &new, &fwup_delta(&old, &new));
    }

    #[test]
    fn source_smaller_than_target() {
        let old = pseudo_random(7, 50_000);
        let mut new = old.repeat(4);
        new.extend_from_slice(&pseudo_random(70, 30_000));
        check(&old, &new, &fwup_delta(&old, &new));
    }

    #[test]
    fn runs_and_self_copies() {
        // Zeros and a short repeating pattern need RUN and overlapping target copies.
        let old = pseudo_random(8, 10_000);
        let mut new = vec![0u8; 100_000];
        new.extend(b"abc".iter().cycle().take(50_001));
        new.extend_from_slice(&old[..5_000]);
        new.extend(std::iter::repeat_n(0xffu8, 7));
        check(&old, &new, &fwup_delta(&old, &new));
    }

    #[test]
    fn empty_target_and_empty_source() {
        let old = pseudo_random(9, 4096);
        assert_eq!(check(&old, &[], &fwup_delta(&old, &[])), 1);
        let new = pseudo_random(10, 4096);
        check(&[], &new, &fwup_delta(&[], &new));
    }

    #[test]
    fn many_small_windows() {
        let old = pseudo_random(11, 1 << 20);
        let mut new = old.clone();
        new[123_456] = !new[123_456];
        new.truncate(1_000_000);
        let delta = xdelta(&old, &new, &["-A", "-S", "-W", "65536"]);
        assert_eq!(check(&old, &new, &delta), 1_000_000usize.div_ceil(65536));
    }

    #[test]
    fn source_window_follows_the_target() {
        // A small source window (-B) makes xdelta3 slide the source segment along; the
        // insertion puts later segments at unaligned source offsets.
        let old = pseudo_random(22, 4 << 20);
        let mut new = old.clone();
        new[7] ^= 1;
        new.splice(3_000_000..3_000_000, std::iter::repeat_n(b'x', 1000));
        let delta = xdelta(&old, &new, &["-A", "-S", "-W", "262144", "-B", "524288"]);
        assert!(delta.len() < 4096, "the delta copies from the source");
        assert_eq!(check(&old, &new, &delta), (new.len()).div_ceil(262_144));
    }

    #[test]
    fn default_windows_past_8_mib() {
        let old = pseudo_random(12, 12 << 20);
        let mut new = old.clone();
        for at in (0..new.len()).step_by(1 << 20) {
            new[at] = new[at].wrapping_add(1);
        }
        new.extend_from_slice(&pseudo_random(120, 100_000));
        let delta = fwup_delta(&old, &new);
        assert_eq!(check(&old, &new, &delta), 2);
    }

    #[test]
    fn app_header_is_skipped() {
        // Without -A xdelta3 records the file names; fwup accepts such deltas too.
        let old = pseudo_random(13, 20_000);
        let mut new = old.clone();
        new[10] = 0;
        let delta = xdelta(&old, &new, &["-S"]);
        let header = read_header(&delta[..]).unwrap();
        let names = header.app_header.expect("app header");
        assert!(names.ends_with(b"/old/"), "{names:?}");
        check(&old, &new, &delta);
    }

    #[test]
    fn secondary_compression_is_refused() {
        let old = pseudo_random(14, 20_000);
        let new = pseudo_random(15, 20_000);
        // xdelta3's default is lzma secondary compression (what fwup's test 173 makes).
        for args in [&["-S", "lzma"][..], &["-A", "-S", "djw"][..], &[][..]] {
            let delta = xdelta(&old, &new, args);
            for e in [
                read_header(&delta[..]).unwrap_err(),
                decode(&delta, &old).unwrap_err(),
            ] {
                assert!(
                    matches!(&e, Error::Unsupported(m) if m.contains("secondary compression")),
                    "{args:?}: {e}"
                );
            }
        }
    }

    #[test]
    fn not_a_delta() {
        let old = pseudo_random(16, 1000);
        // fwup's test 173 puts the first 512 bytes of a plain file in place of the delta.
        let e = decode(&old[..512], &old).unwrap_err();
        assert!(matches!(e, Error::BadMagic { .. }), "{e}");
        assert!(e.to_string().contains("xdelta3 -e -A -S"), "{e}");
        for short in [&b""[..], b"\xd6", b"\xd6\xc3\xc4"] {
            assert!(matches!(decode(short, &old), Err(Error::BadMagic { .. })));
        }
        assert!(matches!(
            decode(b"\xd6\xc3\xc4\x01\x00", &old),
            Err(Error::Version(1))
        ));
        assert!(is_vcdiff(&fwup_delta(&old, &old)));
        assert!(!is_vcdiff(&old));
    }

    #[test]
    fn every_truncation_of_a_window_is_an_error() {
        let old = pseudo_random(17, 30_000);
        let mut new = old.clone();
        new.splice(1000..1000, b"some new bytes".iter().copied());
        new[20_000] ^= 1;
        let delta = fwup_delta(&old, &new);
        let header_len = read_header(&delta[..]).unwrap().len as usize;
        assert_eq!(header_len, 5);
        // Cut right after the header: a valid delta with no windows.
        assert_eq!(decode(&delta[..header_len], &old).unwrap(), b"");
        for cut in 0..delta.len() {
            if cut == header_len {
                continue;
            }
            let e = decode(&delta[..cut], &old).unwrap_err();
            if cut > header_len {
                assert!(matches!(e, Error::Truncated { .. }), "cut at {cut}: {e}");
            }
        }
    }

    #[test]
    fn corrupted_bytes_never_decode_to_wrong_output() {
        // Every single-byte change must fail cleanly or, when it only re-encodes the same
        // instruction (e.g. address 0 as SELF 0 or as an empty SAME-cache slot), still give
        // the right target. Wrong bytes must never come out.
        let old = pseudo_random(18, 30_000);
        let mut new = old.clone();
        new.splice(5000..5010, b"0123456789abcdef".iter().copied());
        new.extend_from_slice(&[7u8; 300]);
        let delta = fwup_delta(&old, &new);
        let mut errors = 0;
        let mut same = 0;
        for at in 0..delta.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut bad = delta.clone();
                bad[at] ^= flip;
                match decode(&bad, &old) {
                    Err(_) => errors += 1,
                    Ok(out) => {
                        assert!(out == new, "byte {at} ^ {flip:#x} decoded to wrong output");
                        same += 1;
                    }
                }
            }
        }
        assert!(errors > same * 10, "{errors} errors, {same} harmless");
    }

    #[test]
    fn source_too_short() {
        // fwup's test 173 #4: the delta was made from a longer source than the region named
        // by delta-source-raw-count.
        let old = pseudo_random(19, 150 * 1024);
        let delta = fwup_delta(&old, &old);
        let e = decode(&delta, &old[..128 * 1024]).unwrap_err();
        match &e {
            Error::SourceOutOfRange {
                end, source_len, ..
            } => {
                assert_eq!(*end, old.len() as u64);
                assert_eq!(*source_len, 128 * 1024);
            }
            _ => panic!("{e}"),
        }
        assert!(e.to_string().contains("delta-source-raw-count"), "{e}");
    }

    #[test]
    fn wrong_source_fails_the_checksum() {
        // fwup's test 173 #5: the delta expects the source shifted by one byte.
        let old = pseudo_random(20, 1024);
        let delta = fwup_delta(&old[1..], &old);
        let e = decode(&delta, &old).unwrap_err();
        assert!(matches!(e, Error::Checksum { window: 0, .. }), "{e}");
    }

    #[test]
    fn source_read_errors_are_reported() {
        let old = pseudo_random(21, 200_000);
        let delta = fwup_delta(&old, &old);
        let failing = FnSource(|off: u64, _: &mut [u8]| {
            Err(io::Error::other(format!("device gone at {off}")))
        });
        let mut dec = Decoder::new(&delta[..], failing, old.len() as u64).unwrap();
        let e = dec.next_window().unwrap_err();
        assert!(matches!(e, Error::SourceRead { offset: 0, .. }), "{e}");
        assert!(format!("{e}").contains("source bytes 0..65536"), "{e}");
        // A failed decoder stays failed instead of looking like a clean end.
        assert!(matches!(dec.next_window(), Err(Error::Failed)));
        let mut buf = [0u8; 16];
        let io = dec.read(&mut buf).unwrap_err();
        assert_eq!(io.kind(), io::ErrorKind::InvalidData);
    }

    /// A one-window delta built by hand: header, then `ind`, the source segment if any, and
    /// an encoding with the given sections.
    fn handmade(ind: u8, seg: Option<(u8, u8)>, tgt_len: &[u8], sections: [&[u8]; 3]) -> Vec<u8> {
        let mut enc = tgt_len.to_vec();
        enc.push(0);
        for s in sections {
            enc.push(s.len() as u8);
        }
        for s in sections {
            enc.extend_from_slice(s);
        }
        let mut d = vec![0xd6, 0xc3, 0xc4, 0, 0, ind];
        if let Some((len, pos)) = seg {
            d.extend_from_slice(&[len, pos]);
        }
        d.push(enc.len() as u8);
        d.extend_from_slice(&enc);
        d
    }

    #[test]
    fn handmade_windows() {
        // RUN 3 of 'x' (opcode 0, size 3), ADD 2 "ok" (opcode 3 = ADD size 2),
        // COPY 4 from the source segment at 1 (opcode 19 = COPY mode 0 size 0, SELF address).
        let d = handmade(
            VCD_SOURCE,
            Some((8, 2)),
            &[9],
            [b"xok", &[0, 3, 3, 19, 4], &[1]],
        );
        assert_eq!(decode(&d, b"0123456789").unwrap(), b"xxxok3456");
        // The same window against a 9-byte source: the segment 2..10 is out of range.
        assert!(matches!(
            decode(&d, b"012345678"),
            Err(Error::SourceOutOfRange {
                start: 2,
                end: 10,
                ..
            })
        ));

        // Target copy overlapping its own output: "ab" then COPY 5 from HERE-2 (mode 1).
        let d = handmade(0, None, &[7], [b"ab", &[3, 35, 5], &[2]]);
        assert_eq!(decode(&d, b"").unwrap(), b"abababa");

        let e = decode(
            &handmade(VCD_TARGET, Some((1, 0)), &[1], [b"", b"", b""]),
            b"",
        )
        .unwrap_err();
        assert!(
            matches!(&e, Error::Unsupported(m) if m.contains("VCD_TARGET")),
            "{e}"
        );

        let mut d = handmade(0, None, &[0], [b"", b"", b""]);
        d[4] = VCD_CODETABLE;
        assert!(matches!(decode(&d, b""), Err(Error::Unsupported(m)) if m.contains("code table")));

        // A target window above xdelta3's hard limit is refused before allocating it.
        let e = decode(
            &handmade(0, None, &[0xa0, 0x80, 0x80, 1], [b"", b"", b""]),
            b"",
        )
        .unwrap_err();
        assert!(
            matches!(e, Error::WindowTooLarge { len, .. } if len == (1 << 26) + 1),
            "{e}"
        );

        // COPY from the byte being written (address == HERE).
        let d = handmade(0, None, &[5], [b"a", &[2, 19, 4], &[1]]);
        let e = decode(&d, b"").unwrap_err();
        assert!(e.to_string().contains("COPY from address 1"), "{e}");

        // COPY crossing from the source segment into the target.
        let d = handmade(VCD_SOURCE, Some((4, 0)), &[6], [b"", &[19, 6], &[1]]);
        let e = decode(&d, b"0123").unwrap_err();
        assert!(e.to_string().contains("crosses its end"), "{e}");
    }

    #[test]
    fn default_code_table_matches_rfc_3284() {
        // Spot checks against the table in RFC 3284 §5.6.
        let t = default_code_table();
        let h = |i: usize, k: usize| (t[i][k].op, t[i][k].size);
        assert!(h(0, 0) == (Op::Run, 0) && h(0, 1) == (Op::Noop, 0));
        assert!(h(1, 0) == (Op::Add, 0) && h(18, 0) == (Op::Add, 17));
        assert!(h(19, 0) == (Op::Copy(0), 0) && h(20, 0) == (Op::Copy(0), 4));
        assert!(h(34, 0) == (Op::Copy(0), 18) && h(35, 0) == (Op::Copy(1), 0));
        assert!(h(162, 0) == (Op::Copy(8), 18));
        assert!(h(163, 0) == (Op::Add, 1) && h(163, 1) == (Op::Copy(0), 4));
        assert!(h(165, 1) == (Op::Copy(0), 6) && h(166, 0) == (Op::Add, 2));
        assert!(h(174, 0) == (Op::Add, 4) && h(174, 1) == (Op::Copy(0), 6));
        assert!(h(175, 1) == (Op::Copy(1), 4) && h(234, 1) == (Op::Copy(5), 6));
        assert!(h(235, 0) == (Op::Add, 1) && h(235, 1) == (Op::Copy(6), 4));
        assert!(h(246, 0) == (Op::Add, 4) && h(246, 1) == (Op::Copy(8), 4));
        assert!(h(247, 0) == (Op::Copy(0), 4) && h(247, 1) == (Op::Add, 1));
        assert!(h(255, 0) == (Op::Copy(8), 4));
    }
}
