//! The host packages a pipeline needs (cross compiler, kernel source, qemu): checked before a
//! long run starts; as root the missing ones are installed with apt-get, otherwise the error
//! gives the exact apt-get line.

use std::fs;
use std::path::Path;
use std::process::Command;

use crate::{Error, Result};

/// What the demo runs on the host, and the Debian package that provides each.
const DEMO_NEEDS: &[(&str, &str)] = &[
    ("aarch64-linux-gnu-gcc", "gcc-aarch64-linux-gnu"),
    ("aarch64-linux-gnu-ld", "binutils-aarch64-linux-gnu"),
    ("/usr/src/linux-source-6.1.tar.xz", "linux-source-6.1"),
    ("make", "make"),
    ("flex", "flex"),
    ("bison", "bison"),
    ("bc", "bc"),
];
const DEMO_NEEDS_BOOT: &[(&str, &str)] = &[("qemu-system-aarch64", "qemu-system-arm")];

fn on_path(tool: &str) -> bool {
    if tool.starts_with('/') {
        return Path::new(tool).exists();
    }
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false)
}

/// Check the host tools the demo needs. As root, install the missing ones with apt-get;
/// otherwise fail with the exact apt-get line.
pub fn demo(boot: bool) -> Result<()> {
    let mut missing: Vec<&str> = DEMO_NEEDS
        .iter()
        .chain(if boot { DEMO_NEEDS_BOOT } else { &[] })
        .filter(|(tool, _)| !on_path(tool))
        .map(|(_, pkg)| *pkg)
        .collect();
    missing.dedup();
    if missing.is_empty() {
        return Ok(());
    }
    // Debian bookworm's own qemu (7.2) conflicts with the preinstalled qemu-utils from
    // bookworm-backports; take qemu from backports when that suite is configured.
    let backports = ["/etc/apt/sources.list", "/etc/apt/sources.list.d"]
        .iter()
        .any(|p| grep_dir(Path::new(p), "bookworm-backports"));
    let (qemu, rest): (Vec<&str>, Vec<&str>) = missing.iter().partition(|p| p.starts_with("qemu-"));
    let mut lines = Vec::new();
    if !rest.is_empty() {
        lines.push(format!(
            "apt-get install -y --no-install-recommends {}",
            rest.join(" ")
        ));
    }
    if !qemu.is_empty() {
        lines.push(format!(
            "apt-get install -y --no-install-recommends{} {}",
            if backports {
                " -t bookworm-backports"
            } else {
                ""
            },
            qemu.join(" ")
        ));
    }
    let line = lines.join(" && ");
    // /proc/self belongs to the process's effective user.
    let root = {
        use std::os::unix::fs::MetadataExt;
        fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
    };
    if !root {
        return Err(Error::Usage(format!(
            "missing host packages: {}; install them as root with:\n  {}\n\
             (or run scripts/install-deps, which also adds bookworm-backports for qemu)",
            missing.join(", "),
            lines
                .iter()
                .map(|l| format!("sudo {l}"))
                .collect::<Vec<_>>()
                .join(" && ")
        )));
    }
    eprintln!("imgtool demo: installing {}", missing.join(" "));
    let ok = Command::new("sh")
        .args(["-c", &format!("apt-get update -qq && {line}")])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .map_err(|e| Error::io("running apt-get", e))?
        .success();
    if !ok {
        return Err(Error::Failed(format!(
            "`{line}` failed; run scripts/install-deps and try again"
        )));
    }
    Ok(())
}

/// Whether a file, or any file in a directory, contains `needle`.
fn grep_dir(p: &Path, needle: &str) -> bool {
    let has = |f: &Path| fs::read_to_string(f).is_ok_and(|t| t.contains(needle));
    if p.is_dir() {
        fs::read_dir(p).is_ok_and(|rd| rd.filter_map(|e| e.ok()).any(|e| has(&e.path())))
    } else {
        has(p)
    }
}
