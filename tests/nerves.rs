//! End-to-end: a disk made by `imgtool build nerves-qemu-aarch64` takes a Nerves update.
//!
//! The firmware is built from the real Nerves qemu aarch64 system's files as they are
//! (nerves_system_qemu_aarch64 v0.4.0: fwup.conf, fwup_include/ and fwup-ops.conf, in the
//! shared fixtures beside the checkout), by real fwup 1.16 (`-c`, built from source by
//! scripts/fwup-oracle; the test fails without it unless `IMGTOOL_NO_ORACLE=1`). Real fwup and
//! imgtool's fwup apply its complete task to blank disks and its upgrade to copies of the same
//! built image; the results must be byte-identical, put the new root filesystem in p2 as the
//! disk's own table says, switch the env to slot b, and boot slot b under qemu. The system's
//! ops firmware (validate, revert, prevent-revert, factory-reset) then gives identical bytes
//! from both too.

mod common;
#[path = "../loader/test-init/guest.rs"]
mod guest;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{imgtool, require_tool, run_ok, sha256, shared_dir, workspace_root, NO_ORACLE};

/// Real fwup 1.16 (common::real_fwup: the test fails without it); with `IMGTOOL_NO_ORACLE=1`,
/// imgtool's fwup stands in and the test says so in its result.
fn real_fwup(dir: &Path) -> PathBuf {
    match common::real_fwup() {
        Some(p) => p,
        None => {
            println!("{NO_ORACLE}");
            our_fwup(dir)
        }
    }
}

/// The real Nerves qemu aarch64 system's files (fwup.conf, fwup-ops.conf, fwup_include/), in
/// the shared fixtures beside the checkout.
fn nerves_system() -> PathBuf {
    let d = shared_dir()
        .unwrap_or_else(|| workspace_root().join("../shared"))
        .join("fixtures/nerves/qemu_aarch64-v0.4.0");
    for f in [
        "fwup.conf",
        "fwup-ops.conf",
        "fwup_include/fwup-common.conf",
    ] {
        assert!(
            d.join(f).is_file(),
            "{} is missing: the real Nerves qemu aarch64 system files must be in the shared \
             dir beside the checkout (../shared/fixtures/nerves/qemu_aarch64-v0.4.0)",
            d.join(f).display()
        );
    }
    d
}

/// `fwup -c` of the Nerves system's `conf` (fwup.conf or fwup-ops.conf) as the system's build
/// runs it: NERVES_SYSTEM/images holds the kernel Image and fwup_include/, the metadata comes
/// from the environment. Returns the .fw in `dir`.
fn nerves_fw(fwup: &Path, dir: &Path, conf: &str, kernel: &Path, rootfs: &Path) -> PathBuf {
    let system = nerves_system();
    let images = dir.join("system/images");
    if !images.is_dir() {
        fs::create_dir_all(&images).unwrap();
        std::os::unix::fs::symlink(kernel, images.join("Image")).unwrap();
        std::os::unix::fs::symlink(system.join("fwup_include"), images.join("fwup_include"))
            .unwrap();
    }
    let fw = dir.join(conf.replace(".conf", ".fw"));
    run_ok(
        Command::new(fwup)
            .current_dir(dir)
            .args(["-c", "-f"])
            .arg(system.join(conf))
            .arg("-o")
            .arg(&fw)
            .env("NERVES_SYSTEM", dir.join("system"))
            .env("NERVES_SDK_IMAGES", &images)
            .env("ROOTFS", rootfs)
            .env("NERVES_FW_VERSION", "2.0.0")
            .env("NERVES_FW_PRODUCT", "imgtool guest")
            .env("NERVES_FW_AUTHOR", "imgtool")
            .env("NERVES_FW_DESCRIPTION", "")
            .env("NERVES_FW_VCS_IDENTIFIER", "")
            .env("NERVES_FW_MISC", ""),
    );
    fw
}

/// imgtool started as `fwup`.
fn our_fwup(dir: &Path) -> PathBuf {
    let link = dir.join("fwup");
    if !link.exists() {
        std::os::unix::fs::symlink(common::bin_path(), &link).unwrap();
    }
    link
}

fn fw_printenv(img: &Path) -> String {
    let cfg = img.with_extension("fw_env.config");
    fs::write(&cfg, format!("{} 0x2000 0x20000\n", img.display())).unwrap();
    run_ok(
        Command::new(require_tool("fw_printenv"))
            .arg("-c")
            .arg(&cfg),
    )
}

