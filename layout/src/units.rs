//! Sizes and offsets as a layout holds them: bytes, shown in the largest exact binary unit.
//! Their grammar is `common::size`.

use std::fmt;

pub use common::size::BLOCK;

/// A size or offset, always held in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Bytes(pub u64);

impl Bytes {
    pub fn blocks(self) -> u64 {
        self.0 / BLOCK
    }
}

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        const UNITS: [(u64, &str); 3] = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
        for (scale, unit) in UNITS {
            if b >= scale && b.is_multiple_of(scale) {
                return write!(f, "{} {unit}", b / scale);
            }
        }
        write!(f, "{b} bytes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_picks_the_largest_exact_unit() {
        assert_eq!(Bytes(128 << 10).to_string(), "128 KiB");
        assert_eq!(Bytes(1536).to_string(), "1536 bytes");
    }
}
