//! The qemu command line that boots an imgtool disk image with the embedded loader.
//!
//! Machine: qemu's arm64 `virt` (<https://www.qemu.org/docs/master/system/arm/virt.html>), the
//! disk as a virtio-mmio block device in modern mode, a virtio RNG (getrandom otherwise waits),
//! the console on the PL011 serial port, `-no-reboot` so a guest power-off or panic ends qemu.
//! Acceleration: KVM only when a probe guest actually runs under it (on some hosts /dev/kvm
//! exists but ordinary guests hang), HVF on macOS arm64, else TCG with a cortex-a53.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use regex::Regex;
use validate::console::{Console, Wait};

pub mod template;

/// The accelerator type `validate` measures with, so an argv from here goes straight to it.
pub use validate::Accel;

pub const QEMU: &str = "qemu-system-aarch64";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("disk image {path}: {reason} (build one with `imgtool build nerves-qemu-aarch64 -o special.img`)")]
    NoImage {
        path: String,
        reason: std::io::Error,
    },
    #[error("disk image {0} is not a file")]
    NotAFile(String),
    #[error("unknown accelerator {0:?}: use auto, kvm, hvf or tcg")]
    UnknownAccel(String),
    #[error("starting {QEMU} (install qemu-system-arm)")]
    Spawn(#[source] std::io::Error),
    /// A template cannot be saved or restored; the text says why and what to do.
    #[error("{0}")]
    Template(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// The input is wrong (the image path, the accelerator name), not the machine.
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            Error::NoImage { .. }
                | Error::NotAFile(_)
                | Error::UnknownAccel(_)
                | Error::Template(_)
        )
    }
}

/// The guest to boot.
#[derive(Debug, Clone)]
pub struct Vm {
    /// Raw disk image.
    pub image: PathBuf,
    /// Guest memory, qemu -m syntax (128M, 1G).
    pub memory: String,
    /// No network device (else user-mode networking on a virtio-net device).
    pub no_net: bool,
    /// Appended as they are.
    pub extra: Vec<String>,
    /// Leave the image as it is: qemu opens it read-only and puts the guest's writes in a
    /// temporary overlay of its own (`-drive ...,snapshot=on`), deleted when qemu exits.
    pub snapshot: bool,
}

/// The full argv (program first) for `vm`: checks the image, resolves `accel` (`auto`, `kvm`,
/// `hvf`, `tcg`; auto probes, caching the answer in `probe_cache`).
pub fn command(
    vm: &Vm,
    loader: &Path,
    accel: &str,
    probe_cache: &Path,
) -> Result<Vec<String>, Error> {
    check_image(&vm.image)?;
    let accel = match accel {
        "kvm" => Accel::Kvm,
        "hvf" => Accel::Hvf,
        "tcg" => Accel::Tcg,
        "auto" => detect_accel(loader, probe_cache)?,
        other => return Err(Error::UnknownAccel(other.to_string())),
    };
    Ok(argv(vm, loader, accel))
}

/// The image must exist and be a regular file.
pub fn check_image(p: &Path) -> Result<(), Error> {
    let m = fs::metadata(p).map_err(|reason| Error::NoImage {
        path: p.display().to_string(),
        reason,
    })?;
    if !m.is_file() {
        return Err(Error::NotAFile(p.display().to_string()));
    }
    Ok(())
}

/// The argv for `vm` with `loader` as qemu's -kernel and the given accelerator.
pub fn argv(vm: &Vm, loader: &Path, accel: Accel) -> Vec<String> {
    argv_with_format(vm, loader, accel, "raw")
}

