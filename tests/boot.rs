//! End-to-end: the images imgtool writes boot under qemu through imgtool's loader.
//!
//! Builds (or takes from the cache) the small kernel, a tiny static `/sbin/init` that prints the
//! root filesystem's `/marker` and powers off, writes the built-in Nerves layout with
//! `imgtool build`, and boots it with `imgtool boot`. Checks the A/B failback against the env
//! as the real `fw_printenv` reads it, and that a broken env, a missing kernel and an LBA past
//! the disk each stop the loader with its error line (qemu is then stopped by the timeout).

mod common;
#[path = "../loader/test-init/guest.rs"]
mod guest;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{imgtool, require_tool, run_ok};
use guest::{boot_refused, env_set, kernel, rootfs};

/// `imgtool build nerves-qemu-aarch64` with the given -D definitions.
fn build_image(dir: &Path, name: &str, defs: &[(&str, String)]) -> PathBuf {
    guest::build_image(dir, name, "", defs)
}

fn boot_ok(img: &Path, until: &str) -> String {
    guest::boot_ok(img, until, &[])
}

fn fw_printenv(img: &Path, dir: &Path) -> String {
    let tool = require_tool("fw_printenv");
    let cfg = dir.join("fw_env.config");
    fs::write(&cfg, format!("{} 0x2000 0x20000\n", img.display())).unwrap();
    run_ok(Command::new(tool).arg("-c").arg(&cfg))
}

fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("imgtool-boot-")
        .tempdir()
        .unwrap()
}

#[test]
fn nerves_image_boots_slot_a_through_the_loader() {
    let dir = tempdir();
    let img = build_image(
        dir.path(),
        "a.img",
        &[
            ("kernel", kernel().display().to_string()),
            (
                "rootfs",
                rootfs(dir.path(), "ROOTFS-A").display().to_string(),
            ),
        ],
    );
    let console = boot_ok(&img, "init: marker: ROOTFS-[AB]");
    let pos = |s: &str| {
        console
            .find(s)
            .unwrap_or_else(|| panic!("{s:?} missing from console:\n{console}"))
    };
    // In order: the loader's banner, its hand-over, Linux, the root filesystem's init.
    let banner = pos("imgtool-loader 0.1.0 (EL");
    let start = pos("Starting Linux (slot a)");
    let linux = pos("Booting Linux on physical CPU");
    let cmdline = pos("Kernel command line: root=/dev/vda1 rootfstype=squashfs");
    let marker = pos("init: marker: ROOTFS-A");
    assert!(banner < start && start < linux && linux < cmdline && cmdline < marker);
    // A normal boot leaves the env alone.
    let env = fw_printenv(&img, dir.path());
    assert!(
        env.contains("bootcount=0\n") && env.contains("nerves_fw_active=a\n"),
        "{env}"
    );

    // Started at EL2 (virtualization on), the loader hands Linux EL2 too.
    let console = guest::boot_ok(&img, "init: marker: ROOTFS-A", &["-M", "virtualization=on"]);
    assert!(console.contains("imgtool-loader 0.1.0 (EL2)"), "{console}");
    assert!(
        console.contains("CPU: All CPU(s) started at EL2"),
        "{console}"
    );
}

