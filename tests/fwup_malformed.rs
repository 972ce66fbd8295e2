//! Malformed-input suite for the `fwup` personality: corrupt and hostile archives generated
//! from the oracle fixtures (truncations, byte flips, structural lies in the ZIP, 64-bit
//! overflows, zip bombs, hostile meta.conf). Each input runs under -a, -V, -m and -l.
//!
//! A run is handled cleanly when the process neither crashes (signal, Rust panic) nor hangs
//! (10 s), -a writes nothing outside the blocks the pristine archive's task writes, and it
//! either exits non-zero with a message or succeeds with the same result (image, or stdout
//! for -m/-l) as real fwup 1.16 on the same input. Without the oracle the success must give
//! the pristine archive's result. Real fwup, when it is found ($FWUP_ORACLE, or
//! /tmp/fwup-oracle/bin/fwup), is run on every input too and its count is printed beside
//! ours with the same rule, except that its own successes are judged against its own pristine
//! result and against ours. `FWUP_ORACLE=` (empty) runs our side only.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(10);
const PATTERN: u8 = 0xa5;

// ---------------------------------------------------------------------------------------
// A small ZIP model: enough to rebuild an archive with entries moved, dropped, duplicated
// or with fields that lie.

#[derive(Clone)]
struct Ent {
    name: Vec<u8>,
    flags: u16,
    method: u16,
    crc: u32,
    data: Vec<u8>,
    size: u32,
    /// The local header's extra field (fwup's extended timestamp: meta-creation-date).
    extra: Vec<u8>,
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

/// Entries of a well-formed archive, from its central directory.
fn parse_zip(z: &[u8]) -> Vec<Ent> {
    let eocd = (0..z.len() - 21)
        .rev()
        .find(|&i| u32_at(z, i) == 0x0605_4b50)
        .expect("EOCD");
    let n = u16_at(z, eocd + 10) as usize;
    let mut at = u32_at(z, eocd + 16) as usize;
    let mut out = Vec::new();
    for _ in 0..n {
        assert_eq!(u32_at(z, at), 0x0201_4b50);
        let method = u16_at(z, at + 10);
        let crc = u32_at(z, at + 16);
        let csize = u32_at(z, at + 20) as usize;
        let size = u32_at(z, at + 24);
        let (nl, xl, cl) = (
            u16_at(z, at + 28) as usize,
            u16_at(z, at + 30) as usize,
            u16_at(z, at + 32) as usize,
        );
        let local = u32_at(z, at + 42) as usize;
        let name = z[at + 46..at + 46 + nl].to_vec();
        let lnl = u16_at(z, local + 26) as usize;
        let lxl = u16_at(z, local + 28) as usize;
        let start = local + 30 + lnl + lxl;
        out.push(Ent {
            name,
            flags: 0,
            method,
            crc,
            data: z[start..start + csize].to_vec(),
            size,
            extra: z[local + 30 + lnl..start].to_vec(),
        });
        at += 46 + nl + xl + cl;
    }
    out
}

/// Write entries: local header (sizes in it, or zeros and a data descriptor when `flags`
/// has bit 3), data, then the central directory and its end record.
fn build_zip(ents: &[Ent]) -> Vec<u8> {
    let mut z = Vec::new();
    let mut central = Vec::new();
    for e in ents {
        let off = z.len() as u32;
        let desc = e.flags & 8 != 0;
        let (crc, cs, us) = if desc {
            (0, 0, 0)
        } else {
            (e.crc, e.data.len() as u32, e.size)
        };
        z.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
        z.extend_from_slice(&20u16.to_le_bytes());
        z.extend_from_slice(&e.flags.to_le_bytes());
        z.extend_from_slice(&e.method.to_le_bytes());
        z.extend_from_slice(&[0, 0, 0x21, 0x57]); // DOS time/date
        z.extend_from_slice(&crc.to_le_bytes());
        z.extend_from_slice(&cs.to_le_bytes());
        z.extend_from_slice(&us.to_le_bytes());
        z.extend_from_slice(&(e.name.len() as u16).to_le_bytes());
        z.extend_from_slice(&(e.extra.len() as u16).to_le_bytes());
        z.extend_from_slice(&e.name);
        z.extend_from_slice(&e.extra);
        z.extend_from_slice(&e.data);
        if desc {
            z.extend_from_slice(&0x0807_4b50u32.to_le_bytes());
            z.extend_from_slice(&e.crc.to_le_bytes());
            z.extend_from_slice(&(e.data.len() as u32).to_le_bytes());
            z.extend_from_slice(&e.size.to_le_bytes());
        }
        central.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
        central.extend_from_slice(&0x0314u16.to_le_bytes());
        central.extend_from_slice(&20u16.to_le_bytes());
        central.extend_from_slice(&e.flags.to_le_bytes());
        central.extend_from_slice(&e.method.to_le_bytes());
        central.extend_from_slice(&[0, 0, 0x21, 0x57]);
        central.extend_from_slice(&e.crc.to_le_bytes());
        central.extend_from_slice(&(e.data.len() as u32).to_le_bytes());
        central.extend_from_slice(&e.size.to_le_bytes());
        central.extend_from_slice(&(e.name.len() as u16).to_le_bytes());
        central.extend_from_slice(&(e.extra.len() as u16).to_le_bytes());
        central.extend_from_slice(&[0; 6]);
        central.extend_from_slice(&(0o100644u32 << 16).to_le_bytes());
        central.extend_from_slice(&off.to_le_bytes());
        central.extend_from_slice(&e.name);
        central.extend_from_slice(&e.extra);
    }
    let cd = z.len() as u32;
    z.extend_from_slice(&central);
    z.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
    z.extend_from_slice(&[0; 4]);
    z.extend_from_slice(&(ents.len() as u16).to_le_bytes());
    z.extend_from_slice(&(ents.len() as u16).to_le_bytes());
    z.extend_from_slice(&(central.len() as u32).to_le_bytes());
    z.extend_from_slice(&cd.to_le_bytes());
    z.extend_from_slice(&0u16.to_le_bytes());
    z
}

fn stored(name: &str, data: &[u8]) -> Ent {
    let p = fwup_compat::zip::pack(data, 0);
    Ent {
        name: name.as_bytes().to_vec(),
        flags: 0,
        method: p.method,
        crc: p.crc,
        data: p.data,
        size: data.len() as u32,
        extra: Vec::new(),
    }
}

fn deflated(name: &str, data: &[u8]) -> Ent {
    let p = fwup_compat::zip::pack(data, 9);
    Ent {
        name: name.as_bytes().to_vec(),
        flags: 0,
        method: p.method,
        crc: p.crc,
        data: p.data,
        size: data.len() as u32,
        extra: Vec::new(),
    }
}

/// Raw deflate of `data` (no stored fallback), for bombs and trailing-garbage cases.
fn raw_deflate(data: &[u8]) -> Vec<u8> {
    let mut c = flate2_compress(data);
    c.shrink_to_fit();
    c
}

fn flate2_compress(data: &[u8]) -> Vec<u8> {
    // fwup_compat's packer deflates in 1 MiB pieces; for zeros it always deflates.
    let p = fwup_compat::zip::pack(data, 9);
    assert_eq!(p.method, 8);
    p.data
}

fn with_meta(ents: &[Ent], meta: &str) -> Vec<u8> {
    let mut v = ents.to_vec();
    let i = v.iter().position(|e| e.name == b"meta.conf").unwrap();
    let extra = v[i].extra.clone();
    v[i] = deflated("meta.conf", meta.as_bytes());
    v[i].extra = extra;
    build_zip(&v)
}

// ---------------------------------------------------------------------------------------
// Inputs.

struct Input {
    name: String,
    bytes: Vec<u8>,
    /// Modes in which the input is still a valid archive (its meta.conf changed, so the
    /// result differs from the pristine one): without the oracle a success there is fine.
    may_succeed: &'static [&'static str],
}

