//! The engine every fleet runs on, whatever its clones boot from: make each clone's disk, start
//! the clones `parallel` at a time, wait until each is up (or failed), check they are alive,
//! hold and measure them, stop them all, report. A [`Source`] says what differs: the disk the
//! overlays sit on, what is written into each before it boots, each clone's qemu argv and when
//! it counts as up.
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
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use guest_protocol::{ConsoleCommand, Message, MARK_IDENTITY, MARK_PONG};
use qemu::template;
use regex::Regex;
use validate::console::{Console, Wait};
use validate::{procmem, Accel};

use super::{
    clone_mac, cpu_ticks, mem_available_kib, ticks_per_s, Cpu, Event, FleetOptions, GuestReport,
    KsmReport, Memory, Percentiles, Report, Status,
};
use crate::ksm::{self, Ksm};
use crate::{Error, Result};

/// One clone's place in the fleet, decided before anything boots.
pub(super) struct Slot {
    pub index: u32,
    /// Its qcow2 overlay over the source's disk.
    pub disk: PathBuf,
    pub serial: String,
    pub mac: Option<String>,
    /// Host port forwarded to the guest (user-mode networking), and the `hostfwd` rule for it.
    pub port: Option<u16>,
    pub hostfwd: Vec<String>,
}

/// How one clone starts.
pub(super) struct Launch {
    pub argv: Vec<String>,
    /// The hostname the clone is given, when the fleet gives one.
    pub hostname: Option<String>,
    pub bring_up: BringUp,
}

/// What makes a clone count as up.
pub(super) enum BringUp {
    /// Load a template's saved state through QMP, then send `identity` on the console until
    /// imgtool's init answers.
    Restore {
        qmp: PathBuf,
        state: PathBuf,
        /// Leave the QMP socket in place (a kept run directory).
        keep_socket: bool,
        identity: String,
        /// A firmware with its own PID 1: the helper console's socket, where the identity goes
        /// (and pings), and the clone's serial, whose first line on the serial console is kept.
        helper: Option<(PathBuf, String)>,
    },
    /// A cold boot: up when a whole console line matches.
    Marker(Regex),
}

