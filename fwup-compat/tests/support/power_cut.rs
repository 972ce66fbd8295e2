//! Power cuts during a Nerves-style upgrade, shared by fwup-compat/tests/power_cut.rs (every
//! prefix, checked statically) and tests/power_cut_boot.rs (a sample, booted under qemu).
//!
//! Every write the upgrade task sends to the destination is recorded at 512-byte granularity
//! (the block cache's write log); a prefix of that log, replayed onto the pre-upgrade image, is
//! the disk as a power cut after that many blocks leaves it. The layout is Nerves': env at LBA
//! 16 (256 blocks, optionally a redundant copy right after it), kernels A and B after the env,
//! root filesystems A and B in MBR partitions 1 and 2. A redundant env is announced to
//! imgtool's loader by the env locator in the MBR's boot code, as `imgtool build` does.
#![allow(dead_code)]

use fwup_compat::config::Section;
use fwup_compat::exec::{requirements_met, run_plan, BlockCache, Executor};
use fwup_compat::ops;
use fwup_compat::plan::Plan;
use fwup_compat::progress::{Mode, Progress};
use std::fs::OpenOptions;
use std::ops::Range;
use std::path::{Path, PathBuf};
use uboot_env::locator::Locator;
use uboot_env::{Env, FlagRule, Layout, Redundant};

pub const ENV_LBA: u64 = 16;
pub const ENV_BLOCKS: u64 = 256;
pub const ENV_REDUND_LBA: u64 = ENV_LBA + ENV_BLOCKS;
const DATA_BLOCKS: u64 = 8192;

/// The layout: env kind, slot sizes and the kernel command line after `root=/dev/vdaN`.
#[derive(Clone, Debug)]
pub struct Params {
    pub redundant: bool,
    pub kernel_blocks: u64,
    pub rootfs_blocks: u64,
    pub cmdline: String,
}

impl Params {
    pub fn kernel_lba(&self, slot: Slot) -> u64 {
        let a = ENV_REDUND_LBA + ENV_BLOCKS;
        match slot {
            Slot::A => a,
            Slot::B => a + self.kernel_blocks,
        }
    }

    /// Root filesystems start on a 1 MiB boundary after the kernels.
    pub fn rootfs_lba(&self, slot: Slot) -> u64 {
        let a = (self.kernel_lba(Slot::B) + self.kernel_blocks).next_multiple_of(2048);
        match slot {
            Slot::A => a,
            Slot::B => a + self.rootfs_blocks,
        }
    }

    pub fn disk_blocks(&self) -> u64 {
        self.rootfs_lba(Slot::B) + self.rootfs_blocks + DATA_BLOCKS
    }

