//! End-to-end tests: `imgtool env` and the fw_printenv/fw_setenv personalities against the
//! real fw_printenv/fw_setenv (libubootenv-tool on Debian) and mkenvimage (u-boot-tools).

mod common;

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

const OFF: u64 = 0x2000;
const REDUND: u64 = 0x6000;
const SIZE: u64 = 0x4000;

struct Fixture {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    img: PathBuf,
    cfg: PathBuf,
}

/// A 1 MiB zero image and a fw_env.config for it (one copy, or two when `redundant`).
fn fixture(redundant: bool) -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let img = dir.join("disk.img");
    fs::File::create(&img).unwrap().set_len(1 << 20).unwrap();
    let cfg = dir.join("fw_env.config");
    let mut text = format!("# test config\n{} 0x{OFF:x} 0x{SIZE:x}\n", img.display());
    if redundant {
        text += &format!("{} 0x{REDUND:x} 0x{SIZE:x}\n", img.display());
    }
    fs::write(&cfg, text).unwrap();
    Fixture {
        _dir: tmp,
        dir,
        img,
        cfg,
    }
}

/// imgtool env SUB --image IMG with the fixture's location as flags.
fn env_cmd(f: &Fixture, redundant: bool, sub: &str) -> Command {
    let mut c = imgtool();
    c.args(["env", sub, "--image"]).arg(&f.img);
    c.args([
        "--offset",
        &format!("0x{OFF:x}"),
        "--size",
        &format!("0x{SIZE:x}"),
    ]);
    if redundant {
        c.args(["--redund-offset", &format!("{REDUND}")]);
    }
    c
}

fn real_printenv(f: &Fixture, extra: &[&str]) -> String {
    run_ok(
        Command::new(require_tool("fw_printenv"))
            .arg("-c")
            .arg(&f.cfg)
            .args(extra),
    )
}

fn real_setenv(f: &Fixture, extra: &[&str]) {
    run_ok(
        Command::new(require_tool("fw_setenv"))
            .arg("-c")
            .arg(&f.cfg)
            .args(extra),
    );
}

/// Put a valid environment made by the real mkenvimage at `off` (libubootenv's fw_setenv
/// refuses to start from a blank device).
fn mkenvimage_at(f: &Fixture, redundant: bool, off: u64, vars: &str) {
    let txt = f.dir.join("vars.txt");
    let bin = f.dir.join("env.bin");
    fs::write(&txt, vars).unwrap();
    let mut c = Command::new(require_tool("mkenvimage"));
    c.args(["-s", &format!("0x{SIZE:x}"), "-o"]).arg(&bin);
    if redundant {
        c.arg("-r");
    }
    run_ok(c.arg(&txt));
    let img = fs::OpenOptions::new().write(true).open(&f.img).unwrap();
    img.write_all_at(&fs::read(&bin).unwrap(), off).unwrap();
}

fn json_print(f: &Fixture, redundant: bool) -> serde_json::Value {
    serde_json::from_str(&run_ok(env_cmd(f, redundant, "print").arg("--json"))).unwrap()
}

#[test]
fn single_we_write_real_fw_printenv_reads() {
    let f = fixture(false);
    run_ok(env_cmd(&f, false, "set").args([
        "--init",
        "bootcount",
        "0",
        "cmd",
        "run a; run b",
        "empty",
        "",
    ]));
    run_ok(env_cmd(&f, false, "set").args(["nerves_fw_active", "b", "bootcount", "1"]));
    run_ok(env_cmd(&f, false, "unset").args(["empty", "not_there"]));
    assert_eq!(
        real_printenv(&f, &[]),
        "bootcount=1\ncmd=run a; run b\nnerves_fw_active=b\n"
    );
    assert_eq!(real_printenv(&f, &["-n", "cmd"]), "run a; run b\n");
    // Nothing outside the block was touched, and the image did not grow.
    let bytes = fs::read(&f.img).unwrap();
    assert_eq!(bytes.len(), 1 << 20);
    assert!(bytes[..OFF as usize].iter().all(|&b| b == 0));
    assert!(bytes[(OFF + SIZE) as usize..].iter().all(|&b| b == 0));
}

