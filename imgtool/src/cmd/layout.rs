//! `imgtool layout list|show|fwup-conf`: the layouts built into imgtool, and a layout as fwup.conf.

use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Name the built-in layouts.
    List,
    /// Print a built-in layout as YAML, to start your own from.
    Show {
        /// The layout's name.
        name: String,
    },
    /// Print a fwup.conf for an A/B layout (built-in name or YAML file): its MBR, env,
    /// complete and upgrade tasks, all at the layout's offsets.
    FwupConf {
        /// A layout YAML file, or the name of a built-in layout.
        layout: String,
        /// Set a layout input (the env's values): `-D version=2.0.0`.
        #[arg(short = 'D', value_name = "NAME=VALUE")]
        define: Vec<String>,
        /// host-path of the kernel resource (fwup expands `${VAR}` when it creates the .fw).
        #[arg(long, default_value = "${KERNEL}")]
        kernel: String,
        /// host-path of the root filesystem resource.
        #[arg(long, default_value = "${ROOTFS}")]
        rootfs: String,
        /// Write here (temporary name, then rename) instead of stdout.
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
}

pub fn run(c: Command) -> anyhow::Result<()> {
    match c {
        Command::List => {
            for (name, yaml) in layout::BUILTIN {
                let desc = layout::parse(yaml, name)
                    .ok()
                    .and_then(|s| s.description)
                    .unwrap_or_default();
                println!("{name}\t{desc}");
            }
            Ok(())
        }
        Command::Show { name } => {
            let yaml = layout::builtin(&name).ok_or_else(|| {
                let names: Vec<_> = layout::BUILTIN.iter().map(|(n, _)| *n).collect();
                super::UsageError(format!(
                    "no built-in layout `{name}` (there are: {})",
                    names.join(", ")
                ))
            })?;
            print!("{yaml}");
            Ok(())
        }
        Command::FwupConf {
            layout,
            define,
            kernel,
            rootfs,
            output,
        } => {
            let mut overrides = BTreeMap::new();
            for d in &define {
                let (k, v) = d
                    .split_once('=')
                    .ok_or_else(|| super::UsageError(format!("-D {d}: write NAME=VALUE")))?;
                overrides.insert(k.to_string(), v.to_string());
            }
            let plan = layout::plan_from(&layout, layout::Context::new(overrides))
                .map_err(super::build::input_error)?;
            let conf =
                layout::fwup_conf::render(&plan, &layout::fwup_conf::Resources { kernel, rootfs })
                    .map_err(super::build::input_error)?;
            match output {
                None => print!("{conf}"),
                Some(p) => common::fs::write_atomic(&p, conf.as_bytes())?,
            }
            Ok(())
        }
    }
}
