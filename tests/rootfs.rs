//! End-to-end tests: `imgtool rootfs` against real unsquashfs, readelf and file, and Debian's
//! real mirror (arm64 erlang-base and the libraries beam.smp links).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{imgtool, require_tool, run_ok, sha256};

fn unsquashfs_list(img: &Path) -> Vec<String> {
    let out = run_ok(Command::new(require_tool("unsquashfs")).arg("-l").arg(img));
    out.lines()
        .filter_map(|l| l.strip_prefix("squashfs-root"))
        .map(|l| {
            if l.is_empty() {
                "/".into()
            } else {
                l.to_string()
            }
        })
        .collect()
}

fn unsquashfs_cat(img: &Path, path: &str) -> Vec<u8> {
    let out = Command::new(require_tool("unsquashfs"))
        .arg("-cat")
        .arg(img)
        .arg(path)
        .output()
        .unwrap();
    common::assert_ok(&out, "unsquashfs -cat");
    out.stdout
}

/// A base dir, an overlay that replaces one file and adds another, inline files, a symlink.
fn small_spec(dir: &Path, extra: &str) -> PathBuf {
    std::fs::create_dir_all(dir.join("base/usr/bin")).unwrap();
    std::fs::create_dir_all(dir.join("base/etc")).unwrap();
    std::fs::write(dir.join("base/usr/bin/hello"), "#!/bin/sh\necho hi\n").unwrap();
    std::fs::write(dir.join("base/etc/app.conf"), "from=base\n").unwrap();
    std::fs::write(dir.join("base/etc/keep.conf"), "kept\n").unwrap();
    std::fs::create_dir_all(dir.join("overlay/etc")).unwrap();
    std::fs::write(dir.join("overlay/etc/app.conf"), "from=overlay\n").unwrap();
    std::fs::write(dir.join("overlay/etc/extra.conf"), "extra\n").unwrap();
    std::fs::create_dir_all(dir.join("srvdata")).unwrap();
    std::fs::write(dir.join("srvdata/index.html"), "<p>hi</p>\n").unwrap();
    std::fs::write(dir.join("motd.txt"), "welcome\n").unwrap();
    let spec = dir.join("rootfs.yaml");
    std::fs::write(
        &spec,
        format!(
            "arch: arm64\ncompression: gzip\ntrees:\n  - dir: base\n  - dir: overlay\n  \
             - {{ dir: srvdata, to: /srv/www }}\nfiles:\n  \
             - {{ path: /etc/hostname, content: \"guest\\n\" }}\n  \
             - {{ path: /etc/motd, source: motd.txt, mode: \"0600\" }}\n  \
             - {{ path: /bin/hi, symlink: hello }}\n{extra}"
        ),
    )
    .unwrap();
    spec
}

#[test]
fn dirs_overlay_and_inline_files_make_a_reproducible_squashfs() {
    let d = tempfile::tempdir().unwrap();
    let spec = small_spec(d.path(), "");
    let a = d.path().join("a.squashfs");
    let b = d.path().join("b.squashfs");
    run_ok(
        imgtool()
            .args(["rootfs", "build"])
            .arg(&spec)
            .arg("-o")
            .arg(&a),
    );
    // Touch the inputs' times: the image must not depend on them.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    std::fs::write(d.path().join("base/usr/bin/hello"), "#!/bin/sh\necho hi\n").unwrap();
    run_ok(
        imgtool()
            .args(["rootfs", "build"])
            .arg(&spec)
            .arg("-o")
            .arg(&b),
    );
    assert_eq!(sha256(&a), sha256(&b), "same inputs, different images");

    let list = unsquashfs_list(&a);
    for p in [
        "/usr/bin/hello",
        "/usr/bin/hi",
        "/bin",
        "/lib",
        "/etc/app.conf",
        "/etc/keep.conf",
        "/etc/extra.conf",
        "/etc/hostname",
        "/etc/motd",
        "/srv/www/index.html",
    ] {
        assert!(list.iter().any(|l| l == p), "{p} missing from {list:?}");
    }
    assert_eq!(unsquashfs_cat(&a, "etc/app.conf"), b"from=overlay\n");
    assert_eq!(unsquashfs_cat(&a, "etc/hostname"), b"guest\n");
    assert_eq!(unsquashfs_cat(&a, "etc/motd"), b"welcome\n");
    // Modes and ownership as asked: motd 0600, everything root.
    let long = run_ok(Command::new(require_tool("unsquashfs")).arg("-lln").arg(&a));
    let motd = long.lines().find(|l| l.ends_with("/etc/motd")).unwrap();
    assert!(motd.starts_with("-rw------- 0/0"), "{motd}");
    let bin = long
        .lines()
        .find(|l| l.ends_with("/bin -> usr/bin"))
        .unwrap();
    assert!(bin.starts_with('l'), "{bin}");
}

