//! `imgtool mkfs squashfs|f2fs`: one subcommand per filesystem, each in its own module.

mod f2fs;
mod squashfs;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Build a squashfs image from a directory, like mksquashfs.
    Squashfs(squashfs::Args),
    /// Format an f2fs filesystem into a region of a file, like mkfs.f2fs.
    F2fs(f2fs::Args),
}

pub fn run(c: Command) -> anyhow::Result<()> {
    match c {
        Command::Squashfs(a) => squashfs::run(a),
        Command::F2fs(a) => f2fs::run(a),
    }
}
