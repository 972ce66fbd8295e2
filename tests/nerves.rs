//! End-to-end: a disk made by `imgtool build nerves-qemu-aarch64` takes a Nerves update.
//!
//! The version-2 firmware's fwup.conf is written here the way the Nerves qemu aarch64 system
//! writes its own (nerves_system_qemu_aarch64 v0.4.0: fwup.conf and fwup-common.conf): its own
//! numbers, raw writes to kernel and rootfs B, platform and architecture checks. Real fwup 1.16
//! (built from source by scripts/fwup-oracle, as for the benches) and imgtool's fwup apply it to
//! copies of the same image; the results must be byte-identical, put the new root filesystem in
//! p2 as the disk's own table says, switch the env to slot b, and boot slot b under qemu.

mod common;
#[path = "../loader/test-init/guest.rs"]
mod guest;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use common::{imgtool, require_tool, run_ok, sha256, workspace_root};

/// Real fwup 1.16: `IMGTOOL_FWUP_ORACLE`, else what scripts/fwup-oracle installed (it builds it
/// once under /tmp when it is not there yet; it prints the path).
fn real_fwup() -> &'static Path {
    static F: OnceLock<PathBuf> = OnceLock::new();
    F.get_or_init(|| {
        if let Some(p) = std::env::var_os("IMGTOOL_FWUP_ORACLE") {
            return PathBuf::from(p);
        }
        let script = workspace_root().join("scripts/fwup-oracle");
        let out = Command::new(&script)
            .output()
            .expect("run scripts/fwup-oracle");
        if !out.status.success() {
            // fwup's source comes from the fetched mirror beside the checkout or GitHub; a
            // machine with neither can still run every check on our side. Say so loudly.
            eprintln!(
                "WARNING: real fwup 1.16 is not available here (scripts/fwup-oracle: {}): the \
                 comparisons below run against imgtool's fwup only; set IMGTOOL_FWUP_ORACLE or \
                 FWUP_SRC to compare with the real one",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            let dir = std::env::temp_dir().join(format!("imgtool-nerves-{}", std::process::id()));
            fs::create_dir_all(&dir).unwrap();
            return our_fwup(&dir);
        }
        let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        let v = run_ok(Command::new(&path).arg("--version"));
        assert_eq!(v.trim(), "1.16.0", "{} is not fwup 1.16.0", path.display());
        path
    })
}

/// imgtool started as `fwup`.
fn our_fwup(dir: &Path) -> PathBuf {
    let link = dir.join("fwup");
    if !link.exists() {
        std::os::unix::fs::symlink(common::bin_path(), &link).unwrap();
    }
    link
}

/// The Nerves system's upgrade firmware, in its own words and numbers (not imgtool's layout):
/// if the built disk differed from Nerves', the raw writes below would miss its partitions.
const NERVES_V2_CONF: &str = r#"
define(NERVES_FW_PRODUCT, "imgtool guest")
define(NERVES_FW_VERSION, "2.0.0")
define(NERVES_FW_PLATFORM, "qemu_aarch64")
define(NERVES_FW_ARCHITECTURE, "arm")
define(NERVES_FW_AUTHOR, "imgtool")
define(NERVES_FW_APPLICATION_PART0_DEVPATH, "/dev/vda3")
define(NERVES_FW_APPLICATION_PART0_FSTYPE, "f2fs")
define(NERVES_FW_APPLICATION_PART0_TARGET, "/root")

define(UBOOT_ENV_OFFSET, 16)
define(UBOOT_ENV_COUNT, 256)
define(KERNEL_COUNT, 102400)
define-eval(KERNEL_A_OFFSET, "${UBOOT_ENV_OFFSET} + ${UBOOT_ENV_COUNT}")
define-eval(KERNEL_B_OFFSET, "${KERNEL_A_OFFSET} + ${KERNEL_COUNT}")
define-eval(ROOTFS_A_PART_OFFSET, "${KERNEL_B_OFFSET} + ${KERNEL_COUNT}")
define(ROOTFS_A_PART_COUNT, 102400)
define-eval(ROOTFS_B_PART_OFFSET, "${ROOTFS_A_PART_OFFSET} + ${ROOTFS_A_PART_COUNT}")
define(ROOTFS_B_PART_COUNT, ${ROOTFS_A_PART_COUNT})