fn elf_is_static_aarch64(bytes: &[u8]) -> Result<(), String> {
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" {
        return Err("not ELF".into());
    }
    if bytes[4] != 2 || bytes[5] != 1 {
        return Err("not 64-bit little-endian".into());
    }
    let u16at = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]);
    let u32at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().unwrap());
    let u64at = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().unwrap());
    if u16at(18) != 183 {
        return Err(format!("e_machine {} is not EM_AARCH64 (183)", u16at(18)));
    }
    let (phoff, phentsize, phnum) = (u64at(32) as usize, u16at(54) as usize, u16at(56) as usize);
    for i in 0..phnum {
        let t = u32at(phoff + i * phentsize);
        if t == 3 {
            return Err("has PT_INTERP: dynamically linked".into());
        }
    }
    Ok(())
}

#[test]
fn init_is_a_static_aarch64_binary_and_gets_installed_with_its_config() {
    let d = tempfile::tempdir().unwrap();
    let init = d.path().join("init");
    run_ok(imgtool().args(["rootfs", "init", "-o"]).arg(&init));
    let bytes = std::fs::read(&init).unwrap();
    elf_is_static_aarch64(&bytes).unwrap();
    let file = run_ok(Command::new(require_tool("file")).arg(&init));
    assert!(
        file.contains("ARM aarch64") && file.contains("statically linked"),
        "{file}"
    );

    let spec = small_spec(
        d.path(),
        "profile: nerves-tuned\ninit:\n  exec: /usr/bin/hello\n  ready-match: hi\n  \
         identity-port: 4040\n",
    );
    let img = d.path().join("init.squashfs");
    let json = run_ok(
        imgtool()
            .args(["rootfs", "build", "--json"])
            .arg(&spec)
            .arg("-o")
            .arg(&img),
    );
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["profile"], "nerves-tuned");
    let list = unsquashfs_list(&img);
    for p in [
        "/usr/sbin/init",
        "/etc/imgtool-init.conf",
        "/proc",
        "/sys",
        "/dev",
        "/tmp",
        "/root",
    ] {
        assert!(list.iter().any(|l| l == p), "{p} missing from {list:?}");
    }
    assert_eq!(unsquashfs_cat(&img, "usr/sbin/init"), bytes);
    let conf = String::from_utf8(unsquashfs_cat(&img, "etc/imgtool-init.conf")).unwrap();
    for line in [
        "# imgtool-init.conf v1",
        "sysctl=vm.swappiness=1",
        "sysctl=vm.dirty_ratio=5",
        "sysctl=vm.dirty_background_ratio=2",
        "sysctl=vm.vfs_cache_pressure=150",
        "zram.size=33554432",
        "data.device=/dev/vda3",
        "data.fstype=f2fs",
        "data.mountpoint=/root",
        "exec=/usr/bin/hello",
        "ready.match=hi",
        "identity.port=4040",
    ] {
        assert!(conf.lines().any(|l| l == line), "`{line}` missing:\n{conf}");
    }
    assert_eq!(v["init_config"].as_str().unwrap(), conf);
}