struct Base {
    dir: &'static str,
    task: &'static str,
}

/// Whether the fixture compares whole images with real fwup (06-fat does not: fwup leaves
/// stale buffer bytes after a file's last byte in its last FAT sector).
fn images_comparable(fixtures: &Path, dir: &str) -> bool {
    let e = std::fs::read_to_string(fixtures.join(dir).join("expect.txt")).unwrap_or_default();
    !e.lines().any(|l| l.trim() == "image_compare=no")
}

const BASES: &[Base] = &[
    Base {
        dir: "01-nerves-qemu-aarch64",
        task: "complete",
    },
    Base {
        dir: "02-uboot-env-redundant",
        task: "complete",
    },
    Base {
        dir: "03-gpt",
        task: "complete",
    },
    Base {
        dir: "05-config-language",
        task: "complete",
    },
    Base {
        dir: "06-fat",
        task: "complete",
    },
    Base {
        dir: "08-errors",
        task: "complete",
    },
];

/// Deterministic xorshift, so the suite is the same on every run.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn generated(base: &str, fw: &[u8], small: bool) -> Vec<Input> {
    let mut v = Vec::new();
    let mut add = |name: String, bytes: Vec<u8>| {
        v.push(Input {
            name: format!("{base}/{name}"),
            bytes,
            may_succeed: &[],
        })
    };
    let n = fw.len();
    let (cuts, flips) = if small { (14, 14) } else { (6, 6) };
    // Truncations: spread over the file, plus the first bytes and the last ones.
    for i in 1..=cuts {
        let at = n * i / (cuts + 1);
        add(format!("truncate-{at}"), fw[..at].to_vec());
    }
    for at in [0, 4, 29, 100, n - 1, n - 22, n - 23] {
        add(format!("truncate-{at}"), fw[..at.min(n)].to_vec());
    }
    // Byte flips: random positions, and each of the first local header's fields.
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ n as u64);
    let mut spots: Vec<usize> = (0..flips).map(|_| rng.below(n)).collect();
    spots.extend([6, 8, 10, 14, 18, 22, 26, 30]);
    for at in spots {
        let mut b = fw.to_vec();
        b[at] ^= 0x5a;
        add(format!("flip-{at}"), b);
    }

    let ents = parse_zip(fw);
    let data_ix = ents
        .iter()
        .position(|e| e.name.starts_with(b"data/"))
        .unwrap_or(ents.len() - 1);
    let meta_ix = ents.iter().position(|e| e.name == b"meta.conf").unwrap();
    let mut lie = |name: &str, f: &dyn Fn(&mut Vec<Ent>)| {
        let mut e = ents.clone();
        f(&mut e);
        add(name.to_string(), build_zip(&e));
    };
    lie("rebuilt-identical", &|_| {});
    lie("meta-conf-last", &|e| {
        let m = e.remove(meta_ix);
        e.push(m);
    });
    lie("entries-reversed", &|e| e.reverse());
    lie("data-entry-missing", &|e| {
        e.remove(data_ix);
    });
    lie("data-entry-duplicate", &|e| {
        let d = e[data_ix].clone();
        e.insert(data_ix + 1, d);
    });
    lie("meta-conf-duplicate", &|e| {
        let d = e[meta_ix].clone();
        e.insert(meta_ix + 1, d);
    });
    lie("data-crc-lie", &|e| e[data_ix].crc ^= 1);
    lie("meta-crc-lie", &|e| e[meta_ix].crc ^= 0x8000_0000);
    lie("data-size-lie-bigger", &|e| e[data_ix].size += 1);
    lie("data-size-lie-smaller", &|e| {
        e[data_ix].size = e[data_ix].size.saturating_sub(1)
    });
    lie("meta-size-zero", &|e| e[meta_ix].size = 0);
    lie("data-descriptor-crc-lie", &|e| {
        e[data_ix].flags |= 8;
        e[data_ix].crc ^= 0x10;
    });
    lie("data-descriptor-size-lie", &|e| {
        e[data_ix].flags |= 8;
        e[data_ix].size ^= 0x40;
    });
    lie("data-encrypted-flag", &|e| e[data_ix].flags |= 1);
    lie("meta-encrypted-flag", &|e| e[meta_ix].flags |= 1);
    lie("data-method-bzip2", &|e| e[data_ix].method = 12);
    lie("data-trailing-garbage", &|e| {
        if e[data_ix].method == 8 {
            e[data_ix].data.extend_from_slice(b"GARBAGE!");
        } else {
            e[data_ix].data.extend_from_slice(b"GARBAGE!");
            e[data_ix].size += 8;
        }
    });
    lie("meta-trailing-garbage", &|e| {
        e[meta_ix].data.extend_from_slice(&[0x42; 16]);
    });
    lie("data-name-traversal", &|e| {
        e[data_ix].name = b"data/../../../../tmp/x".to_vec()
    });
    lie("meta-conf-empty", &|e| {
        e[meta_ix] = stored("meta.conf", b"")
    });
    lie("meta-conf-9-bytes", &|e| {
        e[meta_ix] = stored("meta.conf", b"meta-x=1\n")
    });
    // A zip bomb in place of the data: 64 MiB of zeros in ~64 KiB.
    lie("data-zip-bomb", &|e| {
        let bomb = raw_deflate(&vec![0u8; 64 << 20]);
        e[data_ix].data = bomb;
        e[data_ix].method = 8;
        e[data_ix].size = 64 << 20;
        e[data_ix].crc = crc32(&vec![0u8; 64 << 20]);
    });
    lie("meta-zip-bomb", &|e| {
        let mut m = b"meta-product=\"".to_vec();
        m.resize(32 << 20, b'A');
        e[meta_ix].data = raw_deflate(&m);
        e[meta_ix].method = 8;
        e[meta_ix].size = m.len() as u32;
        e[meta_ix].crc = crc32(&m);
    });
    // Raw edits of the pristine bytes: the EOCD's count and central directory offset.
    let eocd = n - 22;
    let mut b = fw.to_vec();
    b[eocd + 10] ^= 1;
    add("eocd-count-lie".into(), b);
    let mut b = fw.to_vec();
    b[eocd + 16] ^= 4;
    add("eocd-offset-lie".into(), b);
    let mut b = fw.to_vec();
    b.extend_from_slice(b"PK\x03\x04trailing junk after the archive");
    add("junk-after-eocd".into(), b);
    v
}

