//! End-to-end tests of `imgtool build`: layouts in, images out, checked with real tools
//! (sfdisk, fw_printenv, unsquashfs, fsck.fat, mdir).

mod common;

use std::fs;
use std::path::Path;

use common::*;

/// Run `imgtool build` on YAML text in `dir`; returns (exit code, stderr).
fn build(dir: &Path, yaml: &str, out: &str, extra: &[&str]) -> (i32, String) {
    fs::write(dir.join("layout.yaml"), yaml).unwrap();
    let o = imgtool()
        .current_dir(dir)
        .args(["build", "layout.yaml", "-o", out])
        .args(extra)
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// A layout error: exit 2, a message naming the line and field, no output file left behind.
fn assert_layout_error(yaml: &str, files: &[(&str, usize)], want: &[&str]) {
    let t = tempfile::tempdir().unwrap();
    for (name, len) in files {
        fs::write(t.path().join(name), vec![0x5a; *len]).unwrap();
    }
    let (code, err) = build(t.path(), yaml, "out.img", &[]);
    assert_eq!(code, 2, "want exit 2, got {code}: {err}");
    for w in want {
        assert!(err.contains(w), "error should mention {w:?}: {err}");
    }
    let left: Vec<_> = fs::read_dir(t.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.contains("img"))
        .collect();
    assert!(
        left.is_empty(),
        "no output may be left behind, found {left:?}"
    );
}

#[test]
fn overlapping_regions_are_refused_with_the_line() {
    assert_layout_error(
        "regions:\n  - name: a\n    offset: 100 blocks\n    size: 50 blocks\n  - name: b\n    offset: 120 blocks\n    size: 10 blocks\n",
        &[],
        &["layout.yaml:5", "`b`", "overlaps region `a`"],
    );
}

#[test]
fn a_file_larger_than_its_slot_is_refused() {
    assert_layout_error(
        "regions:\n  - name: kernel\n    offset: 8 blocks\n    size: 2 blocks\n    fill: { file: big.bin }\n",
        &[("big.bin", 1025)],
        &["layout.yaml:2", "size", "larger than the region"],
    );
}

#[test]
fn an_offset_past_a_fixed_image_size_is_refused() {
    assert_layout_error(
        "size: 1 MiB\nregions:\n  - name: far\n    offset: 4096 blocks\n    size: 8 blocks\n",
        &[],
        &["layout.yaml:3", "offset", "grow the image `size`"],
    );
}

#[test]
fn a_bare_number_is_refused_with_the_field_and_the_fix() {
    assert_layout_error(
        "regions:\n  - name: a\n    offset: 8 blocks\n    size: 16\n",
        &[],
        &["layout.yaml:4", "size", "`16 B`", "`16 blocks`"],
    );
    assert_layout_error(
        "regions:\n  - name: a\n    offset: 8 blocks\n    size: 64MB\n",
        &[],
        &["layout.yaml:4", "size", "ambiguous", "`64 MiB`"],
    );
}

#[test]
fn an_unknown_key_is_refused_with_its_line() {
    assert_layout_error(
        "regions:\n  - name: a\n    offset: 8 blocks\n    sise: 8\n",
        &[],
        &["line 4", "unknown field `sise`"],
    );
}

#[test]
fn a_missing_input_file_is_named() {
    assert_layout_error(
        "regions:\n  - name: k\n    offset: 8 blocks\n    fill: { file: nope.bin }\n",
        &[],
        &["layout.yaml:2", "fill.file", "nope.bin"],
    );
}

#[test]
fn files_patterns_and_units_land_where_the_layout_says() {
    let t = tempfile::tempdir().unwrap();
    let data: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8 + 1).collect();
    fs::write(t.path().join("k.bin"), &data).unwrap();
    let yaml = "inputs: { k: k.bin }\nsize: 2 MiB\nregions:\n  - name: k\n    offset: 8 KiB\n    size: 16 blocks\n    fill: { file: \"${k}\" }\n  - name: ff\n    after: k\n    size: 4 KiB\n    fill: { pattern: 0xff }\n";
    let (code, err) = build(t.path(), yaml, "out.img", &[]);
    assert_eq!(code, 0, "{err}");
    let img = fs::read(t.path().join("out.img")).unwrap();
    assert_eq!(img.len(), 2 << 20);
    assert_eq!(&img[8192..8192 + 3000], &data[..]);
    assert!(
        img[8192 + 3000..8192 + 8192].iter().all(|&b| b == 0),
        "the slot's tail is zero"
    );
    assert!(
        img[16384..16384 + 4096].iter().all(|&b| b == 0xff),
        "`after: k` starts where k ends"
    );
    assert!(img[16384 + 4096..].iter().all(|&b| b == 0));
}

