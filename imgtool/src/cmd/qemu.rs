//! `imgtool qemu-cmd` and `imgtool boot`: run a disk image under qemu with the embedded loader.
//! The argv and the accelerator come from the `qemu` crate, the console watching from
//! `validate::console`.

use std::fs;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command as Process, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use regex::Regex;
use validate::console::{Console, Wait};

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

pub fn run_cmd(a: CmdArgs) -> Result<()> {
    let argv = command(&a.vm)?;
    if a.json {
        println!("{}", serde_json::to_string(&argv)?);
    } else {
        println!("{}", qemu::shell_line(&argv));
    }
    Ok(())
}

/// The full argv (program first).
fn command(vm: &VmArgs) -> Result<Vec<String>> {
    let spec = qemu::Vm {
        image: vm.image.clone(),
        memory: vm.memory.clone(),
        no_net: vm.no_net,
        extra: vm.extra.clone(),
        // A booted device keeps what it writes, as on real hardware.
        snapshot: false,
    };
    let loader = super::loader::cached_path()?;
    let probe_cache = super::kernel::cache_root()?.join("kvm-probe");
    qemu::command(&spec, &loader, &vm.accel, &probe_cache).map_err(|e| {
        if e.is_usage() {
            UsageError(e.to_string()).into()
        } else {
            anyhow::Error::new(e)
        }
    })
}

/// The console copied to our stdout and, with `--log`, a file.
struct Tee(Option<fs::File>);

impl Write for Tee {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        std::io::stdout().lock().write_all(buf)?;
        if let Some(f) = self.0.as_mut() {
            f.write_all(buf)?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stdout().lock().flush()
    }
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
    tracing::info!("{}", qemu::shell_line(&argv));
    let log = match &a.log {
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
    let mut con = Console::new(
        child.stdout.take().expect("piped"),
        None,
        Some(Box::new(Tee(log))),
    );
    let never = Regex::new("$^").unwrap();
    let re = until.as_ref().unwrap_or(&never);
    let wait = loop {
        match a.timeout {
            Some(t) => break con.wait_for(re, started + Duration::from_secs_f64(t)),
            // No limit: wait an hour at a time.
            None => match con.wait_for(re, Instant::now() + Duration::from_secs(3600)) {
                Wait::Timeout => continue,
                w => break w,
            },
        }
    };
    let exit = match wait {
        Wait::Closed => Some(child.wait()?), // console closed: qemu is exiting
        Wait::Matched(..) | Wait::Timeout => {
            let _ = child.kill();
            let _ = child.wait();
            None
        }
    };
    let secs = started.elapsed().as_secs_f64();
    if let Wait::Matched(line, _) = wait {
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
