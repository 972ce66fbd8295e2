//! End-to-end tests: `imgtool mkfs f2fs` checked by the real f2fs-tools (fsck.f2fs, dump.f2fs,
//! mkfs.f2fs for the reference geometry) and util-linux blkid, and the data partition of a
//! built image used by a real Linux kernel under qemu.

mod common;
#[path = "../loader/test-init/guest.rs"]
mod guest;

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;

const MIB: u64 = 1 << 20;
const ODD: u64 = 100 * MIB + 3 * 4096;

fn mkfs(img: &Path, extra: &[&str]) -> Output {
    imgtool()
        .args(["mkfs", "f2fs"])
        .arg(img)
        .args(extra)
        .output()
        .expect("spawn imgtool")
}

fn mkfs_ok(img: &Path, extra: &[&str]) -> String {
    let out = mkfs(img, extra);
    assert_ok(
        &out,
        &format!("imgtool mkfs f2fs {} {extra:?}", img.display()),
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Copy `size` bytes at `offset` of `img` into a new sparse file with dd (fsck takes no offset).
fn extract(img: &Path, offset: u64, size: u64, dir: &Path) -> PathBuf {
    let out = dir.join(format!("part-{offset}-{size}.img"));
    run_ok(
        Command::new(require_tool("dd"))
            .arg(format!("if={}", img.display()))
            .arg(format!("of={}", out.display()))
            .args(["bs=1M", "iflag=skip_bytes,count_bytes", "conv=sparse,fsync"])
            .arg(format!("skip={offset}"))
            .arg(format!("count={size}"))
            .arg("status=none"),
    );
    assert_eq!(fs::metadata(&out).unwrap().len(), size);
    out
}

/// Run fsck.f2fs on `img` (once plain, once forced in dry-run mode) and insist on a clean
/// report: exit 0, every check "[Ok..]", no "[Fail]" and no corruption notes. Returns the
/// report of the plain run.
fn assert_fsck_clean(img: &Path) -> String {
    let fsck = require_tool("fsck.f2fs");
    let mut reports = Vec::new();
    for args in [&[][..], &["-f", "--dry-run"][..]] {
        let out = Command::new(&fsck).args(args).arg(img).output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let ctx = format!("fsck.f2fs {args:?} {}:\n{text}", img.display());
        assert!(out.status.success(), "{ctx}");
        assert!(!text.contains("[Fail]"), "{ctx}");
        for bad in [
            "Corrupted",
            "Error",
            "Invalid",
            "Wrong",
            "Mismatch",
            "mismatch",
            "[FIX]",
        ] {
            assert!(!text.contains(bad), "`{bad}` in {ctx}");
        }
        let oks = text.lines().filter(|l| l.contains("[Ok..]")).count();
        assert_eq!(oks, 10, "expected 10 passed checks in {ctx}");
        assert!(
            text.lines()
                .any(|l| l.contains("other corrupted bugs") && l.contains("[Ok..]")),
            "{ctx}"
        );
        assert!(text.contains("Checked valid nat_bits"), "{ctx}");
        reports.push(text);
    }
    reports.swap_remove(0)
}

/// `dump.f2fs -d 1`: superblock and checkpoint fields as name -> value, plus the label.
fn dump(img: &Path) -> (BTreeMap<String, u64>, String) {
    let text = run_ok(
        Command::new(require_tool("dump.f2fs"))
            .args(["-d", "1"])
            .arg(img),
    );
    let mut fields = BTreeMap::new();
    let mut label = None;
    for line in text.lines() {
        // `name [0x hex : dec]`; names may hold brackets (`cur_node_segno[0]`).
        let Some(at) = line.find("\t[").or_else(|| line.find(" [")) else {
            continue;
        };
        let (name, rest) = (&line[..at], &line[at + 2..]);
        let name = name.trim().to_string();
        if name == "volum_name" {
            label = Some(rest.trim_end_matches(']').to_string());
        } else if let Some((_, dec)) = rest.trim_end_matches(']').rsplit_once(':') {
            if let Ok(v) = dec.trim().parse() {
                fields.insert(name, v);
            }
        }
    }
    (fields, label.expect("dump.f2fs printed no volum_name"))
}

fn allocated_bytes(p: &Path) -> u64 {
    fs::metadata(p).unwrap().blocks() * 512
}

#[test]
fn fsck_accepts_the_four_sizes_at_offset_zero() {
    let tmp = tempfile::tempdir().unwrap();
    for size in [64 * MIB, 150 * MIB, 1 << 30, ODD] {
        let img = tmp.path().join(format!("f-{size}.img"));
        mkfs_ok(&img, &["--size", &format!("{size}B"), "--label", "APPDATA"]);
        assert_eq!(fs::metadata(&img).unwrap().len(), size);
        assert_fsck_clean(&img);
        // Only metadata blocks are allocated: a few dozen KiB, however big the region.
        assert!(
            allocated_bytes(&img) < 256 << 10,
            "{size}: {} bytes allocated",
            allocated_bytes(&img)
        );
    }
}

#[test]
fn fsck_accepts_regions_inside_a_larger_file() {
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("disk.img");
    // Data before and after the regions must survive untouched.
    let total = 3 * MIB + 64 * MIB + 5 * MIB + ODD + MIB;
    let f = fs::File::create(&img).unwrap();
    f.set_len(total).unwrap();
    let marker = vec![0xa5u8; 1 << 20];
    f.write_all_at(&marker, 0).unwrap();
    f.write_all_at(&marker, total - MIB).unwrap();
    drop(f);
    // 3 MiB: not 2 MiB aligned; the second region is not even 1 MiB aligned.
    let regions = [
        (3 * MIB, 64 * MIB),
        (3 * MIB + 64 * MIB + 5 * MIB - 8192, ODD),
    ];
    for (i, (off, size)) in regions.iter().enumerate() {
        let label = format!("PART{i}");
        mkfs_ok(
            &img,
            &[
                "--offset",
                &format!("{off}B"),
                "--size",
                &format!("{size}B"),
                "-l",
                &label,
            ],
        );
        let part = extract(&img, *off, *size, tmp.path());
        assert_fsck_clean(&part);
        assert_eq!(dump(&part).1, label);
    }
    assert_eq!(fs::metadata(&img).unwrap().len(), total);
    let bytes = fs::read(&img).unwrap();
    assert!(bytes[..MIB as usize].iter().all(|&b| b == 0xa5));
    assert!(bytes[(total - MIB) as usize..].iter().all(|&b| b == 0xa5));
    // The first region ends where the second's neighbourhood starts: nothing between them.
    let gap = &bytes[(3 * MIB + 64 * MIB) as usize..regions[1].0 as usize];
    assert!(gap.iter().all(|&b| b == 0));
}

#[test]
fn geometry_matches_mkfs_f2fs_and_dump_shows_the_label() {
    let tmp = tempfile::tempdir().unwrap();
    let mkfs_f2fs = require_tool("mkfs.f2fs");
    let keys = [
        "block_count",
        "section_count",
        "segment_count",
        "segment_count_ckpt",
        "segment_count_sit",
        "segment_count_nat",
        "segment_count_ssa",
        "segment_count_main",
        "segment0_blkaddr",
        "cp_blkaddr",
        "sit_blkaddr",
        "nat_blkaddr",
        "ssa_blkaddr",
        "main_blkaddr",
        "cp_payload",
        "log_blocksize",
        "log_blocks_per_seg",
        "segs_per_sec",
        "secs_per_zone",
        "user_block_count",
        "valid_block_count",
        "rsvd_segment_count",
        "overprov_segment_count",
        "free_segment_count",
        "cur_node_segno[0]",
        "cur_node_segno[1]",
        "cur_node_segno[2]",
        "cur_data_segno[0]",
        "cur_data_segno[1]",
        "cur_data_segno[2]",
        "valid_node_count",
        "valid_inode_count",
        "next_free_nid",
        "sit_ver_bitmap_bytesize",
        "nat_ver_bitmap_bytesize",
    ];
    for size in [64 * MIB, 150 * MIB, 1 << 30, ODD] {
        let ours = tmp.path().join("ours.img");
        let theirs = tmp.path().join("theirs.img");
        let _ = fs::remove_file(&ours);
        fs::File::create(&theirs).unwrap().set_len(size).unwrap();
        run_ok(
            Command::new(&mkfs_f2fs)
                .args(["-q", "-f", "-l", "REF"])
                .arg(&theirs),
        );
        let json = mkfs_ok(
            &ours,
            &["--size", &format!("{size}B"), "-l", "APPDATA", "--json"],
        );
        let (a, label) = dump(&ours);
        let (b, _) = dump(&theirs);
        assert_eq!(label, "APPDATA");
        for k in keys {
            assert_eq!(a.get(k), b.get(k), "{k} for size {size}");
            assert!(a.contains_key(k), "dump.f2fs printed no {k}");
        }
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["block_count"].as_u64(), a.get("block_count").copied());
        assert_eq!(v["main_blkaddr"].as_u64(), a.get("main_blkaddr").copied());
        assert_eq!(v["label"], "APPDATA");
    }
}

#[test]
fn label_and_uuid_reach_blkid() {
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("u.img");
    let uuid = "0f2e7c1a-5b3d-4e6f-8a9b-0c1d2e3f4a5b";
    mkfs_ok(
        &img,
        &["--size", "64MiB", "--label", "Données", "--uuid", uuid],
    );
    let blkid = |tag: &str| {
        run_ok(
            Command::new(require_tool("blkid"))
                .args(["-p", "-o", "value", "-s", tag])
                .arg(&img),
        )
        .trim()
        .to_string()
    };
    assert_eq!(blkid("TYPE"), "f2fs");
    assert_eq!(blkid("UUID"), uuid);
    assert_eq!(blkid("LABEL"), "Données");
    assert_fsck_clean(&img);
}

#[test]
fn byte_reproducible() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a.img");
    let b = tmp.path().join("b.img");
    for p in [&a, &b] {
        mkfs_ok(
            p,
            &["--size", "150MiB", "--offset", "1MiB", "-l", "APPDATA"],
        );
    }
    assert_eq!(sha256(&a), sha256(&b));
    // The default UUID follows the label and size.
    let c = tmp.path().join("c.img");
    mkfs_ok(&c, &["--size", "150MiB", "--offset", "1MiB", "-l", "OTHER"]);
    assert_ne!(sha256(&a), sha256(&c));
}