/// Start LBA and size (blocks) of partition `n` (1-based), as sfdisk reads the disk's table.
fn partition(img: &Path, n: usize) -> (u64, u64) {
    let json = run_ok(Command::new(require_tool("sfdisk")).arg("-J").arg(img));
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let p = &v["partitiontable"]["partitions"][n - 1];
    (p["start"].as_u64().unwrap(), p["size"].as_u64().unwrap())
}

fn copy_sparse(from: &Path, to: &Path) {
    run_ok(Command::new("cp").arg("--sparse=always").arg(from).arg(to));
}

/// Apply `fw`'s `task` to `img` with `fwup`, `--enable-trim` as the Nerves tooling passes it.
fn apply(fwup: &Path, fw: &Path, img: &Path, task: &str) -> Output {
    Command::new(fwup)
        .args(["-a", "-q", "--enable-trim", "-i"])
        .arg(fw)
        .arg("-d")
        .arg(img)
        .args(["-t", task])
        .output()
        .unwrap()
}

#[test]
fn a_nerves_upgrade_applies_to_a_built_disk_with_real_and_our_fwup_and_boots_slot_b() {
    let tmp = tempfile::Builder::new()
        .prefix("imgtool-nerves-")
        .tempdir()
        .unwrap();
    let d = tmp.path();
    let ours = our_fwup(d);
    let real = &real_fwup(d);
    let kernel = guest::kernel();

    // Version 1, as imgtool builds it.
    let v1 = guest::build_image(
        d,
        "v1.img",
        "",
        &[
            ("kernel", kernel.display().to_string()),
            (
                "rootfs",
                guest::rootfs(d, "ROOTFS-V1").display().to_string(),
            ),
        ],
    );

    // Version 2, made by real fwup from the Nerves system's own fwup.conf.
    let rootfs_v2 = guest::rootfs(d, "ROOTFS-V2");
    let fw = nerves_fw(real, d, "fwup.conf", kernel, &rootfs_v2);

    // Its complete task, by each fwup onto a blank disk: the same bytes.
    let (c_real, c_ours) = (d.join("complete-real.img"), d.join("complete-ours.img"));
    let r = apply(real, &fw, &c_real, "complete");
    let o = apply(&ours, &fw, &c_ours, "complete");
    common::assert_ok(&r, "real fwup complete");
    common::assert_ok(&o, "imgtool's fwup complete");
    assert_eq!(
        o.stdout, r.stdout,
        "complete: imgtool's fwup prints what real fwup prints"
    );
    assert_eq!(
        fs::metadata(&c_ours).unwrap().len(),
        fs::metadata(&c_real).unwrap().len()
    );
    assert_eq!(sha256(&c_ours), sha256(&c_real), "the two completes differ");
    assert_eq!(partition(&c_ours, 3).0, 409872, "p3: the app partition");
    let env = fw_printenv(&c_ours);
    for want in [
        "nerves_fw_active=a",
        "a.nerves_fw_version=2.0.0",
        "a.kernel_lba=272",
    ] {
        assert!(env.lines().any(|l| l == want), "{want} missing:\n{env}");
    }
    fs::remove_file(&c_real).unwrap();
    fs::remove_file(&c_ours).unwrap();

    // The same upgrade, applied by each fwup to its own copy of the image.
    let (by_real, by_ours) = (d.join("real.img"), d.join("ours.img"));
    copy_sparse(&v1, &by_real);
    copy_sparse(&v1, &by_ours);
    let r = apply(real, &fw, &by_real, "upgrade");
    let o = apply(&ours, &fw, &by_ours, "upgrade");
    common::assert_ok(&r, "real fwup upgrade");
    common::assert_ok(&o, "imgtool's fwup upgrade");
    // What each printed: the task's info() and the trim warning for an image file.
    let (rs, os) = (
        String::from_utf8_lossy(&r.stdout),
        String::from_utf8_lossy(&o.stdout),
    );
    assert!(
        rs.contains("fwup: ignoring --enable-trim since operating on a regular file\n")
            && rs.contains("fwup: Upgrading partition B\n"),
        "real fwup printed:\n{rs}"
    );
    assert_eq!(os, rs, "imgtool's fwup prints what real fwup prints");

    // Same image, byte for byte.
    assert_eq!(
        fs::metadata(&by_ours).unwrap().len(),
        fs::metadata(&by_real).unwrap().len()
    );
    assert_eq!(
        sha256(&by_ours),
        sha256(&by_real),
        "the two upgrades differ"
    );

    // The new root filesystem is p2, where the disk's own table puts it; kernel B is the Image.
    let (p2, p2_blocks) = partition(&by_ours, 2);
    assert_eq!((p2, p2_blocks), (307472, 102400));
    let img = fs::read(&by_ours).unwrap();
    let new_root = fs::read(&rootfs_v2).unwrap();
    let at = p2 as usize * 512;
    assert_eq!(&img[at..at + new_root.len()], &new_root[..]);
    let k = fs::read(kernel).unwrap();
    assert_eq!(&img[102672 * 512..102672 * 512 + k.len()], &k[..]);
    drop(img);

    // The env: slot b active and on trial, its metadata Nerves' own.
    let env = fw_printenv(&by_ours);
    for want in [
        "nerves_fw_active=b",
        "upgrade_available=1",
        "bootcount=0",
        "b.nerves_fw_version=2.0.0",
        "b.nerves_fw_platform=qemu_aarch64",
        "b.nerves_fw_architecture=arm",
        "b.kernel_lba=102672",
        "a.nerves_fw_version=0.1.0",
    ] {
        assert!(env.lines().any(|l| l == want), "{want} missing:\n{env}");
    }

    // And the guest boots slot b from it under qemu.
    let console = guest::boot_ok(&by_ours, "init: marker: ROOTFS-V[12]", &[]);
    assert!(console.contains("trying slot b, bootcount=1"), "{console}");
    assert!(
        console.contains("Kernel command line: root=/dev/vda2 rootfstype=squashfs"),
        "{console}"
    );
    assert!(console.contains("init: marker: ROOTFS-V2"), "{console}");

    // A second upgrade before slot b validated itself is refused by both, and changes nothing.
    let before = sha256(&by_real);
    let r = apply(real, &fw, &by_real, "upgrade");
    let o = apply(&ours, &fw, &by_ours, "upgrade");
    assert!(!r.status.success() && !o.status.success());
    for out in [&r, &o] {
        let s = String::from_utf8_lossy(&out.stdout);
        assert!(
            s.contains("Please validate the running firmware before upgrading it again."),
            "{s}"
        );
    }
    assert_eq!(sha256(&by_real), before);

    // The system's ops firmware, as the device runs it (`--enable-trim`), task after task on
    // both copies: each leaves the same bytes from both fwups and says the same.
    // The boot above may have counted a try in its copy's env: both start from real fwup's.
    let ops = nerves_fw(real, d, "fwup-ops.conf", kernel, &rootfs_v2);
    let by_ours = d.join("ops-ours.img");
    copy_sparse(&by_real, &by_ours);
    for (task, said, env_want) in [
        (
            "validate",
            "Validate",
            &["upgrade_available=0", "bootcount=1"][..],
        ),
        (
            "revert",
            "Reverting to partition A",
            &["nerves_fw_active=a"][..],
        ),
        (
            "prevent-revert",
            "Preventing reverts to partition B",
            &[][..],
        ),
        ("factory-reset", "Erasing all writable data", &[][..]),
    ] {
        let r = apply(real, &ops, &by_real, task);
        let o = apply(&ours, &ops, &by_ours, task);
        common::assert_ok(&r, &format!("real fwup {task}"));
        common::assert_ok(&o, &format!("imgtool's fwup {task}"));
        let rs = String::from_utf8_lossy(&r.stdout);
        assert!(
            rs.contains(&format!("fwup: {said}\n")),
            "{task}: real fwup printed:\n{rs}"
        );
        assert_eq!(
            String::from_utf8_lossy(&o.stdout),
            rs,
            "{task}: the same output"
        );
        assert_eq!(
            fs::metadata(&by_ours).unwrap().len(),
            fs::metadata(&by_real).unwrap().len(),
            "{task}: the same size"
        );
        assert_eq!(
            sha256(&by_ours),
            sha256(&by_real),
            "{task}: the images differ"
        );
        let env = fw_printenv(&by_ours);
        for want in env_want {
            assert!(
                env.lines().any(|l| l == *want),
                "{task}: {want} missing:\n{env}"
            );
        }
    }
    let env = fw_printenv(&by_ours);
    assert!(
        !env.contains("b.nerves_fw_platform="),
        "prevent-revert unsets b's platform:\n{env}"
    );
    // factory-reset's mark: the first 256 blocks at APP_PART_OFFSET (409872) are 0xff.
    let mut mark = vec![0u8; 256 * 512];
    {
        use std::io::{Read, Seek, SeekFrom};
        let mut f = fs::File::open(&by_ours).unwrap();
        f.seek(SeekFrom::Start(409872 * 512)).unwrap();
        f.read_exact(&mut mark).unwrap();
    }
    assert!(mark.iter().all(|&b| b == 0xff), "factory-reset's 0xff mark");
}

