//! Fleets: many guests from one image, each with its own disk overlay and identity, held,
//! measured, and stopped so that no qemu outlives the run. Two ways to start a clone, one engine
//! ([`engine`]) for the rest:
//!
//! - [`run`]: clones of a saved template, restored from its state and given their identity
//!   (serial, hostname, MAC, fresh entropy) over imgtool init's console protocol, then pinged;
//!   a firmware with its own PID 1 (erlinit) speaks that protocol through imgtool's helper
//!   (`imgtool fw tune`) on a second console, so its clones take their identity there.
//!   [`run_image`] saves the template from a raw image first;
//! - [`run_cold`]: cold boots of a raw image, each clone's serial written into its own
//!   overlay's U-Boot env before it boots ([`coldenv`]), up at a console marker: for firmware
//!   that does not run imgtool's init.

mod coldenv;
mod engine;

use std::fs;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use guest_protocol::Identity;
use qemu::template::{self, CloneSpec, Manifest};
use regex::Regex;
use serde::Serialize;
use validate::{procmem, Accel};

use crate::host::Host;
use crate::ksm::{self, Ksm, KsmMode};
use crate::measure::Spec;
use crate::{Error, Result};
use engine::{BringUp, Launch, Origin, Slot, Source};

pub use coldenv::SERIAL_VAR;

/// Boot `image` to readiness and save a template in `dir`; the qemu arguments and readiness
/// marker are `validate`'s (from `spec`). A marker of the user's own means a firmware with its
/// own PID 1: the template gets imgtool's helper console and is saved once the helper is ready
/// too (refused when the firmware has no helper).
pub fn save_template(
    image: &Path,
    dir: &Path,
    spec: &Spec,
    profile: &str,
    host: &Host,
) -> Result<Manifest> {
    let accel = match spec.accel.as_str() {
        "auto" => qemu::detect_accel(&host.loader, &host.kvm_probe_cache())?,
        "kvm" => Accel::Kvm,
        "hvf" => Accel::Hvf,
        "tcg" => Accel::Tcg,
        a => {
            return Err(Error::Usage(format!(
                "unknown accelerator {a:?}: use auto, kvm, hvf or tcg"
            )))
        }
    };
    let marker = match &spec.marker {
        Some(m) => Regex::new(m).map_err(|e| Error::Usage(format!("--marker {m:?}: {e}")))?,
        None => Regex::new(validate::DEFAULT_MARKER).expect("valid"),
    };
    let firmware = spec
        .marker
        .as_deref()
        .is_some_and(|m| m != validate::DEFAULT_MARKER);
    let helper_ready = firmware.then(|| Regex::new(guest_protocol::READY_REGEX).expect("valid"));
    Ok(template::save(template::SaveOptions {
        image,
        dir,
        memory: &spec.memory,
        net: !spec.no_net,
        accel,
        extra: &spec.extra,
        loader: &host.loader,
        profile: Some(profile.to_string()),
        marker,
        timeout: Duration::from_secs_f64(spec.timeout),
        settle: Duration::from_secs_f64(spec.settle),
        console_copy: if spec.console {
            Some(Box::new(std::io::stderr()))
        } else {
            None
        },
        helper_ready,
    })?)
}

#[derive(Clone, Debug)]
pub struct FleetOptions {
    pub count: u32,
    /// Clones starting (spawned, not yet answering) at once.
    pub parallel: u32,
    /// How long the clones are held once all answered.
    pub hold: Duration,
    /// A status line every this often while holding.
    pub interval: Duration,
    /// Serial numbers are this plus the clone's index (`sim-0017`).
    pub serial_prefix: String,
    /// User-mode networking with a host port forward per clone (needs a template with a
    /// network device): host port `port_base + index` → guest `guest_port`.
    pub net_user: bool,
    pub port_base: u16,
    pub guest_port: u16,
    /// Spawn to identity answer (template clones) or marker line (cold clones), at most.
    pub answer_timeout: Duration,
    /// auto, kvm, hvf, tcg: must resolve to the template's accelerator.
    pub accel: String,
    pub console: bool,
    /// Set from outside (Ctrl-C) to end the hold early.
    pub interrupt: Arc<AtomicBool>,
    /// Where the clones' overlays, QMP sockets and console logs go, kept after the run
    /// [default: a new directory beside the template, removed after the run, and no logs].
    pub run_dir: Option<PathBuf>,
    /// Merge the clones' identical pages with the host's KSM (see [`crate::ksm`]).
    pub ksm: KsmMode,
}

