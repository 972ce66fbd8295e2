//! Memory experiments: one image per profile (same root filesystem spec; the kernel differs only
//! where a profile asks), each booted N times in rounds, optionally M guests at once, cold
//! (`start: boot`) or as clones of a template saved at readiness (`start: clone`). A list of
//! guest counts (`guests: [1, 8, 32]`) is a density sweep: marginal host memory per guest and
//! guests per GiB for each profile. Writes `table.md`, `rss.svg` and `results.json`.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use validate::{stats, svg};

use crate::fleet::{self, FleetOptions};
use crate::host::Host;
use crate::ksm::{Ksm, KsmMode};
use crate::measure::{self, Spec};
use crate::pipeline::{self, ProfileHost};
use crate::{write_atomic, Error, Result};

/// A 1-minute load average above this marks a run as taken on a loaded machine (issue 22: the
/// project's machine has 2 cores).
const LOADED: f64 = 1.0;

/// How each guest starts.
#[derive(Deserialize, Serialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Start {
    /// A cold boot from the image.
    #[default]
    Boot,
    /// A clone of a template saved once at readiness (`imgtool template`).
    Clone,
}

/// One count or a sweep.
#[derive(Deserialize, Debug, Clone)]
#[serde(untagged)]
pub enum Guests {
    One(u32),
    Sweep(Vec<u32>),
}

impl Default for Guests {
    fn default() -> Self {
        Guests::One(1)
    }
}

impl Guests {
    pub fn counts(&self) -> Vec<u32> {
        match self {
            Guests::One(n) => vec![*n],
            Guests::Sweep(v) => v.clone(),
        }
    }
}

