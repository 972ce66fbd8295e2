//! The U-Boot env on a guest's own disk, as the init updates it when a clone takes its identity:
//! Nerves programs read `nerves_serial_number` from there (Nerves.Runtime's KV, through
//! /etc/fw_env.config as fw_printenv does).
//!
//! Where: `/etc/fw_env.config` when the rootfs has one; else the disk under the root partition
//! (`root=/dev/NAME` on the kernel command line), at the place its env locator record in
//! sector 0 names (`uboot_env::locator`, written by imgtool's layout writer), else the default
//! place (one 128 KiB copy at LBA 16): the same rule the loader boots by.
//!
//! Like `initconf.rs`, this file is compiled into the `rootfs` library (for its tests) and into
//! the init (`#[path]` include), so it uses only `std` and `uboot-env`.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use uboot_env::config::Config;
use uboot_env::locator::{self, Locator};
use uboot_env::{FlagRule, Stored, WriteOptions};

/// Envs are a few KiB to 1 MiB; a bigger size is a wrong config, not a buffer to allocate.
const MAX_SIZE: usize = 16 << 20;

/// Where a guest's files live; [`GuestPaths::SYSTEM`] in the guest, a scratch tree in tests.
#[derive(Clone, Debug)]
pub struct GuestPaths {
    pub fw_env_config: PathBuf,
    pub cmdline: PathBuf,
    /// `/sys/class/block`: one link per disk and partition.
    pub sys_class_block: PathBuf,
    /// `/dev`: where `NAME` of a disk is opened.
    pub dev: PathBuf,
}

impl GuestPaths {
    pub fn system() -> GuestPaths {
        GuestPaths {
            fw_env_config: "/etc/fw_env.config".into(),
            cmdline: "/proc/cmdline".into(),
            sys_class_block: "/sys/class/block".into(),
            dev: "/dev".into(),
        }
    }
}

/// Where an env is: one copy (single layout) or two (redundant), each a device and a byte
/// offset, all of `size` bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnvPlace {
    pub copies: Vec<(PathBuf, u64)>,
    pub size: usize,
    /// How it was found, for messages.
    pub origin: String,
}

impl EnvPlace {
    fn from_locator(disk: &Path, l: Locator, origin: String) -> EnvPlace {
        let mut copies = vec![(disk.to_path_buf(), l.offset)];
        copies.extend(l.redundant_offset.map(|r| (disk.to_path_buf(), r)));
        EnvPlace {
            copies,
            size: l.size as usize,
            origin,
        }
    }

    /// `/dev/vda at 0x2000 (+ 0x4000), 0x20000 bytes, from ...`.
    pub fn describe(&self) -> String {
        let at: Vec<String> = self
            .copies
            .iter()
            .map(|(d, o)| format!("{} at 0x{o:x}", d.display()))
            .collect();
        format!(
            "{}, 0x{:x} bytes, from {}",
            at.join(" and "),
            self.size,
            self.origin
        )
    }
}

/// Find the env: fw_env.config if the rootfs has one, else the root disk's locator record or
/// the default place.
pub fn locate(p: &GuestPaths) -> Result<EnvPlace, String> {
    match std::fs::read_to_string(&p.fw_env_config) {
        Ok(text) => {
            let cfg =
                Config::parse(&text).map_err(|e| format!("{}: {e}", p.fw_env_config.display()))?;
            let mut copies = vec![(PathBuf::from(&cfg.primary.device), cfg.primary.offset)];
            copies.extend(cfg.redundant.map(|r| (PathBuf::from(r.device), r.offset)));
            let size = usize::try_from(cfg.primary.size).map_err(|_| {
                format!(
                    "{}: size 0x{:x} is too big",
                    p.fw_env_config.display(),
                    cfg.primary.size
                )
            })?;
            return Ok(EnvPlace {
                copies,
                size,
                origin: p.fw_env_config.display().to_string(),
            });
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("{}: {e}", p.fw_env_config.display())),
    }
    let cmdline =
        std::fs::read_to_string(&p.cmdline).map_err(|e| format!("{}: {e}", p.cmdline.display()))?;
    let disk = root_disk(&cmdline, p)?;
    let mut sector = [0u8; 512];
    File::open(&disk)
        .and_then(|f| f.read_exact_at(&mut sector, 0))
        .map_err(|e| format!("reading sector 0 of {}: {e}", disk.display()))?;
    match Locator::decode(&sector) {
        Ok(Some(l)) => Ok(EnvPlace::from_locator(
            &disk,
            l,
            format!("the env locator in sector 0 of {}", disk.display()),
        )),
        Ok(None) => Ok(EnvPlace::from_locator(
            &disk,
            locator::DEFAULT,
            "the default place (no /etc/fw_env.config, no env locator)".into(),
        )),
        Err(e) => Err(format!("{}: {e}", disk.display())),
    }
}

