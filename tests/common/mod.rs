//! Shared helpers for the end-to-end tests: run the built binary, require real tools.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The imgtool binary cargo built for this test run.
pub fn imgtool() -> Command {
    Command::new(env!("CARGO_BIN_EXE_imgtool"))
}

pub fn bin_path() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_imgtool"))
}

/// A file's sha256, hex.
pub fn sha256(p: &Path) -> String {
    ::common::hash::sha256_file(p).unwrap()
}

/// The workspace root (for fixtures and ../shared).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The project's shared, read-only folder (sources, fixtures), looked for where the scripts
/// look (scripts/fwup-oracle, scripts/nerves-fw): $NERVES_SHARED, beside the checkout, beside
/// its parent, /work/shared.
pub fn shared_dir() -> Option<PathBuf> {
    let root = workspace_root();
    std::env::var_os("NERVES_SHARED")
        .map(PathBuf::from)
        .into_iter()
        .chain([
            root.join("../shared"),
            root.join("../../shared"),
            PathBuf::from("/work/shared"),
        ])
        .find(|d| d.join("fixtures").is_dir())
}

/// The fwup oracle fixtures (recorded with real fwup 1.16): the shared set when it is there (it
/// may be newer), else the copy in tests/fixtures, so a bare clone runs too.
pub fn fwup_fixtures() -> PathBuf {
    if let Some(shared) = shared_dir().map(|d| d.join("fixtures/fwup")) {
        if shared.join("check.sh").is_file() {
            return shared;
        }
    }
    workspace_root().join("tests/fixtures/fwup")
}

/// The Nerves-style firmware from real parts (scripts/nerves-fw, cached by its inputs), built
/// once per test binary with this build's imgtool.
pub fn nerves_fw() -> PathBuf {
    static FW: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    FW.get_or_init(|| {
        let out = Command::new(workspace_root().join("scripts/nerves-fw"))
            .env("IMGTOOL", bin_path())
            .output()
            .expect("running scripts/nerves-fw");
        assert_ok(
            &out,
            "scripts/nerves-fw (a Nerves-style firmware from real parts)",
        );
        let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).lines().last().unwrap());
        assert!(p.is_file(), "{}", p.display());
        p
    })
    .clone()
}

/// What a test that compares with real fwup prints in its result when `IMGTOOL_NO_ORACLE=1`.
pub const NO_ORACLE: &str = "ran WITHOUT the real fwup (IMGTOOL_NO_ORACLE=1)";

/// Real fwup 1.16, the peer the fwup tests compare imgtool's fwup with. `scripts/fwup-oracle`
/// builds it from the shared sources when it is not installed yet and prints its path; a test
/// that cannot get it fails, naming the fix. The only opt-out is `IMGTOOL_NO_ORACLE=1`: then
/// this returns None, and the test must run its own side only and print [`NO_ORACLE`].
pub fn real_fwup() -> Option<PathBuf> {
    static FWUP: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    FWUP.get_or_init(|| {
        if std::env::var("IMGTOOL_NO_ORACLE").is_ok_and(|v| v == "1") {
            return None;
        }
        let script = workspace_root().join("scripts/fwup-oracle");
        let fix = "scripts/install-deps installs its build deps, and the fwup 1.16.0 tarball \
                   must be in ../shared/sources (or set FWUP_TARBALL / FWUP_SRC); \
                   IMGTOOL_NO_ORACLE=1 runs without the real fwup";
        let out = Command::new(&script).output().unwrap_or_else(|e| {
            panic!(
                "real fwup 1.16 is required: running {}: {e} ({fix})",
                script.display()
            )
        });
        assert!(
            out.status.success(),
            "real fwup 1.16 is required, and {} could not build it ({}): {fix}\nstderr:\n{}",
            script.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let path = PathBuf::from(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .last()
                .unwrap_or_default()
                .trim(),
        );
        let v = Command::new(&path).arg("--version").output();
        let v = v.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
        assert!(
            v.as_deref().is_ok_and(|v| v == "1.16.0"),
            "{} (from scripts/fwup-oracle) is not fwup 1.16.0 ({v:?}): {fix}",
            path.display()
        );
        Some(path)
    })
    .clone()
}

/// A real tool the test checks against. Missing tools fail the test loudly (CI installs them
/// with scripts/install-deps); a silent skip would hide a missing install step.
pub fn require_tool(name: &str) -> PathBuf {
    for dir in std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/sbin", "/sbin"])
    {
        let p = Path::new(dir).join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!("required tool `{name}` is not installed: run scripts/install-deps");
}

/// Run a command, panic with its output if it fails, return stdout as a String.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().expect("spawn");
    assert_ok(&out, &format!("{cmd:?}"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn assert_ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Held while a test boots qemu and measures it. One guest at a time: a second qemu shares the
/// first one's binary and library pages (lowering its PSS) and takes a core of this two-core
/// machine (slowing its boot). An flock(2) on one file in the temp dir, so it serialises the
/// tests of one binary (each open file is locked separately), of every test binary, and of
/// concurrent `cargo test` runs from other checkouts on the machine.
pub struct QemuLock(std::fs::File);

pub fn qemu_lock() -> QemuLock {
    use std::os::fd::AsRawFd;
    let path = std::env::temp_dir().join("imgtool-tests-qemu.lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    loop {
        // SAFETY: flock on a descriptor this File owns; no memory is passed.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } == 0 {
            return QemuLock(f);
        }
        let e = std::io::Error::last_os_error();
        assert_eq!(
            e.kind(),
            std::io::ErrorKind::Interrupted,
            "flock {}: {e}",
            path.display()
        );
    }
}

/// qemu processes whose command line mentions `needle` (to check a test left none behind).
pub fn qemus_with(needle: &str) -> Vec<u32> {
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.starts_with("qemu-system") && cmd.contains(needle) {
            v.push(pid);
        }
    }
    v
}

/// A JSON file the test's command wrote.
pub fn read_json(p: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// A qcow2 disk's U-Boot env (with its backing chain), as the host's real fw_printenv reads it
/// at the place a Nerves firmware's /etc/fw_env.config names (0x2000, 0x20000 bytes); `args`
/// go to fw_printenv (e.g. `-n NAME`). Dead code in test binaries that do not call it.
#[allow(dead_code)]
pub fn fw_printenv_qcow2(qcow2: &Path, args: &[&str]) -> String {
    let raw = qcow2.with_extension("raw");
    run_ok(
        Command::new(require_tool("qemu-img"))
            .args(["convert", "-O", "raw"])
            .arg(qcow2)
            .arg(&raw),
    );
    let cfg = qcow2.with_extension("fw_env.config");
    std::fs::write(&cfg, format!("{} 0x2000 0x20000\n", raw.display())).unwrap();
    let v = run_ok(
        Command::new(require_tool("fw_printenv"))
            .arg("-c")
            .arg(&cfg)
            .args(args),
    );
    std::fs::remove_file(&raw).unwrap();
    v
}
