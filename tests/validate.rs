//! End-to-end tests: `imgtool validate` against real qemu guests.
//!
//! The guest here is imgtool's own loader on a real nerves-qemu-aarch64 image with no kernel:
//! it prints its banner (our marker) and halts, so qemu runs the machine until it is stopped.
//! That exercises the whole engine (qemu argv from `qemu-cmd`, marker wait, RSS/PSS sampling,
//! report, baseline gate) on a real qemu process. The BEAM-guest test (marker from our init,
//! guest snapshot) needs `imgtool rootfs build` and a kernel, and is `beam_guest_*` below.

mod common;

use std::path::Path;

use common::*;
use serde_json::Value;

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
