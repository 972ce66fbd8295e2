//! The body of the `uboot_env` fuzz target (fuzz/fuzz_targets/uboot_env.rs), also replayed on
//! every kept crash input by tests/fuzz_regressions.rs: one copy, called by both.
//!
//! Besides "never panic, never hang", it checks round trips, panicking on a mismatch so the
//! fuzzer reports it:
//! - a block that parses (single or redundant layout), encoded again in its own order, parses
//!   to the same [`Env`];
//! - the block [`Redundant::encode_next`] makes, written over the inactive copy, is the one the
//!   pair then reads as active, with the same variables (sorted, as that block stores them).

use crate::block::{Order, WriteOptions};
use crate::{Env, FlagRule, Layout, Redundant};

/// Parse `data` every way the crate can, and check the round trips above.
pub fn fuzz_one(data: &[u8]) {
    for layout in [Layout::Single, Layout::Redundant] {
        if let Ok(env) = Env::parse(data, layout) {
            env_round_trip(&env, data, layout);
        }
    }
    let (a, b) = data.split_at(data.len() / 2);
    let b = &b[..a.len()];
    for rule in [FlagRule::UBoot, FlagRule::Fwup] {
        if let Ok(mut r) = Redundant::parse(a, b, rule) {
            let _ = r.env.set("fuzz", "1");
            // `TooBig` is expected here: the copy may have no room for the new variable.
            if let Ok((next, block)) = r.encode_next(a.len(), WriteOptions::default()) {
                let mut copies = [a, b];
                copies[next.copy.index()] = &block;
                let back = Redundant::parse(copies[0], copies[1], rule)
                    .unwrap_or_else(|e| panic!("pair after encode_next does not parse: {e:?}"));
                assert_eq!(
                    back.active, next.copy,
                    "encode_next's copy is not the active one"
                );
                assert_eq!(back.flag, next.flag, "flag after encode_next");
                // `WriteOptions::default()` writes sorted by name, so compare in that order.
                let (mut got, mut want) = (back.env, r.env.clone());
                got.sort();
                want.sort();
                assert_eq!(got, want, "env after encode_next");
                r.commit(next);
            }
        }
    }
    if let Ok(s) = core::str::from_utf8(data) {
        let _ = crate::config::Config::parse(s);
    }
}

fn env_round_trip(env: &Env, data: &[u8], layout: Layout) {
    // A data area filled to its last byte has no final NUL (the reader accepts that, as U-Boot
    // does); the encoder always writes one, so it gets that one byte more.
    let size = data.len().max(layout.header_len() + env.encoded_len());
    let flag = match layout {
        Layout::Single => None,
        Layout::Redundant => Some(data[4]),
    };
    let opts = WriteOptions {
        order: Order::Stored,
        ..WriteOptions::STANDARD
    };
    let block = env
        .to_block(size, flag, opts)
        .unwrap_or_else(|e| panic!("a parsed {layout:?} env does not encode: {e:?}"));
    let back = Env::parse(&block, layout)
        .unwrap_or_else(|e| panic!("a re-encoded {layout:?} env does not parse: {e:?}"));
    assert_eq!(
        &back, env,
        "{layout:?} env changed in parse -> encode -> parse"
    );
}
