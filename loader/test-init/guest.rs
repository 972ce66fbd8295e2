//! Helpers for the end-to-end tests that boot a real guest (tests/boot.rs, tests/f2fs.rs):
//! the cached kernel, the tiny test init (init.rs next to this file) in a squashfs root, the
//! built-in Nerves image around them, and `imgtool boot`.
//! Included with `#[path = "../loader/test-init/guest.rs"] mod guest;` after `mod common;`.
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use crate::common::{imgtool, require_tool, run_ok, workspace_root};

/// Seconds a good boot may take under TCG on a loaded CI machine (it takes 1-3 s).
pub const BOOT_TIMEOUT: &str = "120";

/// Seconds to wait before calling a halted loader halted.
pub const HALT_TIMEOUT: &str = "15";

/// The kernel command line after `root=... rootfstype=...`. panic=-1: a kernel that cannot
/// mount its root ends qemu at once instead of hanging.
pub const CMDLINE: &str = "console=ttyAMA0 rootwait ro panic=-1";

/// The guest kernel: `imgtool kernel build` (cached after the first build), or the Image named
/// by IMGTOOL_TEST_KERNEL.
pub fn kernel() -> &'static Path {
    static K: OnceLock<PathBuf> = OnceLock::new();
    K.get_or_init(|| {
        if let Some(k) = std::env::var_os("IMGTOOL_TEST_KERNEL") {
            return PathBuf::from(k);
        }
        require_tool("aarch64-linux-gnu-gcc");
        let out = run_ok(imgtool().args(["kernel", "build", "--arch", "aarch64"]));
        let path = PathBuf::from(
            out.lines()
                .last()
                .expect("kernel build printed a path")
                .trim(),
        );
        assert!(path.is_file(), "{} is not a file", path.display());
        path
    })
}

/// The test init, compiled once per test run with rustc for aarch64-unknown-linux-musl.
pub fn init_binary() -> &'static Path {
    static I: OnceLock<PathBuf> = OnceLock::new();
    I.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("imgtool-boot-init-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let out = dir.join("init");
        let src = workspace_root().join("loader/test-init/init.rs");
        let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
        run_ok(
            Command::new(rustc)
                .args([
                    "--edition",
                    "2021",
                    "--target",
                    "aarch64-unknown-linux-musl",
                ])
                .args(["-C", "panic=abort", "-C", "opt-level=s"])
                .args(["-C", "linker=rust-lld", "-C", "linker-flavor=ld.lld"])
                .args([
                    "-C",
                    "link-self-contained=no",
                    "-C",
                    "relocation-model=static",
                ])
                .args(["-C", "link-arg=-static", "-C", "link-arg=--entry=_start"])
                .arg("-o")
                .arg(&out)
                .arg(src),
        );
        out
    })
}

/// A squashfs root filesystem whose init prints `marker` (made by the real mksquashfs, so the
/// boot tests depend only on the loader, the kernel and `imgtool build`'s placement). It has an
/// empty /data for the init's f2fs modes.
pub fn rootfs(dir: &Path, marker: &str) -> PathBuf {
    let root = dir.join(format!("rootfs-{marker}"));
    for d in ["sbin", "dev", "data"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    fs::copy(init_binary(), root.join("sbin/init")).unwrap();
    fs::write(root.join("marker"), format!("{marker}\n")).unwrap();
    let sqfs = dir.join(format!("rootfs-{marker}.squashfs"));
    run_ok(
        Command::new(require_tool("mksquashfs"))
            .arg(&root)
            .arg(&sqfs)
            .args(["-all-root", "-noappend", "-quiet", "-comp", "xz"]),
    );
    sqfs
}

/// `imgtool build nerves-qemu-aarch64` with `cmdline` = [`CMDLINE`] plus `extra_args`, and the
/// given -D definitions.
pub fn build_image(dir: &Path, name: &str, extra_args: &str, defs: &[(&str, String)]) -> PathBuf {
    let img = dir.join(name);
    let mut cmd = imgtool();
    cmd.args(["build", "nerves-qemu-aarch64", "-o"]).arg(&img);
    cmd.arg("-D")
        .arg(format!("cmdline={CMDLINE}{extra_args}").trim_end());
    for (k, v) in defs {
        cmd.arg("-D").arg(format!("{k}={v}"));
    }
    run_ok(&mut cmd);
    img
}

pub struct Boot {
    pub out: Output,
    pub console: String,
}

/// `imgtool boot IMG --until UNTIL --timeout TIMEOUT --log ... -- EXTRA`.
pub fn boot(img: &Path, until: &str, timeout: &str, extra: &[&str]) -> Boot {
    let log = img.with_extension(format!("log-{}", std::process::id()));
    let out = imgtool()
        .arg("boot")
        .arg(img)
        .args(["--timeout", timeout, "--until", until, "--log"])
        .arg(&log)
        .arg("--")
        .args(extra)
        .output()
        .expect("spawn imgtool boot");
    let console = fs::read_to_string(&log).unwrap_or_default();
    Boot { out, console }
}

/// Boots and insists the console matched `until`; returns the console.
pub fn boot_ok(img: &Path, until: &str, extra: &[&str]) -> String {
    require_tool("qemu-system-aarch64");
    let b = boot(img, until, BOOT_TIMEOUT, extra);
    assert!(
        b.out.status.success(),
        "boot of {} did not reach /{until}/ ({}):\nconsole:\n{}\nstderr:\n{}",
        img.display(),
        b.out.status,
        b.console,
        String::from_utf8_lossy(&b.out.stderr)
    );
    b.console
}

/// Boot an image the loader must refuse: its error line appears, Linux never starts, and the
/// run ends by `imgtool boot`'s timeout with a non-zero exit. Returns the error line.
pub fn boot_refused(img: &Path) -> String {
    require_tool("qemu-system-aarch64");
    let b = boot(img, "Starting Linux|init: marker", HALT_TIMEOUT, &[]);
    let stderr = String::from_utf8_lossy(&b.out.stderr);
    assert!(!b.out.status.success(), "console:\n{}", b.console);
    assert!(stderr.contains("timeout"), "{stderr}");
    assert!(b.console.contains("imgtool-loader "), "{}", b.console);
    assert!(b.console.contains("loader: halted"), "{}", b.console);
    assert!(!b.console.contains("Booting Linux"), "{}", b.console);
    b.console
        .lines()
        .find(|l| l.starts_with("loader: error: "))
        .unwrap_or_else(|| panic!("no loader error line in:\n{}", b.console))
        .trim_end()
        .to_string()
}

/// `imgtool env set -i IMG NAME VALUE ...`.
pub fn env_set(img: &Path, pairs: &[(&str, &str)]) {
    let mut cmd = imgtool();
    cmd.args(["env", "set", "-i"]).arg(img);
    for (k, v) in pairs {
        cmd.args([k, v]);
    }
    run_ok(&mut cmd);
}
