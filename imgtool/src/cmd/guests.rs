//! `imgtool demo`, `experiment`, `template` and `fleet`: parse, call the `fleet` crate, print.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;

use super::UsageError;

/// Bars and `imgtool: ...` notes on stderr.
pub struct CliUi;

impl fleet::host::Ui for CliUi {
    fn note(&self, msg: &str) {
        eprintln!("imgtool: {msg}");
    }
    fn kernel(&self) -> Box<dyn kernel_configs::Progress + '_> {
        Box::new(super::kernel::Bars::default())
    }
    fn rootfs(&self) -> &dyn rootfs::Progress {
        static BARS: super::rootfs::Bars = super::rootfs::Bars(Mutex::new(None));
        &BARS
    }
}

/// The loader (embedded in this binary, written to the cache) and the cache root.
pub fn host(ui: &dyn fleet::host::Ui) -> Result<fleet::host::Host<'_>> {
    Ok(fleet::host::Host {
        loader: super::loader::cached_path()?,
        cache: super::kernel::cache_root()?,
        ui,
    })
}

/// Input mistakes exit with 2.
pub fn fleet_err(e: fleet::Error) -> anyhow::Error {
    if e.is_usage() {
        UsageError(e.to_string()).into()
    } else {
        e.into()
    }
}

// ---------------------------------------------------------------------------------------------

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

pub fn run_demo(a: DemoArgs) -> Result<()> {
    fleet::preflight::demo(!a.no_boot).map_err(fleet_err)?;
    let host = host(&CliUi)?;
    let ph = fleet::pipeline::profile_host(&a.profile, &host.cache).map_err(fleet_err)?;
    let files = fleet::pipeline::demo_image(&a.out, &a.profile, &ph, &host).map_err(fleet_err)?;
    let (fw, img) = (files.firmware.display(), files.image.display());
    if a.no_boot {
        println!("wrote {fw} and {img}");
        return Ok(());
    }
    CliUi.note_str("demo: 5/5 boot and measure");
    let spec = fleet::measure::Spec {
        timeout: 240.0,
        memory: ph.memory.clone(),
        no_net: true,
        console: a.console,
        extra: ph.qemu.clone(),
        ..Default::default()
    };
    let r = fleet::measure::measure(&files.image, &spec, &host).map_err(fleet_err)?;
    print!("{}", fleet::measure::summary(&r));
    let rep = a.out.join("report.json");
    common::fs::write_atomic(&rep, r.to_json().as_bytes())?;
    println!("wrote {fw}, {img}, {}", rep.display());
    Ok(())
}

impl CliUi {
    fn note_str(&self, msg: &str) {
        fleet::host::Ui::note(self, msg);
    }
}

// ---------------------------------------------------------------------------------------------

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

pub fn run_experiment(a: ExperimentArgs) -> Result<()> {
    let host = host(&CliUi)?;
    let o = fleet::experiment::RunOptions {
        out: a.out,
        runs: a.runs,
        console: a.console,
    };
    let r = fleet::experiment::run(&a.file, &o, &host).map_err(fleet_err)?;
    println!("{}", r.table);
    println!("wrote {}/table.md, rss.svg, results.json", r.out.display());
    Ok(())
}

// ---------------------------------------------------------------------------------------------

