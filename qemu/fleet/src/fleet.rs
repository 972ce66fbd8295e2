//! Many clones of one template: each restored from the saved state with its own disk overlay
//! and its own identity (serial, hostname, MAC, fresh entropy) given over the init's console
//! protocol, checked for liveness, held, measured, and stopped so that no qemu outlives the run.
//!
//! Clones are spawned from the calling thread only, each with `PR_SET_PDEATHSIG`: if this
//! process dies, however it dies, the kernel stops its qemus. Each clone runs in its own
//! process group, so a terminal's Ctrl-C reaches imgtool alone, which then stops every clone.

use std::collections::VecDeque;
use std::fs;
use std::io::{Read as _, Write};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use guest_protocol::{ConsoleCommand, Identity, Message, MARK_IDENTITY, MARK_PONG};
use qemu::template::{self, CloneSpec, Manifest};
use regex::Regex;
use serde::Serialize;
use validate::console::{Console, Wait};
use validate::{procmem, Accel};

use crate::host::Host;
use crate::ksm::{self, Ksm, KsmMode};
use crate::measure::Spec;
use crate::{Error, Result};

/// Boot `image` to readiness and save a template in `dir`; the qemu arguments and readiness
/// marker are `validate`'s (from `spec`).
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
    /// Spawn to identity answer, at most.
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
    pub serial: String,
    pub hostname: String,
    pub mac: Option<String>,
    /// Host port forwarded to the guest (user-mode networking).
    pub port: Option<u16>,
    /// Hex the guest read from its RNG after taking its identity.
    pub random: Option<String>,
    pub spawn_s: Option<f64>,
    /// `ready` (answered and alive to the end), `failed` (never answered), `died` (answered,
    /// then its qemu ended before the run did).
    pub state: String,
    pub error: Option<String>,
    /// The last console lines of a clone that failed or died.
    pub console: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub template: String,
    pub count: u32,
    pub ready: u32,
    pub failed: u32,
    pub accel: String,
    pub spawn_s: Percentiles,
    /// First spawn to the last clone answering.
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

/// What a clone's console thread reports.
enum Note {
    Answered {
        index: u32,
        at: Instant,
        random: String,
    },
    Failed {
        index: u32,
        why: String,
    },
}

enum Ask {
    Ping,
    Stop,
}