#[test]
fn ab_upgrade_try_then_failback() {
    let dir = tempdir();
    let k = kernel().display().to_string();
    let img = build_image(
        dir.path(),
        "ab.img",
        &[
            ("kernel", k.clone()),
            ("kernel_b", k),
            (
                "rootfs",
                rootfs(dir.path(), "ROOTFS-A").display().to_string(),
            ),
            (
                "rootfs_b",
                rootfs(dir.path(), "ROOTFS-B").display().to_string(),
            ),
        ],
    );
    // As after an update to slot b that has not been validated yet.
    env_set(
        &img,
        &[
            ("nerves_fw_active", "b"),
            ("upgrade_available", "1"),
            ("bootcount", "0"),
        ],
    );

    let console = boot_ok(&img, "init: marker: ROOTFS-[AB]");
    assert!(console.contains("trying slot b, bootcount=1"), "{console}");
    assert!(
        console.contains("Kernel command line: root=/dev/vda2"),
        "{console}"
    );
    assert!(console.contains("init: marker: ROOTFS-B"), "{console}");
    let env = fw_printenv(&img, dir.path());
    for want in [
        "bootcount=1\n",
        "upgrade_available=1\n",
        "nerves_fw_active=b\n",
    ] {
        assert!(
            env.contains(want),
            "{want:?} missing after the first boot:\n{env}"
        );
    }

    // Slot b never validated itself: the next boot goes back to a.
    let console = boot_ok(&img, "init: marker: ROOTFS-[AB]");
    assert!(
        console.contains("slot b was tried and not validated: falling back to slot a"),
        "{console}"
    );
    assert!(console.contains("init: marker: ROOTFS-A"), "{console}");
    let env = fw_printenv(&img, dir.path());
    for want in [
        "nerves_fw_active=a\n",
        "upgrade_available=0\n",
        "bootcount=0\n",
    ] {
        assert!(
            env.contains(want),
            "{want:?} missing after failback:\n{env}"
        );
    }

    // And stays on a without touching the env again.
    let console = boot_ok(&img, "init: marker: ROOTFS-[AB]");
    assert!(console.contains("init: marker: ROOTFS-A"), "{console}");
    assert!(!console.contains("falling back"), "{console}");
    assert_eq!(fw_printenv(&img, dir.path()), env);
}

#[test]
fn loader_refuses_bad_env_missing_kernel_and_lba_past_disk() {
    let dir = tempdir();
    let rootfs_a = rootfs(dir.path(), "ROOTFS-A").display().to_string();
    let good = build_image(
        dir.path(),
        "good.img",
        &[
            ("kernel", kernel().display().to_string()),
            ("rootfs", rootfs_a.clone()),
        ],
    );

    // 1. A flipped byte in the env's data: its CRC no longer matches.
    let bad_crc = dir.path().join("bad-crc.img");
    run_ok(
        Command::new("cp")
            .arg("--sparse=always")
            .arg(&good)
            .arg(&bad_crc),
    );
    {
        use std::os::unix::fs::FileExt;
        let f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&bad_crc)
            .unwrap();
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, 0x2000 + 40).unwrap();
        f.write_all_at(&[b[0] ^ 0x20], 0x2000 + 40).unwrap();
    }

    // 2. No kernel in slot a: the Image magic is missing.
    let no_kernel = build_image(dir.path(), "no-kernel.img", &[("rootfs", rootfs_a)]);

    // 3. a.kernel_lba beyond the last block.
    let past = dir.path().join("past-end.img");
    run_ok(
        Command::new("cp")
            .arg("--sparse=always")
            .arg(&good)
            .arg(&past),
    );
    env_set(&past, &[("a.kernel_lba", "99999999")]);

    // Each refusal waits out the whole timeout, so run the three at once (a halted loader
    // sleeps in wfi and costs no CPU).
    let cases = [
        (
            &bad_crc,
            "loader: error: no valid U-Boot env at LBA 16 (131072 bytes): bad CRC32",
        ),
        (
            &no_kernel,
            "loader: error: slot a kernel at LBA 272: no arm64 Image magic",
        ),
        (
            &past,
            "loader: error: slot a kernel (a.kernel_lba=99999999): blocks 99999999..100000000 are past the end of the disk",
        ),
    ];
    std::thread::scope(|s| {
        let runs: Vec<_> = cases
            .iter()
            .map(|(img, want)| (s.spawn(|| boot_refused(img)), want))
            .collect();
        for (run, want) in runs {
            let line = run.join().expect("boot_refused panicked");
            assert!(line.starts_with(want), "{line}");
        }
    });
}

