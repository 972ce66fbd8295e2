//! One guest booted from an image and measured: the qemu argv from the `qemu` crate (as
//! `imgtool qemu-cmd` prints it), the engine from `validate`.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use regex::Regex;
use validate::Accel;

use crate::host::Host;
use crate::{Error, Result};

/// How a guest is run and measured (validate, experiment, demo).
#[derive(Clone, Debug)]
pub struct Spec {
    /// Readiness marker regex [default: the init's IMGTOOL-READY].
    pub marker: Option<String>,
    pub timeout: f64,
    pub settle: f64,
    /// Milliseconds between memory samples.
    pub interval_ms: u64,
    /// qemu -m.
    pub memory: String,
    /// auto, kvm, hvf or tcg.
    pub accel: String,
    pub no_net: bool,
    /// The guest runs imgtool's init (snapshot request, power-off command).
    pub protocol: bool,
    /// Copy the console to stderr.
    pub console: bool,
    /// Extra qemu arguments.
    pub extra: Vec<String>,
}

impl Default for Spec {
    fn default() -> Self {
        Spec {
            marker: None,
            timeout: 180.0,
            settle: 3.0,
            interval_ms: 100,
            memory: "128M".into(),
            accel: "auto".into(),
            no_net: false,
            protocol: true,
            console: false,
            extra: Vec::new(),
        }
    }
}

impl Spec {
    /// The engine's options, checked.
    pub fn options(&self, label: &str) -> Result<validate::Options> {
        let mut o = validate::Options::new(label);
        if let Some(m) = &self.marker {
            o.marker = Regex::new(m).map_err(|e| Error::Usage(format!("--marker {m:?}: {e}")))?;
        }
        for (name, v) in [("timeout", self.timeout), ("settle", self.settle)] {
            if !(v.is_finite() && v >= 0.0) || (name == "timeout" && v == 0.0) {
                return Err(Error::Usage(format!(
                    "{name} {v}: must be a positive number of seconds"
                )));
            }
        }
        if self.interval_ms == 0 {
            return Err(Error::Usage("interval 0: must be 1 ms or more".into()));
        }
        o.timeout = Duration::from_secs_f64(self.timeout);
        o.settle = Duration::from_secs_f64(self.settle);
        o.interval = Duration::from_millis(self.interval_ms);
        o.protocol = self.protocol;
        if self.console {
            o.console_copy = Some(Box::new(std::io::stderr()));
        }
        Ok(o)
    }
}

/// The run settings a command line may give; what it leaves unset comes from a baseline
/// report when there is one, else from [`Spec::default`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Given {
    /// `-m`.
    pub memory: Option<String>,
    /// `--accel`.
    pub accel: Option<String>,
    /// `--no-net` (a switch: it can only be given on).
    pub no_net: bool,
    /// qemu arguments after `--`; empty when none were given.
    pub extra: Vec<String>,
}

/// What a baseline report says its runs were measured under: the settings a run compared
/// with it takes unless the command line gives them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Baseline {
    /// `accel` (kvm, hvf or tcg).
    pub accel: Option<String>,
    /// `memory_mib`, as qemu -m.
    pub memory: Option<String>,
    /// The network choice and the extra qemu arguments (a memory profile's: tb-size, RAM
    /// backend, balloon, smp), read back from `argv`; None when that argv is not one imgtool
    /// built.
    pub qemu: Option<(bool, Vec<String>)>,
}

impl Baseline {
    /// The settings a report (as JSON, so older ones read too) records.
    pub fn of(report: &serde_json::Value) -> Baseline {
        let argv: Option<Vec<String>> = report
            .get("argv")
            .and_then(|a| serde_json::from_value(a.clone()).ok());
        let recorded = argv.as_deref().and_then(qemu::recorded);
        let accel = report
            .get("accel")
            .and_then(|a| a.as_str())
            .filter(|a| ["kvm", "hvf", "tcg"].contains(a))
            .map(str::to_string);
        let memory = report
            .get("memory_mib")
            .and_then(|m| m.as_u64())
            .map(|m| format!("{m}M"))
            .or_else(|| recorded.as_ref().map(|r| r.memory.clone()));
        Baseline {
            accel,
            memory,
            qemu: recorded.map(|r| (r.no_net, r.extra)),
        }
    }
}

/// What [`Spec::adopt`] took from a baseline.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Adopted {
    /// The baseline's settings this run uses, as the flags that give them (`-m 110M`,
    /// `--accel tcg`, `--no-net`, `-- -smp 1`).
    pub taken: Vec<String>,
    /// Where the command line's choice leaves the baseline's qemu setup (network, arguments):
    /// said, not refused, since a deliberately different guest is what a gate is for.
    pub warnings: Vec<String>,
}