/// As [`argv`], with the disk in `format` (`raw`, or `qcow2` for template overlays).
pub fn argv_with_format(vm: &Vm, loader: &Path, accel: Accel, format: &str) -> Vec<String> {
    let (machine, cpu) = match accel {
        Accel::Kvm => ("virt,accel=kvm", "host"),
        Accel::Hvf => ("virt,accel=hvf", "host"),
        Accel::Tcg => ("virt", "cortex-a53"),
    };
    let image = vm.image.to_string_lossy();
    // qemu's -drive takes comma-separated options: a comma in the path is doubled.
    let image = image.replace(',', ",,");
    let snapshot = if vm.snapshot { ",snapshot=on" } else { "" };
    let mut v: Vec<String> = [
        QEMU,
        "-M",
        machine,
        "-cpu",
        cpu,
        "-m",
        &vm.memory,
        "-nographic",
        "-no-reboot",
        "-kernel",
        &loader.to_string_lossy(),
        "-global",
        "virtio-mmio.force-legacy=false",
        "-drive",
        &format!("if=none,file={image},format={format},id=disk0{snapshot}"),
        "-device",
        "virtio-blk-device,drive=disk0",
        "-device",
        "virtio-rng-device",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if vm.no_net {
        v.extend(["-nic".into(), "none".into()]);
    } else {
        v.extend([
            "-netdev".into(),
            "user,id=net0".into(),
            "-device".into(),
            "virtio-net-device,netdev=net0".into(),
        ]);
    }
    v.extend(vm.extra.iter().cloned());
    v
}

/// qemu arguments for a second console on a unix socket the host connects to: imgtool's helper
/// answers the console protocol there, so a firmware's own PID 1 keeps the first one.
///
/// It is the `virt` board's second PL011 UART (`serial1`, /dev/ttyAMA1 in the guest; qemu 9.1
/// and later describe it in the device tree), not a virtconsole: Linux's virtio_console fills
/// every port's receive queue with 4 KiB buffers, 8 MiB of guest kernel memory with qemu's 31
/// ports (4 MiB with one), which every clone and every measurement would carry. Naming serial1
/// means naming serial0 too: `mon:stdio` is what `-nographic` gives it otherwise.
pub fn helper_console(socket: &Path) -> Vec<String> {
    let path = socket.to_string_lossy().replace(',', ",,");
    [
        "-serial".to_string(),
        "mon:stdio".into(),
        "-chardev".into(),
        format!("socket,id=imgtool-helper,path={path},server=on,wait=off"),
        "-serial".into(),
        "chardev:imgtool-helper".into(),
    ]
    .into()
}

/// `args` without a [`helper_console`] (whatever its socket).
fn without_helper_console(args: &[String]) -> Vec<String> {
    let want = helper_console(Path::new(""));
    let chardev = "socket,id=imgtool-helper,";
    let is_helper = |w: &[String]| {
        w.len() == want.len()
            && w.iter()
                .zip(&want)
                .all(|(a, h)| a == h || (h.starts_with(chardev) && a.starts_with(chardev)))
    };
    let mut out = Vec::new();
    let mut i = 0;
    while i < args.len() {
        match args.get(i..i + want.len()) {
            Some(w) if is_helper(w) => i += want.len(),
            _ => {
                out.push(args[i].clone());
                i += 1;
            }
        }
    }
    out
}

/// The settings an argv from [`argv`] was built with, read back from it (a report's `argv`
/// records them; `validate --baseline` runs under them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recorded {
    pub accel: Accel,
    /// qemu -m, as written.
    pub memory: String,
    pub no_net: bool,
    /// Everything after the machine this crate sets up: a memory profile's qemu settings
    /// (tb-size, RAM backend, balloon, smp) and the user's own; not a helper console (each
    /// run makes its own, on a socket gone with that run).
    pub extra: Vec<String>,
}

/// Read back what [`argv`] built `argv` from; None when it is not an argv of this crate's
/// shape (another tool's, or edited by hand). The image and loader paths are not compared.
pub fn recorded(argv: &[String]) -> Option<Recorded> {
    let at = |i: usize| argv.get(i).map(String::as_str);
    if at(1) != Some("-M") || at(5) != Some("-m") || at(9) != Some("-kernel") {
        return None;
    }
    let accel = match at(2)? {
        "virt" => Accel::Tcg,
        "virt,accel=kvm" => Accel::Kvm,
        "virt,accel=hvf" => Accel::Hvf,
        _ => return None,
    };
    let memory = at(6)?.to_string();
    let loader = Path::new(at(10)?);
    // Rebuild the fixed part from the values found, and compare: one definition of the shape.
    [true, false].into_iter().find_map(|no_net| {
        let vm = Vm {
            image: PathBuf::new(),
            memory: memory.clone(),
            no_net,
            extra: Vec::new(),
            snapshot: false,
        };
        let want = argv_with_format(&vm, loader, accel, "raw");
        let same = want.len() <= argv.len()
            && want.iter().zip(argv).all(|(w, a)| {
                // The drive names the image (and its format, snapshot): any file will do.
                w == a || (w.starts_with("if=none,file=") && a.starts_with("if=none,file="))
            })
            && Path::new(&argv[0]).file_name() == Some(std::ffi::OsStr::new(QEMU));
        same.then(|| Recorded {
            accel,
            memory: memory.clone(),
            no_net,
            extra: without_helper_console(&argv[want.len()..]),
        })
    })
}

