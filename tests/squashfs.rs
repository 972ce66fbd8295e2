//! End-to-end: `imgtool mkfs squashfs` against the real unsquashfs and mksquashfs.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// A tree with every kind of entry squashfs stores, odd modes and owners.
fn make_tree(root: &Path) {
    let p = |s: &str| root.join(s);
    fs::create_dir_all(p("etc/init.d")).unwrap();
    fs::create_dir_all(p("usr/lib/empty")).unwrap();
    fs::create_dir_all(p("tmp")).unwrap();
    fs::write(p("etc/hostname"), b"nerves\n").unwrap();
    fs::write(p("etc/empty"), b"").unwrap();
    fs::write(p("etc/init.d/S01"), b"#!/bin/sh\necho hi\n").unwrap();
    // Exactly one block, several blocks with a tail, a sparse-ish file of zeros.
    let pattern = |n: usize, seed: u32| -> Vec<u8> {
        let mut x = seed;
        (0..n)
            .map(|i| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                // Half text-like, half noise, so blocks compress by different amounts.
                if i % 1024 < 512 {
                    b"abcdefgh"[i % 8]
                } else {
                    (x >> 16) as u8
                }
            })
            .collect()
    };
    fs::write(p("usr/lib/block"), pattern(131072, 1)).unwrap();
    fs::write(p("usr/lib/big.so"), pattern(1_000_003, 2)).unwrap();
    fs::write(p("usr/lib/dup.so"), pattern(1_000_003, 2)).unwrap();
    fs::write(p("usr/lib/zeros"), vec![0u8; 400_000]).unwrap();
    for i in 0..50 {
        fs::write(
            p(&format!("usr/lib/small{i:02}")),
            pattern(100 + i * 997, i as u32),
        )
        .unwrap();
    }
    std::os::unix::fs::symlink("../usr/lib/big.so", p("etc/rel-link")).unwrap();
    std::os::unix::fs::symlink("/usr/lib/block", p("etc/abs-link")).unwrap();
    std::os::unix::fs::symlink("does/not/exist", p("etc/dangling")).unwrap();
    let chmod = |s: &str, m: u32| fs::set_permissions(p(s), fs::Permissions::from_mode(m)).unwrap();
    chmod("etc/init.d/S01", 0o4755);
    chmod("etc/hostname", 0o600);
    chmod("usr/lib/block", 0o2711);
    chmod("tmp", 0o1777);
    run_ok(
        Command::new("chown")
            .arg("1234:5678")
            .arg(p("etc/hostname")),
    );
    run_ok(Command::new("mkfifo").arg(p("tmp/fifo")));
    run_ok(
        Command::new("mknod")
            .arg(p("tmp/null"))
            .args(["c", "1", "3"]),
    );
    run_ok(
        Command::new("mknod")
            .arg(p("tmp/blk"))
            .args(["b", "259", "65537"]),
    );
}

#[derive(Debug, PartialEq)]
struct Node {
    kind: &'static str,
    mode: u32,
    uid: u32,
    gid: u32,
    rdev: u64,
    content: Vec<u8>,
}

fn describe(root: &Path) -> BTreeMap<PathBuf, Node> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let path = e.unwrap().path();
            let m = fs::symlink_metadata(&path).unwrap();
            let ft = m.file_type();
            let (kind, content) = if ft.is_dir() {
                stack.push(path.clone());
                ("dir", vec![])
            } else if ft.is_file() {
                ("file", fs::read(&path).unwrap())
            } else if ft.is_symlink() {
                (
                    "symlink",
                    fs::read_link(&path)
                        .unwrap()
                        .into_os_string()
                        .into_encoded_bytes(),
                )
            } else if ft.is_fifo() {
                ("fifo", vec![])
            } else if ft.is_char_device() {
                ("char", vec![])
            } else if ft.is_block_device() {
                ("block", vec![])
            } else {
                ("other", vec![])
            };
            out.insert(
                path.strip_prefix(root).unwrap().to_path_buf(),
                Node {
                    kind,
                    // Symlink permissions are meaningless on Linux.
                    mode: if ft.is_symlink() {
                        0
                    } else {
                        m.mode() & 0o7777
                    },
                    uid: m.uid(),
                    gid: m.gid(),
                    rdev: if ft.is_char_device() || ft.is_block_device() {
                        m.rdev()
                    } else {
                        0
                    },
                    content,
                },
            );
        }
    }
    out
}

fn mkfs(src: &Path, out: &Path, extra: &[&str]) -> String {
    run_ok(
        imgtool()
            .args(["mkfs", "squashfs"])
            .arg(src)
            .arg("-o")
            .arg(out)
            .args(extra)
            .env_remove("SOURCE_DATE_EPOCH"),
    )
}

/// Paths from `unsquashfs -l` without the squashfs-root prefix.
fn listing(img: &Path) -> Vec<String> {
    let out = run_ok(Command::new(require_tool("unsquashfs")).arg("-l").arg(img));
    out.lines()
        .filter_map(|l| l.strip_prefix("squashfs-root"))
        .map(|s| s.to_string())
        .collect()
}

