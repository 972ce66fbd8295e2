//! fwup's config language (create and meta.conf modes) and `define-eval` arithmetic.
#![no_main]
use fwup_compat::config::{parse, Mode, Parser, Vars};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Run from an empty directory so `include`/`host-path` find nothing of the host's.
    let _ = std::env::set_current_dir(std::env::temp_dir());
    let mut vars = Vars::default();
    let _ = parse(data, "fuzz.conf", &mut vars, Mode::Apply);
    let mut vars = Vars::default();
    let mut p = Parser::new(data, "fuzz.conf", &mut vars, Mode::Create);
    // The planner's create-time checks of each action, as `fwup -c` runs them.
    p.on_call = Some(Box::new(fwup_compat::plan::check_call));
    let _ = p.parse_top();
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = fwup_compat::eval::eval(s);
    }
});
