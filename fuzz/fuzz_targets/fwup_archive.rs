//! A .fw archive (ZIP stream + meta.conf): open, -m, -l, -V, plan every task, and apply
//! each task to a small file behind `--max-size`.
#![no_main]
use fwup_compat::ops;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
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
        let _ = fwup_compat::plan::Plan::from_task(t);
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
        let o = ops::ApplyOptions {
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
        };
        let _ = ops::apply(&o);
    }
});
