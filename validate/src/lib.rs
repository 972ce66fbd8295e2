//! Boot a guest under qemu and measure it: time to a readiness marker on the serial console, the
//! qemu process's RSS and PSS over time and after settling, and the guest's own memory snapshot
//! (printed by imgtool's init on request). Reports diff against a baseline for CI gates, and
//! experiments chart several profiles side by side.
//!
//! The engine takes a ready-made `std::process::Command` (the qemu argv `imgtool qemu-cmd`
//! builds) and the accelerator it uses; it never builds a qemu command itself.

pub mod console;
pub mod diff;
pub mod procmem;
pub mod report;
pub mod run;
pub mod stats;
pub mod svg;

pub use report::Report;
pub use run::{run, Options, DEFAULT_MARKER};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}: {1}")]
    Io(String, #[source] std::io::Error),
    #[error("starting {0}: {1} (is qemu installed? Debian: apt-get install qemu-system-arm)")]
    Spawn(String, #[source] std::io::Error),
    #[error("process {0} exited while its memory was being read")]
    ProcGone(u32),
    #[error("the console has no input: commands cannot be sent")]
    NoConsoleInput,
    #[error("{what}\n--- last console lines ---\n{console}{}", if stderr.is_empty() { String::new() } else { format!("\n--- qemu stderr ---\n{stderr}") })]
    Guest {
        what: String,
        console: String,
        stderr: String,
    },
    #[error("baseline {path}: {msg}")]
    Baseline { path: String, msg: String },
}

/// How the guest CPU runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Hvf,
    Tcg,
}

impl Accel {
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Hvf => "hvf",
            Accel::Tcg => "tcg",
        }
    }

    /// Which accelerator a qemu argv asks for (`-M virt,accel=kvm`, `-accel kvm`,
    /// `-enable-kvm`); TCG when none is named.
    pub fn from_argv(argv: &[String]) -> Accel {
        let mut it = argv.iter().peekable();
        while let Some(a) = it.next() {
            let val = match a.as_str() {
                "-enable-kvm" => return Accel::Kvm,
                "-accel" => it.peek().map(|v| v.split(',').next().unwrap_or("")),
                "-M" | "-machine" => it
                    .peek()
                    .and_then(|v| v.split(',').find_map(|o| o.strip_prefix("accel="))),
                _ => None,
            };
            match val {
                Some("kvm") => return Accel::Kvm,
                Some("hvf") => return Accel::Hvf,
                _ => {}
            }
        }
        Accel::Tcg
    }
}

/// Guest RAM in MiB from a qemu argv's last `-m` (`110M`, `1G`, `128`, `size=110M,slots=2`;
/// a bare number is MiB, as in qemu).
pub fn memory_mib(argv: &[String]) -> Option<u64> {
    let v = argv
        .windows(2)
        .rev()
        .find(|w| w[0] == "-m")
        .map(|w| w[1].as_str())?;
    let size = v
        .split(',')
        .find_map(|o| o.strip_prefix("size="))
        .or_else(|| v.split(',').next().filter(|s| !s.contains('=')))?;
    let (num, unit) = size.split_at(
        size.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(size.len()),
    );
    let n: u64 = num.parse().ok()?;
    match unit.to_ascii_uppercase().as_str() {
        "" | "M" | "MB" | "MIB" => Some(n),
        "G" | "GB" | "GIB" => n.checked_mul(1024),
        "K" | "KB" | "KIB" => Some(n / 1024),
        _ => None,
    }
}

/// The version a qemu binary reports (`10.0.2` from "QEMU emulator version 10.0.2 (Debian
/// ...)"); None when `program --version` fails or says something else.
pub fn qemu_version(program: &str) -> Option<String> {
    let out = std::process::Command::new(program)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let rest = text
        .lines()
        .next()?
        .split("QEMU emulator version ")
        .nth(1)?;
    rest.split_whitespace().next().map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Vec<String> {
        s.split(' ').map(String::from).collect()
    }

    #[test]
    fn accel_from_argv() {
        assert_eq!(
            Accel::from_argv(&v("q -M virt,accel=kvm -cpu host")),
            Accel::Kvm
        );
        assert_eq!(Accel::from_argv(&v("q -M virt,accel=hvf")), Accel::Hvf);
        assert_eq!(Accel::from_argv(&v("q -accel kvm")), Accel::Kvm);
        assert_eq!(
            Accel::from_argv(&v("q -accel tcg,tb-size=32 -M virt")),
            Accel::Tcg
        );
        assert_eq!(
            Accel::from_argv(&v("q -M virt -cpu cortex-a53")),
            Accel::Tcg
        );
        assert_eq!(Accel::from_argv(&v("q -enable-kvm")), Accel::Kvm);
    }

    #[test]
    fn memory_from_argv() {
        assert_eq!(memory_mib(&v("q -M virt -m 110M -nographic")), Some(110));
        assert_eq!(memory_mib(&v("q -m 1G")), Some(1024));
        assert_eq!(memory_mib(&v("q -m 128")), Some(128));
        assert_eq!(
            memory_mib(&v("q -m 64M -m size=96M,slots=2,maxmem=1G")),
            Some(96)
        );
        assert_eq!(memory_mib(&v("q -M virt")), None);
        assert_eq!(memory_mib(&v("q -m lots")), None);
    }

    #[test]
    fn qemu_version_of_the_installed_qemu_and_of_other_programs() {
        // Not qemu: no version, not a wrong one.
        assert_eq!(qemu_version("true"), None);
        assert_eq!(qemu_version("/nonexistent/qemu"), None);
        let out = std::process::Command::new("qemu-system-aarch64")
            .arg("--version")
            .output()
            .expect("qemu-system-aarch64 is not installed: run scripts/install-deps");
        let v = qemu_version("qemu-system-aarch64").unwrap();
        assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("version {v}")));
        assert!(v.split('.').all(|p| p.parse::<u32>().is_ok()), "{v}");
    }
}
