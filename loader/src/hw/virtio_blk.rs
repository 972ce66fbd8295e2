//! A polling virtio-blk driver over virtio-mmio, modern interface (version 2) only.
//!
//! Spec: Virtual I/O Device (VIRTIO) 1.2, 4.2 "Virtio Over MMIO", 2.7 "Split Virtqueues" and
//! 5.2 "Block Device" (<https://docs.oasis-open.org/virtio/virtio/v1.2/virtio-v1.2.html>).
//! One queue of 4 descriptors, one request in flight: header, data, status.

use core::cell::UnsafeCell;
use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};

use loader::{check_range, BlockDevice, DiskError, BLOCK};

const MAGIC: usize = 0x000;
const VERSION: usize = 0x004;
const DEVICE_ID: usize = 0x008;
const DEVICE_FEATURES: usize = 0x010;
const DEVICE_FEATURES_SEL: usize = 0x014;
const DRIVER_FEATURES: usize = 0x020;
const DRIVER_FEATURES_SEL: usize = 0x024;
const QUEUE_SEL: usize = 0x030;
const QUEUE_NUM_MAX: usize = 0x034;
const QUEUE_NUM: usize = 0x038;
const QUEUE_READY: usize = 0x044;
const QUEUE_NOTIFY: usize = 0x050;
const STATUS: usize = 0x070;
const QUEUE_DESC: usize = 0x080;
const QUEUE_DRIVER: usize = 0x090;
const QUEUE_DEVICE: usize = 0x0a0;
const CONFIG_GENERATION: usize = 0x0fc;
const CONFIG: usize = 0x100;

const MAGIC_VALUE: u32 = 0x7472_6976; // "virt"
const ID_BLOCK: u32 = 2;
const S_ACKNOWLEDGE: u32 = 1;
const S_DRIVER: u32 = 2;
const S_DRIVER_OK: u32 = 4;
const S_FEATURES_OK: u32 = 8;
/// VIRTIO_F_VERSION_1 is feature bit 32: bit 0 of feature word 1.
const F_VERSION_1_WORD1: u32 = 1;

const QSIZE: usize = 4;
const DESC_NEXT: u16 = 1;
const DESC_WRITE: u16 = 2;
const REQ_IN: u32 = 0;
const REQ_OUT: u32 = 1;
/// Bytes per request: big enough that a kernel takes a handful, small enough for any backend.
const MAX_REQUEST: usize = 1 << 20;

#[repr(C)]
#[derive(Clone, Copy)]
struct Desc {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

#[repr(C, align(2))]
struct Avail {
    flags: u16,
    idx: u16,
    ring: [u16; QSIZE],
    used_event: u16,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct UsedElem {
    id: u32,
    len: u32,
}

#[repr(C, align(4))]
struct Used {
    flags: u16,
    idx: u16,
    ring: [UsedElem; QSIZE],
    avail_event: u16,
}

#[repr(C)]
struct ReqHeader {
    kind: u32,
    reserved: u32,
    sector: u64,
}

#[repr(C, align(4096))]
struct Queue {
    desc: [Desc; QSIZE],
    avail: Avail,
    used: Used,
    header: ReqHeader,
    status: u8,
}

struct QueueCell(UnsafeCell<Queue>);
// SAFETY: one core, one driver instance, no interrupts.
unsafe impl Sync for QueueCell {}

static QUEUE: QueueCell = QueueCell(UnsafeCell::new(Queue {
    desc: [Desc {
        addr: 0,
        len: 0,
        flags: 0,
        next: 0,
    }; QSIZE],
    avail: Avail {
        flags: 0,
        idx: 0,
        ring: [0; QSIZE],
        used_event: 0,
    },
    used: Used {
        flags: 0,
        idx: 0,
        ring: [UsedElem { id: 0, len: 0 }; QSIZE],
        avail_event: 0,
    },
    header: ReqHeader {
        kind: 0,
        reserved: 0,
        sector: 0,
    },
    status: 0,
}));

/// Why no disk could be used.
pub enum ProbeError {
    /// No virtio-mmio slot holds a block device.
    NoDevice,
    /// The block device only speaks the legacy interface.
    Legacy { base: u64 },
    /// The device refused our feature set.
    FeaturesRejected { base: u64 },
    /// The device's queue is too small.
    QueueTooSmall { base: u64, max: u32 },
}

impl core::fmt::Display for ProbeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ProbeError::NoDevice => write!(
                f,
                "no virtio block device found: give qemu the disk as \
                 -device virtio-blk-device,drive=..."
            ),
            ProbeError::Legacy { base } => write!(
                f,
                "virtio-mmio block device at 0x{base:x} is legacy (version 1): \
                 start qemu with -global virtio-mmio.force-legacy=false"
            ),
            ProbeError::FeaturesRejected { base } => {
                write!(
                    f,
                    "virtio block device at 0x{base:x} rejected VIRTIO_F_VERSION_1"
                )
            }
            ProbeError::QueueTooSmall { base, max } => write!(
                f,
                "virtio block device at 0x{base:x} has a queue of {max} entries, need 3"
            ),
        }
    }
}

