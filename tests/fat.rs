//! End-to-end: FAT filesystems from the `fat` crate, checked with the real fsck.fat and mtools.

mod common;

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

const OFFSET: u64 = 1 << 20;

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn open_rw(p: &Path) -> File {
    OpenOptions::new().read(true).write(true).open(p).unwrap()
}

/// An image file with a FAT filesystem of `size` bytes at OFFSET, filled with `files`.
fn make_image(
    dir: &Path,
    name: &str,
    size: u64,
    label: &str,
    files: &[(String, PathBuf)],
) -> PathBuf {
    let img = dir.join(name);
    let f = File::create(&img).unwrap();
    f.set_len(OFFSET + size + 4096).unwrap();
    let mut f = open_rw(&img);
    fat::format_with_files(
        fat::Region::new(&mut f, OFFSET, size),
        size,
        &fat::FormatOptions {
            label: label.into(),
            ..Default::default()
        },
        files,
    )
    .unwrap();
    img
}

fn mtools(tool: &str) -> Command {
    let mut c = Command::new(require_tool(tool));
    c.env("MTOOLS_SKIP_CHECK", "1");
    c
}

fn at(img: &Path) -> String {
    format!("{}@@{OFFSET}", img.display())
}

/// fsck.fat -n on the region (copied out: fsck.fat has no offset option).
fn fsck_clean(img: &Path, size: u64) {
    let fsck = require_tool("fsck.fat");
    let all = fs::read(img).unwrap();
    let part = img.with_extension("part");
    fs::write(&part, &all[OFFSET as usize..(OFFSET + size) as usize]).unwrap();
    let out = Command::new(fsck)
        .arg("-n")
        .arg("-v")
        .arg(&part)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "fsck.fat -n {}: {text}",
        part.display()
    );
    fs::remove_file(part).unwrap();
}

fn host_files(dir: &Path) -> Vec<(String, PathBuf)> {
    let h = dir.join("host");
    fs::create_dir_all(&h).unwrap();
    let mut v = Vec::new();
    for (dest, len, seed) in [
        ("zImage", 1_234_567usize, 1u8),
        ("boot/config.txt", 300, 2),
        ("boot/overlays/A Long File Name.dtbo", 5000, 3),
        ("empty.bin", 0, 4),
        ("UPPER.TXT", 70_000, 5),
    ] {
        let p = h.join(dest.replace('/', "_"));
        fs::write(&p, pattern(len, seed)).unwrap();
        v.push((dest.to_string(), p));
    }
    v
}

#[test]
fn fat12_16_32_pass_fsck_and_mtools_reads_the_files() {
    let t = tempfile::tempdir().unwrap();
    let files = host_files(t.path());
    for (size, ty) in [
        (4u64 << 20, "FAT12"),
        (64 << 20, "FAT16"),
        (600 << 20, "FAT32"),
    ] {
        let img = make_image(t.path(), &format!("{ty}.img"), size, "BOOT", &files);
        fsck_clean(&img, size);

        let mut f = open_rw(&img);
        let info = fat::probe(fat::Region::new(&mut f, OFFSET, size))
            .unwrap()
            .unwrap();
        assert_eq!(info.fat_type.to_string(), ty);
        assert_eq!(info.label.as_deref(), Some("BOOT"));

        let dir = run_ok(mtools("mdir").args(["-i", &at(&img), "-/", "-b", "::/"]));
        for (dest, _) in &files {
            assert!(
                dir.contains(&format!("::/{dest}")),
                "{ty}: mdir lacks {dest}:\n{dir}"
            );
        }
        for (dest, host) in &files {
            let out = t.path().join("copied");
            let _ = fs::remove_file(&out);
            run_ok(
                mtools("mcopy")
                    .args(["-n", "-i", &at(&img)])
                    .arg(format!("::/{dest}"))
                    .arg(&out),
            );
            assert_eq!(
                fs::read(&out).unwrap(),
                fs::read(host).unwrap(),
                "{ty}: {dest}"
            );
        }
        let label = run_ok(mtools("mlabel").args(["-s", "-i", &at(&img), "::"]));
        assert!(label.contains("BOOT"), "{ty}: {label}");
    }
}

