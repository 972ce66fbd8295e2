//! Drive one guest: spawn the given qemu command, sample its memory, wait for the readiness
//! marker, let it settle, ask the init for a memory snapshot, power it off.
//!
//! Console protocol (the `guest-protocol` crate): the init prints `IMGTOOL-READY uptime_ms=N
//! pid=P` once the program is up; on a `snapshot` line it prints `IMGTOOL-SNAPSHOT {json}`; on
//! `poweroff` it stops the program and powers the machine off (qemu `-no-reboot` then exits).

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use guest_protocol::{ConsoleCommand, MARK_LOG, MARK_SNAPSHOT};
use regex::Regex;

use crate::console::{Console, Wait};
use crate::procmem::{self, ProcMem};
use crate::report::{self, Boot, Guest, Host, MarkerInfo, Report, Sample, SCHEMA};
use crate::{Accel, Error};

/// The init's readiness line.
pub const DEFAULT_MARKER: &str = guest_protocol::READY_REGEX;

pub struct Options {
    /// A console line matching this means "booted".
    pub marker: Regex,
    /// Spawn to marker, at most.
    pub timeout: Duration,
    /// How long after the marker the settled figures are taken.
    pub settle: Duration,
    /// Time between memory samples.
    pub interval: Duration,
    /// Ask the init for a memory snapshot and power the guest off through the console. Off for
    /// guests that don't speak the protocol: they are killed after the settled reading.
    pub protocol: bool,
    /// Waiting for the snapshot line and for the exit after `poweroff`, each.
    pub command_timeout: Duration,
    /// Receives the console output as it arrives (a log file, stderr).
    pub console_copy: Option<Box<dyn Write + Send>>,
    /// What the report calls the guest (the image path).
    pub label: String,
    /// A unix socket that is qemu's second console (serial1, qemu::helper_console), where imgtool's helper
    /// answers snapshots in a firmware whose PID 1 is not imgtool's init.
    pub helper_socket: Option<std::path::PathBuf>,
}

impl Options {
    pub fn new(label: impl Into<String>) -> Self {
        Options {
            marker: Regex::new(DEFAULT_MARKER).expect("valid"),
            timeout: Duration::from_secs(120),
            settle: Duration::from_secs(3),
            interval: Duration::from_millis(100),
            protocol: true,
            command_timeout: Duration::from_secs(30),
            console_copy: None,
            label: label.into(),
            helper_socket: None,
        }
    }
}

/// Kills the child unless it was reaped.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

type Samples = Arc<Mutex<Vec<(Instant, ProcMem)>>>;

struct Sampler {
    stop: Arc<AtomicBool>,
    samples: Samples,
    handle: JoinHandle<()>,
}

impl Sampler {
    fn start(pid: u32, interval: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let samples: Samples = Arc::default();
        let (s2, v2) = (stop.clone(), samples.clone());
        let handle = std::thread::spawn(move || {
            let mut next = Instant::now();
            while !s2.load(Ordering::Relaxed) {
                match procmem::read(pid) {
                    Ok(m) => v2.lock().unwrap().push((Instant::now(), m)),
                    // Gone or a zombie: nothing more to read.
                    Err(_) => break,
                }
                next += interval;
                let now = Instant::now();
                if next > now {
                    std::thread::sleep(next - now);
                } else {
                    next = now;
                }
            }
        });
        Sampler {
            stop,
            samples,
            handle,
        }
    }

    fn since(&self, t: Instant) -> Vec<ProcMem> {
        let v = self.samples.lock().unwrap();
        v.iter()
            .filter(|(at, _)| *at >= t)
            .map(|(_, m)| *m)
            .collect()
    }

    fn finish(self) -> Vec<(Instant, ProcMem)> {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.handle.join();
        Arc::try_unwrap(self.samples)
            .map(|m| m.into_inner().unwrap())
            .unwrap_or_default()
    }
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

fn collect_stderr(
    mut err: impl Read + Send + 'static,
) -> (Arc<Mutex<String>>, std::thread::JoinHandle<()>) {
    let text: Arc<Mutex<String>> = Arc::default();
    let t2 = text.clone();
    let handle = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = err.read(&mut buf) {
            if n == 0 {
                break;
            }
            let mut s = t2.lock().unwrap();
            if s.len() < 16 * 1024 {
                s.push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        }
    });
    (text, handle)
}

fn argv_of(cmd: &Command) -> Vec<String> {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|s| s.to_string_lossy().into_owned())
        .collect()
}

