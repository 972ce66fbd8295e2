//! `imgtool validate`: boot an image, measure it, gate on a baseline. The engine is
//! `fleet::measure` (qemu argv from the `qemu` crate, measurement from `validate`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Result};
use indicatif::{ProgressBar, ProgressStyle};
use validate::diff;

use super::guests::fleet_err;
use super::UsageError;

#[derive(clap::Args)]
pub struct Args {
    /// Disk image to boot (raw), e.g. special.img.
    image: PathBuf,
    #[command(flatten)]
    m: MeasureArgs,
    /// A report from an earlier `validate --json`: compare the gated figures' medians; exit 1
    /// when one regressed past its threshold and the runs' spread, or is missing now. Refused
    /// (exit 2, before booting) when measured under another accelerator, -m, qemu version or
    /// report schema.
    #[arg(long, value_name = "FILE")]
    baseline: Option<PathBuf>,
    /// How much worse a figure may get: `5%` for all, `KEY=PCT` for one (repeatable),
    /// e.g. `--threshold 5% --threshold boot.marker_s=20%`. boot.marker_s defaults to 50%
    /// (TCG boot time follows the host's load). PSS figures are listed but judged only when
    /// named here (`host.pss_settled_kib=5%`): other qemu processes lower them.
    #[arg(long, value_name = "PCT|KEY=PCT", default_value = "5%")]
    threshold: Vec<String>,
    /// Write the report (and the diff, with --baseline) as JSON here.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Boot this many times, one after another; the report holds each figure's median and its
    /// spread, and the gate judges the medians (a change within the spread is noise).
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    runs: u32,
}

/// How a guest is run and measured (shared by validate, experiment, demo).
#[derive(clap::Args, Clone)]
struct MeasureArgs {
    /// Readiness marker, a regex matched against console lines [default: the init's IMGTOOL-READY].
    #[arg(long, value_name = "REGEX")]
    marker: Option<String>,
    /// Give up when the marker has not appeared this many seconds after qemu started.
    #[arg(long, value_name = "SECS", default_value_t = 180.0)]
    timeout: f64,
    /// Seconds after the marker at which the settled figures are taken.
    #[arg(long, value_name = "SECS", default_value_t = 3.0)]
    settle: f64,
    /// Milliseconds between memory samples of the qemu process.
    #[arg(long, value_name = "MS", default_value_t = 100)]
    interval: u64,
    /// Guest memory (qemu -m) [default: the baseline's, else 128M].
    #[arg(short = 'm', long = "memory", value_name = "SIZE")]
    memory: Option<String>,
    /// Acceleration: auto picks KVM/HVF when they work here, else TCG [default: the
    /// baseline's, else auto].
    #[arg(long, value_parser = ["auto", "kvm", "hvf", "tcg"])]
    accel: Option<String>,
    /// No network device [default: as the baseline ran, else a virtio-net device].
    #[arg(long)]
    no_net: bool,
    /// The guest does not run imgtool's init: no snapshot request, no power-off command (it is
    /// killed after the settled reading), no guest figures.
    #[arg(long)]
    no_snapshot: bool,
    /// Copy the guest's console to stderr.
    #[arg(long)]
    console: bool,
    /// Extra qemu arguments, after `--` [default: the baseline's (a memory profile's qemu
    /// settings), else none]. Given, they replace the baseline's.
    #[arg(last = true, value_name = "QEMU_ARGS")]
    extra: Vec<String>,
}

impl MeasureArgs {
    /// The spec without memory, accelerator, network and qemu arguments: `Spec::adopt` sets
    /// those from `given()` and a baseline.
    fn spec(&self) -> fleet::measure::Spec {
        fleet::measure::Spec {
            marker: self.marker.clone(),
            timeout: self.timeout,
            settle: self.settle,
            interval_ms: self.interval,
            protocol: !self.no_snapshot,
            console: self.console,
            ..Default::default()
        }
    }

    fn given(&self) -> fleet::measure::Given {
        fleet::measure::Given {
            memory: self.memory.clone(),
            accel: self.accel.clone(),
            no_net: self.no_net,
            extra: self.extra.clone(),
        }
    }
}