meta-product = ${NERVES_FW_PRODUCT}
meta-version = ${NERVES_FW_VERSION}
meta-platform = ${NERVES_FW_PLATFORM}
meta-architecture = ${NERVES_FW_ARCHITECTURE}
meta-author = ${NERVES_FW_AUTHOR}

file-resource Image {
    host-path = "${KERNEL}"
    assert-size-lte = ${KERNEL_COUNT}
}
file-resource rootfs.img {
    host-path = "${ROOTFS}"
    assert-size-lte = ${ROOTFS_A_PART_COUNT}
}

uboot-environment uboot-env {
    block-offset = ${UBOOT_ENV_OFFSET}
    block-count = ${UBOOT_ENV_COUNT}
}

task upgrade.a {
    require-uboot-variable(uboot-env, "nerves_fw_active", "b")
    require-uboot-variable(uboot-env, "upgrade_available", "0")
    require-uboot-variable(uboot-env, "b.nerves_fw_platform", "${NERVES_FW_PLATFORM}")
    require-uboot-variable(uboot-env, "b.nerves_fw_architecture", "${NERVES_FW_ARCHITECTURE}")
    on-init {
        info("Upgrading partition A")
        uboot_unsetenv(uboot-env, "a.nerves_fw_version")
        uboot_unsetenv(uboot-env, "a.nerves_fw_platform")
        uboot_unsetenv(uboot-env, "a.nerves_fw_architecture")
        uboot_unsetenv(uboot-env, "a.nerves_fw_uuid")
        trim(${ROOTFS_A_PART_OFFSET}, ${ROOTFS_A_PART_COUNT})
    }
    on-resource Image {
        delta-source-raw-offset=${KERNEL_B_OFFSET}
        delta-source-raw-count=${KERNEL_COUNT}
        raw_write(${KERNEL_A_OFFSET})
    }
    on-resource rootfs.img {
        delta-source-raw-offset=${ROOTFS_B_PART_OFFSET}
        delta-source-raw-count=${ROOTFS_B_PART_COUNT}
        raw_write(${ROOTFS_A_PART_OFFSET})
    }
    on-finish {
        uboot_setenv(uboot-env, "a.nerves_fw_application_part0_devpath", ${NERVES_FW_APPLICATION_PART0_DEVPATH})
        uboot_setenv(uboot-env, "a.nerves_fw_application_part0_fstype", ${NERVES_FW_APPLICATION_PART0_FSTYPE})
        uboot_setenv(uboot-env, "a.nerves_fw_application_part0_target", ${NERVES_FW_APPLICATION_PART0_TARGET})
        uboot_setenv(uboot-env, "a.nerves_fw_product", ${NERVES_FW_PRODUCT})
        uboot_setenv(uboot-env, "a.nerves_fw_version", ${NERVES_FW_VERSION})
        uboot_setenv(uboot-env, "a.nerves_fw_platform", ${NERVES_FW_PLATFORM})
        uboot_setenv(uboot-env, "a.nerves_fw_architecture", ${NERVES_FW_ARCHITECTURE})
        uboot_setenv(uboot-env, "a.nerves_fw_author", ${NERVES_FW_AUTHOR})
        uboot_setenv(uboot-env, "a.nerves_fw_uuid", "\${FWUP_META_UUID}")
        uboot_setenv(uboot-env, "a.kernel_lba", "${KERNEL_A_OFFSET}")
        uboot_setenv(uboot-env, "nerves_fw_active", "a")
        uboot_setenv(uboot-env, "upgrade_available", "1")
        uboot_setenv(uboot-env, "bootcount", "0")
    }
    on-error {
    }
}

