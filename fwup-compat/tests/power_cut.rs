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
//! test counts them and checks that every other prefix boots. In both layouts the slot the
//! old env boots is byte-identical to before the upgrade until the env switches away from it,
//! and the whole log boots the new version.
//!
//! The recording and the replay are support/power_cut.rs's, which tests/power_cut_boot.rs
//! shares (it boots a sample of the same prefixes under qemu).

mod support;

use std::path::Path;
use support::power_cut::{record_upgrades, replay, Params, Report, Slot, Versions};

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

/// The layout: kernels of 1024 blocks, root filesystems of 4096 (a 20480-block disk).
fn params(redundant: bool) -> Params {
    Params {
        redundant,
        kernel_blocks: 1024,
        rootfs_blocks: 4096,
        cmdline: "ro".to_string(),
    }
}

/// What every replay must show, whatever the env layout: the slot the old env boots stays
/// untouched until the switch, the switch happens, and the whole log boots `want` (slot,
/// version index).
fn check_common(name: &str, r: &Report, want: (Slot, usize)) {
    assert!(
        r.active_changed.is_empty(),
        "{name}: prefixes {:?}... changed the active slot before the env switch",
        &r.active_changed[..r.active_changed.len().min(5)]
    );
    assert!(r.switch_at.is_some(), "{name}: the env never switches");
    assert_eq!(r.last, Ok(want), "{name}: the last prefix");
}

/// The slot and version each recorded upgrade ends on: v2 in b, then v1 back in a.
const ENDS: [(Slot, usize); 2] = [(Slot::B, 1), (Slot::A, 0)];

/// Make v1 and v2 archives, apply v1 `complete`, then upgrade to v2 (slot b) and back to v1
/// (slot a), replaying every prefix of each upgrade's writes.
fn run_layout(redundant: bool) -> Vec<(String, Report)> {
    let dir = tempfile::tempdir().unwrap();
    let p = params(redundant);
    assert_eq!(p.disk_blocks(), 20480);
    let v = Versions {
        kernels: vec![kernel(1, 160 * 1024 + 300), kernel(2, 150 * 1024 + 7)],
        rootfs: vec![rootfs(1), rootfs(2)],
    };
    record_upgrades(dir.path(), &p, &v)
        .iter()
        .map(|up| (up.name.clone(), replay(up, &p, &v)))
        .collect()
}
#[test]
fn every_power_cut_prefix_boots_with_a_redundant_env() {
    let runs = run_layout(true);
    for ((name, r), want) in runs.iter().zip(ENDS) {
        println!(
            "redundant env, {name}: {}/{} prefixes boot, {} end inside an env write, env switches at prefix {:?}",
            r.booting, r.prefixes, r.inside_env_write, r.switch_at
        );
        check_common(name, r, want);
        assert!(
            r.booting == r.prefixes,
            "{name}: {} of {} prefixes do not boot:\n{}",
            r.prefixes - r.booting,
            r.prefixes,
            r.problems.join("\n")
        );
        assert!(r.prefixes > 500, "{name}: too few writes recorded");
    }
    // The writes each upgrade makes (v2 to slot b, v1 back to slot a), as recorded.
    let prefixes: Vec<usize> = runs.iter().map(|(_, r)| r.prefixes).collect();
    assert_eq!(prefixes, [1537, 1281]);
}

#[test]
fn single_copy_env_fails_only_inside_the_env_write() {
    let runs = run_layout(false);
    for ((name, r), want) in runs.iter().zip(ENDS) {
        println!(
            "single env, {name}: {}/{} prefixes boot, {} end inside the env write, {} of them torn (no valid env: the loader stops), env switches at prefix {:?}",
            r.booting, r.prefixes, r.inside_env_write, r.env_invalid, r.switch_at
        );
        // Every prefix that does not boot ends inside the env write, with a torn env.
        assert!(
            r.failing_outside_env.is_empty(),
            "{name}: prefixes {:?} do not boot outside the env write:\n{}",
            r.failing_outside_env,
            r.problems.join("\n")
        );
        assert_eq!(
            r.booting + r.env_invalid,
            r.prefixes,
            "{name}:\n{}",
            r.problems.join("\n")
        );
        check_common(name, r, want);
    }
    // (prefixes, inside the env write, torn env) per upgrade, as the README states them.
    let counts: Vec<(usize, usize, usize)> = runs
        .iter()
        .map(|(_, r)| (r.prefixes, r.inside_env_write, r.env_invalid))
        .collect();
    assert_eq!(counts, [(1281, 255, 3), (1281, 255, 7)]);
}
