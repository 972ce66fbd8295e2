//! U-Boot env blocks (single and redundant, both flag rules, round trips) and fw_env.config.
#![no_main]
use libfuzzer_sys::fuzz_target;

// The body is shared with tests/fuzz_regressions.rs.
fuzz_target!(|data: &[u8]| uboot_env::fuzzing::fuzz_one(data));
