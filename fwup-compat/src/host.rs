//! Actions that reach outside the destination: `path_write`, `pipe_write` and `execute`
//! (only with `--unsafe`), and `reboot_param`.
//!
//! Spec: fwup's docs/fwup.md "path_write", "pipe_write", "execute", "reboot_param"
//! (<https://github.com/fwup-home/fwup/blob/main/docs/fwup.md>).

use crate::error::{Error, Result};
use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

static UNSAFE: AtomicBool = AtomicBool::new(false);
static REBOOT_PARAM_PATH: Mutex<Option<String>> = Mutex::new(None);

/// `--unsafe` was given.
pub fn set_unsafe(on: bool) {
    UNSAFE.store(on, Ordering::Relaxed);
}

/// `--reboot-param-path`.
pub fn set_reboot_param_path(p: Option<String>) {
    *REBOOT_PARAM_PATH.lock().unwrap() = p;
}

fn check_unsafe(name: &str) -> Result<()> {
    if UNSAFE.load(Ordering::Relaxed) {
        Ok(())
    } else {
        Err(Error::msg(format!("{name} requires --unsafe")))
    }
}

/// `execute(cmd)`: run it with /bin/sh; a non-zero exit fails the task.
pub fn execute(cmd: &str) -> Result<()> {
    check_unsafe("execute")?;
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
pub fn reboot_param(param: &str) -> Result<()> {
    let path = REBOOT_PARAM_PATH.lock().unwrap().clone();
    let mut f = match path {
        Some(p) => {
            File::create(&p).map_err(|_| Error::msg(format!("reboot-param can't open '{p}'")))?
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
    pub fn open(path: &str) -> Result<Self> {
        check_unsafe("path_write")?;
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
    pub fn open(cmd: &str) -> Result<Self> {
        check_unsafe("pipe_write")?;
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
