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
}
