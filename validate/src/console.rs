//! A guest's serial console seen through a child process's stdout (qemu `-nographic`), and its
//! stdin for commands. Lines are matched as they arrive, each stamped with when it was read.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::process::ChildStdin;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::Instant;

use regex::Regex;

use crate::Error;

/// What every marker line of imgtool's init starts with (guest-protocol's MARK_* constants).
const PROTOCOL_PREFIX: &str = "IMGTOOL-";

/// How many console lines are kept for error messages.
const TAIL_LINES: usize = 40;

/// What waiting for a line ended with.
#[derive(Debug, PartialEq, Eq)]
pub enum Wait {
    /// A line matched; it was read at this instant.
    Matched(String, Instant),
    /// The console closed (the process exited) first.
    Closed,
    /// The deadline passed first.
    Timeout,
}

pub struct Console {
    rx: Receiver<(Vec<u8>, Instant)>,
    stdin: Option<Box<dyn Write + Send>>,
    /// The line being assembled (no newline yet).
    partial: Vec<u8>,
    /// Whole lines received but not yet looked at by a `wait_for`.
    pending: VecDeque<(String, Instant)>,
    tail: VecDeque<String>,
    copy: Option<Box<dyn Write + Send>>,
    closed: bool,
    /// A line of imgtool's console protocol (an `IMGTOOL-` marker) went by.
    saw_protocol: bool,
}

impl Console {
    /// Start reading `out` on a thread. `copy` receives every byte (a log file, or stderr).
    pub fn new(
        out: impl Read + Send + 'static,
        stdin: Option<ChildStdin>,
        copy: Option<Box<dyn Write + Send>>,
    ) -> Self {
        Self::with_input(
            out,
            stdin.map(|s| Box::new(s) as Box<dyn Write + Send>),
            copy,
        )
    }

