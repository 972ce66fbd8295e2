//! Code shared by fwup-compat's tests.

pub mod power_cut;
