//! `imgtool layout list|show`: the layouts built into imgtool.

#[derive(clap::Subcommand)]
pub enum Command {
    /// Name the built-in layouts.
    List,
    /// Print a built-in layout as YAML, to start your own from.
    Show {
        /// The layout's name.
        name: String,
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
    }
}