impl Default for FleetOptions {
    fn default() -> Self {
        FleetOptions {
            count: 1,
            parallel: default_parallel(),
            hold: Duration::from_secs(0),
            interval: Duration::from_secs(60),
            serial_prefix: "imgtool-".into(),
            net_user: false,
            port_base: 20000,
            guest_port: guest_protocol::IDENTITY_PORT,
            answer_timeout: Duration::from_secs(60),
            accel: "auto".into(),
            console: false,
            interrupt: Arc::new(AtomicBool::new(false)),
            run_dir: None,
            ksm: KsmMode::Auto,
        }
    }
}

#[derive(Clone, Debug, Serialize, Default)]
pub struct Percentiles {
    pub p50: Option<f64>,
    pub p95: Option<f64>,
    pub p99: Option<f64>,
    pub max: Option<f64>,
}

impl Percentiles {
    pub fn of(mut v: Vec<f64>) -> Percentiles {
        if v.is_empty() {
            return Percentiles::default();
        }
        v.sort_by(f64::total_cmp);
        // Nearest rank.
        let at = |p: f64| {
            let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
            v[rank.min(v.len()) - 1]
        };
        Percentiles {
            p50: Some(at(50.0)),
            p95: Some(at(95.0)),
            p99: Some(at(99.0)),
            max: v.last().copied(),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Memory {
    /// Summed PSS of every live clone's qemu at the end of the hold.
    pub pss_sum_kib: u64,
    pub marginal_pss_mib: f64,
    /// Host MemAvailable before the first clone started and at the end of the hold.
    pub available_before_kib: u64,
    pub available_after_kib: u64,
    pub available_drop_kib: u64,
    pub marginal_available_mib: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Cpu {
    /// CPU time of all clones, and of ksmd when KSM is on, over the last measuring window, as %
    /// of one core, per guest.
    pub idle_pct_per_guest: f64,
    /// ksmd's own share of that window, as % of one core (all guests together).
    pub ksmd_pct: Option<f64>,
    pub window_s: f64,
}

/// What KSM did during the run.
#[derive(Clone, Debug, Serialize)]
pub struct KsmReport {
    pub mode: KsmMode,
    /// Whether the clones really ran mergeable with KSM on.
    pub on: bool,
    /// Why not, when `auto` found it unavailable.
    pub unavailable: Option<String>,
    /// /sys/kernel/mm/ksm/pages_sharing at the end of the hold (pages saved by merging).
    pub pages_sharing: Option<u64>,
    /// /sys/kernel/mm/ksm/pages_to_scan: how fast ksmd was allowed to work (per 20 ms wake-up
    /// at the default sleep).
    pub pages_to_scan: Option<u64>,
}

/// One status line while holding.
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    pub t_s: f64,
    pub alive: u32,
    pub available_kib: u64,
    pub pss_sum_kib: u64,
    pub cpu_pct_per_guest: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct GuestReport {
    pub index: u32,
    /// The clone's serial number: given over the console (template clones) or in its disk's
    /// U-Boot env before boot (cold clones).
    pub serial: String,
    /// Set by the init (template clones); a cold clone's firmware names itself.
    pub hostname: Option<String>,
    pub mac: Option<String>,
    /// Host port forwarded to the guest (user-mode networking).
    pub port: Option<u16>,
    /// Hex the guest read from its RNG after taking its identity (template clones).
    pub random: Option<String>,
    /// The whole console line that matched the marker (cold clones): what the firmware said
    /// when it came up, e.g. the serial it read.
    pub marker_line: Option<String>,
    /// Clones of a firmware's template (identity through imgtool's helper): the first whole
    /// line the firmware printed on its console after the identity answer that names the
    /// clone's serial, e.g. the application saying which serial it read from the env.
    pub serial_line: Option<String>,
    /// Spawn to that line: how long the clone's application took to take its identity.
    pub serial_line_s: Option<f64>,
    /// Spawn to the identity answer (template clones) or the marker line (cold clones).
    pub spawn_s: Option<f64>,
    /// `ready` (up and alive to the end), `failed` (never up), `died` (up, then its qemu
    /// ended before the run did).
    pub state: String,
    pub error: Option<String>,
    /// The last console lines of a clone that failed or died.
    pub console: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// `restore` (clones of a template) or `cold` (cold boots of an image).
    pub start: String,
    /// The template directory (restore).
    pub template: Option<String>,
    /// The raw image under every clone's overlay.
    pub image: String,
    /// The readiness regex (cold, and a template saved by this run).
    pub marker: Option<String>,
    /// Clones take their identity from imgtool's helper on a second console (a firmware with
    /// its own PID 1), not from imgtool's init on the serial console.
    pub helper: bool,
    /// Spawn to the marker (and helper ready) of the template this run saved from the image,
    /// and the save itself.
    pub template_boot_s: Option<f64>,
    pub template_save_s: Option<f64>,
    pub count: u32,
    pub ready: u32,
    pub failed: u32,
    pub accel: String,
    pub spawn_s: Percentiles,
    /// First spawn to the last clone up.
    pub all_ready_s: f64,
    pub hold_s: f64,
    pub memory: Memory,
    pub cpu: Cpu,
    pub ksm: KsmReport,
    pub interrupted: bool,
    pub status: Vec<Status>,
    pub guests: Vec<GuestReport>,
}

/// Clones starting at once by default: one per host CPU. A restore is CPU-bound under TCG, so
/// more at once only makes each clone slower to answer without bringing the last one sooner.
pub fn default_parallel() -> u32 {
    std::thread::available_parallelism().map_or(2, |n| n.get() as u32)
}

/// Host MemAvailable in KiB.
pub fn mem_available_kib() -> u64 {
    fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            procmem::kb_fields(&t)
                .find(|(k, _)| *k == "MemAvailable")
                .map(|(_, v)| v)
        })
        .unwrap_or(0)
}

/// utime + stime of a process, in clock ticks.
pub(crate) fn cpu_ticks(pid: u32) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces: fields start after its closing parenthesis.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

fn ticks_per_s() -> f64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

fn random_bytes(n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    if let Ok(mut f) = fs::File::open("/dev/urandom") {
        let _ = f.read_exact(&mut b);
    }
    b
}

/// A locally unique MAC per clone index, in qemu's 52:54:00 range.
pub fn clone_mac(index: u32) -> String {
    let i = index + 1;
    format!(
        "52:54:00:{:02x}:{:02x}:{:02x}",
        (i >> 16) & 0xff,
        (i >> 8) & 0xff,
        i & 0xff
    )
}

/// What the caller hears while a fleet runs.
#[derive(Clone, Copy, Debug)]
pub enum Event<'a> {
    /// A clone came up or failed: how many so far, of `count`.
    Progress { up: u32, failed: u32, count: u32 },
    /// A status line: once when the clones are up, then each `interval` while holding.
    Status(&'a Status),
}

/// Start, check, hold and stop `o.count` clones of the template in `dir`.
pub fn run(
    dir: &Path,
    o: &FleetOptions,
    host: &Host,
    on_event: &mut dyn FnMut(Event),
) -> Result<Report> {
    check_options(o)?;
    run_template(dir, None, o, host, on_event)
}

/// How [`run_image`] saves its template.
#[derive(Clone, Debug)]
pub struct ImageTemplate {
    /// The firmware's ready line (a regex on whole console lines) [default: imgtool init's
    /// IMGTOOL-READY, for imgtool's own images].
    pub marker: Option<String>,
    /// Memory profile whose qemu settings (-m, tb-size, balloon) the template and its clones
    /// run with [default: -m 128M].
    pub profile: Option<String>,
    /// Spawn to the marker, at most (seconds).
    pub timeout: f64,
    /// Between readiness and the save (seconds).
    pub settle: f64,
}

impl Default for ImageTemplate {
    fn default() -> Self {
        ImageTemplate {
            marker: None,
            profile: None,
            timeout: 240.0,
            settle: 2.0,
        }
    }
}

/// Boot the raw `image` once to readiness, save it as a template (under `--run-dir`, else in a
/// directory of this run beside the image, removed after it), then run `o.count` clones of it
/// as [`run`] does. For a firmware with its own PID 1 (`t.marker` given), the firmware must
/// carry imgtool's helper (`imgtool fw tune`): its clones take their identity from it.
pub fn run_image(
    image: &Path,
    t: &ImageTemplate,
    o: &FleetOptions,
    host: &Host,
    on_event: &mut dyn FnMut(Event),
) -> Result<Report> {
    check_options(o)?;
    if let Some(m) = &t.marker {
        Regex::new(m).map_err(|e| {
            Error::Usage(format!("--marker {m:?} is not a regular expression: {e}"))
        })?;
    }
    let image = raw_image(image, "fleet run")?;
    let (memory, extra, label) = match &t.profile {
        Some(p) => {
            let ph = crate::pipeline::profile_host(p, &host.cache)?;
            (ph.memory, ph.qemu, p.clone())
        }
        None => ("128M".to_string(), Vec::new(), String::new()),
    };
    let spec = Spec {
        marker: t.marker.clone(),
        timeout: t.timeout,
        settle: t.settle,
        memory,
        accel: o.accel.clone(),
        no_net: !o.net_user,
        console: o.console,
        extra,
        ..Default::default()
    };
    let (dir, _gone) = match &o.run_dir {
        Some(d) => (d.join("template"), None),
        None => {
            let d = image
                .parent()
                .unwrap_or(Path::new("/"))
                .join(format!("imgtool-template-{}", std::process::id()));
            (d.clone(), Some(RunDir(d, true)))
        }
    };
    let m = save_template(&image, &dir, &spec, &label, host)?;
    let saved = Saved {
        boot_s: m.boot_s,
        save_s: m.save_s,
        marker: t.marker.clone(),
    };
    run_template(&dir, Some(saved), o, host, on_event)
}

/// A template [`run_image`] saved for its run.
struct Saved {
    boot_s: f64,
    save_s: f64,
    marker: Option<String>,
}

fn run_template(
    dir: &Path,
    saved: Option<Saved>,
    o: &FleetOptions,
    host: &Host,
    on_event: &mut dyn FnMut(Event),
) -> Result<Report> {
    let accel = resolve_accel(&o.accel, host)?;
    let m = match saved {
        Some(_) => template::open_just_saved(dir, accel)?,
        None => template::open(dir, accel)?,
    };
    if o.net_user && !m.net {
        return Err(Error::Usage(format!(
            "--net user: template {} has no network device; make it with `imgtool template --net user`",
            dir.display()
        )));
    }
    let dir = std::path::absolute(dir).map_err(|e| Error::io(dir.display(), e))?;
    let run_dir = match &o.run_dir {
        Some(d) => RunDir::kept(d)?,
        None => RunDir::temporary(dir.join(format!("run-{}", std::process::id())))?,
    };
    // QMP sockets live under a short path: a unix socket's path has at most 107 bytes. A kept
    // run directory holds them when its path is short enough.
    let (qmp_dir, _qmp_dir_gone) = if o.run_dir.is_some()
        && run_dir.0.join("clone-0000.qmp").as_os_str().len() < 100
    {
        (run_dir.0.clone(), None)
    } else {
        let d = std::env::temp_dir().join(format!("imgtool-qmp-{}", std::process::id()));
        fs::create_dir_all(&d).map_err(|e| Error::io(format!("creating {}", d.display()), e))?;
        (d.clone(), Some(RunDir(d, true)))
    };
    let src = Restore {
        disk: dir.join(template::DISK_FILE),
        dir: &dir,
        m: &m,
        qmp_dir,
        keep_socket: o.run_dir.is_some(),
    };
    let origin = Origin {
        start: "restore",
        template: Some(dir.display().to_string()),
        image: m.image.clone(),
        marker: saved.as_ref().and_then(|s| s.marker.clone()),
        helper: m.helper,
        saved: saved.map(|s| (s.boot_s, s.save_s)),
        accel,
    };
    with_ksm(o, |ksm| {
        engine::run(&src, origin, &run_dir.0, o, ksm, on_event)
    })
}

/// What a cold fleet boots, beyond the [`FleetOptions`].
#[derive(Clone, Debug, Default)]
pub struct ColdOptions {
    /// Readiness: a whole console line matching this regex [default: imgtool init's
    /// IMGTOOL-READY].
    pub marker: Option<String>,
    /// Memory profile whose qemu settings (-m, tb-size, balloon) the clones run with.
    pub profile: Option<String>,
}

/// Boot `o.count` clones of the raw `image` cold, each from its own qcow2 overlay whose U-Boot
/// env already holds the clone's own `nerves_serial_number`; up at the marker; then held,
/// measured and stopped as template clones are. Works for firmware that knows nothing of
/// imgtool: nothing is asked of the guest.
pub fn run_cold(
    image: &Path,
    c: &ColdOptions,
    o: &FleetOptions,
    host: &Host,
    on_event: &mut dyn FnMut(Event),
) -> Result<Report> {
    check_options(o)?;
    let marker_text = c
        .marker
        .clone()
        .unwrap_or_else(|| validate::DEFAULT_MARKER.to_string());
    let marker = Regex::new(&marker_text).map_err(|e| {
        Error::Usage(format!(
            "--marker {marker_text:?} is not a regular expression: {e}"
        ))
    })?;
    let image = raw_image(image, "--cold")?;
    let env = coldenv::ColdEnv::read(&image)?;
    let (memory, extra) = match &c.profile {
        Some(p) => {
            let ph = crate::pipeline::profile_host(p, &host.cache)?;
            (ph.memory, ph.qemu)
        }
        None => ("128M".to_string(), Vec::new()),
    };
    let accel = resolve_accel(&o.accel, host)?;
    let vm = qemu::Vm {
        image: image.clone(),
        memory,
        no_net: !o.net_user,
        extra,
        // Each clone boots its own qcow2 overlay (clone_argv): the image stays as it is.
        snapshot: false,
    };
    let src = Cold {
        argv: qemu::argv_with_format(&vm, &host.loader, accel, "qcow2"),
        image: &image,
        env,
        marker,
        net: o.net_user,
    };
    let run_dir = match &o.run_dir {
        Some(d) => RunDir::kept(d)?,
        // Beside the image, as a template's run sits beside the template.
        None => RunDir::temporary(
            image
                .parent()
                .unwrap_or(Path::new("/"))
                .join(format!("imgtool-fleet-{}", std::process::id())),
        )?,
    };
    let origin = Origin {
        start: "cold",
        template: None,
        image: image.display().to_string(),
        marker: Some(marker_text),
        helper: false,
        saved: None,
        accel,
    };
    with_ksm(o, |ksm| {
        engine::run(&src, origin, &run_dir.0, o, ksm, on_event)
    })
}

/// Counts and the serial prefix, checked before anything starts.
fn check_options(o: &FleetOptions) -> Result<()> {
    for (flag, v) in [("count", o.count), ("parallel", o.parallel)] {
        if v == 0 {
            return Err(Error::Usage(format!("--{flag} 0: give 1 or more")));
        }
    }
    if !o.serial_prefix.is_empty() && !guest_protocol::is_identity_word(&o.serial_prefix) {
        return Err(Error::Usage(format!(
            "--serial-prefix {:?}: use letters, digits, `-`, `_` and `.` only (up to 64)",
            o.serial_prefix
        )));
    }
    if o.net_user && u32::from(o.port_base) + o.count > 65536 {
        return Err(Error::Usage(format!(
            "--port-base {} + --count {} passes port 65535",
            o.port_base, o.count
        )));
    }
    Ok(())
}

fn resolve_accel(name: &str, host: &Host) -> Result<Accel> {
    Ok(match name {
        "auto" => qemu::detect_accel(&host.loader, &host.kvm_probe_cache())?,
        "kvm" => Accel::Kvm,
        "hvf" => Accel::Hvf,
        "tcg" => Accel::Tcg,
        a => {
            return Err(Error::Usage(format!(
                "unknown accelerator {a:?}: use auto, kvm, hvf or tcg"
            )))
        }
    })
}

/// The raw image a cold fleet (or a template of this run) boots, absolute (the overlays name it
/// as their backing file); `how` names the argument in messages.
fn raw_image(image: &Path, how: &str) -> Result<PathBuf> {
    let bad = |why: String| {
        Error::Usage(format!(
            "{how} {}: {why}; give the raw disk image to boot (e.g. special.img from \
             `imgtool fwup -a -i app.fw -d special.img -t complete`)",
            image.display()
        ))
    };
    let meta = fs::metadata(image).map_err(|e| bad(e.to_string()))?;
    if !meta.is_file() {
        return Err(bad("not a file".into()));
    }
    let mut magic = [0u8; 4];
    let n = fs::File::open(image)
        .and_then(|mut f| f.read(&mut magic))
        .map_err(|e| bad(e.to_string()))?;
    // The overlays read the image as raw: a qcow2 would boot as garbage.
    if n == 4 && &magic == b"QFI\xfb" {
        return Err(bad(format!(
            "a qcow2 image, not a raw one (convert it: qemu-img convert -O raw {} special.img)",
            image.display()
        )));
    }
    std::path::absolute(image).map_err(|e| Error::io(image.display(), e))
}

/// Turn KSM on for `f` as `o.ksm` asks (restoring the host's setting after), and say what it
/// did.
fn with_ksm<T>(o: &FleetOptions, f: impl FnOnce(KsmReport) -> Result<T>) -> Result<T> {
    let (ksm_on, unavailable) = match o.ksm {
        KsmMode::Off => (None, None),
        mode => {
            let on = if ksm::process_merge_supported() {
                Ksm::on()
            } else {
                Err("this kernel lacks PR_SET_MEMORY_MERGE (Linux 6.4 or later)".to_string())
            };
            match on {
                Ok(k) => (Some(k), None),
                Err(why) if mode == KsmMode::On => {
                    return Err(Error::Usage(format!(
                        "--ksm on: KSM is unavailable: {why}; run as root on a kernel with KSM, \
                         or use --ksm off"
                    )));
                }
                Err(why) => {
                    tracing::warn!(
                        "KSM is unavailable ({why}): clones will not share pages (--ksm off \
                         silences this)"
                    );
                    (None, Some(why))
                }
            }
        }
    };
    let state = KsmReport {
        mode: o.ksm,
        on: ksm_on.is_some(),
        unavailable,
        pages_sharing: None,
        pages_to_scan: None,
    };
    let r = f(state);
    drop(ksm_on);
    r
}

/// The clones' overlays, QMP sockets and logs: a kept `--run-dir`, or a directory of this run
/// removed when it ends.
struct RunDir(PathBuf, bool);

impl RunDir {
    fn kept(d: &Path) -> Result<RunDir> {
        fs::create_dir_all(d).map_err(|e| Error::io(format!("creating {}", d.display()), e))?;
        Ok(RunDir(d.to_path_buf(), false))
    }

    fn temporary(d: PathBuf) -> Result<RunDir> {
        fs::create_dir_all(&d).map_err(|e| Error::io(format!("creating {}", d.display()), e))?;
        Ok(RunDir(d, true))
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if self.1 {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}

/// Clones of a saved template: restored through QMP, given their identity on the console.
struct Restore<'a> {
    disk: PathBuf,
    dir: &'a Path,
    m: &'a Manifest,
    qmp_dir: PathBuf,
    keep_socket: bool,
}

impl Source for Restore<'_> {
    fn backing(&self) -> (&Path, &'static str) {
        (&self.disk, "qcow2")
    }

    fn net(&self) -> bool {
        self.m.net
    }

    fn launch(&self, s: &Slot) -> Launch {
        let qmp = self.qmp_dir.join(format!("clone-{:04}.qmp", s.index));
        let helper = self
            .m
            .helper
            .then(|| self.qmp_dir.join(format!("clone-{:04}.hlp", s.index)));
        let spec = CloneSpec {
            qmp: &qmp,
            disk: &s.disk,
            mac: s.mac.as_deref(),
            hostfwd: s.hostfwd.clone(),
            helper: helper.as_deref(),
        };
        let identity = Identity {
            hostname: s.serial.clone(),
            serial: s.serial.clone(),
            mac: s.mac.clone(),
            entropy: random_bytes(32),
        };
        Launch {
            argv: template::restore_argv(self.dir, self.m, &spec),
            hostname: Some(identity.hostname.clone()),
            bring_up: BringUp::Restore {
                qmp,
                state: self.dir.join(template::STATE_FILE),
                keep_socket: self.keep_socket,
                identity: identity.to_line(),
                helper: helper.map(|h| (h, s.serial.clone())),
            },
        }
    }

    fn pings(&self) -> bool {
        true
    }

    fn waiting_for(&self) -> String {
        if self.m.helper {
            "identity answer from imgtool's helper".into()
        } else {
            "identity answer".into()
        }
    }
}

/// Cold boots of a raw image, each clone's serial in its own overlay's env.
struct Cold<'a> {
    argv: Vec<String>,
    image: &'a Path,
    env: coldenv::ColdEnv,
    marker: Regex,
    net: bool,
}

impl Source for Cold<'_> {
    fn backing(&self) -> (&Path, &'static str) {
        (self.image, "raw")
    }

