//! End-to-end tests: template fleets of someone else's firmware. The Nerves-style firmware from
//! real parts (scripts/nerves-fw: erlinit as PID 1, an OTP release, Nerves' own fwup.conf) is
//! tuned by `imgtool fw tune` (which adds imgtool's helper), written to a disk by `imgtool fwup`,
//! booted once to its ready line and saved as a template, and restored N times. Each clone's
//! identity goes to the helper on the second console; the helper writes the serial into the
//! clone's U-Boot env, then /run/imgtool/identity; the application, which waits for that file,
//! reads the serial again with `fw_printenv` inside the guest and prints it. So each line shows
//! what the guest itself read.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use common::*;

const MARKER: &str = "^NERVES-STYLE-APP-UP";

fn work(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("fleet-fw-{}-{name}", std::process::id()))
}

/// A disk with `fw`'s `complete` task applied by our fwup, in `dir`.
fn apply(fw: &Path, dir: &Path) -> PathBuf {
    require_tool("qemu-system-aarch64");
    require_tool("qemu-img");
    std::fs::create_dir_all(dir).unwrap();
    let img = dir.join("special.img");
    run_ok(
        imgtool()
            .args(["fwup", "-a", "-q", "-i"])
            .arg(fw)
            .arg("-d")
            .arg(&img)
            .args(["-t", "complete"]),
    );
    img
}

/// The U-Boot env of a qcow2 disk (and its backing chain), as the host's real fw_printenv reads it.
fn env_of(qcow2: &Path) -> String {
    fw_printenv_qcow2(qcow2, &[])
}

/// No qemu, no template or run directory beside the image: the run cleaned up.
fn nothing_left(dir: &Path) {
    assert!(qemus_with(&dir.display().to_string()).is_empty());
    let left: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n.to_string_lossy().starts_with("imgtool-"))
        .collect();
    assert!(left.is_empty(), "left beside the image: {left:?}");
}

