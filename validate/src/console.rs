//! A guest's serial console seen through a child process's stdout (qemu `-nographic`), and its
//! stdin for commands. Lines are matched as they arrive, each stamped with when it was read.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::process::ChildStdin;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use regex::Regex;

use crate::Error;

/// What every marker line of imgtool's init starts with (guest-protocol's MARK_* constants).
const PROTOCOL_PREFIX: &str = "IMGTOOL-";

/// How many console lines are kept for error messages.
const TAIL_LINES: usize = 40;

/// How long the console must stay quiet after a matching line without a newline before that
/// line counts as a prompt. Shorter than any human-facing prompt wait, longer than the gap
/// between two pieces of one line on a loaded host (qemu forwards serial output as it comes).
pub const PROMPT_QUIET: Duration = Duration::from_millis(250);

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

/// A whole console line, when it was read, and its text after each quiet prompt in it.
struct Line {
    text: String,
    at: Instant,
    after_prompt: Vec<String>,
}

impl Line {
    /// The line if `re` matches it, else its first text after a prompt that `re` matches.
    fn matching(&self, re: &Regex) -> Option<String> {
        std::iter::once(&self.text)
            .chain(&self.after_prompt)
            .find(|t| re.is_match(t))
            .cloned()
    }
}

fn line_text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .trim_end_matches('\r')
        .to_string()
}