#[test]
fn bad_specs_and_profiles_exit_2_naming_file_and_field() {
    let d = tempfile::tempdir().unwrap();
    let spec = d.path().join("bad.yaml");
    for (yaml, want) in [
        ("arch: arm64\ncolour: blue\n", "colour"),
        (
            "files:\n  - { path: /x, content: a, source: b }\n",
            "files[0]",
        ),
        ("trees:\n  - dir: missing-dir\n", "trees[0].dir"),
        ("profile: no-such\n", "no such profile"),
        (
            "init:\n  exec: /bin/sh\n  identity-port: 0\n",
            "identity-port: 0 is not a port",
        ),
    ] {
        std::fs::write(&spec, yaml).unwrap();
        let out = imgtool()
            .args(["rootfs", "build"])
            .arg(&spec)
            .arg("-o")
            .arg(d.path().join("o.sqfs"))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{yaml}: {err}");
        assert!(err.contains(want), "{yaml}: {err}");
        assert!(!d.path().join("o.sqfs").exists(), "output written on error");
    }
    let out = imgtool()
        .args(["rootfs", "profile", "show", "nope"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn profiles_list_and_show() {
    let list = run_ok(imgtool().args(["rootfs", "profiles"]));
    for n in ["baseline", "nerves-tuned", "minimal"] {
        assert!(
            list.lines().any(|l| l.starts_with(n)),
            "{n} missing:\n{list}"
        );
    }
    let json = run_ok(imgtool().args(["rootfs", "profile", "show", "nerves-tuned", "--json"]));
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["sysctl"]["vm.swappiness"], "1");
    assert_eq!(v["beam"]["flags"]["+MBas"], "aobf");
    assert_eq!(v["beam"]["flags"]["+MMmcs"], "30");
    assert_eq!(v["qemu"]["free-page-reporting"], false);
    let yaml = run_ok(imgtool().args(["rootfs", "profile", "show", "minimal"]));
    assert!(yaml.contains("+S"), "{yaml}");
    assert!(yaml.contains("# qemu arguments: -m 110M"), "{yaml}");
    assert!(
        yaml.contains("virtio-balloon-device,free-page-reporting=on"),
        "{yaml}"
    );
}

/// A cache that survives test runs, so the .debs download once.
fn deb_cache() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("rootfs-cache")
}

/// Follow a guest path inside `root` (absolute symlinks are relative to `root`).
fn guest_exists(root: &Path, guest: &str) -> bool {
    let mut cur = PathBuf::new();
    let parts: Vec<&str> = guest.split('/').filter(|s| !s.is_empty()).collect();
    for (i, p) in parts.iter().enumerate() {
        cur.push(p);
        let full = root.join(&cur);
        match std::fs::symlink_metadata(&full) {
            Ok(m) if m.file_type().is_symlink() => {
                let t = std::fs::read_link(&full).unwrap();
                let base = if t.is_absolute() {
                    t.to_string_lossy().into_owned()
                } else {
                    format!("{}/{}", cur.parent().unwrap().display(), t.display())
                };
                let rest = parts[i + 1..].join("/");
                return guest_exists(root, &format!("{base}/{rest}"));
            }
            Ok(_) => {}
            Err(_) => return false,
        }
    }
    true
}

#[test]
fn debian_erlang_base_for_arm64_with_what_beam_links() {
    let d = tempfile::tempdir().unwrap();
    let spec = d.path().join("beam.yaml");
    std::fs::write(
        &spec,
        "arch: arm64\ncompression: zstd\nprofile: nerves-tuned\ndebian:\n  \
         packages: [erlang-base]\n  trim:\n    paths: [usr/lib/erlang/erts-*/bin/epmd, \
         usr/lib/erlang/bin/epmd, usr/bin/epmd]\ninit:\n  program: beam\n",
    )
    .unwrap();
    let stage = d.path().join("stage");
    let img = d.path().join("beam.squashfs");
    let cache = deb_cache();
    let json = run_ok(
        imgtool()
            .args(["rootfs", "build", "--json", "--stage"])
            .arg(&stage)
            .arg("--cache")
            .arg(&cache)
            .arg(&spec)
            .arg("-o")
            .arg(&img),
    );
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let pkgs: Vec<&str> = v["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert!(pkgs.len() <= 8, "too many packages: {pkgs:?}");
    for p in [
        "erlang-base",
        "libc6",
        "libstdc++6",
        "libtinfo6",
        "zlib1g",
        "libgcc-s1",
    ] {
        assert!(pkgs.contains(&p), "{p} not in {pkgs:?}");
    }
    // Every .deb in the cache is stored under its own sha256.
    for p in v["packages"].as_array().unwrap() {
        let sha = p["sha256"].as_str().unwrap();
        let f = cache.join("debs").join(format!("{sha}.deb"));
        assert_eq!(sha256(&f), sha, "{}", f.display());
    }

    // beam.smp is there, and each DT_NEEDED (read by the real readelf) is in the tree.
    let erts: Vec<_> = std::fs::read_dir(stage.join("usr/lib/erlang"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("erts-"))
        .collect();
    assert_eq!(erts.len(), 1);
    let beam = erts[0].path().join("bin/beam.smp");
    assert!(beam.is_file());
    let dyn_out = run_ok(Command::new(require_tool("readelf")).arg("-d").arg(&beam));
    let needed: Vec<String> = dyn_out
        .lines()
        .filter(|l| l.contains("(NEEDED)"))
        .map(|l| {
            l.split('[')
                .nth(1)
                .unwrap()
                .trim_end_matches(']')
                .to_string()
        })
        .collect();
    assert!(needed.len() >= 4, "{dyn_out}");
    for n in &needed {
        let found = [
            "lib/aarch64-linux-gnu",
            "usr/lib/aarch64-linux-gnu",
            "lib",
            "usr/lib",
        ]
        .iter()
        .any(|dir| guest_exists(&stage, &format!("{dir}/{n}")));
        assert!(found, "beam.smp needs {n}, not in the tree");
    }
    let hdr = run_ok(Command::new(require_tool("readelf")).arg("-l").arg(&beam));
    let interp = hdr
        .lines()
        .find_map(|l| l.split("interpreter: ").nth(1))
        .unwrap()
        .trim_end_matches(']');
    assert!(guest_exists(&stage, interp), "loader {interp} missing");

    // The trimmed tree has no docs or man pages; the image lists beam.smp and our init.
    assert!(!stage.join("usr/share/doc").exists());
    assert!(!stage.join("usr/share/man").exists());
    let list = unsquashfs_list(&img);
    let rel = beam.strip_prefix(&stage).unwrap().display().to_string();
    assert!(list.contains(&format!("/{rel}")), "{rel} not in image");
    let conf = v["init_config"].as_str().unwrap();
    assert!(conf.contains("exec=/usr/lib/erlang/erts-"), "{conf}");
    assert!(conf.contains("\narg=+MBas\narg=aobf\n"), "{conf}");
    assert!(conf.contains("\nenv=ROOTDIR=/usr/lib/erlang\n"), "{conf}");
    assert!(conf.contains("\nready.match=IMGTOOL-APP-UP\n"), "{conf}");

    // A corrupted cache entry is caught by its sha256 and fetched again.
    let zlib = v["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "zlib1g")
        .unwrap();
    let zpath = cache
        .join("debs")
        .join(format!("{}.deb", zlib["sha256"].as_str().unwrap()));
    std::fs::write(&zpath, b"not a deb").unwrap();
    let spec2 = d.path().join("zlib.yaml");
    std::fs::write(
        &spec2,
        "arch: arm64\ndebian:\n  packages: [zlib1g]\n  resolve: none\n",
    )
    .unwrap();
    run_ok(
        imgtool()
            .args(["rootfs", "build", "--cache"])
            .arg(&cache)
            .arg(&spec2)
            .arg("-o")
            .arg(d.path().join("z.sqfs")),
    );
    assert_eq!(sha256(&zpath), zlib["sha256"].as_str().unwrap());

    // A given .deb with the wrong checksum is refused.
    let spec3 = d.path().join("local.yaml");
    std::fs::write(
        &spec3,
        format!(
            "arch: arm64\ndebian:\n  resolve: none\n  debs:\n    - path: {}\n      sha256: {}\n",
            zpath.display(),
            "0".repeat(64)
        ),
    )
    .unwrap();
    let out = imgtool()
        .args(["rootfs", "build"])
        .arg(&spec3)
        .arg("-o")
        .arg(d.path().join("l.sqfs"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("sha256 mismatch"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A spec with Debian packages from `mirror` (libtinfo6, and libc6 for what it links).
fn debian_spec(dir: &Path, mirror: &str, packages: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let spec = dir.join("small.yaml");
    std::fs::write(
        &spec,
        format!(
            "arch: arm64\ncompression: xz\ndebian:\n  mirror: {mirror}\n  suite: bookworm\n  \
             packages: [{packages}]\nfiles:\n  - {{ path: /etc/hostname, content: \"locked\\n\" }}\n"
        ),
    )
    .unwrap();
    spec
}

fn build_cmd(spec: &Path, out: &Path, cache: &Path) -> Command {
    let mut c = imgtool();
    c.args(["rootfs", "build"])
        .arg(spec)
        .arg("-o")
        .arg(out)
        .arg("--cache")
        .arg(cache);
    c
}

/// `rootfs lock` pins the set (over https); a build from the lockfile reads no index and, with
/// the .debs cached, uses no network at all: its mirror cannot even resolve. Its bytes equal
/// the online build's, whatever the working directory, umask, TZ and locale.
#[test]
fn lockfile_builds_offline_and_byte_identical_across_hosts() {
    let d = tempfile::tempdir().unwrap();
    let cache = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("rootfs-lock-cache");
    let online = debian_spec(
        &d.path().join("online"),
        "https://deb.debian.org/debian",
        "libtinfo6",
    );

    // --locked without a lockfile fails, naming the fix.
    let out = build_cmd(&online, &d.path().join("x.sqfs"), &cache)
        .arg("--locked")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("no lockfile") && err.contains("rootfs lock"),
        "{err}"
    );

    // Without a lockfile: resolved online, and it says so.
    let a = d.path().join("a.sqfs");
    let out = build_cmd(&online, &a, &cache).output().unwrap();
    common::assert_ok(&out, "online build");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no lockfile") && err.contains("current index"),
        "{err}"
    );

    let json = run_ok(
        imgtool()
            .args(["rootfs", "lock", "--json", "--cache"])
            .arg(&cache)
            .arg(&online),
    );
    let lock_path = PathBuf::from(format!("{}.lock", online.display()));
    assert!(lock_path.is_file());
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["mirror"], "https://deb.debian.org/debian");
    assert_eq!(v["suite"], "bookworm");
    assert!(v["release-date"].as_str().unwrap().contains("UTC"), "{v}");
    let pkgs = v["packages"].as_array().unwrap();
    let find = |n: &str| {
        pkgs.iter()
            .find(|p| p["name"] == n)
            .unwrap_or_else(|| panic!("{n}: {v}"))
    };
    assert_eq!(find("libtinfo6")["reason"], "listed");
    let libc = find("libc6");
    assert!(
        libc["reason"]
            .as_str()
            .unwrap()
            .ends_with("needs libc.so.6"),
        "{libc}"
    );
    for p in pkgs {
        assert_eq!(p["architecture"], "arm64");
        assert!(!p["version"].as_str().unwrap().is_empty());
        let sha = p["sha256"].as_str().unwrap();
        let deb = cache.join("debs").join(format!("{sha}.deb"));
        assert_eq!(sha256(&deb), sha, "{}", deb.display());
        assert_eq!(
            std::fs::metadata(&deb).unwrap().len(),
            p["size"].as_u64().unwrap()
        );
    }

    // The same spec and lockfile against a mirror that cannot resolve: no --offline needed.
    let offline = debian_spec(
        &d.path().join("elsewhere"),
        "http://mirror.imgtool-offline.invalid/debian",
        "libtinfo6",
    );
    let offline_lock = PathBuf::from(format!("{}.lock", offline.display()));
    std::fs::copy(&lock_path, &offline_lock).unwrap();
    let b = d.path().join("b.sqfs");
    let stdout = run_ok(&mut build_cmd(&offline, &b, &cache));
    assert!(stdout.contains("packages from the lockfile"), "{stdout}");
    assert_eq!(sha256(&a), sha256(&b), "lockfile build differs");

    // Vary one thing of the host at a time; every image is the same.
    let bin = env!("CARGO_BIN_EXE_imgtool");
    for (what, env, shell) in [
        ("working directory", vec![], "cd / &&"),
        ("umask", vec![], "umask 077 &&"),
        ("TZ", vec![("TZ", "Pacific/Chatham")], ""),
        (
            "locale",
            vec![("LC_ALL", "C.UTF-8"), ("LANG", "de_DE.UTF-8")],
            "",
        ),
    ] {
        let img = d.path().join("varied.sqfs");
        let _ = std::fs::remove_file(&img);
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg(format!("{shell} exec \"$@\""))
            .arg("sh")
            .args([bin, "rootfs", "build"])
            .arg(&offline)
            .arg("-o")
            .arg(&img)
            .arg("--cache")
            .arg(&cache)
            .current_dir(d.path().join("online"));
        for (k, v) in env {
            c.env(k, v);
        }
        run_ok(&mut c);
        assert_eq!(sha256(&a), sha256(&img), "{what} changed the image");
    }

    // --offline with an empty cache: a clear error naming the package, and no image.
    let empty = d.path().join("empty-cache");
    let c_img = d.path().join("c.sqfs");
    let out = build_cmd(&offline, &c_img, &empty)
        .arg("--offline")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("offline") && err.contains("libtinfo6"),
        "{err}"
    );
    assert!(!c_img.exists());

    // A spec that no longer fits its lockfile: --locked refuses, naming the field.
    let changed = debian_spec(
        &d.path().join("elsewhere"),
        "http://mirror.imgtool-offline.invalid/debian",
        "libtinfo6, zlib1g",
    );
    let out = build_cmd(&changed, &c_img, &cache)
        .arg("--locked")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("out of date") && err.contains("debian.packages"),
        "{err}"
    );

    // The cached InRelease is checked again offline: one changed byte is refused.
    let tampered = d.path().join("tampered-cache");
    let idx = cache.join("debian-index");
    std::fs::create_dir_all(tampered.join("debian-index")).unwrap();
    let mut n = 0;
    for e in std::fs::read_dir(&idx).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        let mut bytes = std::fs::read(e.path()).unwrap();
        if name.starts_with("InRelease-") {
            let text = String::from_utf8(bytes).unwrap();
            assert!(text.contains("Codename: bookworm"));
            bytes = text
                .replace("Codename: bookworm", "Codename: bookwurm")
                .into_bytes();
            n += 1;
        }
        std::fs::write(tampered.join("debian-index").join(&name), bytes).unwrap();
    }
    assert!(n >= 1, "no cached InRelease in {}", idx.display());
    let out = imgtool()
        .args(["rootfs", "lock", "--offline", "--cache"])
        .arg(&tampered)
        .arg("--lockfile")
        .arg(d.path().join("t.lock"))
        .arg(&online)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("no good signature"), "{err}");
    assert!(!d.path().join("t.lock").exists());
}
