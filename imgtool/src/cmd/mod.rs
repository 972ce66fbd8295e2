//! One module per subcommand.

pub mod build;
pub mod env;
pub mod fw;
pub mod fwup;
pub mod guests;
pub mod inspect;
pub mod kernel;
pub mod layout;
pub mod loader;
pub mod mkfs;
pub mod qemu;
pub mod rootfs;
pub mod validate;

/// Exit code 2 means "your input is wrong" (a layout error, a bad flag); 1 is any other failure.
pub fn exit_code(e: &anyhow::Error) -> u8 {
    if e.chain().any(|c| c.downcast_ref::<UsageError>().is_some()) {
        2
    } else {
        1
    }
}

/// Wrap an error with this to make the process exit with code 2 (bad input).
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}