pub struct Console {
    rx: Receiver<(Vec<u8>, Instant)>,
    stdin: Option<Box<dyn Write + Send>>,
    /// The line being assembled (no newline yet).
    partial: Vec<u8>,
    /// When the last byte of `partial` was read.
    partial_at: Instant,
    /// `partial` was already returned as a match (a prompt): not again until it changes.
    partial_reported: bool,
    /// Where in `partial` output resumed after the console had stood quiet for
    /// [`PROMPT_QUIET`]: what came before was a prompt (`iex(1)> `), and what follows is a
    /// program's own line, matched on its own too.
    resumed: Vec<usize>,
    /// Whole lines received but not yet looked at by a `wait_for`.
    pending: VecDeque<Line>,
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
            partial_at: Instant::now(),
            partial_reported: false,
            resumed: Vec::new(),
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
        self.partial_reported = false;
        if !self.partial.is_empty() && at.duration_since(self.partial_at) >= PROMPT_QUIET {
            self.resumed.push(self.partial.len());
        }
        for &b in chunk {
            if b == b'\n' {
                let line = Line {
                    text: line_text(&self.partial),
                    at,
                    after_prompt: self.after_prompt(),
                };
                self.partial.clear();
                self.resumed.clear();
                if self.tail.len() == TAIL_LINES {
                    self.tail.pop_front();
                }
                self.saw_protocol |= std::iter::once(&line.text)
                    .chain(&line.after_prompt)
                    .any(|t| t.starts_with(PROTOCOL_PREFIX));
                self.tail.push_back(line.text.clone());
                self.pending.push_back(line);
            } else {
                self.partial.push(b);
                self.partial_at = at;
            }
        }
    }

    /// Wait until a console line matches `re`, the console closes, or `deadline` passes. Lines
    /// that don't match are consumed. A last line without a newline counts only once the
    /// console has stayed quiet for [`PROMPT_QUIET`] after it (a prompt such as `login: `); a
    /// line still being written is waited for and matched whole, so a match never holds a
    /// cut-off line. Output that follows a prompt on its line (a program's line printed after
    /// IEx's `iex(1)> `) is matched on its own too, and then that text is the match.
    pub fn wait_for(&mut self, re: &Regex, deadline: Instant) -> Wait {
        self.wait(re, deadline, true)
    }

    /// Like `wait_for`, but only whole lines count: for a reply whose text must be complete
    /// (the snapshot's JSON arrives in several chunks, and its prefix alone would match).
    pub fn wait_for_line(&mut self, re: &Regex, deadline: Instant) -> Wait {
        self.wait(re, deadline, false)
    }

    /// Read and drop console output until `deadline` or until the console closes (whichever
    /// comes first), so the guest never blocks on output. True when it closed.
    pub fn drain(&mut self, deadline: Instant) -> bool {
        loop {
            self.pending.clear();
            if self.closed {
                return true;
            }
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return false;
            };
            match self.rx.recv_timeout(left) {
                Ok((chunk, at)) => self.take_chunk(&chunk, at),
                Err(RecvTimeoutError::Timeout) => return false,
                Err(RecvTimeoutError::Disconnected) => self.closed = true,
            }
        }
    }

    /// The texts of `partial` after each quiet prompt in it (none empty).
    fn after_prompt(&self) -> Vec<String> {
        self.resumed
            .iter()
            .map(|&i| line_text(&self.partial[i..]))
            .filter(|t| !t.is_empty())
            .collect()
    }

    /// The unfinished last line (or its text after a quiet prompt), when `re` matches it and
    /// it was not reported yet.
    fn partial_match(&self, re: &Regex) -> Option<String> {
        if self.partial.is_empty() || self.partial_reported {
            return None;
        }
        Line {
            text: String::from_utf8_lossy(&self.partial).into_owned(),
            at: self.partial_at,
            after_prompt: self.after_prompt(),
        }
        .matching(re)
    }

    fn wait(&mut self, re: &Regex, deadline: Instant, partial_too: bool) -> Wait {
        loop {
            while let Some(line) = self.pending.pop_front() {
                if let Some(text) = line.matching(re) {
                    return Wait::Matched(text, line.at);
                }
            }
            // A matching unfinished line read before the deadline: a prompt if nothing follows
            // it for PROMPT_QUIET (which may end a little after the deadline).
            let prompt = match partial_too && self.partial_at <= deadline {
                true => self.partial_match(re),
                false => None,
            };
            if self.closed {
                // Nothing more can come: the last line is as whole as it will get.
                if let Some(text) = prompt {
                    self.partial_reported = true;
                    return Wait::Matched(text, self.partial_at);
                }
                return Wait::Closed;
            }
            let until = match prompt {
                Some(_) => self.partial_at + PROMPT_QUIET,
                None => deadline,
            };
            let now = Instant::now();
            if prompt.is_none() && now >= deadline {
                return Wait::Timeout;
            }
            let left = until.saturating_duration_since(now);
            match self.rx.recv_timeout(left) {
                Ok((chunk, at)) => self.take_chunk(&chunk, at),
                Err(RecvTimeoutError::Timeout) => match prompt {
                    Some(text) => {
                        self.partial_reported = true;
                        return Wait::Matched(text, self.partial_at);
                    }
                    None => return Wait::Timeout,
                },
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

    /// A marker line written in two pieces (the issue-20 bug: the report's marker line read
    /// "NERVES-STYLE-APP-UP v"): the first piece matches, but the console does not stay quiet
    /// after it, so the whole line is waited for and reported.
    #[test]
    fn a_line_written_in_pieces_is_matched_whole() {
        let mut c = shell("printf 'APP-UP v'; sleep 0.05; echo '1.2.3'; sleep 5");
        let mut con = Console::new(c.stdout.take().unwrap(), None, None);
        let re = Regex::new("APP-UP v").unwrap();
        let got = con.wait_for(&re, Instant::now() + Duration::from_secs(10));
        let Wait::Matched(line, _) = got else {
            panic!("{got:?}: {}", con.tail())
        };
        assert_eq!(line, "APP-UP v1.2.3");
        c.kill().unwrap();
        c.wait().unwrap();
    }

    /// The whole line is matched again: a first piece that matched alone does not make a whole
    /// line that no longer matches count.
    #[test]
    fn a_whole_line_is_rematched_on_its_full_text() {
        let mut c = shell("printf 'ok v'; sleep 0.05; echo '1 failed'; echo 'ok v'; sleep 5");
        let mut con = Console::new(c.stdout.take().unwrap(), None, None);
        let re = Regex::new("^ok v$").unwrap();
        let got = con.wait_for(&re, Instant::now() + Duration::from_secs(10));
        let Wait::Matched(line, _) = got else {
            panic!("{got:?}: {}", con.tail())
        };
        assert_eq!(line, "ok v");
        assert!(con.tail().contains("ok v1 failed"), "{}", con.tail());
        c.kill().unwrap();
        c.wait().unwrap();
    }

    /// A program's line printed after a prompt that stood quiet (IEx's `1> `, then the
    /// application's line) is matched on its own, and whole, when the line as a whole is not.
    #[test]
    fn a_line_after_a_quiet_prompt_is_matched_on_its_own() {
        let re = Regex::new("^NERVES-STYLE-APP-UP").unwrap();
        for script in [
            "printf '1> '; sleep 0.4; echo 'NERVES-STYLE-APP-UP v0.1.0 serial=x'; sleep 5",
            "printf '1> '; sleep 0.4; printf 'NERVES-STYLE-APP-UP v'; sleep 0.05; \
             echo '0.1.0 serial=x'; sleep 5",
        ] {
            let mut c = shell(script);
            let mut con = Console::new(c.stdout.take().unwrap(), None, None);
            let got = con.wait_for(&re, Instant::now() + Duration::from_secs(10));
            let Wait::Matched(line, _) = got else {
                panic!("{script}: {got:?}: {}", con.tail())
            };
            assert_eq!(line, "NERVES-STYLE-APP-UP v0.1.0 serial=x", "{script}");
            // The console's own record keeps the line as it was.
            assert_eq!(con.tail(), "1> NERVES-STYLE-APP-UP v0.1.0 serial=x");
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// A prompt counts once the console stays quiet after it; it is stamped with when it
    /// arrived (not when the quiet period ended), and reported once.
    #[test]
    fn a_prompt_counts_after_a_quiet_period_and_only_once() {
        let mut c = shell("echo booting; printf 'login: '; sleep 5");
        let mut con = Console::new(c.stdout.take().unwrap(), None, None);
        let re = Regex::new("login: $").unwrap();
        let got = con.wait_for(&re, Instant::now() + Duration::from_secs(10));
        let returned = Instant::now();
        let Wait::Matched(line, at) = got else {
            panic!("{got:?}: {}", con.tail())
        };
        assert_eq!(line, "login: ");
        assert!(returned.duration_since(at) >= PROMPT_QUIET);
        // The same prompt is not a second match.
        let d = Instant::now() + Duration::from_millis(600);
        assert_eq!(con.wait_for(&re, d), Wait::Timeout);
        c.kill().unwrap();
        c.wait().unwrap();
    }

    /// A prompt that is the last thing a process prints before exiting still matches.
    #[test]
    fn a_prompt_before_exit_matches() {
        let mut c = shell("printf 'login: '");
        let mut con = Console::new(c.stdout.take().unwrap(), None, None);
        let got = con.wait_for(
            &Regex::new("login: $").unwrap(),
            Instant::now() + Duration::from_secs(10),
        );
        assert!(
            matches!(got, Wait::Matched(ref l, _) if l == "login: "),
            "{got:?}"
        );
        c.wait().unwrap();
    }

    /// Draining runs to the deadline whatever the lines say (empty ones included), and stops
    /// early only when the console closes.
    #[test]
    fn drain_runs_to_the_deadline_or_the_close() {
        let mut c = shell("echo; echo; echo text; sleep 5");
        let mut con = Console::new(c.stdout.take().unwrap(), None, None);
        let start = Instant::now();
        assert!(!con.drain(start + Duration::from_millis(500)));
        assert!(start.elapsed() >= Duration::from_millis(500));
        assert!(con.tail().contains("text"));
        c.kill().unwrap();
        c.wait().unwrap();
        let mut c = shell("echo bye");
        let mut con = Console::new(c.stdout.take().unwrap(), None, None);
        let start = Instant::now();
        assert!(con.drain(start + Duration::from_secs(10)));
        assert!(start.elapsed() < Duration::from_secs(5));
        c.wait().unwrap();
    }

    /// A reply written in two pieces: `wait_for_line` waits for the whole line, even when the
    /// pieces are further apart than a prompt's quiet period.
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
