//! `imgtool loader write|info`: the no_std arm64 bootloader (../loader) that imgtool embeds.
//!
//! imgtool/build.rs builds it for aarch64-unknown-none; qemu starts it with `-kernel`.

use std::fs;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};

static LOADER_ELF: &[u8] = include_bytes!(env!("IMGTOOL_LOADER_ELF"));

#[derive(clap::Subcommand)]
pub enum Command {
    /// Write the loader ELF (qemu `-kernel` file) to FILE.
    Write { file: PathBuf },
    /// Print the embedded loader's size and SHA-256.
    Info,
}

pub fn run(c: Command) -> Result<()> {
    match c {
        Command::Write { file } => {
            common::fs::write_atomic(&file, elf()?)?;
            eprintln!(
                "imgtool: wrote loader ({} bytes) to {}",
                elf()?.len(),
                file.display()
            );
            Ok(())
        }
        Command::Info => {
            let e = elf()?;
            println!("bytes: {}", e.len());
            println!("sha256: {}", common::hash::sha256_hex(e));
            Ok(())
        }
    }
}

/// The embedded ELF, or an error saying how to get one.
pub fn elf() -> Result<&'static [u8]> {
    if LOADER_ELF.is_empty() {
        bail!(
            "this imgtool was built without its loader (feature `without-embedded-binaries`): \
             rebuild it without that feature"
        );
    }
    Ok(LOADER_ELF)
}

/// The loader as a file qemu can open: `<cache>/imgtool/loader/<sha256>.elf`, written once.
pub fn cached_path() -> Result<PathBuf> {
    let e = elf()?;
    let dir = super::kernel::cache_root()?.join("loader");
    let path = dir.join(format!("{}.elf", &common::hash::sha256_hex(e)[..16]));
    if fs::metadata(&path)
        .map(|m| m.len() == e.len() as u64)
        .unwrap_or(false)
    {
        return Ok(path);
    }
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    common::fs::write_atomic(&path, e)?;
    Ok(path)
}
