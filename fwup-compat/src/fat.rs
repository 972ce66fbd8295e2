//! The `fat_*` actions: fwup's src/fatfs.c glue between its actions and FatFs, here over the
//! [`fat::ff`] volume code and the destination's block cache.
//!
//! fwup keeps up to four FAT volumes "mounted" (keyed by block offset) between actions, and
//! keeps the file that `fat_write` is filling open until another FAT action runs; both change
//! where clusters get allocated, so [`Mounts`] keeps the same state. Error texts follow
//! fatfs.c: `context(name): FATFS: ...`.
//!
//! Spec: fwup's docs/fwup.md "fat_*" functions
//! (<https://github.com/fwup-home/fwup/blob/main/docs/fwup.md>).

use crate::cache::BlockCache;
use crate::error::{Error, Result};
use fat::ff::{self, BlockDev, FResult, FfError, MountState, OpenMode, Volume, FWUP_FATTIME};
use std::io;

const VOLUMES: usize = 4;
const BLOCK: u64 = 512;

/// A FAT volume's sectors, at `base` bytes into the destination.
pub struct CacheDev<'a> {
    pub cache: &'a mut BlockCache,
    pub base: u64,
}

impl BlockDev for CacheDev<'_> {
    fn read(&mut self, lba: u64, buf: &mut [u8]) -> io::Result<()> {
        let at = lba
            .checked_mul(BLOCK)
            .and_then(|b| b.checked_add(self.base))
            .ok_or_else(|| io::Error::other(format!("FAT sector {lba} is past the end")))?;
        self.cache
            .pread(buf, at)
            .map_err(|e| io::Error::other(e.to_string()))
    }
    fn write(&mut self, lba: u64, buf: &[u8]) -> io::Result<()> {
        let at = lba
            .checked_mul(BLOCK)
            .and_then(|b| b.checked_add(self.base))
            .ok_or_else(|| io::Error::other(format!("FAT sector {lba} is past the end")))?;
        self.cache
            .pwrite(buf, at)
            .map_err(|e| io::Error::other(e.to_string()))
    }
}

#[derive(Clone, Copy)]
struct Slot {
    offset: u64,
    state: Option<MountState>,
}

struct OpenFile {
    offset: u64,
    name: String,
    file: ff::File,
}

/// Mounted volumes and the open file, as fwup's fatfs.c keeps them.
#[derive(Default)]
pub struct Mounts {
    slots: [Option<Slot>; VOLUMES],
    next: usize,
    open: Option<OpenFile>,
}

fn fat_err(context: &str, name: &str, e: FfError) -> Error {
    Error::msg(format!("{context}({name}): {e}"))
}

/// fatfs.c builds "0:/<name>": the name is always taken from the root.
fn abs(name: &str) -> String {
    format!("/{name}")
}

impl Mounts {
    fn slot(&mut self, offset: u64) -> usize {
        if let Some(i) = self
            .slots
            .iter()
            .position(|s| s.is_some_and(|s| s.offset == offset))
        {
            return i;
        }
        for _ in 0..VOLUMES {
            if self.slots[self.next].is_none() {
                break;
            }
            self.next = (self.next + 1) % VOLUMES;
        }
        let i = self.next;
        self.slots[i] = Some(Slot {
            offset,
            state: None,
        });
        self.next = (self.next + 1) % VOLUMES;
        i
    }

    /// Run `f` on the volume at block `offset`, continuing its mount state.
    fn with<T>(
        &mut self,
        cache: &mut BlockCache,
        offset: u64,
        f: impl FnOnce(&mut Volume, &mut Option<OpenFile>) -> ff::Result<T>,
    ) -> ff::Result<T> {
        let i = self.slot(offset);
        let mut dev = CacheDev {
            cache,
            base: offset.saturating_mul(BLOCK),
        };
        let state = self.slots[i].unwrap().state;
        let mut v = Volume::mount(&mut dev, FWUP_FATTIME, state)?;
        let r = f(&mut v, &mut self.open);
        if let Some(s) = self.slots[i].as_mut() {
            s.state = Some(v.state());
        }
        r
    }

    /// fatfs.c `close_open_files`: sync and forget the file fat_write kept open.
    pub fn close_open_files(&mut self, cache: &mut BlockCache) {
        if let Some(mut o) = self.open.take() {
            let _ = self.with(cache, o.offset, |v, _| v.sync_file(&mut o.file));
        }
    }

    /// fatfs.c `fatfs_closefs`: close the file and unmount everything.
    pub fn close_all(&mut self, cache: &mut BlockCache) {
        self.close_open_files(cache);
        self.slots = [None; VOLUMES];
        self.next = 0;
    }

    /// Forget everything without writing (the cache is being thrown away).
    pub fn reset(&mut self) {
        self.open = None;
        self.slots = [None; VOLUMES];
        self.next = 0;
    }

