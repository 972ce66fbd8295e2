//! `imgtool kernel build|fragments`: a small guest kernel from the kernel-configs/ fragments,
//! built and cached by the `kernel-configs` crate; this module shows its progress.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;
use indicatif::{ProgressBar, ProgressStyle};

use super::UsageError;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Build (or find in the cache) a kernel Image; prints its path as the last line.
    Build(BuildArgs),
    /// List the built-in config fragments.
    Fragments,
}

#[derive(clap::Args)]
pub struct BuildArgs {
    /// Guest architecture.
    #[arg(long, default_value = "aarch64", value_parser = ["aarch64"])]
    arch: String,
    /// Extra fragment: a built-in name (see `imgtool kernel fragments`) or a .config file path.
    /// Applied in order after the arch's base fragment (`qemu-<arch>`).
    #[arg(long = "fragment", value_name = "NAME")]
    fragments: Vec<String>,
    /// Kernel source: a tree or a .tar.{xz,gz} [default: /usr/src/linux-source-6.1.tar.xz].
    #[arg(long, value_name = "PATH_OR_TARBALL")]
    source: Option<PathBuf>,
    /// Parallel make jobs [default: number of CPUs].
    #[arg(long, short = 'j')]
    jobs: Option<usize>,
    /// Rebuild even when the cache has this kernel.
    #[arg(long)]
    force: bool,
    /// Stop after merging and checking the config; print the merged .config's path.
    #[arg(long)]
    config_only: bool,
}

pub fn run(c: Command) -> Result<()> {
    match c {
        Command::Build(a) => {
            let image = build(&a)?;
            println!("{}", image.display());
            Ok(())
        }
        Command::Fragments => {
            for (name, text) in kernel_configs::FRAGMENTS {
                println!("{name:14} {}", kernel_configs::about(text));
            }
            Ok(())
        }
    }
}

/// The cache root (`common::cache::root`: IMGTOOL_CACHE, XDG_CACHE_HOME, ~/.cache).
pub fn cache_root() -> Result<PathBuf> {
    Ok(common::cache::root()?)
}

/// Build the Image or return the cached one.
pub fn build(a: &BuildArgs) -> Result<PathBuf> {
    let opts = kernel_configs::BuildOptions {
        arch: a.arch.clone(),
        fragments: a.fragments.clone(),
        source: a.source.clone(),
        jobs: a.jobs,
        force: a.force,
        config_only: a.config_only,
    };
    kernel_configs::build(&opts, &mut Bars::default()).map_err(|e| {
        if e.is_usage() {
            UsageError(e.to_string()).into()
        } else {
            anyhow::Error::new(e)
        }
    })
}

/// The build's progress as indicatif bars on stderr, notes as `imgtool: ...` lines.
#[derive(Default)]
pub(crate) struct Bars(Option<ProgressBar>);

impl kernel_configs::Progress for Bars {
    fn note(&mut self, msg: &str) {
        eprintln!("imgtool: {msg}");
    }

    fn unpack_start(&mut self, tarball: &Path) {
        let s = ProgressBar::new_spinner().with_message(format!("unpacking {}", tarball.display()));
        s.enable_steady_tick(Duration::from_millis(200));
        self.0 = Some(s);
    }

    fn unpack_end(&mut self) {
        if let Some(s) = self.0.take() {
            s.finish_and_clear();
        }
    }

    fn build_start(&mut self, expected: u64) {
        let bar = ProgressBar::new(expected).with_style(
            ProgressStyle::with_template(
                "{spinner} kernel {elapsed_precise} [{bar:30}] {pos}/~{len} {wide_msg}",
            )
            .expect("static template")
            .progress_chars("=> "),
        );
        bar.enable_steady_tick(Duration::from_millis(200));
        self.0 = Some(bar);
    }

    fn build_step(&mut self, step: u64, line: &str) {
        if let Some(bar) = &self.0 {
            if step > bar.length().unwrap_or(0) {
                bar.set_length(step);
            }
            bar.set_position(step);
            bar.set_message(line.to_string());
        }
    }

    fn build_end(&mut self) {
        if let Some(bar) = self.0.take() {
            bar.finish_and_clear();
        }
    }
}
