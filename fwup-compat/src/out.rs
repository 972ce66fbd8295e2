//! Everything fwup prints goes through here: plain text on stdout, or with `--framing`,
//! frames of `u32 BE length (payload + 4) | 2-byte type | u16 BE code | payload`, with the
//! types OK, ER, WN and PR. Errors, warnings and `info()` text all go to stdout, as in fwup.
//!
//! Spec: fwup's docs/fwup.md "Integration with applications" (framing and the exit
//! handshake).

use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

pub const SUCCESS: &str = "OK";
pub const ERROR: &str = "ER";
pub const INFO: &str = "WN";
pub const PROGRESS: &str = "PR";

static FRAMING: AtomicBool = AtomicBool::new(false);
static HANDSHAKE: AtomicBool = AtomicBool::new(false);
/// The progress mode while applying: 0 off, 1 numeric, 2 normal bar, 3 framing.
static PROGRESS_MODE: AtomicU8 = AtomicU8::new(0);

pub fn set_framing(on: bool) {
    FRAMING.store(on, Ordering::Relaxed);
}

pub fn framing() -> bool {
    FRAMING.load(Ordering::Relaxed)
}

pub fn set_handshake(on: bool) {
    HANDSHAKE.store(on, Ordering::Relaxed);
}

pub fn set_progress_mode(m: u8) {
    PROGRESS_MODE.store(m, Ordering::Relaxed);
}

/// The normal progress bar is on screen (messages must clear its line first).
pub fn bar_mode() -> bool {
    PROGRESS_MODE.load(Ordering::Relaxed) == 2
}

/// fwup's `fwup_output`.
pub fn output(kind: &str, code: u16, text: &str) {
    let mut o = std::io::stdout().lock();
    if framing() {
        let mut h = Vec::with_capacity(8);
        h.extend_from_slice(&(text.len() as u32 + 4).to_be_bytes());
        h.extend_from_slice(kind.as_bytes());
        h.extend_from_slice(&code.to_be_bytes());
        let _ = o.write_all(&h);
    } else if bar_mode() && !text.is_empty() {
        let _ = o.write_all(b"\r\x1b[K");
    }
    let _ = o.write_all(text.as_bytes());
    let _ = o.flush();
}

/// fwup's `fwup_warnx`: a message (info() text, warnings).
pub fn warn(msg: &str) {
    if framing() {
        output(INFO, 0, msg);
    } else {
        output(INFO, 0, &format!("fwup: {msg}\n"));
    }
}

/// fwup's `fwup_errx` without the exit: print the error and return the status 1.
pub fn error(msg: &str) -> i32 {
    if framing() {
        output(ERROR, 0, msg);
    } else {
        output(ERROR, 0, &format!("fwup: {msg}\n"));
    }
    1
}

/// fwup's `fwup_exit`: with `--exit-handshake`, send Ctrl-Z and the status, then wait for
/// stdin to close (Erlang ports need this to read the status).
pub fn exit_handshake(status: i32) {
    if !HANDSHAKE.load(Ordering::Relaxed) {
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
