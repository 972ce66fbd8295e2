//! Compare a report with a baseline report: every figure, with a relative threshold past which a
//! worse figure is a regression (the CI gate).

use std::fmt::Write as _;

use serde_json::Value;

use crate::Error;

/// Which way is worse for a figure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Worse {
    Higher,
    Lower,
}

/// The figures compared, by their JSON path in the report.
pub const METRICS: &[(&str, Worse)] = &[
    ("boot.marker_s", Worse::Higher),
    ("host.rss_peak_kib", Worse::Higher),
    ("host.pss_peak_kib", Worse::Higher),
    ("host.rss_settled_kib", Worse::Higher),
    ("host.pss_settled_kib", Worse::Higher),
    ("guest.mem_total_kib", Worse::Lower),
    ("guest.mem_available_kib", Worse::Lower),
    ("guest.program_rss_kib", Worse::Higher),
    ("guest.program_pss_kib", Worse::Higher),
    ("guest.swap_used_kib", Worse::Higher),
];

/// Changes smaller than this never count as regressions, whatever the percentage: run-to-run
/// jitter of a sub-second boot or of a few pages would otherwise fail a tight gate.
pub fn noise_floor(key: &str) -> f64 {
    if key.ends_with("_s") {
        0.25
    } else {
        1024.0
    }
}

/// A default relative threshold and per-figure overrides, from `--threshold` values such as
/// `5%`, `0.05` is not accepted (ambiguous); `boot.marker_s=50%` sets one figure's threshold.
#[derive(Clone, Debug, PartialEq)]
pub struct Thresholds {
    pub default: f64,
    pub per_key: Vec<(String, f64)>,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            default: 0.05,
            per_key: Vec::new(),
        }
    }
}

fn percent(s: &str) -> Result<f64, String> {
    let n = s
        .trim()
        .strip_suffix('%')
        .ok_or_else(|| format!("`{s}`: write a percentage such as 5%"))?;
    let v: f64 = n
        .trim()
        .parse()
        .map_err(|_| format!("`{s}`: not a percentage"))?;
    if !(v >= 0.0 && v.is_finite()) {
        return Err(format!("`{s}`: must be 0% or more"));
    }
    Ok(v / 100.0)
}

impl Thresholds {
    /// Apply one `--threshold` value: `5%` or `KEY=5%`.
    pub fn add(&mut self, spec: &str) -> Result<(), String> {
        match spec.split_once('=') {
            Some((k, v)) => {
                let k = k.trim();
                if !METRICS.iter().any(|(m, _)| *m == k) {
                    let known: Vec<&str> = METRICS.iter().map(|(m, _)| *m).collect();
                    return Err(format!(
                        "unknown figure `{k}` (one of: {})",
                        known.join(", ")
                    ));
                }
                self.per_key.push((k.to_string(), percent(v)?));
            }
            None => self.default = percent(spec)?,
        }
        Ok(())
    }

    pub fn for_key(&self, key: &str) -> f64 {
        self.per_key
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map_or(self.default, |(_, v)| *v)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub key: String,
    pub baseline: Option<f64>,
    pub current: Option<f64>,
    /// (current - baseline) / baseline.
    pub change: Option<f64>,
    pub threshold: f64,
    pub regressed: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Diff {
    pub rows: Vec<Row>,
}

fn get(v: &Value, path: &str) -> Option<f64> {
    path.split('.').try_fold(v, |x, k| x.get(k))?.as_f64()
}

/// Compare two reports (as JSON, so an older or newer baseline still compares what both have).
pub fn compare(baseline: &Value, current: &Value, t: &Thresholds) -> Diff {
    let rows = METRICS
        .iter()
        .map(|&(key, worse)| {
            let b = get(baseline, key);
            let c = get(current, key);
            let threshold = t.for_key(key);
            let change = match (b, c) {
                (Some(b), Some(c)) if b != 0.0 => Some((c - b) / b),
                (Some(_), Some(0.0)) => Some(0.0),
                _ => None,
            };
            let past_floor =
                matches!((b, c), (Some(b), Some(c)) if (c - b).abs() > noise_floor(key));
            let regressed = past_floor
                && change.is_some_and(|ch| match worse {
                    Worse::Higher => ch > threshold,
                    Worse::Lower => -ch > threshold,
                });
            Row {
                key: key.to_string(),
                baseline: b,
                current: c,
                change,
                threshold,
                regressed,
            }
        })
        .collect();
    Diff { rows }
}

/// Read a report file for comparing.
pub fn load(path: &std::path::Path) -> Result<Value, Error> {
    let text =
        std::fs::read_to_string(path).map_err(|e| Error::Io(path.display().to_string(), e))?;
    let v: Value = serde_json::from_str(&text).map_err(|e| Error::Baseline {
        path: path.display().to_string(),
        msg: format!("not JSON: {e}"),
    })?;
    if get(&v, "host.pss_settled_kib").is_none() {
        return Err(Error::Baseline {
            path: path.display().to_string(),
            msg: "no host.pss_settled_kib: not an `imgtool validate --json` report".into(),
        });
    }
    Ok(v)
}

fn fmt_value(key: &str, v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(x) if key.ends_with("_s") => format!("{x:.2} s"),
        Some(x) if key.ends_with("_kib") => format!("{:.1} MiB", x / 1024.0),
        Some(x) => format!("{x}"),
    }
}

impl Diff {
    pub fn regressed(&self) -> bool {
        self.rows.iter().any(|r| r.regressed)
    }