/// The experiment file. Paths are relative to the file.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Experiment {
    /// A title for the table and chart.
    pub name: String,
    /// Profile names (rootfs/profiles/NAME.yaml) or paths; the first is the reference.
    pub profiles: Vec<String>,
    /// Boots per profile (and per guest count).
    #[serde(default = "one")]
    pub runs: u32,
    /// Guests at once per run: a number, or a list for a density sweep.
    #[serde(default)]
    pub guests: Guests,
    /// `boot` (cold boots) or `clone` (clones of a template saved at readiness).
    #[serde(default)]
    pub start: Start,
    /// Turn on the host's KSM (/sys/kernel/mm/ksm/run) while concurrent guests run; restored after.
    #[serde(default)]
    pub ksm: bool,
    #[serde(default = "default_settle")]
    pub settle: f64,
    /// Readiness marker regex [default: the init's IMGTOOL-READY].
    pub marker: Option<String>,
    /// Ask the init for its memory snapshot (false for guests without imgtool's init).
    #[serde(default = "yes")]
    pub snapshot: bool,
    #[serde(default = "default_timeout")]
    pub timeout: f64,
    /// Milliseconds between memory samples of each qemu process (the chart's resolution).
    #[serde(default = "default_interval")]
    pub interval_ms: u64,
    /// How each profile's image is made; or `images` for prebuilt ones.
    pub build: Option<BuildSpec>,
    /// Prebuilt images per profile name (instead of `build`).
    pub images: Option<BTreeMap<String, PathBuf>>,
    /// A Nerves firmware (.fw) imgtool did not build (instead of `build`): each profile is
    /// applied with `fw tune`, the result written to a disk by fwup's `complete` task.
    pub firmware: Option<PathBuf>,
    /// Qemu arguments per profile name, added after the profile's own.
    #[serde(default)]
    pub qemu: BTreeMap<String, Vec<String>>,
    /// Output directory.
    pub out: Option<PathBuf>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct BuildSpec {
    /// Root filesystem spec (the same for every profile): a file beside the experiment, or a
    /// built-in spec name.
    pub rootfs: PathBuf,
    /// Disk layout [default: nerves-qemu-aarch64].
    #[serde(default = "default_layout")]
    pub layout: String,
    /// A kernel Image path; default: the small kernel with the profile's fragments.
    pub kernel: Option<PathBuf>,
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

/// Read and check an experiment file.
pub fn load(path: &Path) -> Result<Experiment> {
    let text = fs::read_to_string(path)
        .map_err(|e| Error::Usage(format!("experiment file {}: {e}", path.display())))?;
    let e: Experiment = serde_saphyr::from_str(&text)
        .map_err(|e| Error::Usage(format!("experiment file {}: {e}", path.display())))?;
    let bad = |field: &str, msg: &str| {
        Error::Usage(format!(
            "experiment file {}: `{field}`: {msg}",
            path.display()
        ))
    };
    if e.profiles.is_empty() {
        return Err(bad("profiles", "list at least one profile"));
    }
    let counts = e.guests.counts();
    if e.runs == 0 || counts.is_empty() || counts.contains(&0) {
        return Err(bad("runs/guests", "must be 1 or more"));
    }
    if e.interval_ms == 0 {
        return Err(bad("interval-ms", "must be 1 or more"));
    }
    if e.start == Start::Clone && !e.snapshot {
        return Err(bad(
            "start",
            "clones need imgtool's init (snapshot: true): the identity and the liveness answer \
             come through its console protocol",
        ));
    }
    let sources = [e.build.is_some(), e.images.is_some(), e.firmware.is_some()];
    match sources.iter().filter(|x| **x).count() {
        0 => {
            return Err(bad(
                "build",
                "say how images are made (`build:`), or give `images:` or `firmware:`",
            ))
        }
        1 => {}
        _ => {
            return Err(bad(
                "images",
                "give one of `build:`, `images:` and `firmware:`",
            ))
        }
    }
    if e.firmware.is_some() && e.marker.is_none() {
        return Err(bad(
            "marker",
            "a firmware's readiness is its own console line: give `marker:` (a regex)",
        ));
    }
    if let Some(m) = &e.images {
        for p in &e.profiles {
            if !m.contains_key(p) {
                return Err(bad("images", &format!("no image for profile `{p}`")));
            }
        }
    }
    for k in e.qemu.keys() {
        if !e.profiles.contains(k) {
            return Err(bad("qemu", &format!("`{k}` is not in `profiles`")));
        }
    }
    Ok(e)
}

/// A profile entry as the rootfs build takes it: built-in names as they are, paths relative to
/// the experiment file.
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
    host: &Host,
) -> Result<PathBuf> {
    if let Some(m) = &e.images {
        return Ok(base.join(&m[profile]));
    }
    if let Some(fw) = &e.firmware {
        return firmware_image(&base.join(fw), &profile_ref(base, profile), dir, host);
    }
    let b = e.build.as_ref().expect("load() checked build/images");
    let ph = ph.expect("profiles are loaded when building");
    // A file beside the experiment, else a built-in spec name (beam-guest).
    let spec = match base.join(&b.rootfs) {
        p if p.exists() => p,
        _ => b.rootfs.clone(),
    };
    let kernel = b.kernel.as_ref().map(|k| base.join(k));
    pipeline::profile_image(
        dir,
        &spec.to_string_lossy(),
        &b.layout,
        &profile_ref(base, profile),
        ph,
        kernel.as_deref(),
        host,
    )
}

/// `fw tune` the firmware with `profile`, then fwup's `complete` task onto a new disk.
fn firmware_image(fw: &Path, profile: &str, dir: &Path, host: &Host) -> Result<PathBuf> {
    fs::create_dir_all(dir).map_err(|err| Error::io(format!("creating {}", dir.display()), err))?;
    let tuned = dir.join("tuned.fw");
    let r = firmware::tune(
        fw,
        &tuned,
        &firmware::TuneOptions {
            profile: profile.to_string(),
            private_key: None,
        },
    )
    .map_err(|err| {
        if err.is_input() {
            Error::Usage(err.to_string())
        } else {
            Error::Failed(err.to_string())
        }
    })?;
    for i in &r.not_applied {
        host.ui
            .note(&format!("{profile}: not applied: {}: {}", i.what, i.detail));
    }
    let img = dir.join("special.img");
    let _ = fs::remove_file(&img);
    let s = |p: &Path| p.to_string_lossy().into_owned();
    pipeline::fwup(
        &format!("applying {}", tuned.display()),
        &[
            "-a",
            "-q",
            "-U",
            "-i",
            &s(&tuned),
            "-d",
            &s(&img),
            "-t",
            "complete",
        ],
    )?;
    Ok(img)
}

