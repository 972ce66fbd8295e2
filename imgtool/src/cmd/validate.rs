//! `imgtool validate`: boot an image, measure it, gate on a baseline. `imgtool experiment`: the
//! same for several memory profiles, N runs each, optionally M guests at once, with a table and
//! an SVG chart. `imgtool demo`: from nothing to a booted BEAM guest and its memory report.
//!
//! The measuring engine is the `validate` crate; the qemu argv comes from the `qemu` crate as
//! for `imgtool qemu-cmd` (see `qemu_argv`), image pieces from `imgtool kernel build`, `rootfs
//! build`, `build` and `fwup` run as steps (see `step`).

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use validate::{diff, stats, svg, Accel};

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
    fn options(&self, label: &str) -> Result<validate::Options> {
        let mut o = validate::Options::new(label);
        if let Some(m) = &self.marker {
            o.marker = Regex::new(m).map_err(|e| UsageError(format!("--marker {m:?}: {e}")))?;
        }
        for (name, v) in [("--timeout", self.timeout), ("--settle", self.settle)] {
            if !(v.is_finite() && v >= 0.0) || (name == "--timeout" && v == 0.0) {
                bail!(UsageError(format!(
                    "{name} {v}: must be a positive number of seconds"
                )));
            }
        }
        if self.interval == 0 {
            bail!(UsageError("--interval 0: must be 1 ms or more".into()));
        }
        o.timeout = Duration::from_secs_f64(self.timeout);
        o.settle = Duration::from_secs_f64(self.settle);
        o.interval = Duration::from_millis(self.interval);
        o.protocol = !self.no_snapshot;
        if self.console {
            o.console_copy = Some(Box::new(std::io::stderr()));
        }
        Ok(o)
    }
}

/// Run ourselves as another subcommand (the steps other modules own), showing its stderr.
/// Returns stdout.
fn step(what: &str, args: &[&str]) -> Result<String> {
    let exe = std::env::current_exe().context("locating the imgtool binary")?;
    tracing::info!("imgtool {}", args.join(" "));
    let out = Command::new(&exe)
        .args(args)
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", exe.display()))?;
    if !out.status.success() {
        let msg = format!(
            "{what} failed: `imgtool {}` exited with {}",
            args.join(" "),
            out.status
        );
        if out.status.code() == Some(2) {
            bail!(UsageError(msg));
        }
        bail!(msg);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The qemu argv for booting `image` and the accelerator it uses: the same as `imgtool
/// qemu-cmd` (the `qemu` crate: machine, loader, disk, devices, KVM probe).
fn qemu_argv(image: &Path, m: &MeasureArgs, extra: &[String]) -> Result<(Vec<String>, Accel)> {
    let vm = qemu::Vm {
        image: image.to_path_buf(),
        memory: m.memory.clone(),
        no_net: m.no_net,
        extra: m.extra.iter().chain(extra).cloned().collect(),
    };
    let loader = super::loader::cached_path()?;
    let probe_cache = super::kernel::cache_root()?.join("kvm-probe");
    let argv = qemu::command(&vm, &loader, &m.accel, &probe_cache).map_err(|e| {
        if e.is_usage() {
            anyhow::Error::new(UsageError(e.to_string()))
        } else {
            anyhow::Error::new(e)
        }
    })?;
    let accel = Accel::from_argv(&argv);
    Ok((argv, accel))
}

fn measure(image: &Path, m: &MeasureArgs, extra: &[String]) -> Result<validate::Report> {
    let (argv, accel) = qemu_argv(image, m, extra)?;
    let opts = m.options(&image.display().to_string())?;
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]);
    let spin = spinner(format!(
        "booting {} under {} (waiting for /{}/)",
        image.display(),
        accel.as_str(),
        opts.marker
    ));
    let r = validate::run(cmd, accel, opts);
    spin.finish_and_clear();
    Ok(r?)
}