/// Boot `image` once and measure it; `what` prefixes the spinner (`run 2/3: `).
fn measure(
    image: &Path,
    spec: &fleet::measure::Spec,
    host: &fleet::host::Host<'_>,
    what: &str,
) -> Result<validate::Report> {
    let spin = spinner(format!(
        "{what}booting {} (waiting for /{}/)",
        image.display(),
        spec.marker.as_deref().unwrap_or(validate::DEFAULT_MARKER)
    ));
    let r = fleet::measure::measure(image, spec, host);
    spin.finish_and_clear();
    r.map_err(fleet_err)
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn spinner(msg: String) -> ProgressBar {
    let pb = ProgressBar::new_spinner();
    pb.set_style(ProgressStyle::with_template("{spinner} {msg} {elapsed}").expect("valid"));
    pb.set_message(msg);
    pb.enable_steady_tick(Duration::from_millis(120));
    pb
}

pub fn run(a: Args) -> Result<()> {
    let mut t = diff::Thresholds::default();
    for spec in &a.threshold {
        t.add(spec)
            .map_err(|e| UsageError(format!("--threshold {e}")))?;
    }
    // Read the baseline first: a bad one should fail before a long boot.
    let remake = |p: &Path| {
        format!(
            "make one with `imgtool validate {} --runs {} --json {}` (README: \"Refreshing a baseline\")",
            a.image.display(),
            a.runs,
            p.display()
        )
    };
    let baseline = match &a.baseline {
        Some(p) => Some(diff::load(p).map_err(|e| UsageError(format!("{e}; {}", remake(p))))?),
        None => None,
    };
    let host = super::guests::host(&super::guests::CliUi)?;
    // A baseline brings the settings it was measured under; the command line's win.
    let recorded = baseline.as_ref().map(fleet::measure::Baseline::of);
    let given = a.m.given();
    let mut spec = a.m.spec();
    let adopted = spec.adopt(&given, recorded.as_ref());
    for w in &adopted.warnings {
        eprintln!("warning: {w}");
    }
    if !adopted.taken.is_empty() {
        eprintln!(
            "imgtool: measuring under the baseline's settings: {}",
            adopted.taken.join(" ")
        );
    }
    if let (Some(p), None) = (&a.baseline, &given.accel) {
        // The baseline's KVM or HVF: refused here, before a boot, when this host cannot run it.
        if spec.accel != "tcg" {
            let here = qemu::detect_accel(&host.loader, &host.kvm_probe_cache())
                .map_err(|e| fleet_err(e.into()))?;
            if here.as_str() != spec.accel {
                bail!(UsageError(format!(
                    "baseline {} was measured under {}, which does not run guests on this host \
                     (it would use {}): gate on a host where {} works, or {}",
                    p.display(),
                    spec.accel,
                    here.as_str(),
                    spec.accel,
                    remake(p)
                )));
            }
        }
    }
    // What the runs will be measured under; a baseline from another setup is refused before
    // anything boots.
    let (argv, accel) = fleet::measure::qemu_argv(&a.image, &spec, &host).map_err(fleet_err)?;
    if let (Some(b), Some(p), Some(rec)) = (&baseline, &a.baseline, &recorded) {
        let now = diff::Setup {
            schema: validate::report::SCHEMA,
            accel: accel.as_str().into(),
            memory_mib: validate::memory_mib(&argv),
            qemu_version: validate::qemu_version(&argv[0]),
        };
        let why = diff::incompatible(b, &now);
        if !why.is_empty() {
            bail!(UsageError(format!(
                "baseline {} cannot be compared with this run:\n  - {}\n{}",
                p.display(),
                why.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("\n  - "),
                refusal_advice(&why, &given, rec, &remake(p))
            )));
        }
    }
    let mut reports = Vec::new();
    for i in 1..=a.runs {
        let what = if a.runs > 1 {
            format!("run {i}/{}: ", a.runs)
        } else {
            String::new()
        };
        let r = measure(&a.image, &spec, &host, &what)?;
        if a.runs > 1 {
            eprintln!(
                "{what}ready after {:.2} s, RSS peak {}, settled {}{}",
                r.boot.marker_s,
                mib(r.host.rss_peak_kib),
                mib(r.host.rss_settled_kib),
                r.guest
                    .as_ref()
                    .and_then(|g| g.program_rss_kib)
                    .map_or(String::new(), |p| format!(", program RSS {}", mib(p)))
            );
        }
        reports.push(r);
    }
    let report = validate::Report::median_of(&reports).expect("at least one run");
    print!("{}", fleet::measure::summary(&report));
    let mut json = serde_json::to_value(&report)?;
    let d = baseline.map(|b| diff::compare(&b, &json, &t));
    if let Some(d) = &d {
        println!(
            "\nagainst {}:\n{}",
            a.baseline.as_ref().unwrap().display(),
            d.table()
        );
        if a.runs == 1 {
            println!(
                "note: 1 run, so no noise estimate of its own; --runs 3 or more lets the gate \
                 tell noise from a change"
            );
        }
        json["diff"] = d.to_json();
    }
    if let Some(p) = &a.json {
        common::fs::write_atomic(p, serde_json::to_string_pretty(&json)?.as_bytes())?;
    }
    if let Some(d) = d {
        let noisy: Vec<&str> = d.noisy().iter().map(|r| r.key.as_str()).collect();
        if !noisy.is_empty() {
            eprintln!(
                "warning: noise too high to judge {}: the runs spread over more than the \
                 threshold (more --runs, or a quieter runner, narrows it)",
                noisy.join(", ")
            );
        }
        let bad: Vec<String> = d
            .failing()
            .iter()
            .map(|r| match r.verdict {
                diff::Verdict::Missing => format!("{} (in the baseline, missing now)", r.key),
                _ => r.key.clone(),
            })
            .collect();
        if !bad.is_empty() {
            bail!("regressed past the threshold: {}", bad.join(", "));
        }
    }
    Ok(())
}

/// What to do about a refused baseline: for a setting the command line overrode, the flag
/// that gives the baseline's (the run is then comparable); a new baseline only for what no
/// flag can change (the qemu version, the report schema).
fn refusal_advice(
    why: &[diff::Mismatch],
    given: &fleet::measure::Given,
    recorded: &fleet::measure::Baseline,
    remake: &str,
) -> String {
    let fixes: Vec<String> = why
        .iter()
        .filter_map(|m| match m.setting {
            diff::Setting::Accel if given.accel.is_some() => {
                recorded.accel.as_ref().map(|a| format!("--accel {a}"))
            }
            diff::Setting::Memory if given.memory.is_some() => {
                recorded.memory.as_ref().map(|m| format!("-m {m}"))
            }
            _ => None,
        })
        .collect();
    let mut advice = Vec::new();
    if !fixes.is_empty() {
        advice.push(format!(
            "run with {} to measure as the baseline did (or leave the flag out: a run compared \
             with a baseline takes its -m, accelerator and qemu arguments)",
            fixes.join(" ")
        ));
    }
    if fixes.len() < why.len() {
        advice.push(remake.to_string());
    }
    advice.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mismatch(setting: diff::Setting) -> diff::Mismatch {
        diff::Mismatch {
            setting,
            text: format!("{setting:?} differs"),
        }
    }

    fn recorded() -> fleet::measure::Baseline {
        fleet::measure::Baseline {
            accel: Some("tcg".into()),
            memory: Some("110M".into()),
            qemu: Some((true, vec![])),
        }
    }

    /// An overridden -m or --accel is answered with the flag that matches the baseline, not
    /// with a new baseline; what no flag changes still needs one.
    #[test]
    fn refusal_names_the_flag_for_an_override() {
        let given = fleet::measure::Given {
            memory: Some("128M".into()),
            accel: Some("kvm".into()),
            ..Default::default()
        };
        let m = [
            mismatch(diff::Setting::Memory),
            mismatch(diff::Setting::Accel),
        ];
        let advice = refusal_advice(&m, &given, &recorded(), "make one with X");
        assert!(
            advice.starts_with("run with -m 110M --accel tcg to measure as the baseline did"),
            "{advice}"
        );
        assert!(!advice.contains("make one"), "{advice}");
        // The qemu version is not a flag: a new baseline, besides the flag for -m.
        let m = [
            mismatch(diff::Setting::Memory),
            mismatch(diff::Setting::QemuVersion),
        ];
        let advice = refusal_advice(&m, &given, &recorded(), "make one with X");
        assert!(
            advice.contains("run with -m 110M ") && advice.ends_with("\nmake one with X"),
            "{advice}"
        );
        // Nothing overridden (the baseline's -m was taken, yet differs): no flag to name.
        let advice = refusal_advice(
            &[mismatch(diff::Setting::Memory)],
            &fleet::measure::Given::default(),
            &recorded(),
            "make one with X",
        );
        assert_eq!(advice, "make one with X");
    }
}
