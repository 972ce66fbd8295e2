//! The bodies of the `fwup_config`, `fwup_archive` and `vcdiff` fuzz targets
//! (fuzz/fuzz_targets/), also replayed on every kept crash input by tests/fuzz_regressions.rs:
//! one copy, called by both.

use crate::config::{parse, Mode, Parser, Vars};
use crate::ops;

/// fwup's config language (apply and create modes, with the planner's create-time checks of
/// each action, as `fwup -c` runs them) and `define-eval` arithmetic.
pub fn fwup_config(data: &[u8]) {
    // Run from an empty directory so `include`/`host-path` find nothing of the host's.
    let _ = std::env::set_current_dir(std::env::temp_dir());
    let _ = parse(data, "fuzz.conf", &mut Vars::default(), Mode::Apply);
    let mut vars = Vars::default();
    let mut p = Parser::new(data, "fuzz.conf", &mut vars, Mode::Create);
    p.on_call = Some(Box::new(crate::plan::check_call));
    let _ = p.parse_top();
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = crate::eval::eval(s);
    }
}

/// A .fw archive (ZIP stream + meta.conf): open, -m, -l, -V, plan every task, and apply up to
/// four tasks to a small file behind `--max-size`.
pub fn fwup_archive(data: &[u8]) {
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
    for t in o.cfg.secs("task") {
        let _ = crate::plan::Plan::from_task(t);
    }
    if let Ok(o) = ops::open_archive(data, "fuzz.fw", &[], false) {
        let _ = ops::verify_archive(o);
    }
    let dir = std::env::temp_dir().join(format!("fwup-fuzz-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let input = dir.join("in.fw");
    let dest = dir.join("out.img");
    if std::fs::write(&input, data).is_err() {
        return;
    }
    for t in tasks.iter().take(4) {
        let _ = std::fs::remove_file(&dest);
        let _ = ops::apply(&ops::ApplyOptions {
            input: input.to_str(),
            dest: dest.to_str().unwrap(),
            task: t,
            keys: Vec::new(),
            progress: crate::progress::Mode::Off,
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
    let _ = std::fs::remove_file(&dest);
}

/// The VCDIFF (xdelta3) decoder against a fixed 64 KiB source. It stops once 64 MiB came out:
/// a valid delta may legitimately describe a big target.
pub fn vcdiff(data: &[u8]) {
    let source: Vec<u8> = (0..65536u32).map(|i| (i * 31 % 251) as u8).collect();
    let _ = crate::vcdiff::read_header(data);
    let Ok(mut d) = crate::vcdiff::Decoder::new(data, &source[..], source.len() as u64) else {
        return;
    };
    while let Ok(Some(_)) = d.next_window() {
        if d.total_out() > 64 << 20 {
            break;
        }
    }
}
