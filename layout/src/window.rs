//! A bounded window onto a file, so that a filesystem formatter can treat one region of an
//! image as its whole device and can never write outside it.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;

const SECTOR: u64 = 512;

pub struct Window<'a> {
    file: &'a File,
    start: u64,
    len: u64,
    pos: u64,
}

impl<'a> Window<'a> {
    pub fn new(file: &'a File, start: u64, len: u64) -> Self {
        Window {
            file,
            start,
            len,
            pos: 0,
        }
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Read for Window<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (self.len.saturating_sub(self.pos)).min(buf.len() as u64) as usize;
        if n == 0 {
            return Ok(0);
        }
        let got = self.file.read_at(&mut buf[..n], self.start + self.pos)?;
        // A fresh sparse image may be shorter than the window: beyond EOF reads as zeros.
        let got = if got == 0 {
            buf[..n].fill(0);
            n
        } else {
            got
        };
        self.pos += got as u64;
        Ok(got)
    }
}

impl Write for Window<'_> {
    /// Every write reaching the file covers whole 512-byte sectors: a piece that starts or ends
    /// inside a sector is merged with that sector's current bytes first (a formatter may write
    /// a few bytes at a time).
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.pos + buf.len() as u64 > self.len {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!(
                    "write of {} bytes at {} would pass the region's end ({} bytes)",
                    buf.len(),
                    self.pos,
                    self.len
                ),
            ));
        }
        let abs = self.start + self.pos;
        let end = abs + buf.len() as u64;
        if abs.is_multiple_of(SECTOR) && end.is_multiple_of(SECTOR) {
            self.file.write_all_at(buf, abs)?;
        } else {
            let first = abs / SECTOR * SECTOR;
            let last = end.div_ceil(SECTOR) * SECTOR;
            let mut merged = vec![0u8; (last - first) as usize];
            // Only the partial head and tail sectors need their old bytes.
            for s in [first, last - SECTOR] {
                let i = (s - first) as usize;
                let got = self.file.read_at(&mut merged[i..i + SECTOR as usize], s)?;
                merged[i + got..i + SECTOR as usize].fill(0);
            }
            let o = (abs - first) as usize;
            merged[o..o + buf.len()].copy_from_slice(buf);
            self.file.write_all_at(&merged, first)?;
        }
        self.pos += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Seek for Window<'_> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let new = match to {
            SeekFrom::Start(o) => o as i128,
            SeekFrom::End(d) => self.len as i128 + d as i128,
            SeekFrom::Current(d) => self.pos as i128 + d as i128,
        };
        if new < 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before the region's start",
            ));
        }
        self.pos = new as u64;
        Ok(self.pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_stay_inside_the_window() {
        let f = tempfile::tempfile().unwrap();
        f.set_len(4096).unwrap();
        let mut w = Window::new(&f, 1024, 512);
        w.seek(SeekFrom::Start(500)).unwrap();
        assert!(
            w.write(&[1u8; 13]).is_err(),
            "a write past the end must fail"
        );
        w.write_all(&[7u8; 12]).unwrap();
        let mut back = [0u8; 12];
        f.read_exact_at(&mut back, 1524).unwrap();
        assert_eq!(back, [7u8; 12]);
        assert_eq!(w.seek(SeekFrom::End(0)).unwrap(), 512);
    }

    #[test]
    fn a_partial_sector_write_keeps_its_neighbours() {
        let f = tempfile::tempfile().unwrap();
        f.write_all_at(&[9u8; 2048], 0).unwrap();
        let mut w = Window::new(&f, 512, 1024);
        w.seek(SeekFrom::Start(510)).unwrap();
        w.write_all(&[1, 2, 3, 4]).unwrap();
        let mut back = vec![0u8; 2048];
        f.read_exact_at(&mut back, 0).unwrap();
        assert!(back[..1022].iter().all(|&b| b == 9));
        assert_eq!(&back[1022..1026], &[1, 2, 3, 4]);
        assert!(back[1026..].iter().all(|&b| b == 9));
    }
}