#[test]
fn reformats_over_an_old_filesystem_and_garbage() {
    let tmp = tempfile::tempdir().unwrap();
    let size = 64 * MIB;

    // A filesystem mkfs.f2fs wrote (its SIT/NAT areas are allocated and written).
    let old = tmp.path().join("old.img");
    fs::File::create(&old).unwrap().set_len(size).unwrap();
    run_ok(
        Command::new(require_tool("mkfs.f2fs"))
            .args(["-q", "-f", "-l", "OLD"])
            .arg(&old),
    );
    mkfs_ok(&old, &["--size", "64MiB", "-l", "NEW"]);
    assert_fsck_clean(&old);
    assert_eq!(dump(&old).1, "NEW");

    // A region full of non-zero bytes, with and without --zero.
    for extra in [&[][..], &["--zero"][..]] {
        let junk = tmp.path().join("junk.img");
        let f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&junk)
            .unwrap();
        let chunk: Vec<u8> = (0..MIB).map(|i| (i * 131 + 7) as u8 | 1).collect();
        for i in 0..size / MIB {
            f.write_all_at(&chunk, i * MIB).unwrap();
        }
        drop(f);
        let mut args = vec!["--size", "64MiB", "-l", "JUNK"];
        args.extend_from_slice(extra);
        mkfs_ok(&junk, &args);
        assert_fsck_clean(&junk);
    }
}

