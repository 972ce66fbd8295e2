//! Where the kernel, the device tree and the initrd go in RAM.
//!
//! Rules from Documentation/arm64/booting.rst
//! (<https://www.kernel.org/doc/html/v6.1/arm64/booting.html>): the Image at `text_offset` above
//! a 2 MiB-aligned base with `image_size` bytes free from there; the DTB 8-byte aligned, at most
//! 2 MiB; the initrd anywhere in the same 1 GiB-aligned window as the kernel (RAM here is small).

use core::fmt;

use crate::image::ImageHeader;

const MIB2: u64 = 2 << 20;

fn align_up(v: u64, a: u64) -> Option<u64> {
    Some(v.checked_add(a - 1)? & !(a - 1))
}

/// Addresses for one boot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    /// Load (and entry) address of the Image.
    pub kernel: u64,
    /// Where the edited DTB goes, and the room it has.
    pub dtb: u64,
    pub dtb_room: u64,
    /// `(start, end)` of the initrd.
    pub initrd: Option<(u64, u64)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NoRoom {
    pub what: &'static str,
    pub end: u64,
    pub ram_end: u64,
}

impl fmt::Display for NoRoom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the {} would end at 0x{:x}, past the end of RAM at 0x{:x}: give the guest more memory (-m)",
            self.what, self.end, self.ram_end
        )
    }
}

/// Plan the boot memory: everything above `busy_end` (the loader and qemu's DTB end there).
pub fn plan(
    ram: (u64, u64),
    busy_end: u64,
    kernel: &ImageHeader,
    dtb_room: u64,
    initrd_size: Option<u64>,
) -> Result<Placement, NoRoom> {
    let ram_end = ram.0.saturating_add(ram.1);
    let check = |what: &'static str, end: Option<u64>| -> Result<u64, NoRoom> {
        match end {
            Some(e) if e <= ram_end => Ok(e),
            _ => Err(NoRoom {
                what,
                end: end.unwrap_or(u64::MAX),
                ram_end,
            }),
        }
    };
    let base = align_up(busy_end.max(ram.0), MIB2).and_then(|b| b.checked_add(kernel.text_offset));
    let kernel_end = check(
        "kernel",
        base.and_then(|b| b.checked_add(kernel.image_size)),
    )?;
    let kernel_at = kernel_end - kernel.image_size;
    let dtb = align_up(kernel_end, 4096).unwrap_or(u64::MAX);
    let dtb_end = check("device tree", dtb.checked_add(dtb_room))?;
    let initrd = match initrd_size {
        None => None,
        Some(size) => {
            let start = align_up(dtb_end, 4096).unwrap_or(u64::MAX);
            let end = check("initrd", start.checked_add(size))?;
            Some((start, end))
        }
    };
    Ok(Placement {
        kernel: kernel_at,
        dtb,
        dtb_room,
        initrd,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::{test_header, ImageHeader};

    const RAM: (u64, u64) = (0x4000_0000, 128 << 20);

    #[test]
    fn kernel_on_the_next_2mib_boundary_then_dtb_then_initrd() {
        let h = ImageHeader::parse(&test_header(0, 0x74_0000, 0xa)).unwrap();
        let p = plan(RAM, 0x4012_3456, &h, 0x4000, Some(1000)).unwrap();
        assert_eq!(p.kernel, 0x4020_0000);
        assert_eq!(p.dtb, 0x4094_0000);
        assert_eq!(p.initrd, Some((0x4094_4000, 0x4094_4000 + 1000)));
        assert_eq!(p.dtb % 8, 0);
    }

    #[test]
    fn text_offset_is_honoured() {
        let h = ImageHeader::parse(&test_header(0x8_0000, 0x10_0000, 0)).unwrap();
        let p = plan(RAM, 0x4000_1000, &h, 0x1000, None).unwrap();
        assert_eq!(p.kernel, 0x4028_0000);
        assert_eq!(p.initrd, None);
    }

    #[test]
    fn too_little_ram_names_what_does_not_fit() {
        let h = ImageHeader::parse(&test_header(0, 100 << 20, 0)).unwrap();
        assert_eq!(
            plan(RAM, 0x4010_0000, &h, 0x1000, None).unwrap(),
            Placement {
                kernel: 0x4020_0000,
                dtb: 0x4020_0000 + (100 << 20),
                dtb_room: 0x1000,
                initrd: None
            }
        );
        let e = plan(RAM, 0x4010_0000, &h, 0x1000, Some(40 << 20)).unwrap_err();
        assert_eq!(e.what, "initrd");
        let big = ImageHeader::parse(&test_header(0, 127 << 20, 0)).unwrap();
        let e = plan(RAM, 0x4010_0000, &big, 0x1000, None).unwrap_err();
        assert_eq!(e.what, "kernel");
        assert!(format!("{e}").contains("give the guest more memory"));
    }
}
