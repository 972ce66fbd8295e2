//! End-to-end tests: `imgtool validate` against real qemu guests.
//!
//! Most guests here are imgtool's own loader on a real nerves-qemu-aarch64 image with no
//! kernel: it prints its banner (our marker) and halts, so qemu runs the machine until it is
//! stopped. That exercises the engine (qemu argv from `qemu-cmd`, marker wait, RSS/PSS
//! sampling, report, baseline gate) on a real qemu process in well under a second of boot.
//! The CI gate itself is `beam_guest_*`: a real BEAM guest (the small kernel, Debian's
//! erlang-base, our init) validated, then a heavier profile failing `--baseline`.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use common::*;
use serde_json::Value;

/// One qemu at a time: the machine has two cores, and a second qemu would share the first one's
/// binary pages and so lower its PSS.
static QEMU: Mutex<()> = Mutex::new(());

fn qemu_lock() -> std::sync::MutexGuard<'static, ()> {
    QEMU.lock().unwrap_or_else(|e| e.into_inner())
}

fn build_image(dir: &Path) -> std::path::PathBuf {
    let img = dir.join("special.img");
    run_ok(
        imgtool()
            .args(["build", "nerves-qemu-aarch64", "-o"])
            .arg(&img),
    );
    img
}

fn validate_loader(
    img: &Path,
    json: &Path,
    extra: &[&str],
    baseline: Option<&Path>,
) -> std::process::Output {
    let mut c = imgtool();
    c.arg("validate")
        .arg(img)
        .args([
            "--marker",
            "^imgtool-loader ",
            "--no-snapshot",
            "--settle",
            "1.5",
        ])
        .args(["--accel", "tcg", "--no-net", "--timeout", "60", "--json"])
        .arg(json);
    if let Some(b) = baseline {
        c.arg("--baseline").arg(b);
    }
    if !extra.is_empty() {
        c.arg("--").args(extra);
    }
    c.output().expect("spawn imgtool")
}

fn read_json(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

#[test]
fn validates_a_real_qemu_guest_and_gates_on_a_heavier_one() {
    require_tool("qemu-system-aarch64");
    let dir = tempfile::tempdir().unwrap();
    let img = build_image(dir.path());
    let _q = qemu_lock();
    let base = dir.path().join("base.json");
    let out = validate_loader(&img, &base, &[], None);
    assert_ok(&out, "imgtool validate");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("ready after"), "{stdout}");
    let r = read_json(&base);
    assert_eq!(r["accel"], "tcg");
    assert!(r["marker"]["line"]
        .as_str()
        .unwrap()
        .starts_with("imgtool-loader "));
    let marker_s = r["boot"]["marker_s"].as_f64().unwrap();
    assert!(marker_s > 0.0 && marker_s < 60.0, "{marker_s}");
    // A qemu process running an arm64 virt machine: tens of MiB resident, PSS no more than RSS.
    let rss_peak = r["host"]["rss_peak_kib"].as_u64().unwrap();
    let pss = r["host"]["pss_settled_kib"].as_u64().unwrap();
    let rss = r["host"]["rss_settled_kib"].as_u64().unwrap();
    assert!(rss_peak > 10 * 1024 && rss_peak >= rss, "{r}");
    assert!(pss > 5 * 1024 && pss <= rss + 1024, "{r}");
    assert!(r["samples"].as_array().unwrap().len() >= 5, "{r}");
    // --no-snapshot: no guest figures, and the keys scripts read are still there (null).
    assert!(r["guest"].is_null());

    // The same guest is within 5% of itself...
    let again = dir.path().join("again.json");
    let out = validate_loader(&img, &again, &[], Some(&base));
    assert_ok(&out, "imgtool validate --baseline (same guest)");
    assert!(String::from_utf8_lossy(&out.stdout).contains("host.pss_settled_kib"));

    // ...and a deliberately heavier one fails the gate: qemu loads a 32 MiB blob into guest
    // RAM (and keeps its own copy), so host RSS and PSS grow by far more than 5%.
    let blob = dir.path().join("blob.bin");
    let mut data = vec![0u8; 32 << 20];
    let mut x: u64 = 0x9e3779b97f4a7c15;
    for b in data.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    std::fs::write(&blob, &data).unwrap();
    let heavy = dir.path().join("heavy.json");
    let loader_dev = format!(
        "loader,file={},addr=0x44000000,force-raw=on",
        blob.display()
    );
    let out = validate_loader(&img, &heavy, &["-device", &loader_dev], Some(&base));
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.contains("REGRESSED"), "{stdout}");
    assert!(stderr.contains("host.pss_settled_kib"), "{stderr}");
    // The report is written even when the gate fails, with the diff in it.
    let h = read_json(&heavy);
    assert!(
        h["host"]["pss_settled_kib"].as_u64().unwrap() > pss + 24 * 1024,
        "{h}"
    );
    let row = h["diff"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["key"] == "host.pss_settled_kib")
        .unwrap()
        .clone();
    assert_eq!(row["regressed"], true);
}

