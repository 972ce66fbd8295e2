//! A .fw archive (ZIP stream + meta.conf): open, -m, -l, -V, plan every task, and apply.
#![no_main]
use libfuzzer_sys::fuzz_target;

// The body is shared with tests/fuzz_regressions.rs.
fuzz_target!(|data: &[u8]| fwup_compat::fuzzing::fwup_archive(data));