fn crc32(d: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(d);
    h.finalize()
}

/// Hostile meta.conf texts on the Nerves fixture: each must be refused before any write.
fn hostile(fw: &[u8]) -> Vec<Input> {
    let ents = parse_zip(fw);
    let meta_ix = ents.iter().position(|e| e.name == b"meta.conf").unwrap();
    let meta = {
        use std::io::Read;
        let mut s = String::new();
        flate2_read(&ents[meta_ix].data)
            .read_to_string(&mut s)
            .unwrap();
        s
    };
    let big = "36028797018963968"; // 2^55 blocks = 2^64 bytes
    let env = "uboot-environment \"uboot-env\" {\nblock-offset=16\nblock-count=256\n}";
    assert!(meta.contains(env), "fixture meta.conf changed");
    let edits: Vec<(&str, String)> = vec![
        (
            "env-no-block-count",
            meta.replace(env, "uboot-environment \"uboot-env\" {\nblock-offset=16\n}"),
        ),
        (
            "env-block-count-0-redundant",
            meta.replace(
                env,
                "uboot-environment \"uboot-env\" {\nblock-offset=16\nblock-count=0\nblock-offset-redund=300\n}",
            ),
        ),
        (
            "env-block-count-65535",
            meta.replace("block-count=256", "block-count=65535"),
        ),
        (
            "env-block-offset-2^55",
            meta.replace("block-offset=16\n", &format!("block-offset={big}\n")),
        ),
        (
            "env-block-offset-negative",
            meta.replace("block-offset=16\n", "block-offset=-16\n"),
        ),
        (
            "env-redundant-overlap",
            meta.replace(
                env,
                "uboot-environment \"uboot-env\" {\nblock-offset=16\nblock-count=256\nblock-offset-redund=100\n}",
            ),
        ),
        (
            "raw-write-2^55",
            meta.replacen("raw_write,272", &format!("raw_write,{big}"), 1),
        ),
        (
            "raw-write-near-2^63",
            meta.replacen("raw_write,272", "raw_write,18014398509481983", 1),
        ),
        (
            "raw-memset-offset-2^55",
            meta.replacen("raw_memset,8192,256", &format!("raw_memset,{big},256"), 1),
        ),
        (
            "raw-memset-count-2^55",
            meta.replacen("raw_memset,8192,256", &format!("raw_memset,8192,{big}"), 1),
        ),
        (
            "raw-memset-count-2^52",
            meta.replacen("raw_memset,8192,256", "raw_memset,8192,4503599627370496", 1),
        ),
        (
            "raw-memset-count-u64-max",
            meta.replacen(
                "raw_memset,8192,256",
                "raw_memset,8192,18446744073709551615",
                1,
            ),
        ),
        (
            "trim-2^55",
            meta.replacen("trim,1296,1024", &format!("trim,{big},{big}"), 1),
        ),
        (
            "mbr-offset-u32-overflow",
            meta.replacen("block-offset=4096", "block-offset=4294967295", 1),
        ),
        (
            "mbr-count-overflow",
            meta.replacen("block-count=4096", "block-count=4294967290", 1),
        ),
        (
            "resource-length-u64-max",
            meta.replacen("length=163840", "length=18446744073709551615", 1),
        ),
        (
            "resource-length-huge",
            meta.replacen("length=163840", "length=4611686018427387904", 1),
        ),
        (
            "resource-length-negative",
            meta.replacen("length=163840", "length=-5", 1),
        ),
        (
            "define-eval-int64-min-div",
            format!("define-eval(X, \"-9223372036854775808 / -1\")\n{meta}"),
        ),
        (
            "define-eval-overflow",
            format!("define-eval(X, \"9223372036854775807 * 9223372036854775807\")\n{meta}"),
        ),
        (
            "execute-without-unsafe",
            meta.replacen("funlist={", "funlist={2,execute,\"touch /tmp/pwned-by-fwup\",", 1),
        ),
        (
            "unknown-env-reference",
            meta.replacen("uboot_clearenv,\"uboot-env\"", "uboot_clearenv,\"nope\"", 1),
        ),
        (
            "funlist-argc-lie",
            meta.replacen("funlist={2,", "funlist={9,", 1),
        ),
        (
            "fat-mkfs-count-0",
            meta.replacen("funlist={", "funlist={3,fat_mkfs,0,0,", 1),
        ),
        (
            "gpt-offset-2^55",
            format!(
                "{meta}gpt \"g\" {{\nguid=\"b443fbeb-2c93-481b-88b3-0ecb0aeba911\"\npartition 0 {{\nblock-offset={big}\nblock-count=1\ntype=\"c12a7328-f81f-11d2-ba4b-00a0c93ec93b\"\nguid=\"5278721d-0089-4768-85df-b8f1b97e6684\"\n}}\n}}\n"
            ),
        ),
    ];
    let mut v = Vec::new();
    for (name, m) in edits {
        assert_ne!(m, meta, "{name}: the edit did not apply");
        // Valid meta.conf that only fail when applied (or, for define-eval's wrapping
        // product of an unused define, not even then): -m and -l list them, as fwup does.
        let may_succeed: &'static [&'static str] = match name {
            "define-eval-overflow" => &["-a", "-m", "-l"],
            "raw-memset-count-2^52"
            | "resource-length-huge"
            | "execute-without-unsafe"
            | "fat-mkfs-count-0" => &["-m", "-l"],
            _ => &[],
        };
        v.push(Input {
            name: format!("hostile/{name}"),
            bytes: with_meta(&ents, &m),
            may_succeed,
        });
    }
    v
}

