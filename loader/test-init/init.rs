//! A tiny static `/init` for boot tests: prints `/marker` from the root filesystem on the
//! console, then powers the machine off (qemu exits).
//! Build: see `tests/boot.rs` (rustc for aarch64-unknown-linux-musl, linked by rust-lld).
//! Syscall numbers: include/uapi/asm-generic/unistd.h; reboot(2) magic: include/uapi/linux/reboot.h.
#![no_std]
#![no_main]

use core::arch::asm;

const SYS_OPENAT: usize = 56;
const SYS_READ: usize = 63;
const SYS_WRITE: usize = 64;
const SYS_SYNC: usize = 81;
const SYS_REBOOT: usize = 142;
const AT_FDCWD: isize = -100;

unsafe fn syscall(n: usize, a: usize, b: usize, c: usize, d: usize) -> isize {
    let ret: isize;
    asm!("svc #0", in("x8") n, inlateout("x0") a as isize => ret, in("x1") b, in("x2") c, in("x3") d,
         options(nostack));
    ret
}

fn write(s: &[u8]) {
    unsafe { syscall(SYS_WRITE, 1, s.as_ptr() as usize, s.len(), 0) };
}

#[no_mangle]
pub extern "C" fn _start() -> ! {
    // Uninitialised on purpose: zeroing would call memset, and there is no libc.
    let mut buf = core::mem::MaybeUninit::<[u8; 200]>::uninit();
    let buf = buf.as_mut_ptr() as *mut u8;
    let fd = unsafe { syscall(SYS_OPENAT, AT_FDCWD as usize, c"/marker".as_ptr() as usize, 0, 0) };
    let n = if fd >= 0 {
        unsafe { syscall(SYS_READ, fd as usize, buf as usize, 200, 0) }
    } else {
        -1
    };
    write(b"\ninit: marker: ");
    if n > 0 {
        // SAFETY: the kernel wrote `n` bytes there.
        let text = unsafe { core::slice::from_raw_parts(buf, n as usize) };
        let end = text.iter().position(|&c| c == b'\n').unwrap_or(text.len());
        write(&text[..end]);
    } else {
        write(b"(no /marker)");
    }
    write(b"\ninit: powering off\n");
    unsafe {
        syscall(SYS_SYNC, 0, 0, 0, 0);
        // LINUX_REBOOT_MAGIC1, MAGIC2, LINUX_REBOOT_CMD_POWER_OFF
        syscall(SYS_REBOOT, 0xfee1_dead, 0x2812_1969, 0x4321_fedc, 0);
    }
    loop {}
}

/// core is built with unwinding tables that name this; nothing unwinds (panic=abort).
#[no_mangle]
pub extern "C" fn rust_eh_personality() {}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    loop {}
}