#[test]
fn formatting_writes_only_metadata() {
    // Speed is measured by benches/f2fs.sh against mkfs.f2fs, not here.
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("s.img");
    mkfs_ok(&img, &["--size", "150MiB"]);
    assert_eq!(fs::metadata(&img).unwrap().len(), 150 * MIB);
    assert!(
        allocated_bytes(&img) <= 128 << 10,
        "{}",
        allocated_bytes(&img)
    );
}

#[test]
fn bad_input_is_refused_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("small.img");
    let out = mkfs(&img, &["--size", "32MiB"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("too small for f2fs"), "{err}");
    assert!(
        err.contains("the minimum is 54525952 bytes (52 MiB)"),
        "{err}"
    );
    assert!(err.contains("small.img"), "{err}");
    assert!(!img.exists(), "a refused format must not create the file");

    // The minimum itself is accepted and clean.
    mkfs_ok(&img, &["--size", "54525952B"]);
    assert_fsck_clean(&img);

    for (args, want) in [
        (&["--size", "12 furlongs"][..], "unknown unit"),
        (&["--size", "4096"][..], "no unit"),
        (&["--size", "64MB"][..], "ambiguous"),
        (&["--size", "64MiB", "--uuid", "nope"][..], "not a UUID"),
        (
            &["--size", "64MiB", "--label", &"x".repeat(600)][..],
            "512 UTF-16",
        ),
    ] {
        let out = mkfs(&tmp.path().join("bad.img"), args);
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{args:?}: {err}");
    }
    assert!(!tmp.path().join("bad.img").exists());
}