fn flate2_read(d: &[u8]) -> impl std::io::Read + '_ {
    // fwup_compat's streaming reader inflates one entry; wrap the raw deflate data.
    let z = build_zip(&[Ent {
        name: b"x".to_vec(),
        flags: 8,
        method: 8,
        crc: 0,
        data: d.to_vec(),
        size: 0,
        extra: Vec::new(),
    }]);
    let mut s = fwup_compat::zip::ZipStream::new(std::io::Cursor::new(z));
    s.next_entry().unwrap();
    let mut out = Vec::new();
    // The descriptor's CRC is a placeholder: read the data and ignore the end check.
    let _ = std::io::Read::read_to_end(&mut s, &mut out);
    std::io::Cursor::new(out)
}

// ---------------------------------------------------------------------------------------
// Running.

#[derive(Debug, Clone, PartialEq)]
enum Outcome {
    Ok { out: Vec<u8> },
    Failed { msg: bool },
    Crashed(String),
    Hung,
}

fn run(bin: &Path, args: &[&str], dir: &Path) -> Outcome {
    let mut child = Command::new(bin)
        .args(args)
        .current_dir(dir)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("LANG", "C")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    // Read the pipes on threads so a chatty child cannot block on a full pipe.
    let mut so = child.stdout.take().unwrap();
    let mut se = child.stderr.take().unwrap();
    let t1 = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut so, &mut v);
        v
    });
    let t2 = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut se, &mut v);
        v
    });
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if start.elapsed() > TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let out = t1.join().unwrap();
    let err = t2.join().unwrap();
    let Some(status) = status else {
        return Outcome::Hung;
    };
    use std::os::unix::process::ExitStatusExt;
    let err_s = String::from_utf8_lossy(&err);
    if let Some(sig) = status.signal() {
        return Outcome::Crashed(format!("signal {sig}"));
    }
    if err_s.contains("panicked") || status.code() == Some(101) {
        return Outcome::Crashed(err_s.lines().take(3).collect::<Vec<_>>().join(" | "));
    }
    if status.success() {
        Outcome::Ok { out }
    } else {
        let msg = !err_s.trim().is_empty() || !String::from_utf8_lossy(&out).trim().is_empty();
        Outcome::Failed { msg }
    }
}