impl Spec {
    /// Set memory, accelerator, network and extra qemu arguments: the command line's where it
    /// gives them, else the baseline's (runs are only comparable under the same ones), else
    /// this spec's own.
    pub fn adopt(&mut self, given: &Given, baseline: Option<&Baseline>) -> Adopted {
        let mut out = Adopted::default();
        let b = baseline.cloned().unwrap_or_default();
        for (given, recorded, field, flag) in [
            (&given.memory, &b.memory, &mut self.memory, "-m"),
            (&given.accel, &b.accel, &mut self.accel, "--accel"),
        ] {
            match (given, recorded) {
                (Some(g), _) => *field = g.clone(),
                (None, Some(r)) => {
                    *field = r.clone();
                    out.taken.push(format!("{flag} {r}"));
                }
                (None, None) => {}
            }
        }
        self.no_net = given.no_net;
        self.extra = given.extra.clone();
        match (&b.qemu, baseline) {
            (Some((no_net, extra)), _) => {
                if *no_net && !given.no_net {
                    self.no_net = true;
                    out.taken.push("--no-net".into());
                } else if given.no_net && !no_net {
                    out.warnings.push(
                        "the baseline ran with a network device; --no-net leaves it out".into(),
                    );
                }
                if given.extra.is_empty() {
                    self.extra = extra.clone();
                    if !extra.is_empty() {
                        out.taken.push(format!("-- {}", qemu::shell_line(extra)));
                    }
                } else if given.extra != *extra {
                    out.warnings.push(format!(
                        "the baseline ran with qemu arguments `{}`; this run has `{}` instead \
                         (arguments after -- replace the baseline's: repeat those you want kept)",
                        qemu::shell_line(extra),
                        qemu::shell_line(&given.extra)
                    ));
                }
            }
            (None, Some(_)) => out.warnings.push(
                "the baseline's argv is not one imgtool built: its network and qemu arguments \
                 are not known, so this run has the command line's"
                    .into(),
            ),
            (None, None) => {}
        }
        out
    }
}

/// The qemu argv for booting `image` and the accelerator it uses.
pub fn qemu_argv(image: &Path, s: &Spec, host: &Host) -> Result<(Vec<String>, Accel)> {
    let vm = qemu::Vm {
        image: image.to_path_buf(),
        memory: s.memory.clone(),
        no_net: s.no_net,
        extra: s.extra.clone(),
        // Measuring must not change the image (CI validates release artifacts). snapshot=on
        // over our own qemu-img overlay: the same qcow2 layer, so the same memory (demo guest:
        // within 0.6 MiB of a read-write boot, inside the boots' spread), but qemu puts it in
        // /var/tmp rather than a tmpfs /tmp (where writes would take host RAM no figure shows)
        // and unlinks it at once, and the report's argv still names the image.
        snapshot: true,
    };
    let argv = qemu::command(&vm, &host.loader, &s.accel, &host.kvm_probe_cache())?;
    let accel = Accel::from_argv(&argv);
    Ok((argv, accel))
}

