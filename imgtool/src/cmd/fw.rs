//! `imgtool fw inspect|tune`: someone else's Nerves firmware (the `firmware` crate does the work).

use std::path::PathBuf;

use anyhow::Context;

use super::UsageError;

#[derive(clap::Subcommand)]
pub enum Command {
    /// What is in a .fw: resources, root filesystem, PID 1, release, vm.args, sysctl.conf,
    /// erlinit.config, kernel version, platform.
    Inspect {
        firmware: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Apply a memory profile to a .fw imgtool did not build (vm.args, a helper run by erlinit,
    /// kernel arguments) and write a new .fw; prints what it applied and what it could not.
    Tune {
        firmware: PathBuf,
        /// Memory profile: a built-in name (imgtool rootfs profiles) or a .yaml path.
        #[arg(long)]
        profile: String,
        /// The tuned firmware (the input is never changed).
        #[arg(short, long)]
        output: PathBuf,
        /// fwup private key file (from `fwup -g`) to sign the tuned firmware.
        #[arg(long)]
        private_key: Option<PathBuf>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

fn fail(e: firmware::Error) -> anyhow::Error {
    if e.is_input() {
        anyhow::Error::new(UsageError(e.to_string()))
    } else {
        anyhow::anyhow!(e)
    }
}

pub fn run(c: Command) -> anyhow::Result<()> {
    match c {
        Command::Inspect { firmware: f, json } => {
            let info = firmware::inspect(&f).map_err(fail)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&info)?);
            } else {
                print!("{}", info.render());
            }
        }
        Command::Tune {
            firmware: f,
            profile,
            output,
            private_key,
            json,
        } => {
            let private_key = match private_key {
                Some(p) => Some(
                    fwup_compat::ops::read_key_file::<64>(&p.to_string_lossy(), "private")
                        .map_err(|e| UsageError(format!("--private-key {}: {e}", p.display())))?,
                ),
                None => None,
            };
            let r = firmware::tune(
                &f,
                &output,
                &firmware::TuneOptions {
                    profile,
                    private_key,
                },
            )
            .map_err(fail)
            .with_context(|| format!("fw tune {}", f.display()))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                print!("{}", r.render());
            }
        }
    }
    Ok(())
}
