//! End-to-end tests: the `fwup` personality against the oracle fixtures recorded with real
//! fwup 1.16 (shared/fixtures/fwup/check.sh) and a create/apply round trip.

mod common;

use std::path::PathBuf;
use std::process::Command;

/// A symlink named `fwup` to the built binary (argv[0] selects the personality).
fn fwup_link(dir: &tempfile::TempDir) -> PathBuf {
    let link = dir.path().join("fwup");
    std::os::unix::fs::symlink(common::bin_path(), &link).unwrap();
    link
}

/// The oracle fixtures' check.sh (common::fwup_fixtures: the shared set, else the copy in
/// tests/fixtures, so a bare clone still runs them).
fn check_sh() -> PathBuf {
    common::fwup_fixtures().join("check.sh")
}

#[test]
fn oracle_fixtures_pass() {
    for t in ["python3", "mdir", "mcopy", "mlabel", "fsck.fat"] {
        common::require_tool(t);
    }
    let dir = tempfile::tempdir().unwrap();
    let link = fwup_link(&dir);
    let out = Command::new("bash")
        .arg(check_sh())
        .arg(&link)
        .output()
        .expect("run check.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or("");
    assert!(
        last == "106 passed, 0 failed" && out.status.success(),
        "check.sh failures:\n{}",
        stdout
            .lines()
            .filter(|l| l.starts_with("FAIL"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // The byte-exact meta.conf and the image hashes are among the checks that ran.
    assert!(stdout.contains("PASS 01-nerves-qemu-aarch64/create/meta.conf"));
    assert!(stdout.contains("PASS 01-nerves-qemu-aarch64/step2(upgrade)/image_sha256"));
    assert!(stdout.contains("PASS 04-mbr-bigoffset/step1(complete)/image_sha256"));
    assert!(stdout.contains("PASS 09-progress/step1(complete)/stdout"));
    assert!(stdout.contains("PASS 06-fat/step1(complete)/fsck_fat"));
}

#[test]
fn errors_are_clear_and_nonzero() {
    let dir = tempfile::tempdir().unwrap();
    let link = fwup_link(&dir);
    let conf = dir.path().join("fwup.conf");
    std::fs::write(&conf, "meta-product = x\nbogus-key = 1\n").unwrap();
    let out = Command::new(&link)
        .args(["-c", "-f"])
        .arg(&conf)
        .arg("-o")
        .arg(dir.path().join("x.fw"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    // Where: file and line on stderr (as libconfuse prints it); what failed: on stdout.
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("fwup.conf:2") && err.contains("bogus-key"),
        "{err}"
    );
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(s.contains("Error parsing configuration file"), "{s}");
    assert!(
        !dir.path().join("x.fw").exists(),
        "no partial archive is left"
    );
}

/// `imgtool fwup` passes every flag to fwup's command line, --version and --help included.
#[test]
fn subcommand_and_personality_are_fwup() {
    let dir = tempfile::tempdir().unwrap();
    let link = fwup_link(&dir);
    for mut cmd in [
        {
            let mut c = common::imgtool();
            c.arg("fwup");
            c
        },
        Command::new(&link),
    ] {
        let out = cmd.arg("--version").output().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "1.16.0\n");
    }
    let out = common::imgtool().args(["fwup", "--help"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("Usage: fwup"));
}
