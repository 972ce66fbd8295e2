//! `imgtool validate`: boot an image, measure it, gate on a baseline. The engine is
//! `fleet::measure` (qemu argv from the `qemu` crate, measurement from `validate`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Result};
use indicatif::{ProgressBar, ProgressStyle};
use validate::diff;

use super::UsageError;

#[derive(clap::Args)]
pub struct Args {
    /// Disk image to boot (raw), e.g. special.img.
    image: PathBuf,
    #[command(flatten)]
    m: MeasureArgs,
    /// A report from an earlier `validate --json`: compare every figure, exit 1 on a regression.
    #[arg(long, value_name = "FILE")]
    baseline: Option<PathBuf>,
    /// How much worse a figure may get: `5%` for all, `KEY=PCT` for one (repeatable),
    /// e.g. `--threshold 5% --threshold boot.marker_s=50%`.
    #[arg(long, value_name = "PCT|KEY=PCT", default_value = "5%")]
    threshold: Vec<String>,
    /// Write the report (and the diff, with --baseline) as JSON here.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
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
    /// Guest memory (qemu -m).
    #[arg(
        short = 'm',
        long = "memory",
        default_value = "128M",
        value_name = "SIZE"
    )]
    memory: String,
    /// Acceleration: auto picks KVM/HVF when they work here, else TCG.
    #[arg(long, default_value = "auto", value_parser = ["auto", "kvm", "hvf", "tcg"])]
    accel: String,
    /// No network device.
    #[arg(long)]
    no_net: bool,
    /// The guest does not run imgtool's init: no snapshot request, no power-off command (it is
    /// killed after the settled reading), no guest figures.
    #[arg(long)]
    no_snapshot: bool,
    /// Copy the guest's console to stderr.
    #[arg(long)]
    console: bool,
    /// Extra qemu arguments, after `--`.
    #[arg(last = true, value_name = "QEMU_ARGS")]
    extra: Vec<String>,
}

impl MeasureArgs {
    pub(crate) fn spec(&self) -> fleet::measure::Spec {
        fleet::measure::Spec {
            marker: self.marker.clone(),
            timeout: self.timeout,
            settle: self.settle,
            interval_ms: self.interval,
            memory: self.memory.clone(),
            accel: self.accel.clone(),
            no_net: self.no_net,
            protocol: !self.no_snapshot,
            console: self.console,
            extra: self.extra.clone(),
        }
    }
}

fn measure(image: &Path, m: &MeasureArgs) -> Result<validate::Report> {
    let spec = m.spec();
    let host = super::guests::host(&super::guests::CliUi)?;
    let spin = spinner(format!(
        "booting {} (waiting for /{}/)",
        image.display(),
        spec.marker.as_deref().unwrap_or(validate::DEFAULT_MARKER)
    ));
    let r = fleet::measure::measure(image, &spec, &host);
    spin.finish_and_clear();
    r.map_err(super::guests::fleet_err)
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
    let baseline = match &a.baseline {
        Some(p) => Some(diff::load(p).map_err(|e| {
            UsageError(format!(
                "{e} (make one with `imgtool validate IMAGE --json {}`)",
                p.display()
            ))
        })?),
        None => None,
    };
    let report = measure(&a.image, &a.m)?;
    print!("{}", fleet::measure::summary(&report));
    let mut json = serde_json::to_value(&report)?;
    let d = baseline.map(|b| diff::compare(&b, &json, &t));
    if let Some(d) = &d {
        println!(
            "\nagainst {}:\n{}",
            a.baseline.as_ref().unwrap().display(),
            d.table()
        );
        json["diff"] = d.to_json();
    }
    if let Some(p) = &a.json {
        fleet::write_atomic(p, serde_json::to_string_pretty(&json)?.as_bytes())?;
    }
    if let Some(d) = d {
        let bad: Vec<&str> = d
            .rows
            .iter()
            .filter(|r| r.regressed)
            .map(|r| r.key.as_str())
            .collect();
        if !bad.is_empty() {
            bail!("regressed past the threshold: {}", bad.join(", "));
        }
    }
    Ok(())
}
