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

/// A figure of the report the gate knows.
#[derive(Clone, Copy, Debug)]
pub struct Metric {
    /// JSON path in the report.
    pub key: &'static str,
    pub worse: Worse,
    /// Judged by default. The others are listed; a `--threshold KEY=PCT` for one gates it.
    pub gated: bool,
    /// This figure's own default threshold, where the global one does not suit it.
    pub threshold: Option<f64>,
}

const fn m(key: &'static str, worse: Worse, gated: bool, threshold: Option<f64>) -> Metric {
    Metric {
        key,
        worse,
        gated,
        threshold,
    }
}

/// The figures compared. PSS is not gated by default: other processes mapping the same files
/// (another qemu) lower it, so it moves with what runs beside the guest; `host.anon_settled_kib`
/// is the part of it no neighbour can change. Boot time under TCG follows the host's load, hence
/// its own 50 % default.
pub const METRICS: &[Metric] = &[
    m("boot.marker_s", Worse::Higher, true, Some(0.50)),
    m("host.rss_peak_kib", Worse::Higher, true, None),
    m("host.pss_peak_kib", Worse::Higher, false, None),
    m("host.rss_settled_kib", Worse::Higher, true, None),
    m("host.pss_settled_kib", Worse::Higher, false, None),
    m("host.anon_settled_kib", Worse::Higher, true, None),
    m("guest.mem_total_kib", Worse::Lower, true, None),
    m("guest.mem_available_kib", Worse::Lower, true, None),
    m("guest.program_rss_kib", Worse::Higher, true, None),
    m("guest.program_pss_kib", Worse::Higher, true, None),
    m("guest.swap_used_kib", Worse::Higher, true, None),
];

fn metric(key: &str) -> Option<&'static Metric> {
    METRICS.iter().find(|m| m.key == key)
}

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
/// `5%` (`0.05` is refused as ambiguous); `boot.marker_s=50%` sets one figure's threshold.
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
                if metric(k).is_none() {
                    let known: Vec<&str> = METRICS.iter().map(|m| m.key).collect();
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

    fn explicit(&self, key: &str) -> Option<f64> {
        self.per_key
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| *v)
    }

    /// The threshold for a figure: its own `KEY=PCT`, else the figure's default, else the
    /// global one.
    pub fn for_key(&self, key: &str) -> f64 {
        self.explicit(key)
            .or_else(|| metric(key).and_then(|m| m.threshold))
            .unwrap_or(self.default)
    }

    /// Whether a figure is judged: gated by default, or named in a `KEY=PCT`.
    pub fn gates(&self, key: &str) -> bool {
        self.explicit(key).is_some() || metric(key).is_some_and(|m| m.gated)
    }
}

