//! "Your own firmware": a Nerves-style .fw that imgtool did not build goes through fw inspect,
//! fw tune, fwup (ours and the real one), validate and experiments. The firmware is made from
//! real parts by scripts/nerves-fw: erlinit 1.15.1 cross-built static, an OTP release on
//! Debian's arm64 ERTS, the real nerves_system_qemu_aarch64 /etc files, fwup.conf and
//! fwup_include/, packed by the real fwup 1.16 with imgtool's kernel as the kernel resource.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use serde_json::Value;

const MARKER: &str = "^NERVES-STYLE-APP-UP";

/// The real fwup 1.16 (common::real_fwup: scripts/fwup-oracle builds it from the shared
/// sources; a test fails without it). With `IMGTOOL_NO_ORACLE=1`, imgtool's fwup stands in and
/// the test says so.
fn real_fwup() -> Command {
    match common::real_fwup() {
        Some(p) => Command::new(p),
        None => {
            println!("{NO_ORACLE}");
            let mut c = imgtool();
            c.arg("fwup");
            c
        }
    }
}

fn json_of(cmd: &mut Command) -> Value {
    serde_json::from_str(&run_ok(cmd)).expect("JSON output")
}

fn apply(fwup: &mut Command, fw: &Path, img: &Path) {
    run_ok(
        fwup.args(["-a", "-q", "-i"])
            .arg(fw)
            .arg("-d")
            .arg(img)
            .args(["-t", "complete"]),
    );
}

