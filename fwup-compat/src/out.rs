//! Everything fwup prints goes through an [`Out`]: plain text on stdout, or with `--framing`,
//! frames of `u32 BE length (payload + 4) | 2-byte type | u16 BE code | payload`, with the
//! types OK, ER, WN and PR. Errors, warnings and `info()` text all go to stdout, as in fwup.
//!
//! Spec: fwup's docs/fwup.md "Integration with applications" (framing and the exit
//! handshake).

use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

pub const SUCCESS: &str = "OK";
pub const ERROR: &str = "ER";
pub const INFO: &str = "WN";
pub const PROGRESS: &str = "PR";

/// How one run prints: the command line's `--framing` and `--exit-handshake`, and whether
/// the progress bar is on screen. Clones share the bar state, so the progress reporter and
/// the caller agree on it.
#[derive(Clone, Debug, Default)]
pub struct Out {
    pub framing: bool,
    pub handshake: bool,
    bar: Arc<AtomicBool>,
}

impl Out {
    pub fn new(framing: bool, handshake: bool) -> Self {
        Out {
            framing,
            handshake,
            bar: Arc::default(),
        }
    }

    /// The normal progress bar is (or has been) on screen: messages clear its line first.
    pub fn set_bar(&self, on: bool) {
        self.bar.store(on, Ordering::Relaxed);
    }

    fn bar(&self) -> bool {
        self.bar.load(Ordering::Relaxed)
    }

    /// fwup's `fwup_output`.
    pub fn output(&self, kind: &str, code: u16, text: &str) {
        let mut o = std::io::stdout().lock();
        if self.framing {
            let mut h = Vec::with_capacity(8);
            h.extend_from_slice(&(text.len() as u32 + 4).to_be_bytes());
            h.extend_from_slice(kind.as_bytes());
            h.extend_from_slice(&code.to_be_bytes());
            let _ = o.write_all(&h);
        } else if self.bar() && !text.is_empty() {
            let _ = o.write_all(b"\r\x1b[K");
        }
        let _ = o.write_all(text.as_bytes());
        let _ = o.flush();
    }

    /// fwup's `fwup_warnx`: a message (info() text, warnings).
    pub fn warn(&self, msg: &str) {
        if self.framing {
            self.output(INFO, 0, msg);
        } else {
            self.output(INFO, 0, &format!("fwup: {msg}\n"));
        }
    }

    /// fwup's `fwup_errx` without the exit: print the error and return the status 1.
    pub fn error(&self, msg: &str) -> i32 {
        if self.framing {
            self.output(ERROR, 0, msg);
        } else {
            self.output(ERROR, 0, &format!("fwup: {msg}\n"));
        }
        1
    }

    /// fwup's `fwup_exit`: with `--exit-handshake`, send Ctrl-Z and the status, then wait for
    /// stdin to close (Erlang ports need this to read the status).
    pub fn exit_handshake(&self, status: i32) {
        if !self.handshake {
            return;
        }
        {
            let mut o = std::io::stdout().lock();
            let _ = o.write_all(&[0x1a, status as u8]);
            let _ = o.flush();
        }
        let mut buf = [0u8; 4096];
        let mut i = std::io::stdin().lock();
        loop {
            match i.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
    }
}
