//! One owner for the small things several crates need. Std only (sha2 behind the `sha256`
//! feature), so the guest init can use it too.

pub mod build;
pub mod cache;
pub mod fs;
#[cfg(feature = "sha256")]
pub mod hash;
pub mod hex;
pub mod size;
