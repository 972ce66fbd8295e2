//! PID 1 of imgtool's guests (the role Nerves' erlinit plays): mount the kernel's filesystems,
//! apply sysctls, set up zram swap, mount the data partition, start the program (the BEAM),
//! relay its output to the console, say when it is ready, print memory snapshots on request,
//! and power off when it ends. The config file is in `initconf.rs`, shared with the host-side
//! `rootfs` crate; the console protocol is the `guest-protocol` crate.

#[path = "../../src/initconf.rs"]
#[allow(dead_code)] // the host half (render, parsing helpers) is unused here
mod initconf;

use std::ffi::{c_char, c_int, c_long, c_ulong, CString};
use std::io::{BufRead, Read, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use guest_protocol::*;
use initconf::*;

#[path = "../../src/guestenv.rs"]
mod guestenv;

extern "C" {
    fn mount(
        src: *const c_char,
        target: *const c_char,
        fstype: *const c_char,
        flags: c_ulong,
        data: *const std::ffi::c_void,
    ) -> c_int;
    fn umount(target: *const c_char) -> c_int;
    fn swapon(path: *const c_char, flags: c_int) -> c_int;
    fn reboot(cmd: c_int) -> c_int;
    fn sync();
    fn sethostname(name: *const c_char, len: usize) -> c_int;
    fn sysconf(name: c_int) -> c_long;
    fn getpid() -> c_int;
    fn waitpid(pid: c_int, status: *mut c_int, options: c_int) -> c_int;
    fn kill(pid: c_int, sig: c_int) -> c_int;
    fn tcgetattr(fd: c_int, t: *mut Termios) -> c_int;
    fn tcsetattr(fd: c_int, act: c_int, t: *const Termios) -> c_int;
    fn tcdrain(fd: c_int) -> c_int;
    fn ioctl(fd: c_int, req: c_ulong, ...) -> c_int;
    fn socket(domain: c_int, ty: c_int, proto: c_int) -> c_int;
    fn close(fd: c_int) -> c_int;
    fn fork() -> c_int;
    fn setsid() -> c_int;
    fn dup2(old: c_int, new: c_int) -> c_int;
}

/// `struct termios` as musl (and glibc) lay it out on Linux.
#[repr(C)]
struct Termios {
    iflag: u32,
    oflag: u32,
    cflag: u32,
    lflag: u32,
    line: u8,
    cc: [u8; 32],
    ispeed: u32,
    ospeed: u32,
}

const RB_POWER_OFF: c_int = 0x4321_fedc;
const SC_PAGESIZE: c_int = 30;
const SWAP_FLAG_PREFER: c_int = 0x8000;
const SWAP_FLAG_DISCARD: c_int = 0x10000;
const ECHO: u32 = 0o10;
const SIGTERM: c_int = 15;
/// erlinit's "power off" request.
const SIGUSR2: c_int = 12;
const SIGKILL: c_int = 9;
const EBUSY: i32 = 16;
// include/uapi/linux/random.h: _IOW('R', 0x03, int[2]) and _IO('R', 0x07).
const RNDADDENTROPY: c_ulong = 0x4008_5203;
const RNDRESEEDCRNG: c_ulong = 0x5207;
// include/uapi/linux/sockios.h, if.h, if_arp.h.
const SIOCGIFFLAGS: c_ulong = 0x8913;
const SIOCSIFFLAGS: c_ulong = 0x8914;
const SIOCSIFADDR: c_ulong = 0x8916;
const SIOCSIFNETMASK: c_ulong = 0x891c;
const SIOCSIFHWADDR: c_ulong = 0x8924;
const IFF_UP: i16 = 1;
const ARPHRD_ETHER: u16 = 1;
const AF_INET: c_int = 2;
const SOCK_DGRAM: c_int = 2;

/// Whether the console's last byte was a newline, so our marker lines always start a line even
/// when the program left one unfinished.
static AT_LINE_START: AtomicBool = AtomicBool::new(true);

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    if !AT_LINE_START.load(Ordering::SeqCst) {
        let _ = out.write_all(b"\n");
    }
    let _ = out.write_all(line.as_bytes());
    let _ = out.write_all(b"\n");
    let _ = out.flush();
    AT_LINE_START.store(true, Ordering::SeqCst);
}