#[test]
fn root_tree_is_placed_at_format_time() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("tree");
    fs::create_dir_all(src.join("etc")).unwrap();
    fs::create_dir_all(src.join("nested/deeper")).unwrap();
    let data: Vec<u8> = (0..12345u32).map(|i| (i * 7 + i / 300) as u8).collect();
    fs::write(src.join("data.bin"), &data).unwrap();
    fs::write(src.join("etc/app.conf"), "key = value\n").unwrap();
    fs::write(src.join("a-name-longer-than-sixteen-bytes.txt"), "hi\n").unwrap();
    fs::write(src.join("empty"), "").unwrap();
    std::os::unix::fs::symlink("etc/app.conf", src.join("link")).unwrap();

    let img = tmp.path().join("t.img");
    let root = src.to_str().unwrap();
    let json = mkfs_ok(&img, &["--size", "64MiB", "--root", root, "--json"]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["inodes"], 9);
    assert_fsck_clean(&img);

    // fsck.f2fs walks the tree from the root and prints it.
    let tree = run_ok(Command::new(require_tool("fsck.f2fs")).arg("-t").arg(&img));
    let names: Vec<&str> = tree
        .lines()
        .filter_map(|l| l.split("-- ").nth(1))
        .filter_map(|l| l.split(" <ino").next())
        .collect();
    assert_eq!(
        names,
        [
            "a-name-longer-than-sixteen-bytes.txt",
            "data.bin",
            "empty",
            "etc",
            "app.conf",
            "link",
            "nested",
            "deeper"
        ],
        "{tree}"
    );
    // dump.f2fs copies data.bin out of the image into ./lost_found/.
    let line = tree.lines().find(|l| l.contains("data.bin")).unwrap();
    let ino = line
        .split("<ino = ")
        .nth(1)
        .unwrap()
        .split('>')
        .next()
        .unwrap();
    let out_dir = tmp.path().join("dump");
    fs::create_dir(&out_dir).unwrap();
    let mut child = Command::new(require_tool("dump.f2fs"))
        .args(["-i", ino])
        .arg(&img)
        .current_dir(&out_dir)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"y\n").unwrap();
    assert!(child.wait().unwrap().success());
    assert_eq!(fs::read(out_dir.join("lost_found/data.bin")).unwrap(), data);

    // Too much for the format-time tree: a clear error, no file.
    fs::write(src.join("big.bin"), vec![1u8; 4 << 20]).unwrap();
    let bad = tmp.path().join("bad.img");
    let out = mkfs(&bad, &["--size", "64MiB", "--root", root]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("big.bin") && err.contains("limited to"),
        "{err}"
    );
    assert!(!bad.exists());
}

/// The start and size in bytes of partition `n` (1-based) of `img`, as the real sfdisk reads
/// the table.
fn partition(img: &Path, n: usize) -> (u64, u64) {
    let json = run_ok(Command::new(require_tool("sfdisk")).arg("-J").arg(img));
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let p = &v["partitiontable"]["partitions"][n - 1];
    let sector = v["partitiontable"]["sectorsize"].as_u64().unwrap_or(512);
    (
        p["start"].as_u64().expect("start") * sector,
        p["size"].as_u64().expect("size") * sector,
    )
}

