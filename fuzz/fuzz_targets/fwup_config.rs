//! fwup's config language (create and meta.conf modes) and `define-eval` arithmetic.
#![no_main]
use libfuzzer_sys::fuzz_target;

// The body is shared with tests/fuzz_regressions.rs.
fuzz_target!(|data: &[u8]| fwup_compat::fuzzing::fwup_config(data));