/// A helper that has not yet moved to its own console logs as plain text: the user's console
/// belongs to the firmware's PID 1, and protocol lines there would look like imgtool's init.
static PLAIN_LOG: AtomicBool = AtomicBool::new(false);

fn log(msg: &str) {
    if PLAIN_LOG.load(Ordering::SeqCst) {
        eprintln!("imgtool-helper: {msg}");
        return;
    }
    say(&Message::Log(msg.into()).to_string());
}

fn uptime_ms() -> u64 {
    std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0, |s| (s * 1000.0) as u64)
}

fn cstr(s: &str) -> CString {
    CString::new(s).unwrap_or_default()
}

fn do_mount(m: &MountStep) -> std::io::Result<()> {
    let _ = std::fs::create_dir_all(&m.target);
    let (src, tgt, fs, data) = (
        cstr(&m.source),
        cstr(&m.target),
        cstr(&m.fstype),
        cstr(&m.data),
    );
    let data_ptr = if m.data.is_empty() {
        std::ptr::null()
    } else {
        data.as_ptr().cast()
    };
    // SAFETY: all pointers are valid NUL-terminated strings for the call's duration.
    let r = unsafe {
        mount(
            src.as_ptr(),
            tgt.as_ptr(),
            fs.as_ptr(),
            m.flags as c_ulong,
            data_ptr,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn setup_mounts(c: &InitConfig) {
    for m in mount_plan(c) {
        match do_mount(&m) {
            Ok(()) => {
                if !m.required {
                    log(&format!(
                        "mounted {} ({}) at {}",
                        m.source, m.fstype, m.target
                    ));
                }
            }
            Err(e) if e.raw_os_error() == Some(EBUSY) && m.fstype == "devtmpfs" => {}
            Err(e) if m.required => log(&format!(
                "error: mount {} on {} ({}): {e}",
                m.source, m.target, m.fstype
            )),
            Err(e) => log(&format!(
                "warning: data partition {} not mounted on {} ({}): {e}; going on without it",
                m.source, m.target, m.fstype
            )),
        }
    }
}

fn apply_sysctls(c: &InitConfig) {
    for (k, v) in &c.sysctls {
        let res = sysctl_path(k)
            .ok_or_else(|| std::io::Error::other("bad name"))
            .and_then(|p| std::fs::write(p, v));
        if let Err(e) = res {
            log(&format!("warning: sysctl {k}={v}: {e}"));
        }
    }
    if !c.sysctls.is_empty() {
        log(&format!("applied {} sysctls", c.sysctls.len()));
    }
    write_knobs(&c.writes, "boot");
}

/// Write kernel knobs (/proc/sys, /sys paths); a failure is logged, not fatal.
fn write_knobs(knobs: &[(String, String)], when: &str) {
    let mut n = 0;
    for (p, v) in knobs {
        match std::fs::write(p, v) {
            Ok(()) => n += 1,
            Err(e) => log(&format!("warning: {p}={v}: {e}")),
        }
    }
    if n > 0 {
        log(&format!("wrote {n} kernel knob(s) at {when}"));
    }
}

fn random_uuid() -> [u8; 16] {
    let mut u = [0u8; 16];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = f.read_exact(&mut u);
    }
    u[6] = (u[6] & 0x0f) | 0x40; // version 4
    u[8] = (u[8] & 0x3f) | 0x80; // RFC 4122 variant
    u
}

fn setup_zram(z: &Zram) -> Result<(), String> {
    let sys = "/sys/block/zram0";
    if !std::path::Path::new(sys).exists() {
        std::fs::read_to_string("/sys/class/zram-control/hot_add")
            .map_err(|e| format!("no zram device (kernel without CONFIG_ZRAM?): {e}"))?;
    }
    if !z.algorithm.is_empty() {
        if let Err(e) = std::fs::write(format!("{sys}/comp_algorithm"), &z.algorithm) {
            let have = std::fs::read_to_string(format!("{sys}/comp_algorithm")).unwrap_or_default();
            log(&format!(
                "warning: zram algorithm {}: {e} (available: {}); keeping the default",
                z.algorithm,
                have.trim()
            ));
        }
    }
    std::fs::write(format!("{sys}/disksize"), z.size_bytes.to_string())
        .map_err(|e| format!("zram disksize {}: {e}", z.size_bytes))?;
    // SAFETY: sysconf has no memory-safety preconditions.
    let page = unsafe { sysconf(SC_PAGESIZE) }.max(4096) as usize;
    let header = swap_header(page, z.size_bytes, random_uuid())?;
    let dev = "/dev/zram0";
    let start = Instant::now();
    let mut f = loop {
        match std::fs::OpenOptions::new().write(true).open(dev) {
            Ok(f) => break f,
            Err(e) if start.elapsed() > Duration::from_secs(2) => {
                return Err(format!("open {dev}: {e}"))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    f.write_all(&header)
        .and_then(|_| f.sync_all())
        .map_err(|e| format!("write swap header to {dev}: {e}"))?;
    drop(f);
    let flags = SWAP_FLAG_PREFER | SWAP_FLAG_DISCARD | (z.priority & 0x7fff);
    let p = cstr(dev);
    // SAFETY: p is a valid NUL-terminated path.
    if unsafe { swapon(p.as_ptr(), flags) } != 0 {
        return Err(format!("swapon {dev}: {}", std::io::Error::last_os_error()));
    }
    let algo = std::fs::read_to_string(format!("{sys}/comp_algorithm")).unwrap_or_default();
    let algo = algo
        .split_whitespace()
        .find(|a| a.starts_with('['))
        .unwrap_or("?")
        .trim_matches(['[', ']']);
    log(&format!(
        "zram swap on: {} KiB, {algo}, priority {}",
        z.size_bytes / 1024,
        z.priority
    ));
    Ok(())
}

fn echo_off() {
    let mut t = Termios {
        iflag: 0,
        oflag: 0,
        cflag: 0,
        lflag: 0,
        line: 0,
        cc: [0; 32],
        ispeed: 0,
        ospeed: 0,
    };
    // SAFETY: t is a properly laid-out termios; fd 0 may not be a tty, then both calls fail.
    unsafe {
        if tcgetattr(0, &mut t) == 0 {
            t.lflag &= !ECHO;
            tcsetattr(0, 0, &t);
        }
    }
}

fn poweroff(data: Option<&DataMount>) -> ! {
    // SAFETY: plain syscalls without pointers (umount takes a valid C string).
    unsafe {
        sync();
        if let Some(d) = data {
            let m = cstr(&d.mountpoint);
            umount(m.as_ptr());
        }
        sync();
    }
    log("power off");
    // SAFETY: plain syscalls. The console is a tty whose driver sends buffered output from
    // interrupts: without the drain, the last lines die with the machine.
    unsafe {
        tcdrain(1);
        reboot(RB_POWER_OFF);
    }
    // Only reached if reboot(2) failed (not PID 1 or no privilege).
    std::process::exit(1)
}

/// `struct ifreq` (include/uapi/linux/if.h): the name, then a 24-byte union of which we use the
/// sockaddr and the flags.
#[repr(C)]
struct IfReq {
    name: [u8; 16],
    data: [u8; 24],
}

impl IfReq {
    fn new(ifname: &str) -> IfReq {
        let mut r = IfReq {
            name: [0; 16],
            data: [0; 24],
        };
        let n = ifname.len().min(15);
        r.name[..n].copy_from_slice(&ifname.as_bytes()[..n]);
        r
    }
}

/// Set eth0's MAC (down, set, up) and give it the address qemu's user-mode network hands out
/// (10.0.2.15/24), so a host port forward reaches the guest.
fn set_mac(mac: [u8; 6]) -> Result<(), String> {
    // SAFETY: socket(2) has no pointer arguments.
    let fd = unsafe { socket(AF_INET, SOCK_DGRAM, 0) };
    if fd < 0 {
        return Err(format!("socket: {}", std::io::Error::last_os_error()));
    }
    let call = |req: c_ulong, r: &mut IfReq, what: &str| -> Result<(), String> {
        // SAFETY: r is a valid, writable ifreq for the whole call.
        if unsafe { ioctl(fd, req, r as *mut IfReq) } < 0 {
            return Err(format!("eth0 {what}: {}", std::io::Error::last_os_error()));
        }
        Ok(())
    };
    let res = (|| {
        let mut r = IfReq::new("eth0");
        call(SIOCGIFFLAGS, &mut r, "flags")?;
        let flags = i16::from_ne_bytes([r.data[0], r.data[1]]);
        let mut down = IfReq::new("eth0");
        down.data[..2].copy_from_slice(&(flags & !IFF_UP).to_ne_bytes());
        call(SIOCSIFFLAGS, &mut down, "down")?;
        let mut hw = IfReq::new("eth0");
        hw.data[..2].copy_from_slice(&ARPHRD_ETHER.to_ne_bytes());
        hw.data[2..8].copy_from_slice(&mac);
        call(SIOCSIFHWADDR, &mut hw, "set MAC")?;
        let mut up = IfReq::new("eth0");
        up.data[..2].copy_from_slice(&(flags | IFF_UP).to_ne_bytes());
        call(SIOCSIFFLAGS, &mut up, "up")?;
        for (req, addr, what) in [
            (SIOCSIFADDR, [10u8, 0, 2, 15], "address"),
            (SIOCSIFNETMASK, [255, 255, 255, 0], "netmask"),
        ] {
            let mut a = IfReq::new("eth0");
            a.data[..2].copy_from_slice(&(AF_INET as u16).to_ne_bytes());
            a.data[4..8].copy_from_slice(&addr);
            call(req, &mut a, what)?;
        }
        Ok(())
    })();
    // SAFETY: fd is ours.
    unsafe { close(fd) };
    res
}

/// Mix the host's bytes into the kernel's RNG, credit them, and force a reseed, so a clone's
/// random numbers part from its template's at once.
fn reseed(entropy: &[u8]) -> Result<(), String> {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/urandom")
        .map_err(|e| format!("/dev/urandom: {e}"))?;
    use std::os::fd::AsRawFd;
    // struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
    let mut info: Vec<u8> = Vec::with_capacity(8 + entropy.len() + 3);
    info.extend_from_slice(&((entropy.len() * 8) as c_int).to_ne_bytes());
    info.extend_from_slice(&(entropy.len() as c_int).to_ne_bytes());
    info.extend_from_slice(entropy);
    info.resize(info.len().div_ceil(4) * 4, 0);
    // SAFETY: info holds the header and buf_size bytes; the kernel only reads it.
    if unsafe { ioctl(f.as_raw_fd(), RNDADDENTROPY, info.as_ptr()) } < 0 {
        return Err(format!(
            "RNDADDENTROPY: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: no argument.
    if unsafe { ioctl(f.as_raw_fd(), RNDRESEEDCRNG) } < 0 {
        return Err(format!(
            "RNDRESEEDCRNG: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// Apply a clone's identity; returns the answer line (with bytes read from the reseeded RNG).
/// What is slow (the disk) is left to [`publish_identity`], after the answer.
fn apply_identity(id: &Identity) -> String {
    if let Err(e) = reseed(&id.entropy) {
        log(&format!("warning: identity: {e}"));
    }
    // SAFETY: pointer and length describe the hostname's bytes.
    unsafe { sethostname(id.hostname.as_ptr().cast(), id.hostname.len()) };
    if let Some(mac) = id.mac_bytes() {
        if let Err(e) = set_mac(mac) {
            log(&format!("warning: identity: {e}"));
        }
    }
    let mut random = [0u8; 16];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = f.read_exact(&mut random);
    }
    Message::Identity(IdentityAnswer {
        serial: id.serial.clone(),
        hostname: id.hostname.clone(),
        mac: id.mac.clone(),
        random: random.to_vec(),
        uptime_ms: uptime_ms(),
    })
    .to_string()
}

/// After the answer, off the spawn path: `nerves_serial_number` into the disk's U-Boot env
/// (where Nerves programs read it), then [`IDENTITY_PATH`], so that a program that waits for
/// that file finds the env already updated. The same for imgtool's init and for the helper in
/// a firmware of someone else's (README, "Your own firmware").
fn publish_identity(id: &Identity) {
    let start = Instant::now();
    let env = guestenv::locate(&guestenv::GuestPaths::system()).and_then(|place| {
        guestenv::set_vars(&place, &[("nerves_serial_number", &id.serial)])?;
        Ok(place)
    });
    match env {
        Ok(place) => log(&format!(
            "identity: nerves_serial_number={} in the U-Boot env ({}) in {} ms",
            id.serial,
            place.describe(),
            start.elapsed().as_millis()
        )),
        Err(e) => log(&format!(
            "error: identity: nerves_serial_number not written to the U-Boot env: {e}"
        )),
    }
    let dir = std::path::Path::new(IDENTITY_PATH)
        .parent()
        .unwrap_or(std::path::Path::new("/run"));
    // Written beside it and renamed over it: a reader sees no file, or the whole of one.
    let tmp = dir.join(".identity.tmp");
    let written = std::fs::create_dir_all(dir)
        .and_then(|_| std::fs::write(&tmp, id.file_text()))
        .and_then(|_| std::fs::rename(&tmp, IDENTITY_PATH));
    if let Err(e) = written {
        log(&format!("warning: identity: {IDENTITY_PATH}: {e}"));
    }
}

/// `identity.port`: answer every TCP connection with the identity file (or say there is none
/// yet) and close, so a person can ask a clone behind its host port forward who it is.
fn identity_listener(port: u16) {
    let listener = match std::net::TcpListener::bind(("0.0.0.0", port)) {
        Ok(l) => l,
        Err(e) => {
            log(&format!("warning: identity port {port}: {e}"));
            return;
        }
    };
    let spawned = std::thread::Builder::new()
        .name("identity-port".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let text = std::fs::read_to_string(IDENTITY_PATH)
                    .unwrap_or_else(|_| "identity=none (not given one yet)\n".into());
                let _ = conn.set_write_timeout(Some(Duration::from_secs(2)));
                let _ = conn.write_all(text.as_bytes());
            }
        });
    match spawned {
        Ok(_) => log(&format!("identity on tcp port {port}")),
        Err(e) => log(&format!("warning: identity port {port}: {e}")),
    }
}

enum Event {
    Command(ConsoleCommand),
    Ready,
    Exited(c_int),
}

/// Identities as the host gives them: applied once each, answered every time (the host repeats
/// the line until it sees the answer), published to the disk in order, off the console thread.
#[derive(Default)]
struct Identities {
    current: Option<(Identity, String)>,
    publisher: Option<mpsc::Sender<Identity>>,
}

impl Identities {
    fn take(&mut self, id: Identity) {
        if let Some((had, answer)) = &self.current {
            if *had == id {
                say(answer);
                return;
            }
        }
        let answer = apply_identity(&id);
        say(&answer);
        let p = self.publisher.get_or_insert_with(|| {
            let (ptx, prx) = mpsc::channel::<Identity>();
            std::thread::spawn(move || {
                for id in prx {
                    publish_identity(&id);
                }
            });
            ptx
        });
        let _ = p.send(id.clone());
        self.current = Some((id, answer));
    }
}

/// Console commands from stdin, as events (malformed lines are answered with an error).
fn read_commands(tx: mpsc::Sender<Event>) {
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        for l in stdin.lock().lines() {
            let Ok(l) = l else { break };
            match ConsoleCommand::parse(&l) {
                Ok(cmd) => {
                    if tx.send(Event::Command(cmd)).is_err() {
                        break;
                    }
                }
                Err(_) if l.trim().is_empty() => {}
                Err(ParseError::NotProtocol) => {
                    say(&Message::Error(format!("unknown command `{}`", l.trim())).to_string())
                }
                Err(e) => say(&Message::Error(e.to_string()).to_string()),
            }
        }
    });
}

fn exit_line(ended: Ended) -> String {
    Message::Exit {
        ended,
        uptime_ms: uptime_ms(),
    }
    .to_string()
}

fn snapshot(seq: u64, pid: Option<u32>, ready_at: Option<u64>, c: &InitConfig) {
    let read = |p: String| std::fs::read_to_string(p).unwrap_or_default();
    // The profile as the guest sees it: each sysctl read back, the program's flags, swap.
    let sysctl = c
        .sysctls
        .iter()
        .map(|(k, _)| {
            let now = sysctl_path(k).map(read).unwrap_or_default();
            (
                k.clone(),
                now.split_whitespace().collect::<Vec<_>>().join(" "),
            )
        })
        .collect();
    let cmdline = pid
        .and_then(|p| std::fs::read(format!("/proc/{p}/cmdline")).ok())
        .unwrap_or_default();
    let in_force = InForce::from_proc(sysctl, &cmdline, &read("/proc/swaps".into()));
    let now = uptime_ms();
    let (status, rollup) = match pid {
        Some(p) => (
            read(format!("/proc/{p}/status")),
            read(format!("/proc/{p}/smaps_rollup")),
        ),
        None => (String::new(), String::new()),
    };
    let mm = std::fs::read_to_string("/sys/block/zram0/mm_stat").ok();
    let s = Snapshot::from_proc(&SnapshotInput {
        seq,
        uptime_ms: now,
        since_ready_ms: ready_at.map(|r| now.saturating_sub(r)),
        meminfo: &read("/proc/meminfo".into()),
        pid,
        status: &status,
        smaps_rollup: &rollup,
        zram_mm_stat: mm.as_deref(),
        in_force: Some(in_force),
    });
    say(&Message::Snapshot(Box::new(s)).to_string());
}

fn run(c: InitConfig) -> ! {
    setup_mounts(&c);
    if let Some(h) = &c.hostname {
        // SAFETY: pointer and length describe h's bytes.
        unsafe { sethostname(h.as_ptr().cast(), h.len()) };
    }
    apply_sysctls(&c);
    if let Some(z) = &c.zram {
        if let Err(e) = setup_zram(z) {
            log(&format!("warning: no zram swap: {e}"));
        }
    }
    if let Some(port) = c.identity_port {
        identity_listener(port);
    }
    echo_off();

    let (tx, rx) = mpsc::channel::<Event>();
    let (reader, writer) = match std::io::pipe() {
        Ok(p) => p,
        Err(e) => {
            log(&format!("error: pipe: {e}"));
            poweroff(c.data.as_ref())
        }
    };
    let mut cmd = Command::new(&c.program.exec);
    cmd.args(&c.program.args)
        .env_clear()
        .envs(c.program.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null());
    if let Some(d) = &c.program.cwd {
        cmd.current_dir(d);
    }
    match writer.try_clone() {
        Ok(w2) => {
            cmd.stdout(writer).stderr(w2);
        }
        Err(e) => log(&format!("warning: program output not captured: {e}")),
    }
    let child = match cmd.spawn() {
        Ok(ch) => ch,
        Err(e) => {
            log(&format!("error: cannot start {}: {e}", c.program.exec));
            say(&exit_line(Ended::Status(127)));
            poweroff(c.data.as_ref())
        }
    };
    drop(cmd); // closes our copies of the pipe's write end
    let pid = child.id();
    log(&format!("started {} as pid {pid}", c.program.exec));

    // Relay the program's output byte for byte; look for the ready text in whole lines.
    {
        let tx = tx.clone();
        let needle = c.ready_match.clone();
        std::thread::spawn(move || {
            let mut reader = reader;
            let mut buf = [0u8; 4096];
            let mut line: Vec<u8> = Vec::new();
            let mut found = needle.is_none();
            loop {
                let n = match reader.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                {
                    let mut out = std::io::stdout().lock();
                    let _ = out.write_all(&buf[..n]);
                    let _ = out.flush();
                    AT_LINE_START.store(buf[n - 1] == b'\n', Ordering::SeqCst);
                }
                if found {
                    continue;
                }
                for &b in &buf[..n] {
                    if b == b'\n' {
                        let text = String::from_utf8_lossy(&line);
                        if needle.as_deref().is_some_and(|m| text.contains(m)) {
                            found = true;
                            let _ = tx.send(Event::Ready);
                            break;
                        }
                        line.clear();
                    } else if line.len() < 8192 {
                        line.push(b);
                    }
                }
            }
        });
    }
    read_commands(tx.clone());
    // PID 1 reaps every orphan; only our program's end matters.
    {
        let tx = tx.clone();
        std::thread::spawn(move || loop {
            let mut st: c_int = 0;
            // SAFETY: st is a valid out-pointer.
            let r = unsafe { waitpid(-1, &mut st, 0) };
            if r == pid as c_int {
                let _ = tx.send(Event::Exited(st));
            } else if r < 0 {
                std::thread::sleep(Duration::from_millis(100));
            }
        });
    }
    if c.ready_match.is_none() {
        let _ = tx.send(Event::Ready);
    }
    drop(child);

    let mut ready_at: Option<u64> = None;
    let mut seq = 0u64;
    let mut auto_snapshot: Option<Instant> = None;
    let mut kill_deadline: Option<Instant> = None;
    let mut identities = Identities::default();
    loop {
        let timeout = [auto_snapshot, kill_deadline]
            .into_iter()
            .flatten()
            .min()
            .map(|t| t.saturating_duration_since(Instant::now()))
            .unwrap_or(Duration::from_secs(3600));
        match rx.recv_timeout(timeout) {
            Ok(Event::Ready) => {
                let now = uptime_ms();
                ready_at = Some(now);
                say(&Message::Ready {
                    uptime_ms: now,
                    pid,
                }
                .to_string());
                write_knobs(&c.ready_writes, "ready");
                if let Some(ms) = c.snapshot_after_ready_ms {
                    auto_snapshot = Some(Instant::now() + Duration::from_millis(ms));
                }
            }
            Ok(Event::Command(ConsoleCommand::Snapshot)) => {
                seq += 1;
                snapshot(seq, Some(pid), ready_at, &c);
            }
            Ok(Event::Command(ConsoleCommand::Identity(id))) => identities.take(id),
            Ok(Event::Command(ConsoleCommand::Ping)) => {
                say(&Message::Pong {
                    uptime_ms: uptime_ms(),
                }
                .to_string());
            }
            Ok(Event::Command(ConsoleCommand::Poweroff)) => {
                log("poweroff requested: stopping the program");
                // SAFETY: kill has no memory-safety preconditions.
                unsafe { kill(pid as c_int, SIGTERM) };
                kill_deadline = Some(Instant::now() + Duration::from_secs(5));
            }
            Ok(Event::Exited(st)) => {
                say(&exit_line(Ended::from_wait_status(st)));
                poweroff(c.data.as_ref());
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let now = Instant::now();
                if auto_snapshot.is_some_and(|t| t <= now) {
                    auto_snapshot = None;
                    seq += 1;
                    snapshot(seq, Some(pid), ready_at, &c);
                    if c.poweroff_after_snapshot {
                        unsafe { kill(pid as c_int, SIGTERM) };
                        kill_deadline = Some(now + Duration::from_secs(5));
                    }
                }
                if kill_deadline.is_some_and(|t| t <= now) {
                    log("program ignored SIGTERM for 5 s: killing it");
                    unsafe { kill(pid as c_int, SIGKILL) };
                    kill_deadline = None;
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => poweroff(c.data.as_ref()),
        }
    }
}

/// The process the helper measures: the newest whose /proc/PID/comm is [`HELPER_PROGRAM`].
fn find_program() -> Option<u32> {
    let mut best = None;
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim_end() == HELPER_PROGRAM {
            best = best.max(Some(pid));
        }
    }
    best
}

/// `imgtool-helper`, run by erlinit's `--pre-run-exec` in a firmware imgtool did not build:
/// apply the profile's knobs and zram before the VM starts, then hand erlinit back its boot
/// (it waits for this program) while a child answers the console protocol on the helper's own
/// console, so erlinit and IEx keep ttyAMA0.
fn helper(c: InitConfig) -> ! {
    PLAIN_LOG.store(true, Ordering::SeqCst);
    apply_sysctls(&c);
    if let Some(z) = &c.zram {
        if let Err(e) = setup_zram(z) {
            log(&format!("warning: no zram swap: {e}"));
        }
    }
    // SAFETY: the process is single-threaded here; the child only continues below.
    let child = unsafe { fork() };
    if child != 0 {
        if child < 0 {
            log("warning: helper: fork failed; no protocol console");
        }
        if !c.program.exec.is_empty() {
            // The firmware's own pre-run program, which the helper's line replaced.
            use std::os::unix::process::CommandExt;
            let e = Command::new(&c.program.exec).args(&c.program.args).exec();
            log(&format!(
                "error: helper: cannot run {}: {e}",
                c.program.exec
            ));
            std::process::exit(1);
        }
        std::process::exit(0);
    }
    // SAFETY: plain syscall; detaches from erlinit's session.
    unsafe { setsid() };
    serve_helper(c)
}

fn serve_helper(c: InitConfig) -> ! {
    // The virtio console may be probed a moment after userspace starts.
    let mut tries = 0;
    let con = loop {
        match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(HELPER_CONSOLE)
        {
            Ok(f) => break f,
            Err(e) if tries >= 50 => {
                log(&format!(
                    "helper: no {HELPER_CONSOLE} ({e}): the profile's knobs are applied, \
                     no snapshots (start qemu with a second serial port: qemu::helper_console)"
                ));
                std::process::exit(0);
            }
            Err(_) => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    };
    {
        use std::os::fd::AsRawFd;
        // SAFETY: both fds are valid; stdin/stdout now talk to the helper console.
        unsafe {
            dup2(con.as_raw_fd(), 0);
            dup2(con.as_raw_fd(), 1);
        }
    }
    echo_off();
    PLAIN_LOG.store(false, Ordering::SeqCst);
    log(&format!(
        "helper for {HELPER_PROGRAM}: {} sysctls, {} knobs, zram {}",
        c.sysctls.len(),
        c.writes.len(),
        if c.zram.is_some() { "on" } else { "off" }
    ));
    let (tx, rx) = mpsc::channel::<Event>();
    read_commands(tx.clone());
    {
        let ready_writes = c.ready_writes.clone();
        let after = Duration::from_millis(c.ready_after_ms.unwrap_or(5000));
        std::thread::spawn(move || {
            while find_program().is_none() {
                std::thread::sleep(Duration::from_millis(200));
            }
            std::thread::sleep(after);
            write_knobs(&ready_writes, "ready");
            let _ = tx.send(Event::Ready);
        });
    }
    let mut ready_at: Option<u64> = None;
    let mut seq = 0u64;
    let mut identities = Identities::default();
    for ev in rx {
        match ev {
            Event::Ready => {
                let now = uptime_ms();
                ready_at = Some(now);
                if let Some(pid) = find_program() {
                    say(&Message::Ready {
                        uptime_ms: now,
                        pid,
                    }
                    .to_string());
                }
            }
            Event::Command(ConsoleCommand::Snapshot) => {
                seq += 1;
                snapshot(seq, find_program(), ready_at, &c);
            }
            Event::Command(ConsoleCommand::Identity(id)) => identities.take(id),
            Event::Command(ConsoleCommand::Ping) => {
                say(&Message::Pong {
                    uptime_ms: uptime_ms(),
                }
                .to_string());
            }
            Event::Command(ConsoleCommand::Poweroff) => {
                log("poweroff requested: asking erlinit (SIGUSR2)");
                // SAFETY: kill has no memory-safety preconditions.
                unsafe { kill(1, SIGUSR2) };
            }
            Event::Exited(_) => {}
        }
    }
    std::process::exit(0)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // Started under the helper's name (erlinit's --pre-run-exec): a helper, not PID 1.
    if args
        .first()
        .is_some_and(|a| a.rsplit('/').next() == HELPER_PATH.rsplit('/').next())
    {
        let path = args.get(1).map_or(HELPER_CONFIG_PATH, String::as_str);
        let config = std::fs::read_to_string(path)
            .map_err(|e| format!("{path}: {e}"))
            .and_then(|t| InitConfig::parse(&t).map_err(|e| e.to_string()));
        match config {
            Ok(c) if c.helper => helper(c),
            Ok(_) => eprintln!("imgtool-helper: error: {path} has no `role=helper`"),
            Err(e) => eprintln!("imgtool-helper: error: {e}"),
        }
        // Never stop erlinit's boot over the helper.
        std::process::exit(0);
    }
    // `imgtool-init --check FILE`: parse a config and print the plan (for people and tests).
    if args.get(1).map(String::as_str) == Some("--check") {
        let path = args.get(2).map_or(CONFIG_PATH, String::as_str);
        let text = std::fs::read_to_string(path).unwrap_or_else(|e| {
            eprintln!("{path}: {e}");
            std::process::exit(1)
        });
        match InitConfig::parse(&text) {
            Ok(c) => {
                for m in mount_plan(&c) {
                    println!(
                        "mount {} {} {} flags={:#x} data={}",
                        m.source, m.target, m.fstype, m.flags, m.data
                    );
                }
                println!("exec {} {:?}", c.program.exec, c.program.args);
                std::process::exit(0)
            }
            Err(e) => {
                eprintln!("{e}");
                std::process::exit(1)
            }
        }
    }
    // SAFETY: getpid has no preconditions.
    if unsafe { getpid() } != 1 {
        eprintln!("imgtool-init: must run as PID 1 (use --check FILE to test a config)");
        std::process::exit(2);
    }
    let config = std::fs::read_to_string(CONFIG_PATH)
        .map_err(|e| format!("{CONFIG_PATH}: {e}"))
        .and_then(|t| InitConfig::parse(&t).map_err(|e| e.to_string()));
    match config {
        Ok(c) => run(c),
        Err(e) => {
            // Without a program there is nothing to run: say why and stop the machine.
            log(&format!("error: {e}"));
            say(&exit_line(Ended::Status(78)));
            poweroff(None)
        }
    }
}
