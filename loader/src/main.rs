//! imgtool's loader: qemu `virt` → U-Boot env → A/B slot → arm64 Image + DTB → Linux.
//!
//! Built for aarch64-unknown-none (imgtool's build script does it). On the host this file
//! compiles to a stub; the logic's tests are in the library (`cargo test`).
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!(
        "the loader runs on qemu's arm64 virt machine: build it with --target aarch64-unknown-none"
    );
    std::process::exit(2);
}

#[cfg(target_os = "none")]
extern crate alloc;

#[cfg(target_os = "none")]
mod hw;

#[cfg(target_os = "none")]
mod boot {
    use alloc::format;
    use alloc::string::String;
    use alloc::vec::Vec;
    use core::fmt::Display;

    use loader::envstore;
    use loader::fdt::{self, Fdt};
    use loader::image::{ImageHeader, HEADER_LEN};
    use loader::place;
    use loader::policy::{self, Transition};
    use loader::{check_range, BlockDevice, BANNER, BLOCK};

    use crate::hw::cpu;
    use crate::hw::virtio_blk::VirtioBlk;
    use crate::println;

    /// One line that says what failed and where.
    struct Fail(String);

    fn fail(what: impl Display) -> Fail {
        Fail(format!("{what}"))
    }

    #[no_mangle]
    extern "C" fn loader_main(dtb_addr: u64) -> ! {
        println!("{BANNER} (EL{})", cpu::current_el());
        match boot(dtb_addr) {
            Ok(never) => match never {},
            Err(Fail(msg)) => {
                println!("loader: error: {msg}");
                println!("loader: halted");
                cpu::halt()
            }
        }
    }

