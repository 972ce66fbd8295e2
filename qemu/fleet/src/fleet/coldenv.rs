//! A cold clone's serial number, in its own disk before it boots: the base image's U-Boot env
//! (found as `imgtool env` finds it: the env locator in sector 0, else the Nerves place, one
//! 128 KiB copy at 0x2000) with `nerves_serial_number` set, written into the clone's qcow2
//! overlay. The guest then reads it as it would on hardware (fw_printenv, Nerves.Runtime,
//! boardid), with no help from inside.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use layout::inspect::{env_location, EnvLocation};
use uboot_env::{FlagRule, Stored, WriteOptions};

use crate::{Error, Result};

/// The variable Nerves keeps the serial number in.
pub const SERIAL_VAR: &str = "nerves_serial_number";

/// The base image's env, read once; each clone gets its own block from it.
#[derive(Debug)]
pub(crate) struct ColdEnv {
    stored: Stored,
    at: EnvLocation,
}

impl ColdEnv {
    /// Read and check the env of the raw `image`. No valid env is the user's to fix (exit 2).
    pub(crate) fn read(image: &Path) -> Result<ColdEnv> {
        let at = env_location(image)
            .map_err(|e| Error::Usage(format!("--cold {}: {e}", image.display())))?;
        let f = File::open(image).map_err(|e| Error::io(image.display(), e))?;
        let len = f
            .metadata()
            .map_err(|e| Error::io(image.display(), e))?
            .len();
        let copy = |offset: u64| -> Result<Vec<u8>> {
            let end = offset + at.size;
            if end > len {
                return Err(Error::Usage(format!(
                    "--cold {}: the image is {len} bytes but its U-Boot env ends at byte {end} \
                     ({}); give the whole disk image",
                    image.display(),
                    describe(&at)
                )));
            }
            let mut b = vec![0u8; at.size as usize];
            f.read_exact_at(&mut b, offset)
                .map_err(|e| Error::io(format!("reading the env of {}", image.display()), e))?;
            Ok(b)
        };
        let first = copy(at.offset)?;
        let second = at.redundant_offset.map(copy).transpose()?;
        let stored = Stored::parse(&first, second.as_deref(), FlagRule::UBoot).map_err(|e| {
            Error::Usage(format!(
                "--cold {}: no valid U-Boot env ({}): {e}. A cold fleet gives each clone its \
                 serial number in that env: write the firmware first (`imgtool fwup -a -i \
                 app.fw -d {} -t complete`)",
                image.display(),
                describe(&at),
                image.display()
            ))
        })?;
        Ok(ColdEnv { stored, at })
    }

    /// The block that gives a disk this serial, and where it goes: the single copy rewritten,
    /// or a pair's inactive copy with the next flag (as fw_setenv writes), every other variable
    /// kept.
    pub(crate) fn block_for(&self, serial: &str) -> Result<(u64, Vec<u8>)> {
        let mut s = self.stored.clone();
        let fail = |e: uboot_env::Error| {
            Error::Usage(format!(
                "{SERIAL_VAR}={serial} in the U-Boot env ({}): {e}",
                describe(&self.at)
            ))
        };
        s.env_mut().set(SERIAL_VAR, serial).map_err(fail)?;
        // fwup's layout, as the Nerves tools that wrote the env lay it out.
        let w = s
            .encode(self.at.size as usize, WriteOptions::FWUP)
            .map_err(fail)?;
        let offset = match w.copy.index() {
            0 => self.at.offset,
            _ => self.at.redundant_offset.expect("a pair has a second copy"),
        };
        Ok((offset, w.block))
    }

    /// Give the qcow2 `overlay` this serial. The block goes through a file in `scratch`
    /// (qemu-io reads its data from a file), removed afterwards.
    pub(crate) fn write(&self, overlay: &Path, serial: &str, scratch: &Path) -> Result<()> {
        let (offset, block) = self.block_for(serial)?;
        let name = overlay
            .file_stem()
            .map_or("clone".into(), |s| s.to_string_lossy().into_owned());
        let file: PathBuf = scratch.join(format!("{name}.env"));
        std::fs::write(&file, &block).map_err(|e| Error::io(file.display(), e))?;
        let r = qemu::template::qemu_io_write(overlay, "qcow2", &file, offset, block.len());
        let _ = std::fs::remove_file(&file);
        Ok(r?)
    }
}

