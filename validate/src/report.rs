//! The validate report. Scripts rely on these JSON keys (keep them): `boot.marker_s`,
//! `host.rss_peak_kib`, `host.pss_settled_kib`, `guest.mem_total_kib`, `guest.mem_available_kib`,
//! `accel`.
//!
//! A report of several boots (`--runs N`) holds each figure's median, and its spread over the
//! runs in `spread` (the gate's noise model, see `diff`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::stats::Stat;

/// Report format version; bump when a key changes meaning. 2: `host.rss_peak_kib` is VmHWM
/// read while the guest still runs (exact, not sampled); `qemu_version`, `memory_mib`, `runs`,
/// `spread` and `host.anon_settled_kib` added.
pub const SCHEMA: u32 = 2;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Report {
    pub schema: u32,
    /// `kvm`, `hvf` or `tcg`.
    pub accel: String,
    /// The emulator's version (`10.0.2` from `qemu-system-aarch64 --version`); None when the
    /// program does not say.
    #[serde(default)]
    pub qemu_version: Option<String>,
    /// Guest RAM in MiB (the argv's last `-m`); None when the argv has none.
    #[serde(default)]
    pub memory_mib: Option<u64>,
    /// Boots this report summarizes; its figures are their medians.
    #[serde(default = "one")]
    pub runs: u32,
    /// Per figure (JSON path, as in `diff::METRICS`): median, min and max over the runs.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub spread: BTreeMap<String, Stat>,
    /// What was booted (an image path, or a label).
    pub image: String,
    /// The command that ran the guest.
    pub argv: Vec<String>,
    pub marker: MarkerInfo,
    pub boot: Boot,
    pub host: Host,
    /// Absent when the guest was not asked for a snapshot (`--no-snapshot`).
    pub guest: Option<Guest>,
    /// The qemu process's memory over time, from spawn to power-off.
    pub samples: Vec<Sample>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct MarkerInfo {
    pub regex: String,
    pub line: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Boot {
    /// Spawn to the marker line, seconds.
    pub marker_s: f64,
    /// Spawn to the process's exit after the power-off request, seconds.
    pub exit_s: Option<f64>,
    /// Whether the guest powered itself off when asked (else it was killed).
    pub clean_poweroff: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Host {
    /// Peak resident set: the kernel's own high-water mark (VmHWM), read after the settled
    /// reading while the guest still runs, so no peak between samples is missed.
    pub rss_peak_kib: u64,
    /// The largest sampled PSS. Informational only (not gated): a sampler can miss a short
    /// peak, and other processes mapping the same files lower it.
    pub pss_peak_kib: u64,
    /// Median over the end of the settle period.
    pub rss_settled_kib: u64,
    pub pss_settled_kib: u64,
    /// Anonymous and shmem PSS (Pss_Anon + Pss_Shmem) at the settled reading: guest RAM, the
    /// TCG cache and qemu's heap. Memory only this guest uses, which neighbours cannot change
    /// (unlike PSS, whose file-backed part is split with every other qemu).
    #[serde(default)]
    pub anon_settled_kib: Option<u64>,
    /// Seconds between the marker and the settled reading.
    pub settle_s: f64,
    /// Other processes running the same qemu binary at the settled reading: they share its
    /// pages, so this one's PSS is lower than it would be alone.
    #[serde(default)]
    pub peers_at_settle: u32,
    /// The host's 1-minute load average at the settled reading (/proc/loadavg): a figure from a
    /// loaded machine (above 1 on this project's 2 cores) is marked as such where it is quoted.
    #[serde(default)]
    pub loadavg_settled: Option<f64>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Guest {
    pub mem_total_kib: u64,
    pub mem_available_kib: u64,
    pub mem_free_kib: Option<u64>,
    pub cached_kib: Option<u64>,
    pub swap_used_kib: Option<u64>,
    /// The program the init started (the BEAM): VmRSS and Pss.
    pub program_rss_kib: Option<u64>,
    pub program_pss_kib: Option<u64>,
    /// Guest seconds since the marker when the snapshot was taken.
    pub since_ready_s: Option<f64>,
    /// zram swap: data stored and memory it takes, KiB.
    pub zram_orig_kib: Option<u64>,
    pub zram_used_kib: Option<u64>,
    /// The profile as the guest shows it (sysctls read back, the BEAM's flags, swap devices).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_force: Option<guest_protocol::InForce>,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq)]
pub struct Sample {
    /// Seconds since spawn.
    pub t_s: f64,
    pub rss_kib: u64,
    pub pss_kib: u64,
}

fn one() -> u32 {
    1
}

impl Report {
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a report always serializes")
    }

    /// One report for several boots of the same guest: every figure is the median over the
    /// runs that have it, `spread` says how far they went. Marker line, argv and samples are
    /// the first run's. None for no reports.
    pub fn median_of(reports: &[Report]) -> Option<Report> {
        let first = reports.first()?;
        let med = |v: Vec<f64>| Stat::of(v).map(|s| s.median);
        let med_u = |f: &dyn Fn(&Report) -> Option<u64>| {
            med(reports.iter().filter_map(f).map(|x| x as f64).collect()).map(|m| m.round() as u64)
        };
        let med_f =
            |f: &dyn Fn(&Report) -> Option<f64>| med(reports.iter().filter_map(f).collect());
        let host = Host {
            rss_peak_kib: med_u(&|r| Some(r.host.rss_peak_kib)).unwrap_or(0),
            pss_peak_kib: med_u(&|r| Some(r.host.pss_peak_kib)).unwrap_or(0),
            rss_settled_kib: med_u(&|r| Some(r.host.rss_settled_kib)).unwrap_or(0),
            pss_settled_kib: med_u(&|r| Some(r.host.pss_settled_kib)).unwrap_or(0),
            anon_settled_kib: med_u(&|r| r.host.anon_settled_kib),
            settle_s: med_f(&|r| Some(r.host.settle_s)).unwrap_or(0.0),
            peers_at_settle: reports
                .iter()
                .map(|r| r.host.peers_at_settle)
                .max()
                .unwrap_or(0),
            loadavg_settled: reports
                .iter()
                .filter_map(|r| r.host.loadavg_settled)
                .reduce(f64::max),
        };
        let g = |f: fn(&Guest) -> Option<u64>| med_u(&|r| r.guest.as_ref().and_then(f));
        let guest = match reports.iter().all(|r| r.guest.is_some()) {
            true => Some(Guest {
                mem_total_kib: g(|g| Some(g.mem_total_kib)).unwrap_or(0),
                mem_available_kib: g(|g| Some(g.mem_available_kib)).unwrap_or(0),
                mem_free_kib: g(|g| g.mem_free_kib),
                cached_kib: g(|g| g.cached_kib),
                swap_used_kib: g(|g| g.swap_used_kib),
                program_rss_kib: g(|g| g.program_rss_kib),
                program_pss_kib: g(|g| g.program_pss_kib),
                since_ready_s: med_f(&|r| r.guest.as_ref().and_then(|g| g.since_ready_s)),
                zram_orig_kib: g(|g| g.zram_orig_kib),
                zram_used_kib: g(|g| g.zram_used_kib),
                in_force: reports[0].guest.as_ref().and_then(|g| g.in_force.clone()),
            }),
            false => None,
        };
        let values: Vec<serde_json::Value> = reports
            .iter()
            .map(|r| serde_json::to_value(r).expect("a report always serializes"))
            .collect();
        let spread = crate::diff::METRICS
            .iter()
            .filter_map(|m| {
                let v = values
                    .iter()
                    .filter_map(|r| crate::diff::get(r, m.key))
                    .collect();
                Some((m.key.to_string(), Stat::of(v)?))
            })
            .collect();
        Some(Report {
            schema: SCHEMA,
            accel: first.accel.clone(),
            qemu_version: first.qemu_version.clone(),
            memory_mib: first.memory_mib,
            runs: reports.iter().map(|r| r.runs).sum(),
            spread,
            image: first.image.clone(),
            argv: first.argv.clone(),
            marker: first.marker.clone(),
            boot: Boot {
                marker_s: med_f(&|r| Some(r.boot.marker_s)).unwrap_or(0.0),
                exit_s: med_f(&|r| r.boot.exit_s),
                clean_poweroff: reports.iter().all(|r| r.boot.clean_poweroff),
            },
            host,
            guest,
            samples: first.samples.clone(),
        })
    }
}

/// Parse the init's snapshot line (`IMGTOOL-SNAPSHOT {json}`, see [`guest_protocol::Snapshot`])
/// into the report's guest figures: meminfo and process figures in kB, zram in bytes.
pub fn parse_snapshot(line: &str) -> Result<Guest, String> {
    match guest_protocol::Message::parse(line.trim()) {
        Ok(guest_protocol::Message::Snapshot(s)) => Guest::from_snapshot(&s),
        Ok(_) | Err(guest_protocol::ParseError::NotProtocol) => {
            Err(format!("not an {} line", guest_protocol::MARK_SNAPSHOT))
        }
        Err(e) => Err(e.to_string()),
    }
}

impl Guest {
    pub fn from_snapshot(s: &guest_protocol::Snapshot) -> Result<Guest, String> {
        let mem = |k: &str| s.meminfo.get(k).copied();
        let need = |k: &str| mem(k).ok_or(format!("snapshot has no meminfo.{k}"));
        let swap_used_kib = match (mem("SwapTotal"), mem("SwapFree")) {
            (Some(t), Some(f)) => Some(t.saturating_sub(f)),
            _ => None,
        };
        let process = s.process.as_ref();
        Ok(Guest {
            mem_total_kib: need("MemTotal")?,
            mem_available_kib: need("MemAvailable")?,
            mem_free_kib: mem("MemFree"),
            cached_kib: mem("Cached"),
            swap_used_kib,
            program_rss_kib: process.and_then(|p| p.status.get("VmRSS").copied()),
            program_pss_kib: process.and_then(|p| p.smaps_rollup.get("Pss").copied()),
            since_ready_s: s.since_ready_ms.map(|ms| ms as f64 / 1000.0),
            zram_orig_kib: s.zram.as_ref().map(|z| z.orig_data_size / 1024),
            zram_used_kib: s.zram.as_ref().map(|z| z.mem_used_total / 1024),
            in_force: s.in_force.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_line_from_the_init() {
        // The shape guest-protocol's Message::Snapshot prints.
        let line = "IMGTOOL-SNAPSHOT {\"seq\":2,\"uptime_ms\":5000,\"since_ready_ms\":1200,\
             \"meminfo\":{\"MemTotal\":102400,\"MemFree\":5000,\"MemAvailable\":60000,\"Cached\":9000,\"SwapTotal\":32768,\"SwapFree\":32000},\
             \"process\":{\"pid\":87,\"status\":{\"VmPeak\":100,\"VmRSS\":37000},\
             \"smaps_rollup\":{\"Rss\":37000,\"Pss\":36000}},\
             \"zram\":{\"orig_data_size\":4096,\"compr_data_size\":1024,\"mem_used_total\":12288}}";
        let g = parse_snapshot(line).unwrap();
        assert_eq!(g.mem_total_kib, 102400);
        assert_eq!(g.mem_available_kib, 60000);
        assert_eq!(g.program_rss_kib, Some(37000));
        assert_eq!(g.program_pss_kib, Some(36000));
        assert_eq!(g.swap_used_kib, Some(768));
        assert_eq!(g.zram_used_kib, Some(12));
        assert_eq!(g.since_ready_s, Some(1.2));
        let no_proc = "IMGTOOL-SNAPSHOT {\"seq\":1,\"uptime_ms\":1,\"since_ready_ms\":null,\
            \"meminfo\":{\"MemTotal\":1,\"MemAvailable\":1},\"process\":null,\"zram\":null}";
        let g = parse_snapshot(no_proc).unwrap();
        assert_eq!(
            (g.program_rss_kib, g.zram_used_kib, g.since_ready_s),
            (None, None, None)
        );
        let e = parse_snapshot(
            "IMGTOOL-SNAPSHOT {\"seq\":1,\"uptime_ms\":1,\"meminfo\":{},\"process\":null,\"zram\":null}",
        )
        .unwrap_err();
        assert!(e.contains("MemTotal"), "{e}");
        assert!(parse_snapshot("IMGTOOL-READY uptime_ms=1 pid=2").is_err());
        assert!(parse_snapshot("IMGTOOL-SNAPSHOT {broken").is_err());
    }

    #[test]
    fn report_json_has_the_keys_scripts_use() {
        let r = sample_report();
        let v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(v["boot"]["marker_s"], 3.5);
        assert_eq!(v["host"]["rss_peak_kib"], 190_000);
        assert_eq!(v["host"]["pss_settled_kib"], 175_000);
        assert_eq!(v["guest"]["mem_total_kib"], 102_400);
        assert_eq!(v["guest"]["mem_available_kib"], 60_000);
        assert_eq!(v["accel"], "tcg");
        assert_eq!(v["samples"][0]["pss_kib"], 900);
        let back: Report = serde_json::from_value(v).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn several_runs_give_medians_and_their_spread() {
        let mut a = sample_report();
        let mut b = sample_report();
        let mut c = sample_report();
        a.host.rss_peak_kib = 180_000;
        c.host.rss_peak_kib = 200_000;
        a.boot.marker_s = 9.0;
        b.boot.marker_s = 3.0;
        c.boot.marker_s = 4.0;
        b.guest.as_mut().unwrap().program_rss_kib = Some(40_000);
        c.boot.clean_poweroff = false;
        let m = Report::median_of(&[a, b, c]).unwrap();
        assert_eq!(m.runs, 3);
        assert_eq!(m.host.rss_peak_kib, 190_000);
        assert_eq!(m.boot.marker_s, 4.0);
        assert_eq!(m.guest.as_ref().unwrap().program_rss_kib, Some(37_000));
        assert!(!m.boot.clean_poweroff);
        let s = m.spread["host.rss_peak_kib"];
        assert_eq!(
            (s.min, s.max, s.median, s.n),
            (180_000.0, 200_000.0, 190_000.0, 3)
        );
        assert_eq!(m.spread["boot.marker_s"].max, 9.0);
        // Figures no run has are absent from the spread, and the report round-trips.
        assert!(!m.spread.contains_key("guest.swap_used_kib"));
        let back: Report = serde_json::from_str(&m.to_json()).unwrap();
        assert_eq!(back, m);
        // One run is itself; none is nothing.
        let one = Report::median_of(&[sample_report()]).unwrap();
        assert_eq!(one.host, sample_report().host);
        assert!(Report::median_of(&[]).is_none());
    }

    fn sample_report() -> Report {
        Report {
            schema: SCHEMA,
            accel: "tcg".into(),
            qemu_version: Some("10.0.2".into()),
            memory_mib: Some(110),
            runs: 1,
            spread: BTreeMap::new(),
            image: "special.img".into(),
            argv: vec!["qemu-system-aarch64".into()],
            marker: MarkerInfo {
                regex: "^IMGTOOL-READY".into(),
                line: "IMGTOOL-READY uptime_ms=1 pid=2".into(),
            },
            boot: Boot {
                marker_s: 3.5,
                exit_s: Some(4.0),
                clean_poweroff: true,
            },
            host: Host {
                rss_peak_kib: 190_000,
                pss_peak_kib: 185_000,
                rss_settled_kib: 180_000,
                pss_settled_kib: 175_000,
                anon_settled_kib: Some(150_000),
                settle_s: 2.0,
                peers_at_settle: 0,
                loadavg_settled: Some(0.2),
            },
            guest: Some(
                parse_snapshot(
                    "IMGTOOL-SNAPSHOT {\"seq\":1,\"uptime_ms\":1,\
                     \"meminfo\":{\"MemTotal\":102400,\"MemAvailable\":60000},\
                     \"process\":{\"pid\":2,\"status\":{\"VmRSS\":37000},\"smaps_rollup\":{}},\
                     \"zram\":null}",
                )
                .unwrap(),
            ),
            samples: vec![Sample {
                t_s: 0.1,
                rss_kib: 1000,
                pss_kib: 900,
            }],
        }
    }
}
