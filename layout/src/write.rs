//! Writes a [`Plan`] to an image file: once, in offset order, streaming every source in 1 MiB
//! pieces, never writing zeros (the image stays sparse), always at 512-byte boundaries.
//! The image is built under a temporary name in the output's directory and renamed into place
//! only when everything succeeded, so a failure never leaves a half-written image behind.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::fills;
use crate::plan::{Content, Plan};
use crate::window::Window;

const CHUNK: usize = 1 << 20;
/// Zero runs of this granularity are skipped instead of written.
const HOLE: usize = 4096;

#[derive(Debug, Default, Clone, Copy)]
pub struct WriteStats {
    /// Bytes of data actually written (zero runs are left as holes).
    pub written: u64,
    pub image_size: u64,
}

/// Write `plan` to `out`. `progress(done, total)` is called as work completes.
pub fn write_image(
    plan: &Plan,
    out: &Path,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<WriteStats> {
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io { path, source }
    };
    if let Ok(md) = std::fs::metadata(out) {
        if !md.is_file() {
            return Err(Error::Io {
                path: out.to_path_buf(),
                source: std::io::Error::other("not a regular file: imgtool writes image files; copy the image to a device with dd or fwup"),
            });
        }
    }
    let tmp = tempfile::Builder::new()
        .prefix(".imgtool-")
        .suffix(".img.tmp")
        // An image is an ordinary file: 0666 less the umask (tempfile's default is 0600).
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666))
        .tempfile_in(&dir)
        .map_err(io_err(&dir))?;
    let file = tmp.as_file();
    file.set_len(plan.size).map_err(io_err(out))?;

    let total: u64 = plan.regions.iter().map(|r| r.content.work(r.size)).sum();
    let mut stats = WriteStats {
        written: 0,
        image_size: plan.size,
    };
    let mut done = 0u64;
    progress(0, total);
    for r in &plan.regions {
        let fill_err = |msg: String| Error::Fill {
            region: r.name.clone(),
            msg,
        };
        match &r.content {
            Content::Empty | Content::Pattern(0) => {}
            Content::File { path, len, .. } => {
                let mut src = File::open(path).map_err(io_err(path))?;
                stats.written += copy_sparse(&mut src, *len, file, r.offset, &mut |n| {
                    done += n;
                    progress(done, total)
                })
                .map_err(|e| fill_err(format!("copying `{}`: {e}", path.display())))?;
            }
            Content::Pattern(b) => {
                let buf = vec![*b; CHUNK];
                let mut pos = 0;
                while pos < r.size {
                    let n = (r.size - pos).min(CHUNK as u64) as usize;
                    file.write_all_at(&buf[..n], r.offset + pos)
                        .map_err(io_err(out))?;
                    pos += n as u64;
                    done += n as u64;
                    progress(done, total);
                }
                stats.written += r.size;
            }
            Content::Bytes { data, .. } => {
                file.write_all_at(&pad512(data), r.offset)
                    .map_err(io_err(out))?;
                stats.written += data.len() as u64;
                done += data.len() as u64;
                progress(done, total);
            }
            Content::Fat { label, files } => {
                let mut w = Window::new(file, r.offset, r.size);
                fills::format_fat(&mut w, label.as_deref(), files).map_err(fill_err)?;
                done += r.content.work(r.size);
                progress(done, total);
            }
            Content::F2fs { label, uuid, mtime } => {
                fills::format_f2fs(file, r.offset, r.size, label.as_deref(), *uuid, *mtime)
                    .map_err(fill_err)?;
                done += r.content.work(r.size);
                progress(done, total);
            }
        }
    }
    if let Some(t) = &plan.table {
        fills::write_table(file, plan.size, t).map_err(|msg| Error::Fill {
            region: "partition table".into(),
            msg,
        })?;
    }
    if let Some(e) = &plan.env {
        // Resolve checked the record and that sector 0's boot-code area is free.
        let loc = e.locator().map_err(|msg| Error::Fill {
            region: e.region.clone(),
            msg,
        })?;
        if !loc.is_default() {
            use uboot_env::locator;
            file.write_all_at(&loc.encode(), locator::OFFSET as u64)
                .map_err(io_err(out))?;
        }
    }
    file.sync_all().map_err(io_err(out))?;
    tmp.persist(out).map_err(|e| Error::Io {
        path: out.to_path_buf(),
        source: e.error,
    })?;
    Ok(stats)
}