/// An argv as one POSIX shell line (single quotes where needed).
pub fn shell_line(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            if !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_=,./:+@%".contains(c))
            {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// KVM/HVF when this host can run an arm64 guest with them, else TCG.
pub fn detect_accel(loader: &Path, probe_cache: &Path) -> Result<Accel, Error> {
    match (std::env::consts::OS, std::env::consts::ARCH) {
        ("macos", "aarch64") => Ok(Accel::Hvf),
        ("linux", "aarch64") => Ok(if kvm_works(loader, probe_cache)? {
            Accel::Kvm
        } else {
            Accel::Tcg
        }),
        // Another host architecture cannot accelerate an arm64 guest.
        _ => Ok(Accel::Tcg),
    }
}

/// Whether a guest really runs under KVM here: boot the loader and wait for its banner. The
/// answer is cached in `cache` per host kernel and qemu version (the probe takes seconds).
fn kvm_works(loader: &Path, cache: &Path) -> Result<bool, Error> {
    if !Path::new("/dev/kvm").exists() {
        return Ok(false);
    }
    let uname = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let qemu_version = Command::new(QEMU)
        .arg("--version")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_string()
        })
        .unwrap_or_default();
    let key = format!("{} | {}", uname.trim(), qemu_version.trim());
    if let Ok(text) = fs::read_to_string(cache) {
        if let Some((answer, k)) = text.trim_end().split_once('\t') {
            if k == key {
                return Ok(answer == "kvm-ok");
            }
        }
    }
    let ok = probe(loader, Duration::from_secs(5))?;
    if !ok {
        tracing::warn!(
            "/dev/kvm exists but a probe guest did not start under it in 5 s: using TCG"
        );
    }
    let io = |source| Error::Io {
        what: format!("writing the KVM probe answer {}", cache.display()),
        source,
    };
    if let Some(dir) = cache.parent() {
        fs::create_dir_all(dir).map_err(io)?;
    }
    fs::write(
        cache,
        format!("{}\t{key}\n", if ok { "kvm-ok" } else { "kvm-broken" }),
    )
    .map_err(io)?;
    Ok(ok)
}