const MODES: [&str; 4] = ["-a", "-V", "-m", "-l"];

/// What one implementation did with one input in one mode.
struct Run {
    outcome: Outcome,
    /// For -a: the image, and whether it changed blocks outside the allowed ones.
    image: Option<Vec<u8>>,
    outside: Option<String>,
}

fn prefilled(path: &Path, len: usize) {
    std::fs::write(path, vec![PATTERN; len]).unwrap();
}

fn run_mode(
    bin: &Path,
    dir: &Path,
    mode: &str,
    task: &str,
    img_len: usize,
    allowed: &[bool],
) -> Run {
    let img = dir.join("out.img");
    let args: Vec<&str> = match mode {
        "-a" => {
            prefilled(&img, img_len);
            vec!["-a", "-q", "-d", "out.img", "-i", "in.fw", "-t", task]
        }
        m => vec![m, "-i", "in.fw"],
    };
    let outcome = run(bin, &args, dir);
    if mode != "-a" {
        return Run {
            outcome,
            image: None,
            outside: None,
        };
    }
    let image = std::fs::read(&img).unwrap_or_default();
    let _ = std::fs::remove_file(&img);
    let mut outside = None;
    if image.len() > img_len.max(allowed.len() * 512) {
        outside = Some(format!("grew the image to {} bytes", image.len()));
    }
    for (i, blk) in image.chunks(512).enumerate() {
        if outside.is_some() {
            break;
        }
        if !allowed.get(i).copied().unwrap_or(false) && blk.iter().any(|&b| b != PATTERN) {
            outside = Some(format!("wrote block {i}, outside the task's blocks"));
        }
    }
    Run {
        outcome,
        image: Some(image),
        outside,
    }
}

