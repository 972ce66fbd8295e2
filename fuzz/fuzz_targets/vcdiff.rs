//! The VCDIFF (xdelta3) decoder against a fixed 64 KiB source.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let source: Vec<u8> = (0..65536u32).map(|i| (i * 31 % 251) as u8).collect();
    let _ = fwup_compat::vcdiff::read_header(data);
    let Ok(mut d) = fwup_compat::vcdiff::Decoder::new(data, &source[..], source.len() as u64)
    else {
        return;
    };
    // Stop once 64 MiB came out: a valid delta may legitimately describe a big target.
    while let Ok(Some(_)) = d.next_window() {
        if d.total_out() > 64 << 20 {
            break;
        }
    }
});