fn describe(at: &EnvLocation) -> String {
    match at.redundant_offset {
        None => format!("one copy of 0x{:x} bytes at 0x{:x}", at.size, at.offset),
        Some(r) => format!(
            "two copies of 0x{:x} bytes at 0x{:x} and 0x{r:x}",
            at.size, at.offset
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uboot_env::locator::Locator;
    use uboot_env::Env;

    const MIB: usize = 1 << 20;

    fn env() -> Env {
        Env::from_pairs([
            ("nerves_fw_active", "a"),
            ("a.nerves_fw_platform", "qemu_aarch64"),
            (SERIAL_VAR, ""),
        ])
        .unwrap()
    }

    fn parse(block: &[u8], flag: bool) -> Env {
        let layout = if flag {
            uboot_env::Layout::Redundant
        } else {
            uboot_env::Layout::Single
        };
        Env::parse(block, layout).unwrap()
    }

    #[test]
    fn the_nerves_place_gets_the_serial_and_keeps_every_other_variable() {
        let d = tempfile::tempdir().unwrap();
        let img = d.path().join("special.img");
        let mut disk = vec![0u8; MIB];
        let block = env().to_block(0x20000, None, WriteOptions::FWUP).unwrap();
        disk[0x2000..0x22000].copy_from_slice(&block);
        std::fs::write(&img, &disk).unwrap();
        let e = ColdEnv::read(&img).unwrap();
        let (offset, b) = e.block_for("sim-0007").unwrap();
        assert_eq!((offset, b.len()), (0x2000, 0x20000));
        let got = parse(&b, false);
        assert_eq!(got.get(SERIAL_VAR), Some("sim-0007"));
        assert_eq!(got.get("nerves_fw_active"), Some("a"));
        assert_eq!(got.get("a.nerves_fw_platform"), Some("qemu_aarch64"));
        // Each clone starts from the base image's env, not from the previous clone's.
        let (_, b2) = e.block_for("sim-0008").unwrap();
        assert_eq!(parse(&b2, false).get(SERIAL_VAR), Some("sim-0008"));
        assert_eq!(got.len(), parse(&b2, false).len());
    }

    #[test]
    fn a_redundant_env_from_the_locator_gets_its_inactive_copy_with_the_next_flag() {
        let d = tempfile::tempdir().unwrap();
        let img = d.path().join("r.img");
        let (a, b, size) = (0x10000usize, 0x20000usize, 0x4000usize);
        let mut disk = vec![0u8; MIB];
        let loc = Locator {
            offset: a as u64,
            size: size as u32,
            redundant_offset: Some(b as u64),
        };
        disk[..uboot_env::locator::LEN].copy_from_slice(&loc.encode());
        let old = env().to_block(size, Some(4), WriteOptions::FWUP).unwrap();
        let mut active = env();
        active.set("bootcount", "1").unwrap();
        let active = active.to_block(size, Some(5), WriteOptions::FWUP).unwrap();
        disk[a..a + size].copy_from_slice(&old);
        disk[b..b + size].copy_from_slice(&active);
        std::fs::write(&img, &disk).unwrap();
        let (offset, block) = ColdEnv::read(&img).unwrap().block_for("r-0001").unwrap();
        assert_eq!(offset, a as u64, "the older copy is the one rewritten");
        assert_eq!(block[4], 6, "flag of the active copy + 1");
        let got = parse(&block, true);
        assert_eq!(got.get(SERIAL_VAR), Some("r-0001"));
        assert_eq!(got.get("bootcount"), Some("1"), "from the active copy");
    }

    #[test]
    fn an_image_without_an_env_is_refused_with_the_fix() {
        let d = tempfile::tempdir().unwrap();
        let img = d.path().join("blank.img");
        std::fs::write(&img, vec![0u8; MIB]).unwrap();
        let e = ColdEnv::read(&img).unwrap_err();
        let msg = e.to_string();
        assert!(e.is_usage(), "{msg}");
        assert!(msg.contains("no valid U-Boot env"), "{msg}");
        assert!(msg.contains("one copy of 0x20000 bytes at 0x2000"), "{msg}");
        assert!(msg.contains("imgtool fwup -a -i app.fw"), "{msg}");
        // Too short to hold the env at all.
        std::fs::write(&img, vec![0u8; 4096]).unwrap();
        let msg = ColdEnv::read(&img).unwrap_err().to_string();
        assert!(msg.contains("ends at byte 139264"), "{msg}");
    }
}