    fn net(&self) -> bool {
        self.net
    }

    fn prepare(&self, s: &Slot, scratch: &Path) -> Result<()> {
        self.env.write(&s.disk, &s.serial, scratch)
    }

    fn launch(&self, s: &Slot) -> Launch {
        Launch {
            argv: template::clone_argv(&self.argv, &s.disk, s.mac.as_deref(), &s.hostfwd),
            hostname: None,
            bring_up: BringUp::Marker(self.marker.clone()),
        }
    }

    // A firmware of someone else's speaks no protocol: alive means its qemu still runs.
    fn pings(&self) -> bool {
        false
    }

    fn waiting_for(&self) -> String {
        format!("console line matching /{}/", self.marker)
    }
}

const MARKER_LINES_SHOWN: usize = 8;

/// The report as a table for people.
pub fn table(r: &Report) -> String {
    let f = |v: Option<f64>| v.map_or("-".into(), |x| format!("{x:.3}"));
    let mut t = format!(
        "| clones of | accel | clones | ready | failed | spawn-to-up p50 / p95 / max (s) | all up (s) | marginal PSS / guest (MiB) | MemAvailable drop / guest (MiB) | guests per GiB | CPU / guest (% of a core) | KSM |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|\n| {} | {} | {} | {} | {} | {} / {} / {} | {:.2} | {:.1} | {:.1} | {:.0} | {:.3} | {} |\n",
        match &r.template {
            Some(t) => t.clone(),
            None => format!("{} (cold)", r.image),
        },
        r.accel,
        r.count,
        r.ready,
        r.failed,
        f(r.spawn_s.p50),
        f(r.spawn_s.p95),
        f(r.spawn_s.max),
        r.all_ready_s,
        r.memory.marginal_pss_mib,
        r.memory.marginal_available_mib,
        1024.0 / r.memory.marginal_pss_mib.max(r.memory.marginal_available_mib).max(0.001),
        r.cpu.idle_pct_per_guest,
        match (&r.ksm, r.ksm.pages_sharing) {
            (k, Some(p)) if k.on => format!("on, {:.1} MiB merged", p as f64 * 4.0 / 1024.0),
            (k, _) if k.on => "on".to_string(),
            (k, _) if k.unavailable.is_some() => "unavailable".to_string(),
            _ => "off".to_string(),
        },
    );
    if let (Some(b), Some(sv)) = (r.template_boot_s, r.template_save_s) {
        t += &format!(
            "template saved from {}: ready after {b:.2} s{}, saved in {sv:.2} s\n",
            r.image,
            if r.helper {
                " (the firmware's marker and imgtool's helper)"
            } else {
                ""
            }
        );
    }
    // What the first clones said on their console: a cold clone's marker line, a helper
    // clone's line naming its serial (their serials show there).
    let said = |g: &GuestReport| g.marker_line.clone().or(g.serial_line.clone());
    let lines: Vec<(&GuestReport, String)> = r
        .guests
        .iter()
        .filter_map(|g| said(g).map(|l| (g, l)))
        .collect();
    for (g, l) in lines.iter().take(MARKER_LINES_SHOWN) {
        t += &format!("clone {} ({}): {l}\n", g.index, g.serial);
    }
    if lines.len() > MARKER_LINES_SHOWN {
        t += &format!(
            "... and {} more console lines (in --json)\n",
            lines.len() - MARKER_LINES_SHOWN
        );
    }
    if r.helper {
        let took = Percentiles::of(r.guests.iter().filter_map(|g| g.serial_line_s).collect());
        if let (Some(p50), Some(max)) = (took.p50, took.max) {
            t += &format!(
                "spawn to the firmware's line naming its serial (the env written by the helper, \
                 read by the application): p50 {p50:.3} s, max {max:.3} s\n"
            );
        }
        let silent = r
            .guests
            .iter()
            .filter(|g| g.state == "ready" && g.serial_line.is_none())
            .count();
        if silent > 0 {
            t += &format!(
                "{silent} clone(s) printed no console line naming their serial before the run \
                 ended (a longer --hold gives the application time)\n"
            );
        }
    }
    for g in r.guests.iter().filter(|g| g.state != "ready") {
        t += &format!(
            "\nclone {} ({}): {}: {}\n{}\n",
            g.index,
            g.serial,
            g.state,
            g.error.as_deref().unwrap_or(""),
            g.console.as_deref().unwrap_or("")
        );
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let p = Percentiles::of((1..=100).map(f64::from).collect());
        assert_eq!(
            (p.p50, p.p95, p.p99, p.max),
            (Some(50.0), Some(95.0), Some(99.0), Some(100.0))
        );
        let p = Percentiles::of(vec![0.2]);
        assert_eq!((p.p50, p.max), (Some(0.2), Some(0.2)));
        assert!(Percentiles::of(vec![]).p50.is_none());
    }

    #[test]
    fn macs_differ_per_clone() {
        let macs: std::collections::BTreeSet<String> = (0..300).map(clone_mac).collect();
        assert_eq!(macs.len(), 300);
        assert_eq!(clone_mac(0), "52:54:00:00:00:01");
        assert_eq!(clone_mac(255), "52:54:00:00:01:00");
    }

    #[test]
    fn cpu_ticks_of_this_process() {
        assert!(cpu_ticks(std::process::id()).is_some());
        assert!(cpu_ticks(u32::MAX).is_none());
    }
}