fn oracle() -> Option<PathBuf> {
    // FWUP_ORACLE set but empty: run our side only.
    if std::env::var_os("FWUP_ORACLE").is_some_and(|v| v.is_empty()) {
        return None;
    }
    let cands = [
        std::env::var("FWUP_ORACLE").ok().map(PathBuf::from),
        Some(PathBuf::from("/tmp/fwup-oracle/bin/fwup")),
    ];
    cands.into_iter().flatten().find(|p| {
        p.is_file()
            && Command::new(p)
                .arg("--version")
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "1.16.0")
    })
}

/// What the pristine archive gives, to judge successes by.
struct Pristine {
    task: &'static str,
    img_len: usize,
    allowed: Vec<bool>,
    results: HashMap<&'static str, Vec<u8>>,
}

fn pristine(bin: &Path, dir: &Path, fw: &[u8], task: &'static str) -> Pristine {
    std::fs::write(dir.join("in.fw"), fw).unwrap();
    // Which blocks the task writes: apply onto two different fills, keep every block that
    // changed in either.
    let mut allowed: Vec<bool> = Vec::new();
    let mut img_len = 0;
    let mut results = HashMap::new();
    for fill in [PATTERN, !PATTERN] {
        let img = dir.join("out.img");
        let _ = std::fs::remove_file(&img);
        let o = run(
            bin,
            &["-a", "-q", "-d", "out.img", "-i", "in.fw", "-t", task],
            dir,
        );
        assert!(matches!(o, Outcome::Ok { .. }), "pristine apply: {o:?}");
        let fresh = std::fs::read(&img).unwrap();
        img_len = fresh.len();
        std::fs::write(&img, vec![fill; img_len]).unwrap();
        let o = run(
            bin,
            &["-a", "-q", "-d", "out.img", "-i", "in.fw", "-t", task],
            dir,
        );
        assert!(matches!(o, Outcome::Ok { .. }), "pristine apply: {o:?}");
        let image = std::fs::read(&img).unwrap();
        allowed.resize(allowed.len().max(image.len().div_ceil(512)), false);
        for (i, blk) in image.chunks(512).enumerate() {
            if blk.iter().any(|&b| b != fill) {
                allowed[i] = true;
            }
        }
        if fill == PATTERN {
            results.insert("-a", image);
        }
    }
    for m in ["-m", "-l"] {
        if let Outcome::Ok { out } = run(bin, &[m, "-i", "in.fw"], dir) {
            results.insert(m, out);
        }
    }
    if let Outcome::Ok { .. } = run(bin, &["-V", "-i", "in.fw"], dir) {
        results.insert("-V", Vec::new());
    }
    Pristine {
        task,
        img_len,
        allowed,
        results,
    }
}