/// One (profile, guest count) cell of the experiment.
#[derive(Serialize, Debug)]
pub struct GroupRun {
    pub guests: u32,
    pub run: u32,
    /// Sum of the guests' settled PSS (shared pages counted once overall).
    pub pss_sum_kib: u64,
    /// Host MemAvailable before the guests started minus at the settled reading (clones only;
    /// cold boots measure each guest on its own clock).
    pub available_drop_kib: Option<u64>,
    /// KSM pages shared at the settled reading, when KSM ran.
    pub ksm_pages_sharing: Option<u64>,
    pub spawn_s_p50: Option<f64>,
    pub failed: u32,
}

#[derive(Serialize, Debug)]
pub struct ProfileResult {
    pub profile: String,
    pub image: String,
    pub qemu_args: Vec<String>,
    pub groups: Vec<GroupRun>,
    /// Per-guest reports of cold boots (the chart's series).
    pub reports: Vec<Value>,
}

/// Whether qemu arguments give the guest RAM KSM can merge: a shared mapping (memfd or
/// file-backed `share=on`) never is.
pub fn ksm_mergeable(qemu_args: &[String]) -> bool {
    !qemu_args
        .iter()
        .any(|a| a.starts_with("memory-backend-memfd") || a.contains("share=on"))
}

pub struct RunOptions {
    pub out: Option<PathBuf>,
    pub runs: Option<u32>,
    pub console: bool,
}

/// What an experiment wrote.
pub struct Outcome {
    pub out: PathBuf,
    pub table: String,
}

fn group_samples(r: &validate::Report) -> Value {
    serde_json::to_value(r).unwrap_or(Value::Null)
}