/// The fwup.conf imgtool renders from the layout plan (`imgtool layout fwup-conf`) makes, with
/// real fwup's complete task, the disk `imgtool build` writes: the same table, env and slots.
/// Its upgrade then gives the same image with real fwup and with imgtool's.
#[test]
fn the_rendered_fwup_conf_is_the_built_disk() {
    let tmp = tempfile::Builder::new()
        .prefix("imgtool-nerves-conf-")
        .tempdir()
        .unwrap();
    let d = tmp.path();
    let ours = our_fwup(d);
    let real = &real_fwup(d);
    // A stand-in kernel and root filesystem: nothing boots here.
    let kernel = d.join("Image");
    fs::write(&kernel, vec![0x5au8; 3 << 20]).unwrap();
    let rootfs = guest::rootfs(d, "ROOTFS-CONF");
    let defs = ["version=1.0.0", "serial=SN-7", "cmdline=quiet"];

    let built = d.join("built.img");
    let mut cmd = imgtool();
    cmd.args(["build", "nerves-qemu-aarch64", "-o"])
        .arg(&built)
        .arg("-D")
        .arg(format!("kernel={}", kernel.display()))
        .arg("-D")
        .arg(format!("rootfs={}", rootfs.display()));
    for def in defs {
        cmd.args(["-D", def]);
    }
    run_ok(&mut cmd);

    let conf = d.join("fwup.conf");
    let mut cmd = imgtool();
    cmd.args(["layout", "fwup-conf", "nerves-qemu-aarch64", "-o"])
        .arg(&conf);
    for def in defs {
        cmd.args(["-D", def]);
    }
    run_ok(&mut cmd);
    let fw = d.join("v1.fw");
    run_ok(
        Command::new(real)
            .args(["-c", "-f"])
            .arg(&conf)
            .arg("-o")
            .arg(&fw)
            .env("KERNEL", &kernel)
            .env("ROOTFS", &rootfs),
    );
    let meta = run_ok(Command::new(real).args(["-m", "-i"]).arg(&fw));
    let uuid = meta
        .lines()
        .find_map(|l| l.strip_prefix("meta-uuid="))
        .unwrap()
        .trim_matches('"')
        .to_string();

    let applied = d.join("applied.img");
    let out = Command::new(real)
        .args(["-a", "-q", "-i"])
        .arg(&fw)
        .arg("-d")
        .arg(&applied)
        .args(["-t", "complete"])
        .env("NERVES_SERIAL_NUMBER", "SN-7")
        .output()
        .unwrap();
    common::assert_ok(&out, "real fwup complete");
    // imgtool's fwup (what `imgtool demo` runs) writes the same image from the same .fw.
    let applied_ours = d.join("applied-ours.img");
    let out = Command::new(&ours)
        .args(["-a", "-q", "-i"])
        .arg(&fw)
        .arg("-d")
        .arg(&applied_ours)
        .args(["-t", "complete"])
        .env("NERVES_SERIAL_NUMBER", "SN-7")
        .output()
        .unwrap();
    common::assert_ok(&out, "imgtool's fwup complete");
    assert_eq!(sha256(&applied_ours), sha256(&applied));

    // Sector 0 (the MBR), the env (but the .fw's UUID, which only the .fw knows), kernel A
    // and rootfs A are the same bytes.
    let (a, b) = (fs::read(&applied).unwrap(), fs::read(&built).unwrap());
    assert_eq!(&a[..512], &b[..512], "MBR");
    let env_of = |img: &Path| {
        fw_printenv(img)
            .lines()
            .filter(|l| !l.starts_with("a.nerves_fw_uuid="))
            .map(String::from)
            .collect::<Vec<_>>()
    };
    assert_eq!(env_of(&applied), env_of(&built));
    assert!(fw_printenv(&applied).contains(&format!("a.nerves_fw_uuid={uuid}\n")));
    assert!(
        fw_printenv(&built).contains("a.kernel_args=root=/dev/vda1 rootfstype=squashfs quiet\n")
    );
    let k = 3usize << 20;
    assert_eq!(&a[272 * 512..272 * 512 + k], &b[272 * 512..272 * 512 + k]);
    let r = fs::metadata(&rootfs).unwrap().len() as usize;
    assert_eq!(
        &a[205072 * 512..205072 * 512 + r],
        &b[205072 * 512..205072 * 512 + r]
    );
    drop((a, b));

    // Its upgrade task: real fwup and imgtool's give the same image.
    let (by_real, by_ours) = (d.join("real.img"), d.join("ours.img"));
    copy_sparse(&built, &by_real);
    copy_sparse(&built, &by_ours);
    common::assert_ok(&apply(real, &fw, &by_real, "upgrade"), "real fwup upgrade");
    common::assert_ok(
        &apply(&ours, &fw, &by_ours, "upgrade"),
        "imgtool's fwup upgrade",
    );
    assert_eq!(sha256(&by_ours), sha256(&by_real));
    let env = fw_printenv(&by_ours);
    for want in [
        "nerves_fw_active=b",
        "upgrade_available=1",
        "b.kernel_args=root=/dev/vda2 rootfstype=squashfs quiet",
        "b.nerves_fw_architecture=arm",
        "b.nerves_fw_application_part0_devpath=/dev/vda3",
    ] {
        assert!(env.lines().any(|l| l == want), "{want} missing:\n{env}");
    }
}