#[test]
fn marker_timeout_and_bad_input_are_clear_errors() {
    require_tool("qemu-system-aarch64");
    let dir = tempfile::tempdir().unwrap();
    let img = build_image(dir.path());
    let _q = qemu_lock();
    let out = imgtool()
        .arg("validate")
        .arg(&img)
        .args([
            "--marker",
            "NEVER-PRINTED",
            "--timeout",
            "3",
            "--accel",
            "tcg",
            "--no-net",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("NEVER-PRINTED") && err.contains("3 s"),
        "{err}"
    );
    // The console tail shows what the guest did say.
    assert!(err.contains("imgtool-loader"), "{err}");

    let out = imgtool()
        .args(["validate", "/nonexistent.img", "--accel", "tcg"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent.img"));

    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "{\"x\": 1}").unwrap();
    let out = imgtool()
        .arg("validate")
        .arg(&img)
        .arg("--baseline")
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.json") && err.contains("pss_settled_kib"),
        "{err}"
    );

    let out = imgtool()
        .arg("validate")
        .arg(&img)
        .args(["--threshold", "five"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("percentage"));
}

#[test]
fn experiment_file_errors_name_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("e.yaml");
    std::fs::write(&f, "name: x\nprofiles: []\nimages: {}\n").unwrap();
    let out = imgtool().arg("experiment").arg(&f).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("e.yaml") && err.contains("profiles"), "{err}");
    std::fs::write(&f, "name: x\nprofiles: [a]\nimages: {}\n").unwrap();
    let err =
        String::from_utf8_lossy(&imgtool().arg("experiment").arg(&f).output().unwrap().stderr)
            .into_owned();
    assert!(err.contains("no image for profile `a`"), "{err}");
    std::fs::write(&f, "name: x\nprofiles: [a]\nbogus: 1\n").unwrap();
    let err =
        String::from_utf8_lossy(&imgtool().arg("experiment").arg(&f).output().unwrap().stderr)
            .into_owned();
    assert!(err.contains("bogus"), "{err}");
}

