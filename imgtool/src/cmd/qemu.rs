//! `imgtool qemu-cmd` and `imgtool boot`: run a disk image under qemu with the embedded loader.
//!
//! Machine: qemu's arm64 `virt` (<https://www.qemu.org/docs/master/system/arm/virt.html>), the
//! disk as a virtio-mmio block device in modern mode, a virtio RNG (getrandom otherwise waits),
//! the console on the PL011 serial port, `-no-reboot` so a guest power-off or panic ends qemu.
//! Acceleration: KVM only when a probe guest actually runs under it (on some hosts /dev/kvm
//! exists but ordinary guests hang), HVF on macOS arm64, else TCG with a cortex-a53.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use regex::Regex;

use super::UsageError;

#[derive(clap::Args)]
pub struct CmdArgs {
    #[command(flatten)]
    vm: VmArgs,
    /// Print the argv as a JSON array instead of a shell line.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct BootArgs {
    #[command(flatten)]
    vm: VmArgs,
    /// Give up (stop the guest, exit 1) after this many seconds.
    #[arg(long, value_name = "SECS")]
    timeout: Option<f64>,
    /// Stop the guest and exit 0 as soon as a console line matches this regex.
    #[arg(long, value_name = "REGEX")]
    until: Option<String>,
    /// Also write the console output to this file.
    #[arg(long, value_name = "FILE")]
    log: Option<PathBuf>,
}

#[derive(clap::Args)]
struct VmArgs {
    /// Disk image to boot (raw).
    image: PathBuf,
    /// Guest architecture.
    #[arg(long, default_value = "aarch64", value_parser = ["aarch64"])]
    arch: String,
    /// Guest memory (qemu -m syntax: 128M, 1G).
    #[arg(
        short = 'm',
        long = "memory",
        default_value = "128M",
        value_name = "SIZE"
    )]
    memory: String,
    /// Acceleration: auto picks KVM/HVF when they work here, else TCG.
    #[arg(long, default_value = "auto", value_parser = ["auto", "kvm", "hvf", "tcg"])]
    accel: String,
    /// No network device (default: user-mode networking on a virtio-net device).
    #[arg(long)]
    no_net: bool,
    /// Extra qemu arguments, after `--`.
    #[arg(last = true, value_name = "EXTRA")]
    extra: Vec<String>,
}

/// How the guest CPU runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Accel {
    Kvm,
    Hvf,
    Tcg,
}

pub fn run_cmd(a: CmdArgs) -> Result<()> {
    let argv = command(&a.vm)?;
    if a.json {
        println!("{}", serde_json::to_string(&argv)?);
    } else {
        println!("{}", shell_line(&argv));
    }
    Ok(())
}

const QEMU: &str = "qemu-system-aarch64";

/// The full argv (program first).
fn command(vm: &VmArgs) -> Result<Vec<String>> {
    check_image(&vm.image)?;
    let loader = super::loader::cached_path()?;
    let accel = match vm.accel.as_str() {
        "kvm" => Accel::Kvm,
        "hvf" => Accel::Hvf,
        "tcg" => Accel::Tcg,
        _ => detect_accel(&loader)?,
    };
    Ok(argv(vm, &loader, accel))
}

fn check_image(p: &Path) -> Result<()> {
    let m = fs::metadata(p).map_err(|e| {
        UsageError(format!(
            "disk image {}: {e} (build one with `imgtool build nerves-qemu-aarch64 -o special.img`)",
            p.display()
        ))
    })?;
    if !m.is_file() {
        bail!(UsageError(format!(
            "disk image {} is not a file",
            p.display()
        )));
    }
    Ok(())
}