#[derive(Default)]
struct Tally {
    runs: usize,
    clean: usize,
    crashes: usize,
    hangs: usize,
    outside: usize,
    failures: Vec<String>,
}

impl Tally {
    fn merge(&mut self, o: Tally) {
        self.runs += o.runs;
        self.clean += o.clean;
        self.crashes += o.crashes;
        self.hangs += o.hangs;
        self.outside += o.outside;
        self.failures.extend(o.failures);
    }
}

fn same_result(mode: &str, r: &Run, other: Option<&[u8]>) -> bool {
    let Some(other) = other else { return false };
    match (mode, &r.outcome) {
        ("-a", Outcome::Ok { .. }) => r.image.as_deref() == Some(other),
        ("-V", Outcome::Ok { .. }) => true,
        (_, Outcome::Ok { out }) => out.as_slice() == other,
        _ => false,
    }
}

fn result_of(mode: &str, r: &Run) -> Option<Vec<u8>> {
    match (&r.outcome, mode) {
        (Outcome::Ok { .. }, "-a") => r.image.clone(),
        (Outcome::Ok { .. }, "-V") => Some(Vec::new()),
        (Outcome::Ok { out }, _) => Some(out.clone()),
        _ => None,
    }
}

/// One fixture's inputs, under each mode, with ours and (when found) real fwup.
fn run_base(
    base: &Base,
    ours_bin: &Path,
    oracle: Option<&Path>,
    fixtures: &Path,
    work: &Path,
) -> (Tally, Tally, usize) {
    let (mut ours, mut theirs) = (Tally::default(), Tally::default());
    let fw = std::fs::read(fixtures.join(base.dir).join("case.fw")).unwrap();
    let dir = work.join(base.dir);
    std::fs::create_dir_all(&dir).unwrap();
    let p = pristine(ours_bin, &dir, &fw, base.task);
    let comparable = images_comparable(fixtures, base.dir);
    // Real fwup's own results on the pristine archive, to judge its successes by.
    let theirs_pristine: HashMap<&str, Vec<u8>> = match oracle {
        Some(o) => {
            std::fs::write(dir.join("in.fw"), &fw).unwrap();
            MODES
                .iter()
                .filter_map(|m| {
                    let r = run_mode(o, &dir, m, p.task, p.img_len, &p.allowed);
                    result_of(m, &r).map(|v| (*m, v))
                })
                .collect()
        }
        None => HashMap::new(),
    };
    let small = fw.len() < 64 * 1024;
    let mut inputs = generated(base.dir, &fw, small);
    if base.dir.starts_with("01-") {
        inputs.extend(hostile(&fw));
    }
    for input in &inputs {
        std::fs::write(dir.join("in.fw"), &input.bytes).unwrap();
        for mode in MODES {
            let a = run_mode(ours_bin, &dir, mode, p.task, p.img_len, &p.allowed);
            let b = oracle.map(|o| run_mode(o, &dir, mode, p.task, p.img_len, &p.allowed));
            let pristine_result = p.results.get(mode).map(|v| v.as_slice());
            let theirs_result = b.as_ref().and_then(|b| result_of(mode, b));
            // Ours: a success must match real fwup's (or, without it, or for images the
            // fixture does not compare, the pristine result).
            let ours_ok_success = match &b {
                Some(_) if mode == "-a" && !comparable => {
                    same_result(mode, &a, pristine_result) && theirs_result.is_some()
                }
                Some(_) => same_result(mode, &a, theirs_result.as_deref()),
                None => {
                    same_result(mode, &a, pristine_result)
                        || (input.may_succeed.contains(&mode) && result_of(mode, &a).is_some())
                }
            };
            judge(&mut ours, &input.name, mode, &a, ours_ok_success);
            if let Some(b) = &b {
                let ours_result = result_of(mode, &a);
                let ok = same_result(mode, b, theirs_pristine.get(mode).map(|v| v.as_slice()))
                    || same_result(mode, b, ours_result.as_deref());
                judge(&mut theirs, &input.name, mode, b, ok);
            }
        }
    }
    (ours, theirs, inputs.len())
}

