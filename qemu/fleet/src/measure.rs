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

/// The qemu argv for booting `image` and the accelerator it uses.
pub fn qemu_argv(image: &Path, s: &Spec, host: &Host) -> Result<(Vec<String>, Accel)> {
    let vm = qemu::Vm {
        image: image.to_path_buf(),
        memory: s.memory.clone(),
        no_net: s.no_net,
        extra: s.extra.clone(),
        // Measuring must not change the image (CI validates release artifacts): the guest
        // writes its data partition, and the loader a pending upgrade's bootcount. qemu's
        // snapshot=on rather than our own qemu-img overlay: the same qcow2 layer over the raw
        // image, so the same memory in qemu, but made by qemu in $TMPDIR, with /var/tmp in
        // place of /tmp (often a tmpfs, where the guest's writes would take host RAM that no
        // figure shows), and unlinked at once (nothing left when imgtool is killed); the image
        // is opened read-only, and the report's argv still names it.
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