/// What the gate says about one figure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Within the threshold (or better).
    Ok,
    /// Worse by more than the threshold in the median and in every boot of this run, against
    /// a baseline whose boots agree within the threshold.
    Regressed,
    /// The median is worse by more than the threshold, but the threshold lies within the spread
    /// the boots measured (one of this run's boots was within it, or the baseline's own boots
    /// spread wider than it): the gate cannot tell a change from noise. Does not fail the gate.
    Noisy,
    /// In the baseline but not measured now (a guest that no longer answers, a lost figure):
    /// fails the gate.
    Missing,
    /// Measured now but not in the baseline.
    New,
    /// Neither side has it (a guest without imgtool's init has no guest figures).
    Absent,
    /// Listed, not judged (see `Metric::gated`).
    NotGated,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Ok => "ok",
            Verdict::Regressed => "REGRESSED",
            Verdict::Noisy => "noise too high to judge",
            Verdict::Missing => "MISSING now",
            Verdict::New => "not in baseline",
            Verdict::Absent => "not measured",
            Verdict::NotGated => "not gated",
        }
    }

    pub fn fails(self) -> bool {
        matches!(self, Verdict::Regressed | Verdict::Missing)
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
    /// The widest range (max - min) either side's runs measured, in the figure's unit.
    pub spread: Option<f64>,
    pub verdict: Verdict,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Diff {
    pub rows: Vec<Row>,
}

/// A number at a JSON path such as `host.rss_peak_kib`.
pub fn get(v: &Value, path: &str) -> Option<f64> {
    path.split('.').try_fold(v, |x, k| x.get(k))?.as_f64()
}

/// The range a report's runs measured for a figure (`spread.KEY.{min,max}`); None for one run.
fn range(v: &Value, key: &str) -> Option<f64> {
    let (lo, hi) = bounds(v, key)?;
    Some(hi - lo)
}

/// The least and greatest value a report's runs measured for a figure.
fn bounds(v: &Value, key: &str) -> Option<(f64, f64)> {
    let s = v.get("spread")?.get(key)?;
    Some((s.get("min")?.as_f64()?, s.get("max")?.as_f64()?))
}

/// Compare two reports (as JSON, so an older or newer baseline still compares what both have).
pub fn compare(baseline: &Value, current: &Value, t: &Thresholds) -> Diff {
    let rows = METRICS
        .iter()
        .map(|m| {
            let key = m.key;
            let b = get(baseline, key);
            let c = get(current, key);
            let threshold = t.for_key(key);
            let change = match (b, c) {
                (Some(b), Some(c)) if b != 0.0 => Some((c - b) / b),
                (Some(_), Some(0.0)) => Some(0.0),
                _ => None,
            };
            let spread = match (range(baseline, key), range(current, key)) {
                (Some(x), Some(y)) => Some(x.max(y)),
                (x, y) => x.or(y),
            };
            let verdict = match (b, c) {
                _ if !t.gates(key) => Verdict::NotGated,
                (Some(_), None) => Verdict::Missing,
                (None, Some(_)) => Verdict::New,
                (None, None) => Verdict::Absent,
                (Some(b), Some(c)) => {
                    let worse_by = match m.worse {
                        Worse::Higher => c - b,
                        Worse::Lower => b - c,
                    };
                    let limit = threshold * b.abs();
                    // The threshold lies within the spread this run's boots measured when one
                    // of them was on the good side of it; the baseline is no firm reference
                    // when its own boots spread over more than the threshold.
                    let straddles = bounds(current, key).is_some_and(|(lo, hi)| match m.worse {
                        Worse::Higher => lo - b <= limit,
                        Worse::Lower => b - hi <= limit,
                    });
                    let loose_baseline = range(baseline, key).is_some_and(|r| r >= limit);
                    if worse_by <= noise_floor(key) || worse_by <= limit {
                        Verdict::Ok
                    } else if straddles || loose_baseline {
                        Verdict::Noisy
                    } else {
                        Verdict::Regressed
                    }
                }
            };
            Row {
                key: key.to_string(),
                baseline: b,
                current: c,
                change,
                threshold,
                spread,
                verdict,
            }
        })
        .collect();
    Diff { rows }
}

/// What a report was measured under; figures from different setups are not comparable.
#[derive(Clone, Debug, PartialEq)]
pub struct Setup {
    pub schema: u32,
    pub accel: String,
    pub memory_mib: Option<u64>,
    pub qemu_version: Option<String>,
}

impl Setup {
    pub fn of(r: &crate::Report) -> Setup {
        Setup {
            schema: r.schema,
            accel: r.accel.clone(),
            memory_mib: r.memory_mib,
            qemu_version: r.qemu_version.clone(),
        }
    }
}

/// A setting a run must share with its baseline for their figures to compare.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Setting {
    Schema,
    Accel,
    Memory,
    QemuVersion,
}

