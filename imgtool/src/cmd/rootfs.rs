//! `imgtool rootfs`: assemble a root filesystem (trees, files, Debian packages, our init) into a
//! squashfs; pin its Debian packages in a lockfile; list and show memory profiles; write out
//! the embedded guest init.

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
        /// Download cache (default: $IMGTOOL_CACHE, else ~/.cache/imgtool; .debs under debs/, by sha256).
        #[arg(long)]
        cache: Option<PathBuf>,
        #[command(flatten)]
        lock: LockArgs,
        /// Fail unless the lockfile exists and fits the spec (as `cargo --locked`).
        #[arg(long)]
        locked: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Resolve a spec's Debian packages against the mirror and write them to SPEC.lock.
    Lock {
        /// The rootfs spec (YAML file).
        spec: String,
        /// Download cache (default: $IMGTOOL_CACHE, else ~/.cache/imgtool).
        #[arg(long)]
        cache: Option<PathBuf>,
        #[command(flatten)]
        lock: LockArgs,
        /// Print the lockfile as JSON too.
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

#[derive(clap::Args)]
pub struct LockArgs {
    /// The lockfile (default: the spec's path plus `.lock`; a built-in spec has its own).
    #[arg(long)]
    lockfile: Option<PathBuf>,
    /// Use no network: everything must be in the cache (automatic when a lockfile fits and
    /// every .deb it names is cached).
    #[arg(long)]
    offline: bool,
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
            lock,
            locked,
            json,
        } => build(&spec, &output, profile, stage, cache, &lock, locked, json),
        Command::Lock {
            spec,
            cache,
            lock,
            json,
        } => write_lock(&spec, cache, &lock, json),
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
            common::fs::write_atomic_mode(&output, bin, Some(0o755))?;
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

fn write_lock(
    spec: &str,
    cache: Option<PathBuf>,
    args: &LockArgs,
    json: bool,
) -> anyhow::Result<()> {
    let l = rootfs::spec::load_named(spec).map_err(usage)?;
    let Some(path) = args
        .lockfile
        .clone()
        .or_else(|| rootfs::lock::default_path(&l))
    else {
        return Err(
            super::UsageError(format!("{spec} is a built-in spec: give --lockfile PATH")).into(),
        );
    };
    let bars = Bars(Mutex::new(None));
    let mut opts = rootfs::assemble::BuildOptions::new(None, cache_or_root(cache)?, &bars);
    opts.offline = args.offline;
    let lf = rootfs::assemble::lock(&l, &opts).map_err(usage)?;
    lf.write(&path)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&lf)?);
    } else {
        for p in &lf.packages {
            println!(
                "locked {} {} {} ({})",
                p.name, p.version, p.architecture, p.reason
            );
        }
        println!(
            "{}: {} packages from {} {} ({})",
            path.display(),
            lf.packages.len(),
            lf.mirror,
            lf.suite,
            lf.release_date.as_deref().unwrap_or("undated")
        );
    }
    Ok(())
}

/// The lockfile a build uses (None: resolve against the index), after telling the user why.
fn choose_lock(
    l: &rootfs::spec::Loaded,
    args: &LockArgs,
    locked: bool,
) -> anyhow::Result<Option<(rootfs::lock::Lockfile, String)>> {
    use rootfs::lock::Status;
    let (status, from) = rootfs::lock::find(l, args.lockfile.as_deref()).map_err(usage)?;
    let fix = format!("run `imgtool rootfs lock {}`", l.file);
    match status {
        Status::Fresh(lf) => Ok(Some((*lf, from))),
        Status::Missing if l.spec.debian.is_none() => Ok(None),
        Status::Missing if locked => {
            Err(super::UsageError(format!("--locked: no lockfile {from}: {fix}")).into())
        }
        Status::Stale(why) if locked => {
            Err(super::UsageError(format!("--locked: {from} is out of date: {why}: {fix}")).into())
        }
        Status::Missing => {
            eprintln!(
                "imgtool: no lockfile ({from}): resolving against the mirror's current index \
                 ({fix} to pin the packages)"
            );
            Ok(None)
        }
        Status::Stale(why) => {
            eprintln!(
                "imgtool: warning: {from} is out of date ({why}): resolving against the \
                 mirror's current index ({fix} to update it)"
            );
            Ok(None)
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn build(
    spec: &str,
    output: &Path,
    profile: Option<String>,
    stage: Option<PathBuf>,
    cache: Option<PathBuf>,
    lock_args: &LockArgs,
    locked: bool,
    json: bool,
) -> anyhow::Result<()> {
    let l = rootfs::spec::load_named(spec).map_err(usage)?;
    let lock = choose_lock(&l, lock_args, locked)?;
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
    let mut opts = rootfs::assemble::BuildOptions::new(profile, cache_or_root(cache)?, &bars);
    opts.lock = lock.as_ref().map(|(lf, _)| lf);
    opts.offline = lock_args.offline;
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
        if let Some((_, from)) = &lock {
            v["lockfile"] = from.clone().into();
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        if let Some(from) = &report.resolved_from {
            let from = match &lock {
                Some((_, f)) => format!("lockfile {f}"),
                None => from.to_string(),
            };
            println!(
                "packages from the {from} ({} {}, {})",
                report.mirror.as_deref().unwrap_or(""),
                report.suite.as_deref().unwrap_or(""),
                report.release_date.as_deref().unwrap_or("undated")
            );
        }
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

fn cache_or_root(cache: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    match cache {
        Some(c) => Ok(c),
        None => super::kernel::cache_root(),
    }
}
