//! The thin hardware layer: entry code, CPU controls, console, heap, virtio block.

pub mod cpu;
pub mod heap;
pub mod uart;
pub mod virtio_blk;
