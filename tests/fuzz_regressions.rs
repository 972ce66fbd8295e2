//! Every input that ever crashed, hung or ran out of memory in a fuzz target (fuzz/, README
//! "Fuzzing") is kept in tests/fixtures/fuzz/TARGET/ and replayed here through the same calls
//! as that target: each target's body is one function in the crate that owns the format (its
//! `fuzzing` module), called both by fuzz/fuzz_targets/TARGET.rs and by `harness` below, round
//! trip checks included. Each must return (errors are fine) within the time limit.

mod common;

use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

/// Generous for a debug build on a busy 2-core machine; the fuzzers hold release builds to 1 s.
const LIMIT: Duration = Duration::from_secs(20);

fn harness(target: &str) -> fn(&[u8]) {
    match target {
        "fwup_config" => fwup_compat::fuzzing::fwup_config,
        "fwup_archive" => fwup_compat::fuzzing::fwup_archive,
        "vcdiff" => fwup_compat::fuzzing::vcdiff,
        "uboot_env" => uboot_env::fuzzing::fuzz_one,
        "partition_table" => partition_table::fuzzing::fuzz_one,
        "inspect_probes" => layout::fuzzing::inspect_probes,
        "layout_yaml" => layout::fuzzing::layout_yaml,
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