    pub fn mkfs(&mut self, cache: &mut BlockCache, offset: u64, count: u64) -> Result<()> {
        let what = format!("fat_mkfs({offset}, {count})");
        let r = crate::blocks::Blocks::new(&what, offset, count)?;
        r.within(&what, cache.hard_end())?;
        if count == 0 {
            return Err(Error::msg(format!(
                "{what}: a FAT needs at least one block"
            )));
        }
        let i = self.slot(offset);
        // Everything in the range reads as zeros from now on, without I/O.
        cache.trim(r.byte_offset(), r.byte_len());
        let mut dev = CacheDev {
            cache,
            base: r.byte_offset(),
        };
        // Writing the last sector checks that it exists and grows an image file to size.
        ff::clear_final_sector(&mut dev, count)
            .map_err(|e| Error::msg(format!("Error clearing final FAT sector: {e}")))?;
        ff::mkfs(&mut dev, count, FWUP_FATTIME).map_err(|e| fat_err("fat_mkfs", "", e))?;
        // f_mkfs unmounts: the next call reads the new FSInfo.
        if let Some(s) = self.slots[i].as_mut() {
            s.state = None;
        }
        Ok(())
    }

    pub fn mkdir(&mut self, cache: &mut BlockCache, offset: u64, dir: &str) -> Result<()> {
        self.close_open_files(cache);
        let p = abs(dir);
        self.with(cache, offset, |v, _| {
            if let Ok(st) = v.stat(&p) {
                if st.attr & ff::AM_DIR != 0 {
                    return Ok(());
                }
            }
            v.mkdir(&p)
        })
        .map_err(|e| fat_err("fat_mkdir", dir, e))
    }

    pub fn setlabel(&mut self, cache: &mut BlockCache, offset: u64, label: &str) -> Result<()> {
        self.close_open_files(cache);
        self.with(cache, offset, |v, _| v.setlabel(label))
            .map_err(|e| fat_err("fat_setlabel", label, e))
    }

    pub fn rm(
        &mut self,
        cache: &mut BlockCache,
        offset: u64,
        cmd: &str,
        name: &str,
        must_exist: bool,
    ) -> Result<()> {
        self.close_open_files(cache);
        match self.with(cache, offset, |v, _| v.unlink(&abs(name))) {
            Ok(()) => Ok(()),
            Err(e) if matches!(e.code, FResult::NoFile | FResult::NoPath) && !must_exist => Ok(()),
            Err(e) => Err(fat_err(cmd, name, e)),
        }
    }

    pub fn mv(
        &mut self,
        cache: &mut BlockCache,
        offset: u64,
        cmd: &str,
        from: &str,
        to: &str,
        force: bool,
    ) -> Result<()> {
        self.close_open_files(cache);
        if force {
            self.rm(cache, offset, cmd, to, false)?;
        }
        self.with(cache, offset, |v, _| v.rename(&abs(from), &abs(to)))
            .map_err(|e| fat_err(cmd, from, e))
    }