fn sfdisk_json(img: &Path) -> serde_json::Value {
    let sfdisk = require_tool("sfdisk");
    let out = run_ok(std::process::Command::new(sfdisk).arg("--json").arg(img));
    serde_json::from_str::<serde_json::Value>(&out).unwrap()["partitiontable"].clone()
}

#[test]
fn sfdisk_agrees_with_an_mbr_layout() {
    let t = tempfile::tempdir().unwrap();
    let yaml = "table: { type: mbr, disk-id: 0x12345678 }\nregions:\n  - name: a\n    offset: 2048 blocks\n    size: 4096 blocks\n    partition: { number: 1, type: fat32, boot: true }\n  - name: b\n    after: a\n    size: 1 MiB\n    partition: { number: 2, type: 0x83 }\n";
    let (code, err) = build(t.path(), yaml, "m.img", &[]);
    assert_eq!(code, 0, "{err}");
    let pt = sfdisk_json(&t.path().join("m.img"));
    assert_eq!(pt["label"], "dos");
    assert_eq!(pt["id"], "0x12345678");
    let p = pt["partitions"].as_array().unwrap();
    assert_eq!(p.len(), 2);
    assert_eq!(
        (p[0]["start"].as_u64(), p[0]["size"].as_u64()),
        (Some(2048), Some(4096))
    );
    assert_eq!(p[0]["type"], "c");
    assert_eq!(p[0]["bootable"], true);
    assert_eq!(
        (p[1]["start"].as_u64(), p[1]["size"].as_u64()),
        (Some(6144), Some(2048))
    );
    assert_eq!(p[1]["type"], "83");
    assert!(p[1].get("bootable").is_none());
}

#[test]
fn sfdisk_agrees_with_a_gpt_layout_and_expand_fills_the_disk() {
    let t = tempfile::tempdir().unwrap();
    let yaml = "name: gpt-test\ntable: { type: gpt, disk-id: 11111111-2222-4333-8444-555555555555 }\nsize: 8 MiB\nregions:\n  - name: boot\n    offset: 1 MiB\n    size: 2 MiB\n    partition: { number: 1, type: efi, label: BOOT, boot: true }\n  - name: root\n    after: boot\n    size: 1 MiB\n    partition: { number: 2, type: linux, label: rootfs, guid: aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee, expand: true }\n";
    let (code, err) = build(t.path(), yaml, "g.img", &[]);
    assert_eq!(code, 0, "{err}");
    let pt = sfdisk_json(&t.path().join("g.img"));
    assert_eq!(pt["label"], "gpt");
    assert_eq!(pt["id"], "11111111-2222-4333-8444-555555555555");
    let p = pt["partitions"].as_array().unwrap();
    assert_eq!(p[0]["type"], "C12A7328-F81F-11D2-BA4B-00A0C93EC93B");
    assert_eq!(p[0]["name"], "BOOT");
    assert_eq!(p[0]["attrs"], "LegacyBIOSBootable");
    assert_eq!(
        (p[0]["start"].as_u64(), p[0]["size"].as_u64()),
        (Some(2048), Some(4096))
    );
    assert_eq!(p[1]["uuid"], "AAAAAAAA-BBBB-4CCC-8DDD-EEEEEEEEEEEE");
    // expand: up to the last usable LBA, before the 33-block backup GPT.
    let last_usable = pt["lastlba"].as_u64().unwrap();
    assert_eq!(last_usable, 16384 - 34);
    assert_eq!(
        p[1]["start"].as_u64().unwrap() + p[1]["size"].as_u64().unwrap() - 1,
        last_usable
    );
}

/// fw_printenv (u-boot-tools) reads the env the layout wrote, single and redundant.
fn env_roundtrip(redundant: bool) {
    let t = tempfile::tempdir().unwrap();
    let redund = if redundant {
        "\n        redundant-offset: 272 blocks"
    } else {
        ""
    };
    let yaml = format!(
        "regions:\n  - name: env\n    offset: 16 blocks\n    size: 256 blocks\n    fill:\n      uboot-env:{redund}\n        vars:\n          a.kernel_lba: ${{lba:kernel_a}}\n          bootcount: 0\n          args: root=/dev/vda1 console=ttyAMA0\n  - name: kernel_a\n    offset: 600 blocks\n    size: 8 blocks\n"
    );
    let (code, err) = build(t.path(), &yaml, "e.img", &[]);
    assert_eq!(code, 0, "{err}");
    let img = t.path().join("e.img");
    let mut cfg = format!("{} 0x2000 0x20000\n", img.display());
    if redundant {
        cfg += &format!("{} 0x22000 0x20000\n", img.display());
    }
    fs::write(t.path().join("fw_env.config"), cfg).unwrap();
    let out = run_ok(
        std::process::Command::new(require_tool("fw_printenv"))
            .arg("-c")
            .arg(t.path().join("fw_env.config")),
    );
    assert_eq!(
        out,
        "a.kernel_lba=600\nargs=root=/dev/vda1 console=ttyAMA0\nbootcount=0\n"
    );
}

