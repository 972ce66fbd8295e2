//! Every input that ever crashed, hung or ran out of memory in a fuzz target (fuzz/, README
//! "Fuzzing") is kept in tests/fixtures/fuzz/TARGET/ and replayed here through the same calls
//! as that target. Each must return (errors are fine) within the time limit.

mod common;

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

/// Generous for a debug build on a busy 2-core machine; the fuzzers hold release builds to 1 s.
const LIMIT: Duration = Duration::from_secs(20);

fn scratch(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("fuzz-regress-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn fwup_config(data: &[u8]) {
    use fwup_compat::config::{parse, Mode, Parser, Vars};
    let _ = parse(data, "fuzz.conf", &mut Vars::default(), Mode::Apply);
    let mut vars = Vars::default();
    let mut p = Parser::new(data, "fuzz.conf", &mut vars, Mode::Create);
    p.on_call = Some(Box::new(fwup_compat::plan::check_call));
    let _ = p.parse_top();
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = fwup_compat::eval::eval(s);
    }
}

fn fwup_archive(data: &[u8]) {
    use fwup_compat::ops;
    let Ok(o) = ops::open_archive(data, "fuzz.fw", &[], true) else {
        return;
    };
    let _ = ops::metadata(&o.cfg, None);
    let _ = ops::list(&o.cfg);
    let tasks: Vec<String> = o
        .cfg
        .secs("task")
        .iter()
        .map(|t| t.title().to_string())
        .collect();
    if let Ok(o) = ops::open_archive(data, "fuzz.fw", &[], false) {
        let _ = ops::verify_archive(o);
    }
    let dir = scratch("archive");
    let input = dir.join("in.fw");
    let dest = dir.join("out.img");
    std::fs::write(&input, data).unwrap();
    for t in tasks.iter().take(4) {
        let _ = std::fs::remove_file(&dest);
        let _ = ops::apply(&ops::ApplyOptions {
            input: input.to_str(),
            dest: dest.to_str().unwrap(),
            task: t,
            keys: Vec::new(),
            progress: fwup_compat::progress::Mode::Off,
            progress_low: 0,
            progress_high: 100,
            max_size_blocks: Some(16384),
            verify_writes: Some(false),
            minimize_writes: false,
            enable_trim: false,
            out: Default::default(),
            host: Default::default(),
        });
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn vcdiff(data: &[u8]) {
    let source: Vec<u8> = (0..65536u32).map(|i| (i * 31 % 251) as u8).collect();
    let _ = fwup_compat::vcdiff::read_header(data);
    if let Ok(mut d) = fwup_compat::vcdiff::Decoder::new(data, &source[..], source.len() as u64) {
        while let Ok(Some(_)) = d.next_window() {
            if d.total_out() > 64 << 20 {
                break;
            }
        }
    }
}

fn uboot_env(data: &[u8]) {
    use uboot_env::{Env, FlagRule, Layout, Redundant};
    let _ = Env::parse(data, Layout::Single);
    let _ = Env::parse(data, Layout::Redundant);
    let (a, b) = data.split_at(data.len() / 2);
    let _ = Redundant::parse(a, &b[..a.len()], FlagRule::UBoot);
    let _ = Redundant::parse(a, &b[..a.len()], FlagRule::Fwup);
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = uboot_env::config::Config::parse(s);
    }
}

fn partition_table(data: &[u8]) {
    let _ = partition_table::read(&mut std::io::Cursor::new(data));
}

fn inspect_probes(data: &[u8]) {
    let dir = scratch("inspect");
    let path = dir.join("img");
    let f = std::fs::File::create(&path).unwrap();
    f.write_all_at(data, 0).unwrap();
    f.write_all_at(data, 0x2000).unwrap();
    f.write_all_at(data, 0x100000).unwrap();
    drop(f);
    let f = std::fs::File::open(&path).unwrap();
    let _ = layout::probe::table(&f);
    let _ = layout::probe::kernel(&f, 0);
    let _ = layout::probe::filesystem(&f, 0, data.len() as u64);
    let _ = layout::probe::filesystem(&f, 0x100000, data.len() as u64);
    let _ = layout::inspect::inspect(&path, layout::inspect::EnvLocation::default());
    let _ = std::fs::remove_dir_all(&dir);
}

fn layout_yaml(data: &[u8]) {
    let Ok(yaml) = std::str::from_utf8(data) else {
        return;
    };
    let _ = layout::parse(yaml, "fuzz.yaml");
}

fn harness(target: &str) -> fn(&[u8]) {
    match target {
        "fwup_config" => fwup_config,
        "fwup_archive" => fwup_archive,
        "vcdiff" => vcdiff,
        "uboot_env" => uboot_env,
        "partition_table" => partition_table,
        "inspect_probes" => inspect_probes,
        "layout_yaml" => layout_yaml,
        t => panic!("tests/fixtures/fuzz/{t}: no such fuzz target"),
    }
}

#[test]
fn every_fuzz_crash_input_now_returns() {
    let root = common::workspace_root().join("tests/fixtures/fuzz");
    let mut n = 0;
    for t in std::fs::read_dir(&root).unwrap() {
        let t = t.unwrap();
        let target = t.file_name().to_string_lossy().into_owned();
        let run = harness(&target);
        for f in std::fs::read_dir(t.path()).unwrap() {
            let path = f.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            let (tx, rx) = mpsc::channel();
            // The main thread's stack size: a debug build's frames are larger than release's.
            std::thread::Builder::new()
                .stack_size(8 << 20)
                .spawn(move || {
                    run(&data);
                    let _ = tx.send(());
                })
                .unwrap();
            match rx.recv_timeout(LIMIT) {
                Ok(()) => n += 1,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!("{}: still running after {LIMIT:?}", rel(&root, &path))
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    panic!("{}: panicked", rel(&root, &path))
                }
            }
        }
    }
    assert!(n > 0, "no regression inputs found under {}", root.display());
}

fn rel(root: &Path, p: &Path) -> String {
    p.strip_prefix(root).unwrap_or(p).display().to_string()
}