#[test]
fn same_inputs_same_bytes() {
    let t = tempfile::tempdir().unwrap();
    let files = host_files(t.path());
    let a = make_image(t.path(), "a.img", 32 << 20, "X", &files);
    let b = make_image(t.path(), "b.img", 32 << 20, "X", &files);
    assert!(
        fs::read(&a).unwrap() == fs::read(&b).unwrap(),
        "two builds differ"
    );
}

#[test]
fn fwup_style_operations_stay_consistent() {
    let t = tempfile::tempdir().unwrap();
    let size = 16u64 << 20;
    let img = make_image(t.path(), "ops.img", size, "", &[]);
    let mut f = open_rw(&img);
    {
        let v = fat::Volume::open(fat::Region::new(&mut f, OFFSET, size)).unwrap();
        v.write_file("a.txt", b"first").unwrap();
        v.write_file("a.txt", b"second").unwrap();
        v.mkdir("d").unwrap();
        v.mkdir("d").unwrap();
        v.cp("a.txt", "d/copy.txt").unwrap();
        v.write_file("gone.txt", b"x").unwrap();
        v.rm("gone.txt", true).unwrap();
        v.rm("gone.txt", false).unwrap();
        assert!(matches!(
            v.rm("gone.txt", true),
            Err(fat::Error::NotFound(_))
        ));
        v.write_file("old name.bin", &pattern(200_000, 9)).unwrap();
        v.mv("old name.bin", "new name.bin", false).unwrap();
        v.write_file("b.txt", b"bbb").unwrap();
        assert!(matches!(
            v.mv("b.txt", "a.txt", false),
            Err(fat::Error::Exists(_))
        ));
        v.mv("b.txt", "a.txt", true).unwrap();
        v.touch("t.txt").unwrap();
        v.touch("a.txt").unwrap();
        assert!(v.exists("D/COPY.TXT").unwrap());
        v.close().unwrap();
    }
    fat::set_attributes(
        fat::Region::new(&mut f, OFFSET, size),
        "a.txt",
        fat::parse_attributes("RHS").unwrap(),
    )
    .unwrap();
    fat::set_label(
        fat::Region::new(&mut f, OFFSET, size),
        "NERVES",
        fat::LabelMode::Everywhere,
    )
    .unwrap();
    drop(f);
    fsck_clean(&img, size);

    let read = |p: &str| {
        run_ok(
            mtools("mtype")
                .args(["-i", &at(&img)])
                .arg(format!("::/{p}")),
        )
    };
    assert_eq!(read("a.txt"), "bbb");
    assert_eq!(read("d/copy.txt"), "second");
    assert_eq!(read("t.txt"), "");
    let out = t.path().join("nn");
    run_ok(
        mtools("mcopy")
            .args(["-n", "-i", &at(&img), "::/new name.bin"])
            .arg(&out),
    );
    assert_eq!(fs::read(&out).unwrap(), pattern(200_000, 9));
    let dir = run_ok(mtools("mdir").args(["-i", &at(&img), "-b", "::/"]));
    assert!(!dir.contains("gone"), "{dir}");
    assert!(!dir.contains("old name"), "{dir}");
    let attrs = run_ok(mtools("mattrib").args(["-i", &at(&img), "::/a.txt"]));
    let flags = attrs.split("::").next().unwrap();
    for c in ['R', 'H', 'S'] {
        assert!(flags.contains(c), "mattrib: {attrs}");
    }
    let label = run_ok(mtools("mlabel").args(["-s", "-i", &at(&img), "::"]));
    assert!(label.contains("NERVES"), "{label}");
}

