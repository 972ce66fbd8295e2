//! A tiny static `/init` for boot tests: prints `/marker` from the root filesystem on the
//! console, optionally exercises the f2fs data partition, then powers the machine off (qemu exits).
//!
//! The f2fs step is chosen by the kernel command line word `imgtool_f2fs=...`, which the kernel
//! hands to init as an environment variable (it knows no such parameter, and the name has no dot,
//! so it is not taken for a module parameter):
//! - `imgtool_f2fs=write:TEXT` mounts /dev/vda3 on /data read-write as f2fs, writes TEXT to
//!   /data/note.txt and a 1 MiB pattern to /data/pattern.bin, fsyncs, unmounts, syncs, and
//!   prints `init: f2fs: wrote ...`;
//! - `imgtool_f2fs=read` mounts it read-only, prints `init: f2fs: note: TEXT` and whether the
//!   pattern reads back intact.
//!
//! Any failure prints `init: f2fs: error: <step>: errno N` and still powers off.
//! Build: see `loader/test-init/guest.rs` (rustc for aarch64-unknown-linux-musl, linked by
//! rust-lld). Syscall numbers: include/uapi/asm-generic/unistd.h; flags: asm-generic/fcntl.h,
//! uapi/linux/mount.h; reboot(2) magic: include/uapi/linux/reboot.h.
#![no_std]
#![no_main]

use core::arch::{asm, global_asm};

const SYS_UMOUNT2: usize = 39;
const SYS_MOUNT: usize = 40;
const SYS_OPENAT: usize = 56;
const SYS_CLOSE: usize = 57;
const SYS_READ: usize = 63;
const SYS_WRITE: usize = 64;
const SYS_SYNC: usize = 81;
const SYS_FSYNC: usize = 82;
const SYS_REBOOT: usize = 142;
const AT_FDCWD: isize = -100;
const O_RDONLY: usize = 0;
const O_WRONLY: usize = 1;
const O_CREAT: usize = 0o100;
const O_TRUNC: usize = 0o1000;
const MS_RDONLY: usize = 1;

/// Size of /data/pattern.bin: many blocks, so the data goes to the main area, not inline.
const PATTERN_LEN: usize = 1 << 20;
const CHUNK: usize = 4096;

/// The I/O buffer: in .bss, which the kernel zero-fills (a zeroed local would call memset, and
/// there is no libc).
static mut BUF: [u8; CHUNK] = [0; CHUNK];

// The kernel enters with sp at argc, argv[], NULL, envp[], NULL; a Rust function's prologue
// would move sp first, so hand the entry sp over in x0.
global_asm!(
    ".globl _start",
    "_start:",
    "mov x0, sp",
    "bl start_rust",
    "1: b 1b"
);

unsafe fn syscall(n: usize, a: usize, b: usize, c: usize, d: usize, e: usize) -> isize {
    let ret: isize;
    asm!("svc #0", in("x8") n, inlateout("x0") a as isize => ret, in("x1") b, in("x2") c, in("x3") d,
         in("x4") e, options(nostack));
    ret
}

fn write(s: &[u8]) {
    unsafe { syscall(SYS_WRITE, 1, s.as_ptr() as usize, s.len(), 0, 0) };
}

/// Writes `n` in decimal.
fn write_num(mut n: usize) {
    let mut digits = [b'0'; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    write(&digits[i..]);
}

/// The C string at `p` as a slice (without the NUL).
unsafe fn cstr<'a>(p: *const u8) -> &'a [u8] {
    let mut n = 0;
    // Volatile: a plain loop is turned into a call to strlen, which nothing provides.
    while core::ptr::read_volatile(p.add(n)) != 0 {
        n += 1;
    }
    core::slice::from_raw_parts(p, n)
}

/// The value of environment variable `name` (given with its `=`).
unsafe fn getenv(sp: *const usize, name: &[u8]) -> Option<&'static [u8]> {
    let argc = *sp;
    let mut envp = sp.add(1 + argc + 1) as *const *const u8;
    while !(*envp).is_null() {
        let var = cstr(*envp);
        if let Some(v) = var.strip_prefix(name) {
            return Some(v);
        }
        envp = envp.add(1);
    }
    None
}

/// Prints the `init: f2fs: error:` line when a syscall failed; returns whether it succeeded.
fn check(ret: isize, step: &[u8]) -> bool {
    if ret < 0 {
        write(b"init: f2fs: error: ");
        write(step);
        write(b": errno ");
        write_num((-ret) as usize);
        write(b"\n");
        return false;
    }
    true
}

fn pattern_byte(i: usize) -> u8 {
    (i.wrapping_mul(131) ^ (i >> 12)) as u8
}

fn mount_data(flags: usize) -> bool {
    let ret = unsafe {
        syscall(
            SYS_MOUNT,
            c"/dev/vda3".as_ptr() as usize,
            c"/data".as_ptr() as usize,
            c"f2fs".as_ptr() as usize,
            flags,
            0,
        )
    };
    check(ret, b"mount /dev/vda3 on /data as f2fs")
}

fn open(path: &core::ffi::CStr, flags: usize) -> isize {
    unsafe {
        syscall(
            SYS_OPENAT,
            AT_FDCWD as usize,
            path.as_ptr() as usize,
            flags,
            0o644,
            0,
        )
    }
}

/// Writes all of `buf` to `fd`.
fn write_all(fd: isize, buf: &[u8], step: &[u8]) -> bool {
    let mut done = 0;
    while done < buf.len() {
        let n = unsafe {
            syscall(
                SYS_WRITE,
                fd as usize,
                buf[done..].as_ptr() as usize,
                buf.len() - done,
                0,
                0,
            )
        };
        if !check(n, step) {
            return false;
        }
        done += n as usize;
    }
    true
}

