//! `imgtool rootfs`: assemble a root filesystem (trees, files, Debian packages, our init) into a
//! squashfs; list and show memory profiles; write out the embedded guest init.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::Context;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Build a squashfs root filesystem from a rootfs YAML spec.
    Build {
        /// The rootfs spec: a YAML file (see rootfs/src/spec.rs for the format) or a built-in
        /// name (`beam-guest`: Debian's erlang-base for arm64 under imgtool's init).
        spec: String,
        /// Output squashfs image.
        #[arg(short, long)]
        output: PathBuf,
        /// Memory profile (name or .yaml path); overrides the spec's `profile`.
        #[arg(long)]
        profile: Option<String>,
        /// Keep the staged tree in this directory (it must not exist yet) instead of a
        /// temporary one.
        #[arg(long)]
        stage: Option<PathBuf>,
        /// Download cache (default ~/.cache/imgtool; .debs under debs/, by sha256).
        #[arg(long)]
        cache: Option<PathBuf>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List the built-in memory profiles.
    Profiles,
    /// Show a memory profile.
    #[command(subcommand)]
    Profile(ProfileCommand),
    /// Write the guest init (static aarch64 binary) that rootfs builds install as /sbin/init.
    Init {
        #[arg(short, long)]
        output: PathBuf,
    },
}

#[derive(clap::Subcommand)]
pub enum ProfileCommand {
    /// Print a profile with its includes applied (built-in name or .yaml path).
    Show {
        name: String,
        #[arg(long)]
        json: bool,
    },
}

fn usage(e: rootfs::Error) -> anyhow::Error {
    if e.is_input() {
        anyhow::Error::new(super::UsageError(e.to_string()))
    } else {
        anyhow::Error::new(e)
    }
}

/// Download bars on stderr.
pub(crate) struct Bars(pub(crate) Mutex<Option<indicatif::ProgressBar>>);

impl rootfs::Progress for Bars {
    fn start(&self, what: &str, total: Option<u64>) {
        let pb = match total {
            Some(t) => indicatif::ProgressBar::new(t),
            None => indicatif::ProgressBar::new_spinner(),
        };
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{msg:40} {bytes:>10}/{total_bytes:10} {bar:30} {bytes_per_sec}",
        ) {
            pb.set_style(style);
        }
        pb.set_message(what.to_string());
        *self.0.lock().unwrap() = Some(pb);
    }
    fn advance(&self, bytes: u64) {
        if let Some(pb) = self.0.lock().unwrap().as_ref() {
            pb.inc(bytes);
        }
    }
    fn finish(&self) {
        if let Some(pb) = self.0.lock().unwrap().take() {
            pb.finish_and_clear();
        }
    }
}

pub fn run(c: Command) -> anyhow::Result<()> {
    match c {
        Command::Build {
            spec,
            output,
            profile,
            stage,
            cache,
            json,
        } => build(&spec, &output, profile, stage, cache, json),
        Command::Profiles => {
            for (name, _) in rootfs::profile::BUILTIN {
                let p = rootfs::profile::load(name).map_err(usage)?;
                println!("{name}\t{}", p.description);
            }
            Ok(())
        }
        Command::Profile(ProfileCommand::Show { name, json }) => {
            let p = rootfs::profile::load(&name).map_err(usage)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&p)?);
            } else {
                print!(
                    "{}",
                    serde_saphyr::to_string(&p).context("formatting the profile as YAML")?
                );
                println!("# qemu arguments: {}", p.qemu.args().join(" "));
                if p.beam.flags.is_empty() {
                    println!("# BEAM flags: (defaults)");
                } else {
                    println!("# BEAM flags: {}", p.beam.flag_args().join(" "));
                }
            }
            Ok(())
        }
        Command::Init { output } => {
            let bin = rootfs::init_binary()?;
            write_atomic(&output, bin)?;
            println!(
                "{}: imgtool-init for {}, {} bytes",
                output.display(),
                rootfs::INIT_TARGET,
                bin.len()
            );
            Ok(())
        }
    }
}

fn write_atomic(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, data).with_context(|| tmp.display().to_string())?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
    std::fs::rename(&tmp, path).with_context(|| path.display().to_string())?;
    Ok(())
}

fn build(
    spec: &str,
    output: &Path,
    profile: Option<String>,
    stage: Option<PathBuf>,
    cache: Option<PathBuf>,
    json: bool,
) -> anyhow::Result<()> {
    let l = rootfs::spec::load_named(spec).map_err(usage)?;
    let keep = stage.is_some();
    let stage = match stage {
        Some(s) => {
            if s.exists() {
                return Err(super::UsageError(format!(
                    "--stage {}: already exists (give a new directory)",
                    s.display()
                ))
                .into());
            }
            s
        }
        None => {
            let dir = output
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            let name = output.file_name().unwrap_or_default().to_string_lossy();
            dir.join(format!(".{name}.stage{}", std::process::id()))
        }
    };
    let bars = Bars(Mutex::new(None));
    let opts = rootfs::assemble::BuildOptions {
        profile,
        cache: cache.unwrap_or_else(rootfs::cache_dir),
        progress: &bars,
    };
    let res = (|| -> anyhow::Result<rootfs::assemble::Report> {
        let report = rootfs::assemble::assemble(&l, &stage, &opts).map_err(usage)?;
        let comp = l.spec.compression.as_deref().unwrap_or("xz");
        rootfs::pack::pack(&stage, output, comp)?;
        Ok(report)
    })();
    if !keep {
        let _ = std::fs::remove_dir_all(&stage);
    }
    let report = res?;
    let size = std::fs::metadata(output).map(|m| m.len()).unwrap_or(0);
    if json {
        let mut v = serde_json::to_value(&report)?;
        v["output"] = output.display().to_string().into();
        v["size"] = size.into();
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        for p in &report.packages {
            println!("package {} {} ({})", p.name, p.version, p.reason);
        }
        if report.trimmed_entries > 0 {
            println!(
                "trimmed {} entries, {} KiB",
                report.trimmed_entries,
                report.trimmed_bytes / 1024
            );
        }
        if let Some(p) = &report.profile {
            println!("profile {p}");
        }
        for w in &report.warnings {
            eprintln!("imgtool: warning: {w}");
        }
        println!("{}: {} bytes", output.display(), size);
    }
    Ok(())
}
