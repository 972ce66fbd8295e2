//! Progress output as fwup's src/progress.c prints it: `-n` one percentage per line when it
//! changes, `-q` nothing, `--framing` PR frames, otherwise a bar with the bytes read and
//! written; 100 is reported only at the very end.

use crate::out::{self, Out};
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Off,
    Numeric,
    Normal,
    Framing,
}

pub struct Progress {
    pub mode: Mode,
    pub total: u64,
    current: u64,
    low: i64,
    range: i64,
    last: i64,
    /// Archive bytes read so far (shown by the bar).
    pub input_bytes: Arc<AtomicU64>,
    start: Option<Instant>,
    out: Out,
}

fn natural_units(n: u64) -> (u64, &'static str) {
    const K: u64 = 1000;
    if n >= K * K * K * K {
        (K * K * K * K, "TB")
    } else if n >= K * K * K {
        (K * K * K, "GB")
    } else if n >= K * K {
        (K * K, "MB")
    } else if n >= K {
        (K, "KB")
    } else {
        (1, "bytes")
    }
}

impl Progress {
    /// Progress printed through `out`; the normal bar marks `out` so later messages clear its
    /// line.
    pub fn new(mode: Mode, low: i64, high: i64, out: Out) -> Self {
        out.set_bar(mode == Mode::Normal);
        let mut p = Progress {
            mode,
            total: 0,
            current: 0,
            low,
            range: high - low,
            last: -1,
            input_bytes: Arc::new(AtomicU64::new(0)),
            start: None,
            out,
        };
        p.output(low);
        p
    }

    fn output(&mut self, pct: i64) {
        if pct <= self.last {
            return;
        }
        self.last = pct;
        match self.mode {
            Mode::Numeric => {
                let mut o = std::io::stdout().lock();
                let _ = writeln!(o, "{pct}");
                let _ = o.flush();
            }
            Mode::Normal => {
                let bars = (pct * 36 / 100).clamp(0, 50) as usize;
                let mut s = format!("\r{pct:3}% [{:<36}]", "=".repeat(bars));
                if self.total > 0 {
                    let input = self.input_bytes.load(Ordering::Relaxed);
                    let (iu, iname) = natural_units(input);
                    let (ou, oname) = natural_units(self.current);
                    s.push_str(&format!(
                        " {:.2} {iname} in / {:.2} {oname} out     \x08\x08\x08\x08\x08",
                        input as f64 / iu as f64,
                        self.current as f64 / ou as f64
                    ));
                }
                let mut o = std::io::stdout().lock();
                let _ = o.write_all(s.as_bytes());
                let _ = o.flush();
            }
            Mode::Framing => self.out.output(out::PROGRESS, pct as u16, ""),
            Mode::Off => {}
        }
    }

    pub fn report(&mut self, units: u64) {
        if self.mode == Mode::Normal && self.start.is_none() && self.total > 0 {
            self.start = Some(Instant::now());
        }
        self.current = (self.current + units).min(self.total);
        let mut pct = self.low;
        if self.total > 0 {
            let amt = ((self.current as i128 * self.range as i128) / self.total as i128) as i64;
            pct += amt.min(self.range - 1);
        }
        self.output(pct);
    }

    pub fn complete(&mut self) {
        self.output(self.low + self.range);
        if self.mode == Mode::Normal {
            let mut o = std::io::stdout().lock();
            let _ = o.write_all(b"\nSuccess!\n");
            if let Some(t) = self.start {
                let ms = t.elapsed().as_millis() as u64;
                if ms > 60_000 {
                    let s = ms / 1000;
                    let _ = writeln!(o, "Elapsed time: {} min {:02} s", s / 60, s % 60);
                } else {
                    let _ = writeln!(o, "Elapsed time: {}.{:03} s", ms / 1000, ms % 1000);
                }
            }
            let _ = o.flush();
        }
    }

    /// `info()` text (fwup_warnx).
    pub fn info(&mut self, msg: &str) {
        self.out.warn(msg);
    }
}