/// What differs between fleets of template clones and fleets of cold boots.
pub(super) trait Source: Sync {
    /// The disk each clone's overlay sits on, and that disk's format.
    fn backing(&self) -> (&Path, &'static str);
    /// Whether clones get a network device (and so a MAC each).
    fn net(&self) -> bool;
    /// Write what clone `s` needs into its overlay before it boots (`scratch` is the run
    /// directory, for temporary files).
    fn prepare(&self, _s: &Slot, _scratch: &Path) -> Result<()> {
        Ok(())
    }
    fn launch(&self, s: &Slot) -> Launch;
    /// Whether an up clone answers the init's liveness ping.
    fn pings(&self) -> bool;
    /// What a clone that is not up yet is waiting for, for messages.
    fn waiting_for(&self) -> String;
}

/// What the report says about where the clones came from.
pub(super) struct Origin {
    pub start: &'static str,
    pub template: Option<String>,
    pub image: String,
    pub marker: Option<String>,
    pub helper: bool,
    /// The template this run saved: its boot to readiness and its save, in seconds.
    pub saved: Option<(f64, f64)>,
    pub accel: Accel,
}

/// Run the whole fleet in `run_dir` and report.
pub(super) fn run(
    src: &dyn Source,
    origin: Origin,
    run_dir: &Path,
    o: &FleetOptions,
    mut ksm_state: KsmReport,
    on_event: &mut dyn FnMut(Event),
) -> Result<Report> {
    let slots = slots(src, run_dir, o);
    make_disks(src, &slots, run_dir)?;
    let mut f = Fleet::new(o);
    let t0 = Instant::now();
    let available_before_kib = mem_available_kib();
    if let Err(e) = f.start_all(src, &slots, ksm_state.on, on_event) {
        f.stop();
        return Err(e);
    }
    f.wait_up(on_event);
    let all_ready_s = t0.elapsed().as_secs_f64();
    if src.pings() {
        f.check_liveness(on_event);
    }
    let hold = f.hold(ksm_state.on, t0, on_event);
    if ksm_state.on {
        ksm_state.pages_sharing = Ksm::pages_sharing();
        ksm_state.pages_to_scan = Ksm::stat("pages_to_scan");
    }
    f.stop();
    let guests = f.guests(&src.waiting_for());
    let mut spawn = Vec::new();
    for g in guests.iter().filter(|g| g.state == "ready") {
        spawn.extend(g.spawn_s);
    }
    let ready = spawn.len() as u32;
    let live = hold.alive.max(1) as f64;
    let drop = available_before_kib.saturating_sub(hold.available_after_kib);
    Ok(Report {
        start: origin.start.into(),
        template: origin.template,
        image: origin.image,
        marker: origin.marker,
        helper: origin.helper,
        template_boot_s: origin.saved.map(|s| s.0),
        template_save_s: origin.saved.map(|s| s.1),
        count: o.count,
        ready,
        failed: o.count - ready,
        accel: origin.accel.as_str().into(),
        spawn_s: Percentiles::of(spawn),
        all_ready_s,
        hold_s: hold.hold_s,
        memory: Memory {
            pss_sum_kib: hold.pss,
            marginal_pss_mib: hold.pss as f64 / 1024.0 / live,
            available_before_kib,
            available_after_kib: hold.available_after_kib,
            available_drop_kib: drop,
            marginal_available_mib: drop as f64 / 1024.0 / live,
        },
        cpu: Cpu {
            idle_pct_per_guest: hold.cpu_pct,
            ksmd_pct: hold.ksmd_pct,
            window_s: hold.window_s,
        },
        ksm: ksm_state,
        interrupted: o.interrupt.load(Ordering::SeqCst),
        status: hold.status,
        guests,
    })
}

/// Each clone's serial (`--serial-prefix` + index), MAC and port, decided up front.
fn slots(src: &dyn Source, run_dir: &Path, o: &FleetOptions) -> Vec<Slot> {
    (0..o.count)
        .map(|i| {
            let port = o.net_user.then(|| o.port_base + i as u16);
            Slot {
                index: i,
                disk: run_dir.join(format!("clone-{i:04}.qcow2")),
                serial: format!("{}{i:04}", o.serial_prefix),
                mac: src.net().then(|| clone_mac(i)),
                port,
                hostfwd: port
                    .map(|p| vec![format!("tcp:127.0.0.1:{p}-:{}", o.guest_port)])
                    .unwrap_or_default(),
            }
        })
        .collect()
}

/// Every clone's overlay (qemu-img) and what goes into it before boot, two at a time: none of
/// it is part of any clone's spawn time.
fn make_disks(src: &dyn Source, slots: &[Slot], run_dir: &Path) -> Result<()> {
    let (backing, format) = src.backing();
    std::thread::scope(|s| -> Result<()> {
        let hs: Vec<_> = slots
            .chunks(slots.len().div_ceil(2).max(1))
            .map(|chunk| {
                s.spawn(move || -> Result<()> {
                    for slot in chunk {
                        template::qemu_img_overlay(&slot.disk, backing, format)?;
                        src.prepare(slot, run_dir)?;
                    }
                    Ok(())
                })
            })
            .collect();
        for h in hs {
            h.join().expect("overlay thread")?;
        }
        Ok(())
    })
}

/// What a clone's console thread reports.
enum Note {
    Up { index: u32, up: Up },
    Failed { index: u32, why: String },
}

struct Up {
    at: Instant,
    /// Hex the guest read from its RNG after taking its identity (template clones).
    random: Option<String>,
    /// The whole marker line (cold clones).
    line: Option<String>,
}

enum Ask {
    Ping,
    Stop,
}

struct Clone {
    index: u32,
    serial: String,
    hostname: Option<String>,
    mac: Option<String>,
    port: Option<u16>,
    child: Option<Child>,
    pid: u32,
    spawned: Instant,
    ask: mpsc::Sender<Ask>,
    tail: Arc<Mutex<VecDeque<String>>>,
    stderr: Arc<Mutex<String>>,
    up: Option<Up>,
    failed: Option<String>,
    died: Option<String>,
    pong: Arc<AtomicBool>,
    serial_line: Arc<Mutex<Option<(String, Instant)>>>,
    thread: Option<JoinHandle<()>>,
}

/// Figures of the hold's last measuring window.
struct Hold {
    status: Vec<Status>,
    alive: u32,
    pss: u64,
    cpu_pct: f64,
    ksmd_pct: Option<f64>,
    window_s: f64,
    available_after_kib: u64,
    hold_s: f64,
}

struct Fleet<'o> {
    o: &'o FleetOptions,
    clones: Vec<Clone>,
    tx: mpsc::Sender<Note>,
    rx: mpsc::Receiver<Note>,
    /// Clones spawned and not yet up or failed.
    starting: Arc<AtomicU32>,
    guard: Stopper,
}