#[test]
fn single_real_fw_setenv_writes_we_read() {
    let f = fixture(false);
    mkenvimage_at(&f, false, OFF, "a=1\nb=2\n");
    real_setenv(&f, &["foo", "bar baz"]);
    real_setenv(&f, &["a"]); // delete
    assert_eq!(
        run_ok(&mut env_cmd(&f, false, "print")),
        "b=2\nfoo=bar baz\n"
    );
    assert_eq!(run_ok(env_cmd(&f, false, "get").arg("foo")), "bar baz\n");
    let j = json_print(&f, false);
    assert_eq!(j["layout"], "single");
    assert_eq!(j["vars"]["b"], "2");
    // Same through -c with the same config the real tool used.
    let out = run_ok(imgtool().args(["env", "print", "-c"]).arg(&f.cfg));
    assert_eq!(out, "b=2\nfoo=bar baz\n");
}

#[test]
fn default_location_is_nerves_layout() {
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("special.img");
    fs::File::create(&img).unwrap().set_len(0x40000).unwrap();
    run_ok(
        imgtool()
            .args(["env", "set", "--init", "--image"])
            .arg(&img)
            .args(["k", "v"]),
    );
    let cfg = tmp.path().join("cfg");
    fs::write(&cfg, format!("{} 0x2000 0x20000\n", img.display())).unwrap();
    let out = run_ok(
        Command::new(require_tool("fw_printenv"))
            .arg("-c")
            .arg(&cfg),
    );
    assert_eq!(out, "k=v\n");
}

#[test]
fn redundant_round_trips_with_real_tools() {
    let f = fixture(true);
    // Ours: --init writes both copies with flag 1, the set goes to copy 2 with flag 2.
    run_ok(env_cmd(&f, true, "set").args(["--init", "bootcount", "0", "upgrade_available", "0"]));
    let j = json_print(&f, true);
    assert_eq!(
        (j["active_copy"].as_u64(), j["flag"].as_u64()),
        (Some(2), Some(2))
    );
    assert_eq!(real_printenv(&f, &[]), "bootcount=0\nupgrade_available=0\n");

    // Real fw_setenv writes the inactive copy (1) with flag 3; we follow.
    real_setenv(&f, &["bootcount", "1"]);
    let j = json_print(&f, true);
    assert_eq!(
        (j["active_copy"].as_u64(), j["flag"].as_u64()),
        (Some(1), Some(3))
    );
    assert_eq!(j["copies"][0]["flag"], 3);
    assert_eq!(j["copies"][1]["flag"], 2);
    assert_eq!(run_ok(env_cmd(&f, true, "get").arg("bootcount")), "1\n");

    // Ours again: copy 2, flag 4; the real tool reads it.
    run_ok(env_cmd(&f, true, "set").args(["nerves_fw_active", "a"]));
    assert_eq!(json_print(&f, true)["active_copy"], 2);
    assert_eq!(
        real_printenv(&f, &[]),
        "bootcount=1\nnerves_fw_active=a\nupgrade_available=0\n"
    );
}

#[test]
fn redundant_from_mkenvimage_and_flag_wrap() {
    let f = fixture(true);
    // mkenvimage -r: copy 1 valid with flag 1, copy 2 blank (bad CRC, ignored).
    mkenvimage_at(&f, true, OFF, "x=1\n");
    let j = json_print(&f, true);
    assert_eq!(j["active_copy"], 1);
    assert_eq!(j["copies"][1]["crc_ok"], false);
    run_ok(env_cmd(&f, true, "set").args(["y", "2"]));
    assert_eq!(real_printenv(&f, &[]), "x=1\ny=2\n");
    // Copy 1 flag 255 and copy 2 flag 0: 0 is newer (wrap), for us and for the real tool.
    let img = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&f.img)
        .unwrap();
    for (off, flag, val) in [(OFF, 255u8, "old"), (REDUND, 0u8, "new")] {
        let env = uboot_env::Env::from_pairs([("v", val)]).unwrap();
        let block = env
            .to_block(SIZE as usize, Some(flag), uboot_env::WriteOptions::STANDARD)
            .unwrap();
        img.write_all_at(&block, off).unwrap();
    }
    assert_eq!(run_ok(env_cmd(&f, true, "get").arg("v")), "new\n");
    assert_eq!(real_printenv(&f, &["-n", "v"]), "new\n");
}