#[derive(clap::Args)]
pub struct TemplateArgs {
    /// Disk image to boot (raw), e.g. special.img.
    image: PathBuf,
    /// The template directory (new or empty): ram, state, disk.qcow2, manifest.json.
    #[arg(short, long, value_name = "DIR")]
    output: PathBuf,
    /// Memory profile the image was built with: its qemu settings (-m, tb-size, balloon).
    #[arg(long, value_name = "NAME")]
    profile: Option<String>,
    /// Acceleration; clones must run under the same one.
    #[arg(long, default_value = "auto", value_parser = ["auto", "kvm", "hvf", "tcg"])]
    accel: String,
    /// Guest memory (qemu -m) when no profile says.
    #[arg(short = 'm', long = "memory", value_name = "SIZE")]
    memory: Option<String>,
    /// Give the template a virtio network device (`user`), so clones get a MAC and a port
    /// forward each; `none` for no network device.
    #[arg(long, default_value = "none", value_parser = ["none", "user"])]
    net: String,
    /// Readiness marker regex [default: the init's IMGTOOL-READY]. A marker of your own means
    /// a firmware with its own PID 1: the template then gets imgtool's helper console and is
    /// saved once the helper is ready too (a firmware from `imgtool fw tune`).
    #[arg(long, value_name = "REGEX")]
    marker: Option<String>,
    /// Seconds from spawn to readiness, at most.
    #[arg(long, default_value_t = 240.0)]
    timeout: f64,
    /// Seconds between readiness and the save (the init's after-ready knobs, an idle guest).
    #[arg(long, default_value_t = 2.0)]
    settle: f64,
    /// Copy the guest's console to stderr.
    #[arg(long)]
    console: bool,
    /// Print the manifest as JSON.
    #[arg(long)]
    json: bool,
    /// Extra qemu arguments, after `--`.
    #[arg(last = true, value_name = "QEMU_ARGS")]
    extra: Vec<String>,
}