impl<'o> Fleet<'o> {
    fn new(o: &'o FleetOptions) -> Self {
        let (tx, rx) = mpsc::channel();
        Fleet {
            o,
            clones: Vec::with_capacity(o.count as usize),
            tx,
            rx,
            starting: Arc::new(AtomicU32::new(0)),
            guard: Stopper(Vec::new()),
        }
    }

    fn interrupted(&self) -> bool {
        self.o.interrupt.load(Ordering::SeqCst)
    }

    /// Take the console threads' notes, waiting up to `wait` for the first.
    fn drain(&mut self, wait: Duration, on_event: &mut dyn FnMut(Event)) {
        let Ok(first) = self.rx.recv_timeout(wait) else {
            return;
        };
        let mut next = Some(first);
        while let Some(note) = next.take() {
            match note {
                Note::Up { index, up } => self.clones[index as usize].up = Some(up),
                Note::Failed { index, why } => self.clones[index as usize].failed = Some(why),
            }
            next = self.rx.try_recv().ok();
        }
        let up = self.clones.iter().filter(|c| c.up.is_some()).count() as u32;
        let failed = self
            .clones
            .iter()
            .filter(|c| c.up.is_none() && c.failed.is_some())
            .count() as u32;
        on_event(Event::Progress {
            up,
            failed,
            count: self.o.count,
        });
    }

    /// Spawn every clone, at most `parallel` of them starting at once.
    fn start_all(
        &mut self,
        src: &dyn Source,
        slots: &[Slot],
        merge: bool,
        on_event: &mut dyn FnMut(Event),
    ) -> Result<()> {
        for slot in slots {
            while self.starting.load(Ordering::SeqCst) >= self.o.parallel && !self.interrupted() {
                self.drain(Duration::from_millis(5), on_event);
            }
            if self.interrupted() {
                break;
            }
            let c = self.spawn(slot, src.launch(slot), merge)?;
            self.guard.0.push(c.pid);
            self.clones.push(c);
            self.drain(Duration::ZERO, on_event);
        }
        Ok(())
    }

    /// Until every clone is up or failed (each has its own deadline from its spawn).
    fn wait_up(&mut self, on_event: &mut dyn FnMut(Event)) {
        let deadline = Instant::now() + self.o.answer_timeout + Duration::from_secs(5);
        while self
            .clones
            .iter()
            .any(|c| c.up.is_none() && c.failed.is_none())
            && Instant::now() < deadline
            && !self.interrupted()
        {
            self.drain(Duration::from_millis(20), on_event);
        }
    }