/// Copy `len` bytes from `src` to `dst` at `offset`, skipping 4 KiB runs of zeros. The last
/// piece is padded with zeros to a whole 512-byte block. Returns the bytes written.
fn copy_sparse(
    src: &mut File,
    len: u64,
    dst: &File,
    offset: u64,
    tick: &mut dyn FnMut(u64),
) -> std::io::Result<u64> {
    let mut buf = vec![0u8; CHUNK];
    let mut pos = 0u64;
    let mut written = 0u64;
    while pos < len {
        let want = (len - pos).min(CHUNK as u64) as usize;
        src.read_exact(&mut buf[..want])?;
        let padded = want.div_ceil(512) * 512;
        buf[want..padded].fill(0);
        // Write maximal runs of non-zero 4 KiB pieces.
        let mut i = 0;
        while i < padded {
            let piece = |i: usize| &buf[i..(i + HOLE).min(padded)];
            if piece(i).iter().all(|&b| b == 0) {
                i += HOLE;
                continue;
            }
            let start = i;
            while i < padded && !piece(i).iter().all(|&b| b == 0) {
                i += HOLE;
            }
            let end = i.min(padded);
            dst.write_all_at(&buf[start..end], offset + pos + start as u64)?;
            written += (end - start) as u64;
        }
        pos += want as u64;
        tick(want as u64);
    }
    Ok(written)
}

fn pad512(data: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    if data.len().is_multiple_of(512) {
        data.into()
    } else {
        let mut v = data.to_vec();
        v.resize(data.len().div_ceil(512) * 512, 0);
        v.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Context;

    use crate::fwup_conf::tests::plan_yaml as plan_of;

    fn sector0(img: &Path) -> Vec<u8> {
        std::fs::read(img).unwrap()[..512].to_vec()
    }

    #[test]
    fn a_moved_env_is_recorded_in_sector_0_and_the_default_one_is_not() {
        use uboot_env::locator::Locator;
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("x.img");
        let yaml = crate::fwup_conf::tests::layout_with_env_at(4096, Some(4112));
        let p = plan_of(dir.path(), &yaml).unwrap();
        write_image(&p, &img, &mut |_, _| {}).unwrap();
        let s = sector0(&img);
        assert_eq!(
            Locator::decode(&s),
            Ok(Some(Locator {
                offset: 4096 * 512,
                size: 16 * 512,
                redundant_offset: Some(4112 * 512),
            }))
        );
        assert_eq!(&s[510..], &[0x55, 0xaa], "the MBR is intact");

        // Nerves' place (LBA 16, 128 KiB, one copy): no record, sector 0 is the bare MBR.
        let p = plan_from("nerves-qemu-aarch64", dir.path());
        write_image(&p, &img, &mut |_, _| {}).unwrap();
        let s = sector0(&img);
        assert_eq!(Locator::decode(&s), Ok(None));
        assert!(s[..440].iter().all(|&b| b == 0));
    }

    #[test]
    fn a_moved_env_needs_sector_0_free() {
        let dir = tempfile::tempdir().unwrap();
        let yaml = "regions:\n  - name: boot\n    offset: 0\n    size: 8 blocks\n    fill: { pattern: 1 }\n  - name: env\n    offset: 64 blocks\n    size: 16 blocks\n    fill: { uboot-env: { vars: { x: 1 } } }\n";
        let e = plan_of(dir.path(), yaml).unwrap_err().to_string();
        assert!(
            e.contains("record in sector 0") && e.contains("region `boot` covers sector 0"),
            "{e}"
        );
    }

    fn plan_from(name: &str, _dir: &Path) -> Plan {
        crate::plan_from(name, Context::new(Default::default())).unwrap()
    }
}
