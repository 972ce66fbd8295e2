//! FAT bytes as real fwup writes them (issue 22, item 7). fwup 1.16's FatFs leaves, after a
//! file's last byte in its last sector, what its sector buffer held from an earlier sector of
//! the same file: the last one a write ended inside. Writes end where libarchive's blocks do
//! (fwup reads the archive 16 KiB at a time), so ours must cut its writes at the same places.
//!
//! An rpi4-style boot partition from a fwup.conf of our own: many files of odd sizes, some
//! incompressible, some text, some a mix (stored and Huffman deflate blocks), in the root
//! and a subdirectory, with fat_mv, fat_cp and fat_rm; then an upgrade-like task that
//! rewrites files. Archives packed by real fwup and by ours are each applied (`complete`,
//! then `upgrade` onto the result) by both, and every image must be byte-identical.

mod common;

use std::path::Path;
use std::process::Command;

/// Deterministic bytes: `text` picks words (compressible), otherwise noise.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn noise(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }

    fn text(&mut self, n: usize) -> Vec<u8> {
        const WORDS: [&str; 8] = [
            "dtoverlay=",
            "vc4-kms-v3d",
            "arm_64bit=1\n",
            "enable_uart",
            " ",
            "=",
            "gpu_mem",
            "\n",
        ];
        let mut v = Vec::new();
        while v.len() < n {
            v.extend_from_slice(WORDS[(self.next() % 8) as usize].as_bytes());
            v.push(b'0' + (self.next() % 10) as u8);
        }
        v.truncate(n);
        v
    }

    /// Runs of text and noise, so deflate mixes stored and Huffman blocks.
    fn mixed(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::new();
        while v.len() < n {
            let k = 100 + (self.next() % 30_000) as usize;
            let part = if self.next().is_multiple_of(2) {
                self.text(k)
            } else {
                self.noise(k)
            };
            v.extend_from_slice(&part);
        }
        v.truncate(n);
        v
    }
}

/// (resource, file in the FAT, contents).
fn files() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let mut g = Gen(0x2545_f491_4f6c_dd1d);
    vec![
        ("kernel8", "kernel8.img", g.mixed(1_700_123)),
        ("start4", "start4.elf", g.noise(2_228_877)),
        ("bootcode", "bootcode.bin", g.noise(52_459)),
        ("fixup4", "fixup4.dat", g.text(5_397)),
        ("config", "config.txt", g.text(1_234)),
        ("cmdline", "cmdline.txt", g.text(97)),
        ("dtb", "bcm2711-rpi-4-b.dtb", g.mixed(49_765)),
        ("overlay_a", "overlays/vc4-kms-v3d.dtbo", g.mixed(3_001)),
        ("overlay_b", "overlays/disable-bt.dtbo", g.text(300_001)),
        ("boot_scr", "boot.scr", g.mixed(70_001)),
        ("sector", "sector.bin", g.noise(512)),
        ("tiny", "tiny", g.text(1)),
    ]
}

fn conf(files: &[(&str, &str, Vec<u8>)]) -> String {
    let mut c = String::from(
        "meta-product = \"fat bytes\"\nmeta-version = \"1.0.0\"\n\
         define(BOOT, 2048)\ndefine(BOOT_COUNT, 65536)\n",
    );
    for (res, _, _) in files {
        c += &format!("file-resource {res} {{ host-path = \"{res}\" }}\n");
    }
    c += "mbr mbr {\n  partition 0 { block-offset = ${BOOT} block-count = ${BOOT_COUNT} type = 0xc boot = true }\n}\n";
    c += "task complete {\n  on-init {\n    mbr_write(mbr)\n    fat_mkfs(${BOOT}, ${BOOT_COUNT})\n    fat_setlabel(${BOOT}, \"BOOT\")\n    fat_mkdir(${BOOT}, \"overlays\")\n  }\n";
    for (res, path, _) in files {
        c += &format!("  on-resource {res} {{ fat_write(${{BOOT}}, \"{path}\") }}\n");
    }
    c += "  on-finish {\n    fat_mv(${BOOT}, \"config.txt\", \"overlays/config.txt\")\n    fat_cp(${BOOT}, \"overlays/disable-bt.dtbo\", \"disable-bt.copy\")\n    fat_rm(${BOOT}, \"tiny\")\n  }\n}\n";
    // As Nerves' upgrade does: new files beside the old, then moved over them.
    c += "task upgrade {\n  on-resource kernel8 { fat_write(${BOOT}, \"kernel8.img.new\") }\n  on-resource dtb { fat_write(${BOOT}, \"bcm2711-rpi-4-b.dtb.new\") }\n  on-resource overlay_b { fat_write(${BOOT}, \"overlays/disable-bt.dtbo\") }\n  on-finish {\n    fat_mv!(${BOOT}, \"kernel8.img.new\", \"kernel8.img\")\n    fat_mv!(${BOOT}, \"bcm2711-rpi-4-b.dtb.new\", \"bcm2711-rpi-4-b.dtb\")\n    fat_rm(${BOOT}, \"disable-bt.copy\")\n  }\n}\n";
    c
}

