//! End-to-end tests for the partition-table crate: real `sfdisk` agrees with what we write and
//! we read what sfdisk writes; and the bytes equal real fwup 1.16's (image sha256 values
//! recorded in ../shared/fixtures/fwup).

mod common;

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use partition_table::{
    read, write_gpt, write_mbr, GptPartition, GptSpec, Guid, MbrPartition, MbrSpec, Table,
};
use serde_json::Value;

fn sfdisk_json(img: &Path) -> Value {
    let out = run_ok(Command::new(require_tool("sfdisk")).arg("--json").arg(img));
    serde_json::from_str::<Value>(&out).unwrap()["partitiontable"].clone()
}

fn sfdisk_verify(img: &Path) {
    run_ok(
        Command::new(require_tool("sfdisk"))
            .arg("--verify")
            .arg(img),
    );
}

fn sparse_image(dir: &Path, size: u64) -> (PathBuf, File) {
    let p = dir.join("disk.img");
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&p)
        .unwrap();
    f.set_len(size).unwrap();
    (p, f)
}

fn guid(s: &str) -> Guid {
    s.parse().unwrap()
}

#[test]
fn mbr_agrees_with_sfdisk_both_ways() {
    let tmp = tempfile::tempdir().unwrap();
    let size = 64u64 << 20;
    let (img, mut f) = sparse_image(tmp.path(), size);
    let spec = MbrSpec {
        disk_signature: 0xdead_beef,
        partitions: [
            Some(MbrPartition {
                start_lba: 2048,
                sectors: 8192,
                kind: 0x0c,
                bootable: true,
            }),
            Some(MbrPartition {
                start_lba: 10240,
                sectors: 20480,
                kind: 0x83,
                bootable: false,
            }),
            None,
            Some(MbrPartition {
                start_lba: 40960,
                sectors: 2048,
                kind: 0x82,
                bootable: false,
            }),
        ],
        ..Default::default()
    };
    write_mbr(&mut f, &spec, size).unwrap();
    drop(f);
    sfdisk_verify(&img);
    let t = sfdisk_json(&img);
    assert_eq!(t["label"], "dos");
    assert_eq!(t["id"], "0xdeadbeef");
    let parts = t["partitions"].as_array().unwrap();
    let got: Vec<(String, u64, u64, String, bool)> = parts
        .iter()
        .map(|p| {
            (
                p["node"]
                    .as_str()
                    .unwrap()
                    .rsplit("disk.img")
                    .next()
                    .unwrap()
                    .to_string(),
                p["start"].as_u64().unwrap(),
                p["size"].as_u64().unwrap(),
                p["type"].as_str().unwrap().to_string(),
                p["bootable"].as_bool().unwrap_or(false),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("1".into(), 2048, 8192, "c".into(), true),
            ("2".into(), 10240, 20480, "83".into(), false),
            ("4".into(), 40960, 2048, "82".into(), false),
        ]
    );
    // The image stays sparse: only sector 0 was written.
    let used = Command::new("du").arg("-k").arg(&img).output().unwrap();
    let kib: u64 = String::from_utf8_lossy(&used.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(kib <= 8, "image uses {kib} KiB");

    // sfdisk writes, we read.
    let script = "label: dos\nlabel-id: 0x12345678\nstart=4096, size=4096, type=83, bootable\nstart=8192, size=16384, type=c\n";
    run_ok(
        Command::new(require_tool("sfdisk"))
            .arg("-q")
            .arg(&img)
            .stdin_str(script),
    );
    let table = read(&mut File::open(&img).unwrap()).unwrap();
    let want = MbrSpec {
        disk_signature: 0x1234_5678,
        partitions: [
            Some(MbrPartition {
                start_lba: 4096,
                sectors: 4096,
                kind: 0x83,
                bootable: true,
            }),
            Some(MbrPartition {
                start_lba: 8192,
                sectors: 16384,
                kind: 0x0c,
                bootable: false,
            }),
            None,
            None,
        ],
        ..Default::default()
    };
    assert_eq!(table, Some(Table::Mbr(want)));
}

#[test]
fn gpt_agrees_with_sfdisk_both_ways() {
    let tmp = tempfile::tempdir().unwrap();
    let size = 64u64 << 20;
    let (img, mut f) = sparse_image(tmp.path(), size);
    let linux = guid("0fc63daf-8483-4772-8e79-3d69e47d8e47");
    let spec = GptSpec {
        disk_guid: guid("b443fbeb-2c93-481b-88b3-0ecb0aeba911"),
        partitions: vec![
            Some(GptPartition {
                start_lba: 2048,
                sectors: 4096,
                type_guid: guid("c12a7328-f81f-11d2-ba4b-00a0c93ec93b"),
                guid: guid("5278721d-0089-4768-85df-b8f1b97e6684"),
                name: "efi part".into(),
                attributes: 0,
                bootable: true,
            }),
            Some(GptPartition {
                start_lba: 8192,
                sectors: 8192,
                type_guid: linux,
                guid: guid("fcc205c8-2f1c-4dcd-bef4-7b209aa15cca"),
                name: "rootfs.a".into(),
                attributes: 0,
                bootable: false,
            }),
            Some(GptPartition {
                start_lba: 16384,
                sectors: 131072 - 34 - 16384 + 1,
                type_guid: linux,
                guid: guid("44d96c6b-5b5c-4a3a-9e0a-3c1f0d1e2a7b"),
                name: "app".into(),
                attributes: 0,
                bootable: false,
            }),
        ],
    };
    write_gpt(&mut f, &spec, size).unwrap();
    drop(f);
    sfdisk_verify(&img);
    let t = sfdisk_json(&img);
    assert_eq!(t["label"], "gpt");
    assert_eq!(t["id"], "B443FBEB-2C93-481B-88B3-0ECB0AEBA911");
    assert_eq!(
        (t["firstlba"].as_u64(), t["lastlba"].as_u64()),
        (Some(34), Some(131038))
    );
    let parts = t["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), 3);
    for (p, s) in parts.iter().zip(spec.partitions.iter().flatten()) {
        assert_eq!(p["start"].as_u64(), Some(s.start_lba));
        assert_eq!(p["size"].as_u64(), Some(s.sectors));
        assert_eq!(
            p["type"].as_str().unwrap(),
            s.type_guid.to_string().to_uppercase()
        );
        assert_eq!(
            p["uuid"].as_str().unwrap(),
            s.guid.to_string().to_uppercase()
        );
        assert_eq!(p["name"].as_str().unwrap(), s.name);
        let attrs = p["attrs"].as_str().unwrap_or("");
        assert_eq!(attrs == "LegacyBIOSBootable", s.bootable, "{attrs}");
    }

    // sfdisk writes, we read (with a gap at slot 2 via `1:` / `3:` numbering).
    let script = "label: gpt\nlabel-id: 01234567-89AB-CDEF-0123-456789ABCDEF\n\
        1: start=2048, size=2048, type=0FC63DAF-8483-4772-8E79-3D69E47D8E47, uuid=11111111-2222-3333-4444-555555555555, name=one, attrs=\"LegacyBIOSBootable\"\n\
        3: start=8192, size=2048, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, uuid=AAAAAAAA-BBBB-CCCC-DDDD-EEEEEEEEEEEE, name=three\n";
    run_ok(
        Command::new(require_tool("sfdisk"))
            .arg("-q")
            .arg(&img)
            .stdin_str(script),
    );
    let Some(Table::Gpt(g)) = read(&mut File::open(&img).unwrap()).unwrap() else {
        panic!("expected a GPT");
    };
    assert_eq!(g.disk_guid, guid("01234567-89ab-cdef-0123-456789abcdef"));
    assert_eq!(g.partitions.len(), 3);
    assert!(g.partitions[1].is_none());
    let one = g.partitions[0].as_ref().unwrap();
    assert_eq!(
        (one.start_lba, one.sectors, one.name.as_str(), one.bootable),
        (2048, 2048, "one", true)
    );
    assert_eq!(one.guid, guid("11111111-2222-3333-4444-555555555555"));
    let three = g.partitions[2].as_ref().unwrap();
    assert_eq!(
        three.type_guid,
        guid("c12a7328-f81f-11d2-ba4b-00a0c93ec93b")
    );
    assert_eq!((three.name.as_str(), three.bootable), ("three", false));
}

trait StdinStr {
    fn stdin_str(&mut self, s: &str) -> &mut Self;
}

impl StdinStr for Command {
    /// Feed `s` on stdin (through a temp file, so `run_ok` can keep using `output()`).
    fn stdin_str(&mut self, s: &str) -> &mut Self {
        let mut f = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut f, s.as_bytes()).unwrap();
        std::io::Seek::rewind(&mut f).unwrap();
        self.stdin(f)
    }
}

fn fixture_dir(case: &str) -> PathBuf {
    fwup_fixtures().join(case)
}

/// fwup raw_write / raw_memset, in 512-byte blocks.
fn put(f: &File, block: u64, bytes: &[u8]) {
    f.write_all_at(bytes, block * 512).unwrap();
}

/// 03-gpt: protective MBR, both GPTs, boot.bin at block 64. fwup sized the disk from the
/// partitions (8256 + 33 + 1 = 8290 blocks) and padded the file to 128 KiB.
#[test]
fn fwup_fixture_03_gpt_is_byte_identical() {
    let dir = fixture_dir("03-gpt");
    let tmp = tempfile::tempdir().unwrap();
    let (img, mut f) = sparse_image(tmp.path(), 4325376);
    let linux = guid("0fc63daf-8483-4772-8e79-3d69e47d8e47");
    let part = |start, sectors, t, g: &str, name: &str, boot| {
        Some(GptPartition {
            start_lba: start,
            sectors,
            type_guid: t,
            guid: guid(g),
            name: name.into(),
            attributes: 0,
            bootable: boot,
        })
    };
    let spec = GptSpec {
        disk_guid: guid("b443fbeb-2c93-481b-88b3-0ecb0aeba911"),
        partitions: vec![
            part(
                64,
                2048,
                guid("c12a7328-f81f-11d2-ba4b-00a0c93ec93b"),
                "5278721d-0089-4768-85df-b8f1b97e6684",
                "efi-part.vfat",
                true,
            ),
            part(
                2112,
                4096,
                linux,
                "fcc205c8-2f1c-4dcd-bef4-7b209aa15cca",
                "rootfs.ext2",
                false,
            ),
            part(
                6208,
                2048,
                linux,
                "44d96c6b-5b5c-4a3a-9e0a-3c1f0d1e2a7b",
                "app",
                false,
            ),
        ],
    };
    write_gpt(&mut f, &spec, 8290 * 512).unwrap();
    put(&f, 64, &fs::read(dir.join("boot.bin")).unwrap());
    drop(f);
    assert_eq!(
        sha256(&img),
        "ad7875926565a433c20ee44ad992513aa8dafc482283ac994e0eda45e7b60b79"
    );
}

/// 04-mbr-bigoffset: MBR with signature, boot flag and types; memsets; a write past 4 GiB.
#[test]
fn fwup_fixture_04_mbr_is_byte_identical() {
    let dir = fixture_dir("04-mbr-bigoffset");
    let tmp = tempfile::tempdir().unwrap();
    let (img, mut f) = sparse_image(tmp.path(), 4300865536);
    let p = |start, sectors, kind, boot| {
        Some(MbrPartition {
            start_lba: start,
            sectors,
            kind,
            bootable: boot,
        })
    };
    let spec = MbrSpec {
        disk_signature: 0x0102_0304,
        partitions: [
            p(63, 77261, 0x0c, true),
            p(77324, 289044, 0x83, false),
            p(366368, 8388608, 0x83, false),
            p(8754976, 2048, 0x82, false),
        ],
        ..Default::default()
    };
    // The partitions end past the file; fwup does not check, so give their end as disk size.
    write_mbr(&mut f, &spec, 8757024 * 512).unwrap();
    put(&f, 63, &[0xa5; 16 * 512]);
    put(&f, 77324, &[0; 8 * 512]);
    put(&f, 77324, &fs::read(dir.join("data.bin")).unwrap());
    put(&f, 8400000, &fs::read(dir.join("far.bin")).unwrap());
    put(&f, 366368, &[0x5a; 32 * 512]);
    drop(f);
    assert_eq!(
        sha256(&img),
        "73cb9ecafa32bcbaa91a0a53cc40993a5d233b90f763ea380a4e2c4029714ab5"
    );
    let Some(Table::Mbr(back)) = read(&mut File::open(&img).unwrap()).unwrap() else {
        panic!()
    };
    assert_eq!(back, spec);
}

/// 01-nerves-qemu-aarch64, task complete: MBR, U-Boot env (via uboot-env with fwup's
/// options), kernel, rootfs, memsets. Checks both crates against fwup in one image.
#[test]
fn fwup_fixture_01_mbr_and_env_are_byte_identical() {
    let dir = fixture_dir("01-nerves-qemu-aarch64");
    let tmp = tempfile::tempdir().unwrap();
    let (img, mut f) = sparse_image(tmp.path(), 10485760);
    let p = |start, sectors| {
        Some(MbrPartition {
            start_lba: start,
            sectors,
            kind: 0x83,
            bootable: false,
        })
    };
    let spec = MbrSpec {
        disk_signature: 0,
        partitions: [p(4096, 4096), p(8192, 4096), p(12288, 8192), None],
        ..Default::default()
    };
    write_mbr(&mut f, &spec, 10485760).unwrap();

    let expect = fs::read_to_string(dir.join("expect.txt")).unwrap();
    let vars: Vec<(&str, &str)> = expect
        .lines()
        .filter_map(|l| l.strip_prefix("env.step1."))
        .map(|l| l.split_once('=').unwrap())
        .collect();
    assert_eq!(vars.len(), 20);
    let env = uboot_env::Env::from_pairs(vars).unwrap();
    let block = env
        .to_block(131072, None, uboot_env::WriteOptions::FWUP)
        .unwrap();
    put(&f, 16, &block);

    put(&f, 272, &fs::read(dir.join("Image")).unwrap());
    put(&f, 4096, &fs::read(dir.join("rootfs.squashfs")).unwrap());
    put(&f, 8192, &[0xff; 256 * 512]);
    put(&f, 20224, &[0xff; 256 * 512]);
    drop(f);
    assert_eq!(
        sha256(&img),
        "94bb29fa23ef6fd9e4228d0dea61c07366371f8054a28999607e780987e8352e"
    );
}