pub fn run_template(a: TemplateArgs) -> Result<()> {
    let host = host(&CliUi)?;
    let (memory, mut extra, label) = match &a.profile {
        Some(p) => {
            let ph = fleet::pipeline::profile_host(p, &host.cache).map_err(fleet_err)?;
            (ph.memory, ph.qemu, p.clone())
        }
        None => ("128M".to_string(), Vec::new(), String::new()),
    };
    extra.extend(a.extra.iter().cloned());
    let spec = fleet::measure::Spec {
        marker: a.marker,
        timeout: a.timeout,
        settle: a.settle,
        memory: a.memory.unwrap_or(memory),
        accel: a.accel,
        no_net: a.net == "none",
        console: a.console,
        extra,
        ..Default::default()
    };
    let spin = indicatif::ProgressBar::new_spinner()
        .with_message(format!("booting {} to readiness", a.image.display()));
    spin.enable_steady_tick(Duration::from_millis(120));
    let m = fleet::fleet::save_template(&a.image, &a.output, &spec, &label, &host);
    spin.finish_and_clear();
    let m = m.map_err(fleet_err)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&m)?);
    } else {
        println!(
            "template {}: ready after {:.2} s, saved in {:.2} s ({} KiB of device state; {} of RAM in {}/ram), {} accel, qemu `{}`",
            a.output.display(),
            m.boot_s,
            m.save_s,
            m.state_bytes / 1024,
            m.memory,
            a.output.display(),
            m.accel,
            m.qemu_version
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------

#[derive(clap::Subcommand)]
pub enum FleetCommand {
    /// Start N clones of a template (a template directory, or a raw image to save one from
    /// first; or N cold boots of an image with --cold), check them, hold them, stop them,
    /// report.
    Run(FleetArgs),
}

#[derive(clap::Args)]
pub struct FleetArgs {
    /// A template directory from `imgtool template`, or a raw disk image: booted once to
    /// readiness and saved as this run's template (a firmware with its own PID 1 needs
    /// `--marker` and imgtool's helper from `imgtool fw tune`). Or --cold IMAGE instead.
    #[arg(value_name = "TEMPLATE|IMAGE")]
    template: Option<PathBuf>,
    /// Boot every clone cold from its own overlay over this raw disk image, with its own
    /// `nerves_serial_number` in the overlay's U-Boot env before it boots: for firmware that
    /// does not run imgtool's init.
    #[arg(long, value_name = "IMAGE")]
    cold: Option<PathBuf>,
    /// IMAGE or --cold: the firmware is up at the first whole console line matching this
    /// regex (a template is saved then; a cold clone counts as up) [default: imgtool init's
    /// IMGTOOL-READY].
    #[arg(long, value_name = "REGEX")]
    marker: Option<String>,
    /// IMAGE or --cold: memory profile whose qemu settings (-m, tb-size, balloon) the clones
    /// run with [default: -m 128M].
    #[arg(long, value_name = "NAME")]
    profile: Option<String>,
    /// How many clones.
    #[arg(long, default_value_t = 8)]
    count: u32,
    /// Clones starting at once [default: the host's CPU count: a restore is CPU-bound, so more
    /// at once only makes each one slower].
    #[arg(long)]
    parallel: Option<u32>,
    /// Seconds to hold the clones once all answered (Ctrl-C ends it early).
    #[arg(long, default_value_t = 0.0)]
    hold: f64,
    /// Seconds between status lines while holding.
    #[arg(long, default_value_t = 60.0)]
    interval: f64,
    /// Serial numbers: this plus a 4-digit index.
    #[arg(long, default_value = "imgtool-")]
    serial_prefix: String,
    /// `user`: user-mode networking, host port `--port-base + index` forwarded to the guest's
    /// `--guest-port` (the template needs `--net user`).
    #[arg(long, default_value = "none", value_parser = ["none", "user"])]
    net: String,
    #[arg(long, default_value_t = 20000)]
    port_base: u16,
    /// The guest's port behind each forward [default: where the beam-guest init answers with
    /// the clone's identity].
    #[arg(long, default_value_t = guest_protocol::IDENTITY_PORT)]
    guest_port: u16,
    /// Seconds from a clone's spawn to its identity answer (or, --cold, its marker line), at
    /// most [default: 60; 240 with --cold: a cold boot takes seconds under TCG, more when
    /// several share a core].
    #[arg(long, value_name = "S")]
    answer_timeout: Option<f64>,
    #[arg(long, default_value = "auto", value_parser = ["auto", "kvm", "hvf", "tcg"])]
    accel: String,
    /// Copy the consoles to stderr.
    #[arg(long)]
    console: bool,
    /// Keep each clone's disk overlay (`clone-NNNN.qcow2`), QMP socket and console log
    /// (`clone-NNNN.console`; `clone-NNNN.helper` for imgtool's helper console), and a
    /// template saved from an IMAGE (`template/`), in DIR, for debugging [default: a
    /// temporary directory].
    #[arg(long, value_name = "DIR")]
    run_dir: Option<PathBuf>,
    /// Merge the clones' identical pages with the host's KSM: `auto` when this host allows it
    /// (root, Linux 6.4+), `on` requires it, `off` leaves the host's KSM alone. While on, the
    /// clones' qemu runs without address-space randomisation so that their pages match.
    #[arg(long, default_value = "auto", value_parser = ["auto", "on", "off"])]
    ksm: String,
    /// Write the report as JSON here.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

fn secs(name: &str, v: f64) -> Result<Duration> {
    if !(v.is_finite() && v >= 0.0) {
        return Err(UsageError(format!("--{name} {v}: give a number of seconds")).into());
    }
    Ok(Duration::from_secs_f64(v))
}

/// A template directory, an image to save a template from, or `--cold IMAGE`: exactly one.
enum Source {
    Template(PathBuf),
    Image(PathBuf, fleet::fleet::ImageTemplate),
    Cold(PathBuf, fleet::fleet::ColdOptions),
}

fn source(a: &mut FleetArgs) -> Result<Source> {
    let cold_only = |flag: &str| {
        UsageError(format!(
            "{flag} applies to an IMAGE or --cold IMAGE only: a saved template's clones run \
             with the template's own readiness and qemu settings"
        ))
    };
    match (a.template.take(), a.cold.take()) {
        (Some(t), Some(i)) => Err(UsageError(format!(
            "give a template directory ({}) or --cold {}, not both: --cold boots the image \
             itself, without a template",
            t.display(),
            i.display()
        ))
        .into()),
        (None, None) => Err(UsageError(
            "give a template directory (from `imgtool template`), or --cold IMAGE to boot a \
             raw disk image cold"
                .into(),
        )
        .into()),
        (Some(i), None) if i.is_file() => Ok(Source::Image(
            i,
            fleet::fleet::ImageTemplate {
                marker: a.marker.take(),
                profile: a.profile.take(),
                ..Default::default()
            },
        )),
        (Some(_), None) if a.marker.is_some() => Err(cold_only("--marker").into()),
        (Some(_), None) if a.profile.is_some() => Err(cold_only("--profile").into()),
        (Some(t), None) => Ok(Source::Template(t)),
        (None, Some(i)) => Ok(Source::Cold(
            i,
            fleet::fleet::ColdOptions {
                marker: a.marker.take(),
                profile: a.profile.take(),
            },
        )),
    }
}

pub fn run_fleet(c: FleetCommand) -> Result<()> {
    let FleetCommand::Run(mut a) = c;
    let src = source(&mut a)?;
    let answer_timeout = a.answer_timeout.unwrap_or(match src {
        Source::Template(_) | Source::Image(..) => 60.0,
        Source::Cold(..) => 240.0,
    });
    let host = host(&CliUi)?;
    let interrupt = Arc::new(AtomicBool::new(false));
    {
        let i = interrupt.clone();
        // Ctrl-C, SIGTERM or SIGHUP ends the hold; a second one while stopping is ignored:
        // the clones are being stopped already.
        ctrlc::set_handler(move || i.store(true, Ordering::SeqCst))
            .map_err(|e| anyhow::anyhow!("installing the Ctrl-C handler: {e}"))?;
    }
    let o = fleet::fleet::FleetOptions {
        count: a.count,
        parallel: a.parallel.unwrap_or_else(fleet::fleet::default_parallel),
        hold: secs("hold", a.hold)?,
        interval: secs("interval", a.interval)?.max(Duration::from_secs(1)),
        serial_prefix: a.serial_prefix,
        net_user: a.net == "user",
        port_base: a.port_base,
        guest_port: a.guest_port,
        answer_timeout: secs("answer-timeout", answer_timeout)?,
        accel: a.accel,
        console: a.console,
        interrupt: interrupt.clone(),
        run_dir: a.run_dir,
        ksm: a.ksm.parse().map_err(UsageError)?,
    };
    let bar = indicatif::ProgressBar::new(u64::from(a.count)).with_style(
        indicatif::ProgressStyle::with_template("{spinner} clones up {pos}/{len} {msg} {elapsed}")
            .expect("static template"),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    let mut first = true;
    let mut on_event = |e: fleet::fleet::Event| match e {
        fleet::fleet::Event::Progress { up, failed, .. } => {
            bar.set_position(u64::from(up));
            if failed > 0 {
                bar.set_message(format!("({failed} failed)"));
            }
        }
        fleet::fleet::Event::Status(s) => {
            if first {
                bar.finish_and_clear();
                first = false;
            }
            eprintln!(
                "imgtool: fleet t={:.0}s alive {} | host MemAvailable {:.0} MiB | PSS sum {:.1} MiB | CPU {:.3} % of a core per guest",
                s.t_s,
                s.alive,
                s.available_kib as f64 / 1024.0,
                s.pss_sum_kib as f64 / 1024.0,
                s.cpu_pct_per_guest
            );
        }
    };
    if let Source::Image(image, _) = &src {
        CliUi.note_str(&format!(
            "booting {} to readiness to save this run's template",
            image.display()
        ));
    }
    let r = match &src {
        Source::Template(t) => fleet::fleet::run(t, &o, &host, &mut on_event),
        Source::Image(image, t) => fleet::fleet::run_image(image, t, &o, &host, &mut on_event),
        Source::Cold(image, c) => fleet::fleet::run_cold(image, c, &o, &host, &mut on_event),
    };
    bar.finish_and_clear();
    let r = r.map_err(fleet_err)?;
    print!("{}", fleet::fleet::table(&r));
    if let Some(p) = &a.json {
        common::fs::write_atomic(p, serde_json::to_string_pretty(&r)?.as_bytes())?;
    }
    if r.failed > 0 {
        anyhow::bail!("{} of {} clones failed (see above)", r.failed, r.count);
    }
    Ok(())
}
