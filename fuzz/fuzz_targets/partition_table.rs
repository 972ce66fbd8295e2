//! MBR (with EBR chains) and GPT readers, with a read -> encode -> read round trip.
#![no_main]
use libfuzzer_sys::fuzz_target;

// The body is shared with tests/fuzz_regressions.rs.
fuzz_target!(|data: &[u8]| partition_table::fuzzing::fuzz_one(data));
