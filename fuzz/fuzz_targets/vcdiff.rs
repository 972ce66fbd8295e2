//! The VCDIFF (xdelta3) decoder against a fixed 64 KiB source.
#![no_main]
use libfuzzer_sys::fuzz_target;

// The body is shared with tests/fuzz_regressions.rs.
fuzz_target!(|data: &[u8]| fwup_compat::fuzzing::vcdiff(data));