/// Boot the loader alone under KVM: does its banner appear within `limit`?
fn probe(loader: &Path, limit: Duration) -> Result<bool, Error> {
    let mut child = Command::new(QEMU)
        .args([
            "-M",
            "virt,accel=kvm",
            "-cpu",
            "host",
            "-m",
            "64M",
            "-nographic",
            "-nic",
            "none",
        ])
        .arg("-kernel")
        .arg(loader)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(Error::Spawn)?;
    let mut con = Console::new(child.stdout.take().expect("piped"), None, None);
    let banner = Regex::new("imgtool-loader").expect("static regex");
    let seen = matches!(
        con.wait_for(&banner, Instant::now() + limit),
        Wait::Matched(..)
    );
    let _ = child.kill();
    let _ = child.wait();
    Ok(seen)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm(extra: &[&str]) -> Vm {
        Vm {
            image: PathBuf::from("/tmp/a,b.img"),
            memory: "96M".into(),
            no_net: false,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            snapshot: false,
        }
    }

    #[test]
    fn tcg_command_has_the_required_devices() {
        let v = argv(&vm(&["-smp", "2"]), Path::new("/c/loader.elf"), Accel::Tcg);
        let line = shell_line(&v);
        for want in [
            "qemu-system-aarch64 -M virt -cpu cortex-a53 -m 96M -nographic -no-reboot",
            "-kernel /c/loader.elf",
            "-global virtio-mmio.force-legacy=false",
            "-drive if=none,file=/tmp/a,,b.img,format=raw,id=disk0",
            "-device virtio-blk-device,drive=disk0",
            "-device virtio-rng-device",
            "virtio-net-device",
        ] {
            assert!(line.contains(want), "{want} missing in {line}");
        }
        assert!(line.ends_with("-smp 2"), "{line}");
        assert_eq!(Accel::from_argv(&v), Accel::Tcg);
    }

    #[test]
    fn kvm_and_hvf_use_the_host_cpu() {
        let v = argv(&vm(&[]), Path::new("/l"), Accel::Kvm);
        assert!(shell_line(&v).contains("-M virt,accel=kvm -cpu host"));
        assert_eq!(Accel::from_argv(&v), Accel::Kvm);
        let v = argv(&vm(&[]), Path::new("/l"), Accel::Hvf);
        assert!(shell_line(&v).contains("-M virt,accel=hvf -cpu host"));
        assert_eq!(Accel::from_argv(&v), Accel::Hvf);
        let mut n = vm(&[]);
        n.no_net = true;
        assert!(shell_line(&argv(&n, Path::new("/l"), Accel::Tcg)).contains("-nic none"));
    }

    /// validate must not change the image it checks: with `snapshot`, qemu opens the image
    /// read-only and writes to its own temporary overlay.
    #[test]
    fn snapshot_leaves_the_image_alone() {
        let mut v = vm(&[]);
        let line = shell_line(&argv(&v, Path::new("/l"), Accel::Tcg));
        assert!(line.contains("format=raw,id=disk0 "), "{line}");
        assert!(!line.contains("snapshot"), "{line}");
        v.snapshot = true;
        let line = shell_line(&argv(&v, Path::new("/l"), Accel::Tcg));
        assert!(
            line.contains("-drive if=none,file=/tmp/a,,b.img,format=raw,id=disk0,snapshot=on "),
            "{line}"
        );
    }

    /// A report's argv gives back the settings it was built with; other argvs give nothing.
    #[test]
    fn settings_read_back_from_an_argv() {
        let mut v = vm(&["-smp", "1", "-accel", "tcg,tb-size=8"]);
        v.snapshot = true;
        for (no_net, accel) in [(true, Accel::Tcg), (false, Accel::Kvm), (true, Accel::Hvf)] {
            v.no_net = no_net;
            let a = argv(&v, Path::new("/c/loader.elf"), accel);
            assert_eq!(
                recorded(&a),
                Some(Recorded {
                    accel,
                    memory: "96M".into(),
                    no_net,
                    extra: v.extra.clone(),
                })
            );
        }
        // A run's helper console is not a setting.
        let mut with_helper = v.clone();
        with_helper.extra = helper_console(Path::new("/tmp/imgtool-helper-x/helper.sock"));
        with_helper.extra.extend(["-smp".to_string(), "1".into()]);
        let a = argv(&with_helper, Path::new("/l"), Accel::Tcg);
        assert_eq!(recorded(&a).unwrap().extra, ["-smp", "1"]);
        // No extra arguments at all; a template's qcow2 drive.
        let plain = vm(&[]);
        let a = argv_with_format(&plain, Path::new("/l"), Accel::Tcg, "qcow2");
        assert_eq!(recorded(&a).unwrap().extra, Vec::<String>::new());
        assert!(!recorded(&a).unwrap().no_net);
        // Not this crate's shape.
        let mut a = argv(&plain, Path::new("/l"), Accel::Tcg);
        a[7] = "-display".into();
        assert_eq!(recorded(&a), None);
        let a: Vec<String> = ["qemu-system-aarch64", "-M", "virt", "-m", "1G"]
            .map(String::from)
            .to_vec();
        assert_eq!(recorded(&a), None);
        assert_eq!(recorded(&[]), None);
        let mut a = argv(&plain, Path::new("/l"), Accel::Tcg);
        a[0] = "qemu-system-x86_64".into();
        assert_eq!(recorded(&a), None);
    }

    #[test]
    fn shell_quoting() {
        assert_eq!(
            shell_line(&["a b".into(), "it's".into(), "x=1".into()]),
            "'a b' 'it'\\''s' x=1"
        );
    }

    #[test]
    fn image_and_accel_errors_are_usage_errors_naming_the_input() {
        let dir = std::env::temp_dir();
        let missing = Vm {
            image: dir.join("imgtool-qemu-test-no-such.img"),
            ..vm(&[])
        };
        let e = command(&missing, Path::new("/l"), "tcg", Path::new("/nonexistent")).unwrap_err();
        assert!(e.is_usage());
        assert!(
            e.to_string().contains("imgtool-qemu-test-no-such.img"),
            "{e}"
        );
        assert!(e.to_string().contains("imgtool build"), "{e}");
        let e = check_image(&dir).unwrap_err();
        assert!(
            e.is_usage() && e.to_string().ends_with("is not a file"),
            "{e}"
        );
        let file = dir.join(format!("imgtool-qemu-test-{}.img", std::process::id()));
        fs::write(&file, [0u8; 512]).unwrap();
        let ok = Vm {
            image: file.clone(),
            ..vm(&[])
        };
        let e = command(&ok, Path::new("/l"), "whpx", Path::new("/nonexistent")).unwrap_err();
        assert!(e.is_usage() && e.to_string().contains("\"whpx\""), "{e}");
        let v = command(&ok, Path::new("/l"), "tcg", Path::new("/nonexistent")).unwrap();
        assert_eq!(v[0], QEMU);
        fs::remove_file(&file).unwrap();
    }
}
