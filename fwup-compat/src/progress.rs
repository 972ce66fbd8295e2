//! Progress output as fwup's src/progress.c prints it: `-n` one percentage per line when it
//! changes, `-q` nothing, otherwise a bar; 100 is reported only at the very end.

use std::io::Write;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Off,
    Numeric,
    Normal,
}

pub struct Progress {
    pub mode: Mode,
    pub total: u64,
    current: u64,
    low: i64,
    range: i64,
    last: i64,
}

impl Progress {
    pub fn new(mode: Mode, low: i64, high: i64) -> Self {
        let mut p = Progress {
            mode,
            total: 0,
            current: 0,
            low,
            range: high - low,
            last: -1,
        };
        p.output(low);
        p
    }
    pub fn off() -> Self {
        Self::new(Mode::Off, 0, 100)
    }
    fn output(&mut self, pct: i64) {
        if pct <= self.last {
            return;
        }
        self.last = pct;
        let mut o = std::io::stdout().lock();
        match self.mode {
            Mode::Numeric => {
                let _ = writeln!(o, "{pct}");
            }
            Mode::Normal => {
                let bars = (pct * 36 / 100) as usize;
                let _ = write!(o, "\r{pct:3}% [{:<36}]", "=".repeat(bars));
            }
            Mode::Off => {}
        }
        let _ = o.flush();
    }
    pub fn report(&mut self, units: u64) {
        self.current = (self.current + units).min(self.total);
        let mut pct = self.low;
        if self.total > 0 {
            let amt = ((self.current as u128 * self.range as u128) / self.total as u128) as i64;
            pct += amt.min(self.range - 1);
        }
        self.output(pct);
    }
    pub fn complete(&mut self) {
        self.output(self.low + self.range);
        if self.mode == Mode::Normal {
            println!("\nSuccess!");
        }
    }
    /// `info()` text: on stdout as `fwup: msg` (after clearing a bar line).
    pub fn info(&mut self, msg: &str) {
        let mut o = std::io::stdout().lock();
        if self.mode == Mode::Normal {
            let _ = o.write_all(b"\r\x1b[K");
        }
        let _ = writeln!(o, "fwup: {msg}");
        let _ = o.flush();
    }
}