fn spinner(msg: String) -> ProgressBar {
    let pb = ProgressBar::new_spinner();
    pb.set_style(ProgressStyle::with_template("{spinner} {msg} {elapsed}").expect("valid"));
    pb.set_message(msg);
    pb.enable_steady_tick(Duration::from_millis(120));
    pb
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn summary(r: &validate::Report) -> String {
    let mut s = format!(
        "{} ({}): ready after {:.2} s\n  host qemu: RSS peak {}, settled {}; PSS peak {}, settled {} ({:.1} s after ready)\n",
        r.image,
        r.accel,
        r.boot.marker_s,
        mib(r.host.rss_peak_kib),
        mib(r.host.rss_settled_kib),
        mib(r.host.pss_peak_kib),
        mib(r.host.pss_settled_kib),
        r.host.settle_s,
    );
    if r.host.peers_at_settle > 0 {
        s += &format!(
            "  note: {} other qemu process(es) ran at the settled reading; the pages they share \
             lower this PSS\n",
            r.host.peers_at_settle
        );
    }
    if let Some(g) = &r.guest {
        s += &format!(
            "  guest: MemTotal {}, MemAvailable {}",
            mib(g.mem_total_kib),
            mib(g.mem_available_kib)
        );
        if let (Some(rss), Some(pss)) = (g.program_rss_kib, g.program_pss_kib) {
            s += &format!("; program RSS {}, PSS {}", mib(rss), mib(pss));
        }
        s.push('\n');
    }
    s
}

/// Write through a temporary name beside `path`, renamed on success.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path.file_name().context("output path has no file name")?;
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let res = fs::File::create(&tmp)
        .and_then(|mut f| f.write_all(bytes).and_then(|_| f.sync_all()))
        .and_then(|_| fs::rename(&tmp, path));
    if let Err(e) = res {
        let _ = fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("writing {}", path.display()));
    }
    Ok(())
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
    let report = measure(&a.image, &a.m, &[])?;
    print!("{}", summary(&report));
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
        write_atomic(p, serde_json::to_string_pretty(&json)?.as_bytes())?;
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

// ---------------------------------------------------------------------------------------------
// experiment

#[derive(clap::Args)]
pub struct ExperimentArgs {
    /// Experiment file (YAML); see experiments/profiles.yaml.
    file: PathBuf,
    /// Output directory [default: the file's `out`, else <file stem>-report beside the file].
    #[arg(long, short = 'o', value_name = "DIR")]
    out: Option<PathBuf>,
    /// Run only this many boots per profile (overrides `runs`, for a quick look).
    #[arg(long, value_name = "N")]
    runs: Option<u32>,
    /// Copy the guests' consoles to stderr.
    #[arg(long)]
    console: bool,
}

/// The experiment file. Paths are relative to the file.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Experiment {
    /// A title for the table and chart.
    name: String,
    /// Profile names (rootfs/profiles/NAME.yaml) or paths; the first is the reference.
    profiles: Vec<String>,
    /// Boots per profile.
    #[serde(default = "one")]
    runs: u32,
    /// Guests booted at once per run (they share the image read-only via qemu -snapshot).
    #[serde(default = "one")]
    guests: u32,
    /// Turn on the host's KSM (/sys/kernel/mm/ksm/run) while concurrent guests run; restored after.
    #[serde(default)]
    ksm: bool,
    #[serde(default = "default_settle")]
    settle: f64,
    /// Readiness marker regex [default: the init's IMGTOOL-READY].
    marker: Option<String>,
    /// Ask the init for its memory snapshot (false for guests without imgtool's init).
    #[serde(default = "yes")]
    snapshot: bool,
    #[serde(default = "default_timeout")]
    timeout: f64,
    /// Milliseconds between memory samples of each qemu process (the chart's resolution).
    #[serde(default = "default_interval")]
    interval_ms: u64,
    /// How each profile's image is made; or `images` for prebuilt ones.
    build: Option<BuildSpec>,
    /// Prebuilt images per profile name (instead of `build`).
    images: Option<std::collections::BTreeMap<String, PathBuf>>,
    /// Qemu arguments per profile name, added after the profile's own.
    #[serde(default)]
    qemu: std::collections::BTreeMap<String, Vec<String>>,
    /// Output directory.
    out: Option<PathBuf>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct BuildSpec {
    /// Root filesystem spec for `imgtool rootfs build` (the same for every profile).
    rootfs: PathBuf,
    /// Disk layout for `imgtool build` [default: nerves-qemu-aarch64].
    #[serde(default = "default_layout")]
    layout: String,
    /// A kernel Image path; default: `imgtool kernel build` with the profile's fragments.
    kernel: Option<PathBuf>,
}

