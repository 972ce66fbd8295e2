//! `imgtool loader write|info`: the no_std arm64 bootloader (../loader) that imgtool embeds.
//!
//! imgtool/build.rs builds it for aarch64-unknown-none; qemu starts it with `-kernel`.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

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
            write_atomic(&file, elf()?)?;
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
            println!("sha256: {}", sha256_hex(e));
            Ok(())
        }
    }
}

/// The embedded ELF, or an error saying how to get one.
pub fn elf() -> Result<&'static [u8]> {
    if LOADER_ELF.is_empty() {
        bail!(
            "this imgtool was built without its loader: install the Rust target \
             (`rustup target add aarch64-unknown-none`, or scripts/install-deps) and rebuild imgtool"
        );
    }
    Ok(LOADER_ELF)
}

fn sha256_hex(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

/// The loader as a file qemu can open: `<cache>/imgtool/loader/<sha256>.elf`, written once.
pub fn cached_path() -> Result<PathBuf> {
    let e = elf()?;
    let dir = super::kernel::cache_root()?.join("loader");
    let path = dir.join(format!("{}.elf", &sha256_hex(e)[..16]));
    if fs::metadata(&path)
        .map(|m| m.len() == e.len() as u64)
        .unwrap_or(false)
    {
        return Ok(path);
    }
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    write_atomic(&path, e)?;
    Ok(path)
}

/// Write to a temporary name beside `path`, then rename: a reader never sees half a file.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let name = path
        .file_name()
        .with_context(|| format!("{} is not a file name", path.display()))?;
    let tmp = path.with_file_name(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let mut f = fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    Ok(())
}
