//! `imgtool inspect`'s probes (partition table, env, kernel header, squashfs, f2fs, FAT)
//! on an image file holding the input, placed at the Nerves offsets.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::os::unix::fs::FileExt;

fuzz_target!(|data: &[u8]| {
    let path = std::env::temp_dir().join(format!("inspect-fuzz-{}.img", std::process::id()));
    let Ok(f) = std::fs::File::create(&path) else {
        return;
    };
    // The input at byte 0 (tables, env) and again where kernels and filesystems are probed.
    let _ = f.write_all_at(data, 0);
    let _ = f.write_all_at(data, 0x2000);
    let _ = f.write_all_at(data, 0x100000);
    let _ = f.set_len(0x100000 + data.len() as u64);
    drop(f);
    let f = std::fs::File::open(&path).unwrap();
    let _ = layout::probe::table(&f);
    let _ = layout::probe::kernel(&f, 0);
    let _ = layout::probe::filesystem(&f, 0, data.len() as u64);
    let _ = layout::probe::filesystem(&f, 0x100000, data.len() as u64);
    let _ = layout::inspect::inspect(&path, layout::inspect::EnvLocation::default());
});