/// Creates `path` with `first` then the pattern (if `pattern`), fsyncs and closes it.
fn create_file(path: &core::ffi::CStr, text: &[u8], pattern: bool, chunk: &mut [u8]) -> bool {
    let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC);
    if !check(fd, b"create file") {
        return false;
    }
    let mut ok = write_all(fd, text, b"write");
    if pattern {
        let mut off = 0;
        while ok && off < PATTERN_LEN {
            for (i, b) in chunk.iter_mut().enumerate() {
                *b = pattern_byte(off + i);
            }
            ok = write_all(fd, chunk, b"write pattern");
            off += CHUNK;
        }
    }
    ok = ok
        && check(
            unsafe { syscall(SYS_FSYNC, fd as usize, 0, 0, 0, 0) },
            b"fsync",
        );
    unsafe { syscall(SYS_CLOSE, fd as usize, 0, 0, 0, 0) };
    ok
}

fn unmount_data() -> bool {
    check(
        unsafe { syscall(SYS_UMOUNT2, c"/data".as_ptr() as usize, 0, 0, 0, 0) },
        b"umount /data",
    )
}

fn f2fs_write(text: &[u8], chunk: &mut [u8]) {
    if !mount_data(0) {
        return;
    }
    let ok = create_file(c"/data/note.txt", text, false, chunk)
        && create_file(c"/data/pattern.bin", b"", true, chunk);
    // Unmounting writes f2fs's final checkpoint; sync flushes the virtio disk.
    let unmounted = unmount_data();
    unsafe { syscall(SYS_SYNC, 0, 0, 0, 0, 0) };
    if ok && unmounted {
        write(b"init: f2fs: wrote /data/note.txt (");
        write_num(text.len());
        write(b" bytes) and /data/pattern.bin (");
        write_num(PATTERN_LEN);
        write(b" bytes), unmounted\n");
    }
}

/// Reads up to `buf.len()` bytes, retrying short reads; returns the count or a negative errno.
fn read_full(fd: isize, buf: &mut [u8]) -> isize {
    let mut got = 0;
    while got < buf.len() {
        let n = unsafe {
            syscall(
                SYS_READ,
                fd as usize,
                buf[got..].as_mut_ptr() as usize,
                buf.len() - got,
                0,
                0,
            )
        };
        if n < 0 {
            return n;
        }
        if n == 0 {
            break;
        }
        got += n as usize;
    }
    got as isize
}

fn f2fs_read(chunk: &mut [u8]) {
    if !mount_data(MS_RDONLY) {
        return;
    }
    let fd = open(c"/data/note.txt", O_RDONLY);
    if check(fd, b"open /data/note.txt") {
        let n = read_full(fd, chunk);
        if check(n, b"read /data/note.txt") {
            write(b"init: f2fs: note: ");
            write(&chunk[..n as usize]);
            write(b"\n");
        }
        unsafe { syscall(SYS_CLOSE, fd as usize, 0, 0, 0, 0) };
    }
    let fd = open(c"/data/pattern.bin", O_RDONLY);
    if check(fd, b"open /data/pattern.bin") {
        let (mut total, mut bad) = (0usize, 0usize);
        loop {
            let n = read_full(fd, chunk);
            if !check(n, b"read /data/pattern.bin") {
                break;
            }
            if n == 0 {
                write(b"init: f2fs: pattern: ");
                write_num(total);
                write(b" bytes, ");
                write_num(bad);
                write(b" wrong\n");
                break;
            }
            for (i, &b) in chunk[..n as usize].iter().enumerate() {
                if b != pattern_byte(total + i) {
                    bad += 1;
                }
            }
            total += n as usize;
        }
        unsafe { syscall(SYS_CLOSE, fd as usize, 0, 0, 0, 0) };
    }
    unmount_data();
}

#[no_mangle]
unsafe extern "C" fn start_rust(sp: *const usize) -> ! {
    // SAFETY: the only reference to BUF, and this is the only thread.
    let chunk = &mut *core::ptr::addr_of_mut!(BUF);
    let fd = open(c"/marker", O_RDONLY);
    let n = if fd >= 0 {
        read_full(fd, &mut chunk[..200])
    } else {
        -1
    };
    write(b"\ninit: marker: ");
    if n > 0 {
        let text = &chunk[..n as usize];
        let end = text.iter().position(|&c| c == b'\n').unwrap_or(text.len());
        write(&text[..end]);
    } else {
        write(b"(no /marker)");
    }
    write(b"\n");

    if let Some(mode) = getenv(sp, b"imgtool_f2fs=") {
        if let Some(text) = mode.strip_prefix(b"write:") {
            f2fs_write(text, chunk);
        } else if mode == b"read" {
            f2fs_read(chunk);
        } else {
            write(b"init: f2fs: error: unknown imgtool_f2fs mode\n");
        }
    }

    write(b"init: powering off\n");
    syscall(SYS_SYNC, 0, 0, 0, 0, 0);
    // LINUX_REBOOT_MAGIC1, MAGIC2, LINUX_REBOOT_CMD_POWER_OFF
    syscall(SYS_REBOOT, 0xfee1_dead, 0x2812_1969, 0x4321_fedc, 0, 0);
    loop {}
}

/// core is built with unwinding tables that name this; nothing unwinds (panic=abort).
#[no_mangle]
pub extern "C" fn rust_eh_personality() {}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    loop {}
}