#[test]
fn extraction_matches_source_for_every_compressor() {
    let unsquashfs = require_tool("unsquashfs");
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    fs::create_dir(&src).unwrap();
    make_tree(&src);
    let want = describe(&src);
    for comp in ["gzip", "xz", "zstd", "lz4"] {
        let img = t.path().join(format!("{comp}.sqfs"));
        let msg = mkfs(&src, &img, &["--comp", comp, "--mtime", "1700000000"]);
        assert!(msg.contains(comp), "{msg}");

        // The superblock as unsquashfs sees it.
        let s = run_ok(Command::new(&unsquashfs).arg("-s").arg(&img));
        assert!(s.contains(&format!("Compression {comp}")), "{comp}: {s}");
        assert!(s.contains("Block size 131072"), "{s}");
        assert!(
            s.contains(&format!("Number of inodes {}", want.len() + 1)),
            "{s}"
        );

        let listed = listing(&img);
        let mut expect: Vec<String> = std::iter::once(String::new())
            .chain(want.keys().map(|k| format!("/{}", k.display())))
            .collect();
        expect.sort();
        let mut got = listed.clone();
        got.sort();
        assert_eq!(got, expect, "{comp}: unsquashfs -l listing");

        let out = t.path().join(format!("x-{comp}"));
        run_ok(Command::new(&unsquashfs).arg("-d").arg(&out).arg(&img));
        let got = describe(&out);
        assert_eq!(got.len(), want.len());
        for (k, w) in &want {
            let g = &got[k];
            assert_eq!(g, w, "{comp}: {} differs after extraction", k.display());
        }
        // Every inode got the fixed mtime.
        assert_eq!(
            fs::metadata(out.join("usr/lib/big.so")).unwrap().mtime(),
            1_700_000_000
        );
        assert_eq!(
            fs::metadata(&out).unwrap().mode() & 0o7777,
            fs::metadata(&src).unwrap().mode() & 0o7777
        );
    }
}

#[test]
fn same_tree_same_bytes_and_all_root() {
    let unsquashfs = require_tool("unsquashfs");
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    fs::create_dir(&src).unwrap();
    make_tree(&src);
    let a = t.path().join("a.sqfs");
    let b = t.path().join("b.sqfs");
    mkfs(&src, &a, &[]);
    mkfs(&src, &b, &["--threads", "1"]);
    assert_eq!(sha256(&a), sha256(&b), "two builds differ");

    // SOURCE_DATE_EPOCH is the default mtime; --mtime wins over it.
    let c = t.path().join("c.sqfs");
    run_ok(
        imgtool()
            .args(["mkfs", "squashfs"])
            .arg(&src)
            .arg("-o")
            .arg(&c)
            .env("SOURCE_DATE_EPOCH", "1234567890"),
    );
    assert_ne!(sha256(&a), sha256(&c));
    let s = run_ok(Command::new(&unsquashfs).arg("-s").arg(&c));
    assert!(s.contains("2009"), "mkfs time should be 2009-02-13: {s}");
    let d = t.path().join("d.sqfs");
    mkfs(&src, &d, &["--mtime", "1234567890"]);
    assert_eq!(sha256(&c), sha256(&d));

    let r = t.path().join("root.sqfs");
    let json = mkfs(&src, &r, &["--all-root", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(
        v["inode_count"].as_u64().unwrap() as usize,
        describe(&src).len() + 1
    );
    assert_eq!(
        v["bytes_used"].as_u64().unwrap() + 4096 - v["bytes_used"].as_u64().unwrap() % 4096,
        fs::metadata(&r).unwrap().len()
    );
    let out = t.path().join("x");
    run_ok(Command::new(&unsquashfs).arg("-d").arg(&out).arg(&r));
    let m = fs::metadata(out.join("etc/hostname")).unwrap();
    assert_eq!((m.uid(), m.gid()), (0, 0));
}

#[test]
fn same_paths_as_mksquashfs() {
    let mksquashfs = require_tool("mksquashfs");
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    fs::create_dir(&src).unwrap();
    make_tree(&src);
    let ours = t.path().join("ours.sqfs");
    let theirs = t.path().join("theirs.sqfs");
    mkfs(&src, &ours, &[]);
    run_ok(Command::new(mksquashfs).arg(&src).arg(&theirs).args([
        "-comp",
        "gzip",
        "-noappend",
        "-quiet",
        "-no-progress",
    ]));
    assert_eq!(listing(&ours), listing(&theirs));
    // Same compressor, same data: within 2 % of mksquashfs's size.
    let (o, m) = (
        fs::metadata(&ours).unwrap().len() as f64,
        fs::metadata(&theirs).unwrap().len() as f64,
    );
    assert!(o <= m * 1.02, "ours {o} bytes vs mksquashfs {m}");
}

#[test]
fn bad_input_is_reported_and_leaves_no_output() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("out.sqfs");
    fs::write(&out, b"old").unwrap();
    let missing = t.path().join("no-such-dir");
    let o = imgtool()
        .args(["mkfs", "squashfs"])
        .arg(&missing)
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("no-such-dir"), "{err}");
    assert_eq!(
        fs::read(&out).unwrap(),
        b"old",
        "old output must survive a failed build"
    );

    let src = t.path().join("src");
    fs::create_dir(&src).unwrap();
    let o = imgtool()
        .args(["mkfs", "squashfs"])
        .arg(&src)
        .arg("-o")
        .arg(&out)
        .args(["--block-size", "5000B"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("power of two"));

    let o = imgtool()
        .args(["mkfs", "squashfs"])
        .arg(&src)
        .arg("-o")
        .arg(&out)
        .env("SOURCE_DATE_EPOCH", "yesterday")
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("SOURCE_DATE_EPOCH"));
    // No temporary files left behind.
    let left: Vec<_> = fs::read_dir(t.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left.len(), 2, "{left:?}");
}