    /// A plain-text table, one figure per line.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{:<26} {:>12} {:>12} {:>9} {:>7}  verdict",
            "figure", "baseline", "current", "change", "limit"
        );
        for r in &self.rows {
            let change = r
                .change
                .map_or("-".into(), |c| format!("{:+.1}%", c * 100.0));
            let verdict = if r.regressed {
                "REGRESSED"
            } else if r.change.is_none() {
                "not compared"
            } else {
                "ok"
            };
            let _ = writeln!(
                s,
                "{:<26} {:>12} {:>12} {:>9} {:>6.1}%  {verdict}",
                r.key,
                fmt_value(&r.key, r.baseline),
                fmt_value(&r.key, r.current),
                change,
                r.threshold * 100.0
            );
        }
        s
    }

    pub fn to_json(&self) -> Value {
        Value::Array(
            self.rows
                .iter()
                .map(|r| {
                    serde_json::json!({
                        "key": r.key, "baseline": r.baseline, "current": r.current,
                        "change": r.change, "threshold": r.threshold, "regressed": r.regressed,
                    })
                })
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn report(pss: u64, avail: u64, marker: f64) -> Value {
        json!({"boot": {"marker_s": marker}, "host": {"rss_peak_kib": 190000, "pss_settled_kib": pss},
               "guest": {"mem_total_kib": 102400, "mem_available_kib": avail}, "accel": "tcg"})
    }

    #[test]
    fn threshold_parsing() {
        let mut t = Thresholds::default();
        t.add("10%").unwrap();
        t.add("boot.marker_s=50%").unwrap();
        assert_eq!(t.default, 0.10);
        assert_eq!(t.for_key("boot.marker_s"), 0.5);
        assert_eq!(t.for_key("host.rss_peak_kib"), 0.10);
        assert!(t.add("0.05").unwrap_err().contains("percentage"));
        assert!(t.add("-5%").is_err());
        assert!(t
            .add("bogus.key=5%")
            .unwrap_err()
            .contains("unknown figure"));
    }

    #[test]
    fn higher_pss_past_the_threshold_regresses() {
        let t = Thresholds::default();
        let base = report(100_000, 60_000, 3.0);
        assert!(!compare(&base, &base, &t).regressed());
        // +4.9%: within 5%.
        assert!(!compare(&base, &report(104_900, 60_000, 3.0), &t).regressed());
        let d = compare(&base, &report(106_000, 60_000, 3.0), &t);
        assert!(d.regressed());
        let row = d
            .rows
            .iter()
            .find(|r| r.key == "host.pss_settled_kib")
            .unwrap();
        assert!(row.regressed && (row.change.unwrap() - 0.06).abs() < 1e-9);
        assert!(d.table().contains("REGRESSED"));
        // Less memory is an improvement, not a regression.
        assert!(!compare(&base, &report(50_000, 60_000, 3.0), &t).regressed());
    }

    #[test]
    fn lower_mem_available_regresses_and_missing_figures_do_not() {
        let t = Thresholds::default();
        let base = report(100_000, 60_000, 3.0);
        let d = compare(&base, &report(100_000, 50_000, 3.0), &t);
        assert!(d
            .rows
            .iter()
            .any(|r| r.key == "guest.mem_available_kib" && r.regressed));
        // Figures only one side has are listed, not judged.
        let d = compare(&base, &json!({"host": {"pss_settled_kib": 100_000}}), &t);
        assert!(!d.regressed());
        assert!(d.table().contains("not compared"));
    }

    #[test]
    fn per_key_threshold_loosens_one_figure() {
        let mut t = Thresholds::default();
        let base = report(100_000, 60_000, 3.0);
        let slow = report(100_000, 60_000, 4.0);
        assert!(compare(&base, &slow, &t).regressed());
        // 0.2 s on a 1 s boot is 20% but within the noise floor.
        let fast = report(100_000, 60_000, 1.0);
        assert!(!compare(&fast, &report(100_000, 60_000, 1.2), &t).regressed());
        // 800 KiB on 10 MiB is 8% but within the floor too.
        let small = report(10_240, 60_000, 3.0);
        assert!(!compare(&small, &report(11_040, 60_000, 3.0), &t).regressed());
        t.add("boot.marker_s=50%").unwrap();
        assert!(!compare(&base, &slow, &t).regressed());
        let j = compare(&base, &slow, &t).to_json();
        assert_eq!(j[0]["key"], "boot.marker_s");
    }
}