/// validate with the release's marker; returns the report and the console text.
fn validate(img: &Path, json: &Path, extra: &[&str]) -> (Value, String) {
    let _q = qemu_lock();
    let out = imgtool()
        .arg("validate")
        .arg(img)
        .args([
            "--marker",
            MARKER,
            "--runs",
            "1",
            "--accel",
            "tcg",
            "--console",
        ])
        .args(["--timeout", "240", "--json"])
        .arg(json)
        .args(extra)
        .output()
        .unwrap();
    assert_ok(&out, "imgtool validate");
    let report = serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap();
    (report, String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn inspect_shows_what_the_firmware_is() {
    let fw = nerves_fw();
    let v = json_of(imgtool().args(["fw", "inspect", "--json"]).arg(&fw));
    assert_eq!(v["platform"], "qemu_aarch64");
    assert_eq!(v["architecture"], "arm");
    assert_eq!(v["version"], "0.1.0");
    let r = &v["rootfs"];
    assert_eq!(r["fs_type"], "squashfs");
    assert_eq!(r["compression"], "gzip");
    assert_eq!(r["pid1"]["kind"], "erlinit", "{r}");
    assert_eq!(r["release"]["name"], "nerves_style_app");
    assert_eq!(r["release"]["version"], "0.1.0");
    assert_eq!(r["release"]["root"], "/srv/erlang");
    assert_eq!(r["helper"], false);
    let flags: Vec<&str> = r["vm_args_flags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    assert!(flags.contains(&"-mode embedded"), "{flags:?}");
    assert!(r["erlinit_config"]
        .as_str()
        .unwrap()
        .contains("-r /srv/erlang"));
    assert!(r["sysctl_conf"]
        .as_str()
        .unwrap()
        .contains("vm.swappiness=1"));
    let kernel = v["kernel"]["version"].as_str().unwrap();
    assert!(kernel.starts_with("Linux version 6.1."), "{kernel}");
    let args: Vec<&str> = v["kernel_args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["name"].as_str().unwrap())
        .collect();
    assert_eq!(args, ["a.kernel_args", "b.kernel_args"]);
    // The text form names the same things.
    let text = run_ok(imgtool().args(["fw", "inspect"]).arg(&fw));
    assert!(text.contains("PID 1:        erlinit"), "{text}");
    assert!(
        text.contains("release:      nerves_style_app 0.1.0"),
        "{text}"
    );
}

#[test]
fn complete_then_validate_boots_erlinit_to_the_release_line() {
    let fw = nerves_fw();
    let d = tempfile::tempdir().unwrap();
    let ours = d.path().join("special.img");
    let theirs = d.path().join("fwup.img");
    apply(imgtool().arg("fwup"), &fw, &ours);
    apply(&mut real_fwup(), &fw, &theirs);
    assert_eq!(sha256(&ours), sha256(&theirs), "same image as real fwup's");
    let before = sha256(&ours);
    let (r, console) = validate(&ours, &d.path().join("r.json"), &[]);
    let line = r["marker"]["line"].as_str().unwrap();
    assert!(
        line.starts_with("NERVES-STYLE-APP-UP v0.1.0 serial="),
        "{line}"
    );
    assert!(line.contains(" ets_bytes="), "whole line: {line}");
    // erlinit is PID 1: the kernel ran /sbin/init, and erlinit's own log lines follow.
    assert!(
        console.contains("Run /sbin/init as init process"),
        "{console}"
    );
    assert!(console.contains("erlinit: "), "{console}");
    // No imgtool helper in this firmware: host figures only.
    assert!(r["guest"].is_null(), "{}", r["guest"]);
    assert!(r["host"]["pss_settled_kib"].as_u64().unwrap() > 10_000);
    assert_eq!(sha256(&ours), before, "validate must not change the image");
}

#[test]
fn tune_applies_with_real_fwup_and_the_profile_is_in_force() {
    let fw = nerves_fw();
    let d = tempfile::tempdir().unwrap();
    let input_sha = sha256(&fw);
    let tuned = d.path().join("tuned.fw");
    let rep = json_of(
        imgtool()
            .args(["fw", "tune", "--profile", "minimal", "--json"])
            .arg(&fw)
            .arg("-o")
            .arg(&tuned),
    );
    assert_eq!(sha256(&fw), input_sha, "the input is never modified");
    let applied: Vec<&str> = rep["applied"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["what"].as_str().unwrap())
        .collect();
    for what in [
        "BEAM flags",
        "sysctls",
        "zram",
        "helper",
        "kernel arguments",
    ] {
        assert!(applied.contains(&what), "{what} not applied: {rep}");
    }
    let not: Vec<&str> = rep["not_applied"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["what"].as_str().unwrap())
        .collect();
    assert!(
        not.contains(&"kernel config") && not.contains(&"qemu settings"),
        "{rep}"
    );
    // Reproducible: the same input and profile give the same bytes.
    let again = d.path().join("again.fw");
    run_ok(
        imgtool()
            .args(["fw", "tune", "--profile", "minimal"])
            .arg(&fw)
            .arg("-o")
            .arg(&again),
    );
    assert_eq!(sha256(&tuned), sha256(&again));
    let info = json_of(imgtool().args(["fw", "inspect", "--json"]).arg(&tuned));
    assert_eq!(info["rootfs"]["helper"], true);
    assert_eq!(info["rootfs"]["compression"], "gzip", "its own compression");

    // The real fwup takes it (meta.conf's hashes and sizes hold) and it boots.
    let img = d.path().join("special.img");
    apply(&mut real_fwup(), &tuned, &img);
    let (r, _) = validate(&img, &d.path().join("r.json"), &["-m", "110M"]);
    let f = &r["guest"]["in_force"];
    assert!(f.is_object(), "the helper answered no snapshot: {r}");
    // Each of the profile's sysctls, read back in the guest.
    let profile = json_of(imgtool().args(["rootfs", "profile", "show", "minimal", "--json"]));
    for (k, v) in profile["sysctl"].as_object().unwrap() {
        assert_eq!(f["sysctl"][k], v.as_str().unwrap(), "{k}: {f}");
    }
    // The BEAM's flags, as erlexec passed vm.args on to beam.smp (+X becomes -X).
    let argv: Vec<&str> = f["cmdline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    for (flag, v) in profile["beam"]["flags"].as_object().unwrap() {
        let dash = format!("-{}", &flag[1..]);
        let v = v.as_str().unwrap();
        assert!(
            argv.windows(2).any(|w| w[0] == dash && w[1] == v),
            "{flag} {v} not in the BEAM's argv {argv:?}"
        );
    }
    assert!(
        argv.windows(2).any(|w| w == ["-mode", "interactive"]),
        "{argv:?}"
    );
    // zram swap.
    let swaps = f["swaps"].as_array().unwrap();
    assert!(
        swaps
            .iter()
            .any(|s| s[0] == "/dev/zram0" && s[1].as_u64().unwrap() > 40_000),
        "{swaps:?}"
    );
}

/// Build a small .fw with imgtool's fwup: a kernel-like blob and, if given, a squashfs of `tree`.
fn small_fw(dir: &Path, name: &str, tree: Option<&Path>) -> PathBuf {
    let conf = dir.join(format!("{name}.conf"));
    let blob = dir.join("blob.bin");
    std::fs::write(&blob, vec![0x5au8; 4096]).unwrap();
    let mut text = String::from(
        "meta-product = \"t\"\nmeta-platform = \"qemu_aarch64\"\nmeta-architecture = \"arm\"\n\
         file-resource Image { host-path = \"blob.bin\" }\n",
    );
    if let Some(t) = tree {
        let sq = dir.join(format!("{name}.squashfs"));
        run_ok(
            imgtool()
                .args(["mkfs", "squashfs"])
                .arg(t)
                .arg("-o")
                .arg(&sq),
        );
        text.push_str(&format!(
            "file-resource rootfs.img {{ host-path = \"{}\" }}\n",
            sq.file_name().unwrap().to_string_lossy()
        ));
    }
    text.push_str("task complete { on-resource Image { raw_write(0) } }\n");
    std::fs::write(&conf, text).unwrap();
    let fw = dir.join(format!("{name}.fw"));
    run_ok(
        imgtool()
            .current_dir(dir)
            .args(["fwup", "-c", "-f"])
            .arg(&conf)
            .arg("-o")
            .arg(&fw),
    );
    fw
}

fn tree(dir: &Path, name: &str, files: &[(&str, &[u8])]) -> PathBuf {
    let root = dir.join(name);
    for (p, data) in files {
        let f = root.join(p);
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(f, data).unwrap();
    }
    std::fs::create_dir_all(&root).unwrap();
    root
}

#[test]
fn tune_refuses_bad_input_and_leaves_it_untouched() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    // An erlinit stand-in: what identifies erlinit is the config path it reads.
    let erlinit: &[u8] = b"\x7fELF fake erlinit reading /etc/erlinit.config";
    let boot_ok: &[u8] = &[131, 104, 0];
    let not_fw = dir.join("not.fw");
    std::fs::write(&not_fw, b"PK\x03\x04 but not really a zip archive at all").unwrap();
    let cases: Vec<(&str, PathBuf, &str)> = vec![
        ("not a .fw", not_fw, "not a firmware archive"),
        (
            "no rootfs",
            small_fw(dir, "norootfs", None),
            "no root filesystem",
        ),
        (
            "no erlinit",
            small_fw(
                dir,
                "noerlinit",
                Some(&tree(
                    dir,
                    "t1",
                    &[("sbin/init", b"#!/bin/sh\n"), ("etc/x", b"")],
                )),
            ),
            "not erlinit",
        ),
        (
            "no release",
            small_fw(
                dir,
                "norelease",
                Some(&tree(
                    dir,
                    "t2",
                    &[
                        ("sbin/init", erlinit),
                        ("etc/erlinit.config", b"-r /srv/erlang\n"),
                    ],
                )),
            ),
            "no OTP release under /srv/erlang",
        ),
        (
            "not BEAM",
            small_fw(
                dir,
                "notbeam",
                Some(&tree(
                    dir,
                    "t3",
                    &[
                        ("sbin/init", erlinit),
                        ("etc/erlinit.config", b""),
                        ("srv/erlang/releases/start_erl.data", b"13.1.5 1.0\n"),
                        ("srv/erlang/releases/1.0/app.boot", b"not a boot script"),
                    ],
                )),
            ),
            "not a BEAM release",
        ),
        (
            "no ERTS",
            small_fw(
                dir,
                "noerts",
                Some(&tree(
                    dir,
                    "t4",
                    &[
                        ("sbin/init", erlinit),
                        ("etc/erlinit.config", b""),
                        ("srv/erlang/releases/1.0/app.boot", boot_ok),
                    ],
                )),
            ),
            "no ERTS with bin/beam.smp",
        ),
    ];
    for (what, fw, expect) in cases {
        let before = sha256(&fw);
        let outdir = dir.join(format!("out-{}", what.replace(' ', "-")));
        std::fs::create_dir_all(&outdir).unwrap();
        let out = imgtool()
            .args(["fw", "tune", "--profile", "minimal"])
            .arg(&fw)
            .arg("-o")
            .arg(outdir.join("tuned.fw"))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{what}: {err}");
        assert!(
            err.contains(expect),
            "{what}: expected `{expect}` in: {err}"
        );
        assert!(
            err.contains(&fw.display().to_string()),
            "{what}: names the file: {err}"
        );
        assert_eq!(sha256(&fw), before, "{what}: input untouched");
        let left: Vec<_> = std::fs::read_dir(&outdir).unwrap().collect();
        assert!(left.is_empty(), "{what}: nothing half-written: {left:?}");
    }
    // A profile that does not exist is bad input too.
    let out = imgtool()
        .args(["fw", "tune", "--profile", "no-such-profile"])
        .arg(nerves_fw())
        .arg("-o")
        .arg(dir.join("x.fw"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn experiment_on_the_firmware_compares_profiles() {
    let fw = nerves_fw();
    let d = tempfile::tempdir().unwrap();
    let exp = d.path().join("fw.yaml");
    std::fs::write(
        &exp,
        format!(
            "name: firmware test\nfirmware: {}\nprofiles: [baseline, minimal]\nruns: 3\n\
             marker: \"{MARKER}\"\nsettle: 8\ntimeout: 240\nout: out\n",
            fw.display()
        ),
    )
    .unwrap();
    let _q = qemu_lock();
    run_ok(imgtool().arg("experiment").arg(&exp));
    let out = d.path().join("out");
    let table = std::fs::read_to_string(out.join("table.md")).unwrap();
    assert!(
        table.contains("| baseline |") && table.contains("| minimal |"),
        "{table}"
    );
    assert!(out.join("rss.svg").is_file());
    let v: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    let pss = |name: &str| -> f64 {
        let p = v["profiles"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["profile"] == name)
            .unwrap_or_else(|| panic!("{name} in {v}"));
        let reports = p["reports"].as_array().unwrap();
        assert_eq!(reports.len(), 3, "3 boots of {name}");
        for r in reports {
            assert!(
                r["guest"]["mem_available_kib"].as_u64().unwrap() > 0,
                "{name}: guest MemAvailable from the helper: {r}"
            );
        }
        let mut v: Vec<f64> = reports
            .iter()
            .map(|r| r["host"]["pss_settled_kib"].as_f64().unwrap())
            .collect();
        v.sort_by(f64::total_cmp);
        v[1]
    };
    // Issue 20's bound. The committed run measures 0.59x by RSS (README "Your own firmware",
    // experiments/results/nerves-fw/): the profile's qemu levers, its BEAM flags (+Mea min) and the helper's knobs
    // apply; its kernel fragments cannot.
    let (base, min) = (pss("baseline"), pss("minimal"));
    assert!(
        min <= 0.6 * base,
        "minimal's host PSS {min} KiB is more than 0.6x baseline's {base} KiB:\n{table}"
    );
}