fn argv(vm: &VmArgs, loader: &Path, accel: Accel) -> Vec<String> {
    let (machine, cpu) = match accel {
        Accel::Kvm => ("virt,accel=kvm", "host"),
        Accel::Hvf => ("virt,accel=hvf", "host"),
        Accel::Tcg => ("virt", "cortex-a53"),
    };
    let image = vm.image.to_string_lossy();
    // qemu's -drive takes comma-separated options: a comma in the path is doubled.
    let image = image.replace(',', ",,");
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
        &format!("if=none,file={image},format=raw,id=disk0"),
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

fn shell_line(argv: &[String]) -> String {
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
fn detect_accel(loader: &Path) -> Result<Accel> {
    match (std::env::consts::OS, std::env::consts::ARCH) {
        ("macos", "aarch64") => Ok(Accel::Hvf),
        ("linux", "aarch64") => Ok(if kvm_works(loader)? {
            Accel::Kvm
        } else {
            Accel::Tcg
        }),
        // Another host architecture cannot accelerate an arm64 guest.
        _ => Ok(Accel::Tcg),
    }
}

/// Whether a guest really runs under KVM here: boot the loader and wait for its banner. The
/// answer is cached per host kernel and qemu version (the probe takes up to a few seconds).
fn kvm_works(loader: &Path) -> Result<bool> {
    if !Path::new("/dev/kvm").exists() {
        return Ok(false);
    }
    let uname = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let qemu_version = Process::new(QEMU)
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
    let cache = super::kernel::cache_root()?.join("kvm-probe");
    if let Ok(text) = fs::read_to_string(&cache) {
        if let Some((answer, k)) = text.trim_end().split_once('\t') {
            if k == key {
                return Ok(answer == "kvm-ok");
            }
        }
    }
    let ok = probe(loader, Duration::from_secs(5))?;
    if !ok {
        eprintln!(
            "imgtool: /dev/kvm exists but a probe guest did not start under it in 5 s: using TCG"
        );
    }
    if let Some(dir) = cache.parent() {
        fs::create_dir_all(dir)?;
    }
    fs::write(
        &cache,
        format!("{}\t{key}\n", if ok { "kvm-ok" } else { "kvm-broken" }),
    )?;
    Ok(ok)
}

fn probe(loader: &Path, limit: Duration) -> Result<bool> {
    let mut child = Process::new(QEMU)
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
        .with_context(|| format!("starting {QEMU} (install qemu-system-arm)"))?;
    let (found, _) = watch(
        &mut child,
        &Regex::new("imgtool-loader").unwrap(),
        limit,
        None,
        false,
    )?;
    Ok(found.is_some())
}

pub fn run_boot(a: BootArgs) -> Result<()> {
    let until = a
        .until
        .as_deref()
        .map(Regex::new)
        .transpose()
        .map_err(|e| UsageError(format!("--until: {e}")))?;
    if let Some(t) = a.timeout {
        if !(t > 0.0 && t.is_finite()) {
            bail!(UsageError(format!(
                "--timeout {t}: must be a positive number of seconds"
            )));
        }
    }
    let argv = command(&a.vm)?;
    tracing::info!("{}", shell_line(&argv));
    let mut log = match &a.log {
        Some(p) => {
            Some(fs::File::create(p).with_context(|| format!("creating log {}", p.display()))?)
        }
        None => None,
    };
    let interactive = until.is_none() && a.timeout.is_none();
    let mut child = Process::new(&argv[0])
        .args(&argv[1..])
        .stdin(if interactive {
            Stdio::inherit()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {} (install qemu-system-arm)", argv[0]))?;
    let started = Instant::now();
    let limit = a
        .timeout
        .map(Duration::from_secs_f64)
        .unwrap_or(Duration::MAX);
    let never = Regex::new("$^").unwrap();
    let (found, exit) = watch(
        &mut child,
        until.as_ref().unwrap_or(&never),
        limit,
        log.as_mut(),
        true,
    )?;
    let secs = started.elapsed().as_secs_f64();
    if let Some(line) = found {
        eprintln!(
            "imgtool: console matched after {secs:.2} s: {}",
            line.trim_end()
        );
        return Ok(());
    }
    match exit {
        Some(status) if until.is_none() => {
            if status.success() {
                Ok(())
            } else {
                bail!("qemu exited with {status}")
            }
        }
        Some(status) => bail!(
            "qemu exited ({status}) after {secs:.1} s before the console matched /{}/",
            a.until.as_deref().unwrap_or("")
        ),
        None => bail!(
            "timeout: {secs:.1} s passed{}; qemu stopped",
            a.until
                .as_deref()
                .map(|u| format!(" without a console line matching /{u}/"))
                .unwrap_or_default()
        ),
    }
}

/// Copy the guest's console to our stdout (if `echo`) and `log`, until a line matches `re`
/// (returns it, qemu killed), qemu exits (returns its status), or `limit` passes (qemu killed,
/// both `None`).
fn watch(
    child: &mut std::process::Child,
    re: &Regex,
    limit: Duration,
    mut log: Option<&mut fs::File>,
    echo: bool,
) -> Result<(Option<String>, Option<std::process::ExitStatus>)> {
    let mut out = child.stdout.take().expect("piped");
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        loop {
            match out.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.send(buf[..n].to_vec()).is_err() {
                        break;
                    }
                }
            }
        }
    });
    let deadline = Instant::now().checked_add(limit);
    let mut line = Vec::<u8>::new();
    let stdout = std::io::stdout();
    let result = loop {
        let wait = match deadline {
            Some(d) => match d.checked_duration_since(Instant::now()) {
                Some(w) => w,
                None => break (None, None),
            },
            None => Duration::from_secs(3600),
        };
        match rx.recv_timeout(wait) {
            Ok(chunk) => {
                if echo {
                    let mut s = stdout.lock();
                    let _ = s.write_all(&chunk);
                    let _ = s.flush();
                }
                if let Some(l) = log.as_mut() {
                    l.write_all(&chunk)?;
                }
                // Match whole lines, and the partial last line (a prompt has no newline).
                let mut matched = None;
                for &b in &chunk {
                    if b == b'\n' {
                        let text = String::from_utf8_lossy(&line)
                            .trim_end_matches('\r')
                            .to_string();
                        if matched.is_none() && re.is_match(&text) {
                            matched = Some(text);
                        }
                        line.clear();
                    } else {
                        line.push(b);
                    }
                }
                if matched.is_none() && !line.is_empty() {
                    let text = String::from_utf8_lossy(&line).to_string();
                    if re.is_match(&text) {
                        matched = Some(text);
                    }
                }
                if matched.is_some() {
                    break (matched, None);
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    break (None, None);
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                // Console closed: qemu is exiting.
                let status = child.wait()?;
                return Ok((None, Some(status)));
            }
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm(extra: &[&str]) -> VmArgs {
        VmArgs {
            image: PathBuf::from("/tmp/a,b.img"),
            arch: "aarch64".into(),
            memory: "96M".into(),
            accel: "auto".into(),
            no_net: false,
            extra: extra.iter().map(|s| s.to_string()).collect(),
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
    }

    #[test]
    fn kvm_and_hvf_use_the_host_cpu() {
        let v = shell_line(&argv(&vm(&[]), Path::new("/l"), Accel::Kvm));
        assert!(v.contains("-M virt,accel=kvm -cpu host"), "{v}");
        let v = shell_line(&argv(&vm(&[]), Path::new("/l"), Accel::Hvf));
        assert!(v.contains("-M virt,accel=hvf -cpu host"), "{v}");
        let mut n = vm(&[]);
        n.no_net = true;
        assert!(shell_line(&argv(&n, Path::new("/l"), Accel::Tcg)).contains("-nic none"));
    }

    #[test]
    fn shell_quoting() {
        assert_eq!(
            shell_line(&["a b".into(), "it's".into(), "x=1".into()]),
            "'a b' 'it'\\''s' x=1"
        );
    }
}
