//! End-to-end tests: `imgtool fleet run --cold` on someone else's firmware. The Nerves-style
//! firmware from real parts (scripts/nerves-fw: erlinit as PID 1, an OTP release, Nerves' own
//! fwup.conf) is written to a disk by `imgtool fwup`, then booted cold N times, each clone from
//! its own overlay whose U-Boot env holds its serial before it boots. The application prints
//! what `fw_printenv -n nerves_serial_number` returned inside the guest, so the marker lines
//! show whether each guest read its own serial.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const MARKER: &str = "^NERVES-STYLE-APP-UP";

/// A disk with the firmware's `complete` task applied by our fwup, in a new directory.
fn special_img(dir: &Path) -> PathBuf {
    require_tool("qemu-system-aarch64");
    require_tool("qemu-img");
    require_tool("qemu-io");
    std::fs::create_dir_all(dir).unwrap();
    let img = dir.join("special.img");
    run_ok(
        imgtool()
            .args(["fwup", "-a", "-q", "-i"])
            .arg(nerves_fw())
            .arg("-d")
            .arg(&img)
            .args(["-t", "complete"]),
    );
    img
}

fn work(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("fleet-cold-{}-{name}", std::process::id()))
}

/// The serial the application printed: `serial=S` in its marker line.
fn printed_serial(line: &str) -> &str {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("serial="))
        .unwrap_or_else(|| panic!("no serial= in {line:?}"))
}

#[test]
fn sixteen_cold_clones_of_a_nerves_firmware_each_read_their_own_serial() {
    let dir = work("16");
    let img = special_img(&dir);
    let before = sha256(&img);
    let json = dir.join("f.json");
    let _q = qemu_lock();
    let start = Instant::now();
    let out = imgtool()
        .args(["fleet", "run", "--cold"])
        .arg(&img)
        .args(["--count", "16", "--marker", MARKER, "--hold", "5"])
        .args(["--serial-prefix", "nerves-", "--answer-timeout", "900"])
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    let took = start.elapsed();
    assert_ok(&out, "imgtool fleet run --cold --count 16");
    let r = read_json(&json);
    assert_eq!(
        (
            r["count"].as_u64(),
            r["ready"].as_u64(),
            r["failed"].as_u64()
        ),
        (Some(16), Some(16), Some(0)),
        "{r}"
    );
    assert_eq!(r["start"], "cold");
    assert_eq!(r["marker"], MARKER);
    assert!(r["template"].is_null(), "{}", r["template"]);
    assert_eq!(
        Path::new(r["image"].as_str().unwrap()),
        std::path::absolute(&img).unwrap()
    );
    // Each guest's own fw_printenv read the serial the fleet gave its disk, and no two agree.
    let mut printed = BTreeSet::new();
    for g in r["guests"].as_array().unwrap() {
        assert_eq!(g["state"], "ready", "{g}");
        let i = g["index"].as_u64().unwrap();
        let serial = g["serial"].as_str().unwrap();
        assert_eq!(serial, format!("nerves-{i:04}"), "{g}");
        let line = g["marker_line"].as_str().unwrap();
        assert!(line.starts_with("NERVES-STYLE-APP-UP v0.1.0 "), "{line}");
        assert!(line.contains(" ets_bytes="), "the whole line: {line}");
        assert_eq!(printed_serial(line), serial, "{g}");
        printed.insert(serial.to_string());
        let s = g["spawn_s"].as_f64().unwrap();
        assert!(s > 0.0 && s < 900.0, "spawn_s {s}");
        assert!(g["random"].is_null() && g["hostname"].is_null(), "{g}");
    }
    assert_eq!(printed.len(), 16, "{printed:?}");
    // Held and measured as template fleets are.
    assert!(r["hold_s"].as_f64().unwrap() >= 5.0, "{r}");
    let pss = r["memory"]["marginal_pss_mib"].as_f64().unwrap();
    assert!(pss > 10.0, "marginal PSS {pss} MiB");
    assert!(r["memory"]["marginal_available_mib"].as_f64().is_some());
    assert!(r["cpu"]["idle_pct_per_guest"].as_f64().is_some());
    assert!(r["status"].as_array().unwrap().len() >= 2, "{r}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("guests per GiB") && stdout.contains("serial=nerves-0000"),
        "{stdout}"
    );
    // Nothing left: no qemu, no run directory beside the image, the image as it was.
    assert!(qemus_with(&dir.display().to_string()).is_empty());
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n.to_string_lossy().starts_with("imgtool-fleet-"))
        .collect();
    assert!(left.is_empty(), "run directory left: {left:?}");
    assert_eq!(sha256(&img), before, "the base image changed");
    eprintln!(
        "16 cold clones: all up after {:.1} s (spawn-to-marker p50 {:.1} s, max {:.1} s), \
         marginal PSS {pss:.1} MiB per guest, KSM {}, whole run {:.0} s",
        r["all_ready_s"].as_f64().unwrap(),
        r["spawn_s"]["p50"].as_f64().unwrap(),
        r["spawn_s"]["max"].as_f64().unwrap(),
        r["ksm"],
        took.as_secs_f64()
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `nerves_serial_number` in a qcow2 disk's U-Boot env, as the host's real fw_printenv reads it.
fn env_serial(qcow2: &Path) -> String {
    fw_printenv_qcow2(qcow2, &["-n", "nerves_serial_number"])
        .trim()
        .to_string()
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: u32, sig: i32) -> i32;
}