#[test]
fn bad_crc_is_reported_never_trusted() {
    let f = fixture(false);
    run_ok(env_cmd(&f, false, "set").args(["--init", "a", "1"]));
    let img = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&f.img)
        .unwrap();
    img.write_all_at(b"b", OFF + 4).unwrap(); // "a=1" -> "b=1" with the old CRC
    for sub in ["print", "get"] {
        let mut c = env_cmd(&f, false, sub);
        if sub == "get" {
            c.arg("a");
        }
        let out = c.output().unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("bad CRC32") && err.contains("offset 0x2000"),
            "{err}"
        );
        assert!(out.stdout.is_empty());
    }
    // set refuses too (it would otherwise silently drop the old variables) unless --init.
    let out = env_cmd(&f, false, "set").args(["c", "3"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--init"));
    // The personality fails the same way.
    let (_d, printenv, _) = personality();
    let out = Command::new(&printenv)
        .arg("-c")
        .arg(&f.cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad CRC32"));
}

#[test]
fn redundant_corrupt_active_copy_falls_back() {
    let f = fixture(true);
    run_ok(env_cmd(&f, true, "set").args(["--init", "v", "1"]));
    run_ok(env_cmd(&f, true, "set").args(["v", "2"])); // copy 1, flag 3
    let img = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&f.img)
        .unwrap();
    img.write_all_at(b"\x01", OFF + 100).unwrap(); // break copy 1's CRC
    let j = json_print(&f, true);
    assert_eq!(j["active_copy"], 2);
    assert_eq!(j["vars"]["v"], "1");
    assert!(j["copies"][0]["error"]
        .as_str()
        .unwrap()
        .contains("bad CRC32"));
    assert_eq!(real_printenv(&f, &["-n", "v"]), "1\n");
    // Both broken: error naming both copies.
    img.write_all_at(b"\x01", REDUND + 100).unwrap();
    let out = env_cmd(&f, true, "print").output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("copy 1: bad CRC32") && err.contains("copy 2: bad CRC32"),
        "{err}"
    );
}

/// fw_printenv and fw_setenv symlinks to our binary in a temp dir.
fn personality() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("fw_printenv");
    let s = d.path().join("fw_setenv");
    std::os::unix::fs::symlink(bin_path(), &p).unwrap();
    std::os::unix::fs::symlink(bin_path(), &s).unwrap();
    (d, p, s)
}

fn ours(tool: &Path, cfg: &Path, extra: &[&str]) -> String {
    run_ok(Command::new(tool).arg("-c").arg(cfg).args(extra))
}

