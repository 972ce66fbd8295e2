//! Entry from qemu, exception level, and the jump into Linux.
//!
//! qemu's `-kernel` starts an ELF at its entry point with the DTB address in x0, at EL1 (or EL2
//! with `-M virt,virtualization=on`), MMU and caches off. The loader keeps them off.

use core::arch::{asm, global_asm};

// Allow FP/SIMD at the current EL (compiled Rust uses NEON registers), zero .bss, set the stack.
global_asm!(
    r#"
    .section .text.start, "ax"
    .global _start
_start:
    mov     x19, x0
    mrs     x1, CurrentEL
    lsr     x1, x1, #2
    cmp     x1, #2
    b.ne    1f
    mrs     x1, cptr_el2
    bic     x1, x1, #(1 << 10)
    msr     cptr_el2, x1
1:  mov     x1, #(3 << 20)
    msr     cpacr_el1, x1
    isb
    adrp    x1, __bss_start
    add     x1, x1, :lo12:__bss_start
    adrp    x2, __bss_end
    add     x2, x2, :lo12:__bss_end
2:  cmp     x1, x2
    b.hs    3f
    str     xzr, [x1], #8
    b       2b
3:  adrp    x1, __stack_top
    add     x1, x1, :lo12:__stack_top
    mov     sp, x1
    mov     x0, x19
    bl      loader_main
4:  wfe
    b       4b
"#
);

extern "C" {
    static __image_end: u8;
}

/// First byte after the loader's image (code, data, bss, stack).
pub fn image_end() -> u64 {
    // SAFETY: only the symbol's address is taken.
    core::ptr::addr_of!(__image_end) as u64
}

pub fn current_el() -> u64 {
    let el: u64;
    // SAFETY: reading CurrentEL has no side effects.
    unsafe { asm!("mrs {}, CurrentEL", out(reg) el, options(nomem, nostack)) };
    (el >> 2) & 3
}

/// Stop for good (errors end here; qemu is stopped from outside).
/// `wfi`, not `wfe`: qemu's TCG treats wfe as a yield, so a halted guest would spin a host core
/// until it is killed; wfi parks the vCPU until an interrupt is pending, and none is set up.
pub fn halt() -> ! {
    loop {
        // SAFETY: waits for an interrupt; interrupts stay masked.
        unsafe { asm!("wfi", options(nomem, nostack)) };
    }
}

/// Enter Linux: x0 = DTB, x1..x3 = 0, interrupts masked, MMU off (booting.rst "Call the kernel").
pub fn jump_to_linux(entry: u64, dtb: u64) -> ! {
    // SAFETY: the caller loaded a checked Image at `entry` and a DTB at `dtb`; nothing of the
    // loader is used afterwards.
    unsafe {
        asm!(
            "msr daifset, #0xf",
            "dsb sy",
            "ic iallu",
            "dsb sy",
            "isb",
            "mov x1, xzr",
            "mov x2, xzr",
            "mov x3, xzr",
            "br x4",
            in("x0") dtb,
            in("x4") entry,
            options(noreturn)
        )
    }
}