#[test]
fn a_killed_cold_clone_is_reported_died_and_sigterm_stops_the_rest() {
    let dir = work("term");
    let img = special_img(&dir);
    let run = dir.join("run");
    let json = dir.join("f.json");
    let _q = qemu_lock();
    let mut child = imgtool()
        .args(["fleet", "run", "--cold"])
        .arg(&img)
        .args(["--count", "2", "--marker", MARKER, "--hold", "600"])
        .args(["--interval", "1", "--serial-prefix", "term-"])
        .args(["--answer-timeout", "600", "--run-dir"])
        .arg(&run)
        .arg("--json")
        .arg(&json)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The first status line comes once both clones are up.
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let start = Instant::now();
    let mut seen = String::new();
    while !seen.contains("fleet t=") {
        let mut l = String::new();
        if err.read_line(&mut l).unwrap() == 0 || start.elapsed() > Duration::from_secs(600) {
            panic!("no status line from the fleet:\n{seen}");
        }
        seen += &l;
    }
    let victims = qemus_with("clone-0001.qcow2");
    assert_eq!(victims.len(), 1, "{victims:?}");
    // SAFETY: plain signals to processes found by their command line and to our child.
    unsafe { libc_kill(victims[0], 9) };
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(qemus_with(&run.display().to_string()).len(), 1);
    unsafe { libc_kill(child.id(), 15) };
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "imgtool did not stop after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status.code(), Some(1), "a died clone fails the run");
    assert!(
        qemus_with(&run.display().to_string()).is_empty(),
        "qemu left behind after SIGTERM"
    );
    let r = read_json(&json);
    assert_eq!(r["interrupted"], true, "{r}");
    assert_eq!(
        (r["ready"].as_u64(), r["failed"].as_u64()),
        (Some(1), Some(1)),
        "{r}"
    );
    assert_eq!(r["guests"][0]["state"], "ready");
    let g = &r["guests"][1];
    assert_eq!(g["state"], "died", "{g}");
    assert!(g["error"].as_str().unwrap().contains("exited"), "{g}");
    // Its console tail is in the report: the firmware's own last lines.
    let console = g["console"].as_str().unwrap();
    assert!(
        console.contains("NERVES-STYLE-APP-UP v0.1.0 serial=term-0001"),
        "{console}"
    );
    // The kept overlays hold each clone's serial where the host's fw_printenv finds it.
    for i in 0..2 {
        assert_eq!(
            env_serial(&run.join(format!("clone-{i:04}.qcow2"))),
            format!("term-{i:04}")
        );
        assert!(run.join(format!("clone-{i:04}.console")).is_file());
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

fn fails_with(args: &[&str], extra: Option<&Path>, expect: &[&str]) {
    let mut cmd = imgtool();
    cmd.args(["fleet", "run"]).args(args);
    if let Some(p) = extra {
        cmd.arg(p);
    }
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
    for e in expect {
        assert!(err.contains(e), "{args:?}: expected `{e}` in: {err}");
    }
    assert!(qemus_with("imgtool-fleet-").is_empty());
}

#[test]
fn bad_input_exits_2_naming_the_field_and_the_fix() {
    let dir = work("bad");
    std::fs::create_dir_all(&dir).unwrap();
    let missing = dir.join("missing.img");
    let m = missing.display().to_string();
    fails_with(
        &["--cold", &m, "--count", "2"],
        None,
        &["--cold", "missing.img", "give the raw disk image"],
    );
    fails_with(
        &["--cold", &m],
        Some(&dir),
        &["not both", "--cold boots the image itself"],
    );
    fails_with(&[], None, &["give a template directory", "--cold IMAGE"]);
    // Checked before anything boots, on an image that would boot.
    let blank = dir.join("blank.img");
    std::fs::write(&blank, vec![0u8; 1 << 20]).unwrap();
    let b = blank.display().to_string();
    fails_with(
        &["--cold", &b, "--count", "0"],
        None,
        &["--count 0: give 1 or more"],
    );
    fails_with(
        &["--cold", &b, "--marker", "^NERVES-(UP"],
        None,
        &["--marker \"^NERVES-(UP\" is not a regular expression"],
    );
    fails_with(
        &["--cold", &b],
        None,
        &[
            "no valid U-Boot env",
            "0x2000",
            "imgtool fwup -a -i app.fw -d",
        ],
    );
    let qcow = dir.join("disk.qcow2");
    run_ok(
        Command::new(require_tool("qemu-img"))
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&qcow)
            .arg("1M"),
    );
    fails_with(
        &["--cold", &qcow.display().to_string()],
        None,
        &["a qcow2 image, not a raw one", "qemu-img convert -O raw"],
    );
    // Cold-only flags on a template fleet.
    fails_with(
        &["--marker", "x"],
        Some(&dir),
        &["--marker applies to an IMAGE or --cold IMAGE only"],
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