fn run(bin: &Path, args: &[&str], dir: &Path) {
    let out = Command::new(bin)
        .args(args)
        .current_dir(dir)
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{} {args:?}: {}",
        bin.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `complete`, then `upgrade` onto its result: both images.
fn apply(bin: &Path, fw: &str, dir: &Path, tag: &str) -> (Vec<u8>, Vec<u8>) {
    let img = format!("{tag}.img");
    let _ = std::fs::remove_file(dir.join(&img));
    run(
        bin,
        &["-a", "-q", "-d", &img, "-i", fw, "-t", "complete"],
        dir,
    );
    let complete = std::fs::read(dir.join(&img)).unwrap();
    run(
        bin,
        &["-a", "-q", "-d", &img, "-i", fw, "-t", "upgrade"],
        dir,
    );
    let upgraded = std::fs::read(dir.join(&img)).unwrap();
    (complete, upgraded)
}

/// Where two images first differ, as a sector number.
fn first_difference(a: &[u8], b: &[u8]) -> String {
    match a.iter().zip(b).position(|(x, y)| x != y) {
        Some(i) => format!("first at byte {i} (sector {})", i / 512),
        None => format!("lengths {} and {}", a.len(), b.len()),
    }
}

#[test]
fn fat_files_last_sectors_are_byte_identical_to_real_fwups() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ours = d.join("fwup");
    std::os::unix::fs::symlink(common::bin_path(), &ours).unwrap();
    let files = files();
    for (res, _, data) in &files {
        std::fs::write(d.join(res), data).unwrap();
    }
    std::fs::write(d.join("fwup.conf"), conf(&files)).unwrap();
    let Some(real) = common::real_fwup() else {
        // Our side alone: it packs and applies, but nothing is compared.
        run(&ours, &["-c", "-f", "fwup.conf", "-o", "ours.fw"], d);
        apply(&ours, "ours.fw", d, "ours");
        println!("fat bytes: {}", common::NO_ORACLE);
        return;
    };
    run(&real, &["-c", "-f", "fwup.conf", "-o", "real.fw"], d);
    run(&ours, &["-c", "-f", "fwup.conf", "-o", "ours.fw"], d);
    let mut compared = 0;
    for fw in ["real.fw", "ours.fw"] {
        let theirs = apply(&real, fw, d, "real");
        let mine = apply(&ours, fw, d, "ours");
        for (task, a, b) in [
            ("complete", &theirs.0, &mine.0),
            ("upgrade", &theirs.1, &mine.1),
        ] {
            assert!(
                a == b,
                "{fw}, {task}: ours differs from real fwup's image, {}",
                first_difference(a, b)
            );
            compared += 1;
        }
    }
    // The case must exercise the stale bytes: a zero tail everywhere would prove nothing.
    let img = apply(&real, "real.fw", d, "real").0;
    let stale = files
        .iter()
        .filter(|(_, _, data)| data.len() % 512 != 0 && data.len() > 16 * 1024)
        .filter(|(_, _, data)| {
            let r = data.len() % 512;
            let last = &data[data.len() - r..];
            img.chunks(512)
                .any(|s| &s[..r] == last && s[r..].iter().any(|&b| b != 0))
        })
        .count();
    println!(
        "fat bytes: {compared} images byte-identical to real fwup's ({} files, {stale} with stale bytes after their end) [{}]",
        files.len(),
        real.display()
    );
    assert!(stale > 0, "no file's last sector holds stale bytes");
}