#[test]
fn fwup_label_mode_writes_only_the_root_directory() {
    let t = tempfile::tempdir().unwrap();
    let size = 16u64 << 20;
    let img = make_image(t.path(), "lbl.img", size, "", &[]);
    let mut f = open_rw(&img);
    fat::set_label(
        fat::Region::new(&mut f, OFFSET, size),
        "FWUPLBL",
        fat::LabelMode::RootDirOnly,
    )
    .unwrap();
    let info = fat::probe(fat::Region::new(&mut f, OFFSET, size))
        .unwrap()
        .unwrap();
    assert_eq!(info.label.as_deref(), Some("FWUPLBL"));
    assert_eq!(info.boot_label, None, "boot sector must keep NO NAME");
    drop(f);
    let label = run_ok(mtools("mlabel").args(["-s", "-i", &at(&img), "::"]));
    assert!(label.contains("FWUPLBL"), "{label}");
}

#[test]
fn writes_stop_at_the_region_end() {
    let t = tempfile::tempdir().unwrap();
    let size = 1u64 << 20;
    let img = make_image(t.path(), "small.img", size, "", &[]);
    let before = fs::read(&img).unwrap();
    let mut f = open_rw(&img);
    let v = fat::Volume::open(fat::Region::new(&mut f, OFFSET, size)).unwrap();
    let e = v.write_file("huge.bin", &vec![7u8; 2 << 20]).unwrap_err();
    assert!(e.to_string().contains("huge.bin"), "{e}");
    drop(v);
    let after = fs::read(&img).unwrap();
    assert_eq!(after.len(), before.len());
    assert_eq!(
        &after[..OFFSET as usize],
        &before[..OFFSET as usize],
        "bytes before the region changed"
    );
    assert_eq!(
        &after[(OFFSET + size) as usize..],
        &before[(OFFSET + size) as usize..],
        "bytes past the region changed"
    );
}

/// New directories must start with "." and ".." in slots 0 and 1 (fatgen103); fatfs 0.3 put
/// long-name entries in front of them and fsck.fat reported "Expected a valid '.' entry".
#[test]
fn nested_directories_pass_fsck() {
    let t = tempfile::tempdir().unwrap();
    let h = t.path().join("host");
    fs::create_dir_all(&h).unwrap();
    let big = h.join("big.bin");
    fs::write(&big, pattern(100_000, 7)).unwrap();
    let small = h.join("small.txt");
    fs::write(&small, b"deep\n").unwrap();
    let files = vec![
        ("overlays/big.bin".to_string(), big.clone()),
        ("a/b/c/Deep File.txt".to_string(), small.clone()),
        ("a/b/other.txt".to_string(), small.clone()),
    ];
    for (size, ty) in [(16u64 << 20, "FAT16"), (600 << 20, "FAT32")] {
        let img = make_image(t.path(), &format!("nested-{ty}.img"), size, "", &files);
        fsck_clean(&img, size);
        let dir = run_ok(mtools("mdir").args(["-i", &at(&img), "-/", "-b", "::/"]));
        for (dest, _) in &files {
            assert!(
                dir.contains(&format!("::/{dest}")),
                "{ty}: mdir lacks {dest}:\n{dir}"
            );
        }
        let sub = run_ok(mtools("mdir").args(["-i", &at(&img), "::/a/b"]));
        assert!(
            sub.contains(".  ") && sub.contains(".. "),
            "{ty}: no . or .. in:\n{sub}"
        );
        let typed = run_ok(
            mtools("mtype")
                .args(["-i", &at(&img)])
                .arg("::/a/b/c/Deep File.txt"),
        );
        assert_eq!(typed, "deep\n", "{ty}");
        let out = t.path().join("big.out");
        let _ = fs::remove_file(&out);
        run_ok(
            mtools("mcopy")
                .args(["-n", "-i", &at(&img), "::/overlays/big.bin"])
                .arg(&out),
        );
        assert_eq!(fs::read(&out).unwrap(), fs::read(&big).unwrap(), "{ty}");
    }
}