/// Boot the guest `cmd` starts (stdin, stdout and stderr are taken over) and measure it.
pub fn run(mut cmd: Command, accel: Accel, mut opts: Options) -> Result<Report, Error> {
    let argv = argv_of(&cmd);
    let qemu_version = crate::qemu_version(&argv[0]);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let child = cmd.spawn().map_err(|e| Error::Spawn(argv[0].clone(), e))?;
    let mut guard = Guard(child);
    let pid = guard.0.id();
    let sampler = Sampler::start(pid, opts.interval);
    let (stderr, stderr_reader) = collect_stderr(guard.0.stderr.take().expect("piped"));
    let mut con = Console::new(
        guard.0.stdout.take().expect("piped"),
        guard.0.stdin.take(),
        opts.console_copy.take(),
    );
    let mut helper = opts.helper_socket.as_deref().and_then(connect_helper);
    let failed = |con: &Console, what: String| Error::Guest {
        what,
        console: con.tail(),
        stderr: stderr.lock().unwrap().trim_end().to_string(),
    };

    // Our init ends every line it prints, so its marker is matched on whole lines; other
    // guests' markers may be prompts without a newline (the console tells a prompt from a line
    // still being written, so the report keeps a whole line either way).
    let waited = if opts.protocol {
        con.wait_for_line(&opts.marker, start + opts.timeout)
    } else {
        con.wait_for(&opts.marker, start + opts.timeout)
    };
    let (marker_line, marker_at) = match waited {
        Wait::Matched(l, at) => (l, at),
        Wait::Timeout => {
            return Err(failed(
                &con,
                format!(
                    "no console line matched /{}/ within {} s (raise --timeout, or check --marker)",
                    opts.marker,
                    opts.timeout.as_secs_f64()
                ),
            ))
        }
        Wait::Closed => {
            let status = guard.0.wait().map(|s| s.to_string()).unwrap_or_default();
            // Let the reader take the last of stderr: that is usually qemu's reason. Bounded,
            // since a grandchild may still hold the pipe open.
            let until = Instant::now() + Duration::from_secs(1);
            while !stderr_reader.is_finished() && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(10));
            }
            return Err(failed(
                &con,
                format!(
                    "{} exited ({status}) before a console line matched /{}/",
                    argv[0], opts.marker
                ),
            ));
        }
    };
    let marker_s = marker_at.duration_since(start).as_secs_f64();
    // A marker of the user's own (another firmware's line): the protocol only if imgtool's
    // init is there to answer it.
    if opts.protocol && opts.marker.as_str() != DEFAULT_MARKER && !con.saw_protocol() {
        tracing::info!("no imgtool init on the console: host figures (and a helper's, if any)");
        opts.protocol = false;
    }
    tracing::info!("marker after {marker_s:.2} s: {marker_line}");

    // Settle: the console keeps being read (dropped) so the guest never blocks on output.
    let settled_at = marker_at + opts.settle;
    con.drain(settled_at);
    let window = opts.settle.min(Duration::from_secs(1));
    let mut recent = sampler.since(settled_at - window);
    if recent.is_empty() {
        recent.push(procmem::read(pid)?);
    }
    let rss_settled_kib = median(recent.iter().map(|m| m.rss_kib).collect());
    let pss_settled_kib = median(recent.iter().map(|m| m.pss_kib).collect());
    let anon: Vec<u64> = recent.iter().filter_map(|m| m.anon_kib).collect();
    let anon_settled_kib = (!anon.is_empty()).then(|| median(anon));
    let settle_s = Instant::now().duration_since(marker_at).as_secs_f64();
    let peers_at_settle = procmem::peers(pid);
    let loadavg_settled = procmem::loadavg();
    if peers_at_settle > 0 {
        tracing::warn!(
            "{peers_at_settle} other process(es) run {} now: shared pages lower this guest's PSS",
            argv[0]
        );
    }

    let mut guest: Option<Guest> = None;
    let mut exit_s = None;
    let mut clean_poweroff = false;
    let mut at_end = None;
    if opts.protocol {
        con.send(&ConsoleCommand::Snapshot.to_string())?;
        let re = Regex::new(&format!("^{MARK_SNAPSHOT} ")).expect("valid");
        match con.wait_for_line(&re, Instant::now() + opts.command_timeout) {
            Wait::Matched(line, _) => {
                guest = Some(
                    report::parse_snapshot(&line)
                        .map_err(|e| failed(&con, format!("the guest's snapshot line: {e}")))?,
                );
            }
            _ => {
                return Err(failed(
                    &con,
                    format!(
                    "the guest did not answer `snapshot` with an {MARK_SNAPSHOT} line within {} s \
                         (a guest without imgtool's init needs --no-snapshot)",
                    opts.command_timeout.as_secs_f64()
                ),
                ))
            }
        }
        // The high-water mark while the guest still runs: exact up to here, whatever the
        // sampler saw.
        at_end = procmem::read(pid).ok();
        con.send(&ConsoleCommand::Poweroff.to_string())?;
        let deadline = Instant::now() + opts.command_timeout;
        con.drain(deadline);
        // The console closes a moment before the process is reaped.
        while Instant::now() < deadline {
            if let Some(st) = guard
                .0
                .try_wait()
                .map_err(|e| Error::Io("wait".into(), e))?
            {
                exit_s = Some(start.elapsed().as_secs_f64());
                clean_poweroff = st.success();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if !clean_poweroff {
            tracing::warn!("the guest did not power off cleanly when asked; killing it");
        }
    }
    if !opts.protocol {
        if let Some(h) = helper.as_mut() {
            guest = helper_snapshot(h, opts.command_timeout);
        }
        at_end = procmem::read(pid).ok();
    }
    drop(guard);
    let samples = sampler.finish();

    // VmHWM only grows, so the last reading is the peak; samples cover a last reading that
    // failed (the guest died on its own).
    let hwm = samples
        .iter()
        .map(|(_, m)| m.hwm_kib.max(m.rss_kib))
        .chain(at_end.map(|m| m.hwm_kib))
        .max()
        .unwrap_or(0);
    let pss_peak_kib = samples.iter().map(|(_, m)| m.pss_kib).max().unwrap_or(0);
    Ok(Report {
        schema: SCHEMA,
        accel: accel.as_str().into(),
        qemu_version,
        memory_mib: crate::memory_mib(&argv),
        runs: 1,
        spread: Default::default(),
        image: opts.label,
        argv,
        marker: MarkerInfo {
            regex: opts.marker.to_string(),
            line: marker_line,
        },
        boot: Boot {
            marker_s,
            exit_s,
            clean_poweroff,
        },
        host: Host {
            rss_peak_kib: hwm,
            pss_peak_kib,
            rss_settled_kib,
            pss_settled_kib,
            anon_settled_kib,
            settle_s,
            peers_at_settle,
            loadavg_settled,
        },
        guest,
        samples: samples
            .iter()
            .map(|(at, m)| Sample {
                t_s: (at.duration_since(start).as_secs_f64() * 1000.0).round() / 1000.0,
                rss_kib: m.rss_kib,
                pss_kib: m.pss_kib,
            })
            .collect(),
    })
}

/// Connect to qemu's helper console socket (qemu makes it before the guest runs).
fn connect_helper(path: &std::path::Path) -> Option<Console> {
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        match std::os::unix::net::UnixStream::connect(path) {
            Ok(s) => {
                let r = s.try_clone().ok()?;
                return Some(Console::with_input(r, Some(Box::new(s)), None));
            }
            Err(_) if Instant::now() < until => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => {
                tracing::warn!("helper console {}: {e}", path.display());
                return None;
            }
        }
    }
}