struct Clone {
    index: u32,
    identity: Identity,
    port: Option<u16>,
    child: Option<Child>,
    pid: u32,
    spawned: Instant,
    ask: mpsc::Sender<Ask>,
    tail: Arc<Mutex<VecDeque<String>>>,
    stderr: Arc<Mutex<String>>,
    answered: Option<(Instant, String)>,
    failed: Option<String>,
    died: Option<String>,
    pong: Arc<AtomicBool>,
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

/// Start, check, hold and stop `o.count` clones of the template in `dir`. `on_status` gets a
/// line each `o.interval` while holding, and one when the clones are all up.
pub fn run(
    dir: &Path,
    o: &FleetOptions,
    host: &Host,
    on_status: &mut dyn FnMut(&Status),
) -> Result<Report> {
    if o.count == 0 || o.parallel == 0 {
        return Err(Error::Usage(
            "--count and --parallel must be 1 or more".into(),
        ));
    }
    if !o.serial_prefix.is_empty() && !guest_protocol::is_identity_word(&o.serial_prefix) {
        return Err(Error::Usage(format!(
            "--serial-prefix {:?}: use letters, digits, `-`, `_` and `.` only (up to 64)",
            o.serial_prefix
        )));
    }
    let accel = match o.accel.as_str() {
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
    let m = template::open(dir, accel)?;
    if o.net_user && !m.net {
        return Err(Error::Usage(format!(
            "--net user: template {} has no network device; make it with `imgtool template --net user`",
            dir.display()
        )));
    }
    if o.net_user && u32::from(o.port_base) + o.count > 65536 {
        return Err(Error::Usage(format!(
            "--port-base {} + --count {} passes port 65535",
            o.port_base, o.count
        )));
    }
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
    let ksm_state = KsmReport {
        mode: o.ksm,
        on: ksm_on.is_some(),
        unavailable,
        pages_sharing: None,
        pages_to_scan: None,
    };
    let dir = std::path::absolute(dir).map_err(|e| Error::io(dir.display(), e))?;
    let (run_dir, remove_run_dir) = match &o.run_dir {
        Some(d) => (d.clone(), false),
        None => (dir.join(format!("run-{}", std::process::id())), true),
    };
    fs::create_dir_all(&run_dir)
        .map_err(|e| Error::io(format!("creating {}", run_dir.display()), e))?;
    let result = run_in(&dir, &run_dir, &m, accel, o, ksm_state, on_status);
    drop(ksm_on);
    if remove_run_dir {
        let _ = fs::remove_dir_all(&run_dir);
    }
    result
}

fn run_in(
    dir: &Path,
    run_dir: &Path,
    m: &Manifest,
    accel: Accel,
    o: &FleetOptions,
    mut ksm_state: KsmReport,
    on_status: &mut dyn FnMut(&Status),
) -> Result<Report> {
    // Overlays first (qemu-img), two at a time: not part of any clone's spawn time.
    let disks: Vec<PathBuf> = (0..o.count)
        .map(|i| run_dir.join(format!("clone-{i:04}.qcow2")))
        .collect();
    let template_disk = dir.join(template::DISK_FILE);
    std::thread::scope(|s| -> Result<()> {
        let hs: Vec<_> = disks
            .chunks(disks.len().div_ceil(2).max(1))
            .map(|chunk| {
                let td = &template_disk;
                s.spawn(move || -> Result<()> {
                    for d in chunk {
                        template::qemu_img_overlay(d, td, "qcow2")?;
                    }
                    Ok(())
                })
            })
            .collect();
        for h in hs {
            h.join().expect("overlay thread")?;
        }
        Ok(())
    })?;

    // QMP sockets live under a short path: a unix socket's path has at most 107 bytes. A kept
    // run directory holds them when its path is short enough.
    let keep = o.run_dir.is_some();
    let (qmp_dir, _qmp_dir_gone) = if keep && run_dir.join("clone-0000.qmp").as_os_str().len() < 100
    {
        (run_dir.to_path_buf(), None)
    } else {
        let d = std::env::temp_dir().join(format!("imgtool-qmp-{}", std::process::id()));
        fs::create_dir_all(&d).map_err(|e| Error::io(format!("creating {}", d.display()), e))?;
        (d.clone(), Some(RemoveDir(d)))
    };
    let available_before_kib = mem_available_kib();
    let (tx, rx) = mpsc::channel::<Note>();
    let starting = Arc::new(AtomicU32::new(0));
    let mut clones: Vec<Clone> = Vec::with_capacity(o.count as usize);
    let t0 = Instant::now();
    let mut guard = Stopper(Vec::new());
    let mut spawn_error: Option<Error> = None;
    let drain = |clones: &mut Vec<Clone>, rx: &mpsc::Receiver<Note>, wait: Duration| {
        if let Ok(n) = rx.recv_timeout(wait) {
            let mut n = Some(n);
            while let Some(note) = n.take() {
                match note {
                    Note::Answered { index, at, random } => {
                        clones[index as usize].answered = Some((at, random));
                    }
                    Note::Failed { index, why } => clones[index as usize].failed = Some(why),
                }
                n = rx.try_recv().ok();
            }
        }
    };
    for i in 0..o.count {
        while starting.load(Ordering::SeqCst) >= o.parallel && !o.interrupt.load(Ordering::SeqCst) {
            drain(&mut clones, &rx, Duration::from_millis(5));
        }
        if o.interrupt.load(Ordering::SeqCst) {
            break;
        }
        let serial = format!("{}{i:04}", o.serial_prefix);
        let identity = Identity {
            hostname: serial.clone(),
            serial,
            mac: m.net.then(|| clone_mac(i)),
            entropy: random_bytes(32),
        };
        let port = o.net_user.then(|| o.port_base + i as u16);
        let qmp_sock = qmp_dir.join(format!("clone-{i:04}.qmp"));
        let spec = CloneSpec {
            qmp: &qmp_sock,
            disk: &disks[i as usize],
            mac: identity.mac.as_deref(),
            hostfwd: port
                .map(|p| vec![format!("tcp:127.0.0.1:{p}-:{}", o.guest_port)])
                .unwrap_or_default(),
        };
        let argv = template::restore_argv(dir, m, &spec);
        let state = dir.join(template::STATE_FILE);
        match spawn_clone(
            i,
            &argv,
            identity,
            port,
            o,
            ksm_state.on,
            &tx,
            &starting,
            &qmp_sock,
            &state,
        ) {
            Ok(c) => {
                guard.0.push(c.pid);
                clones.push(c);
            }
            Err(e) => {
                spawn_error = Some(e);
                break;
            }
        }
        drain(&mut clones, &rx, Duration::ZERO);
    }
    if let Some(e) = spawn_error {
        stop_all(&mut clones);
        return Err(e);
    }
    // Every clone answers its identity (or fails) before the fleet counts as up.
    let deadline = Instant::now() + o.answer_timeout + Duration::from_secs(5);
    while clones
        .iter()
        .any(|c| c.answered.is_none() && c.failed.is_none())
        && Instant::now() < deadline
        && !o.interrupt.load(Ordering::SeqCst)
    {
        drain(&mut clones, &rx, Duration::from_millis(20));
    }
    let all_ready_s = t0.elapsed().as_secs_f64();
    // Liveness: every answering clone answers a ping.
    for c in clones.iter().filter(|c| c.answered.is_some()) {
        c.pong.store(false, Ordering::SeqCst);
        let _ = c.ask.send(Ask::Ping);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while clones
        .iter()
        .any(|c| c.answered.is_some() && c.failed.is_none() && !c.pong.load(Ordering::SeqCst))
        && Instant::now() < deadline
    {
        drain(&mut clones, &rx, Duration::from_millis(20));
    }
    for c in clones.iter_mut() {
        if c.answered.is_some() && c.failed.is_none() && !c.pong.load(Ordering::SeqCst) {
            c.failed = Some("answered its identity but not the liveness ping within 30 s".into());
        }
    }

    // Hold, with a status line each interval; the figures of the last window are the report's.
    let hold_start = Instant::now();
    let hz = ticks_per_s();
    let ksmd = |on: bool| if on { Ksm::ksmd_ticks() } else { None };
    let mut ksmd_ticks = ksmd(ksm_state.on);
    let mut ksmd_pct: Option<f64>;
    let sample = |clones: &mut Vec<Clone>| -> (u32, u64, u64) {
        let mut alive = 0;
        let mut pss = 0;
        let mut ticks = 0;
        for c in clones.iter_mut() {
            reap(c);
            if c.died.is_some() || c.child.is_none() {
                continue;
            }
            alive += 1;
            pss += procmem::read(c.pid).map(|m| m.pss_kib).unwrap_or(0);
            ticks += cpu_ticks(c.pid).unwrap_or(0);
        }
        (alive, pss, ticks)
    };
    let (mut alive, mut pss, mut ticks) = sample(&mut clones);
    let mut window_start = Instant::now();
    let mut last_cpu: f64;
    let mut status = Vec::new();
    let first = Status {
        t_s: t0.elapsed().as_secs_f64(),
        alive,
        available_kib: mem_available_kib(),
        pss_sum_kib: pss,
        cpu_pct_per_guest: 0.0,
    };
    on_status(&first);
    status.push(first);
    let mut window_s: f64;
    let hold_end = hold_start + o.hold;
    // At least one measuring window, even for `--hold 0`.
    let window = o.interval.min(o.hold.max(Duration::from_secs(2)));
    loop {
        let next = (window_start + window).min(hold_end.max(window_start + Duration::from_secs(2)));
        while Instant::now() < next && !o.interrupt.load(Ordering::SeqCst) {
            drain(&mut clones, &rx, Duration::from_millis(100));
        }
        let (a, p, t) = sample(&mut clones);
        let dt = window_start.elapsed().as_secs_f64();
        let n = a.max(1) as f64;
        let k = ksmd(ksm_state.on);
        let ksmd_window = match (k, ksmd_ticks) {
            (Some(now), Some(then)) => now.saturating_sub(then),
            _ => 0,
        };
        ksmd_pct = k.map(|_| ksmd_window as f64 / hz / dt * 100.0);
        ksmd_ticks = k;
        last_cpu = (t.saturating_sub(ticks) + ksmd_window) as f64 / hz / dt / n * 100.0;
        window_s = dt;
        (alive, pss, ticks) = (a, p, t);
        window_start = Instant::now();
        let s = Status {
            t_s: t0.elapsed().as_secs_f64(),
            alive,
            available_kib: mem_available_kib(),
            pss_sum_kib: pss,
            cpu_pct_per_guest: last_cpu,
        };
        on_status(&s);
        status.push(s);
        if Instant::now() >= hold_end || o.interrupt.load(Ordering::SeqCst) {
            break;
        }
    }
    let available_after_kib = mem_available_kib();
    if ksm_state.on {
        ksm_state.pages_sharing = Ksm::pages_sharing();
        ksm_state.pages_to_scan = Ksm::stat("pages_to_scan");
    }
    let hold_s = hold_start.elapsed().as_secs_f64();
    for c in clones.iter_mut() {
        reap(c);
    }
    stop_all(&mut clones);
    guard.0.clear();

    let live = alive.max(1) as f64;
    let drop = available_before_kib.saturating_sub(available_after_kib);
    let mut guests = Vec::new();
    let mut spawn = Vec::new();
    for c in &clones {
        let spawn_s = c
            .answered
            .as_ref()
            .map(|(at, _)| at.duration_since(c.spawned).as_secs_f64());
        let state = if c.died.is_some() {
            "died"
        } else if c.failed.is_some() || c.answered.is_none() {
            "failed"
        } else {
            "ready"
        };
        if state == "ready" {
            spawn.extend(spawn_s);
        }
        let bad = state != "ready";
        guests.push(GuestReport {
            index: c.index,
            serial: c.identity.serial.clone(),
            hostname: c.identity.hostname.clone(),
            mac: c.identity.mac.clone(),
            port: c.port,
            random: c.answered.as_ref().map(|(_, r)| r.clone()),
            spawn_s,
            state: state.into(),
            error: c.died.clone().or(c.failed.clone()).or_else(|| {
                c.answered
                    .is_none()
                    .then(|| "no identity answer before the run ended".to_string())
            }),
            console: bad.then(|| {
                let mut t: Vec<String> = c.tail.lock().unwrap().iter().cloned().collect();
                let err = c.stderr.lock().unwrap();
                if !err.trim().is_empty() {
                    t.push(format!("--- qemu stderr ---\n{}", err.trim_end()));
                }
                t.join("\n")
            }),
        });
    }
    let ready = guests.iter().filter(|g| g.state == "ready").count() as u32;
    Ok(Report {
        template: dir.display().to_string(),
        count: o.count,
        ready,
        failed: o.count - ready,
        accel: accel.as_str().into(),
        spawn_s: Percentiles::of(spawn),
        all_ready_s,
        hold_s,
        memory: Memory {
            pss_sum_kib: pss,
            marginal_pss_mib: pss as f64 / 1024.0 / live,
            available_before_kib,
            available_after_kib,
            available_drop_kib: drop,
            marginal_available_mib: drop as f64 / 1024.0 / live,
        },
        cpu: Cpu {
            idle_pct_per_guest: last_cpu,
            ksmd_pct,
            window_s,
        },
        ksm: ksm_state,
        interrupted: o.interrupt.load(Ordering::SeqCst),
        status,
        guests,
    })
}

/// Console bytes to several places (stderr, a log file).
struct Tee(Vec<Box<dyn Write + Send>>);

impl Write for Tee {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        for w in &mut self.0 {
            w.write_all(buf)?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.iter_mut().try_for_each(|w| w.flush())
    }
}

/// Removes a directory when dropped.
struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// SIGKILLs whatever it still holds when dropped (an early return or a panic): no qemu is ever
/// left behind by this process.
struct Stopper(Vec<u32>);

impl Drop for Stopper {
    fn drop(&mut self) {
        for &pid in &self.0 {
            // SAFETY: kill has no memory-safety preconditions; a stale pid was reaped by us
            // only after the list was cleared.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }
}

fn reap(c: &mut Clone) {
    if let Some(ch) = c.child.as_mut() {
        if let Ok(Some(st)) = ch.try_wait() {
            if c.died.is_none() && c.failed.is_none() {
                c.died = Some(format!(
                    "its qemu exited ({st}) while the fleet was running"
                ));
            }
            c.child = None;
        }
    }
}

/// SIGTERM every clone's qemu, wait up to 5 s, SIGKILL the rest, reap all.
fn stop_all(clones: &mut [Clone]) {
    for c in clones.iter() {
        let _ = c.ask.send(Ask::Stop);
        if c.child.is_some() {
            // SAFETY: kill has no memory-safety preconditions; the child is not reaped yet.
            unsafe { libc::kill(c.pid as i32, libc::SIGTERM) };
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut left = 0;
        for c in clones.iter_mut() {
            if let Some(ch) = c.child.as_mut() {
                match ch.try_wait() {
                    Ok(Some(_)) | Err(_) => c.child = None,
                    Ok(None) => left += 1,
                }
            }
        }
        if left == 0 {
            return;
        }
        if Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for c in clones.iter_mut() {
        if let Some(mut ch) = c.child.take() {
            let _ = ch.kill();
            let _ = ch.wait();
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn spawn_clone(
    index: u32,
    argv: &[String],
    identity: Identity,
    port: Option<u16>,
    o: &FleetOptions,
    merge: bool,
    tx: &mpsc::Sender<Note>,
    starting: &Arc<AtomicU32>,
    qmp_sock: &Path,
    state: &Path,
) -> Result<Clone> {
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: only async-signal-safe calls (prctl, setpgid, personality) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if merge {
                ksm::child_setup()?;
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::setpgid(0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let spawned = Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(|e| Error::io(format!("starting {} for clone {index}", argv[0]), e))?;
    starting.fetch_add(1, Ordering::SeqCst);
    let pid = child.id();
    let (ask_tx, ask_rx) = mpsc::channel::<Ask>();
    let tail: Arc<Mutex<VecDeque<String>>> = Arc::default();
    let stderr_text: Arc<Mutex<String>> = Arc::default();
    {
        let mut err = child.stderr.take().expect("piped");
        let t = stderr_text.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let mut s = t.lock().unwrap();
                if s.len() < 8192 {
                    s.push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            }
        });
    }
    let pong = Arc::new(AtomicBool::new(false));
    let mut copies: Vec<Box<dyn Write + Send>> = Vec::new();
    if o.console {
        copies.push(Box::new(std::io::stderr()));
    }
    if let Some(d) = &o.run_dir {
        let log = d.join(format!("clone-{index:04}.console"));
        copies.push(Box::new(
            fs::File::create(&log).map_err(|e| Error::io(log.display(), e))?,
        ));
    }
    let mut con = Console::new(
        child.stdout.take().expect("piped"),
        child.stdin.take(),
        (!copies.is_empty()).then(|| Box::new(Tee(copies)) as Box<dyn Write + Send>),
    );
    let line = identity.to_line();
    let (tx, starting2, tail2, pong2) = (tx.clone(), starting.clone(), tail.clone(), pong.clone());
    let limit = o.answer_timeout;
    let (qmp_sock, state) = (qmp_sock.to_path_buf(), state.to_path_buf());
    let keep_sock = o.run_dir.is_some();
    std::thread::spawn(move || {
        let answer = Regex::new(&format!("^{MARK_IDENTITY} ")).expect("valid");
        let pong_re = Regex::new(&format!("^{MARK_PONG}( |$)")).expect("valid");
        let never = Regex::new("$^").expect("valid");
        let deadline = spawned + limit;
        let keep_tail = |con: &Console| {
            let mut t = tail2.lock().unwrap();
            *t = con.tail().lines().map(String::from).collect();
        };
        // Load the saved state through QMP; the guest runs when the load completes.
        let restored = template::Qmp::connect(&qmp_sock, limit)
            .and_then(|mut q| q.restore_state(&state, limit));
        if !keep_sock {
            let _ = std::fs::remove_file(&qmp_sock);
        }
        if let Err(e) = restored {
            starting2.fetch_sub(1, Ordering::SeqCst);
            let _ = con.wait_for(&never, Instant::now() + Duration::from_millis(200));
            keep_tail(&con);
            let _ = tx.send(Note::Failed {
                index,
                why: format!("restoring the template's state: {e}"),
            });
            return;
        }
        // The serial port takes input once the state is loaded: repeat until answered.
        let mut answered = false;
        let mut closed = false;
        while Instant::now() < deadline {
            if con.send(&line).is_err() {
                break;
            }
            match con.wait_for_line(
                &answer,
                (Instant::now() + Duration::from_millis(100)).min(deadline),
            ) {
                Wait::Matched(l, at) => match Message::parse(&l) {
                    Ok(Message::Identity(a)) => {
                        let random = common::hex::encode(&a.random);
                        let _ = tx.send(Note::Answered { index, at, random });
                        answered = true;
                        break;
                    }
                    // A damaged answer: the line is sent again.
                    _ => tracing::debug!("clone {index}: unreadable identity answer `{l}`"),
                },
                Wait::Closed => {
                    closed = true;
                    break;
                }
                Wait::Timeout => {}
            }
        }
        starting2.fetch_sub(1, Ordering::SeqCst);
        if !answered {
            keep_tail(&con);
            let why = if closed {
                format!(
                    "its qemu exited before the guest answered `{}`",
                    guest_protocol::CMD_IDENTITY
                )
            } else {
                format!(
                    "no {MARK_IDENTITY} answer within {:.0} s of spawning",
                    limit.as_secs_f64()
                )
            };
            let _ = tx.send(Note::Failed { index, why });
            return;
        }
        // Keep the console drained; answer liveness asks.
        loop {
            match ask_rx.try_recv() {
                Ok(Ask::Ping) => {
                    if con.send(&ConsoleCommand::Ping.to_string()).is_ok() {
                        if let Wait::Matched(..) =
                            con.wait_for_line(&pong_re, Instant::now() + Duration::from_secs(30))
                        {
                            pong2.store(true, Ordering::SeqCst);
                        }
                    }
                }
                Ok(Ask::Stop) | Err(mpsc::TryRecvError::Disconnected) => break,
                Err(mpsc::TryRecvError::Empty) => {}
            }
            if let Wait::Closed = con.wait_for(&never, Instant::now() + Duration::from_millis(200))
            {
                break;
            }
        }
        keep_tail(&con);
    });
    Ok(Clone {
        index,
        identity,
        port,
        child: Some(child),
        pid,
        spawned,
        ask: ask_tx,
        tail,
        stderr: stderr_text,
        answered: None,
        failed: None,
        died: None,
        pong,
    })
}

/// The report as a table for people.
pub fn table(r: &Report) -> String {
    let f = |v: Option<f64>| v.map_or("-".into(), |x| format!("{x:.3}"));
    let mut t = format!(
        "| template | accel | clones | ready | failed | spawn-to-answer p50 / p95 / max (s) | all up (s) | marginal PSS / guest (MiB) | MemAvailable drop / guest (MiB) | guests per GiB | CPU / guest (% of a core) | KSM |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|\n| {} | {} | {} | {} | {} | {} / {} / {} | {:.2} | {:.1} | {:.1} | {:.0} | {:.3} | {} |\n",
        r.template,
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