/// One setting a baseline was measured under that this run does not share.
#[derive(Clone, Debug, PartialEq)]
pub struct Mismatch {
    pub setting: Setting,
    /// Both sides, for people (`guest RAM: the baseline ran with -m 110M, this run with -m 128M`).
    pub text: String,
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// Why a baseline cannot be compared with a run under `now`: one entry per difference (schema,
/// accelerator, guest RAM, qemu version). Empty when it can.
pub fn incompatible(baseline: &Value, now: &Setup) -> Vec<Mismatch> {
    let mut why = Vec::new();
    let mut differs = |setting, text| why.push(Mismatch { setting, text });
    let schema = baseline.get("schema").and_then(Value::as_u64).unwrap_or(1);
    if schema != u64::from(now.schema) {
        differs(
            Setting::Schema,
            format!(
                "report schema {schema}, this imgtool writes schema {} (figures changed meaning)",
                now.schema
            ),
        );
        // An older schema lacks the fields below; saying so again would only repeat it.
        return why;
    }
    let s = |k: &str| baseline.get(k).and_then(Value::as_str).map(str::to_string);
    let accel = s("accel").unwrap_or_default();
    if accel != now.accel {
        differs(
            Setting::Accel,
            format!(
                "accelerator: the baseline ran under {accel}, this run uses {}",
                now.accel
            ),
        );
    }
    let mem = baseline.get("memory_mib").and_then(Value::as_u64);
    if mem != now.memory_mib {
        let show = |m: Option<u64>| m.map_or("no -m".into(), |m| format!("-m {m}M"));
        differs(
            Setting::Memory,
            format!(
                "guest RAM: the baseline ran with {}, this run with {}",
                show(mem),
                show(now.memory_mib)
            ),
        );
    }
    let qv = s("qemu_version");
    if qv != now.qemu_version {
        let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "an unknown version".into());
        differs(
            Setting::QemuVersion,
            format!(
                "qemu version: the baseline ran under {}, this run under {}",
                show(&qv),
                show(&now.qemu_version)
            ),
        );
    }
    why
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
    /// Whether the gate fails: a figure regressed past its threshold and its noise, or went
    /// missing.
    pub fn regressed(&self) -> bool {
        self.rows.iter().any(|r| r.verdict.fails())
    }

    pub fn failing(&self) -> Vec<&Row> {
        self.rows.iter().filter(|r| r.verdict.fails()).collect()
    }

    pub fn noisy(&self) -> Vec<&Row> {
        self.rows
            .iter()
            .filter(|r| r.verdict == Verdict::Noisy)
            .collect()
    }

