//! The README's commands are tests: each block is read from README.md and run as written, in a
//! fresh temporary working directory, so the README cannot drift from what works.
//!
//! `cargo run --release -p imgtool --` (and a bare `imgtool` at the start of a command) become
//! the binary cargo built for this test run: the same code, without a second, release build of
//! the workspace inside the test. Step 1 of "On a fresh machine" (`scripts/install-deps &&
//! scripts/test`) is the CI entry point itself (`.ci/run`), so CI running is its test; here
//! it is checked to be exactly that.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;
use serde_json::Value;

fn readme() -> String {
    std::fs::read_to_string(workspace_root().join("README.md")).unwrap()
}

/// The text under `## heading`, up to the next `## `.
fn section(md: &str, heading: &str) -> String {
    let start = md
        .find(&format!("\n## {heading}\n"))
        .unwrap_or_else(|| panic!("README has no `## {heading}` section"));
    let body = &md[start + heading.len() + 5..];
    body[..body.find("\n## ").unwrap_or(body.len())].to_string()
}

/// The ```sh blocks of a text.
fn sh_blocks(text: &str) -> Vec<String> {
    text.split("```sh\n")
        .skip(1)
        .map(|b| b[..b.find("```").expect("unclosed code block")].to_string())
        .collect()
}

/// A block's numbered steps (`# 1. …` comment lines start one): (title, commands).
fn steps(block: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in block.lines() {
        let numbered = line
            .strip_prefix("# ")
            .and_then(|r| r.split_once(". "))
            .filter(|(n, _)| n.parse::<u32>().is_ok());
        match (numbered, out.last_mut()) {
            (Some((_, title)), _) => out.push((title.to_string(), String::new())),
            (None, Some((_, body))) if !line.trim_start().starts_with('#') => {
                body.push_str(line);
                body.push('\n');
            }
            _ => {}
        }
    }
    out.into_iter()
        .map(|(t, b)| (t, b.trim().to_string()))
        .collect()
}