/// Run the experiment in `file`.
pub fn run(file: &Path, o: &RunOptions, host: &Host) -> Result<Outcome> {
    let e = load(file)?;
    let base = file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let out = o.out.clone().unwrap_or_else(|| match &e.out {
        Some(d) => base.join(d),
        None => base.join(format!(
            "{}-report",
            file.file_stem().unwrap_or_default().to_string_lossy()
        )),
    });
    fs::create_dir_all(&out)
        .map_err(|err| Error::io(format!("creating {}", out.display()), err))?;
    let runs = o.runs.unwrap_or(e.runs);
    let counts = e.guests.counts();
    let many = counts.iter().any(|&n| n > 1);
    let ksm = if e.ksm && many {
        Ksm::on()
            .map_err(|why| {
                tracing::warn!("cannot turn KSM on ({why}); guests will not share pages")
            })
            .ok()
    } else {
        None
    };
    let ksm_state = match (e.ksm, &ksm) {
        (false, _) => "off",
        (true, Some(_)) => "on",
        (true, None) => "requested but unavailable",
    };

    // Build every image (and template) first, then run in rounds (run 1 of each profile, run 2
    // of each...), so drift in the host's load spreads over all profiles alike.
    struct Plan {
        image: PathBuf,
        spec: Spec,
        template: Option<PathBuf>,
    }
    let mut plans: Vec<Plan> = Vec::new();
    let mut results = Vec::new();
    let mut warnings = Vec::new();
    for profile in &e.profiles {
        let pref = profile_ref(&base, profile);
        let label = profile_label(profile);
        // Prebuilt images may stand for plain qemu runs rather than rootfs profiles.
        let ph =
            if e.build.is_some() || e.firmware.is_some() || rootfs::profile::load(&pref).is_ok() {
                Some(pipeline::profile_host(&pref, &host.cache)?)
            } else {
                None
            };
        host.ui.note(&format!("{label}: image"));
        let dir = out.join(&label);
        let img = profile_image(&e, &base, profile, ph.as_ref(), &dir, host)?;
        let mut extra = ph.as_ref().map(|p| p.qemu.clone()).unwrap_or_default();
        extra.extend(e.qemu.get(profile).cloned().unwrap_or_default());
        // Clones map the template's RAM file privately whatever the profile's backend was, so
        // only cold boots can have RAM that KSM never sees.
        if e.ksm && many && e.start == Start::Boot && !ksm_mergeable(&extra) {
            let w = format!(
                "{label}: its RAM backend is a shared mapping, which KSM never merges: KSM saves \
                 nothing for this profile"
            );
            tracing::warn!("{w}");
            warnings.push(w);
        }
        let spec = Spec {
            marker: e.marker.clone(),
            timeout: e.timeout,
            settle: e.settle,
            interval_ms: e.interval_ms,
            memory: ph.as_ref().map_or("128M".into(), |p| p.memory.clone()),
            accel: "auto".into(),
            no_net: true,
            protocol: e.snapshot,
            console: o.console,
            extra: extra.clone(),
        };
        let template = if e.start == Start::Clone {
            host.ui.note(&format!("{label}: template"));
            let tdir = dir.join("template");
            crate::fleet::save_template(&img, &tdir, &spec, &pref, host)?;
            Some(tdir)
        } else {
            None
        };
        results.push(ProfileResult {
            profile: label,
            image: img.display().to_string(),
            qemu_args: extra,
            groups: Vec::new(),
            reports: Vec::new(),
        });
        plans.push(Plan {
            image: img,
            spec,
            template,
        });
    }
    for run in 1..=runs {
        for &n in &counts {
            for (p, res) in plans.iter().zip(results.iter_mut()) {
                let label = res.profile.clone();
                host.ui.note(&format!(
                    "{label}: run {run}/{runs}, {n} guest(s) at once ({})",
                    match e.start {
                        Start::Boot => "cold boots",
                        Start::Clone => "clones",
                    }
                ));
                let g = match &p.template {
                    None => boot_group(&p.image, &p.spec, n, run, host, res)?,
                    Some(t) => clone_group(t, &p.spec, n, run, e.settle, ksm.is_some(), host)?,
                };
                res.groups.push(g);
            }
        }
    }

    let summaries: Vec<stats::Summary> = results
        .iter()
        .filter(|r| !r.reports.is_empty())
        .map(|r| stats::summarize(&r.profile, &r.reports))
        .collect();
    let mut table = format!(
        "# {}\n\n{} run(s) per profile, {} guest(s) at once ({}), settled {} s after ready, KSM {}.\n\n",
        e.name,
        runs,
        counts
            .iter()
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join("/"),
        match e.start {
            Start::Boot => "cold boots",
            Start::Clone => "template clones",
        },
        e.settle,
        ksm_state,
    );
    if !summaries.is_empty() {
        table += &stats::table(&summaries);
    }
    let shared: usize = results
        .iter()
        .flat_map(|r| &r.reports)
        .filter(|r| r["host"]["peers_at_settle"].as_u64().unwrap_or(0) > 0)
        .count();
    let loads: Vec<f64> = results
        .iter()
        .flat_map(|r| &r.reports)
        .filter_map(|r| r["host"]["loadavg_settled"].as_f64())
        .collect();
    if let (Some(lo), Some(hi)) = (
        loads.iter().copied().reduce(f64::min),
        loads.iter().copied().reduce(f64::max),
    ) {
        table += &format!(
            "\nHost load average (1 min) at the settled readings: {lo:.2}-{hi:.2}{}.\n",
            if hi > LOADED {
                " (a loaded machine: boot times are longer than on a quiet one)"
            } else {
                ""
            }
        );
    }
    if shared > 0 && !many {
        table += &format!(
            "\n{shared} run(s) had another qemu process running at the settled reading (another \
             user of this machine): their PSS is lower by the pages shared with it; RSS is not.\n"
        );
    }
    if many || e.start == Start::Clone {
        table += &density_table(&results, &counts);
    }
    for w in &warnings {
        table += &format!("\nwarning: {w}\n");
    }
    let chart = density_or_rss_chart(&e.name, &results, &counts, e.start);
    let json = serde_json::json!({
        "name": e.name, "runs": runs, "guests": counts, "start": e.start, "settle_s": e.settle,
        "ksm": ksm_state, "warnings": warnings,
        "summaries": summaries, "profiles": results,
    });
    table += "\n![chart](rss.svg)\n";
    write_atomic(&out.join("table.md"), table.as_bytes())?;
    write_atomic(&out.join("rss.svg"), chart.as_bytes())?;
    write_atomic(
        &out.join("results.json"),
        serde_json::to_string_pretty(&json)
            .expect("JSON values serialize")
            .as_bytes(),
    )?;
    Ok(Outcome { out, table })
}

