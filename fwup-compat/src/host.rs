//! Actions that reach outside the destination: `path_write`, `pipe_write` and `execute`
//! (only with `--unsafe`), and `reboot_param`.
//!
//! Spec: fwup's docs/fwup.md "path_write", "pipe_write", "execute", "reboot_param"
//! (<https://github.com/fwup-home/fwup/blob/main/docs/fwup.md>).

use crate::error::{Error, Result};
use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::process::{Child, Command, Stdio};

/// What the host-side actions may do, from the command line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostOptions {
    /// `--unsafe`: path_write, pipe_write, execute, ubi_volume_write and require-execute.
    pub allow_unsafe: bool,
    /// `--reboot-param-path`; None tries /run/systemd/reboot-param, then /run/reboot-param.
    pub reboot_param_path: Option<String>,
}

impl HostOptions {
    fn check_unsafe(&self, name: &str) -> Result<()> {
        if self.allow_unsafe {
            Ok(())
        } else {
            Err(Error::msg(format!("{name} requires --unsafe")))
        }
    }
}

/// `execute(cmd)`: run it with /bin/sh; a non-zero exit fails the task.
pub fn execute(cmd: &str, opts: &HostOptions) -> Result<()> {
    opts.check_unsafe("execute")?;
    let st = Command::new("/bin/sh")
        .arg("-c")
        .arg(cmd)
        .status()
        .map_err(|_| Error::msg(format!("execute couldn't run '{cmd}'")))?;
    if !st.success() {
        // system() reports the wait status, as fwup prints it.
        use std::os::unix::process::ExitStatusExt;
        return Err(Error::msg(format!(
            "'{cmd}' failed with exit status {}",
            st.into_raw()
        )));
    }
    Ok(())
}

/// `reboot_param(text)`: write it where the reboot code picks it up.
pub fn reboot_param(param: &str, opts: &HostOptions) -> Result<()> {
    let mut f = match &opts.reboot_param_path {
        Some(p) => {
            File::create(p).map_err(|_| Error::msg(format!("reboot-param can't open '{p}'")))?
        }
        None => File::create("/run/systemd/reboot-param")
            .or_else(|_| File::create("/run/reboot-param"))
            .map_err(|_| Error::msg("reboot-param can't open under `/run`"))?,
    };
    f.write_all(param.as_bytes())
        .map_err(|e| Error::msg(format!("reboot-param: {e}")))
}

/// `path_write(path)`: the resource into a host file (holes stay holes).
pub struct PathWriter {
    path: String,
    f: File,
}

impl PathWriter {
    pub fn open(path: &str, opts: &HostOptions) -> Result<Self> {
        opts.check_unsafe("path_write")?;
        let f = File::create(path)
            .map_err(|_| Error::msg(format!("path_write can't open '{path}'")))?;
        Ok(PathWriter {
            path: path.to_string(),
            f,
        })
    }

    pub fn pwrite(&mut self, data: &[u8], offset: u64) -> Result<()> {
        self.f.seek(SeekFrom::Start(offset)).map_err(|_| {
            Error::msg(format!("seek to offset {offset} failed on '{}'", self.path))
        })?;
        self.f
            .write_all(data)
            .map_err(|_| Error::msg(format!("path_write failed to write '{}'", self.path)))
    }

    pub fn finish(self) -> Result<()> {
        Ok(())
    }
}

/// `pipe_write(cmd)`: the resource on a command's stdin, holes as zeros.
pub struct PipeWriter {
    cmd: String,
    child: Child,
    last: u64,
}

impl PipeWriter {
    pub fn open(cmd: &str, opts: &HostOptions) -> Result<Self> {
        opts.check_unsafe("pipe_write")?;
        let child = Command::new("/bin/sh")
            .arg("-c")
            .arg(cmd)
            .stdin(Stdio::piped())
            .spawn()
            .map_err(|_| Error::msg(format!("pipe_write can't run '{cmd}'")))?;
        Ok(PipeWriter {
            cmd: cmd.to_string(),
            child,
            last: 0,
        })
    }

    pub fn pwrite(&mut self, data: &[u8], offset: u64) -> Result<()> {
        let err = |c: &str| Error::msg(format!("pipe_write failed to write '{c}'"));
        let stdin = self.child.stdin.as_mut().unwrap();
        while self.last < offset {
            let n = (offset - self.last).min(512) as usize;
            stdin
                .write_all(&[0u8; 512][..n])
                .map_err(|_| err(&self.cmd))?;
            self.last += n as u64;
        }
        stdin.write_all(data).map_err(|_| err(&self.cmd))?;
        self.last += data.len() as u64;
        Ok(())
    }