    /// Like `new`, with any writer for commands (a socket to a second console).
    pub fn with_input(
        mut out: impl Read + Send + 'static,
        stdin: Option<Box<dyn Write + Send>>,
        copy: Option<Box<dyn Write + Send>>,
    ) -> Self {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                match out.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if tx.send((buf[..n].to_vec(), Instant::now())).is_err() {
                            break;
                        }
                    }
                }
            }
        });
        Console {
            rx,
            stdin,
            partial: Vec::new(),
            pending: VecDeque::new(),
            tail: VecDeque::new(),
            copy,
            closed: false,
            saw_protocol: false,
        }
    }

    fn take_chunk(&mut self, chunk: &[u8], at: Instant) {
        if let Some(c) = self.copy.as_mut() {
            let _ = c.write_all(chunk);
            let _ = c.flush();
        }
        for &b in chunk {
            if b == b'\n' {
                let text = String::from_utf8_lossy(&self.partial)
                    .trim_end_matches('\r')
                    .to_string();
                self.partial.clear();
                if self.tail.len() == TAIL_LINES {
                    self.tail.pop_front();
                }
                self.saw_protocol |= text.starts_with(PROTOCOL_PREFIX);
                self.tail.push_back(text.clone());
                self.pending.push_back((text, at));
            } else {
                self.partial.push(b);
            }
        }
    }

    /// Wait until a console line matches `re` (whole lines, and a last line without a newline
    /// such as a prompt), the console closes, or `deadline` passes. Lines that don't match are
    /// consumed.
    pub fn wait_for(&mut self, re: &Regex, deadline: Instant) -> Wait {
        self.wait(re, deadline, true)
    }

    /// Like `wait_for`, but only whole lines count: for a reply whose text must be complete
    /// (the snapshot's JSON arrives in several chunks, and its prefix alone would match).
    pub fn wait_for_line(&mut self, re: &Regex, deadline: Instant) -> Wait {
        self.wait(re, deadline, false)
    }

    fn wait(&mut self, re: &Regex, deadline: Instant, partial_too: bool) -> Wait {
        loop {
            while let Some((line, at)) = self.pending.pop_front() {
                if re.is_match(&line) {
                    return Wait::Matched(line, at);
                }
            }
            if self.closed {
                return Wait::Closed;
            }
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return Wait::Timeout;
            };
            match self.rx.recv_timeout(left) {
                Ok((chunk, at)) => {
                    self.take_chunk(&chunk, at);
                    if partial_too && self.pending.is_empty() && !self.partial.is_empty() {
                        let text = String::from_utf8_lossy(&self.partial).to_string();
                        if re.is_match(&text) {
                            return Wait::Matched(text, at);
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => return Wait::Timeout,
                Err(RecvTimeoutError::Disconnected) => self.closed = true,
            }
        }
    }

    /// Type one line on the console.
    pub fn send(&mut self, line: &str) -> Result<(), Error> {
        let stdin = self.stdin.as_mut().ok_or(Error::NoConsoleInput)?;
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|_| stdin.flush())
            .map_err(|e| Error::Io("console input".into(), e))
    }

    /// Whether imgtool's init has spoken on this console (its log and ready lines).
    pub fn saw_protocol(&self) -> bool {
        self.saw_protocol
    }

    /// The last lines seen, for error messages.
    pub fn tail(&self) -> String {
        let mut s: Vec<&str> = self.tail.iter().map(String::as_str).collect();
        let partial = String::from_utf8_lossy(&self.partial);
        if !partial.is_empty() {
            s.push(&partial);
        }
        s.join("\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};
    use std::time::Duration;

    fn shell(script: &str) -> std::process::Child {
        Command::new("sh")
            .args(["-c", script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap()
    }

    #[test]
    fn marker_from_a_real_child_after_a_delay() {
        let mut c =
            shell("echo booting; sleep 0.4; echo 'IMGTOOL-READY uptime_ms=5 pid=7'; sleep 5");
        let start = Instant::now();
        let mut con = Console::new(c.stdout.take().unwrap(), c.stdin.take(), None);
        let re = Regex::new("^IMGTOOL-READY").unwrap();
        let got = con.wait_for(&re, start + Duration::from_secs(10));
        let Wait::Matched(line, at) = got else {
            panic!("{got:?}")
        };
        assert_eq!(line, "IMGTOOL-READY uptime_ms=5 pid=7");
        let t = at.duration_since(start);
        assert!(
            t >= Duration::from_millis(350) && t < Duration::from_secs(5),
            "{t:?}"
        );
        assert!(con.tail().contains("booting"));
        c.kill().unwrap();
        c.wait().unwrap();
    }

    #[test]
    fn timeout_when_the_marker_never_comes() {
        let mut c = shell("echo nothing here; sleep 5");
        let mut con = Console::new(c.stdout.take().unwrap(), None, None);
        let start = Instant::now();
        let got = con.wait_for(
            &Regex::new("READY").unwrap(),
            start + Duration::from_millis(500),
        );
        assert_eq!(got, Wait::Timeout);
        let waited = start.elapsed();
        assert!(waited >= Duration::from_millis(500) && waited < Duration::from_secs(3));
        c.kill().unwrap();
        c.wait().unwrap();
    }

    #[test]
    fn closed_when_the_process_exits_first() {
        let mut c = shell("echo bye");
        let mut con = Console::new(c.stdout.take().unwrap(), None, None);
        let got = con.wait_for(
            &Regex::new("READY").unwrap(),
            Instant::now() + Duration::from_secs(10),
        );
        assert_eq!(got, Wait::Closed);
        assert_eq!(con.tail(), "bye");
        c.wait().unwrap();
    }

    #[test]
    fn commands_reach_the_child_and_a_prompt_matches_without_newline() {
        let mut c = shell("printf 'login: '; read l; echo \"got $l\"");
        let mut con = Console::new(c.stdout.take().unwrap(), c.stdin.take(), None);
        let d = Instant::now() + Duration::from_secs(10);
        assert!(matches!(
            con.wait_for(&Regex::new("login: $").unwrap(), d),
            Wait::Matched(..)
        ));
        con.send("snapshot").unwrap();
        let Wait::Matched(l, _) = con.wait_for(&Regex::new("got snapshot$").unwrap(), d) else {
            panic!("{}", con.tail())
        };
        assert_eq!(l, "login: got snapshot");
        c.wait().unwrap();
    }

    /// A reply written in two pieces: `wait_for_line` waits for the whole line, where
    /// `wait_for` would take the first piece (the snapshot bug: JSON cut after the prefix).
    #[test]
    fn whole_line_waits_for_the_rest() {
        let mut c = shell("printf 'IMGTOOL-SNAPSHOT '; sleep 0.3; echo '{\"seq\":1}'");
        let mut con = Console::new(c.stdout.take().unwrap(), None, None);
        let re = Regex::new("^IMGTOOL-SNAPSHOT ").unwrap();
        let d = Instant::now() + Duration::from_secs(10);
        let Wait::Matched(l, _) = con.wait_for_line(&re, d) else {
            panic!("{}", con.tail())
        };
        assert_eq!(l, "IMGTOOL-SNAPSHOT {\"seq\":1}");
        c.wait().unwrap();
    }
}