#[test]
fn fw_printenv_reads_a_single_env() {
    env_roundtrip(false);
}

#[test]
fn fw_printenv_reads_a_redundant_env() {
    env_roundtrip(true);
}

#[test]
fn the_same_layout_gives_the_same_bytes() {
    let t = tempfile::tempdir().unwrap();
    fs::write(t.path().join("k.bin"), b"kernel bytes").unwrap();
    let yaml = "table: { type: gpt }\nregions:\n  - name: env\n    offset: 64 blocks\n    size: 16 blocks\n    fill: { uboot-env: { vars: { x: 1 } } }\n  - name: k\n    after: env\n    size: 2048 blocks\n    fill: { file: k.bin }\n    partition: { number: 1, type: linux }\n";
    assert_eq!(build(t.path(), yaml, "one.img", &[]).0, 0);
    assert_eq!(build(t.path(), yaml, "two.img", &[]).0, 0);
    assert_eq!(
        sha256(&t.path().join("one.img")),
        sha256(&t.path().join("two.img"))
    );
}

#[test]
fn a_fat_partition_is_clean_for_fsck_and_mtools() {
    let t = tempfile::tempdir().unwrap();
    fs::write(t.path().join("config.txt"), "kernel=Image\n").unwrap();
    fs::write(t.path().join("big.bin"), vec![0x42u8; 300_000]).unwrap();
    let yaml = "table: { type: mbr }\nregions:\n  - name: boot\n    offset: 2048 blocks\n    size: 16 MiB\n    partition: { number: 1, type: fat16, boot: true }\n    fill:\n      fat:\n        label: BOOT\n        files: { config.txt: config.txt, overlays/big.bin: big.bin }\n";
    let (code, err) = build(t.path(), yaml, "f.img", &[]);
    assert_eq!(code, 0, "{err}");
    let img = t.path().join("f.img");
    let bytes = fs::read(&img).unwrap();
    let part = t.path().join("part.fat");
    fs::write(&part, &bytes[2048 * 512..(2048 * 512 + (16 << 20))]).unwrap();
    run_ok(
        std::process::Command::new(require_tool("fsck.fat"))
            .arg("-n")
            .arg(&part),
    );
    let dir = run_ok(
        std::process::Command::new(require_tool("mdir"))
            .args(["-/", "-b", "-i"])
            .arg(&part)
            .arg("::"),
    );
    assert!(dir.contains("::/config.txt"), "{dir}");
    assert!(dir.contains("::/overlays/big.bin"), "{dir}");
    let got = std::process::Command::new(require_tool("mtype"))
        .arg("-i")
        .arg(&part)
        .arg("::/config.txt")
        .output()
        .unwrap();
    assert_eq!(got.stdout, b"kernel=Image\n");
}

/// A fake arm64 Image: the header fields `inspect` reads (text_offset, image_size, magic).
fn fake_arm64_image(len: usize) -> Vec<u8> {
    let mut k = vec![0x11u8; len];
    k[8..16].copy_from_slice(&0x80000u64.to_le_bytes());
    k[16..24].copy_from_slice(&(len as u64).to_le_bytes());
    k[56..60].copy_from_slice(b"ARM\x64");
    k
}

