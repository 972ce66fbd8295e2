//! End-to-end power cuts: a sample of the replayed upgrade images of
//! fwup-compat/tests/power_cut.rs (which checks every prefix statically) booted under qemu
//! with imgtool's loader and the test kernel, for the redundant and the single-copy env.
//!
//! The upgrade from v1 (slot a) to v2 (slot b) is recorded at 512-byte granularity and cut
//! before its first write, in the middle of the kernel write and of the root filesystem
//! write, inside the last env write where it leaves a copy torn (each copy, for the redundant
//! env), and after its last write. Each image must boot to the root filesystem marker of the
//! version in the slot its env makes active. With a single env, a cut inside the env write
//! leaves no valid env: the loader prints its error and halts (it has no default env to fall
//! back to).

mod common;
#[path = "../loader/test-init/guest.rs"]
mod guest;
#[path = "../fwup-compat/tests/support/power_cut.rs"]
mod power_cut;

use std::fs;

use power_cut::{
    boot_check, record_upgrades, Params, Region, Slot, Upgrade, Versions, ENV_BLOCKS, ENV_LBA,
    ENV_REDUND_LBA,
};
use uboot_env::{Env, Layout};

/// The cuts to boot: (what, number of writes before the cut).
fn samples(up: &Upgrade, p: &Params) -> Vec<(String, usize)> {
    let runs = up.runs(p);
    let of = |want: Region| {
        runs.iter()
            .filter(move |(r, _)| *r == want)
            .map(|(_, run)| run)
    };
    let middle = |want: Region| {
        let run = of(want)
            .max_by_key(|run| run.len())
            .unwrap_or_else(|| panic!("{}: no {want:?} write", up.name));
        run.start + run.len() / 2
    };
    let mut out = vec![
        ("before the first write".to_string(), 0),
        ("mid kernel write".to_string(), middle(Region::Kernel)),
        ("mid rootfs write".to_string(), middle(Region::Rootfs)),
    ];
    // In the last env write, for each copy, the middle one of the cuts that leave it torn
    // (after its CRC block, before its last changed block).
    let env = of(Region::Env).next_back().expect("an env write").clone();
    let (layout, copies): (Layout, &[u64]) = if p.redundant {
        (Layout::Redundant, &[ENV_LBA, ENV_REDUND_LBA])
    } else {
        (Layout::Single, &[ENV_LBA])
    };
    let parse = |img: &[u8], lba: u64| {
        let at = (lba * 512) as usize;
        Env::parse(&img[at..at + (ENV_BLOCKS * 512) as usize], layout)
    };
    let end = up.image_at(env.end);
    let mut img = up.image_at(env.start);
    let mut torn = vec![Vec::new(); copies.len()];
    for k in env.start + 1..env.end {
        up.replay_onto(&mut img, k - 1..k);
        for (c, &lba) in copies.iter().enumerate() {
            if parse(&img, lba).is_err() && parse(&end, lba).is_ok() {
                torn[c].push(k);
            }
        }
    }
    for (c, ks) in torn.iter().enumerate() {
        let Some(&k) = ks.get(ks.len() / 2) else {
            continue;
        };
        let switches = parse(&end, copies[c]).is_ok_and(|e| e.get("nerves_fw_active") == Some("b"));
        let what = match (p.redundant, switches) {
            (false, _) => "inside the env write",
            (true, true) => "inside the env write that switches to slot b",
            (true, false) => "inside the env write of the other copy",
        };
        out.push((what.to_string(), k));
    }
    assert!(
        out.len() > 3,
        "{}: no cut tears the last env write",
        up.name
    );
    out.push(("complete".to_string(), up.log.len()));
    out
}

/// What a sampled image did under qemu.
#[derive(Debug, PartialEq)]
enum Booted {
    /// Linux started from this slot and its init printed this version's marker.
    Slot(Slot, usize),
    /// The loader refused: its error line.
    Refused(String),
}

