//! Power cuts during an upgrade, in the Nerves layout: every write the upgrade task sends to
//! the destination is recorded at 512-byte granularity (the block cache's write log), and
//! every prefix of that log is replayed onto the pre-upgrade image. Each replayed image must
//! still boot the way our loader (loader/src/envstore.rs, policy.rs) and U-Boot would:
//!
//! - the env is valid: a good single copy, or for the redundant layout at least one good
//!   copy, the one with the newer flag (U-Boot's rule) when both are;
//! - the slot that env makes active holds a whole kernel (an arm64 Image header, every byte
//!   of one version) and a whole root filesystem (a squashfs superblock, every byte of the
//!   same version).
//!
//! With a redundant env every prefix must boot. With a single copy, prefixes that end inside
//! the env write leave no valid env (the loader then stops with "no valid U-Boot env"); the
//! test counts them and checks that every other prefix boots.

use fwup_compat::config::Section;
use fwup_compat::exec::{requirements_met, run_plan, BlockCache, Executor};
use fwup_compat::ops;
use fwup_compat::plan::Plan;
use fwup_compat::progress::{Mode, Progress};
use std::fs::OpenOptions;
use std::path::Path;
use uboot_env::{Env, FlagRule, Layout, Redundant};

const ENV_LBA: u64 = 16;
const ENV_BLOCKS: u64 = 256;
const ENV_REDUND_LBA: u64 = 272;
const KERNEL_A: u64 = 528;
const KERNEL_B: u64 = 1552;
const ROOTFS_A: u64 = 4096;
const ROOTFS_B: u64 = 8192;
const SLOT_BLOCKS: u64 = 4096;

fn conf(redundant: bool, version: &str) -> String {
    // A Nerves env holds a few KiB of variables: enough that one env write spans blocks.
    let misc = format!("build {version} ").repeat(150);
    let redund = if redundant {
        format!("block-offset-redund = {ENV_REDUND_LBA}")
    } else {
        String::new()
    };
    let slot_task = |s: &str, other: &str, kernel: u64, rootfs: u64, part: u32| {
        format!(
            r#"
task upgrade.{s} {{
    require-partition-offset({part}, {rootfs})
    require-uboot-variable(uboot-env, "nerves_fw_active", "{other}")
    on-init {{
        uboot_unsetenv(uboot-env, "{s}.nerves_fw_version")
        trim({kernel}, 1024)
        trim({rootfs}, {SLOT_BLOCKS})
    }}
    on-resource Image {{ raw_write({kernel}) }}
    on-resource rootfs.img {{ raw_write({rootfs}) }}
    on-finish {{
        uboot_setenv(uboot-env, "{s}.nerves_fw_version", "{version}")
        uboot_setenv(uboot-env, "{s}.nerves_fw_misc", "{misc}")
        uboot_setenv(uboot-env, "{s}.kernel_args", "root=/dev/vda{} ro")
        uboot_setenv(uboot-env, "upgrade_available", "1")
        uboot_setenv(uboot-env, "bootcount", "0")
        uboot_setenv(uboot-env, "nerves_fw_active", "{s}")
    }}
}}
"#,
            part + 1
        )
    };
    format!(
        r#"
meta-product = "power cut"
meta-version = "{version}"
file-resource Image {{ host-path = "Image" }}
file-resource rootfs.img {{ host-path = "rootfs.img" }}
mbr mbr {{
    partition 0 {{ block-offset = {ROOTFS_A} block-count = {SLOT_BLOCKS} type = 0x83 }}
    partition 1 {{ block-offset = {ROOTFS_B} block-count = {SLOT_BLOCKS} type = 0x83 }}
    partition 2 {{ block-offset = 12288 block-count = 8192 type = 0x83 }}
}}
uboot-environment uboot-env {{
    block-offset = {ENV_LBA}
    block-count = {ENV_BLOCKS}
    {redund}
}}
task complete {{
    on-init {{
        mbr_write(mbr)
        uboot_clearenv(uboot-env)
        uboot_setenv(uboot-env, "nerves_fw_active", "a")
        uboot_setenv(uboot-env, "a.kernel_lba", {KERNEL_A})
        uboot_setenv(uboot-env, "b.kernel_lba", {KERNEL_B})
        uboot_setenv(uboot-env, "a.kernel_args", "root=/dev/vda1 ro")
        uboot_setenv(uboot-env, "a.nerves_fw_version", "{version}")
        uboot_setenv(uboot-env, "upgrade_available", "0")
        uboot_setenv(uboot-env, "bootcount", "0")
    }}
    on-resource Image {{ raw_write({KERNEL_A}) }}
    on-resource rootfs.img {{ raw_write({ROOTFS_A}) }}
    on-finish {{ raw_memset({ROOTFS_B}, 256, 0xff) }}
}}
{}
{}
"#,
        slot_task("a", "b", KERNEL_A, ROOTFS_A, 0),
        slot_task("b", "a", KERNEL_B, ROOTFS_B, 1)
    )
}

