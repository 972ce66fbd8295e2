//! Sizes and offsets as a layout writes them: a bare number is 512-byte blocks, a number with a
//! unit (B, KiB, MiB, GiB, TiB; K/M/G/T mean the same) is bytes. `0x` hex is accepted.

use std::fmt;

pub const BLOCK: u64 = 512;

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

/// Parse `"272"`, `"0x110"` (blocks), `"8 KiB"`, `"128MiB"`, `"4096 B"`, `"2G"`.
pub fn parse_size(text: &str) -> Result<Bytes, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_hexdigit() || c == 'x' || c == 'X' || c == '_'))
        .unwrap_or(t.len());
    // "0x1f" is all hex digits; "10B" would be read as hex digit B: check the unit separately.
    let (num, unit) = match t[..split]
        .strip_prefix("0x")
        .or_else(|| t[..split].strip_prefix("0X"))
    {
        Some(_) => t.split_at(split),
        None => {
            let d = t
                .find(|c: char| !(c.is_ascii_digit() || c == '_'))
                .unwrap_or(t.len());
            t.split_at(d)
        }
    };
    let num = num.replace('_', "");
    let n = if let Some(h) = num.strip_prefix("0x").or_else(|| num.strip_prefix("0X")) {
        u64::from_str_radix(h, 16)
    } else {
        num.parse::<u64>()
    }
    .map_err(|_| format!("`{text}` is not a size: write blocks (`2048`) or a unit (`1 MiB`)"))?;
    let mult = match unit.trim() {
        "" | "blocks" | "block" => BLOCK,
        "B" | "bytes" => 1,
        "K" | "KiB" | "k" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        "G" | "GiB" => 1 << 30,
        "T" | "TiB" => 1 << 40,
        other => {
            return Err(format!(
                "`{text}`: unknown unit `{other}` (use B, KiB, MiB, GiB, TiB, or none for 512-byte blocks)"
            ))
        }
    };
    n.checked_mul(mult)
        .map(Bytes)
        .ok_or_else(|| format!("`{text}` is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_numbers_are_blocks() {
        assert_eq!(parse_size("16").unwrap(), Bytes(8192));
        assert_eq!(parse_size("0x10").unwrap(), Bytes(8192));
        assert_eq!(parse_size("102_400").unwrap(), Bytes(102400 * 512));
    }

    #[test]
    fn units_are_bytes() {
        assert_eq!(parse_size("8 KiB").unwrap(), Bytes(8192));
        assert_eq!(parse_size("128MiB").unwrap(), Bytes(128 << 20));
        assert_eq!(parse_size("4096 B").unwrap(), Bytes(4096));
        assert_eq!(parse_size("2G").unwrap(), Bytes(2 << 30));
        assert_eq!(parse_size("0x2000 B").unwrap(), Bytes(0x2000));
    }

    #[test]
    fn bad_sizes_say_how_to_fix() {
        let e = parse_size("12 furlongs").unwrap_err();
        assert!(e.contains("unknown unit `furlongs`"), "{e}");
        assert!(parse_size("lots").unwrap_err().contains("not a size"));
        assert!(parse_size("99999999999999 TiB")
            .unwrap_err()
            .contains("too large"));
    }

    #[test]
    fn display_picks_the_largest_exact_unit() {
        assert_eq!(Bytes(128 << 10).to_string(), "128 KiB");
        assert_eq!(Bytes(1536).to_string(), "1536 bytes");
    }
}