#[test]
fn the_builtin_nerves_layout_gives_a_complete_disk() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let kernel = fake_arm64_image(1 << 20);
    fs::write(d.join("Image"), &kernel).unwrap();
    let root = d.join("root");
    fs::create_dir_all(root.join("sbin")).unwrap();
    fs::create_dir_all(root.join("etc")).unwrap();
    fs::write(root.join("sbin/init"), b"#!/bin/sh\necho hi\n").unwrap();
    fs::write(root.join("etc/hostname"), b"guest\n").unwrap();
    std::os::unix::fs::symlink("../sbin/init", root.join("etc/init")).unwrap();

    let o = imgtool()
        .current_dir(d)
        .args(["build", "nerves-qemu-aarch64", "-o", "special.img"])
        .args([
            "-D",
            "kernel=Image",
            "-D",
            "rootfs=root",
            "-D",
            "version=1.2.3",
            "-D",
            "serial=SN-0042",
        ])
        .output()
        .unwrap();
    assert_ok(&o, "imgtool build nerves-qemu-aarch64");
    let img = d.join("special.img");

    // The partition table is the Nerves system's (nerves_system_qemu_aarch64 v0.4.0,
    // fwup-common.conf): unaligned, right after kernel B, no boot flag, no disk signature.
    let pt = sfdisk_json(&img);
    assert_eq!(pt["label"], "dos");
    assert_eq!(pt["id"], "0x00000000");
    let p = pt["partitions"].as_array().unwrap();
    let geo: Vec<_> = p
        .iter()
        .map(|p| (p["start"].as_u64().unwrap(), p["size"].as_u64().unwrap()))
        .collect();
    assert_eq!(geo, [(205072, 102400), (307472, 102400), (409872, 307200)]);
    assert!(p
        .iter()
        .all(|p| p["bootable"].is_null() && p["type"] == "83"));

    // The env, read by u-boot-tools: exactly the variables Nerves' complete task writes, with
    // its values for platform, architecture and the application partition.
    let cfg = d.join("fw_env.config");
    fs::write(&cfg, format!("{} 0x2000 0x20000\n", img.display())).unwrap();
    let env = run_ok(
        std::process::Command::new(require_tool("fw_printenv"))
            .arg("-c")
            .arg(&cfg),
    );
    let want = "a.kernel_args=root=/dev/vda1 rootfstype=squashfs
a.kernel_lba=272
a.nerves_fw_application_part0_devpath=/dev/vda3
a.nerves_fw_application_part0_fstype=f2fs
a.nerves_fw_application_part0_target=/root
a.nerves_fw_architecture=arm
a.nerves_fw_author=imgtool
a.nerves_fw_description=
a.nerves_fw_misc=
a.nerves_fw_platform=qemu_aarch64
a.nerves_fw_product=imgtool guest
a.nerves_fw_uuid=
a.nerves_fw_vcs_identifier=
a.nerves_fw_version=1.2.3
b.kernel_args=root=/dev/vda2 rootfstype=squashfs
b.kernel_lba=102672
bootcount=0
nerves_fw_active=a
nerves_fw_devpath=/dev/vda
nerves_serial_number=SN-0042
upgrade_available=0
";
    assert_eq!(env, want);
    // Nerves' env sits where little_loader reads it, so no env locator is written: sector 0
    // is the bare MBR, as fwup writes it.
    let bytes = fs::read(&img).unwrap();
    assert!(bytes[..440].iter().all(|&b| b == 0));

    // Kernel A's bytes at LBA 272; slot B empty.
    assert_eq!(&bytes[272 * 512..272 * 512 + kernel.len()], &kernel[..]);
    assert!(bytes[102672 * 512..102672 * 512 + 4096]
        .iter()
        .all(|&b| b == 0));

    // Rootfs A is a squashfs that unsquashfs reads back exactly.
    let part = d.join("rootfs_a.sqfs");
    fs::write(&part, &bytes[205072 * 512..(205072 + 102400) * 512]).unwrap();
    let out = d.join("x");
    run_ok(
        std::process::Command::new(require_tool("unsquashfs"))
            .args(["-no-xattrs", "-d"])
            .arg(&out)
            .arg(&part),
    );
    assert_eq!(
        fs::read(out.join("sbin/init")).unwrap(),
        b"#!/bin/sh\necho hi\n"
    );
    assert_eq!(
        fs::read_link(out.join("etc/init")).unwrap(),
        Path::new("../sbin/init")
    );

    // inspect names every part.
    let js = run_ok(imgtool().args(["inspect", "--json"]).arg(&img));
    let v: serde_json::Value = serde_json::from_str(&js).unwrap();
    let text = v.to_string();
    for want in [
        "\"squashfs\"",
        "\"f2fs\"",
        "APPDATA",
        "arm64",
        "nerves_fw_active",
    ] {
        assert!(text.contains(want), "inspect --json lacks {want}: {text}");
    }

    // Sparse: the 200+ MiB disk allocates a few MiB.
    use std::os::unix::fs::MetadataExt;
    let md = fs::metadata(&img).unwrap();
    assert!(md.len() > 200 << 20);
    assert!(
        md.blocks() * 512 < 16 << 20,
        "{} bytes allocated for a {} byte image",
        md.blocks() * 512,
        md.len()
    );
}
