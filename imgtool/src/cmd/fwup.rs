//! `imgtool fwup ARGS` and the `fwup` personality: fwup's own command line, implemented by
//! the fwup-compat crate.

use std::ffi::OsString;
use std::process::ExitCode;

#[derive(clap::Args)]
// fwup's own --help and --version, not clap's.
#[command(disable_help_flag = true, disable_version_flag = true)]
pub struct Args {
    /// fwup's own flags, passed through unchanged.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<OsString>,
}

pub fn run(a: Args) -> ExitCode {
    let mut argv = vec![OsString::from("fwup")];
    argv.extend(a.args);
    main_as_fwup(argv)
}

pub fn main_as_fwup(argv: Vec<OsString>) -> ExitCode {
    ExitCode::from(fwup_compat::cli::run(argv) as u8)
}