fn yes() -> bool {
    true
}
fn one() -> u32 {
    1
}
fn default_settle() -> f64 {
    5.0
}
fn default_timeout() -> f64 {
    240.0
}
fn default_interval() -> u64 {
    250
}
fn default_layout() -> String {
    "nerves-qemu-aarch64".into()
}

fn load_experiment(path: &Path) -> Result<Experiment> {
    let text = fs::read_to_string(path)
        .map_err(|e| UsageError(format!("experiment file {}: {e}", path.display())))?;
    let e: Experiment = serde_saphyr::from_str(&text)
        .map_err(|e| UsageError(format!("experiment file {}: {e}", path.display())))?;
    let bad = |field: &str, msg: &str| {
        UsageError(format!(
            "experiment file {}: `{field}`: {msg}",
            path.display()
        ))
    };
    if e.profiles.is_empty() {
        bail!(bad("profiles", "list at least one profile"));
    }
    if e.runs == 0 || e.guests == 0 {
        bail!(bad("runs/guests", "must be 1 or more"));
    }
    if e.interval_ms == 0 {
        bail!(bad("interval-ms", "must be 1 or more"));
    }
    match (&e.build, &e.images) {
        (None, None) => bail!(bad(
            "build",
            "say how images are made (`build:`) or give `images:`"
        )),
        (Some(_), Some(_)) => bail!(bad("images", "give `build:` or `images:`, not both")),
        (None, Some(m)) => {
            for p in &e.profiles {
                if !m.contains_key(p) {
                    bail!(bad("images", &format!("no image for profile `{p}`")));
                }
            }
        }
        _ => {}
    }
    for k in e.qemu.keys() {
        if !e.profiles.contains(k) {
            bail!(bad("qemu", &format!("`{k}` is not in `profiles`")));
        }
    }
    Ok(e)
}

/// A memory profile's host-side settings: guest memory (qemu -m), the other qemu arguments
/// (tb-size, balloon, smp), the kernel fragments and command line.
struct ProfileHost {
    memory: String,
    qemu: Vec<String>,
    fragments: Vec<String>,
    cmdline: String,
}

fn profile_host(name: &str) -> Result<ProfileHost> {
    let p = rootfs::profile::load(name).map_err(|e| {
        if e.is_input() {
            anyhow::Error::new(UsageError(format!("profile `{name}`: {e}")))
        } else {
            anyhow::Error::new(e).context(format!("profile `{name}`"))
        }
    })?;
    let mut qemu = p.qemu.args();
    let mut memory = "128M".to_string();
    // -m goes through qemu-cmd's own option.
    if let Some(i) = qemu.iter().position(|a| a == "-m") {
        if i + 1 < qemu.len() {
            memory = qemu[i + 1].clone();
            qemu.drain(i..i + 2);
        }
    }
    // The arch's base fragment is always applied by `kernel build`.
    let mut fragments: Vec<String> = p
        .kernel
        .fragments
        .into_iter()
        .filter(|f| f != "qemu-aarch64")
        .collect();
    if let Some(text) = &p.kernel.config {
        fragments.push(inline_fragment(text)?.display().to_string());
    }
    Ok(ProfileHost {
        memory,
        qemu,
        fragments,
        cmdline: p.kernel.cmdline,
    })
}

