//! End-to-end tests: `imgtool template` and `imgtool fleet run` on a real BEAM guest (the small
//! kernel, Debian's erlang-base, our init) under qemu, and `experiment` with `start: clone`.
//!
//! One template is made once per test binary and shared; the tests take turns (one fleet at a
//! time) so that no test's figures or timeouts depend on another running beside it.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

static TURN: Mutex<()> = Mutex::new(());

fn turn() -> std::sync::MutexGuard<'static, ()> {
    TURN.lock().unwrap_or_else(|e| e.into_inner())
}

fn work() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("fleet-{}", std::process::id()))
}

/// The BEAM guest image (nerves-tuned profile, default kernel), built once.
fn image() -> &'static Path {
    static IMG: OnceLock<PathBuf> = OnceLock::new();
    IMG.get_or_init(|| {
        require_tool("qemu-system-aarch64");
        require_tool("qemu-img");
        let dir = work();
        std::fs::create_dir_all(&dir).unwrap();
        let kernel = run_ok(imgtool().args(["kernel", "build"]));
        let kernel = kernel.lines().last().unwrap().trim().to_string();
        let rootfs = dir.join("beam.squashfs");
        run_ok(
            imgtool()
                .args([
                    "rootfs",
                    "build",
                    "beam-guest",
                    "--profile",
                    "nerves-tuned",
                    "--cache",
                ])
                .arg(PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("rootfs-cache"))
                .arg("-o")
                .arg(&rootfs),
        );
        let show = run_ok(imgtool().args(["rootfs", "profile", "show", "nerves-tuned", "--json"]));
        let cmdline = serde_json::from_str::<Value>(&show).unwrap()["kernel"]["cmdline"]
            .as_str()
            .unwrap()
            .to_string();
        let img = dir.join("beam.img");
        run_ok(
            imgtool()
                .args(["build", "nerves-qemu-aarch64", "-o"])
                .arg(&img)
                .arg("-D")
                .arg(format!("kernel={kernel}"))
                .arg("-D")
                .arg(format!("rootfs={}", rootfs.display()))
                .arg("-D")
                .arg(format!("cmdline={cmdline}")),
        );
        img
    })
}

/// A template of the BEAM guest with a network device, made once.
fn template() -> &'static Path {
    static T: OnceLock<PathBuf> = OnceLock::new();
    T.get_or_init(|| {
        let t = work().join("template");
        let out = run_ok(
            imgtool()
                .arg("template")
                .arg(image())
                .arg("-o")
                .arg(&t)
                .args([
                    "--profile",
                    "nerves-tuned",
                    "--accel",
                    "tcg",
                    "--net",
                    "user",
                ])
                .args(["--timeout", "600", "--json"]),
        );
        let m: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(m["accel"], "tcg");
        assert_eq!(m["net"], true);
        assert!(m["qemu_version"].as_str().unwrap().contains("QEMU"), "{m}");
        assert_eq!(m["image_sha256"].as_str().unwrap().len(), 64);
        for f in ["ram", "state", "disk.qcow2", "manifest.json"] {
            assert!(t.join(f).is_file(), "{f} missing in the template");
        }
        t
    })
}