task upgrade.b {
    require-uboot-variable(uboot-env, "nerves_fw_active", "a")
    require-uboot-variable(uboot-env, "upgrade_available", "0")
    require-uboot-variable(uboot-env, "a.nerves_fw_platform", "${NERVES_FW_PLATFORM}")
    require-uboot-variable(uboot-env, "a.nerves_fw_architecture", "${NERVES_FW_ARCHITECTURE}")
    on-init {
        info("Upgrading partition B")
        uboot_unsetenv(uboot-env, "b.nerves_fw_version")
        uboot_unsetenv(uboot-env, "b.nerves_fw_platform")
        uboot_unsetenv(uboot-env, "b.nerves_fw_architecture")
        uboot_unsetenv(uboot-env, "b.nerves_fw_uuid")
        trim(${ROOTFS_B_PART_OFFSET}, ${ROOTFS_B_PART_COUNT})
    }
    on-resource Image {
        delta-source-raw-offset=${KERNEL_A_OFFSET}
        delta-source-raw-count=${KERNEL_COUNT}
        raw_write(${KERNEL_B_OFFSET})
    }
    on-resource rootfs.img {
        delta-source-raw-offset=${ROOTFS_A_PART_OFFSET}
        delta-source-raw-count=${ROOTFS_A_PART_COUNT}
        raw_write(${ROOTFS_B_PART_OFFSET})
    }
    on-finish {
        uboot_setenv(uboot-env, "b.nerves_fw_application_part0_devpath", ${NERVES_FW_APPLICATION_PART0_DEVPATH})
        uboot_setenv(uboot-env, "b.nerves_fw_application_part0_fstype", ${NERVES_FW_APPLICATION_PART0_FSTYPE})
        uboot_setenv(uboot-env, "b.nerves_fw_application_part0_target", ${NERVES_FW_APPLICATION_PART0_TARGET})
        uboot_setenv(uboot-env, "b.nerves_fw_product", ${NERVES_FW_PRODUCT})
        uboot_setenv(uboot-env, "b.nerves_fw_version", ${NERVES_FW_VERSION})
        uboot_setenv(uboot-env, "b.nerves_fw_platform", ${NERVES_FW_PLATFORM})
        uboot_setenv(uboot-env, "b.nerves_fw_architecture", ${NERVES_FW_ARCHITECTURE})
        uboot_setenv(uboot-env, "b.nerves_fw_author", ${NERVES_FW_AUTHOR})
        uboot_setenv(uboot-env, "b.nerves_fw_uuid", "\${FWUP_META_UUID}")
        uboot_setenv(uboot-env, "b.kernel_lba", "${KERNEL_B_OFFSET}")
        uboot_setenv(uboot-env, "nerves_fw_active", "b")
        uboot_setenv(uboot-env, "upgrade_available", "1")
        uboot_setenv(uboot-env, "bootcount", "0")
    }
    on-error {
    }
}

task upgrade.unvalidated {
    require-uboot-variable(uboot-env, "upgrade_available", "1")
    on-init { error("Please validate the running firmware before upgrading it again.") }
}

task upgrade.unexpected {
    require-uboot-variable(uboot-env, "a.nerves_fw_platform", "${NERVES_FW_PLATFORM}")
    require-uboot-variable(uboot-env, "a.nerves_fw_architecture", "${NERVES_FW_ARCHITECTURE}")
    on-init { error("Neither slot is active.") }
}

task upgrade.wrongplatform {
    on-init { error("Expecting platform=${NERVES_FW_PLATFORM} and architecture=${NERVES_FW_ARCHITECTURE}") }
}
"#;

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
    let real = real_fwup();
    let ours = our_fwup(d);
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

    // Version 2, made by real fwup from the Nerves-style conf.
    let rootfs_v2 = guest::rootfs(d, "ROOTFS-V2");
    let conf = d.join("fwup.conf");
    fs::write(&conf, NERVES_V2_CONF).unwrap();
    let fw = d.join("v2.fw");
    run_ok(
        Command::new(real)
            .args(["-c", "-f"])
            .arg(&conf)
            .arg("-o")
            .arg(&fw)
            .env("KERNEL", kernel)
            .env("ROOTFS", &rootfs_v2),
    );

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
    let real = real_fwup();
    let ours = our_fwup(d);
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
    let real = real_fwup();
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
