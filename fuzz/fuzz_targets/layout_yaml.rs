//! Layout YAML: parse and resolve, with table and env round trips.
#![no_main]
use libfuzzer_sys::fuzz_target;

// The body is shared with tests/fuzz_regressions.rs.
fuzz_target!(|data: &[u8]| layout::fuzzing::layout_yaml(data));