/// A profile's inline kernel config as a fragment file `kernel build` can read: named by its
/// content under the cache, so the same text is the same file (and the same cached kernel).
fn inline_fragment(text: &str) -> Result<PathBuf> {
    let dir = rootfs::cache_dir().join("fragments");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let body = format!("# a memory profile's kernel.config\n{}\n", text.trim_end());
    let path = dir.join(format!(
        "{}.config",
        &rootfs::sha256_hex(text.as_bytes())[..16]
    ));
    if fs::read_to_string(&path).ok().as_deref() != Some(body.as_str()) {
        write_atomic(&path, body.as_bytes())?;
    }
    Ok(path)
}

fn build_kernel(fragments: &[String]) -> Result<String> {
    let mut args = vec!["kernel", "build"];
    for f in fragments {
        args.extend(["--fragment", f.as_str()]);
    }
    let out = step("building the kernel", &args)?;
    Ok(out.lines().last().unwrap_or("").trim().to_string())
}

/// A profile entry as `rootfs build --profile` takes it: built-in names as they are, paths
/// relative to the experiment file.
fn profile_ref(base: &Path, entry: &str) -> String {
    if entry.ends_with(".yaml") || entry.contains('/') {
        base.join(entry).display().to_string()
    } else {
        entry.to_string()
    }
}

/// What tables, charts and output directories call a profile entry: a path's file stem.
fn profile_label(entry: &str) -> String {
    if entry.ends_with(".yaml") || entry.contains('/') {
        Path::new(entry)
            .file_stem()
            .map_or_else(|| entry.to_string(), |s| s.to_string_lossy().into_owned())
    } else {
        entry.to_string()
    }
}

/// Build (or find) one profile's image.
fn profile_image(
    e: &Experiment,
    base: &Path,
    profile: &str,
    ph: Option<&ProfileHost>,
    dir: &Path,
) -> Result<PathBuf> {
    if let Some(m) = &e.images {
        return Ok(base.join(&m[profile]));
    }
    let b = e.build.as_ref().expect("checked");
    let ph = ph.expect("profiles are loaded when building");
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let kernel = match &b.kernel {
        Some(k) => base.join(k),
        None => PathBuf::from(build_kernel(&ph.fragments)?),
    };
    let rootfs = dir.join("rootfs.squashfs");
    // A file beside the experiment, else a built-in spec name (beam-guest).
    let spec = match base.join(&b.rootfs) {
        p if p.exists() => p,
        _ => b.rootfs.clone(),
    };
    step(
        "building the root filesystem",
        &[
            "rootfs",
            "build",
            &spec.to_string_lossy(),
            "--profile",
            &profile_ref(base, profile),
            "-o",
            &rootfs.to_string_lossy(),
        ],
    )?;
    let img = dir.join("special.img");
    step(
        "building the image",
        &[
            "build",
            &b.layout,
            "-o",
            &img.to_string_lossy(),
            "-D",
            &format!("kernel={}", kernel.display()),
            "-D",
            &format!("rootfs={}", rootfs.display()),
            "-D",
            &format!("cmdline={}", ph.cmdline),
        ],
    )?;
    Ok(img)
}

#[derive(Serialize)]
struct ProfileResult {
    profile: String,
    image: String,
    qemu_args: Vec<String>,
    /// Concurrent runs: the sum of the guests' settled PSS per run (shared pages counted once).
    group_pss_settled_kib: Vec<u64>,
    reports: Vec<Value>,
}

/// Swap a KSM setting in, restoring the old one on drop.
struct Ksm(Option<String>);

const KSM_RUN: &str = "/sys/kernel/mm/ksm/run";

