//! `imgtool inspect`'s probes (partition table, env, kernel header, squashfs, f2fs, FAT).
#![no_main]
use libfuzzer_sys::fuzz_target;

// The body is shared with tests/fuzz_regressions.rs.
fuzz_target!(|data: &[u8]| layout::fuzzing::inspect_probes(data));
