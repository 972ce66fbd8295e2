//! The boot logic of imgtool's arm64 loader, kept free of hardware so it runs in host tests.
//!
//! - [`image`]: the arm64 `Image` header (what the kernel bytes are).
//! - [`policy`]: which slot boots and the A/B env bookkeeping.
//! - [`envstore`]: finding, reading and writing the U-Boot env on a block device.
//! - [`fdt`]: reading the device tree qemu passes and setting `/chosen`.
//! - [`place`]: where kernel, device tree and initrd go in RAM.
//!
//! The hardware layer (UART, virtio-mmio block, entry code) lives with the binary in `src/hw/`.
#![cfg_attr(not(test), no_std)]
extern crate alloc;

pub mod envstore;
pub mod fdt;
pub mod image;
pub mod place;
pub mod policy;

/// The loader's name and version, printed first on the console.
pub const BANNER: &str = concat!("imgtool-loader ", env!("CARGO_PKG_VERSION"));

/// Bytes per block of the disk (virtio-blk sectors).
pub const BLOCK: usize = 512;

/// A disk the loader reads and writes in whole 512-byte blocks.
pub trait BlockDevice {
    /// Size in blocks.
    fn blocks(&self) -> u64;
    /// Read `buf.len() / 512` blocks starting at `lba`.
    fn read(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), DiskError>;
    /// Write `buf.len() / 512` blocks starting at `lba`.
    fn write(&mut self, lba: u64, buf: &[u8]) -> Result<(), DiskError>;
}

/// A failed disk request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskError {
    /// The request reaches past the last block.
    OutOfRange {
        lba: u64,
        blocks: u64,
        disk_blocks: u64,
    },
    /// The device answered with an error status.
    Io { lba: u64, status: u8 },
}

impl core::fmt::Display for DiskError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            DiskError::OutOfRange {
                lba,
                blocks,
                disk_blocks,
            } => write!(
                f,
                "blocks {lba}..{} are past the end of the disk ({disk_blocks} blocks)",
                lba + blocks
            ),
            DiskError::Io { lba, status } => {
                write!(f, "disk error at LBA {lba} (virtio status {status})")
            }
        }
    }
}

/// Check a request against the disk size before it is sent.
pub fn check_range(lba: u64, len: usize, disk_blocks: u64) -> Result<(), DiskError> {
    let blocks = len.div_ceil(BLOCK) as u64;
    match lba.checked_add(blocks) {
        Some(end) if end <= disk_blocks => Ok(()),
        _ => Err(DiskError::OutOfRange {
            lba,
            blocks,
            disk_blocks,
        }),
    }
}

/// A disk in memory, for tests.
#[cfg(test)]
pub struct MemDisk(pub alloc::vec::Vec<u8>);

#[cfg(test)]
impl BlockDevice for MemDisk {
    fn blocks(&self) -> u64 {
        (self.0.len() / BLOCK) as u64
    }
    fn read(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        check_range(lba, buf.len(), self.blocks())?;
        let at = lba as usize * BLOCK;
        buf.copy_from_slice(&self.0[at..at + buf.len()]);
        Ok(())
    }
    fn write(&mut self, lba: u64, buf: &[u8]) -> Result<(), DiskError> {
        check_range(lba, buf.len(), self.blocks())?;
        let at = lba as usize * BLOCK;
        self.0[at..at + buf.len()].copy_from_slice(buf);
        Ok(())
    }
}