#[test]
fn clones_of_a_tuned_firmwares_template_each_read_their_own_serial_inside_the_guest() {
    let dir = work("tpl");
    std::fs::create_dir_all(&dir).unwrap();
    let tuned = dir.join("tuned.fw");
    run_ok(
        imgtool()
            .args(["fw", "tune"])
            .arg(nerves_fw())
            .args(["--profile", "nerves-tuned", "-o"])
            .arg(&tuned),
    );
    let img = apply(&tuned, &dir);
    let before = sha256(&img);
    let json = dir.join("f.json");
    let run = dir.join("run");
    let _q = qemu_lock();
    let start = Instant::now();
    let out = imgtool()
        .args(["fleet", "run"])
        .arg(&img)
        .args([
            "--count",
            "4",
            "--marker",
            MARKER,
            "--profile",
            "nerves-tuned",
        ])
        .args(["--hold", "5", "--serial-prefix", "tpl-", "--run-dir"])
        .arg(&run)
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    let took = start.elapsed();
    assert_ok(
        &out,
        "imgtool fleet run IMAGE --marker (template of a tuned firmware)",
    );
    let r = read_json(&json);
    assert_eq!(
        (
            r["count"].as_u64(),
            r["ready"].as_u64(),
            r["failed"].as_u64()
        ),
        (Some(4), Some(4), Some(0)),
        "{r}"
    );
    assert_eq!(r["start"], "restore");
    assert_eq!(r["helper"], true, "{r}");
    assert_eq!(r["marker"], MARKER);
    let boot = r["template_boot_s"].as_f64().unwrap();
    assert!(boot > 0.0, "{r}");
    // Every clone's application printed the serial its own fw_printenv read after the helper
    // wrote the env: the fleet's serial for that clone, and no two alike.
    let mut printed = BTreeSet::new();
    for g in r["guests"].as_array().unwrap() {
        assert_eq!(g["state"], "ready", "{g}");
        let i = g["index"].as_u64().unwrap();
        let serial = g["serial"].as_str().unwrap();
        assert_eq!(serial, format!("tpl-{i:04}"), "{g}");
        let line = g["serial_line"].as_str().unwrap_or_else(|| {
            panic!(
                "clone {i} printed no line with its serial; its console:\n{}",
                std::fs::read_to_string(run.join(format!("clone-{i:04}.console")))
                    .unwrap_or_default()
            )
        });
        assert_eq!(line, format!("NERVES-STYLE-APP-IDENTITY serial={serial}"));
        printed.insert(serial.to_string());
        // Restored, not booted: the answer comes in well under a boot's time.
        let s = g["spawn_s"].as_f64().unwrap();
        assert!(s > 0.0 && s < boot, "spawn_s {s}, template boot {boot}");
        assert!(g["serial_line_s"].as_f64().unwrap() >= s, "{g}");
        assert!(g["random"].as_str().is_some_and(|x| x.len() == 32), "{g}");
    }
    assert_eq!(printed.len(), 4, "{printed:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    for i in 0..4 {
        assert!(
            stdout.contains(&format!("NERVES-STYLE-APP-IDENTITY serial=tpl-{i:04}")),
            "{stdout}"
        );
    }
    assert!(stdout.contains("template saved from"), "{stdout}");
    // The helper said so on its console (kept in the run directory), then the env shows it
    // on the clone's own overlay; the template's disk has no clone's serial.
    let said = std::fs::read_to_string(run.join("clone-0002.helper")).unwrap();
    assert!(
        said.contains("identity: nerves_serial_number=tpl-0002 in the U-Boot env"),
        "{said}"
    );
    assert!(
        env_of(&run.join("clone-0002.qcow2")).contains("nerves_serial_number=tpl-0002\n"),
        "clone 2's env"
    );
    assert!(!env_of(&run.join("template/disk.qcow2")).contains("tpl-"));
    nothing_left(&dir);
    assert_eq!(sha256(&img), before, "the image changed");
    eprintln!(
        "4 clones of a tuned firmware's template: template ready after {boot:.1} s, saved in \
         {:.2} s; spawn to identity answer p50 {:.3} s, max {:.3} s; spawn to the \
         application's serial line max {:.3} s; marginal PSS {:.1} MiB per guest; whole run \
         {:.0} s",
        r["template_save_s"].as_f64().unwrap(),
        r["spawn_s"]["p50"].as_f64().unwrap(),
        r["spawn_s"]["max"].as_f64().unwrap(),
        r["guests"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|g| g["serial_line_s"].as_f64())
            .fold(0.0, f64::max),
        r["memory"]["marginal_pss_mib"].as_f64().unwrap(),
        took.as_secs_f64()
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `fleet run IMAGE` with bad input exits 2 before anything boots, naming the fix.
#[test]
fn bad_input_for_a_template_of_an_image_exits_2_before_booting() {
    let dir = work("bad");
    std::fs::create_dir_all(&dir).unwrap();
    let blank = dir.join("blank.img");
    std::fs::write(&blank, vec![0u8; 1 << 20]).unwrap();
    let qcow = dir.join("disk.qcow2");
    run_ok(
        Command::new(require_tool("qemu-img"))
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&qcow)
            .arg("1M"),
    );
    for (args, want) in [
        (
            vec![
                blank.display().to_string(),
                "--marker".into(),
                "^(UP".into(),
            ],
            vec!["--marker \"^(UP\" is not a regular expression"],
        ),
        (
            vec![qcow.display().to_string(), "--marker".into(), "^UP".into()],
            vec![
                "fleet run",
                "a qcow2 image, not a raw one",
                "qemu-img convert",
            ],
        ),
        (
            vec![blank.display().to_string(), "--count".into(), "0".into()],
            vec!["--count 0: give 1 or more"],
        ),
    ] {
        let out = imgtool()
            .args(["fleet", "run"])
            .args(&args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        for w in want {
            assert!(err.contains(w), "{args:?}: `{w}` missing in: {err}");
        }
    }
    nothing_left(&dir);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_template_of_a_firmware_without_the_helper_is_refused_naming_the_fixes() {
    let dir = work("untuned");
    let img = apply(&nerves_fw(), &dir);
    let _q = qemu_lock();
    let out = imgtool()
        .args(["fleet", "run"])
        .arg(&img)
        .args(["--count", "2", "--marker", MARKER])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    for want in [
        "no imgtool helper answered",
        "imgtool fw tune",
        "imgtool fleet run --cold",
        &img.display().to_string(),
    ] {
        assert!(err.contains(want), "{want:?} missing in:\n{err}");
    }
    nothing_left(&dir);
    std::fs::remove_dir_all(&dir).unwrap();
}