#[test]
fn personality_matches_real_fw_printenv() {
    let (_d, printenv, setenv) = personality();
    for redundant in [false, true] {
        let f = fixture(redundant);
        mkenvimage_at(&f, redundant, OFF, "bootcmd=run boot\nbootdelay=3\n");
        real_setenv(&f, &["serial#", "A-1"]);
        // Our fw_setenv: joined values, deletion, script.
        ours(&setenv, &f.cfg, &["msg", "two", "words"]);
        ours(&setenv, &f.cfg, &["bootdelay"]);
        let script = f.dir.join("script");
        fs::write(
            &script,
            "# comment\nfrom_script yes it is\nbootcmd\n\nspaced\t  tabbed\n",
        )
        .unwrap();
        ours(&setenv, &f.cfg, &["-s", script.to_str().unwrap()]);
        let real = real_printenv(&f, &[]);
        assert_eq!(
            real,
            "from_script=yes it is\nmsg=two words\nserial#=A-1\nspaced=tabbed\n"
        );
        for args in [&[][..], &["msg"], &["-n", "serial#"], &["spaced", "msg"]] {
            assert_eq!(
                ours(&printenv, &f.cfg, args),
                real_printenv(&f, args),
                "args {args:?}"
            );
        }
        // u-boot-tools' errors: unknown name, -n with two names.
        let out = Command::new(&printenv)
            .arg("-c")
            .arg(&f.cfg)
            .arg("nope")
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("\"nope\" not defined"));
        let out = Command::new(&printenv)
            .args(["-c"])
            .arg(&f.cfg)
            .args(["-n", "a", "b"])
            .output()
            .unwrap();
        assert!(!out.status.success());
    }
}

#[test]
fn bad_input_errors_name_the_problem() {
    let f = fixture(false);
    // Env past the end of the image.
    let out = imgtool()
        .args(["env", "print", "--image"])
        .arg(&f.img)
        .args(["--offset", "0xff000"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("1048576 bytes") && err.contains("ends at byte"),
        "{err}"
    );
    // Odd NAME VALUE list.
    let out = env_cmd(&f, false, "set")
        .args(["a", "1", "b"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("\"b\" has no value"));
    // Bad config line.
    let cfg = f.dir.join("bad.config");
    fs::write(&cfg, "/dev/x 0x2000\n").unwrap();
    let out = imgtool()
        .args(["env", "print", "-c"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad.config:line 1"));
    // Invalid name.
    run_ok(env_cmd(&f, false, "set").args(["--init", "ok", "1"]));
    let out = env_cmd(&f, false, "set")
        .args(["a=b", "1"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid variable name"));
    // Too big for the block: names the bytes needed.
    let big = "x".repeat(SIZE as usize);
    let out = env_cmd(&f, false, "set")
        .args(["big", &big])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("variables need 16395 bytes but the environment holds 16380"));
}

#[test]
fn fw_setenv_waits_for_the_u_boot_tools_lock() {
    use std::os::unix::io::AsRawFd;
    let (_d, printenv, setenv) = personality();
    let f = fixture(false);
    mkenvimage_at(&f, false, OFF, "bootdelay=3\n");
    let lock_dir = f.dir.join("lock");
    fs::create_dir(&lock_dir).unwrap();
    // Hold the lock as a concurrent u-boot-tools fw_setenv would: DIR/fw_printenv.lock, flock.
    let held = fs::File::create(lock_dir.join("fw_printenv.lock")).unwrap();
    // SAFETY: flock on a descriptor this test owns.
    assert_eq!(unsafe { libc::flock(held.as_raw_fd(), libc::LOCK_EX) }, 0);
    let mut child = Command::new(&setenv)
        .arg("-l")
        .arg(&lock_dir)
        .arg("-c")
        .arg(&f.cfg)
        .args(["locked", "yes"])
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(
        child.try_wait().unwrap().is_none(),
        "fw_setenv finished while the lock was held"
    );
    // fw_printenv takes the same lock: it waits too.
    let mut reader = Command::new(&printenv)
        .arg("-l")
        .arg(&lock_dir)
        .arg("-c")
        .arg(&f.cfg)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert!(reader.try_wait().unwrap().is_none());
    drop(held);
    assert!(child.wait().unwrap().success());
    assert!(reader.wait().unwrap().success());
    assert_eq!(real_printenv(&f, &["locked"]), "locked=yes\n");
    // A lock directory that cannot be used is an error naming the file, as u-boot-tools'.
    let out = Command::new(&setenv)
        .args(["-l", "/nonexistent-lock-dir", "-c"])
        .arg(&f.cfg)
        .args(["x", "1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("Error opening lock file /nonexistent-lock-dir/fw_printenv.lock"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