#[test]
fn experiment_runs_prebuilt_images_and_writes_table_chart_json() {
    require_tool("qemu-system-aarch64");
    let dir = tempfile::tempdir().unwrap();
    let img = build_image(dir.path());
    // Two "profiles" on the same image, one with a small TCG translation cache; the loader's
    // banner is the marker (no init, so no snapshot).
    let f = dir.path().join("exp.yaml");
    std::fs::write(
        &f,
        format!(
            "name: loader only\nprofiles: [plain, small-tb]\nruns: 1\nsettle: 1\ntimeout: 60\n\
             marker: '^imgtool-loader '\nsnapshot: false\n\
             images: {{plain: {0}, small-tb: {0}}}\nqemu: {{small-tb: [-accel, 'tcg,tb-size=8']}}\nout: rep\n",
            img.display()
        ),
    )
    .unwrap();
    let _q = qemu_lock();
    let out = imgtool().arg("experiment").arg(&f).output().unwrap();
    assert_ok(&out, "imgtool experiment");
    let rep = dir.path().join("rep");
    let table = std::fs::read_to_string(rep.join("table.md")).unwrap();
    assert!(
        table.contains("| plain | 1 |") && table.contains("| small-tb | 1 |"),
        "{table}"
    );
    let svg = std::fs::read_to_string(rep.join("rss.svg")).unwrap();
    assert!(svg.starts_with("<?xml") && svg.trim_end().ends_with("</svg>"));
    assert_eq!(svg.matches("<polyline").count(), 2, "{svg}");
    let j = read_json(&rep.join("results.json"));
    assert_eq!(j["profiles"][1]["qemu_args"][1], "tcg,tb-size=8");
    assert!(j["summaries"][0]["figures"].as_array().unwrap().len() >= 3);
}

/// The small guest kernel, built once and cached by `imgtool kernel build` (shared with the
/// other tests and with `imgtool demo`).
fn kernel() -> PathBuf {
    let out = run_ok(imgtool().args(["kernel", "build"]));
    PathBuf::from(out.lines().last().unwrap().trim())
}

/// Debian .debs downloaded once per target dir (the same cache tests/rootfs.rs uses).
fn deb_cache() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("rootfs-cache")
}

/// A BEAM guest image: the built-in beam-guest root filesystem under `profile` (a name or a
/// file), the kernel, the Nerves layout with the profile's command line.
fn beam_image(dir: &Path, name: &str, profile: &str, kernel: &Path) -> PathBuf {
    let rootfs = dir.join(format!("{name}.squashfs"));
    run_ok(
        imgtool()
            .args([
                "rootfs",
                "build",
                "beam-guest",
                "--profile",
                profile,
                "--cache",
            ])
            .arg(deb_cache())
            .arg("-o")
            .arg(&rootfs),
    );
    let show = run_ok(imgtool().args(["rootfs", "profile", "show", profile, "--json"]));
    let cmdline = serde_json::from_str::<Value>(&show).unwrap()["kernel"]["cmdline"]
        .as_str()
        .unwrap()
        .to_string();
    let img = dir.join(format!("{name}.img"));
    run_ok(
        imgtool()
            .args(["build", "nerves-qemu-aarch64", "-o"])
            .arg(&img)
            .arg("-D")
            .arg(format!("kernel={}", kernel.display()))
            .arg("-D")
            .arg(format!("rootfs={}", rootfs.display()))
            .arg("-D")
            .arg(format!("cmdline={cmdline}")),
    );
    img
}

fn validate_beam(img: &Path, json: &Path, baseline: Option<&Path>) -> std::process::Output {
    let mut c = imgtool();
    c.arg("validate")
        .arg(img)
        .args([
            "-m",
            "110M",
            "--accel",
            "tcg",
            "--no-net",
            "--settle",
            "2",
            "--console",
        ])
        .args(["--timeout", "300", "--json"])
        .arg(json);
    if let Some(b) = baseline {
        // Boot time under TCG on a shared two-core machine is not what this gate is about.
        c.arg("--baseline")
            .arg(b)
            .args(["--threshold", "5%", "--threshold", "boot.marker_s=400%"]);
    }
    c.output().expect("spawn imgtool")
}

