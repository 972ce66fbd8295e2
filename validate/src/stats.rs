//! Several runs of several profiles: medians and ranges per figure, and a Markdown table.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The figures an experiment table shows, with their column titles.
pub const COLUMNS: &[(&str, &str)] = &[
    ("boot.marker_s", "boot to ready (s)"),
    ("host.rss_peak_kib", "host RSS peak (MiB)"),
    ("host.rss_settled_kib", "host RSS settled (MiB)"),
    ("host.pss_settled_kib", "host PSS settled (MiB)"),
    ("guest.mem_total_kib", "guest MemTotal (MiB)"),
    ("guest.mem_available_kib", "guest MemAvailable (MiB)"),
    ("guest.program_rss_kib", "BEAM RSS (MiB)"),
];

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq)]
pub struct Stat {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

impl Stat {
    pub fn of(mut v: Vec<f64>) -> Option<Stat> {
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Stat {
            median,
            min: v[0],
            max: v[n - 1],
            n,
        })
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub profile: String,
    pub runs: usize,
    /// (figure key, its statistics over the runs that have it).
    pub figures: Vec<(String, Stat)>,
}

impl Summary {
    pub fn get(&self, key: &str) -> Option<Stat> {
        self.figures.iter().find(|(k, _)| k == key).map(|(_, s)| *s)
    }
}

fn get(v: &Value, path: &str) -> Option<f64> {
    path.split('.').try_fold(v, |x, k| x.get(k))?.as_f64()
}

/// Summarize one profile's reports (`imgtool validate` JSON).
pub fn summarize(profile: &str, reports: &[Value]) -> Summary {
    let figures = COLUMNS
        .iter()
        .filter_map(|(k, _)| {
            let s = Stat::of(reports.iter().filter_map(|r| get(r, k)).collect())?;
            Some((k.to_string(), s))
        })
        .collect();
    Summary {
        profile: profile.to_string(),
        runs: reports.len(),
        figures,
    }
}

fn cell(key: &str, s: Option<Stat>) -> String {
    let Some(s) = s else { return "-".into() };
    let scale = |x: f64| if key.ends_with("_kib") { x / 1024.0 } else { x };
    if s.n > 1 && s.max > s.min {
        format!(
            "{:.1} ({:.1}-{:.1})",
            scale(s.median),
            scale(s.min),
            scale(s.max)
        )
    } else {
        format!("{:.1}", scale(s.median))
    }
}

/// A Markdown table: one row per profile, medians with (min-max) over runs, and the settled PSS
/// relative to the first profile's.
pub fn table(summaries: &[Summary]) -> String {
    let mut s = String::from("| profile | runs |");
    for (_, title) in COLUMNS {
        let _ = write!(s, " {title} |");
    }
    s.push_str(" PSS vs first | PSS minus first (MiB) |\n|---|---|");
    for _ in COLUMNS {
        s.push_str("---|");
    }
    s.push_str("---|---|\n");
    let first = summaries
        .first()
        .and_then(|f| f.get("host.pss_settled_kib"));
    for sm in summaries {
        let _ = write!(s, "| {} | {} |", sm.profile, sm.runs);
        for (k, _) in COLUMNS {
            let _ = write!(s, " {} |", cell(k, sm.get(k)));
        }
        let (rel, delta) = match (first, sm.get("host.pss_settled_kib")) {
            (Some(f), Some(c)) if f.median > 0.0 => (
                format!("{:.0}%", c.median / f.median * 100.0),
                format!("{:+.1}", (c.median - f.median) / 1024.0),
            ),
            _ => ("-".into(), "-".into()),
        };
        let _ = writeln!(s, " {rel} | {delta} |");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn medians_ranges_and_relative_pss() {
        let r =
            |pss: u64, t: f64| json!({"boot": {"marker_s": t}, "host": {"pss_settled_kib": pss}});
        let a = summarize(
            "baseline",
            &[r(200 * 1024, 3.0), r(190 * 1024, 4.0), r(210 * 1024, 5.0)],
        );
        let b = summarize("minimal", &[r(100 * 1024, 3.0), r(100 * 1024, 3.0)]);
        let pss = a.get("host.pss_settled_kib").unwrap();
        assert_eq!(
            (pss.median, pss.min, pss.max, pss.n),
            (204800.0, 194560.0, 215040.0, 3)
        );
        assert_eq!(b.get("boot.marker_s").unwrap().median, 3.0);
        assert!(a.get("guest.program_rss_kib").is_none());
        let t = table(&[a, b]);
        let rows: Vec<&str> = t.lines().collect();
        assert_eq!(rows.len(), 4, "{t}");
        assert!(
            rows[2].starts_with("| baseline | 3 | 4.0 (3.0-5.0) |"),
            "{t}"
        );
        assert!(
            rows[2].contains("| 200.0 (190.0-210.0) |") && rows[2].ends_with(" 100% | +0.0 |"),
            "{t}"
        );
        assert!(
            rows[3].contains("| 100.0 |") && rows[3].ends_with(" 50% | -100.0 |"),
            "{t}"
        );
        assert_eq!(Stat::of(vec![1.0, 4.0]).unwrap().median, 2.5);
        assert!(Stat::of(vec![]).is_none());
    }
}