    /// Which region a block belongs to, for naming a prefix.
    pub fn region(&self, lba: u64) -> Region {
        let within = |start: u64, n: u64| (start..start + n).contains(&lba);
        if within(ENV_LBA, ENV_BLOCKS) || (self.redundant && within(ENV_REDUND_LBA, ENV_BLOCKS)) {
            Region::Env
        } else if within(self.kernel_lba(Slot::A), 2 * self.kernel_blocks) {
            Region::Kernel
        } else if within(self.rootfs_lba(Slot::A), 2 * self.rootfs_blocks) {
            Region::Rootfs
        } else {
            Region::Other
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slot {
    A,
    B,
}

impl Slot {
    pub fn name(self) -> &'static str {
        match self {
            Slot::A => "a",
            Slot::B => "b",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Region {
    Env,
    Kernel,
    Rootfs,
    Other,
}

/// The fwup.conf of firmware `version` for layout `p`: `complete` installs slot a, `upgrade`
/// writes the inactive slot and then switches the env to it.
pub fn conf(p: &Params, version: &str) -> String {
    // A Nerves env holds a few KiB of variables: enough that one env write spans blocks.
    let misc = format!("build {version} ").repeat(150);
    let (env_lba, env_blocks, slot_blocks) = (ENV_LBA, ENV_BLOCKS, p.rootfs_blocks);
    let (ka, kb) = (p.kernel_lba(Slot::A), p.kernel_lba(Slot::B));
    let (ra, rb) = (p.rootfs_lba(Slot::A), p.rootfs_lba(Slot::B));
    let data = rb + p.rootfs_blocks;
    let (redund, boot_code) = if p.redundant {
        let loc = Locator {
            offset: ENV_LBA * 512,
            size: (ENV_BLOCKS * 512) as u32,
            redundant_offset: Some(ENV_REDUND_LBA * 512),
        };
        let mut code = [0u8; 440];
        let rec = loc.encode();
        let at = uboot_env::locator::OFFSET;
        code[at..at + rec.len()].copy_from_slice(&rec);
        let hex: String = code.iter().map(|b| format!("{b:02x}")).collect();
        (
            format!("block-offset-redund = {ENV_REDUND_LBA}"),
            format!("bootstrap-code = \"{hex}\""),
        )
    } else {
        (String::new(), String::new())
    };
    let args = |part: u32| format!("root=/dev/vda{part} {}", p.cmdline);
    let slot_task = |s: &str, other: &str, kernel: u64, rootfs: u64, part: u32| {
        format!(
            r#"
task upgrade.{s} {{
    require-partition-offset({part}, {rootfs})
    require-uboot-variable(uboot-env, "nerves_fw_active", "{other}")
    on-init {{
        uboot_unsetenv(uboot-env, "{s}.nerves_fw_version")
        trim({kernel}, {kernel_blocks})
        trim({rootfs}, {slot_blocks})
    }}
    on-resource Image {{ raw_write({kernel}) }}
    on-resource rootfs.img {{ raw_write({rootfs}) }}
    on-finish {{
        uboot_setenv(uboot-env, "{s}.nerves_fw_version", "{version}")
        uboot_setenv(uboot-env, "{s}.nerves_fw_misc", "{misc}")
        uboot_setenv(uboot-env, "{s}.kernel_args", "{args}")
        uboot_setenv(uboot-env, "upgrade_available", "1")
        uboot_setenv(uboot-env, "bootcount", "0")
        uboot_setenv(uboot-env, "nerves_fw_active", "{s}")
    }}
}}
"#,
            kernel_blocks = p.kernel_blocks,
            args = args(part + 1),
        )
    };
    format!(
        r#"
meta-product = "power cut"
meta-version = "{version}"
file-resource Image {{ host-path = "Image" }}
file-resource rootfs.img {{ host-path = "rootfs.img" }}
mbr mbr {{
    {boot_code}
    partition 0 {{ block-offset = {ra} block-count = {slot_blocks} type = 0x83 }}
    partition 1 {{ block-offset = {rb} block-count = {slot_blocks} type = 0x83 }}
    partition 2 {{ block-offset = {data} block-count = {DATA_BLOCKS} type = 0x83 }}
}}
uboot-environment uboot-env {{
    block-offset = {env_lba}
    block-count = {env_blocks}
    {redund}
}}
task complete {{
    on-init {{
        mbr_write(mbr)
        uboot_clearenv(uboot-env)
        uboot_setenv(uboot-env, "nerves_fw_active", "a")
        uboot_setenv(uboot-env, "a.kernel_lba", {ka})
        uboot_setenv(uboot-env, "b.kernel_lba", {kb})
        uboot_setenv(uboot-env, "a.kernel_args", "{args_a}")
        uboot_setenv(uboot-env, "a.nerves_fw_version", "{version}")
        uboot_setenv(uboot-env, "upgrade_available", "0")
        uboot_setenv(uboot-env, "bootcount", "0")
    }}
    on-resource Image {{ raw_write({ka}) }}
    on-resource rootfs.img {{ raw_write({ra}) }}
    on-finish {{ raw_memset({rb}, 256, 0xff) }}
}}
{}
{}
"#,
        slot_task("a", "b", ka, ra, 0),
        slot_task("b", "a", kb, rb, 1),
        args_a = args(1),
    )
}

/// The kernel and root filesystem of each firmware version (index 0 is version 1).
pub struct Versions {
    pub kernels: Vec<Vec<u8>>,
    pub rootfs: Vec<Vec<u8>>,
}

/// The env as a boot would read it (U-Boot's rule for a redundant pair), or why there is none.
pub fn read_env(img: &[u8], p: &Params) -> Result<Env, String> {
    let blk = |lba: u64, n: u64| &img[(lba * 512) as usize..((lba + n) * 512) as usize];
    if p.redundant {
        Redundant::parse(
            blk(ENV_LBA, ENV_BLOCKS),
            blk(ENV_REDUND_LBA, ENV_BLOCKS),
            FlagRule::UBoot,
        )
        .map(|r| r.env)
        .map_err(|e| format!("no valid env copy: {e}"))
    } else {
        Env::parse(blk(ENV_LBA, ENV_BLOCKS), Layout::Single)
            .map_err(|e| format!("env invalid: {e}"))
    }
}

/// The slot the env makes active.
pub fn active_slot(env: &Env) -> Result<Slot, String> {
    match env.get("nerves_fw_active") {
        Some("a") => Ok(Slot::A),
        Some("b") => Ok(Slot::B),
        s => Err(format!("nerves_fw_active is {s:?}")),
    }
}

fn squashfs_ok(b: &[u8], slot_bytes: u64) -> bool {
    b.len() >= 96
        && &b[0..4] == b"hsqs"
        && u64::from_le_bytes(b[40..48].try_into().unwrap()) <= slot_bytes
        && u32::from_le_bytes(b[12..16].try_into().unwrap()).is_power_of_two()
}

/// The version (index into `v`) whose kernel and root filesystem the active slot holds, both
/// whole, or why `img` would not boot.
pub fn boot_check(img: &[u8], p: &Params, v: &Versions) -> Result<(Slot, usize), String> {
    let env = read_env(img, p)?;
    let slot = active_slot(&env)?;
    let s = slot.name();
    let lba_var = format!("{s}.kernel_lba");
    let Some(klba) = env.get(&lba_var).and_then(|l| l.parse::<u64>().ok()) else {
        return Err(format!("{lba_var} missing"));
    };
    let at = (klba * 512) as usize;
    if img.get(at + 0x38..at + 0x3c) != Some(b"ARM\x64") {
        return Err(format!("slot {s}: no arm64 Image header at LBA {klba}"));
    }
    let rat = (p.rootfs_lba(slot) * 512) as usize;
    if !squashfs_ok(&img[rat..], p.rootfs_blocks * 512) {
        return Err(format!("slot {s}: no squashfs superblock"));
    }
    let holds = |have: &[u8], at: usize, want: &[u8]| have.get(at..at + want.len()) == Some(want);
    let Some(r) = v.rootfs.iter().position(|r| holds(img, rat, r)) else {
        return Err(format!("slot {s}: rootfs is a mix of versions"));
    };
    if holds(img, at, &v.kernels[r]) {
        return Ok((slot, r));
    }
    match v.kernels.iter().position(|k| holds(img, at, k)) {
        Some(k) => Err(format!(
            "slot {s}: kernel version {} with rootfs version {}",
            k + 1,
            r + 1
        )),
        None => Err(format!("slot {s}: kernel is a mix of versions")),
    }
}

/// One destination write of 512 bytes: (block number, bytes).
pub type Write = (u64, Vec<u8>);

/// Apply `task` of `fw` to `img` the way `fwup -a` does, returning every destination write
/// split into 512-byte blocks, in order.
pub fn apply_logged(fw: &Path, img: &Path, task: &str) -> Vec<Write> {
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

/// One recorded upgrade: the disk before it and its writes.
pub struct Upgrade {
    pub name: String,
    pub pre: Vec<u8>,
    pub log: Vec<Write>,
}

impl Upgrade {
    /// The disk after the first `k` writes.
    pub fn image_at(&self, k: usize) -> Vec<u8> {
        let mut img = self.pre.clone();
        self.replay_onto(&mut img, 0..k);
        img
    }

    /// Apply `writes` (indices into the log) to `img`.
    pub fn replay_onto(&self, img: &mut Vec<u8>, writes: Range<usize>) {
        for w in &self.log[writes] {
            put(img, w);
        }
    }

    /// The runs of writes to consecutive blocks of one region, in order: (region, log
    /// indices). One env write, or one resource's data, is one run.
    pub fn runs(&self, p: &Params) -> Vec<(Region, Range<usize>)> {
        let mut out: Vec<(Region, Range<usize>)> = Vec::new();
        for (i, (lba, _)) in self.log.iter().enumerate() {
            let r = p.region(*lba);
            match out.last_mut() {
                Some((last, run)) if *last == r && self.log[run.end - 1].0 + 1 == *lba => {
                    run.end = i + 1
                }
                _ => out.push((r, i..i + 1)),
            }
        }
        out
    }
}

fn put(img: &mut Vec<u8>, (lba, b): &Write) {
    let at = (*lba * 512) as usize;
    if img.len() < at + 512 {
        img.resize(at + 512, 0);
    }
    img[at..at + 512].copy_from_slice(b);
}

/// Make the v1 and v2 archives in `dir`, apply v1 `complete` to a blank disk, then record the
/// upgrade to v2 (slot b) and the one back to v1 (slot a).
pub fn record_upgrades(dir: &Path, p: &Params, v: &Versions) -> Vec<Upgrade> {
    let mut fws: Vec<PathBuf> = Vec::new();
    for ver in 0..2 {
        std::fs::write(dir.join("fwup.conf"), conf(p, &format!("{}.0.0", ver + 1))).unwrap();
        std::fs::write(dir.join("Image"), &v.kernels[ver]).unwrap();
        std::fs::write(dir.join("rootfs.img"), &v.rootfs[ver]).unwrap();
        let out = dir.join(format!("v{}.fw", ver + 1));
        ops::create(&ops::CreateOptions {
            config: dir.join("fwup.conf").to_str().unwrap(),
            output: out.to_str().unwrap(),
            level: 1,
            private_key: None,
        })
        .unwrap();
        fws.push(out);
    }
    let img = dir.join("disk.img");
    std::fs::write(&img, vec![0u8; (p.disk_blocks() * 512) as usize]).unwrap();
    apply_logged(&fws[0], &img, "complete");
    assert_eq!(
        boot_check(&std::fs::read(&img).unwrap(), p, v),
        Ok((Slot::A, 0))
    );
    let mut out = Vec::new();
    for (fw, name) in [
        (&fws[1], "upgrade to v2 (slot b)"),
        (&fws[0], "upgrade to v1 (slot a)"),
    ] {
        let pre = std::fs::read(&img).unwrap();
        let log = apply_logged(fw, &img, "upgrade");
        let up = Upgrade {
            name: name.to_string(),
            pre,
            log,
        };
        // The log is the whole story: replaying all of it gives the image apply made.
        assert!(
            up.image_at(up.log.len()) == std::fs::read(&img).unwrap(),
            "{name}: the write log misses writes"
        );
        out.push(up);
    }
    out
}

pub struct Report {
    pub prefixes: usize,
    pub booting: usize,
    /// Prefixes that end inside an env write (after its first block, before its last).
    pub inside_env_write: usize,
    /// Prefixes that leave no valid env.
    pub env_invalid: usize,
    /// Prefixes that do not boot although they end outside every env write.
    pub failing_outside_env: Vec<usize>,
    /// The first prefix whose env boots the slot the upgrade wrote (None: never).
    pub switch_at: Option<usize>,
    /// Prefixes before the switch that left the slot the old env boots changed.
    pub active_changed: Vec<usize>,
    /// What the whole log (the last prefix) boots.
    pub last: Result<(Slot, usize), String>,
    pub problems: Vec<String>,
}

/// The blocks of a slot (kernel and root filesystem), as ranges of LBAs.
fn slot_blocks(p: &Params, s: Slot) -> [Range<u64>; 2] {
    let (k, r) = (p.kernel_lba(s), p.rootfs_lba(s));
    [k..k + p.kernel_blocks, r..r + p.rootfs_blocks]
}

/// Check every prefix of `up`'s writes (0 through all of them).
pub fn replay(up: &Upgrade, p: &Params, v: &Versions) -> Report {
    let mut img = up.pre.clone();
    let mut r = Report {
        prefixes: 0,
        booting: 0,
        inside_env_write: 0,
        env_invalid: 0,
        failing_outside_env: Vec::new(),
        switch_at: None,
        active_changed: Vec::new(),
        last: Err("no prefix".into()),
        problems: Vec::new(),
    };
    let env_runs: Vec<Range<usize>> = up
        .runs(p)
        .into_iter()
        .filter(|(region, _)| *region == Region::Env)
        .map(|(_, run)| run)
        .collect();
    // The slot the pre-upgrade env boots: no prefix before the switch may change it. Its
    // blocks that differ from before are tracked as writes land, so each prefix costs one
    // block compare instead of a whole slot.
    let old = read_env(&up.pre, p)
        .and_then(|e| active_slot(&e))
        .expect("the pre-upgrade image boots");
    let old_blocks = slot_blocks(p, old);
    let mut changed = std::collections::BTreeSet::new();
    for k in 0..=up.log.len() {
        let inside = env_runs.iter().any(|run| run.start < k && k < run.end);
        if inside {
            r.inside_env_write += 1;
        }
        if k > 0 {
            let w = &up.log[k - 1];
            put(&mut img, w);
            if old_blocks.iter().any(|b| b.contains(&w.0)) {
                let at = (w.0 * 512) as usize;
                if img[at..at + 512] == up.pre[at..at + 512] {
                    changed.remove(&w.0);
                } else {
                    changed.insert(w.0);
                }
            }
        }
        r.prefixes += 1;
        let boot = boot_check(&img, p, v);
        if r.switch_at.is_none() && matches!(boot, Ok((s, _)) if s != old) {
            r.switch_at = Some(k);
        }
        if r.switch_at.is_none() && !changed.is_empty() {
            r.active_changed.push(k);
        }
        match &boot {
            Ok(_) => r.booting += 1,
            Err(e) => {
                if read_env(&img, p).is_err() {
                    r.env_invalid += 1;
                }
                if !inside {
                    r.failing_outside_env.push(k);
                }
                if r.problems.len() < 10 {
                    r.problems.push(format!("prefix {k}/{}: {e}", up.log.len()));
                }
            }
        }
        if k == up.log.len() {
            r.last = boot;
        }
    }
    r
}