    /// fatfs.c `fatfs_cp`: copy a file within one volume or between two.
    pub fn cp(
        &mut self,
        cache: &mut BlockCache,
        from_off: u64,
        from: &str,
        to_off: u64,
        to: &str,
    ) -> Result<()> {
        self.close_open_files(cache);
        const CHUNK: usize = 128 * 1024;
        fn open_err(n: &str) -> impl FnOnce(FfError) -> Error + '_ {
            move |e| fat_err("fatfs_cp can't open file", n, e)
        }
        if from_off == to_off {
            type Step<T> = std::result::Result<T, (FfError, &'static str, String)>;
            let r = self.with(cache, from_off, |v, _| {
                let run = |v: &mut Volume| -> Step<()> {
                    let at = |w: &'static str, n: &str| {
                        let n = n.to_string();
                        move |e| (e, w, n)
                    };
                    let mut src = v
                        .open(&abs(from), OpenMode::Read)
                        .map_err(at("open", from))?;
                    let mut dst = v
                        .open(&abs(to), OpenMode::CreateAlways)
                        .map_err(at("open", to))?;
                    v.sync_file(&mut dst).map_err(at("sync", to))?;
                    let mut buf = vec![0u8; CHUNK];
                    loop {
                        let n = v.read(&mut src, &mut buf).map_err(at("read", from))?;
                        if n == 0 {
                            return Ok(());
                        }
                        let w = v.write(&mut dst, &buf[..n]).map_err(at("write", to))?;
                        if w != n {
                            return Err((FResult::Denied.into(), "short", to.to_string()));
                        }
                        v.sync_file(&mut dst).map_err(at("sync", to))?;
                    }
                };
                Ok(run(v))
            });
            return match r {
                Ok(Ok(())) => Ok(()),
                Ok(Err((e, w, n))) => Err(cp_err(e, w, &n)),
                Err(e) => Err(fat_err("fatfs_cp can't open file", from, e)),
            };
        }
        // Two volumes: alternate between them; each keeps its own mount state.
        let mut src = self
            .with(cache, from_off, |v, _| v.open(&abs(from), OpenMode::Read))
            .map_err(open_err(from))?;
        let mut dst = self
            .with(cache, to_off, |v, _| {
                let mut d = v.open(&abs(to), OpenMode::CreateAlways)?;
                v.sync_file(&mut d)?;
                Ok(d)
            })
            .map_err(open_err(to))?;
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = self
                .with(cache, from_off, |v, _| v.read(&mut src, &mut buf))
                .map_err(|e| fat_err("fatfs_cp can't read", from, e))?;
            if n == 0 {
                break;
            }
            let w = self
                .with(cache, to_off, |v, _| {
                    let w = v.write(&mut dst, &buf[..n])?;
                    v.sync_file(&mut dst)?;
                    Ok(w)
                })
                .map_err(|e| fat_err("fatfs_cp can't write", to, e))?;
            if w != n {
                return Err(Error::msg("Error copying file to FAT"));
            }
        }
        Ok(())
    }

    /// fatfs.c `fatfs_attrib` (it leaves an open file alone).
    pub fn attrib(
        &mut self,
        cache: &mut BlockCache,
        offset: u64,
        name: &str,
        attrib: &str,
    ) -> Result<()> {
        let mut mode = 0u8;
        for c in attrib.chars() {
            match c {
                'S' | 's' => mode |= ff::AM_SYS,
                'H' | 'h' => mode |= ff::AM_HID,
                'R' | 'r' => mode |= ff::AM_RDO,
                _ => {}
            }
        }
        self.with(cache, offset, |v, _| {
            v.chmod(&abs(name), mode, ff::AM_RDO | ff::AM_HID | ff::AM_SYS)
        })
        .map_err(|e| fat_err("fat_attrib", name, e))
    }

    pub fn touch(&mut self, cache: &mut BlockCache, offset: u64, name: &str) -> Result<()> {
        self.close_open_files(cache);
        self.with(cache, offset, |v, _| {
            let mut f = v.open(&abs(name), OpenMode::OpenAlways)?;
            v.sync_file(&mut f)
        })
        .map_err(|e| fat_err("fat_touch", name, e))
    }

    /// fatfs.c `fatfs_exists`: a file (not a directory) is there.
    pub fn exists(&mut self, cache: &mut BlockCache, offset: u64, name: &str) -> bool {
        self.close_open_files(cache);
        self.with(cache, offset, |v, _| {
            v.open(&abs(name), OpenMode::Existing).map(|_| ())
        })
        .is_ok()
    }

    /// fatfs.c `fatfs_file_matches`: the file exists and contains `pattern`.
    pub fn file_matches(
        &mut self,
        cache: &mut BlockCache,
        offset: u64,
        name: &str,
        pattern: &str,
    ) -> bool {
        self.close_open_files(cache);
        let pat = pattern.as_bytes();
        if pat.len() >= 4096 {
            return false;
        }
        self.with(cache, offset, |v, _| {
            let mut f = v.open(&abs(name), OpenMode::Read)?;
            if pat.is_empty() {
                return Ok(true);
            }
            let mut buf = vec![0u8; 4096];
            let mut keep = 0usize;
            loop {
                let n = v.read(&mut f, &mut buf[keep..])?;
                if n == 0 {
                    return Ok(false);
                }
                let have = keep + n;
                if buf[..have].windows(pat.len()).any(|w| w == pat) {
                    return Ok(true);
                }
                keep = (pat.len() - 1).min(have);
                buf.copy_within(have - keep..have, 0);
            }
        })
        .unwrap_or(false)
    }

    /// fatfs.c `fatfs_truncate`: start fat_write on `name`, keeping the file open.
    pub fn truncate(&mut self, cache: &mut BlockCache, offset: u64, name: &str) -> Result<()> {
        if self
            .open
            .as_ref()
            .is_some_and(|o| o.offset != offset || o.name != name)
        {
            self.close_open_files(cache);
        }
        let p = abs(name);
        if self.open.is_none() {
            let file = self
                .with(cache, offset, |v, _| {
                    let mut f = v.open(&p, OpenMode::CreateAlways)?;
                    v.sync_file(&mut f)?;
                    Ok(f)
                })
                .map_err(|e| fat_err("Can't open file on FAT partition", name, e))?;
            self.open = Some(OpenFile {
                offset,
                name: name.to_string(),
                file,
            });
        } else {
            self.with(cache, offset, |v, open| {
                let f = &mut open.as_mut().unwrap().file;
                v.seek(f, 0)?;
                v.truncate(f)?;
                v.sync_file(f)
            })
            .map_err(|e| fat_err("Can't truncate file on FAT partition", name, e))?;
        }
        Ok(())
    }

    /// fatfs.c `fatfs_pwrite`: write `data` at `pos` in the file, filling any gap past its
    /// end with zeros.
    pub fn pwrite(
        &mut self,
        cache: &mut BlockCache,
        offset: u64,
        name: &str,
        pos: u64,
        data: &[u8],
    ) -> Result<()> {
        if self
            .open
            .as_ref()
            .is_some_and(|o| o.offset != offset || o.name != name)
        {
            self.close_open_files(cache);
        }
        if self.open.is_none() {
            let file = self
                .with(cache, offset, |v, _| {
                    let mut f = v.open(&abs(name), OpenMode::WriteOpenAlways)?;
                    v.sync_file(&mut f)?;
                    Ok(f)
                })
                .map_err(|e| fat_err("fat_write can't open file", name, e))?;
            self.open = Some(OpenFile {
                offset,
                name: name.to_string(),
                file,
            });
        }
        let size = data.len();
        let full = |bw: usize| {
            Error::msg(format!(
                "Error writing file to FAT: {name}, expected {size} bytes written, got {bw} (maybe the disk is full?)"
            ))
        };
        let r = self.with(cache, offset, |v, open| {
            let f = &mut open.as_mut().unwrap().file;
            let ctx = |c: &'static str| move |e: FfError| (c, e);
            let pos = pos as u32;
            if pos != Volume::tell(f) {
                if pos > Volume::size(f) {
                    let end = Volume::size(f);
                    if let Err(e) = v.seek(f, end) {
                        return Ok(Err(Fail::Ff("fat_write can't seek to end of file", e)));
                    }
                    let zeros = [0u8; BLOCK as usize];
                    while Volume::tell(f) < pos {
                        let n = ((pos - Volume::tell(f)) as usize).min(zeros.len());
                        let w = match v
                            .write(f, &zeros[..n])
                            .map_err(ctx("fat_write can't write"))
                        {
                            Ok(w) => w,
                            Err((c, e)) => return Ok(Err(Fail::Ff(c, e))),
                        };
                        if w != n {
                            return Ok(Err(Fail::Short(w)));
                        }
                        if let Err(e) = v.sync_file(f) {
                            return Ok(Err(Fail::Ff("sync", e)));
                        }
                    }
                } else if let Err(e) = v.seek(f, pos) {
                    return Ok(Err(Fail::Ff("fat_write can't seek in file", e)));
                }
            }
            let w = match v.write(f, data) {
                Ok(w) => w,
                Err(e) => return Ok(Err(Fail::Ff("fat_write can't write", e))),
            };
            if w != data.len() {
                return Ok(Err(Fail::Short(w)));
            }
            if let Err(e) = v.sync_file(f) {
                return Ok(Err(Fail::Ff("sync", e)));
            }
            Ok(Ok(()))
        });
        match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(Fail::Short(w))) => Err(full(w)),
            Ok(Err(Fail::Ff(c, e))) => Err(fat_err(c, name, e)),
            Err(e) => Err(fat_err("fat_write can't open file", name, e)),
        }
    }

    /// Size of a file (for a delta whose source is a FAT file).
    pub fn file_size(&mut self, cache: &mut BlockCache, offset: u64, name: &str) -> Result<u64> {
        self.with(cache, offset, |v, _| v.stat(&abs(name)))
            .map(|st| st.size as u64)
            .map_err(|e| fat_err("fat_pread can't open file", name, e))
    }

    /// fatfs.c `fatfs_pread`: up to `out.len()` bytes at `pos` (for delta sources).
    pub fn pread(
        &mut self,
        cache: &mut BlockCache,
        offset: u64,
        name: &str,
        pos: u64,
        out: &mut [u8],
    ) -> Result<usize> {
        self.with(cache, offset, |v, _| {
            let mut f = v.open(&abs(name), OpenMode::Read)?;
            v.seek(&mut f, pos.min(u32::MAX as u64) as u32)?;
            v.read(&mut f, out)
        })
        .map_err(|e| fat_err("fat_pread can't open file", name, e))
    }
}

enum Fail {
    Ff(&'static str, FfError),
    Short(usize),
}

fn cp_err(e: FfError, what: &str, name: &str) -> Error {
    match what {
        "open" => fat_err("fatfs_cp can't open file", name, e),
        "read" => fat_err("fatfs_cp can't read", name, e),
        "write" => fat_err("fatfs_cp can't write", name, e),
        "sync" => fat_err("sync", name, e),
        _ => Error::msg("Error copying file to FAT"),
    }
}