impl Ksm {
    fn on() -> Ksm {
        let old = fs::read_to_string(KSM_RUN).ok();
        if let Err(e) = fs::write(KSM_RUN, "1") {
            tracing::warn!("cannot turn KSM on ({KSM_RUN}: {e}); guests will not share pages");
            return Ksm(None);
        }
        Ksm(old)
    }
}

impl Drop for Ksm {
    fn drop(&mut self) {
        if let Some(old) = &self.0 {
            let _ = fs::write(KSM_RUN, old.trim());
        }
    }
}

pub fn run_experiment(a: ExperimentArgs) -> Result<()> {
    let e = load_experiment(&a.file)?;
    let base = a
        .file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let out = a.out.clone().unwrap_or_else(|| match &e.out {
        Some(o) => base.join(o),
        None => base.join(format!(
            "{}-report",
            a.file.file_stem().unwrap_or_default().to_string_lossy()
        )),
    });
    fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let runs = a.runs.unwrap_or(e.runs);
    let _ksm = (e.ksm && e.guests > 1).then(Ksm::on);
    // Build every image first, then boot them in rounds (run 1 of each profile, run 2 of
    // each...), so drift in the host's load spreads over all profiles alike.
    let mut plans: Vec<(PathBuf, MeasureArgs, Vec<String>)> = Vec::new();
    let mut results = Vec::new();
    for profile in &e.profiles {
        let pref = profile_ref(&base, profile);
        let label = profile_label(profile);
        // Prebuilt images may stand for plain qemu runs rather than rootfs profiles.
        let ph = if e.build.is_some() || rootfs::profile::load(&pref).is_ok() {
            Some(profile_host(&pref)?)
        } else {
            None
        };
        eprintln!("imgtool: {label}: image");
        let img = profile_image(&e, &base, profile, ph.as_ref(), &out.join(&label))?;
        let mut extra = ph.as_ref().map(|p| p.qemu.clone()).unwrap_or_default();
        extra.extend(e.qemu.get(profile).cloned().unwrap_or_default());
        if e.guests > 1 {
            // Several qemus on one image: writes go to throwaway overlays.
            extra.push("-snapshot".into());
        }
        let m = MeasureArgs {
            marker: e.marker.clone(),
            timeout: e.timeout,
            settle: e.settle,
            interval: e.interval_ms,
            memory: ph.as_ref().map_or("128M".into(), |p| p.memory.clone()),
            accel: "auto".into(),
            no_net: true,
            no_snapshot: !e.snapshot,
            console: a.console,
            extra: Vec::new(),
        };
        results.push(ProfileResult {
            profile: label,
            image: img.display().to_string(),
            qemu_args: extra.clone(),
            group_pss_settled_kib: Vec::new(),
            reports: Vec::new(),
        });
        plans.push((img, m, extra));
    }
    for run in 1..=runs {
        for ((img, m, extra), res) in plans.iter().zip(results.iter_mut()) {
            let label = res.profile.clone();
            eprintln!(
                "imgtool: {label}: run {run}/{runs}{}",
                if e.guests > 1 {
                    format!(", {} guests at once", e.guests)
                } else {
                    String::new()
                }
            );
            let reports: Vec<Result<validate::Report>> = std::thread::scope(|s| {
                let hs: Vec<_> = (0..e.guests)
                    .map(|_| s.spawn(|| measure(img, m, extra)))
                    .collect();
                hs.into_iter()
                    .map(|h| h.join().expect("measuring thread"))
                    .collect()
            });
            let mut group = 0;
            for r in reports {
                let r = r.with_context(|| format!("profile {label}, run {run}"))?;
                print!("{}", summary(&r));
                group += r.host.pss_settled_kib;
                res.reports.push(serde_json::to_value(&r)?);
            }
            res.group_pss_settled_kib.push(group);
        }
    }

    let summaries: Vec<stats::Summary> = results
        .iter()
        .map(|r| stats::summarize(&r.profile, &r.reports))
        .collect();
    let mut table = format!(
        "# {}\n\n{} run(s) per profile, {} guest(s) at once, settled {} s after ready.\n\n",
        e.name, runs, e.guests, e.settle
    );
    table += &stats::table(&summaries);
    let shared: usize = results
        .iter()
        .flat_map(|r| &r.reports)
        .filter(|r| r["host"]["peers_at_settle"].as_u64().unwrap_or(0) > 0)
        .count();
    if shared > 0 {
        table += &format!(
            "\n{shared} run(s) had another qemu process running at the settled reading (another \
             user of this machine): their PSS is lower by the pages shared with it; RSS is not.\n"
        );
    }
    if e.guests > 1 {
        table += "\n| profile | PSS of all guests at once, median (MiB) |\n|---|---|\n";
        for r in &results {
            let s = stats::Stat::of(r.group_pss_settled_kib.iter().map(|&v| v as f64).collect());
            table += &format!(
                "| {} | {:.1} |\n",
                r.profile,
                s.map_or(0.0, |s| s.median / 1024.0)
            );
        }
    }
    let series: Vec<svg::Series> = results
        .iter()
        .enumerate()
        .flat_map(|(g, r)| {
            r.reports
                .iter()
                .enumerate()
                .map(move |(i, rep)| svg::Series {
                    name: format!("{} #{}", r.profile, i + 1),
                    group: g,
                    points: rep["samples"]
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .filter_map(|s| {
                                    Some((s["t_s"].as_f64()?, s["rss_kib"].as_f64()? / 1024.0))
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                })
        })
        .collect();
    let groups: Vec<String> = results.iter().map(|r| r.profile.clone()).collect();
    let chart = svg::chart(
        &format!("{}: qemu RSS over time", e.name),
        "host RSS (MiB)",
        &groups,
        &series,
    );
    let json = serde_json::json!({
        "name": e.name, "runs": runs, "guests": e.guests, "settle_s": e.settle,
        "summaries": summaries, "profiles": results,
    });
    table += "\n![RSS over time](rss.svg)\n";
    write_atomic(&out.join("table.md"), table.as_bytes())?;
    write_atomic(&out.join("rss.svg"), chart.as_bytes())?;
    write_atomic(
        &out.join("results.json"),
        serde_json::to_string_pretty(&json)?.as_bytes(),
    )?;
    println!("\n{}", stats::table(&summaries));
    println!("wrote {}/table.md, rss.svg, results.json", out.display());
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// demo

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Where firmware.fw, special.img and report.json go.
    #[arg(long, value_name = "DIR", default_value = "imgtool-demo")]
    out: PathBuf,
    /// Memory profile (rootfs/profiles/NAME.yaml).
    #[arg(long, value_name = "NAME", default_value = "nerves-tuned")]
    profile: String,
    /// Stop after writing special.img.
    #[arg(long)]
    no_boot: bool,
    /// Copy the guest's console to stderr.
    #[arg(long)]
    console: bool,
}

/// The demo's fwup.conf: the nerves-qemu-aarch64 layout's slot A (kernel at LBA 272, squashfs
/// root as partition 1 at LBA 206848, the U-Boot env at LBA 16), in fwup's config language
/// (<https://github.com/fwup-home/fwup#configuration-file-format>). `KERNEL` and `ROOTFS` come
/// from the environment, and so does `CMDLINE` (the profile's kernel command line). fwup does
/// not format the f2fs data partition (Nerves does that on first boot); the demo does it after
/// applying.
const DEMO_FWUP_CONF: &str = r#"
meta-product = "imgtool demo"
meta-version = "0.1.0"
meta-platform = "qemu_aarch64"
meta-architecture = "aarch64"
meta-author = "imgtool"

file-resource Image { host-path = "${KERNEL}" }
file-resource rootfs.img { host-path = "${ROOTFS}" }

mbr mbr-a {
    partition 0 { block-offset = 206848 block-count = 102400 type = 0x83 boot = true }
    partition 1 { block-offset = 309248 block-count = 102400 type = 0x83 }
    partition 2 { block-offset = 411648 block-count = 307200 type = 0x83 expand = true }
}

uboot-environment uboot-env { block-offset = 16 block-count = 256 }

task complete {
    on-init {
        mbr_write(mbr-a)
        uboot_clearenv(uboot-env)
        uboot_setenv(uboot-env, "nerves_fw_active", "a")
        uboot_setenv(uboot-env, "nerves_fw_devpath", "/dev/vda")
        uboot_setenv(uboot-env, "a.kernel_lba", "272")
        uboot_setenv(uboot-env, "a.kernel_args", "root=/dev/vda1 rootfstype=squashfs ${CMDLINE}")
        uboot_setenv(uboot-env, "a.nerves_fw_product", "imgtool demo")
        uboot_setenv(uboot-env, "a.nerves_fw_platform", "qemu_aarch64")
        uboot_setenv(uboot-env, "bootcount", "0")
        uboot_setenv(uboot-env, "upgrade_available", "0")
    }
    on-resource Image { raw_write(272) }
    on-resource rootfs.img { raw_write(206848) }
}
"#;

/// What the demo runs on the host, and the Debian package that provides each.
const DEMO_NEEDS: &[(&str, &str)] = &[
    ("aarch64-linux-gnu-gcc", "gcc-aarch64-linux-gnu"),
    ("aarch64-linux-gnu-ld", "binutils-aarch64-linux-gnu"),
    ("/usr/src/linux-source-6.1.tar.xz", "linux-source-6.1"),
    ("make", "make"),
    ("flex", "flex"),
    ("bison", "bison"),
    ("bc", "bc"),
];
const DEMO_NEEDS_BOOT: &[(&str, &str)] = &[("qemu-system-aarch64", "qemu-system-arm")];

fn on_path(tool: &str) -> bool {
    if tool.starts_with('/') {
        return Path::new(tool).exists();
    }
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false)
}

/// Check the host tools the demo needs. As root, install the missing ones with apt-get;
/// otherwise fail with the exact apt-get line.
fn demo_preflight(boot: bool) -> Result<()> {
    let mut missing: Vec<&str> = DEMO_NEEDS
        .iter()
        .chain(if boot { DEMO_NEEDS_BOOT } else { &[] })
        .filter(|(tool, _)| !on_path(tool))
        .map(|(_, pkg)| *pkg)
        .collect();
    missing.dedup();
    if missing.is_empty() {
        return Ok(());
    }
    // Debian bookworm's own qemu (7.2) conflicts with the preinstalled qemu-utils from
    // bookworm-backports; take qemu from backports when that suite is configured.
    let backports = ["/etc/apt/sources.list", "/etc/apt/sources.list.d"]
        .iter()
        .any(|p| grep_dir(Path::new(p), "bookworm-backports"));
    let (qemu, rest): (Vec<&str>, Vec<&str>) = missing.iter().partition(|p| p.starts_with("qemu-"));
    let mut lines = Vec::new();
    if !rest.is_empty() {
        lines.push(format!(
            "apt-get install -y --no-install-recommends {}",
            rest.join(" ")
        ));
    }
    if !qemu.is_empty() {
        lines.push(format!(
            "apt-get install -y --no-install-recommends{} {}",
            if backports {
                " -t bookworm-backports"
            } else {
                ""
            },
            qemu.join(" ")
        ));
    }
    let line = lines.join(" && ");
    // /proc/self belongs to the process's effective user.
    let root = {
        use std::os::unix::fs::MetadataExt;
        fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
    };
    if !root {
        bail!(UsageError(format!(
            "missing host packages: {}; install them as root with:\n  {}\n\
             (or run scripts/install-deps, which also adds bookworm-backports for qemu)",
            missing.join(", "),
            lines
                .iter()
                .map(|l| format!("sudo {l}"))
                .collect::<Vec<_>>()
                .join(" && ")
        )));
    }
    eprintln!("imgtool demo: installing {}", missing.join(" "));
    let ok = Command::new("sh")
        .args(["-c", &format!("apt-get update -qq && {line}")])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("running apt-get")?
        .success();
    if !ok {
        bail!("`{line}` failed; run scripts/install-deps and try again");
    }
    Ok(())
}

/// Whether a file, or any file in a directory, contains `needle`.
fn grep_dir(p: &Path, needle: &str) -> bool {
    let has = |f: &Path| fs::read_to_string(f).is_ok_and(|t| t.contains(needle));
    if p.is_dir() {
        fs::read_dir(p).is_ok_and(|rd| rd.filter_map(|e| e.ok()).any(|e| has(&e.path())))
    } else {
        has(p)
    }
}

/// The application partition (p3) of DEMO_FWUP_CONF, in 512-byte blocks.
const DEMO_DATA_LBA: u64 = 411648;
const DEMO_DATA_BLOCKS: u64 = 307200;

pub fn run_demo(a: DemoArgs) -> Result<()> {
    demo_preflight(!a.no_boot)?;
    fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let p = |n: &str| a.out.join(n).to_string_lossy().into_owned();
    let ph = profile_host(&a.profile)?;
    eprintln!("imgtool demo: 1/5 kernel");
    let kernel = build_kernel(&ph.fragments)?;
    eprintln!(
        "imgtool demo: 2/5 BEAM root filesystem ({} profile)",
        a.profile
    );
    let rootfs = p("rootfs.squashfs");
    step(
        "building the root filesystem",
        &[
            "rootfs",
            "build",
            "beam-guest",
            "--profile",
            &a.profile,
            "-o",
            &rootfs,
        ],
    )?;
    eprintln!("imgtool demo: 3/5 firmware.fw");
    let fw = p("firmware.fw");
    let conf = p("fwup.conf");
    write_atomic(Path::new(&conf), DEMO_FWUP_CONF.as_bytes())?;
    std::env::set_var("KERNEL", &kernel);
    std::env::set_var("ROOTFS", &rootfs);
    std::env::set_var("CMDLINE", &ph.cmdline);
    step(
        "making firmware.fw",
        &["fwup", "-c", "-f", &conf, "-o", &fw],
    )?;
    eprintln!("imgtool demo: 4/5 special.img from firmware.fw");
    let img = p("special.img");
    // A fresh file each time: fwup writes into an existing image in place.
    let _ = fs::remove_file(&img);
    step(
        "applying firmware.fw",
        &["fwup", "-a", "-i", &fw, "-d", &img, "-t", "complete"],
    )?;
    // fwup leaves the application partition alone (Nerves formats it on first boot); format it
    // here, which also grows the file to the partition table's end.
    step(
        "formatting the data partition",
        &[
            "mkfs",
            "f2fs",
            &img,
            "--offset",
            &format!("{}", DEMO_DATA_LBA * 512),
            "--size",
            &format!("{}", DEMO_DATA_BLOCKS * 512),
            "--label",
            "APPDATA",
        ],
    )?;
    if a.no_boot {
        println!("wrote {fw} and {img}");
        return Ok(());
    }
    eprintln!("imgtool demo: 5/5 boot and measure");
    let m = MeasureArgs {
        marker: None,
        timeout: 240.0,
        settle: 3.0,
        interval: 100,
        memory: ph.memory.clone(),
        accel: "auto".into(),
        no_net: true,
        no_snapshot: false,
        console: a.console,
        extra: ph.qemu.clone(),
    };
    let r = measure(Path::new(&img), &m, &[])?;
    print!("{}", summary(&r));
    let rep = p("report.json");
    write_atomic(Path::new(&rep), r.to_json().as_bytes())?;
    println!("wrote {fw}, {img}, {rep}");
    Ok(())
}
