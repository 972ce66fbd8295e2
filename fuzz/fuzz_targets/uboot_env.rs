//! U-Boot env blocks (single and redundant, both flag rules) and fw_env.config.
#![no_main]
use libfuzzer_sys::fuzz_target;
use uboot_env::{Env, FlagRule, Layout, Redundant};

fuzz_target!(|data: &[u8]| {
    let _ = Env::parse(data, Layout::Single);
    let _ = Env::parse(data, Layout::Redundant);
    let (a, b) = data.split_at(data.len() / 2);
    let b = &b[..a.len()];
    for rule in [FlagRule::UBoot, FlagRule::Fwup] {
        if let Ok(mut r) = Redundant::parse(a, b, rule) {
            let _ = r.env.set("fuzz", "1");
            if let Ok((next, _block)) = r.encode_next(a.len(), uboot_env::WriteOptions::default()) {
                r.commit(next);
            }
        }
    }
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = uboot_env::config::Config::parse(s);
    }
});