    /// A plain-text table, one figure per line.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{:<24} {:>11} {:>11} {:>8} {:>7} {:>7}  verdict",
            "figure", "baseline", "current", "change", "limit", "spread"
        );
        for r in &self.rows {
            let change = r
                .change
                .map_or("-".into(), |c| format!("{:+.1}%", c * 100.0));
            let spread = match (r.spread, r.baseline) {
                (Some(s), Some(b)) if b != 0.0 => format!("{:.1}%", s / b.abs() * 100.0),
                _ => "-".into(),
            };
            let _ = writeln!(
                s,
                "{:<24} {:>11} {:>11} {:>8} {:>6.1}% {:>7}  {}",
                r.key,
                fmt_value(&r.key, r.baseline),
                fmt_value(&r.key, r.current),
                change,
                r.threshold * 100.0,
                spread,
                r.verdict.as_str()
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
                        "change": r.change, "threshold": r.threshold, "spread": r.spread,
                        "verdict": r.verdict.as_str(), "regressed": r.verdict.fails(),
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

    fn report(rss: u64, avail: u64, marker: f64) -> Value {
        json!({"schema": 2, "accel": "tcg", "memory_mib": 110, "qemu_version": "10.0.2",
               "boot": {"marker_s": marker},
               "host": {"rss_peak_kib": 190000, "rss_settled_kib": rss, "pss_settled_kib": rss},
               "guest": {"mem_total_kib": 102400, "mem_available_kib": avail}})
    }

    fn row<'a>(d: &'a Diff, key: &str) -> &'a Row {
        d.rows.iter().find(|r| r.key == key).unwrap()
    }

    #[test]
    fn threshold_parsing() {
        let mut t = Thresholds::default();
        assert_eq!(t.for_key("boot.marker_s"), 0.5);
        t.add("10%").unwrap();
        assert_eq!(t.default, 0.10);
        assert_eq!(t.for_key("host.rss_peak_kib"), 0.10);
        // A figure's own default holds until that figure is named.
        assert_eq!(t.for_key("boot.marker_s"), 0.5);
        t.add("boot.marker_s=20%").unwrap();
        assert_eq!(t.for_key("boot.marker_s"), 0.2);
        assert!(t.add("0.05").unwrap_err().contains("percentage"));
        assert!(t.add("-5%").is_err());
        assert!(t
            .add("bogus.key=5%")
            .unwrap_err()
            .contains("unknown figure"));
        // PSS is judged only when asked for by name.
        assert!(!t.gates("host.pss_settled_kib") && t.gates("host.rss_settled_kib"));
        t.add("host.pss_settled_kib=5%").unwrap();
        assert!(t.gates("host.pss_settled_kib"));
    }

    #[test]
    fn higher_memory_past_the_threshold_regresses() {
        let t = Thresholds::default();
        let base = report(100_000, 60_000, 3.0);
        assert!(!compare(&base, &base, &t).regressed());
        // +4.9%: within 5%.
        assert!(!compare(&base, &report(104_900, 60_000, 3.0), &t).regressed());
        let d = compare(&base, &report(106_000, 60_000, 3.0), &t);
        assert!(d.regressed());
        let r = row(&d, "host.rss_settled_kib");
        assert_eq!(r.verdict, Verdict::Regressed);
        assert!((r.change.unwrap() - 0.06).abs() < 1e-9);
        assert!(d.table().contains("REGRESSED"));
        // PSS moved just as much, but it is listed, not judged.
        assert_eq!(row(&d, "host.pss_settled_kib").verdict, Verdict::NotGated);
        assert_eq!(d.failing().len(), 1);
        // Less memory is an improvement, not a regression.
        assert!(!compare(&base, &report(50_000, 60_000, 3.0), &t).regressed());
        // Boot time has its own 50% default: +40% passes, +60% fails.
        assert!(!compare(&base, &report(100_000, 60_000, 4.2), &t).regressed());
        assert!(compare(&base, &report(100_000, 60_000, 4.8), &t).regressed());
    }

    #[test]
    fn lower_mem_available_regresses_and_a_lost_figure_fails() {
        let t = Thresholds::default();
        let base = report(100_000, 60_000, 3.0);
        let d = compare(&base, &report(100_000, 50_000, 3.0), &t);
        assert_eq!(
            row(&d, "guest.mem_available_kib").verdict,
            Verdict::Regressed
        );
        // The baseline has guest figures, this run has none: a failure, named in the table.
        let mut lost = report(100_000, 60_000, 3.0);
        lost["guest"] = Value::Null;
        let d = compare(&base, &lost, &t);
        assert!(d.regressed());
        assert_eq!(row(&d, "guest.mem_total_kib").verdict, Verdict::Missing);
        assert!(d.table().contains("MISSING now"));
        // A figure only this run has is listed, not judged.
        let d = compare(&lost, &base, &t);
        assert!(!d.regressed());
        assert_eq!(row(&d, "guest.mem_total_kib").verdict, Verdict::New);
        assert_eq!(d.to_json()[6]["verdict"], "not in baseline");
        let d = compare(&lost, &lost, &t);
        assert_eq!(row(&d, "guest.mem_total_kib").verdict, Verdict::Absent);
        assert!(!d.regressed());
    }

    #[test]
    fn spread_wider_than_the_threshold_is_noise_not_a_regression() {
        let t = Thresholds::default();
        let with_spread = |mut v: Value, key: &str, min: f64, max: f64| {
            v["spread"] =
                json!({ key: {"median": (min + max) / 2.0, "min": min, "max": max, "n": 3} });
            v
        };
        let base = report(100_000, 60_000, 3.0);
        // +8% in the median, but one boot measured 100 MiB, within the 5% limit: cannot tell.
        let cur = with_spread(
            report(108_000, 60_000, 3.0),
            "host.rss_settled_kib",
            100_000.0,
            110_000.0,
        );
        let d = compare(&base, &cur, &t);
        assert_eq!(row(&d, "host.rss_settled_kib").verdict, Verdict::Noisy);
        assert!(!d.regressed());
        assert_eq!(d.noisy().len(), 1);
        assert!(d.table().contains("noise too high to judge"));
        // The same +8% with runs 1 MiB apart is a regression.
        let cur = with_spread(
            report(108_000, 60_000, 3.0),
            "host.rss_settled_kib",
            107_500.0,
            108_500.0,
        );
        assert_eq!(
            row(&compare(&base, &cur, &t), "host.rss_settled_kib").verdict,
            Verdict::Regressed
        );
        // Runs wide apart (106-112 MiB, wider than the 5 MiB threshold) but every one of them
        // past the limit: a regression, however noisy the runs.
        let cur = with_spread(
            report(108_000, 60_000, 3.0),
            "host.rss_settled_kib",
            106_000.0,
            112_000.0,
        );
        assert_eq!(
            row(&compare(&base, &cur, &t), "host.rss_settled_kib").verdict,
            Verdict::Regressed
        );
        // Lower is worse for MemAvailable: one boot within the limit makes it noise.
        let cur = with_spread(
            report(100_000, 55_000, 3.0),
            "guest.mem_available_kib",
            54_000.0,
            58_000.0,
        );
        assert_eq!(
            row(&compare(&base, &cur, &t), "guest.mem_available_kib").verdict,
            Verdict::Noisy
        );
        // The baseline's own spread counts too.
        let noisy_base = with_spread(base.clone(), "host.rss_settled_kib", 95_000.0, 103_000.0);
        let d = compare(&noisy_base, &report(108_000, 60_000, 3.0), &t);
        assert_eq!(row(&d, "host.rss_settled_kib").verdict, Verdict::Noisy);
    }

    #[test]
    fn incompatible_baselines_say_which_setting_differs() {
        let now = Setup {
            schema: 2,
            accel: "tcg".into(),
            memory_mib: Some(110),
            qemu_version: Some("10.0.2".into()),
        };
        let base = report(100_000, 60_000, 3.0);
        assert!(incompatible(&base, &now).is_empty());
        let mut b = base.clone();
        b["accel"] = json!("kvm");
        let why = incompatible(&b, &now);
        assert_eq!(why.len(), 1);
        assert_eq!(why[0].setting, Setting::Accel);
        assert!(
            why[0].text.contains("accelerator") && why[0].text.contains("kvm"),
            "{why:?}"
        );
        let mut b = base.clone();
        b["memory_mib"] = json!(128);
        let why = incompatible(&b, &now);
        assert_eq!(why[0].setting, Setting::Memory);
        assert_eq!(
            why[0].to_string(),
            "guest RAM: the baseline ran with -m 128M, this run with -m 110M"
        );
        let mut b = base.clone();
        b["qemu_version"] = json!("9.2.1");
        let why = incompatible(&b, &now);
        assert_eq!(why[0].setting, Setting::QemuVersion);
        assert!(why[0].text.contains("qemu version"));
        let mut b = base.clone();
        b["schema"] = json!(1);
        assert_eq!(incompatible(&b, &now)[0].setting, Setting::Schema);
        assert!(incompatible(&b, &now)[0].text.contains("schema 1"));
        // A report from before schemas were written is schema 1.
        let mut b = base;
        b.as_object_mut().unwrap().remove("schema");
        assert!(incompatible(&b, &now)[0].text.contains("schema 1"));
    }

    #[test]
    fn per_key_threshold_loosens_one_figure_and_the_floor_absorbs_jitter() {
        let mut t = Thresholds::default();
        // 0.2 s on a 0.3 s boot is 67% but within the noise floor.
        let fast = report(100_000, 60_000, 0.3);
        assert!(!compare(&fast, &report(100_000, 60_000, 0.5), &t).regressed());
        // 800 KiB on 10 MiB is 8% but within the floor too.
        let small = report(10_240, 60_000, 3.0);
        assert!(!compare(&small, &report(11_040, 60_000, 3.0), &t).regressed());
        let base = report(100_000, 60_000, 3.0);
        let heavier = report(108_000, 60_000, 3.0);
        assert!(compare(&base, &heavier, &t).regressed());
        t.add("host.rss_settled_kib=10%").unwrap();
        assert!(!compare(&base, &heavier, &t).regressed());
        let j = compare(&base, &heavier, &t).to_json();
        assert_eq!(j[0]["key"], "boot.marker_s");
    }
}
