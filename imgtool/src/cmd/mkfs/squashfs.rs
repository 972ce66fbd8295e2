//! `imgtool mkfs squashfs DIR -o OUT`: a reproducible squashfs image of a directory, like
//! `mksquashfs DIR OUT -noappend`, with the `squashfs` crate.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};

#[derive(clap::Args)]
pub struct Args {
    /// Directory whose contents become the image's root.
    pub dir: PathBuf,
    /// Output image (replaced; written under a temporary name and renamed on success).
    #[arg(short = 'o', long)]
    pub output: PathBuf,
    /// Compressor.
    #[arg(long, default_value = "gzip", value_parser = ["gzip", "xz", "zstd", "lz4"])]
    pub comp: String,
    /// Make every file owned by root (uid 0, gid 0), like mksquashfs -all-root.
    #[arg(long)]
    pub all_root: bool,
    /// Modification time of every inode, in seconds since 1970 (default: $SOURCE_DATE_EPOCH,
    /// else 0).
    #[arg(long)]
    pub mtime: Option<u32>,
    /// Data block size, with a unit (a power of two, 4 KiB..=1 MiB: `128KiB`, `131072B`).
    #[arg(short = 'b', long, value_parser = common::size::parse_size, default_value = "128KiB")]
    pub block_size: u64,
    /// Compression level (default: gzip 9, xz 6, zstd 15, as mksquashfs).
    #[arg(long)]
    pub level: Option<u32>,
    /// Compression threads (default: one per CPU).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

fn mtime_default() -> anyhow::Result<u32> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Err(_) => Ok(0),
        Ok(v) => v.trim().parse().with_context(|| {
            format!(
                "SOURCE_DATE_EPOCH=`{v}` is not a whole number of seconds up to 4294967295; \
                 fix or unset it"
            )
        }),
    }
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let compression: squashfs::Compression = a.comp.parse().map_err(anyhow::Error::msg)?;
    let mtime = match a.mtime {
        Some(t) => t,
        None => mtime_default()?,
    };
    let block_size = u32::try_from(a.block_size)
        .map_err(|_| anyhow::anyhow!("--block-size {} is too large", a.block_size))?;

    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {bytes} {bytes_per_sec}")
            .expect("template")
            .progress_chars("=> "),
    );
    bar.set_message(format!("squashfs {}", a.output.display()));
    let b2 = bar.clone();
    let opts = squashfs::Options {
        compression,
        block_size,
        mtime,
        all_root: a.all_root,
        level: a.level,
        threads: a.threads,
        progress: Some(Arc::new(move |n| b2.inc(n))),
    };
    let t0 = std::time::Instant::now();
    let stats = squashfs::build_to_file(&a.dir, &a.output, &opts)
        .with_context(|| format!("building {}", a.output.display()))?;
    bar.finish_and_clear();
    let elapsed = t0.elapsed();
    if a.json {
        let v = serde_json::json!({
            "output": a.output,
            "source": a.dir,
            "compression": compression.name(),
            "block_size": block_size,
            "mtime": mtime,
            "all_root": a.all_root,
            "inode_count": stats.inode_count,
            "bytes_used": stats.bytes_used,
            "image_size": stats.image_size,
            "files": stats.files,
            "dirs": stats.dirs,
            "symlinks": stats.symlinks,
            "special": stats.special,
            "file_bytes": stats.file_bytes,
            "seconds": elapsed.as_secs_f64(),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "{}: squashfs 4.0, {compression}, block size {block_size}: {} inodes ({} files, \
             {} dirs, {} symlinks, {} special), {} bytes used of {} file bytes ({:.1}%)",
            a.output.display(),
            stats.inode_count,
            stats.files,
            stats.dirs,
            stats.symlinks,
            stats.special,
            stats.bytes_used,
            stats.file_bytes,
            100.0 * stats.bytes_used as f64 / stats.file_bytes.max(1) as f64
        );
    }
    tracing::debug!(
        ?elapsed,
        parallel = stats.parallel_blocks,
        inline = stats.inline_blocks,
        "squashfs blocks"
    );
    Ok(())
}