/// The guest figures from imgtool's helper, if the firmware has one: it logs on its console
/// at boot, so a silent console means no helper and no wait.
fn helper_snapshot(h: &mut Console, timeout: Duration) -> Option<Guest> {
    let any = Regex::new(&format!("^{MARK_LOG} ")).expect("valid");
    // What it said at boot is already queued: a short wait reads it.
    let spoke = matches!(
        h.wait_for_line(&any, Instant::now() + Duration::from_millis(300)),
        Wait::Matched(..)
    );
    if !spoke {
        tracing::info!("no imgtool helper in this firmware: host figures only");
        return None;
    }
    h.send(&ConsoleCommand::Snapshot.to_string()).ok()?;
    let re = Regex::new(&format!("^{MARK_SNAPSHOT} ")).expect("valid");
    match h.wait_for_line(&re, Instant::now() + timeout) {
        Wait::Matched(line, _) => match report::parse_snapshot(&line) {
            Ok(g) => Some(g),
            Err(e) => {
                tracing::warn!("the helper's snapshot line: {e}");
                None
            }
        },
        _ => {
            tracing::warn!(
                "the helper did not answer `snapshot` within {} s",
                timeout.as_secs_f64()
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in guest speaking the init's console protocol, in sh: it grows its memory after
    /// the marker (so the sampler has something to see), answers `snapshot`, exits on `poweroff`.
    const FAKE_INIT: &str = r#"
        echo 'booting'
        sleep 0.3
        echo 'IMGTOOL-READY uptime_ms=300 pid=2'
        while read cmd; do
          case "$cmd" in
            snapshot) echo 'IMGTOOL-SNAPSHOT {"seq":1,"uptime_ms":900,"since_ready_ms":600,"meminfo":{"MemTotal":102400,"MemAvailable":61000,"MemFree":50000},"process":{"pid":2,"status":{"VmRSS":37000},"smaps_rollup":{"Pss":36000}},"zram":null}' ;;
            poweroff) echo 'IMGTOOL-EXIT status=0'; exit 0 ;;
          esac
        done
    "#;

    fn sh(script: &str) -> Command {
        let mut c = Command::new("sh");
        c.args(["-c", script]);
        c
    }

    #[test]
    fn full_run_against_a_protocol_speaking_child() {
        let mut o = Options::new("fake");
        o.settle = Duration::from_millis(600);
        o.interval = Duration::from_millis(50);
        let r = run(sh(FAKE_INIT), Accel::Tcg, o).unwrap();
        assert!(
            r.boot.marker_s >= 0.25 && r.boot.marker_s < 5.0,
            "{:?}",
            r.boot
        );
        assert!(r.boot.clean_poweroff);
        assert!(r.boot.exit_s.unwrap() >= r.boot.marker_s + 0.5);
        assert_eq!(r.marker.line, "IMGTOOL-READY uptime_ms=300 pid=2");
        let g = r.guest.unwrap();
        assert_eq!((g.mem_total_kib, g.mem_available_kib), (102400, 61000));
        assert_eq!(g.program_rss_kib, Some(37000));
        // sh's real figures: nonzero, peak at least the settled value.
        assert!(
            r.host.rss_settled_kib > 0 && r.host.pss_settled_kib > 0,
            "{:?}",
            r.host
        );
        assert!(r.host.rss_peak_kib >= r.host.rss_settled_kib);
        assert!(r.samples.len() >= 10, "{}", r.samples.len());
        assert!(r.samples.windows(2).all(|w| w[0].t_s <= w[1].t_s));
        assert_eq!(r.argv[0], "sh");
    }

    #[test]
    fn timeout_names_the_marker_and_shows_the_console() {
        let mut o = Options::new("fake");
        o.timeout = Duration::from_millis(500);
        let start = Instant::now();
        let e = run(sh("echo kernel panic; sleep 30"), Accel::Tcg, o).unwrap_err();
        assert!(start.elapsed() < Duration::from_secs(5));
        let msg = e.to_string();
        assert!(
            msg.contains("IMGTOOL-READY") && msg.contains("0.5 s"),
            "{msg}"
        );
        assert!(msg.contains("kernel panic"), "{msg}");
    }

    #[test]
    fn early_exit_and_missing_program_are_errors() {
        let e = run(
            sh("echo 'qemu: bad disk' >&2; exit 1"),
            Accel::Tcg,
            Options::new("x"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("exited") && e.contains("bad disk"), "{e}");
        let e = run(
            Command::new("/nonexistent/qemu-system-aarch64"),
            Accel::Tcg,
            Options::new("x"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("/nonexistent/qemu-system-aarch64"), "{e}");
    }

    /// A marker line that reaches the console in two pieces is reported whole.
    #[test]
    fn a_marker_written_in_pieces_is_reported_whole() {
        let mut o = Options::new("plain");
        o.marker = Regex::new("NERVES-STYLE-APP-UP").unwrap();
        o.protocol = false;
        o.settle = Duration::from_millis(200);
        let script = "printf 'NERVES-STYLE-APP-UP v'; sleep 0.05; echo '0.4.0'; sleep 30";
        let r = run(sh(script), Accel::Tcg, o).unwrap();
        assert_eq!(r.marker.line, "NERVES-STYLE-APP-UP v0.4.0");
    }

    #[test]
    fn a_guest_without_the_protocol_is_measured_and_killed() {
        let mut o = Options::new("plain");
        o.marker = Regex::new("login:").unwrap();
        o.protocol = false;
        o.settle = Duration::from_millis(200);
        let r = run(sh("printf 'login: '; sleep 30"), Accel::Tcg, o).unwrap();
        assert!(r.guest.is_none() && !r.boot.clean_poweroff);
        assert!(r.host.rss_peak_kib > 0);
    }
}