    pub fn finish(mut self) -> Result<()> {
        drop(self.child.stdin.take());
        let st = self
            .child
            .wait()
            .map_err(|e| Error::msg(format!("pipe_write: {e}")))?;
        if !st.success() {
            return Err(Error::msg(format!(
                "command '{}' returned an error to pipe_write",
                self.cmd
            )));
        }
        Ok(())
    }
}

/// `require-execute(cmd)`: met when `--unsafe` is on and the command exits 0.
pub fn require_execute(cmd: &str, opts: &HostOptions) -> bool {
    if !opts.allow_unsafe || cmd.is_empty() {
        return false;
    }
    Command::new("/bin/sh")
        .arg("-c")
        .arg(cmd)
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// stat(2) through libc's `stat64` symbol (not statx), so LD_PRELOAD shims see it as they
/// see fwup's calls. Returns (st_dev, st_rdev).
fn stat_devs(path: &str) -> Option<(u64, u64)> {
    let c = std::ffi::CString::new(path).ok()?;
    let mut st: libc::stat64 = unsafe { std::mem::zeroed() };
    // SAFETY: c is a valid C string and st a valid out pointer.
    let rc = unsafe { libc::stat64(c.as_ptr(), &mut st) };
    (rc == 0).then_some((st.st_dev, st.st_rdev))
}

fn dev_string(dev: u64) -> String {
    format!("{}:{}", libc::major(dev), libc::minor(dev))
}

/// A sysfs file's first line (readsysfs in fwup's mmc_linux.c).
fn read_sysfs(path: &str) -> Option<String> {
    let s = std::fs::read_to_string(path).ok()?;
    let line = s.lines().next().unwrap_or("").trim_end().to_string();
    (!line.is_empty()).then_some(line)
}

extern "C" {
    // glibc's large-file scandir, what a C program built with _FILE_OFFSET_BITS=64 calls.
    fn scandir64(
        dirp: *const libc::c_char,
        namelist: *mut *mut *mut libc::dirent64,
        filter: Option<unsafe extern "C" fn(*const libc::dirent64) -> libc::c_int>,
        compar: Option<
            unsafe extern "C" fn(
                *mut *const libc::dirent64,
                *mut *const libc::dirent64,
            ) -> libc::c_int,
        >,
    ) -> libc::c_int;
}

/// Entries of a directory via libc `scandir64` (so the mount shim sees it).
fn list_dir(path: &str) -> Vec<String> {
    let Ok(c) = std::ffi::CString::new(path) else {
        return Vec::new();
    };
    let mut list: *mut *mut libc::dirent64 = std::ptr::null_mut();
    // SAFETY: valid C string; scandir allocates list and its entries with malloc.
    let n = unsafe { scandir64(c.as_ptr(), &mut list, None, None) };
    let mut out = Vec::new();
    for i in 0..n.max(0) as usize {
        // SAFETY: scandir returned n valid entries.
        unsafe {
            let e = *list.add(i);
            let name = std::ffi::CStr::from_ptr((*e).d_name.as_ptr());
            out.push(name.to_string_lossy().into_owned());
            libc::free(e as *mut libc::c_void);
        }
    }
    if !list.is_null() {
        // SAFETY: allocated by scandir.
        unsafe { libc::free(list as *mut libc::c_void) };
    }
    out
}

fn traverse_devices(current: &str, goal: &str, depth_left: u32) -> bool {
    if current == goal {
        return true;
    }
    if depth_left == 0 {
        return false;
    }
    let slaves = format!("/sys/dev/block/{current}/slaves");
    list_dir(&slaves)
        .iter()
        .filter(|n| !n.starts_with('.'))
        .any(|n| {
            read_sysfs(&format!("{slaves}/{n}/dev"))
                .is_some_and(|next| traverse_devices(&next, goal, depth_left - 1))
        })
}

/// `require-path-on-device(path, device)`: the filesystem holding `path` is on `device`,
/// directly or through up to three device-mapper layers.
pub fn path_on_device(path: &str, device: &str) -> bool {
    let Some((dev, _)) = stat_devs(path) else {
        return false;
    };
    let Some((_, rdev)) = stat_devs(device) else {
        return false;
    };
    traverse_devices(&dev_string(dev), &dev_string(rdev), 3)
}

/// `require-path-at-offset(path, block)`: the partition holding `path` starts at `block`.
pub fn path_at_offset(path: &str, block: u64) -> bool {
    let Some((dev, _)) = stat_devs(path) else {
        return false;
    };
    read_sysfs(&format!("/sys/dev/block/{}/start", dev_string(dev)))
        .is_some_and(|s| crate::config::strtoull(&s) == block)
}

/// `ubi_volume_write(path)`: the resource through a UBI volume update (UBI_IOCVOLUP with
/// the total size, then sequential writes; holes are written as zeros). Plain libc calls:
/// UBI volumes are character devices driven by ioctl and write(2).
///
/// Spec: Linux Documentation "UBI - Unsorted Block Images", volume update
/// (<https://www.kernel.org/doc/html/latest/filesystems/ubifs.html>, mtd-utils ubi-user.h).
pub struct UbiWriter {
    path: String,
    fd: libc::c_int,
    cursor: u64,
    total: u64,
}

/// `_IOW('O', 0, __s64)` from mtd-utils' ubi-user.h.
const UBI_IOCVOLUP: libc::c_ulong = 0x4008_4f00;

fn errno_text() -> String {
    std::io::Error::from(std::io::Error::last_os_error().kind()).to_string()
}

impl UbiWriter {
    pub fn open(path: &str, total: u64, opts: &HostOptions) -> Result<Self> {
        opts.check_unsafe("ubi_volume_write")?;
        let c = std::ffi::CString::new(path)
            .map_err(|_| Error::msg(format!("ubi_volume_write can't open '{path}'")))?;
        // SAFETY: valid C string.
        let fd = unsafe { libc::open(c.as_ptr(), libc::O_WRONLY) };
        if fd < 0 {
            return Err(Error::msg(format!(
                "ubi_volume_write can't open '{path}': {}",
                errno_text()
            )));
        }
        let size = total as i64;
        // SAFETY: fd is open; the ioctl reads one i64.
        if unsafe { libc::ioctl(fd, UBI_IOCVOLUP, &size as *const i64) } < 0 {
            let e = errno_text();
            // SAFETY: fd is open and owned here.
            unsafe { libc::close(fd) };
            return Err(Error::msg(format!(
                "UBI_IOCVOLUP failed on '{path}': {e}. Check that it's a UBI volume (see /sys/class/ubi)"
            )));
        }
        Ok(UbiWriter {
            path: path.to_string(),
            fd,
            cursor: 0,
            total,
        })
    }

    fn write_seq(&mut self, mut data: &[u8]) -> Result<()> {
        while !data.is_empty() {
            // SAFETY: fd is open; data is a valid buffer.
            let n = unsafe { libc::write(self.fd, data.as_ptr() as *const _, data.len()) };
            if n < 0 {
                if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(Error::msg(format!(
                    "write to '{}' failed: {}",
                    self.path,
                    errno_text()
                )));
            }
            self.cursor += n as u64;
            data = &data[n as usize..];
        }
        Ok(())
    }

    fn zeros_to(&mut self, end: u64) -> Result<()> {
        while self.cursor < end {
            let n = (end - self.cursor).min(512) as usize;
            self.write_seq(&[0u8; 512][..n])?;
        }
        Ok(())
    }

    pub fn pwrite(&mut self, data: &[u8], offset: u64) -> Result<()> {
        if offset < self.cursor {
            return Err(Error::msg(format!(
                "unexpected out-of-order write to '{}' (offset={offset}, cursor={})",
                self.path, self.cursor
            )));
        }
        self.zeros_to(offset)?;
        self.write_seq(data)
    }

    /// Fill to the end (a final hole) before finishing.
    pub fn fill_to(&mut self, end: u64) -> Result<()> {
        self.zeros_to(end)
    }

    /// Close the volume: the kernel commits the update when every byte was written.
    pub fn finish(mut self, ok: bool) -> Result<()> {
        let r = if ok && self.cursor != self.total {
            Err(Error::msg(format!(
                "wrote {} bytes to '{}' but declared {}",
                self.cursor, self.path, self.total
            )))
        } else {
            Ok(())
        };
        let fd = std::mem::replace(&mut self.fd, -1);
        // SAFETY: fd is open and owned here.
        if unsafe { libc::close(fd) } < 0 && r.is_ok() {
            return Err(Error::msg(format!(
                "close('{}') failed: {}",
                self.path,
                errno_text()
            )));
        }
        r
    }
}

impl Drop for UbiWriter {
    fn drop(&mut self) {
        if self.fd >= 0 {
            // SAFETY: still open; closing without a full write invalidates the volume, as
            // the kernel does for an interrupted update.
            unsafe { libc::close(self.fd) };
        }
    }
}