fn all_distinct(r: &Value, key: &str) -> usize {
    let v: Vec<String> = r["guests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g[key].to_string())
        .collect();
    let set: BTreeSet<&String> = v.iter().collect();
    assert_eq!(set.len(), v.len(), "{key} values repeat: {v:?}");
    set.len()
}

#[test]
fn eight_clones_answer_with_their_own_identity_and_leave_no_qemu() {
    let _t = turn();
    let t = template();
    let json = work().join("fleet8.json");
    let out = imgtool()
        .args(["fleet", "run"])
        .arg(t)
        .args([
            "--count",
            "8",
            "--net",
            "user",
            "--port-base",
            "24000",
            "--hold",
            "3",
        ])
        .args([
            "--interval",
            "2",
            "--accel",
            "tcg",
            "--serial-prefix",
            "sim-",
            "--json",
        ])
        .arg(&json)
        .output()
        .unwrap();
    assert_ok(&out, "imgtool fleet run --count 8");
    let r = read_json(&json);
    assert_eq!(
        (
            r["count"].as_u64(),
            r["ready"].as_u64(),
            r["failed"].as_u64()
        ),
        (Some(8), Some(8), Some(0)),
        "{r}"
    );
    assert_eq!(r["accel"], "tcg");
    for k in ["p50", "p95", "max"] {
        let s = r["spawn_s"][k].as_f64().unwrap();
        assert!(s > 0.0 && s < 60.0, "spawn_s.{k} = {s}");
    }
    assert!(
        r["memory"]["marginal_pss_mib"].as_f64().unwrap() > 1.0,
        "{r}"
    );
    assert!(r["memory"]["marginal_available_mib"].as_f64().is_some());
    assert!(r["cpu"]["idle_pct_per_guest"].as_f64().is_some());
    // Each clone's own identity, as the guest reported it back.
    assert_eq!(all_distinct(&r, "serial"), 8);
    assert_eq!(all_distinct(&r, "mac"), 8);
    assert_eq!(all_distinct(&r, "random"), 8);
    for g in r["guests"].as_array().unwrap() {
        assert_eq!(g["state"], "ready", "{g}");
        assert!(g["serial"].as_str().unwrap().starts_with("sim-"));
        assert_eq!(g["random"].as_str().unwrap().len(), 32, "{g}");
        assert!(g["mac"].as_str().unwrap().starts_with("52:54:00:"));
        assert!(g["port"].as_u64().unwrap() >= 24000);
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("guests per GiB"), "{stdout}");
    assert!(
        qemus_with(&t.display().to_string()).is_empty(),
        "qemu left behind"
    );
}

#[test]
fn sigint_stops_every_clone_and_a_killed_clone_is_reported() {
    let _t = turn();
    let t = template();
    let json = work().join("fleet-int.json");
    let mut child = imgtool()
        .args(["fleet", "run"])
        .arg(t)
        .args([
            "--count",
            "3",
            "--hold",
            "600",
            "--interval",
            "1",
            "--accel",
            "tcg",
            "--json",
        ])
        .arg(&json)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the first status line: every clone has answered by then.
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let start = Instant::now();
    let mut seen = String::new();
    let mut lines = 0;
    while lines < 2 {
        let mut l = String::new();
        if err.read_line(&mut l).unwrap() == 0 || start.elapsed() > Duration::from_secs(300) {
            panic!("no status lines from the fleet:\n{seen}");
        }
        if l.contains("fleet t=") {
            lines += 1;
        }
        seen += &l;
    }
    // Kill one clone's qemu from outside: the fleet must report it and keep the others.
    let victims = qemus_with("clone-0001.qcow2");
    assert_eq!(victims.len(), 1, "{victims:?}");
    // SAFETY: plain signal to a process we found by its command line.
    unsafe { libc_kill(victims[0], 9) };
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(qemus_with(&t.display().to_string()).len(), 2);
    unsafe { libc_kill(child.id(), 2) };
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "imgtool did not stop after SIGINT"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(!status.success(), "a died clone makes the run fail");
    assert!(
        qemus_with(&t.display().to_string()).is_empty(),
        "qemu left behind after SIGINT"
    );
    let r = read_json(&json);
    assert_eq!(r["interrupted"], true);
    assert_eq!(
        (r["ready"].as_u64(), r["failed"].as_u64()),
        (Some(2), Some(1)),
        "{r}"
    );
    let g = &r["guests"][1];
    assert_eq!(g["state"], "died", "{g}");
    assert!(g["error"].as_str().unwrap().contains("exited"), "{g}");
}

/// `nerves_serial_number` in a qcow2 disk's U-Boot env, as the real fw_printenv reads it from
/// the place the beam guest's /etc/fw_env.config names (0x2000, 0x20000 bytes).
fn env_serial(qcow2: &Path, scratch: &Path) -> String {
    let raw = scratch.with_extension("raw");
    run_ok(
        std::process::Command::new(require_tool("qemu-img"))
            .args(["convert", "-O", "raw"])
            .arg(qcow2)
            .arg(&raw),
    );
    let cfg = scratch.with_extension("fw_env.config");
    std::fs::write(&cfg, format!("{} 0x2000 0x20000\n", raw.display())).unwrap();
    let v = run_ok(
        std::process::Command::new(require_tool("fw_printenv"))
            .arg("-c")
            .arg(&cfg)
            .args(["-n", "nerves_serial_number"]),
    );
    std::fs::remove_file(&raw).unwrap();
    v.trim().to_string()
}

/// What the guest behind host port `port` says on its identity port, once it says `want`.
fn ask_identity(port: u16, want: &str, deadline: Instant) -> String {
    use std::io::Read;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut last = String::new();
    while Instant::now() < deadline {
        if let Ok(mut c) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
            c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            last.clear();
            let _ = c.read_to_string(&mut last);
            if last.contains(want) {
                return last;
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    panic!("port {port}: no `{want}` in time; last answer: {last:?}");
}

#[test]
fn clones_answer_on_their_ports_and_carry_their_serial_in_their_own_env() {
    let _t = turn();
    let t = template();
    let run = work().join("run-env");
    let json = work().join("fleet-env.json");
    let base: u16 = 24100;
    let mut child = imgtool()
        .args(["fleet", "run"])
        .arg(t)
        .args([
            "--count",
            "3",
            "--net",
            "user",
            "--port-base",
            &base.to_string(),
        ])
        .args(["--hold", "600", "--interval", "1", "--accel", "tcg"])
        .args(["--serial-prefix", "env-", "--run-dir"])
        .arg(&run)
        .arg("--json")
        .arg(&json)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let start = Instant::now();
    let mut seen = String::new();
    while !seen.contains("fleet t=") {
        let mut l = String::new();
        if err.read_line(&mut l).unwrap() == 0 || start.elapsed() > Duration::from_secs(300) {
            panic!("no status line from the fleet:\n{seen}");
        }
        seen += &l;
    }
    // Each clone answers on its own host port with its own identity. The identity file is
    // written after the env, so an answer with the serial means the env is on disk.
    let deadline = Instant::now() + Duration::from_secs(120);
    for i in 0..3u16 {
        let serial = format!("env-{i:04}");
        let a = ask_identity(base + i, &format!("serial={serial}\n"), deadline);
        assert!(
            a.contains(&format!("nerves_serial_number={serial}\n")),
            "{a}"
        );
        assert!(a.contains(&format!("hostname={serial}\n")), "{a}");
        assert!(a.contains("mac=52:54:00:"), "{a}");
    }
    unsafe { libc_kill(child.id(), 2) };
    let status = child.wait().unwrap();
    let r = read_json(&json);
    assert_eq!(
        (r["ready"].as_u64(), r["failed"].as_u64()),
        (Some(3), Some(0)),
        "{r}"
    );
    assert!(status.success(), "{r}");
    assert!(qemus_with(&t.display().to_string()).is_empty());
    // The run directory kept every clone's overlay and console log; each overlay's env has its
    // clone's serial, the other variables kept, and the template's disk has none of them.
    for i in 0..3 {
        let console = std::fs::read_to_string(run.join(format!("clone-{i:04}.console"))).unwrap();
        assert!(
            console.contains(&format!(
                "nerves_serial_number=env-{i:04} in the U-Boot env"
            )),
            "{console}"
        );
        let disk = run.join(format!("clone-{i:04}.qcow2"));
        assert_eq!(
            env_serial(&disk, &run.join(format!("env-{i}"))),
            format!("env-{i:04}")
        );
    }
    let tpl = env_serial(&t.join("disk.qcow2"), &run.join("template"));
    assert!(
        !tpl.starts_with("env-"),
        "the template's env changed: {tpl}"
    );
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: u32, sig: i32) -> i32;
}

#[test]
fn templates_from_another_image_or_qemu_are_refused() {
    let _t = turn();
    let t = template();
    let dir = work().join("refuse");
    std::fs::create_dir_all(&dir).unwrap();
    // Another qemu version in the manifest.
    let other = dir.join("other-qemu");
    std::fs::create_dir_all(&other).unwrap();
    for f in ["ram", "state", "disk.qcow2"] {
        std::os::unix::fs::symlink(t.join(f), other.join(f)).unwrap();
    }
    let mut m = read_json(&t.join("manifest.json"));
    m["qemu_version"] = "QEMU emulator version 8.2.2".into();
    std::fs::write(other.join("manifest.json"), m.to_string()).unwrap();
    let out = imgtool()
        .args(["fleet", "run"])
        .arg(&other)
        .args(["--count", "1", "--accel", "tcg"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("8.2.2") && err.contains("cannot be restored"),
        "{err}"
    );
    // A template whose image changed after the save.
    let img = dir.join("copy.img");
    std::fs::copy(image(), &img).unwrap();
    let t2 = dir.join("t2");
    run_ok(
        imgtool()
            .arg("template")
            .arg(&img)
            .arg("-o")
            .arg(&t2)
            .args([
                "--profile",
                "nerves-tuned",
                "--accel",
                "tcg",
                "--timeout",
                "600",
            ]),
    );
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
        f.seek(SeekFrom::Start(1 << 20)).unwrap();
        f.write_all(b"changed").unwrap();
    }
    let out = imgtool()
        .args(["fleet", "run"])
        .arg(&t2)
        .args(["--count", "1", "--accel", "tcg"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("changed since the template was saved"),
        "{err}"
    );
    // Another accelerator than the template's.
    let out = imgtool()
        .args(["fleet", "run"])
        .arg(t)
        .args(["--count", "1", "--accel", "kvm"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("saved under tcg"), "{err}");
}

#[test]
fn experiment_with_clones_and_a_sweep_writes_table_chart_json() {
    let _t = turn();
    let dir = work().join("exp");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("density.yaml");
    std::fs::write(
        &file,
        format!(
            "name: density\nprofiles: [nerves-tuned]\nimages: {{ nerves-tuned: {} }}\n\
             start: clone\nguests: [1, 3]\nsettle: 2\ntimeout: 600\n",
            image().display()
        ),
    )
    .unwrap();
    let out = run_ok(
        imgtool()
            .arg("experiment")
            .arg(&file)
            .args(["-o"])
            .arg(dir.join("out")),
    );
    assert!(out.contains("guests per GiB"), "{out}");
    let table = std::fs::read_to_string(dir.join("out/table.md")).unwrap();
    assert!(table.contains("| nerves-tuned | 3 |"), "{table}");
    let svg = std::fs::read_to_string(dir.join("out/rss.svg")).unwrap();
    assert!(
        svg.contains("<svg") && svg.contains("per guest") && svg.contains("guests at once"),
        "{svg}"
    );
    let r = read_json(&dir.join("out/results.json"));
    assert_eq!(r["start"], "clone");
    let groups = r["profiles"][0]["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 2);
    for g in groups {
        assert_eq!(g["failed"], 0, "{g}");
        assert!(g["pss_sum_kib"].as_u64().unwrap() > 0);
        assert!(g["available_drop_kib"].as_u64().is_some());
    }
    assert!(qemus_with(&dir.display().to_string()).is_empty());
}
