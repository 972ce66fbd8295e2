//! Layout YAML: parse and resolve (sizes, offsets, overlaps) without writing an image.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(yaml) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(spec) = layout::parse(yaml, "fuzz.yaml") else {
        return;
    };
    let _ = spec;
    let dir = std::env::temp_dir().join(format!("layout-fuzz-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join("fuzz.yaml");
    if std::fs::write(&path, yaml).is_err() {
        return;
    }
    let ctx = layout::Context {
        file: String::new(),
        base_dir: dir.clone(),
        overrides: Default::default(),
        mtime: 0,
    };
    let _ = layout::plan_from(path.to_str().unwrap(), ctx);
});
