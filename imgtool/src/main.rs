//! imgtool: a thin CLI over the format and layout libraries. Each subcommand lives in
//! `cmd/<name>.rs` with an `Args` type and a `run` function: parse, call, print.

mod cmd;

use std::ffi::OsString;
use std::path::Path;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "imgtool", version, about, propagate_version = true)]
struct Cli {
    /// More log output (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write a complete disk image from a layout YAML file (or a built-in layout name).
    Build(cmd::build::Args),
    /// Show what is inside a disk image: partitions, U-Boot env, kernel slots, filesystems.
    Inspect(cmd::inspect::Args),
    /// Read or change the U-Boot environment inside an image.
    #[command(subcommand)]
    Env(cmd::env::Command),
    /// List or print the built-in layouts.
    #[command(subcommand)]
    Layout(cmd::layout::Command),
    /// Make a filesystem image (squashfs, f2fs).
    #[command(subcommand)]
    Mkfs(cmd::mkfs::Command),
    /// Run fwup's command line (the same flags as fwup).
    Fwup(cmd::fwup::Args),
    /// Someone else's Nerves firmware (.fw): inspect it, or apply a memory profile to it.
    #[command(subcommand)]
    Fw(cmd::fw::Command),
    /// Build a small guest kernel from kernel-configs/ fragments (cached).
    #[command(subcommand)]
    Kernel(cmd::kernel::Command),
    /// The no_std arm64 bootloader that imgtool embeds.
    #[command(subcommand)]
    Loader(cmd::loader::Command),
    /// Print the qemu command line that boots an image on this host.
    QemuCmd(cmd::qemu::CmdArgs),
    /// Boot an image under qemu with the console attached.
    Boot(cmd::qemu::BootArgs),
    /// Assemble a root filesystem (directories, overlays, Debian packages, our init).
    #[command(subcommand)]
    Rootfs(cmd::rootfs::Command),
    /// Boot an image, wait for readiness, measure memory; diff against a baseline (CI gate).
    Validate(cmd::validate::Args),
    /// Build and boot one image per memory profile and compare them (cold boots or clones).
    Experiment(cmd::guests::ExperimentArgs),
    /// From nothing to a booted BEAM guest with its memory report, in one command.
    Demo(cmd::guests::DemoArgs),
    /// Boot an image to readiness once and save it as a template that clones restore from.
    Template(cmd::guests::TemplateArgs),
    /// Run many clones of a template, each with its own identity, and measure the host.
    #[command(subcommand)]
    Fleet(cmd::guests::FleetCommand),
}

/// Multi-call binary: started as `fwup`, `fw_printenv` or `fw_setenv` it takes
/// those tools' own flags.
fn main() -> ExitCode {
    let argv: Vec<OsString> = std::env::args_os().collect();
    let argv0 = argv
        .first()
        .and_then(|a| Path::new(a).file_name())
        .and_then(|n| n.to_str())
        .unwrap_or("imgtool")
        .to_string();
    match argv0.as_str() {
        "fwup" => return cmd::fwup::main_as_fwup(argv),
        "fw_printenv" | "fw_setenv" => return cmd::env::main_as_uboot_tools(&argv0, argv),
        _ => {}
    }

    let cli = Cli::parse_from(argv);
    init_tracing(cli.verbose);
    let result = match cli.command {
        Command::Build(a) => cmd::build::run(a),
        Command::Inspect(a) => cmd::inspect::run(a),
        Command::Env(c) => cmd::env::run(c),
        Command::Layout(c) => cmd::layout::run(c),
        Command::Mkfs(c) => cmd::mkfs::run(c),
        Command::Fwup(a) => return cmd::fwup::run(a),
        Command::Fw(c) => cmd::fw::run(c),
        Command::Kernel(c) => cmd::kernel::run(c),
        Command::Loader(c) => cmd::loader::run(c),
        Command::QemuCmd(a) => cmd::qemu::run_cmd(a),
        Command::Boot(a) => cmd::qemu::run_boot(a),
        Command::Rootfs(c) => cmd::rootfs::run(c),
        Command::Validate(a) => cmd::validate::run(a),
        Command::Experiment(a) => cmd::guests::run_experiment(a),
        Command::Demo(a) => cmd::guests::run_demo(a),
        Command::Template(a) => cmd::guests::run_template(a),
        Command::Fleet(c) => cmd::guests::run_fleet(c),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("imgtool: error: {e:#}");
            ExitCode::from(cmd::exit_code(&e))
        }
    }
}

fn init_tracing(verbose: u8) {
    let level = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("IMGTOOL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