/// `n` cold boots at once of `image`.
fn boot_group(
    image: &Path,
    spec: &Spec,
    n: u32,
    run: u32,
    host: &Host,
    res: &mut ProfileResult,
) -> Result<GroupRun> {
    let reports: Vec<Result<validate::Report>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..n)
            .map(|_| s.spawn(|| measure::measure(image, spec, host)))
            .collect();
        hs.into_iter()
            .map(|h| h.join().expect("measuring thread"))
            .collect()
    });
    let mut sum = 0;
    let mut failed = 0;
    let mut ready_s = Vec::new();
    for r in reports {
        match r {
            Ok(r) => {
                host.ui.note(measure::summary(&r).trim_end());
                sum += r.host.pss_settled_kib;
                ready_s.push(r.boot.marker_s);
                res.reports.push(group_samples(&r));
            }
            Err(err) => {
                failed += 1;
                tracing::warn!("{}, run {run}: a guest failed: {err}", res.profile);
            }
        }
    }
    if failed == n {
        return Err(Error::Failed(format!(
            "{}, run {run}: every guest failed (see the warnings above)",
            res.profile
        )));
    }
    Ok(GroupRun {
        guests: n,
        run,
        pss_sum_kib: sum,
        available_drop_kib: None,
        ksm_pages_sharing: Ksm::pages_sharing().filter(|_| n > 1),
        spawn_s_p50: validate::stats::Stat::of(ready_s).map(|s| s.median),
        failed,
    })
}

/// `n` clones at once of the template in `dir`, held `settle` seconds.
fn clone_group(
    dir: &Path,
    spec: &Spec,
    n: u32,
    run: u32,
    settle: f64,
    ksm: bool,
    host: &Host,
) -> Result<GroupRun> {
    let o = FleetOptions {
        count: n,
        parallel: n.min(8),
        hold: std::time::Duration::from_secs_f64(settle),
        console: spec.console,
        ksm: if ksm { KsmMode::On } else { KsmMode::Off },
        ..FleetOptions::default()
    };
    let r = fleet::run(dir, &o, host, &mut |_| {})?;
    Ok(GroupRun {
        guests: n,
        run,
        pss_sum_kib: r.memory.pss_sum_kib,
        available_drop_kib: Some(r.memory.available_drop_kib),
        ksm_pages_sharing: if ksm { Ksm::pages_sharing() } else { None },
        spawn_s_p50: r.spawn_s.p50,
        failed: r.failed,
    })
}

/// Marginal MiB per guest and guests per GiB, per profile and guest count (medians over runs).
fn density_table(results: &[ProfileResult], counts: &[u32]) -> String {
    let mut t = String::from(
        "\n| profile | guests | PSS sum (MiB) | marginal PSS / guest (MiB) | MemAvailable drop / guest (MiB) | guests per GiB | spawn-to-ready p50 (s) | failed |\n|---|---|---|---|---|---|---|---|\n",
    );
    for r in results {
        for &n in counts {
            let gs: Vec<&GroupRun> = r.groups.iter().filter(|g| g.guests == n).collect();
            let med = |f: &dyn Fn(&GroupRun) -> Option<f64>| {
                stats::Stat::of(gs.iter().filter_map(|g| f(g)).collect()).map(|s| s.median)
            };
            let pss = med(&|g| Some(g.pss_sum_kib as f64 / 1024.0)).unwrap_or(0.0);
            let per = pss / n as f64;
            let avail = med(&|g| g.available_drop_kib.map(|k| k as f64 / 1024.0 / n as f64));
            // Guests per GiB from the worse of the two marginal figures.
            let worst = avail.map_or(per, |a| a.max(per));
            let per_gib = if worst > 0.0 { 1024.0 / worst } else { 0.0 };
            let spawn = med(&|g| g.spawn_s_p50);
            let failed: u32 = gs.iter().map(|g| g.failed).sum();
            t += &format!(
                "| {} | {n} | {pss:.1} | {per:.1} | {} | {per_gib:.0} | {} | {failed} |\n",
                r.profile,
                avail.map_or("-".into(), |a| format!("{a:.1}")),
                spawn.map_or("-".into(), |s| format!("{s:.2}")),
            );
        }
    }
    t
}

