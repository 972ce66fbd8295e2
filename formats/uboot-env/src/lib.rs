//! U-Boot environment blocks, single and redundant; `no_std` + `alloc`.
//!
//! Spec: U-Boot include/env_internal.h and tools/env/fw_env.c
//! (<https://github.com/u-boot/u-boot/blob/master/tools/env/fw_env.c>); fwup's behaviour from
//! its src/uboot_env.c (<https://github.com/fwup-home/fwup/blob/main/src/uboot_env.c>).
//!
//! - [`Env`]: ordered variables; parse a block with [`Env::parse_single`], write one with
//!   [`Env::write_block`] / [`Env::to_block`].
//! - [`Redundant`]: two copies; which is active, per-copy status, and [`Redundant::next_write`].
//! - [`WriteOptions::FWUP`]: byte-identical to fwup's output.
//! - [`Stored`]: one env as read (single or a pair) and the block that writes it back.
//! - [`config::Config`]: `fw_env.config` files.
//! - [`locator::Locator`]: where a disk keeps its env, recorded in sector 0.
#![no_std]
extern crate alloc;

pub mod block;
pub mod config;
mod env;
mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod locator;
mod redundant;
mod stored;

pub use block::{Layout, Order, WriteOptions};
pub use env::Env;
pub use error::Error;
pub use redundant::{initial_block, Copy, CopyStatus, FlagRule, NextWrite, Redundant};
pub use stored::{Stored, WriteBack};