/// The whole disk holding the root partition: `root=/dev/NAME` on the kernel command line, and
/// NAME's parent in sysfs when NAME is a partition (vda1 → vda, mmcblk0p2 → mmcblk0).
pub fn root_disk(cmdline: &str, p: &GuestPaths) -> Result<PathBuf, String> {
    let root = cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix("root="))
        .ok_or("the kernel command line has no root=; add /etc/fw_env.config to the rootfs")?;
    let name = root
        .strip_prefix("/dev/")
        .filter(|n| !n.is_empty() && !n.contains('/'))
        .ok_or_else(|| {
            format!("root={root} is not /dev/NAME; add /etc/fw_env.config to the rootfs")
        })?;
    let node = p.sys_class_block.join(name);
    let disk = if node.join("partition").exists() {
        let real = std::fs::canonicalize(&node)
            .map_err(|e| format!("resolving {}: {e}", node.display()))?;
        real.parent()
            .and_then(Path::file_name)
            .ok_or_else(|| format!("{} has no parent disk", real.display()))?
            .to_string_lossy()
            .into_owned()
    } else {
        name.to_string()
    };
    Ok(p.dev.join(disk))
}

/// Set `vars` in the env at `place`, keeping every other variable, and fsync: a single copy is
/// rewritten in place, a redundant pair gets its inactive copy with a higher flag.
pub fn set_vars(place: &EnvPlace, vars: &[(&str, &str)]) -> Result<(), String> {
    if place.size > MAX_SIZE {
        return Err(format!(
            "U-Boot env ({}) is bigger than {} MiB: not an env size",
            place.describe(),
            MAX_SIZE >> 20
        ));
    }
    let read = |i: usize| -> Result<Vec<u8>, String> {
        let (dev, off) = &place.copies[i];
        let mut b = vec![0u8; place.size];
        File::open(dev)
            .and_then(|f| f.read_exact_at(&mut b, *off))
            .map_err(|e| format!("reading {} at 0x{off:x}: {e}", dev.display()))?;
        Ok(b)
    };
    let first = read(0)?;
    let second = match place.copies.len() {
        1 => None,
        _ => Some(read(1)?),
    };
    let mut stored = Stored::parse(&first, second.as_deref(), FlagRule::UBoot)
        .map_err(|e| format!("no valid U-Boot env ({}): {e}", place.describe()))?;
    for (n, v) in vars {
        stored
            .env_mut()
            .set(n, v)
            .map_err(|e| format!("setting {n}: {e}"))?;
    }
    let w = stored
        .encode(place.size, WriteOptions::FWUP)
        .map_err(|e| format!("U-Boot env ({}): {e}", place.describe()))?;
    let (dev, off) = &place.copies[w.copy.index()];
    OpenOptions::new()
        .write(true)
        .open(dev)
        .and_then(|f| {
            f.write_all_at(&w.block, *off)?;
            f.sync_all()
        })
        .map_err(|e| format!("writing {} at 0x{off:x}: {e}", dev.display()))?;
    stored.commit(&w);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use uboot_env::Env;

    /// A scratch folder removed on drop. Not `tempfile`: this file is also compiled into the
    /// init, whose only dependencies are path crates.
    struct TempDir(std::path::PathBuf);

    impl TempDir {
        fn new() -> TempDir {
            use std::sync::atomic::{AtomicUsize, Ordering};
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let p = std::env::temp_dir().join(format!("guestenv-test-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    struct Guest {
        _tmp: TempDir,
        paths: GuestPaths,
    }

    /// A guest tree: a 2 MiB disk `vda` with partition `vda1`, `root=/dev/vda1`.
    fn guest() -> Guest {
        let tmp = TempDir::new();
        let r = tmp.0.as_path();
        let devices = r.join("sys/devices/virtio0/block/vda");
        std::fs::create_dir_all(devices.join("vda1")).unwrap();
        std::fs::write(devices.join("vda1/partition"), "1\n").unwrap();
        let class = r.join("sys/class/block");
        std::fs::create_dir_all(&class).unwrap();
        std::os::unix::fs::symlink(&devices, class.join("vda")).unwrap();
        std::os::unix::fs::symlink(devices.join("vda1"), class.join("vda1")).unwrap();
        std::fs::create_dir_all(r.join("dev")).unwrap();
        std::fs::write(r.join("dev/vda"), vec![0u8; 2 << 20]).unwrap();
        std::fs::write(r.join("cmdline"), "console=ttyAMA0 root=/dev/vda1 ro\n").unwrap();
        let paths = GuestPaths {
            fw_env_config: r.join("etc/fw_env.config"),
            cmdline: r.join("cmdline"),
            sys_class_block: class,
            dev: r.join("dev"),
        };
        Guest { _tmp: tmp, paths }
    }

    fn put(disk: &Path, off: u64, bytes: &[u8]) {
        let f = OpenOptions::new().write(true).open(disk).unwrap();
        f.write_all_at(bytes, off).unwrap();
    }

    fn env_block(serial: &str, size: usize, flag: Option<u8>) -> Vec<u8> {
        Env::from_pairs([
            ("a.kernel_args", "root=/dev/vda1"),
            ("nerves_serial_number", serial),
        ])
        .unwrap()
        .to_block(size, flag, WriteOptions::FWUP)
        .unwrap()
    }

    fn read_back(place: &EnvPlace) -> Stored {
        let r = |i: usize| {
            let (d, o) = &place.copies[i];
            let mut b = vec![0u8; place.size];
            File::open(d).unwrap().read_exact_at(&mut b, *o).unwrap();
            b
        };
        let second = (place.copies.len() == 2).then(|| r(1));
        Stored::parse(&r(0), second.as_deref(), FlagRule::UBoot).unwrap()
    }

    #[test]
    fn default_place_on_the_root_partitions_disk() {
        let g = guest();
        let disk = g.paths.dev.join("vda");
        assert_eq!(root_disk("root=/dev/vda1", &g.paths).unwrap(), disk);
        assert_eq!(root_disk("root=/dev/vda", &g.paths).unwrap(), disk);
        put(&disk, 0x2000, &env_block("template", 0x20000, None));
        let place = locate(&g.paths).unwrap();
        assert_eq!(place.copies, vec![(disk.clone(), 0x2000)]);
        assert_eq!(place.size, 0x20000);
        set_vars(&place, &[("nerves_serial_number", "sim-0017")]).unwrap();
        let s = read_back(&place);
        assert_eq!(s.env().get("nerves_serial_number"), Some("sim-0017"));
        assert_eq!(s.env().get("a.kernel_args"), Some("root=/dev/vda1"));
    }

    #[test]
    fn a_locator_record_names_a_redundant_env() {
        let g = guest();
        let disk = g.paths.dev.join("vda");
        let l = Locator {
            offset: 0x10000,
            size: 0x2000,
            redundant_offset: Some(0x12000),
        };
        put(&disk, 0, &l.encode());
        put(&disk, 0x10000, &env_block("old", 0x2000, Some(3)));
        put(&disk, 0x12000, &env_block("template", 0x2000, Some(4)));
        let place = locate(&g.paths).unwrap();
        assert_eq!(place.copies, vec![(disk.clone(), 0x10000), (disk, 0x12000)]);
        assert!(place.origin.contains("locator"), "{}", place.origin);
        set_vars(&place, &[("nerves_serial_number", "sim-0001")]).unwrap();
        // The older copy (flag 3) took the write with flag 5; the other is intact.
        let Stored::Redundant(r) = read_back(&place) else {
            panic!("not redundant")
        };
        assert_eq!((r.active, r.flag), (uboot_env::Copy::First, 5));
        assert_eq!(r.env.get("nerves_serial_number"), Some("sim-0001"));
        assert_eq!(r.copies[1].flag, 4);
    }

    #[test]
    fn fw_env_config_wins() {
        let g = guest();
        let other = g.paths.dev.join("other");
        std::fs::write(&other, vec![0u8; 1 << 20]).unwrap();
        put(&other, 0x4000, &env_block("x", 0x1000, None));
        std::fs::create_dir_all(g.paths.fw_env_config.parent().unwrap()).unwrap();
        std::fs::write(
            &g.paths.fw_env_config,
            format!("# dev offset size\n{} 0x4000 0x1000\n", other.display()),
        )
        .unwrap();
        let place = locate(&g.paths).unwrap();
        assert_eq!(place.copies, vec![(other, 0x4000)]);
        set_vars(&place, &[("nerves_serial_number", "y")]).unwrap();
        assert_eq!(
            read_back(&place).env().get("nerves_serial_number"),
            Some("y")
        );
        std::fs::write(&g.paths.fw_env_config, "/dev/vda 0x0 0xffffffff\n").unwrap();
        let e = set_vars(&locate(&g.paths).unwrap(), &[("a", "b")]).unwrap_err();
        assert!(e.contains("bigger than 16 MiB"), "{e}");
        std::fs::write(&g.paths.fw_env_config, "/dev/vda zz 0x1000\n").unwrap();
        let e = locate(&g.paths).unwrap_err();
        assert!(
            e.contains("fw_env.config: line 1") && e.contains("offset"),
            "{e}"
        );
    }

    #[test]
    fn errors_say_what_is_missing() {
        let g = guest();
        // No env at the default place: named, with the CRC failure.
        let place = locate(&g.paths).unwrap();
        let e = set_vars(&place, &[("nerves_serial_number", "s")]).unwrap_err();
        assert!(
            e.contains("no valid U-Boot env") && e.contains("0x2000") && e.contains("CRC"),
            "{e}"
        );
        for (cmdline, want) in [
            ("console=ttyAMA0", "no root="),
            ("root=PARTUUID=1234-01", "not /dev/NAME"),
        ] {
            let e = root_disk(cmdline, &g.paths).unwrap_err();
            assert!(e.contains(want) && e.contains("fw_env.config"), "{e}");
        }
        // A damaged locator record stops the write rather than guessing.
        let disk = g.paths.dev.join("vda");
        let mut rec = Locator {
            offset: 0x10000,
            size: 0x2000,
            redundant_offset: None,
        }
        .encode();
        rec[10] ^= 1;
        put(&disk, 0, &rec);
        assert!(locate(&g.paths).unwrap_err().contains("bad CRC32"));
    }
}