/// Boot `image`, wait for readiness, measure, power off. A guest without imgtool's init also
/// gets a second console, where a tuned firmware's helper answers snapshots (qemu::helper_console).
pub fn measure(image: &Path, s: &Spec, host: &Host) -> Result<validate::Report> {
    let mut s = s.clone();
    let mut opts = s.options(&image.display().to_string())?;
    let dir;
    // A guest with a marker of its own may be someone else's firmware (see validate::run).
    if !s.protocol || s.marker.is_some() {
        dir = tempfile::Builder::new()
            .prefix("imgtool-helper-")
            .tempdir()
            .map_err(|e| Error::io("a temporary directory for the helper console", e))?;
        let sock = dir.path().join("helper.sock");
        s.extra.extend(qemu::helper_console(&sock));
        opts.helper_socket = Some(sock);
    }
    let (argv, accel) = qemu_argv(image, &s, host)?;
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]);
    Ok(validate::run(cmd, accel, opts)?)
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// The report as a few lines for people.
pub fn summary(r: &validate::Report) -> String {
    let runs = if r.runs > 1 {
        format!(", median of {} runs", r.runs)
    } else {
        String::new()
    };
    let mut s = format!(
        "{} ({}{runs}): ready after {:.2} s\n  host qemu: RSS peak {}, settled {}; PSS peak {}, settled {} ({:.1} s after ready)",
        r.image,
        r.accel,
        r.boot.marker_s,
        mib(r.host.rss_peak_kib),
        mib(r.host.rss_settled_kib),
        mib(r.host.pss_peak_kib),
        mib(r.host.pss_settled_kib),
        r.host.settle_s,
    );
    if let Some(a) = r.host.anon_settled_kib {
        s += &format!("; anon {}", mib(a));
    }
    if let Some(l) = r.host.loadavg_settled {
        s += &format!("; load average {l:.2}");
    }
    s.push('\n');
    if r.host.peers_at_settle > 0 {
        s += &format!(
            "  note: {} other qemu process(es) ran at the settled reading; the pages they share \
             lower this PSS\n",
            r.host.peers_at_settle
        );
    }
    if let Some(g) = &r.guest {
        s += &format!(
            "  guest: MemTotal {}, MemAvailable {}",
            mib(g.mem_total_kib),
            mib(g.mem_available_kib)
        );
        if let (Some(rss), Some(pss)) = (g.program_rss_kib, g.program_pss_kib) {
            s += &format!("; program RSS {}, PSS {}", mib(rss), mib(pss));
        }
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::path::PathBuf;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    /// A report as `imgtool demo` writes it: nerves-tuned's -m 110M and `-smp 1`, no network.
    fn demo_report() -> serde_json::Value {
        let vm = qemu::Vm {
            image: PathBuf::from("/d/imgtool-demo/special.img"),
            memory: "110M".into(),
            no_net: true,
            extra: s(&["-smp", "1"]),
            snapshot: true,
        };
        let argv = qemu::argv(&vm, Path::new("/c/loader.elf"), Accel::Tcg);
        json!({"schema": 2, "accel": "tcg", "memory_mib": 110, "argv": argv})
    }

    #[test]
    fn a_baseline_brings_its_memory_accelerator_and_qemu_arguments() {
        let b = Baseline::of(&demo_report());
        assert_eq!(
            b,
            Baseline {
                accel: Some("tcg".into()),
                memory: Some("110M".into()),
                qemu: Some((true, s(&["-smp", "1"]))),
            }
        );
        let mut spec = Spec::default();
        let a = spec.adopt(&Given::default(), Some(&b));
        assert_eq!(
            (spec.memory.as_str(), spec.accel.as_str(), spec.no_net),
            ("110M", "tcg", true)
        );
        assert_eq!(spec.extra, s(&["-smp", "1"]));
        assert_eq!(
            a.taken,
            s(&["-m 110M", "--accel tcg", "--no-net", "-- -smp 1"])
        );
        assert!(a.warnings.is_empty(), "{a:?}");
    }

    #[test]
    fn the_command_line_wins_over_the_baseline() {
        let b = Baseline::of(&demo_report());
        let given = Given {
            memory: Some("128M".into()),
            accel: Some("auto".into()),
            no_net: false,
            extra: s(&["-device", "loader,file=blob"]),
        };
        let mut spec = Spec::default();
        let a = spec.adopt(&given, Some(&b));
        assert_eq!(
            (spec.memory.as_str(), spec.accel.as_str()),
            ("128M", "auto")
        );
        // Not given, so still the baseline's.
        assert!(spec.no_net);
        assert_eq!(spec.extra, given.extra);
        assert_eq!(a.taken, s(&["--no-net"]));
        // The baseline's arguments, replaced: said, with what they were.
        assert_eq!(a.warnings.len(), 1, "{a:?}");
        assert!(
            a.warnings[0].contains("`-smp 1`")
                && a.warnings[0].contains("`-device loader,file=blob`"),
            "{a:?}"
        );
        // --no-net against a baseline with a network device: taken, and said.
        let mut with_net = b.clone();
        with_net.qemu = Some((false, s(&["-smp", "1"])));
        let given = Given {
            no_net: true,
            ..Default::default()
        };
        let mut spec = Spec::default();
        let a = spec.adopt(&given, Some(&with_net));
        assert!(spec.no_net);
        assert!(a.warnings[0].contains("network device"), "{a:?}");
    }

    #[test]
    fn without_a_baseline_the_defaults_hold() {
        let mut spec = Spec::default();
        let given = Given {
            no_net: true,
            ..Default::default()
        };
        let a = spec.adopt(&given, None);
        assert_eq!(a, Adopted::default());
        assert_eq!(
            (spec.memory.as_str(), spec.accel.as_str(), spec.no_net),
            ("128M", "auto", true)
        );
        assert!(spec.extra.is_empty());
    }

    #[test]
    fn older_or_foreign_baselines_give_what_they_record() {
        // No memory_mib: the argv's -m.
        let mut r = demo_report();
        r.as_object_mut().unwrap().remove("memory_mib");
        assert_eq!(Baseline::of(&r).memory.as_deref(), Some("110M"));
        // An argv imgtool did not build: accelerator and memory only, and a warning that the
        // qemu arguments are unknown.
        let r = json!({"accel": "kvm", "memory_mib": 256, "argv": ["qemu-system-aarch64", "-M", "virt"]});
        let b = Baseline::of(&r);
        assert_eq!(b.qemu, None);
        let mut spec = Spec::default();
        let a = spec.adopt(&Given::default(), Some(&b));
        assert_eq!(
            (spec.memory.as_str(), spec.accel.as_str(), spec.no_net),
            ("256M", "kvm", false)
        );
        assert_eq!(a.taken, s(&["-m 256M", "--accel kvm"]));
        assert!(a.warnings[0].contains("not one imgtool built"), "{a:?}");
        // A nonsense accelerator is not taken.
        assert_eq!(Baseline::of(&json!({"accel": "whpx"})).accel, None);
    }
}