/// The CI gate on a real BEAM guest: it boots to our init's marker and its report is written
/// with host and guest figures; the same guest with a deliberately heavier profile (the BEAM
/// holds a 28 MB binary) fails `validate --baseline` on the memory figures.
#[test]
fn beam_guest_validates_and_a_heavier_profile_fails_the_gate() {
    require_tool("qemu-system-aarch64");
    let dir = tempfile::tempdir().unwrap();
    let k = kernel();
    // nerves-tuned (sysctls, zram, BEAM flags) plus kernel knobs the init writes at boot and
    // once the BEAM is up.
    let base_profile = dir.path().join("base.yaml");
    std::fs::write(
        &base_profile,
        "include: [nerves-tuned]\nsysfs: { /sys/block/vda/queue/read_ahead_kb: 64 }\n\
         after-ready: { vm.drop_caches: 1 }\n",
    )
    .unwrap();
    let base_img = beam_image(dir.path(), "tuned", base_profile.to_str().unwrap(), &k);
    let heavy_profile = dir.path().join("heavy.yaml");
    std::fs::write(
        &heavy_profile,
        "include: [base.yaml]\nbeam:\n  args: [-eval, \
         'persistent_term:put(ballast, binary:copy(<<\"imgtool\">>, 4000000)).']\n",
    )
    .unwrap();
    let heavy_img = beam_image(dir.path(), "heavy", heavy_profile.to_str().unwrap(), &k);

    let _q = qemu_lock();
    let base = dir.path().join("base.json");
    let out = validate_beam(&base_img, &base, None);
    assert_ok(&out, "imgtool validate (BEAM guest)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("ready after") && stdout.contains("guest: MemTotal"),
        "{stdout}"
    );
    // What the init did in the guest, from the console (--console copies it to stderr).
    let console = String::from_utf8_lossy(&out.stderr);
    for line in [
        "IMGTOOL-INIT mounted /dev/vda3 (f2fs) at /root",
        "IMGTOOL-INIT applied 4 sysctls",
        "IMGTOOL-INIT wrote 1 kernel knob(s) at boot",
        "IMGTOOL-INIT zram swap on: 32768 KiB, lzo-rle, priority 100",
        "IMGTOOL-INIT wrote 1 kernel knob(s) at ready",
        "IMGTOOL-INIT poweroff requested: stopping the program",
        "IMGTOOL-INIT power off",
    ] {
        assert!(
            console.contains(line),
            "`{line}` not on the console:\n{console}"
        );
    }
    let r = read_json(&base);
    assert_eq!(r["accel"], "tcg");
    assert!(r["marker"]["line"]
        .as_str()
        .unwrap()
        .starts_with("IMGTOOL-READY uptime_ms="));
    assert_eq!(r["boot"]["clean_poweroff"], true, "{r}");
    let g = &r["guest"];
    let total = g["mem_total_kib"].as_u64().unwrap();
    assert!((80 * 1024..110 * 1024).contains(&total), "{g}");
    assert!(g["mem_available_kib"].as_u64().unwrap() < total);
    let beam_rss = g["program_rss_kib"].as_u64().unwrap();
    assert!((10 * 1024..80 * 1024).contains(&beam_rss), "{g}");
    // nerves-tuned sets up zram swap: the init reports the device's figures.
    assert!(g["zram_used_kib"].is_u64(), "{g}");
    let pss = r["host"]["pss_settled_kib"].as_u64().unwrap();
    assert!(pss > total / 4 && pss < 400 * 1024, "{r}");

    let heavy = dir.path().join("heavy.json");
    let out = validate_beam(&heavy_img, &heavy, Some(&base));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stdout.contains("REGRESSED"), "{stdout}");
    assert!(stderr.contains("guest.program_rss_kib"), "{stderr}");
    let h = read_json(&heavy);
    let regressed: Vec<&str> = h["diff"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|row| row["regressed"] == true)
        .map(|row| row["key"].as_str().unwrap())
        .collect();
    for k in ["guest.program_rss_kib", "host.pss_settled_kib"] {
        assert!(regressed.contains(&k), "{k} not regressed: {regressed:?}");
    }
    assert!(!regressed.contains(&"boot.marker_s"), "{regressed:?}");
    assert!(
        h["guest"]["program_rss_kib"].as_u64().unwrap() > beam_rss + 20 * 1024,
        "{h}"
    );
}