#[test]
fn malformed_archives_are_refused_or_applied_like_fwup() {
    let work = tempfile::tempdir().unwrap();
    let ours_bin = work.path().join("fwup");
    std::os::unix::fs::symlink(common::bin_path(), &ours_bin).unwrap();
    let oracle = oracle();
    let fixtures = common::fwup_fixtures();
    let started = Instant::now();
    let (mut ours, mut theirs) = (Tally::default(), Tally::default());
    let mut inputs_total = 0;
    // Two fixtures at a time (the machine and CI have two cores).
    let results: Vec<(Tally, Tally, usize)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..2)
            .map(|w| {
                let (ours_bin, oracle, fixtures, work) =
                    (&ours_bin, oracle.as_deref(), &fixtures, work.path());
                s.spawn(move || {
                    BASES
                        .iter()
                        .skip(w)
                        .step_by(2)
                        .map(|b| run_base(b, ours_bin, oracle, fixtures, work))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    for (a, b, n) in results {
        ours.merge(a);
        theirs.merge(b);
        inputs_total += n;
    }
    let pct = |t: &Tally| 100.0 * t.clean as f64 / t.runs.max(1) as f64;
    println!(
        "malformed suite: {inputs_total} inputs x 4 modes = {} runs in {:.0} s",
        ours.runs,
        started.elapsed().as_secs_f64()
    );
    println!(
        "  ours:      {}/{} clean ({:.1} %), {} crashes, {} hangs, {} writes outside the task",
        ours.clean,
        ours.runs,
        pct(&ours),
        ours.crashes,
        ours.hangs,
        ours.outside
    );
    match &oracle {
        Some(o) => println!(
            "  fwup 1.16: {}/{} clean ({:.1} %), {} crashes, {} hangs, {} writes outside the task [{}]",
            theirs.clean,
            theirs.runs,
            pct(&theirs),
            theirs.crashes,
            theirs.hangs,
            theirs.outside,
            o.display()
        ),
        None => println!(
            "  fwup 1.16: not found (set FWUP_ORACLE); successes were compared with the pristine result"
        ),
    }
    for f in theirs.failures.iter().take(40) {
        println!("  fwup unclean: {f}");
    }
    assert!(
        ours.failures.is_empty(),
        "{} of {} runs not handled cleanly:\n{}",
        ours.failures.len(),
        ours.runs,
        ours.failures.join("\n")
    );
}

fn judge(t: &mut Tally, name: &str, mode: &str, r: &Run, success_ok: bool) {
    t.runs += 1;
    let bad = match (&r.outcome, &r.outside) {
        (Outcome::Crashed(why), _) => {
            t.crashes += 1;
            Some(format!("crashed: {why}"))
        }
        (Outcome::Hung, _) => {
            t.hangs += 1;
            Some("hung".to_string())
        }
        (_, Some(w)) => {
            t.outside += 1;
            Some(w.clone())
        }
        (Outcome::Failed { msg: false }, _) => Some("failed without a message".to_string()),
        (Outcome::Failed { msg: true }, _) => None,
        (Outcome::Ok { .. }, _) if success_ok => None,
        (Outcome::Ok { .. }, _) => Some("succeeded with a different result".to_string()),
    };
    match bad {
        None => t.clean += 1,
        Some(why) => t.failures.push(format!("{name} {mode}: {why}")),
    }
}