/// A sweep charts marginal MiB per guest against the guest count; otherwise qemu RSS over time.
fn density_or_rss_chart(
    name: &str,
    results: &[ProfileResult],
    counts: &[u32],
    start: Start,
) -> String {
    let groups: Vec<String> = results.iter().map(|r| r.profile.clone()).collect();
    if counts.len() > 1 || start == Start::Clone {
        let series: Vec<svg::Series> = results
            .iter()
            .enumerate()
            .map(|(g, r)| svg::Series {
                name: r.profile.clone(),
                group: g,
                points: counts
                    .iter()
                    .filter_map(|&n| {
                        let v: Vec<f64> = r
                            .groups
                            .iter()
                            .filter(|x| x.guests == n)
                            .map(|x| x.pss_sum_kib as f64 / 1024.0 / n as f64)
                            .collect();
                        Some((n as f64, stats::Stat::of(v)?.median))
                    })
                    .collect(),
            })
            .collect();
        return svg::chart_xy(
            &format!("{name}: marginal host PSS per guest by guest count"),
            "guests at once",
            "MiB per guest",
            &groups,
            &series,
        );
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
    svg::chart(
        &format!("{name}: qemu RSS over time"),
        "host RSS (MiB)",
        &groups,
        &series,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, text: &str) -> PathBuf {
        let p = dir.join("e.yaml");
        fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn guests_take_a_number_or_a_sweep() {
        let d = tempfile::tempdir().unwrap();
        let e = load(&write(
            d.path(),
            "name: x\nprofiles: [a]\nimages: { a: a.img }\nguests: [1, 8, 32]\nstart: clone\n",
        ))
        .unwrap();
        assert_eq!(e.guests.counts(), vec![1, 8, 32]);
        assert_eq!(e.start, Start::Clone);
        let e = load(&write(
            d.path(),
            "name: x\nprofiles: [a]\nimages: { a: a.img }\nguests: 4\n",
        ))
        .unwrap();
        assert_eq!(e.guests.counts(), vec![4]);
        assert_eq!(e.start, Start::Boot);
    }

    #[test]
    fn bad_files_name_the_field() {
        let d = tempfile::tempdir().unwrap();
        for (text, field) in [
            ("name: x\nprofiles: []\nimages: {}\n", "`profiles`"),
            (
                "name: x\nprofiles: [a]\nimages: { a: a.img }\nguests: [1, 0]\n",
                "`runs/guests`",
            ),
            ("name: x\nprofiles: [a]\n", "`build`"),
            (
                "name: x\nprofiles: [a]\nimages: { a: a.img }\nstart: clone\nsnapshot: false\n",
                "`start`",
            ),
            ("name: x\nprofiles: [a]\nimages: { b: a.img }\n", "`images`"),
        ] {
            let e = load(&write(d.path(), text)).unwrap_err();
            assert!(e.is_usage(), "{e}");
            assert!(e.to_string().contains(field), "{field}: {e}");
        }
        let e = load(&write(d.path(), "name: x\nprofiles: [a]\nstart: warp\n")).unwrap_err();
        assert!(e.to_string().contains("warp"), "{e}");
    }

    #[test]
    fn shared_ram_backends_are_not_mergeable() {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert!(ksm_mergeable(&v(&["-accel", "tcg,tb-size=8"])));
        assert!(!ksm_mergeable(&v(&[
            "-object",
            "memory-backend-memfd,id=mem,size=110M",
        ])));
        assert!(!ksm_mergeable(&v(&[
            "-object",
            "memory-backend-file,id=m,mem-path=/x,share=on",
        ])));
    }
}