/// For a layout whose env is away from LBA 16 (redundant here), the rendered fwup.conf carries
/// the env locator in the MBR's boot code: real fwup's complete task writes the sector 0 that
/// `imgtool build` writes, and both copies of the env where the layout puts them.
#[test]
fn the_rendered_fwup_conf_keeps_a_moved_env_findable() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let real = &real_fwup(d);
    let yaml = "name: moved-env\ntable: { type: mbr }\nregions:\n  - name: env\n    offset: 4096 blocks\n    size: 16 blocks\n    fill:\n      uboot-env:\n        redundant-offset: 4112 blocks\n        vars:\n          a.nerves_fw_platform: p\n          a.nerves_fw_architecture: arm\n          a.kernel_lba: ${lba:kernel_a}\n          b.kernel_lba: ${lba:kernel_b}\n  - name: kernel_a\n    offset: 8192 blocks\n    size: 2048 blocks\n  - name: kernel_b\n    size: 2048 blocks\n  - name: rootfs_a\n    size: 2048 blocks\n    partition: { number: 1, type: 0x83 }\n  - name: rootfs_b\n    size: 2048 blocks\n    partition: { number: 2, type: 0x83 }\n";
    let layout = d.join("moved.yaml");
    fs::write(&layout, yaml).unwrap();
    for (name, byte) in [("k.bin", 0x4bu8), ("r.bin", 0x52)] {
        fs::write(d.join(name), vec![byte; 100_000]).unwrap();
    }
    let conf = d.join("moved.conf");
    run_ok(
        imgtool()
            .args(["layout", "fwup-conf"])
            .arg(&layout)
            .args(["--kernel", "k.bin", "--rootfs", "r.bin", "-o"])
            .arg(&conf),
    );
    let fw = d.join("moved.fw");
    run_ok(
        Command::new(real)
            .current_dir(d)
            .args(["-c", "-f"])
            .arg(&conf)
            .arg("-o")
            .arg(&fw),
    );
    let applied = d.join("applied.img");
    run_ok(
        Command::new(real)
            .args(["-a", "-q", "-i"])
            .arg(&fw)
            .arg("-d")
            .arg(&applied)
            .args(["-t", "complete"]),
    );
    let built = d.join("built.img");
    run_ok(imgtool().arg("build").arg(&layout).arg("-o").arg(&built));
    let (a, b) = (fs::read(&applied).unwrap(), fs::read(&built).unwrap());
    assert_eq!(&a[..512], &b[..512], "sector 0, env locator included");
    assert_eq!(&a[..8], b"imgtENV1");
    // `imgtool env` finds the env through the record; fw_printenv reads it where the layout put it.
    let ours = run_ok(imgtool().args(["env", "print", "-i"]).arg(&applied));
    let cfg = d.join("fw_env.config");
    fs::write(
        &cfg,
        format!(
            "{i} {:#x} 0x2000\n{i} {:#x} 0x2000\n",
            4096 * 512,
            4112 * 512,
            i = applied.display()
        ),
    )
    .unwrap();
    let theirs = run_ok(
        Command::new(require_tool("fw_printenv"))
            .arg("-c")
            .arg(&cfg),
    );
    assert_eq!(ours, theirs);
    assert!(theirs.contains("a.kernel_lba=8192\n"), "{theirs}");
}