pub struct VirtioBlk {
    base: usize,
    blocks: u64,
    avail_idx: u16,
}

fn rd(base: usize, off: usize) -> u32 {
    // SAFETY: `base` is a virtio-mmio register window from the DTB; aligned 32-bit access.
    unsafe { read_volatile((base + off) as *const u32) }
}

fn wr(base: usize, off: usize, v: u32) {
    // SAFETY: as in `rd`.
    unsafe { write_volatile((base + off) as *mut u32, v) }
}

fn barrier() {
    // SAFETY: a full-system memory barrier; no other effect.
    unsafe { core::arch::asm!("dmb sy", options(nostack)) };
}

impl VirtioBlk {
    /// The first block device among the DTB's virtio-mmio windows, set up and ready.
    pub fn probe(windows: impl Iterator<Item = u64>) -> Result<VirtioBlk, ProbeError> {
        for base in windows {
            let b = base as usize;
            if rd(b, MAGIC) != MAGIC_VALUE || rd(b, DEVICE_ID) != ID_BLOCK {
                continue;
            }
            if rd(b, VERSION) != 2 {
                return Err(ProbeError::Legacy { base });
            }
            return Self::init(b);
        }
        Err(ProbeError::NoDevice)
    }

    fn init(b: usize) -> Result<VirtioBlk, ProbeError> {
        let base = b as u64;
        wr(b, STATUS, 0);
        while rd(b, STATUS) != 0 {}
        wr(b, STATUS, S_ACKNOWLEDGE);
        wr(b, STATUS, S_ACKNOWLEDGE | S_DRIVER);
        wr(b, DEVICE_FEATURES_SEL, 1);
        if rd(b, DEVICE_FEATURES) & F_VERSION_1_WORD1 == 0 {
            return Err(ProbeError::FeaturesRejected { base });
        }
        // Only VERSION_1: no read-only, flush or size limits negotiated; we need none.
        wr(b, DRIVER_FEATURES_SEL, 0);
        wr(b, DRIVER_FEATURES, 0);
        wr(b, DRIVER_FEATURES_SEL, 1);
        wr(b, DRIVER_FEATURES, F_VERSION_1_WORD1);
        wr(b, STATUS, S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK);
        if rd(b, STATUS) & S_FEATURES_OK == 0 {
            return Err(ProbeError::FeaturesRejected { base });
        }

        wr(b, QUEUE_SEL, 0);
        let max = rd(b, QUEUE_NUM_MAX);
        if (max as usize) < QSIZE {
            return Err(ProbeError::QueueTooSmall { base, max });
        }
        wr(b, QUEUE_NUM, QSIZE as u32);
        let q = QUEUE.0.get();
        // SAFETY: only addresses are taken; the queue lives in .bss (zeroed at entry).
        let (desc, avail, used) = unsafe {
            (
                addr_of!((*q).desc) as u64,
                addr_of!((*q).avail) as u64,
                addr_of!((*q).used) as u64,
            )
        };
        for (off, addr) in [
            (QUEUE_DESC, desc),
            (QUEUE_DRIVER, avail),
            (QUEUE_DEVICE, used),
        ] {
            wr(b, off, addr as u32);
            wr(b, off + 4, (addr >> 32) as u32);
        }
        wr(b, QUEUE_READY, 1);
        wr(
            b,
            STATUS,
            S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK,
        );

        // Capacity in 512-byte sectors; re-read if the config changed while reading it.
        let blocks = loop {
            let gen = rd(b, CONFIG_GENERATION);
            let lo = rd(b, CONFIG) as u64;
            let hi = rd(b, CONFIG + 4) as u64;
            if rd(b, CONFIG_GENERATION) == gen {
                break (hi << 32) | lo;
            }
        };
        Ok(VirtioBlk {
            base: b,
            blocks,
            avail_idx: 0,
        })
    }

