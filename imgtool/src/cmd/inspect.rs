//! `imgtool inspect IMAGE`: partition table, U-Boot env, kernel slots and filesystems.

use std::path::PathBuf;

use layout::inspect::{inspect, EnvLocation};
use layout::probe::{Filesystem, Kernel};

#[derive(clap::Args)]
pub struct Args {
    /// The disk image.
    pub image: PathBuf,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Byte offset of the U-Boot env (hex with 0x). Default: where the image's env locator
    /// (written by `imgtool build`) says, else the Nerves layout's 0x2000.
    #[arg(long, value_parser = parse_num)]
    pub env_offset: Option<u64>,
    /// Size of the U-Boot env in bytes. Default: as for the offset, else 0x20000.
    #[arg(long, value_parser = parse_num)]
    pub env_size: Option<u64>,
    /// Byte offset of the redundant env copy, if the image has one.
    #[arg(long, value_parser = parse_num)]
    pub env_redund_offset: Option<u64>,
}

pub fn parse_num(s: &str) -> Result<u64, String> {
    let r = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16),
        None => s.parse(),
    };
    r.map_err(|_| format!("`{s}` is not a number (decimal, or hex with 0x)"))
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let at = match (a.env_offset, a.env_size, a.env_redund_offset) {
        (None, None, None) => layout::inspect::env_location(&a.image)?,
        (o, s, r) => {
            let d = EnvLocation::default();
            EnvLocation {
                offset: o.unwrap_or(d.offset),
                size: s.unwrap_or(d.size),
                redundant_offset: r,
            }
        }
    };
    let r = inspect(&a.image, at)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    println!(
        "{}: {} bytes ({} blocks)",
        a.image.display(),
        r.size,
        r.size / 512
    );
    match &r.table {
        None => println!("partition table: none"),
        Some(t) => {
            println!("partition table: {} ({})", t.kind.to_uppercase(), t.disk_id);
            for p in &t.partitions {
                println!(
                    "  p{}: LBA {} + {} blocks, type {}{}{}",
                    p.number,
                    p.first_lba,
                    p.blocks,
                    p.kind,
                    if p.boot { ", boot" } else { "" },
                    p.name
                        .as_deref()
                        .map(|n| format!(", name \"{n}\""))
                        .unwrap_or_default()
                );
            }
        }
    }
    match &r.uboot_env {
        None => println!("U-Boot env: none at 0x{:x}", at.offset),
        Some(e) if !e.crc_valid => {
            println!("U-Boot env at 0x{:x}: BAD CRC (not trusted)", e.offset)
        }
        Some(e) => {
            let copy = e
                .active_copy
                .map(|c| format!(", active copy {c} (flag {})", e.flag.unwrap_or(0)))
                .unwrap_or_default();
            println!(
                "U-Boot env at 0x{:x} ({} bytes): CRC ok{copy}, {} variables",
                e.offset,
                e.size,
                e.vars.len()
            );
            for (k, v) in &e.vars {
                println!("  {k}={v}");
            }
        }
    }
    for s in &r.kernel_slots {
        let what = match &s.contents {
            Kernel::Arm64Image {
                image_size,
                text_offset,
            } => {
                format!("arm64 Image, image_size 0x{image_size:x}, text_offset 0x{text_offset:x}")
            }
            Kernel::X86Bzimage { protocol } => format!("x86 bzImage, boot protocol {protocol}"),
            Kernel::Empty => "empty".into(),
            Kernel::Unrecognised => "unrecognised contents".into(),
        };
        println!("kernel slot {} at LBA {}: {what}", s.slot, s.lba);
    }
    for p in &r.partitions {
        let what = match &p.filesystem {
            Filesystem::Squashfs { compression, inodes, bytes_used, block_size } => format!(
                "squashfs, {compression}, {inodes} inodes, {bytes_used} bytes used, block size {block_size}"
            ),
            Filesystem::Fat { fat_type, label } => {
                format!("{fat_type}, label {}", label.as_deref().unwrap_or("(none)"))
            }
            Filesystem::F2fs { label, block_size, blocks, segments, uuid } => format!(
                "f2fs, label \"{label}\", {blocks} blocks of {block_size}, {segments} segments, uuid {uuid}"
            ),
            Filesystem::Empty => "empty".into(),
            Filesystem::Unrecognised => "unrecognised contents".into(),
        };
        println!("p{}: {what}", p.number);
    }
    Ok(())
}