/// Record the upgrade to v2 in layout `redundant` and boot each sample; returns the number of
/// block writes and, per sample, (what, writes before the cut, what the boot did).
fn boot_samples(redundant: bool) -> (usize, Vec<(String, usize, Booted)>) {
    let dir = tempfile::Builder::new()
        .prefix("imgtool-power-cut-")
        .tempdir()
        .unwrap();
    let d = dir.path();
    let kernel = fs::read(guest::kernel()).unwrap();
    let image_size = u64::from_le_bytes(kernel[0x10..0x18].try_into().unwrap());
    let p = Params {
        redundant,
        kernel_blocks: (kernel.len() as u64)
            .max(image_size)
            .div_ceil(512)
            .next_multiple_of(2048),
        rootfs_blocks: 4096,
        cmdline: format!("rootfstype=squashfs {}", guest::CMDLINE),
    };
    let v = Versions {
        kernels: vec![kernel.clone(), kernel],
        rootfs: ["ROOTFS-V1", "ROOTFS-V2"]
            .iter()
            .map(|m| fs::read(guest::rootfs(d, m)).unwrap())
            .collect(),
    };
    let ups = record_upgrades(d, &p, &v);
    let up = &ups[0];
    let mut out = Vec::new();
    for (what, k) in samples(up, &p) {
        let img = d.join(format!("cut-{k}.img"));
        let bytes = up.image_at(k);
        let expect = boot_check(&bytes, &p, &v);
        fs::write(&img, bytes).unwrap();
        let ctx = format!(
            "{} env, {what} (cut after {k} of {} writes)",
            if redundant { "redundant" } else { "single" },
            up.log.len()
        );
        match expect {
            Ok((slot, ver)) => {
                let console = guest::boot_ok(&img, "init: marker: ROOTFS-V[12]", &[]);
                let s = slot.name();
                assert!(
                    console.contains(&format!("Starting Linux (slot {s})")),
                    "{ctx}: not slot {s}:\n{console}"
                );
                assert!(
                    console.contains(&format!("init: marker: ROOTFS-V{}", ver + 1)),
                    "{ctx}: not version {}:\n{console}",
                    ver + 1
                );
                if redundant {
                    assert!(
                        console.contains("loader: env: LBA 16 and 272 (redundant, 131072 bytes), from the disk's env locator"),
                        "{ctx}:\n{console}"
                    );
                }
                if k == up.log.len() {
                    // The new slot is on trial: the loader counts the boot.
                    assert_eq!(slot, Slot::B, "{ctx}");
                    assert!(
                        console.contains("upgrade_available=1: trying slot b, bootcount=1"),
                        "{ctx}:\n{console}"
                    );
                }
                out.push((what, k, Booted::Slot(slot, ver)));
            }
            // The static check found no valid env: the loader must say so and stop.
            Err(_) => out.push((what, k, Booted::Refused(guest::boot_refused(&img)))),
        }
        fs::remove_file(&img).unwrap();
    }
    (up.log.len(), out)
}

fn show(b: &Booted) -> String {
    match b {
        Booted::Slot(s, v) => format!("boots slot {}, ROOTFS-V{}", s.name(), v + 1),
        Booted::Refused(line) => line.clone(),
    }
}

#[test]
fn sampled_power_cuts_boot_with_a_redundant_env() {
    let (writes, runs) = boot_samples(true);
    for (what, k, booted) in &runs {
        println!(
            "redundant env, {what}, after {k} of {writes} writes: {}",
            show(booted)
        );
        let want = match what.as_str() {
            "complete" | "inside the env write of the other copy" => Booted::Slot(Slot::B, 1),
            // A torn new copy: the old one, still valid, keeps slot a.
            _ => Booted::Slot(Slot::A, 0),
        };
        assert_eq!(booted, &want, "{what}");
    }
    assert!(runs
        .iter()
        .any(|(what, ..)| what == "inside the env write that switches to slot b"));
}

#[test]
fn a_cut_inside_the_single_env_write_halts_the_loader() {
    let (writes, runs) = boot_samples(false);
    for (what, k, booted) in &runs {
        println!(
            "single env, {what}, after {k} of {writes} writes: {}",
            show(booted)
        );
        match what.as_str() {
            "inside the env write" => {
                let Booted::Refused(line) = booted else {
                    panic!("{what}: {booted:?}");
                };
                assert!(
                    line.starts_with(
                        "loader: error: no valid U-Boot env at LBA 16 (131072 bytes): bad CRC32"
                    ),
                    "{line}"
                );
            }
            "complete" => assert_eq!(booted, &Booted::Slot(Slot::B, 1), "{what}"),
            _ => assert_eq!(booted, &Booted::Slot(Slot::A, 0), "{what}"),
        }
    }
}