/// Whether a console line ends with `want` (the serial console ends lines with CR LF).
fn has_line(console: &str, want: &str) -> bool {
    console
        .lines()
        .any(|l| l.trim_end_matches('\r').ends_with(want))
}

/// The data partition's f2fs, as `imgtool build nerves-qemu-aarch64` formats it, used by the
/// real kernel (ours, booted by our loader under qemu): the guest's init (loader/test-init)
/// mounts /dev/vda3 read-write, writes a file and a 1 MiB pattern and unmounts; fsck.f2fs
/// finds the result clean; a second boot reads both back. The note's text is unique to this
/// run and only on the writing boot's command line, so the reading boot can only get it from
/// the disk.
#[test]
fn a_real_kernel_writes_the_data_partition_and_reads_it_back() {
    let tmp = tempfile::Builder::new()
        .prefix("imgtool-f2fs-boot-")
        .tempdir()
        .unwrap();
    let dir = tmp.path();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let note = format!("note-{}-{nanos}", std::process::id());
    let img = guest::build_image(
        dir,
        "data.img",
        " imgtool_f2fs=read",
        &[
            ("kernel", guest::kernel().display().to_string()),
            ("rootfs", guest::rootfs(dir, "F2FS").display().to_string()),
        ],
    );
    let (offset, size) = partition(&img, 3);
    assert_eq!(size, 150 * MIB, "p3 of the built-in layout");
    let args = |mode: &str| {
        format!(
            "root=/dev/vda1 rootfstype=squashfs {} {mode}",
            guest::CMDLINE
        )
    };
    let done = "init: powering off";

    // Control: the freshly formatted filesystem mounts, and has no note yet.
    let console = guest::boot_ok(&img, done, &[]);
    assert!(
        console.contains("F2FS-fs (vda3): Mounted with checkpoint version"),
        "{console}"
    );
    assert!(
        has_line(&console, "init: f2fs: error: open /data/note.txt: errno 2"),
        "{console}"
    );
    assert!(!console.contains("init: f2fs: note:"), "{console}");

    // Boot 1 writes.
    guest::env_set(
        &img,
        &[(
            "a.kernel_args",
            &args(&format!("imgtool_f2fs=write:{note}")),
        )],
    );
    let console = guest::boot_ok(&img, done, &[]);
    assert!(
        has_line(
            &console,
            &format!(
                "init: f2fs: wrote /data/note.txt ({} bytes) and /data/pattern.bin (1048576 bytes), unmounted",
                note.len()
            )
        ),
        "{console}"
    );
    assert!(!console.contains("init: f2fs: error"), "{console}");
    assert!(!console.contains("F2FS-fs (vda3): Unable"), "{console}");

    // What the kernel left is clean to fsck.f2fs, still our formatter's filesystem, cleanly
    // unmounted, and holds the two new files.
    let part = extract(&img, offset, size, dir);
    let report = assert_fsck_clean(&part);
    assert!(report.contains("\"imgtool-f2fs\""), "{report}");
    let state = report
        .lines()
        .find(|l| l.contains("checkpoint state"))
        .unwrap_or_else(|| panic!("no checkpoint state in:\n{report}"));
    assert!(state.trim_end().ends_with(" unmount"), "{state}");
    let (fields, label) = dump(&part);
    assert_eq!(label, "APPDATA");
    assert_eq!(
        fields.get("valid_inode_count"),
        Some(&3),
        "root, note, pattern"
    );
    let tree = run_ok(Command::new(require_tool("fsck.f2fs")).arg("-t").arg(&part));
    for name in ["note.txt", "pattern.bin"] {
        assert!(tree.contains(&format!("-- {name} <ino")), "{tree}");
    }

    // Boot 2 reads the files back.
    guest::env_set(&img, &[("a.kernel_args", &args("imgtool_f2fs=read"))]);
    let console = guest::boot_ok(&img, done, &[]);
    assert!(
        has_line(&console, &format!("init: f2fs: note: {note}")),
        "{console}"
    );
    assert!(
        has_line(&console, "init: f2fs: pattern: 1048576 bytes, 0 wrong"),
        "{console}"
    );
    assert!(!console.contains("init: f2fs: error"), "{console}");
}