/// The commands with this test run's imgtool in place of cargo's.
fn with_test_binary(commands: &str) -> String {
    commands
        .replace("cargo run --release -p imgtool --", "\"$IMGTOOL\"")
        .lines()
        .map(|l| match l.strip_prefix("imgtool ") {
            Some(rest) => format!("\"$IMGTOOL\" {rest}"),
            None => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Run README commands with bash (errexit, pipefail) in `dir`.
fn run_in(dir: &Path, commands: &str) -> Output {
    let script = with_test_binary(commands);
    assert!(
        !script.contains("cargo "),
        "a cargo command is left: {script}"
    );
    Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .current_dir(dir)
        .env("IMGTOOL", bin_path())
        .output()
        .expect("spawn bash")
}

fn fresh_machine_steps() -> Vec<(String, String)> {
    let md = readme();
    let blocks = sh_blocks(&section(&md, "On a fresh machine"));
    assert_eq!(blocks.len(), 1, "one command block in `On a fresh machine`");
    let s = steps(&blocks[0]);
    assert_eq!(s.len(), 3, "{s:?}");
    s
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn readme_parsing_finds_steps_and_swaps_the_binary() {
    let block = "# 1. one\na && b\n\n# 2. two, with a\n#    continued comment\nc \\\n  -D x=\"$(cargo run --release -p imgtool -- k)\"\nimgtool v\n";
    let s = steps(block);
    assert_eq!(s.len(), 2);
    assert_eq!(s[0], ("one".to_string(), "a && b".to_string()));
    assert_eq!(s[1].0, "two, with a");
    let swapped = with_test_binary(&s[1].1);
    assert_eq!(
        swapped,
        "c \\\n  -D x=\"$(\"$IMGTOOL\" k)\"\n\"$IMGTOOL\" v"
    );
}

/// Step 1 is the CI entry point: `.ci/run` runs the same two scripts, in that order.
#[test]
fn fresh_machine_step_1_is_what_ci_runs() {
    let s = fresh_machine_steps();
    assert_eq!(s[0].1, "scripts/install-deps && scripts/test");
    let ci = std::fs::read_to_string(workspace_root().join(".ci/run")).unwrap();
    let cmds: Vec<&str> = ci
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("scripts/"))
        .collect();
    assert_eq!(cmds, ["scripts/install-deps", "scripts/test"], "{ci}");
    for script in cmds {
        let p = workspace_root().join(script);
        let mode = std::os::unix::fs::PermissionsExt::mode(&p.metadata().unwrap().permissions());
        assert!(mode & 0o111 != 0, "{script} is not executable");
    }
}

/// Step 2, the main job, gives a device that boots: kernel and root filesystem in their slots,
/// and `validate` boots it to the BEAM (our init's readiness line) and measures it. Then the
/// commands of "Validating images in CI" run on that image, as written: a baseline, and the
/// same image gated against it.
#[test]
fn fresh_machine_main_job_builds_a_device_that_boots() {
    require_tool("qemu-system-aarch64");
    let s = fresh_machine_steps();
    let dir = tempfile::tempdir().unwrap();
    let out = {
        let _q = qemu_lock();
        run_in(dir.path(), &s[1].1)
    };
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "step 2 failed:\n{stdout}\n{stderr}");
    let img = dir.path().join("special.img");
    assert!(img.is_file());
    // The kernel slot holds an arm64 Image (magic at 0x38), rootfs A a squashfs.
    let mut magic = [0u8; 4];
    std::os::unix::fs::FileExt::read_exact_at(
        &std::fs::File::open(&img).unwrap(),
        &mut magic,
        272 * 512 + 0x38,
    )
    .unwrap();
    assert_eq!(&magic, b"ARM\x64");
    let inspect = run_ok(imgtool().arg("inspect").arg(&img).arg("--json"));
    assert!(inspect.contains("squashfs"), "{inspect}");
    // Booted to our init's readiness line, with the guest's own figures.
    assert!(
        stdout.contains("ready after") && stdout.contains("guest: MemTotal"),
        "{stdout}"
    );
    assert!(stdout.contains("program RSS"), "{stdout}");

    let md = readme();
    let blocks = sh_blocks(&section(
        &md,
        "Validating images in CI (`imgtool validate`)",
    ));
    assert!(!blocks.is_empty());
    let out = {
        let _q = qemu_lock();
        run_in(dir.path(), &blocks[0])
    };
    let (stdout, stderr) = text(&out);
    assert!(
        out.status.success(),
        "the validation commands failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("against base.json"), "{stdout}");
    let base: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("base.json")).unwrap())
            .unwrap();
    assert!(base["guest"]["program_rss_kib"].as_u64().unwrap() > 1024);
}

/// Step 3, the demo with its default arguments, from an empty working directory.
#[test]
fn fresh_machine_demo_runs_with_default_arguments() {
    require_tool("qemu-system-aarch64");
    let s = fresh_machine_steps();
    let dir = tempfile::tempdir().unwrap();
    let out = {
        let _q = qemu_lock();
        run_in(dir.path(), &s[2].1)
    };
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "step 3 failed:\n{stdout}\n{stderr}");
    let demo = dir.path().join("imgtool-demo");
    for f in ["firmware.fw", "special.img", "report.json"] {
        assert!(
            demo.join(f).is_file(),
            "no imgtool-demo/{f}: {stdout}\n{stderr}"
        );
    }
    assert!(stdout.contains("ready after"), "{stdout}");
    let r: Value =
        serde_json::from_str(&std::fs::read_to_string(demo.join("report.json")).unwrap()).unwrap();
    assert!(
        r["guest"]["program_rss_kib"].as_u64().unwrap() > 1024,
        "{r}"
    );
    assert_eq!(r["boot"]["clean_poweroff"], true, "{r}");
}

fn ci_recipe() -> PathBuf {
    workspace_root().join("examples/ci/gate.sh")
}

/// The CI recipe runs as a user would run it: it builds the image, gates it against the
/// committed baseline and passes; against a baseline whose BEAM held 20 % less memory, it fails.
#[test]
fn ci_recipe_gates_against_its_committed_baseline() {
    require_tool("qemu-system-aarch64");
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    let gate = |env: &[(&str, &Path)], runs: &str| {
        let _q = qemu_lock();
        let mut c = Command::new(ci_recipe());
        c.current_dir(dir.path())
            .env("IMGTOOL", bin_path())
            .env("WORK", &work)
            .env("RUNS", runs);
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().unwrap()
    };
    let out = gate(&[], "3");
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "gate.sh failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("gate passed"), "{stdout}");
    let r: Value =
        serde_json::from_str(&std::fs::read_to_string(work.join("report.json")).unwrap()).unwrap();
    assert_eq!(r["runs"], 3);
    let judged: Vec<&Value> = r["diff"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|row| row["verdict"] == "ok")
        .collect();
    assert!(judged.len() >= 8, "most figures judged ok: {r}");

    // A baseline from a lighter guest: the same recipe fails, naming the figure.
    let committed: Value = serde_json::from_str(
        &std::fs::read_to_string(workspace_root().join("examples/ci/baseline.json")).unwrap(),
    )
    .unwrap();
    let mut lighter = committed.clone();
    let rss = committed["guest"]["program_rss_kib"].as_u64().unwrap();
    lighter["guest"]["program_rss_kib"] = (rss * 8 / 10).into();
    let p = dir.path().join("lighter.json");
    std::fs::write(&p, serde_json::to_string(&lighter).unwrap()).unwrap();
    let img = work.join("special.img");
    let out = gate(&[("BASELINE", &p), ("IMAGE", &img)], "1");
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stderr.contains("guest.program_rss_kib"), "{stderr}");
}