/// An arm64 Image: the 64-byte header (text_offset, image_size, "ARM\x64" at 0x38) and a
/// body that differs per version.
fn kernel(version: u8, len: usize) -> Vec<u8> {
    let mut k = vec![0u8; len];
    let mut x = 0x1234_5678_9abc_def0u64 ^ version as u64;
    for b in k.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    k[..64].fill(0);
    k[0..4].copy_from_slice(&[0x4d, 0x5a, 0, 0x91]);
    k[0x10..0x18].copy_from_slice(&(len as u64).to_le_bytes());
    k[0x38..0x3c].copy_from_slice(b"ARM\x64");
    k
}

/// The fixture squashfs, with bytes after its superblock changed for version 2.
fn rootfs(version: u8) -> Vec<u8> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/fwup/01-nerves-qemu-aarch64/rootfs.squashfs");
    let mut r = std::fs::read(p).unwrap();
    if version == 2 {
        let n = r.len();
        for b in &mut r[n - 4096..] {
            *b ^= 0x3c;
        }
    }
    r
}

fn squashfs_ok(b: &[u8], slot_bytes: u64) -> bool {
    b.len() >= 96
        && &b[0..4] == b"hsqs"
        && u64::from_le_bytes(b[40..48].try_into().unwrap()) <= slot_bytes
        && u32::from_le_bytes(b[12..16].try_into().unwrap()).is_power_of_two()
}

struct Versions {
    kernels: Vec<Vec<u8>>,
    rootfs: Vec<Vec<u8>>,
}

/// Why `img` would not boot, or None.
fn boot_problem(img: &[u8], redundant: bool, v: &Versions) -> Option<String> {
    let blk = |lba: u64, n: u64| &img[(lba * 512) as usize..((lba + n) * 512) as usize];
    let env = if redundant {
        match Redundant::parse(
            blk(ENV_LBA, ENV_BLOCKS),
            blk(ENV_REDUND_LBA, ENV_BLOCKS),
            FlagRule::UBoot,
        ) {
            Ok(r) => r.env,
            Err(e) => return Some(format!("no valid env copy: {e}")),
        }
    } else {
        match Env::parse(blk(ENV_LBA, ENV_BLOCKS), Layout::Single) {
            Ok(e) => e,
            Err(e) => return Some(format!("env invalid: {e}")),
        }
    };
    let slot = env.get("nerves_fw_active").unwrap_or("?").to_string();
    let (rootfs_lba, lba_var) = match slot.as_str() {
        "a" => (ROOTFS_A, "a.kernel_lba"),
        "b" => (ROOTFS_B, "b.kernel_lba"),
        s => return Some(format!("nerves_fw_active is {s:?}")),
    };
    let Some(klba) = env.get(lba_var).and_then(|l| l.parse::<u64>().ok()) else {
        return Some(format!("{lba_var} missing"));
    };
    let at = (klba * 512) as usize;
    let head = &img[at..at + 64];
    if &head[0x38..0x3c] != b"ARM\x64" {
        return Some(format!("slot {slot}: no arm64 Image header at LBA {klba}"));
    }
    let kv = v
        .kernels
        .iter()
        .position(|k| img[at..at + k.len()] == k[..]);
    let rat = (rootfs_lba * 512) as usize;
    if !squashfs_ok(&img[rat..], SLOT_BLOCKS * 512) {
        return Some(format!("slot {slot}: no squashfs superblock"));
    }
    let rv = v
        .rootfs
        .iter()
        .position(|r| img[rat..rat + r.len()] == r[..]);
    match (kv, rv) {
        (Some(k), Some(r)) if k == r => None,
        (Some(k), Some(r)) => Some(format!(
            "slot {slot}: kernel version {} with rootfs version {}",
            k + 1,
            r + 1
        )),
        (None, _) => Some(format!("slot {slot}: kernel is a mix of versions")),
        (_, None) => Some(format!("slot {slot}: rootfs is a mix of versions")),
    }
}

/// Apply `task` of `fw` to `img` the way `fwup -a` does, returning every destination write
/// split into 512-byte blocks, in order.
fn apply_logged(fw: &Path, img: &Path, task: &str) -> Vec<(u64, Vec<u8>)> {
    let opened = ops::open_archive(std::fs::File::open(fw).unwrap(), "x.fw", &[], false).unwrap();
    let file = OpenOptions::new().read(true).write(true).open(img).unwrap();
    let len = file.metadata().unwrap().len();
    let mut cache = BlockCache::new(file, 1, len);
    cache.soft_end = true;
    cache.init_end();
    cache.write_log = Some(Vec::new());
    let mut progress = Progress::new(Mode::Off, 0, 100, Default::default());
    let host = fwup_compat::host::HostOptions::default();
    let cfg: &Section = &opened.cfg;
    let mut zip = opened.zip;
    let mut ex = Executor {
        cfg,
        cache,
        progress: &mut progress,
        fat: Default::default(),
        task: None,
        host: &host,
    };
    let t = cfg
        .secs("task")
        .iter()
        .find(|t| t.title().starts_with(task) && requirements_met(&mut ex, t))
        .expect("an applicable task")
        .clone();
    let plan = Plan::from_task(&t).unwrap();
    plan.check(cfg, ex.cache.hard_end()).unwrap();
    ex.task = Some(t.title().to_string());
    run_plan(&mut ex, &plan, &mut zip).unwrap();
    ex.cache.flush().unwrap();
    let log = ex.cache.write_log.take().unwrap();
    let mut blocks = Vec::new();
    for (off, data) in log {
        assert_eq!(off % 512, 0);
        for (i, b) in data.chunks(512).enumerate() {
            blocks.push((off / 512 + i as u64, b.to_vec()));
        }
    }
    blocks
}

