//! PL011 console output (qemu virt: 0x0900_0000). qemu needs no baud setup; we only transmit.
//! Spec: ARM PrimeCell UART (PL011) TRM, registers UARTDR (0x00) and UARTFR (0x18).

use core::fmt;

const BASE: usize = 0x0900_0000;
const DR: usize = 0x00;
const FR: usize = 0x18;
const FR_TXFF: u32 = 1 << 5;

pub struct Uart;

impl Uart {
    fn put(&mut self, b: u8) {
        // SAFETY: the virt machine's PL011 registers; 32-bit aligned accesses.
        unsafe {
            while core::ptr::read_volatile((BASE + FR) as *const u32) & FR_TXFF != 0 {}
            core::ptr::write_volatile((BASE + DR) as *mut u32, b as u32);
        }
    }
}

impl fmt::Write for Uart {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            if b == b'\n' {
                self.put(b'\r');
            }
            self.put(b);
        }
        Ok(())
    }
}

#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => {{
        use core::fmt::Write as _;
        let _ = writeln!($crate::hw::uart::Uart, $($arg)*);
    }};
}
