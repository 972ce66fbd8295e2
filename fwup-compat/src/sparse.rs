//! Sparse resources (`skip-holes = true`): a resource's `length` list alternates data and
//! hole sizes, starting with data; the archive holds only the data. Several host files
//! (`host-path = "a;b"`) concatenate into one map, a hole at the end of one file merging with
//! a hole at the start of the next.
//!
//! Spec: fwup's docs/fwup.md "Sparse files"; holes are found with lseek(2) SEEK_DATA and
//! SEEK_HOLE.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;

/// At most this many map entries; the rest of a file becomes one data run.
const MAX_LEN: usize = 256;

fn lseek(f: &File, off: u64, whence: i32) -> Option<u64> {
    // SAFETY: a valid descriptor owned by `f`.
    let r = unsafe { libc::lseek(f.as_raw_fd(), off as libc::off_t, whence) };
    (r >= 0).then_some(r as u64)
}

fn file_end(f: &File) -> io::Result<u64> {
    lseek(f, 0, libc::SEEK_END).ok_or_else(io::Error::last_os_error)
}

/// Extend `map` with the next file (fwup's sparse_file_build_map_from_fd). With
/// `no_holes`, the file is one data run.
pub fn build_map(f: &File, no_holes: bool, map: &mut Vec<u64>) -> io::Result<()> {
    // Continue from the last entry: the new file may start with more of the same kind.
    let (mut i, mut leftover) = match map.pop() {
        Some(last) => (map.len(), last),
        None => (0, 0),
    };
    let mut offset = 0u64;
    let mut next = 0u64;
    if !no_holes {
        while i < MAX_LEN - 2 {
            let in_hole = i % 2 == 1;
            let whence = if in_hole {
                libc::SEEK_DATA
            } else {
                libc::SEEK_HOLE
            };
            match lseek(f, offset, whence) {
                None => {
                    // The end of the file.
                    let end = file_end(f)?;
                    if end != offset {
                        map.push(end - offset + leftover);
                    }
                    return Ok(());
                }
                Some(n) => {
                    next = n;
                    if i >= 1 && offset == next && map[i - 1] == 0 {
                        // In a hole and in data at once (e.g. /dev/zero).
                        return Ok(());
                    }
                    map.push(next - offset + leftover);
                    leftover = 0;
                    offset = next;
                    i += 1;
                }
            }
        }
        if i % 2 == 1 {
            map.push(next - offset + leftover);
            leftover = 0;
            offset = next;
            i += 1;
        }
    }
    let _ = i;
    let end = file_end(f)?;
    map.push(end - offset + leftover);
    Ok(())
}

/// Reads the data runs of a map out of its files, in order (fwup's sparse_file_read_next_data,
/// with the position carried from one file to the next).
pub struct ReadIter<'a> {
    map: &'a [u64],
    ix: usize,
    in_seg: u64,
}

impl<'a> ReadIter<'a> {
    pub fn new(map: &'a [u64]) -> Self {
        ReadIter {
            map,
            ix: 0,
            in_seg: 0,
        }
    }

    /// Append this file's share of the data runs to `out`.
    pub fn read_file(&mut self, f: &File, out: &mut Vec<u8>) -> io::Result<()> {
        let end = file_end(f)?;
        let mut offset = 0u64;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            // Skip holes and empty data runs.
            loop {
                if self.ix == self.map.len() {
                    return Ok(());
                }
                let left = self.map[self.ix] - self.in_seg;
                if self.ix % 2 == 1 {
                    let left_in_file = end.saturating_sub(offset);
                    if left_in_file < left {
                        // The hole continues into the next file.
                        self.in_seg += left_in_file;
                        return Ok(());
                    }
                    offset += left;
                } else if left != 0 {
                    break;
                }
                self.in_seg = 0;
                self.ix += 1;
            }
            let want = (self.map[self.ix] - self.in_seg).min(buf.len() as u64) as usize;
            let n = f.read_at(&mut buf[..want], offset)?;
            if n == 0 {
                // The data run continues into the next file.
                return Ok(());
            }
            out.extend_from_slice(&buf[..n]);
            self.in_seg += n as u64;
            if self.in_seg == self.map[self.ix] {
                self.in_seg = 0;
                self.ix += 1;
            }
            offset += n as u64;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dense_files_concatenate_into_one_run() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        std::fs::write(&a, vec![1u8; 1000]).unwrap();
        std::fs::write(&b, vec![2u8; 24]).unwrap();
        let mut map = Vec::new();
        build_map(&File::open(&a).unwrap(), true, &mut map).unwrap();
        build_map(&File::open(&b).unwrap(), true, &mut map).unwrap();
        assert_eq!(map, vec![1024]);
        let mut out = Vec::new();
        let mut it = ReadIter::new(&map);
        it.read_file(&File::open(&a).unwrap(), &mut out).unwrap();
        it.read_file(&File::open(&b).unwrap(), &mut out).unwrap();
        assert_eq!(out.len(), 1024);
        assert_eq!(out[999], 1);
        assert_eq!(out[1000], 2);
    }

    #[test]
    fn holes_are_skipped() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("s");
        let f = File::create(&p).unwrap();
        f.write_all_at(&[7u8; 4096], 0).unwrap();
        f.write_all_at(&[9u8; 4096], 1 << 20).unwrap();
        f.set_len((1 << 20) + 8192).unwrap();
        drop(f);
        let f = File::open(&p).unwrap();
        let mut map = Vec::new();
        build_map(&f, false, &mut map).unwrap();
        if map.len() == 1 {
            return; // This filesystem does not keep holes.
        }
        assert_eq!(map[0], 4096);
        assert_eq!(map.iter().sum::<u64>(), (1 << 20) + 8192);
        let mut out = Vec::new();
        ReadIter::new(&map).read_file(&f, &mut out).unwrap();
        let data: u64 = map.iter().step_by(2).sum();
        assert_eq!(out.len() as u64, data);
        assert_eq!(out[..4096], [7u8; 4096]);
    }
}
