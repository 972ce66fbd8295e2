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
    let f = open_rw(&img);
    fat::format_with_files(
        layout::window::Window::new(&f, OFFSET, size),
        size,
        &fat::FormatOptions {
            label: label.into(),
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
    // One sector per cluster, as fwup's fat_mkfs formats.
    for (size, ty) in [
        (1900u64 << 10, "FAT12"),
        (16 << 20, "FAT16"),
        (64 << 20, "FAT32"),
    ] {
        let img = make_image(t.path(), &format!("{ty}.img"), size, "BOOT", &files);
        fsck_clean(&img, size);

        let f = open_rw(&img);
        let info = fat::probe(layout::window::Window::new(&f, OFFSET, size))
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

/// `imgtool build`'s FAT fill and `imgtool fwup`'s fat_mkfs + fat_setlabel + fat_mkdir +
/// fat_write give the same bytes for the same inputs: one formatting engine.
#[test]
fn build_fill_and_fwup_fat_mkfs_give_the_same_bytes() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    fs::write(d.join("config.txt"), "kernel=Image\n").unwrap();
    fs::write(d.join("big.bin"), pattern(300_000, 11)).unwrap();
    fs::write(d.join("long.dtbo"), pattern(5000, 12)).unwrap();
    // 16 MiB (FAT16) and 40 MiB (FAT32, 512-byte clusters).
    for (blocks, size) in [(32768u64, "16 MiB"), (81920, "40 MiB")] {
        let yaml = format!(
            "table: {{ type: mbr }}\nregions:\n  - name: boot\n    offset: 2048 blocks\n    size: {size}\n    partition: {{ number: 1, type: fat32, boot: true }}\n    fill:\n      fat:\n        label: BOOT\n        files: {{ config.txt: config.txt, overlays/big.bin: big.bin, \"overlays/x/A Long Name.dtbo\": long.dtbo }}\n"
        );
        fs::write(d.join("layout.yaml"), yaml).unwrap();
        run_ok(
            imgtool()
                .current_dir(d)
                .args(["build", "layout.yaml", "-o", "built.img"]),
        );
        let conf = format!(
            r#"file-resource config.txt {{ host-path = "config.txt" }}
file-resource big.bin {{ host-path = "big.bin" }}
file-resource long {{ host-path = "long.dtbo" }}
task complete {{
  on-init {{
    fat_mkfs(2048, {blocks})
    fat_setlabel(2048, "BOOT")
    fat_mkdir(2048, "overlays")
    fat_mkdir(2048, "overlays/x")
  }}
  on-resource config.txt {{ fat_write(2048, "config.txt") }}
  on-resource big.bin {{ fat_write(2048, "overlays/big.bin") }}
  on-resource long {{ fat_write(2048, "overlays/x/A Long Name.dtbo") }}
}}
"#
        );
        fs::write(d.join("fat.conf"), conf).unwrap();
        let _ = fs::remove_file(d.join("fwup.img"));
        run_ok(
            imgtool()
                .current_dir(d)
                .args(["fwup", "-c", "-f", "fat.conf", "-o", "fat.fw"]),
        );
        run_ok(imgtool().current_dir(d).args([
            "fwup", "-a", "-q", "-d", "fwup.img", "-i", "fat.fw", "-t", "complete",
        ]));
        let region = |name: &str| {
            let b = fs::read(d.join(name)).unwrap();
            let (s, e) = (2048 * 512, ((2048 + blocks) * 512) as usize);
            assert!(b.len() >= e, "{name} is {} bytes", b.len());
            b[s..e].to_vec()
        };
        let (built, mut fwup) = (region("built.img"), region("fwup.img"));
        // The one difference: the build also puts the label in the boot sector (and FAT32's
        // backup at sector 6), where fsck.fat wants it; fat_setlabel writes only the root
        // directory entry.
        let at: &[usize] = if blocks > 65536 {
            &[71, 6 * 512 + 71]
        } else {
            &[43]
        };
        for &o in at {
            assert_eq!(&fwup[o..o + 11], b"NO NAME    ");
            assert_eq!(&built[o..o + 11], b"BOOT       ");
            fwup[o..o + 11].copy_from_slice(b"BOOT       ");
        }
        let first_diff = built.iter().zip(&fwup).position(|(a, b)| a != b);
        assert_eq!(first_diff, None, "{blocks} blocks: first differing byte");
        fs::write(d.join("built.img"), &built).unwrap();
        fsck_clean_file(&d.join("built.img"));
        let out = d.join("long.out");
        let _ = fs::remove_file(&out);
        run_ok(
            mtools("mcopy")
                .args(["-n", "-i"])
                .arg(d.join("built.img"))
                .arg("::/overlays/x/A Long Name.dtbo")
                .arg(&out),
        );
        assert_eq!(fs::read(&out).unwrap(), pattern(5000, 12));
    }
}

/// fsck.fat -n on a file that is the whole filesystem.
fn fsck_clean_file(part: &Path) {
    let out = Command::new(require_tool("fsck.fat"))
        .arg("-n")
        .arg(part)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "fsck.fat -n {}: {}{}",
        part.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn writes_stop_at_the_region_end() {
    let t = tempfile::tempdir().unwrap();
    let size = 1u64 << 20;
    let img = make_image(t.path(), "small.img", size, "", &[]);
    let before = fs::read(&img).unwrap();
    let huge = t.path().join("huge.bin");
    fs::write(&huge, vec![7u8; 2 << 20]).unwrap();
    let f = open_rw(&img);
    let e = fat::format_with_files(
        layout::window::Window::new(&f, OFFSET, size),
        size,
        &fat::FormatOptions::default(),
        &[("huge.bin".to_string(), huge)],
    )
    .unwrap_err();
    assert!(e.to_string().contains("huge.bin"), "{e}");
    drop(f);
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

/// New directories must start with "." and ".." in slots 0 and 1 (fatgen103); fsck.fat
/// reports "Expected a valid '.' entry" otherwise.
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
    for (size, ty) in [(16u64 << 20, "FAT16"), (64 << 20, "FAT32")] {
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