    pub fn base(&self) -> usize {
        self.base
    }

    /// One request: `len` bytes at `data` from/to `lba`; waits for completion.
    fn request(&mut self, kind: u32, lba: u64, data: u64, len: usize) -> Result<(), DiskError> {
        let q = QUEUE.0.get();
        // SAFETY: the queue is ours alone; the device only touches it between notify and the
        // used index moving, and every access here is volatile and aligned.
        unsafe {
            write_volatile(
                addr_of_mut!((*q).header),
                ReqHeader {
                    kind,
                    reserved: 0,
                    sector: lba,
                },
            );
            write_volatile(addr_of_mut!((*q).status), 0xff);
            let data_flags = if kind == REQ_IN {
                DESC_NEXT | DESC_WRITE
            } else {
                DESC_NEXT
            };
            let descs = [
                Desc {
                    addr: addr_of!((*q).header) as u64,
                    len: 16,
                    flags: DESC_NEXT,
                    next: 1,
                },
                Desc {
                    addr: data,
                    len: len as u32,
                    flags: data_flags,
                    next: 2,
                },
                Desc {
                    addr: addr_of!((*q).status) as u64,
                    len: 1,
                    flags: DESC_WRITE,
                    next: 0,
                },
            ];
            for (i, d) in descs.into_iter().enumerate() {
                write_volatile(addr_of_mut!((*q).desc[i]), d);
            }
            let slot = self.avail_idx as usize % QSIZE;
            write_volatile(addr_of_mut!((*q).avail.ring[slot]), 0);
            barrier();
            let next = self.avail_idx.wrapping_add(1);
            write_volatile(addr_of_mut!((*q).avail.idx), next);
            barrier();
            wr(self.base, QUEUE_NOTIFY, 0);
            while read_volatile(addr_of!((*q).used.idx)) != next {
                core::hint::spin_loop();
            }
            barrier();
            self.avail_idx = next;
            let status = read_volatile(addr_of!((*q).status));
            if status != 0 {
                return Err(DiskError::Io { lba, status });
            }
        }
        Ok(())
    }

    /// Read straight into physical memory (the MMU is off: addresses are physical).
    pub fn read_to(&mut self, lba: u64, addr: u64, len: usize) -> Result<(), DiskError> {
        let len = len.div_ceil(BLOCK) * BLOCK;
        check_range(lba, len, self.blocks)?;
        let mut done = 0;
        while done < len {
            let n = (len - done).min(MAX_REQUEST);
            self.request(REQ_IN, lba + (done / BLOCK) as u64, addr + done as u64, n)?;
            done += n;
        }
        Ok(())
    }
}

impl BlockDevice for VirtioBlk {
    fn blocks(&self) -> u64 {
        self.blocks
    }

    fn read(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        assert!(buf.len().is_multiple_of(BLOCK));
        self.read_to(lba, buf.as_mut_ptr() as u64, buf.len())
    }

    fn write(&mut self, lba: u64, buf: &[u8]) -> Result<(), DiskError> {
        assert!(buf.len().is_multiple_of(BLOCK));
        check_range(lba, buf.len(), self.blocks)?;
        let mut done = 0;
        while done < buf.len() {
            let n = (buf.len() - done).min(MAX_REQUEST);
            let at = buf.as_ptr() as u64 + done as u64;
            self.request(REQ_OUT, lba + (done / BLOCK) as u64, at, n)?;
            done += n;
        }
        Ok(())
    }
}
