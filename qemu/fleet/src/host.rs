//! What the running program lends the engines: the bootloader to boot images with, the cache,
//! and where progress goes (bars at the CLI, nothing in tests).

use std::path::PathBuf;

/// Progress and notes from long steps.
pub trait Ui: Sync {
    /// A one-line note (`imgtool demo: 1/5 kernel`).
    fn note(&self, _msg: &str) {}
    /// Progress of a kernel build.
    fn kernel(&self) -> Box<dyn kernel_configs::Progress + '_> {
        Box::new(())
    }
    /// Progress of a root filesystem build.
    fn rootfs(&self) -> &dyn rootfs::Progress {
        &rootfs::NoProgress
    }
}

/// Notes to stderr, no bars.
pub struct Plain;

impl Ui for Plain {
    fn note(&self, msg: &str) {
        eprintln!("imgtool: {msg}");
    }
}

/// Nothing at all.
pub struct Quiet;

impl Ui for Quiet {}

pub struct Host<'a> {
    /// The bootloader ELF given to qemu as -kernel.
    pub loader: PathBuf,
    /// imgtool's cache root (the KVM probe answer, inline kernel fragments).
    pub cache: PathBuf,
    pub ui: &'a dyn Ui,
}

impl Host<'_> {
    pub fn kvm_probe_cache(&self) -> PathBuf {
        self.cache.join("kvm-probe")
    }
}