    /// Every up clone answers a ping.
    fn check_liveness(&mut self, on_event: &mut dyn FnMut(Event)) {
        for c in self.clones.iter().filter(|c| c.up.is_some()) {
            c.pong.store(false, Ordering::SeqCst);
            let _ = c.ask.send(Ask::Ping);
        }
        let waiting =
            |c: &Clone| c.up.is_some() && c.failed.is_none() && !c.pong.load(Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.clones.iter().any(waiting) && Instant::now() < deadline {
            self.drain(Duration::from_millis(20), on_event);
        }
        for c in self.clones.iter_mut() {
            if waiting(c) {
                c.failed =
                    Some("answered its identity but not the liveness ping within 30 s".into());
            }
        }
    }

    /// Live clones, their summed PSS and CPU ticks; reaps the ones that ended.
    fn sample(&mut self) -> (u32, u64, u64) {
        let (mut alive, mut pss, mut ticks) = (0, 0, 0);
        for c in self.clones.iter_mut() {
            reap(c);
            if c.died.is_some() || c.child.is_none() {
                continue;
            }
            alive += 1;
            pss += procmem::read(c.pid).map(|m| m.pss_kib).unwrap_or(0);
            ticks += cpu_ticks(c.pid).unwrap_or(0);
        }
        (alive, pss, ticks)
    }

    /// Hold for `o.hold`, with a status line each interval; the last window's figures are the
    /// report's.
    fn hold(&mut self, ksm_on: bool, t0: Instant, on_event: &mut dyn FnMut(Event)) -> Hold {
        let hold_start = Instant::now();
        let hz = ticks_per_s();
        let ksmd = || if ksm_on { Ksm::ksmd_ticks() } else { None };
        let mut ksmd_ticks = ksmd();
        let (mut alive, mut pss, mut ticks) = self.sample();
        let mut status = Vec::new();
        let first = Status {
            t_s: t0.elapsed().as_secs_f64(),
            alive,
            available_kib: mem_available_kib(),
            pss_sum_kib: pss,
            cpu_pct_per_guest: 0.0,
        };
        on_event(Event::Status(&first));
        status.push(first);
        // Set by every window; the loop runs at least one.
        let mut cpu_pct: f64;
        let mut ksmd_pct: Option<f64>;
        let mut window_s: f64;
        let mut window_start = Instant::now();
        let hold_end = hold_start + self.o.hold;
        // At least one measuring window, even for `--hold 0`.
        let window = self.o.interval.min(self.o.hold.max(Duration::from_secs(2)));
        loop {
            let next =
                (window_start + window).min(hold_end.max(window_start + Duration::from_secs(2)));
            while Instant::now() < next && !self.interrupted() {
                self.drain(Duration::from_millis(100), on_event);
            }
            let (a, p, t) = self.sample();
            let dt = window_start.elapsed().as_secs_f64();
            let k = ksmd();
            let ksmd_window = match (k, ksmd_ticks) {
                (Some(now), Some(then)) => now.saturating_sub(then),
                _ => 0,
            };
            ksmd_pct = k.map(|_| ksmd_window as f64 / hz / dt * 100.0);
            ksmd_ticks = k;
            cpu_pct =
                (t.saturating_sub(ticks) + ksmd_window) as f64 / hz / dt / a.max(1) as f64 * 100.0;
            window_s = dt;
            (alive, pss, ticks) = (a, p, t);
            window_start = Instant::now();
            let s = Status {
                t_s: t0.elapsed().as_secs_f64(),
                alive,
                available_kib: mem_available_kib(),
                pss_sum_kib: pss,
                cpu_pct_per_guest: cpu_pct,
            };
            on_event(Event::Status(&s));
            status.push(s);
            if Instant::now() >= hold_end || self.interrupted() {
                break;
            }
        }
        Hold {
            status,
            alive,
            pss,
            cpu_pct,
            ksmd_pct,
            window_s,
            available_after_kib: mem_available_kib(),
            hold_s: hold_start.elapsed().as_secs_f64(),
        }
    }

    /// SIGTERM every clone's qemu, wait up to 5 s, SIGKILL the rest, reap all; then let the
    /// console threads keep their last lines.
    fn stop(&mut self) {
        for c in self.clones.iter_mut() {
            reap(c);
        }
        for c in &self.clones {
            let _ = c.ask.send(Ask::Stop);
            if c.child.is_some() {
                // SAFETY: kill has no memory-safety preconditions; the child is not reaped yet.
                unsafe { libc::kill(c.pid as i32, libc::SIGTERM) };
            }
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let mut left = 0;
            for c in self.clones.iter_mut() {
                if let Some(ch) = c.child.as_mut() {
                    match ch.try_wait() {
                        Ok(Some(_)) | Err(_) => c.child = None,
                        Ok(None) => left += 1,
                    }
                }
            }
            if left == 0 || Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        for c in self.clones.iter_mut() {
            if let Some(mut ch) = c.child.take() {
                let _ = ch.kill();
                let _ = ch.wait();
            }
        }
        self.guard.0.clear();
        // With their qemu gone the threads end at once, except one still connecting to a QMP
        // socket that never came; that one is not waited for.
        let deadline = Instant::now() + Duration::from_secs(2);
        for c in self.clones.iter_mut() {
            while c.thread.as_ref().is_some_and(|t| !t.is_finished()) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if let Some(t) = c.thread.take().filter(|t| t.is_finished()) {
                let _ = t.join();
            }
        }
    }

    /// Each clone as the report shows it; a clone that is not `ready` carries its console tail.
    fn guests(&self, waiting_for: &str) -> Vec<GuestReport> {
        self.clones
            .iter()
            .map(|c| {
                let spawn_s =
                    c.up.as_ref()
                        .map(|u| u.at.duration_since(c.spawned).as_secs_f64());
                // Taken once: a second lock in the literal below would wait on the first.
                let serial_line = c.serial_line.lock().unwrap().clone();
                let state = if c.died.is_some() {
                    "died"
                } else if c.failed.is_some() || c.up.is_none() {
                    "failed"
                } else {
                    "ready"
                };
                GuestReport {
                    index: c.index,
                    serial: c.serial.clone(),
                    hostname: c.hostname.clone(),
                    mac: c.mac.clone(),
                    port: c.port,
                    random: c.up.as_ref().and_then(|u| u.random.clone()),
                    marker_line: c.up.as_ref().and_then(|u| u.line.clone()),
                    serial_line: serial_line.as_ref().map(|l| l.0.clone()),
                    serial_line_s: serial_line
                        .as_ref()
                        .map(|l| l.1.duration_since(c.spawned).as_secs_f64()),
                    spawn_s,
                    state: state.into(),
                    error: c.died.clone().or(c.failed.clone()).or_else(|| {
                        c.up.is_none()
                            .then(|| format!("no {waiting_for} before the run ended"))
                    }),
                    console: (state != "ready").then(|| {
                        let mut t: Vec<String> = c.tail.lock().unwrap().iter().cloned().collect();
                        let err = c.stderr.lock().unwrap();
                        if !err.trim().is_empty() {
                            t.push(format!("--- qemu stderr ---\n{}", err.trim_end()));
                        }
                        t.join("\n")
                    }),
                }
            })
            .collect()
    }

    /// Start one clone's qemu and the thread that watches its console.
    fn spawn(&self, slot: &Slot, launch: Launch, merge: bool) -> Result<Clone> {
        let (index, argv) = (slot.index, &launch.argv);
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: only async-signal-safe calls (prctl, setpgid, personality) between fork and
        // exec.
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
        // Everything that can fail comes before the spawn, so no qemu starts unwatched.
        let mut copies: Vec<Box<dyn Write + Send>> = Vec::new();
        if self.o.console {
            copies.push(Box::new(std::io::stderr()));
        }
        if let Some(d) = &self.o.run_dir {
            let log = d.join(format!("clone-{index:04}.console"));
            copies.push(Box::new(
                fs::File::create(&log).map_err(|e| Error::io(log.display(), e))?,
            ));
        }
        let spawned = Instant::now();
        let mut child = cmd
            .spawn()
            .map_err(|e| Error::io(format!("starting {} for clone {index}", argv[0]), e))?;
        self.starting.fetch_add(1, Ordering::SeqCst);
        let pid = child.id();
        let stderr = keep_stderr(&mut child);
        let con = Console::new(
            child.stdout.take().expect("piped"),
            child.stdin.take(),
            (!copies.is_empty()).then(|| Box::new(Tee(copies)) as Box<dyn Write + Send>),
        );
        let (ask, ask_rx) = mpsc::channel::<Ask>();
        let w = Watch {
            index,
            deadline: spawned + self.o.answer_timeout,
            limit: self.o.answer_timeout,
            tx: self.tx.clone(),
            starting: self.starting.clone(),
            tail: Arc::default(),
            pong: Arc::new(AtomicBool::new(false)),
            serial_line: Arc::default(),
            helper_log: self
                .o
                .run_dir
                .as_ref()
                .map(|d| d.join(format!("clone-{index:04}.helper"))),
            ask: ask_rx,
        };
        let (tail, pong, serial_line) = (w.tail.clone(), w.pong.clone(), w.serial_line.clone());
        let bring_up = launch.bring_up;
        let thread = std::thread::spawn(move || w.run(con, bring_up));
        Ok(Clone {
            index,
            serial: slot.serial.clone(),
            hostname: launch.hostname,
            mac: slot.mac.clone(),
            port: slot.port,
            child: Some(child),
            pid,
            spawned,
            ask,
            tail,
            stderr,
            up: None,
            failed: None,
            died: None,
            pong,
            serial_line,
            thread: Some(thread),
        })
    }
}

/// qemu's stderr, the first 8 KiB of it, for the report of a clone that failed.
fn keep_stderr(child: &mut Child) -> Arc<Mutex<String>> {
    let text: Arc<Mutex<String>> = Arc::default();
    let mut err = child.stderr.take().expect("piped");
    let t = text.clone();
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
    text
}

/// One clone's console thread: bring the clone up, report, then keep the console drained and
/// answer liveness asks until told to stop or the console closes.
struct Watch {
    index: u32,
    deadline: Instant,
    limit: Duration,
    tx: mpsc::Sender<Note>,
    starting: Arc<AtomicU32>,
    tail: Arc<Mutex<VecDeque<String>>>,
    pong: Arc<AtomicBool>,
    /// The first serial-console line naming the clone's serial (helper clones), and when.
    serial_line: Arc<Mutex<Option<(String, Instant)>>>,
    /// Where a helper clone's second console is copied (a kept run directory).
    helper_log: Option<PathBuf>,
    ask: mpsc::Receiver<Ask>,
}

/// A helper clone's second console, and the serial its firmware is watched for.
struct Helper {
    con: Console,
    serial: Regex,
}

impl Watch {
    fn run(self, mut con: Console, bring_up: BringUp) {
        let mut helper = None;
        let up = match bring_up {
            BringUp::Restore {
                qmp,
                state,
                keep_socket,
                identity,
                helper: h,
            } => self
                .restore(
                    &mut con,
                    &qmp,
                    &state,
                    keep_socket,
                    h.as_ref().map(|h| &h.0),
                )
                .and_then(|hcon| {
                    helper = hcon.map(|hc| Helper {
                        con: hc,
                        serial: serial_regex(&h.as_ref().expect("a helper socket").1),
                    });
                    match helper.as_mut() {
                        Some(h) => self.give_identity(&mut h.con, &identity),
                        None => self.give_identity(&mut con, &identity),
                    }
                }),
            BringUp::Marker(re) => self.marker(&mut con, &re),
        };
        self.starting.fetch_sub(1, Ordering::SeqCst);
        let index = self.index;
        match up {
            Ok(up) => {
                let _ = self.tx.send(Note::Up { index, up });
            }
            Err(why) => {
                self.keep_tail(&con);
                let _ = self.tx.send(Note::Failed { index, why });
                return;
            }
        }
        self.serve(&mut con, helper);
        self.keep_tail(&con);
    }

    fn keep_tail(&self, con: &Console) {
        *self.tail.lock().unwrap() = con.tail().lines().map(String::from).collect();
    }

    /// Load the template's state; connect to the helper console, when the clone has one.
    fn restore(
        &self,
        con: &mut Console,
        qmp: &Path,
        state: &Path,
        keep_socket: bool,
        helper: Option<&PathBuf>,
    ) -> Result<Option<Console>, String> {
        // qemu listens on the helper socket from its start; connected before the guest runs,
        // nothing the helper says after the restore is lost.
        let hcon = helper.map(|h| {
            let log = self.helper_log.as_ref().and_then(|p| {
                fs::File::create(p)
                    .ok()
                    .map(|f| Box::new(f) as Box<dyn Write + Send>)
            });
            template::connect_helper(h, self.limit, log)
        });
        let restored = template::Qmp::connect(qmp, self.limit)
            .and_then(|mut q| q.restore_state(state, self.limit));
        if !keep_socket {
            let _ = fs::remove_file(qmp);
            if let Some(h) = helper {
                let _ = fs::remove_file(h);
            }
        }
        if let Err(e) = restored {
            // What qemu printed on the way down goes into the report.
            let never = Regex::new("$^").expect("valid");
            let _ = con.wait_for(&never, Instant::now() + Duration::from_millis(200));
            return Err(format!("restoring the template's state: {e}"));
        }
        hcon.transpose()
            .map_err(|e| format!("the clone's helper console: {e}"))
    }

    /// Give the identity on `con` until the init (or the helper) answers.
    fn give_identity(&self, con: &mut Console, identity: &str) -> Result<Up, String> {
        let answer = Regex::new(&format!("^{MARK_IDENTITY} ")).expect("valid");
        // The serial port takes input once the state is loaded: repeat until answered.
        while Instant::now() < self.deadline {
            if con.send(identity).is_err() {
                break;
            }
            let wait = (Instant::now() + Duration::from_millis(100)).min(self.deadline);
            match con.wait_for_line(&answer, wait) {
                Wait::Matched(l, at) => match Message::parse(&l) {
                    Ok(Message::Identity(a)) => {
                        return Ok(Up {
                            at,
                            random: Some(common::hex::encode(&a.random)),
                            line: None,
                        })
                    }
                    // A damaged answer: the line is sent again.
                    _ => tracing::debug!("clone {}: unreadable identity answer `{l}`", self.index),
                },
                Wait::Closed => {
                    return Err(format!(
                        "its qemu exited before the guest answered `{}`",
                        guest_protocol::CMD_IDENTITY
                    ))
                }
                Wait::Timeout => {}
            }
        }
        Err(format!(
            "no {MARK_IDENTITY} answer within {:.0} s of spawning",
            self.limit.as_secs_f64()
        ))
    }

    /// A cold boot is up at the first whole console line matching `re`, also after a shell
    /// prompt that went first ([`after_prompts`]).
    fn marker(&self, con: &mut Console, re: &Regex) -> Result<Up, String> {
        let every_line = Regex::new("").expect("valid");
        let prompt = Regex::new(SHELL_PROMPT).expect("valid");
        loop {
            match con.wait_for_line(&every_line, self.deadline) {
                Wait::Matched(line, at) => {
                    if let Some(text) = after_prompts(re, &prompt, &line) {
                        return Ok(Up {
                            at,
                            random: None,
                            line: Some(text.to_string()),
                        });
                    }
                }
                Wait::Closed => {
                    return Err(format!(
                        "its qemu exited before a console line matched /{re}/"
                    ))
                }
                Wait::Timeout => {
                    return Err(format!(
                        "no console line matched /{re}/ within {:.0} s of spawning",
                        self.limit.as_secs_f64()
                    ))
                }
            }
        }
    }

    /// Keep the console drained, answer liveness asks (on the helper console, when the clone
    /// has one) and, for a helper clone, keep the first console line naming its serial.
    fn serve(&self, con: &mut Console, mut helper: Option<Helper>) {
        let pong_re = Regex::new(&format!("^{MARK_PONG}( |$)")).expect("valid");
        let never = Regex::new("$^").expect("valid");
        loop {
            match self.ask.try_recv() {
                Ok(Ask::Ping) => {
                    let pc = match helper.as_mut() {
                        Some(h) => &mut h.con,
                        None => &mut *con,
                    };
                    if pc.send(&ConsoleCommand::Ping.to_string()).is_ok() {
                        if let Wait::Matched(..) =
                            pc.wait_for_line(&pong_re, Instant::now() + Duration::from_secs(30))
                        {
                            self.pong.store(true, Ordering::SeqCst);
                        }
                    }
                }
                Ok(Ask::Stop) | Err(mpsc::TryRecvError::Disconnected) => break,
                Err(mpsc::TryRecvError::Empty) => {}
            }
            let until = Instant::now() + Duration::from_millis(200);
            let looking = helper
                .as_ref()
                .filter(|_| self.serial_line.lock().unwrap().is_none());
            let waited = match looking {
                Some(h) => con.wait_for_line(&h.serial, until),
                None => con.wait_for(&never, until),
            };
            match waited {
                Wait::Matched(line, at) => *self.serial_line.lock().unwrap() = Some((line, at)),
                Wait::Closed => break,
                Wait::Timeout => {}
            }
            if let Some(h) = helper.as_mut() {
                // The helper's log lines are not needed; its reader must not pile them up.
                h.con.drain(Instant::now() + Duration::from_millis(1));
            }
        }
    }
}

/// The clone's serial as a whole word in a console line (`s-0001` is not in `s-00010`).
fn serial_regex(serial: &str) -> Regex {
    // What an identity word is made of (guest_protocol::is_identity_word).
    let w = "A-Za-z0-9_.-";
    Regex::new(&format!("(^|[^{w}]){}($|[^{w}])", regex::escape(serial)))
        .expect("an escaped serial is a valid regex")
}

/// An Erlang or IEx shell prompt at the start of a console line: `1> `, `(node@host)1> `,
/// `iex(1)> `, `iex(node@host)1> `. erlinit gives the shell the console the application prints
/// on, so when the shell's prompt comes first the application's line follows it on the same
/// line, and a marker anchored with `^` would never match.
const SHELL_PROMPT: &str = r"^(?:iex\(\d+\)|iex\([^)]+\)\d+|\([^)]+\)\d+|\d+)> ";

/// `line` if it matches `marker`, else what follows the shell prompts at its start if that
/// matches; the text returned is what the report keeps.
fn after_prompts<'l>(marker: &Regex, prompt: &Regex, line: &'l str) -> Option<&'l str> {
    let mut text = line;
    loop {
        if marker.is_match(text) {
            return Some(text);
        }
        text = &text[prompt.find(text)?.end()..];
    }
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

/// Notice a clone whose qemu ended: `died` when it had come up, else `failed`.
fn reap(c: &mut Clone) {
    let Some(ch) = c.child.as_mut() else {
        return;
    };
    if let Ok(Some(st)) = ch.try_wait() {
        if c.died.is_none() && c.failed.is_none() {
            if c.up.is_some() {
                c.died = Some(format!(
                    "its qemu exited ({st}) while the fleet was running"
                ));
            } else {
                c.failed = Some(format!("its qemu exited ({st}) before the guest was up"));
            }
        }
        c.child = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_serial_matches_as_a_whole_word_only() {
        let re = serial_regex("tpl-1000");
        for line in [
            "tpl-1000",
            "NERVES-STYLE-APP-IDENTITY serial=tpl-1000",
            "hostname nerves-x (tpl-1000).",
        ] {
            assert!(re.is_match(line), "{line}");
        }
        for line in ["serial=tpl-10000", "xtpl-1000", "tpl-1000.1", "tpl-100"] {
            assert!(!re.is_match(line), "{line}");
        }
        assert!(serial_regex("a.b").is_match("a.b") && !serial_regex("a.b").is_match("axb"));
    }

    #[test]
    fn a_marker_matches_after_the_shell_prompts_that_went_first() {
        let m = Regex::new("^NERVES-STYLE-APP-UP").unwrap();
        let p = Regex::new(SHELL_PROMPT).unwrap();
        let up = "NERVES-STYLE-APP-UP v0.1.0 serial=s-0001 ets_bytes=1";
        for line in [
            up.to_string(),
            format!("1> {up}"),
            format!("1> 2> {up}"),
            format!("(app@host)3> {up}"),
            format!("iex(1)> {up}"),
            format!("iex(app@nerves-0001)12> {up}"),
        ] {
            assert_eq!(after_prompts(&m, &p, &line), Some(up), "{line}");
        }
        for line in [
            format!("x1> {up}"),
            format!("> {up}"),
            "1> other".to_string(),
        ] {
            assert_eq!(after_prompts(&m, &p, &line), None, "{line}");
        }
        // An unanchored marker matches the whole line, prompt and all.
        let loose = Regex::new("APP-UP").unwrap();
        let line = format!("1> {up}");
        assert_eq!(after_prompts(&loose, &p, &line), Some(line.as_str()));
    }
}
