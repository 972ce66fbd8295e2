//! MBR (with EBR chains) and GPT readers.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = partition_table::read(&mut std::io::Cursor::new(data));
});
