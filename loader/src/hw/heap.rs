//! A bump allocator for the few allocations the env code makes (never freed; the loader runs once).
//! No atomics: with the MMU off all memory is Device memory, where exclusives are not guaranteed.

use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;

const SIZE: usize = 1 << 20;

#[repr(C, align(4096))]
struct Arena(UnsafeCell<[u8; SIZE]>);

struct Bump {
    arena: Arena,
    next: UnsafeCell<usize>,
}

// SAFETY: one core, no interrupts: never used concurrently.
unsafe impl Sync for Bump {}

#[global_allocator]
static HEAP: Bump = Bump {
    arena: Arena(UnsafeCell::new([0; SIZE])),
    next: UnsafeCell::new(0),
};

unsafe impl GlobalAlloc for Bump {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let base = self.arena.0.get() as usize;
        let next = &mut *self.next.get();
        let start = (base + *next + layout.align() - 1) & !(layout.align() - 1);
        let end = start + layout.size();
        if end > base + SIZE {
            return core::ptr::null_mut();
        }
        *next = end - base;
        start as *mut u8
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // Give back the most recent allocation (the env's temporary blocks often are).
        let base = self.arena.0.get() as usize;
        let next = &mut *self.next.get();
        if ptr as usize + layout.size() == base + *next {
            *next = ptr as usize - base;
        }
    }
}