#[test]
fn qemu_cmd_and_loader_write() {
    let dir = tempdir();
    let img = dir.path().join("x.img");
    fs::write(&img, vec![0u8; 4096]).unwrap();
    let line = run_ok(
        imgtool()
            .arg("qemu-cmd")
            .arg(&img)
            .args(["-m", "96M", "--", "-smp", "2"]),
    );
    let line = line.trim();
    for want in [
        "qemu-system-aarch64 -M virt",
        "-m 96M",
        "-no-reboot",
        "-global virtio-mmio.force-legacy=false",
        "-device virtio-blk-device,drive=disk0",
        "-device virtio-rng-device",
        "-nographic",
    ] {
        assert!(line.contains(want), "{want} missing: {line}");
    }
    assert!(line.ends_with("-smp 2"), "{line}");
    // The -kernel file is the embedded loader, byte for byte what `loader write` gives.
    let argv: Vec<String> =
        serde_json::from_str(&run_ok(imgtool().arg("qemu-cmd").arg(&img).arg("--json"))).unwrap();
    let k = argv.iter().position(|a| a == "-kernel").unwrap();
    let cached = fs::read(&argv[k + 1]).unwrap();
    let written = dir.path().join("loader.elf");
    run_ok(imgtool().args(["loader", "write"]).arg(&written));
    assert_eq!(fs::read(&written).unwrap(), cached);
    assert_eq!(&cached[..4], b"\x7fELF");
    assert_eq!(cached[0x12], 0xb7, "e_machine is not AArch64");

    // A missing image is a usage error naming the file.
    let out = imgtool()
        .arg("qemu-cmd")
        .arg(dir.path().join("nope.img"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope.img"));
}

#[test]
fn kernel_fragments_land_and_a_dropped_symbol_fails_loudly() {
    require_tool("aarch64-linux-gnu-gcc");
    // The base plus the tuning fragment: every symbol lands (checked by imgtool itself), and
    // the merged config says so too.
    let out = run_ok(imgtool().args([
        "kernel",
        "build",
        "--arch",
        "aarch64",
        "--fragment",
        "small-memory",
        "--config-only",
    ]));
    let config = fs::read_to_string(out.lines().last().unwrap().trim()).unwrap();
    for want in [
        "CONFIG_VIRTIO_BLK=y",
        "CONFIG_SQUASHFS=y",
        "CONFIG_F2FS_FS=y",
        "CONFIG_ZRAM=y",
        "CONFIG_NR_CPUS=4",
        "# CONFIG_KALLSYMS is not set",
    ] {
        assert!(config.lines().any(|l| l == want), "{want} missing");
    }

    // Turning BLK_DEV off makes Kconfig drop VIRTIO_BLK: the build must stop and say which.
    let dir = tempdir();
    let frag = dir.path().join("no-blk.config");
    fs::write(&frag, "# CONFIG_BLK_DEV is not set\n").unwrap();
    let out = imgtool()
        .args([
            "kernel",
            "build",
            "--arch",
            "aarch64",
            "--config-only",
            "--fragment",
        ])
        .arg(&frag)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("CONFIG_VIRTIO_BLK=y (qemu-aarch64 line")
            && stderr.contains("ended up unset"),
        "{stderr}"
    );

    // An unknown fragment name is a usage error listing the built-in ones.
    let out = imgtool()
        .args(["kernel", "build", "--fragment", "no-such-fragment"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("qemu-aarch64, small-memory"));
}

/// A layout whose env is away from LBA 16, redundant, in two copies of 16 KiB at LBA 90000 and
/// 90064 (after both kernels): `imgtool build` records the place in sector 0, the loader finds
/// it there, tries slot b after an update and fails back to a, each time writing the older copy.
const MOVED_ENV_LAYOUT: &str = "name: moved-env
inputs: { kernel: '', rootfs: '', rootfs_b: '', cmdline: '' }
table: { type: mbr }
regions:
  - name: kernel_a
    offset: 2048 blocks
    size: 40960 blocks
    fill: { file: '${kernel}' }
  - name: kernel_b
    size: 40960 blocks
    fill: { file: '${kernel}' }
  - name: env
    offset: 90000 blocks
    size: 32 blocks
    fill:
      uboot-env:
        redundant-offset: 90064 blocks
        vars:
          nerves_fw_active: a
          upgrade_available: 0
          bootcount: 0
          a.kernel_lba: ${lba:kernel_a}
          b.kernel_lba: ${lba:kernel_b}
          a.kernel_args: root=/dev/vda1 rootfstype=squashfs ${cmdline}
          b.kernel_args: root=/dev/vda2 rootfstype=squashfs ${cmdline}
  - name: rootfs_a
    offset: 100000 blocks
    size: 20480 blocks
    partition: { number: 1, type: 0x83 }
    fill: { squashfs: { source: '${rootfs}' } }
  - name: rootfs_b
    size: 20480 blocks
    partition: { number: 2, type: 0x83 }
    fill: { squashfs: { source: '${rootfs_b}' } }
";

/// fw_printenv on the moved, redundant env (two lines in fw_env.config).
fn fw_printenv_moved(img: &Path, dir: &Path) -> String {
    let tool = require_tool("fw_printenv");
    let cfg = dir.join("fw_env-moved.config");
    fs::write(
        &cfg,
        format!(
            "{i} {:#x} 0x4000\n{i} {:#x} 0x4000\n",
            90000 * 512,
            90064 * 512,
            i = img.display()
        ),
    )
    .unwrap();
    run_ok(Command::new(tool).arg("-c").arg(&cfg))
}

#[test]
fn a_moved_redundant_env_boots_and_fails_back() {
    let dir = tempdir();
    let d = dir.path();
    let layout = d.join("moved-env.yaml");
    fs::write(&layout, MOVED_ENV_LAYOUT).unwrap();
    let img = d.join("moved.img");
    run_ok(
        imgtool()
            .arg("build")
            .arg(&layout)
            .arg("-o")
            .arg(&img)
            .arg("-D")
            .arg(format!("kernel={}", kernel().display()))
            .arg("-D")
            .arg(format!("rootfs={}", rootfs(d, "ROOTFS-A").display()))
            .arg("-D")
            .arg(format!("rootfs_b={}", rootfs(d, "ROOTFS-B").display()))
            .arg("-D")
            .arg(format!("cmdline={}", guest::CMDLINE)),
    );
    // Nothing at little_loader's place: only the record in sector 0 leads to this env.
    let bytes = fs::read(&img).unwrap();
    assert!(bytes[16 * 512..(16 + 256) * 512].iter().all(|&b| b == 0));
    assert_eq!(&bytes[..8], b"imgtENV1");
    drop(bytes);

    // As after an update to slot b that has not been validated yet (`imgtool env` follows
    // the record too).
    env_set(
        &img,
        &[
            ("nerves_fw_active", "b"),
            ("upgrade_available", "1"),
            ("bootcount", "0"),
        ],
    );
    let env = fw_printenv_moved(&img, d);
    assert!(env.contains("nerves_fw_active=b\n"), "{env}");

    let console = boot_ok(&img, "init: marker: ROOTFS-[AB]");
    assert!(
        console.contains(
            "loader: env: LBA 90000 and 90064 (redundant, 16384 bytes), from the disk's env locator"
        ),
        "{console}"
    );
    assert!(console.contains("trying slot b, bootcount=1"), "{console}");
    assert!(console.contains("init: marker: ROOTFS-B"), "{console}");
    let env = fw_printenv_moved(&img, d);
    for want in [
        "bootcount=1\n",
        "upgrade_available=1\n",
        "nerves_fw_active=b\n",
    ] {
        assert!(
            env.contains(want),
            "{want:?} missing after the first boot:\n{env}"
        );
    }

    // Slot b never validated itself: back to a, through the same moved env.
    let console = boot_ok(&img, "init: marker: ROOTFS-[AB]");
    assert!(
        console.contains("slot b was tried and not validated: falling back to slot a"),
        "{console}"
    );
    assert!(console.contains("init: marker: ROOTFS-A"), "{console}");
    let env = fw_printenv_moved(&img, d);
    for want in [
        "nerves_fw_active=a\n",
        "upgrade_available=0\n",
        "bootcount=0\n",
    ] {
        assert!(
            env.contains(want),
            "{want:?} missing after failback:\n{env}"
        );
    }
    // Both copies are valid and differ by one in their flags: the loader wrote them in turn.
    let bytes = fs::read(&img).unwrap();
    let (f1, f2) = (bytes[90000 * 512 + 4], bytes[90064 * 512 + 4]);
    assert_eq!(f1.abs_diff(f2), 1, "flags {f1} and {f2}");
}