    fn boot(dtb_addr: u64) -> Result<core::convert::Infallible, Fail> {
        // The machine, as qemu describes it.
        let qemu_dtb = device_tree_at(dtb_addr)?;
        let dtb_addr = qemu_dtb.as_ptr() as u64;
        let fdt =
            Fdt::parse(qemu_dtb).map_err(|e| fail(format_args!("device tree from qemu: {e}")))?;
        let ram = fdt
            .memory()
            .map_err(fail)?
            .ok_or_else(|| fail("device tree from qemu has no /memory node"))?;
        let mut windows = Vec::new();
        fdt.regs_compatible("virtio,mmio", |a, _| windows.push(a))
            .map_err(fail)?;

        // The disk and its env.
        let mut disk = VirtioBlk::probe(windows.into_iter()).map_err(fail)?;
        println!(
            "loader: disk: virtio-blk at 0x{:x}, {} blocks",
            disk.base(),
            disk.blocks()
        );
        let mut stored = envstore::load(&mut disk).map_err(fail)?;
        if stored.from_record {
            let at = stored.at;
            match at.redundant_offset {
                Some(r) => println!(
                    "loader: env: LBA {} and {} (redundant, {} bytes), from the disk's env locator",
                    at.offset / BLOCK as u64,
                    r / BLOCK as u64,
                    at.size
                ),
                None => println!(
                    "loader: env: LBA {} ({} bytes), from the disk's env locator",
                    at.offset / BLOCK as u64,
                    at.size
                ),
            }
        }
        let decision =
            policy::decide(stored.env_mut()).map_err(|e| fail(format_args!("U-Boot env: {e}")))?;
        let slot = decision.boot.slot.name();
        match decision.transition {
            Transition::Normal => {}
            Transition::TryingUpgrade => {
                println!("loader: upgrade_available=1: trying slot {slot}, bootcount=1")
            }
            Transition::Failback { from } => println!(
                "loader: slot {} was tried and not validated: falling back to slot {slot}",
                from.name()
            ),
        }
        if decision.env_changed {
            envstore::save(&mut disk, &mut stored).map_err(fail)?;
        }

        // The kernel's header, checked before anything is placed.
        let cfg = &decision.boot;
        let lba = cfg.kernel_lba;
        let mut first = [0u8; BLOCK];
        disk.read(lba, &mut first).map_err(|e| {
            fail(format_args!(
                "slot {slot} kernel ({slot}.kernel_lba={lba}): {e}"
            ))
        })?;
        let header = ImageHeader::parse(&first[..HEADER_LEN])
            .map_err(|e| fail(format_args!("slot {slot} kernel at LBA {lba}: {e}")))?;
        check_range(lba, header.image_size as usize, disk.blocks()).map_err(|e| {
            fail(format_args!(
                "slot {slot} kernel at LBA {lba} (image_size {}): {e}",
                header.image_size
            ))
        })?;
        let initrd = match cfg.initrd {
            Some((ilba, size)) => {
                check_range(ilba, size as usize, disk.blocks()).map_err(|e| {
                    fail(format_args!(
                        "slot {slot} initrd ({slot}.initrd_lba={ilba}): {e}"
                    ))
                })?;
                Some((ilba, size))
            }
            None => None,
        };

        // Memory: the kernel above the loader and qemu's DTB, then the new DTB, then the initrd.
        let mut bootargs = cfg.kernel_args.clone().into_bytes();
        bootargs.push(0);
        let placeholder = [0u8; 8];
        let probe_props: [(&str, &[u8]); 3] = [
            ("bootargs", &bootargs),
            ("linux,initrd-start", &placeholder),
            ("linux,initrd-end", &placeholder),
        ];
        let dtb_room = fdt::set_chosen_size(&fdt, &probe_props) as u64;
        let busy_end = cpu::image_end().max(dtb_addr + qemu_dtb.len() as u64);
        let initrd_room = initrd.map(|(_, size)| size.div_ceil(BLOCK as u64) * BLOCK as u64);
        let at = place::plan(ram, busy_end, &header, dtb_room, initrd_room).map_err(fail)?;

        println!(
            "loader: slot {slot}: kernel LBA {lba}, {} bytes -> 0x{:x}",
            header.image_size, at.kernel
        );
        disk.read_to(lba, at.kernel, header.image_size as usize)
            .map_err(|e| fail(format_args!("reading slot {slot} kernel: {e}")))?;
        let mut initrd_range = None;
        if let (Some((ilba, size)), Some((start, _))) = (initrd, at.initrd) {
            println!("loader: initrd LBA {ilba}, {size} bytes -> 0x{start:x}");
            disk.read_to(ilba, start, size as usize)
                .map_err(|e| fail(format_args!("reading slot {slot} initrd: {e}")))?;
            initrd_range = Some((start, start + size));
        }

        // The device tree Linux gets: qemu's, with our /chosen.
        let (s, e) = initrd_range.unwrap_or((0, 0));
        let (s, e) = (s.to_be_bytes(), e.to_be_bytes());
        let mut props: Vec<(&str, &[u8])> = Vec::new();
        props.push(("bootargs", &bootargs));
        if initrd_range.is_some() {
            props.push(("linux,initrd-start", &s));
            props.push(("linux,initrd-end", &e));
        }
        // SAFETY: `place::plan` reserved `dtb_room` bytes of RAM at `at.dtb`, above everything
        // in use (loader, qemu's DTB) and after the kernel.
        let out =
            unsafe { core::slice::from_raw_parts_mut(at.dtb as *mut u8, at.dtb_room as usize) };
        fdt::set_chosen(&fdt, &props, out)
            .map_err(|e| fail(format_args!("editing the device tree: {e}")))?;

        println!("loader: bootargs: {}", cfg.kernel_args);
        println!(
            "Starting Linux (slot {slot}) at 0x{:x}, dtb 0x{:x}",
            at.kernel, at.dtb
        );
        cpu::jump_to_linux(at.kernel, at.dtb)
    }

    /// Where qemu puts the DTB for a non-Linux `-kernel` ELF: the start of RAM.
    const QEMU_DTB: u64 = 0x4000_0000;

    /// The DTB qemu passed (x0, or the start of RAM when x0 is 0), as a slice of its `totalsize`.
    fn device_tree_at(x0: u64) -> Result<&'static [u8], Fail> {
        let addr = if x0 == 0 { QEMU_DTB } else { x0 };
        if !addr.is_multiple_of(8) {
            return Err(fail(format_args!(
                "device tree address 0x{addr:x} in x0 is not 8-byte aligned"
            )));
        }
        // SAFETY: qemu put a DTB at `addr` in RAM; the header is read first, then its size.
        let head = unsafe { core::slice::from_raw_parts(addr as *const u8, 8) };
        let len = fdt::total_size(head)
            .map_err(|e| fail(format_args!("device tree at 0x{addr:x}: {e}")))?;
        // SAFETY: as above; qemu's blob spans `totalsize` bytes.
        Ok(unsafe { core::slice::from_raw_parts(addr as *const u8, len) })
    }

    #[panic_handler]
    fn panic(info: &core::panic::PanicInfo) -> ! {
        println!("loader: error: internal: {info}");
        println!("loader: halted");
        cpu::halt()
    }
}