struct Report {
    prefixes: usize,
    booting: usize,
    env_invalid: usize,
    problems: Vec<String>,
}

fn replay(pre: &[u8], log: &[(u64, Vec<u8>)], redundant: bool, v: &Versions) -> Report {
    let mut img = pre.to_vec();
    let mut r = Report {
        prefixes: 0,
        booting: 0,
        env_invalid: 0,
        problems: Vec::new(),
    };
    for k in 0..=log.len() {
        if k > 0 {
            let (lba, b) = &log[k - 1];
            let at = (*lba * 512) as usize;
            if img.len() < at + 512 {
                img.resize(at + 512, 0);
            }
            img[at..at + 512].copy_from_slice(b);
        }
        r.prefixes += 1;
        match boot_problem(&img, redundant, v) {
            None => r.booting += 1,
            Some(p) => {
                if p.starts_with("env invalid") || p.starts_with("no valid env") {
                    r.env_invalid += 1;
                }
                if r.problems.len() < 10 {
                    r.problems.push(format!("prefix {k}/{}: {p}", log.len()));
                }
            }
        }
    }
    r
}

/// Make v1 and v2 archives, apply v1 `complete`, then upgrade to v2 (slot b) and back to v1
/// (slot a), replaying every prefix of each upgrade's writes.
fn run_layout(redundant: bool) -> Vec<(String, Report)> {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let v = Versions {
        kernels: vec![kernel(1, 160 * 1024 + 300), kernel(2, 150 * 1024 + 7)],
        rootfs: vec![rootfs(1), rootfs(2)],
    };
    let mut fws = Vec::new();
    for ver in 0..2 {
        std::fs::write(
            d.join("fwup.conf"),
            conf(redundant, &format!("{}.0.0", ver + 1)),
        )
        .unwrap();
        std::fs::write(d.join("Image"), &v.kernels[ver]).unwrap();
        std::fs::write(d.join("rootfs.img"), &v.rootfs[ver]).unwrap();
        let out = d.join(format!("v{}.fw", ver + 1));
        ops::create(&ops::CreateOptions {
            config: d.join("fwup.conf").to_str().unwrap(),
            output: out.to_str().unwrap(),
            level: 1,
            private_key: None,
        })
        .unwrap();
        fws.push(out);
    }
    let img = d.join("disk.img");
    std::fs::write(&img, vec![0u8; 20480 * 512]).unwrap();
    apply_logged(&fws[0], &img, "complete");
    assert_eq!(
        boot_problem(&std::fs::read(&img).unwrap(), redundant, &v),
        None
    );
    let mut out = Vec::new();
    for (fw, name) in [
        (&fws[1], "upgrade to v2 (slot b)"),
        (&fws[0], "upgrade to v1 (slot a)"),
    ] {
        let pre = std::fs::read(&img).unwrap();
        let log = apply_logged(fw, &img, "upgrade");
        let post = std::fs::read(&img).unwrap();
        // The log is the whole story: replaying all of it gives the image apply made.
        let mut replayed = pre.clone();
        for (lba, b) in &log {
            let at = (*lba * 512) as usize;
            replayed[at..at + 512].copy_from_slice(b);
        }
        assert!(replayed == post, "{name}: the write log misses writes");
        out.push((name.to_string(), replay(&pre, &log, redundant, &v)));
    }
    out
}

#[test]
fn every_power_cut_prefix_boots_with_a_redundant_env() {
    for (name, r) in run_layout(true) {
        println!(
            "redundant env, {name}: {}/{} prefixes boot",
            r.booting, r.prefixes
        );
        assert!(
            r.booting == r.prefixes,
            "{name}: {} of {} prefixes do not boot:\n{}",
            r.prefixes - r.booting,
            r.prefixes,
            r.problems.join("\n")
        );
        assert!(r.prefixes > 500, "{name}: too few writes recorded");
    }
}

#[test]
fn single_copy_env_fails_only_inside_the_env_write() {
    for (name, r) in run_layout(false) {
        println!(
            "single env, {name}: {}/{} prefixes boot, {} end inside the env write (no valid env: the loader stops)",
            r.booting, r.prefixes, r.env_invalid
        );
        // Every prefix that does not boot is one with a torn env, and there are some.
        assert_eq!(
            r.booting + r.env_invalid,
            r.prefixes,
            "{name}:\n{}",
            r.problems.join("\n")
        );
        assert!(r.env_invalid > 0);
    }
}
