//! The one grammar for sizes and offsets in imgtool's YAML files and command-line options.
//!
//! `NUMBER [ ] UNIT`, where NUMBER is decimal (`_` separators allowed, a decimal fraction such
//! as `1.5` when the result is whole bytes) or `0x` hex, and UNIT is one of:
//!
//! | unit | bytes |
//! |---|---|
//! | `B`, `byte`, `bytes` | 1 |
//! | `s`, `sector(s)`, `block(s)` | 512 (a disk block, as LBAs count) |
//! | `K`, `k`, `KiB` | 1024 |
//! | `M`, `MiB` | 1024² |
//! | `G`, `GiB` | 1024³ |
//! | `T`, `TiB` | 1024⁴ |
//!
//! `KB`, `MB`, `GB`, `TB` are refused: tools disagree on whether they mean 1000 or 1024.
//! A bare number other than `0` is refused too, since imgtool once read it as bytes in one
//! place and as blocks in another; the error says how to write it.

use std::fmt;

/// Bytes in a `block` (and an `s`ector).
pub const BLOCK: u64 = 512;

/// Why a size did not parse; the message says how to write it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SizeError(pub String);

impl fmt::Display for SizeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SizeError {}

fn unit_bytes(unit: &str) -> Option<u64> {
    Some(match unit {
        "B" | "byte" | "bytes" => 1,
        "s" | "sector" | "sectors" | "block" | "blocks" => BLOCK,
        "K" | "k" | "KiB" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        "G" | "GiB" => 1 << 30,
        "T" | "TiB" => 1 << 40,
        _ => return None,
    })
}

/// Parse a size (see the module doc) into bytes.
pub fn parse_size(text: &str) -> Result<u64, SizeError> {
    let err = |m: String| Err(SizeError(m));
    let t = text.trim();
    let hex = t.starts_with("0x") || t.starts_with("0X");
    let digits_end = if hex {
        2 + t[2..]
            .find(|c: char| !(c.is_ascii_hexdigit() || c == '_'))
            .unwrap_or(t.len() - 2)
    } else {
        t.find(|c: char| !(c.is_ascii_digit() || c == '_' || c == '.'))
            .unwrap_or(t.len())
    };
    let (num, unit) = t.split_at(digits_end);
    let unit = unit.trim();
    let num = num.replace('_', "");
    // (mantissa, decimal places): 1.5 -> (15, 1).
    let parsed = if let Some(h) = num.get(2..).filter(|_| hex) {
        u64::from_str_radix(h, 16).ok().map(|n| (n, 0))
    } else {
        match num.split_once('.') {
            Some((i, f)) if !f.is_empty() && f.len() <= 9 && !f.contains('.') => format!("{i}{f}")
                .parse::<u64>()
                .ok()
                .map(|n| (n, f.len() as u32)),
            Some(_) => None,
            None => num.parse::<u64>().ok().map(|n| (n, 0)),
        }
    };
    let Some((mantissa, places)) = parsed else {
        return err(format!(
            "`{text}` is not a size: write a number and a unit, such as `64 MiB`, `8 KiB`, \
             `2048 blocks` (512 bytes each) or `4096 B`"
        ));
    };
    let mult = match unit {
        "" if mantissa == 0 => return Ok(0),
        "" => {
            return err(format!(
                "`{text}` has no unit: write `{t} B` for bytes or `{t} blocks` for 512-byte \
                 blocks (or use KiB, MiB, GiB)"
            ))
        }
        "KB" | "kB" | "MB" | "GB" | "TB" => {
            let binary = unit.replace('B', "iB").to_uppercase().replace("IB", "iB");
            return err(format!(
                "`{text}`: `{unit}` is ambiguous (1000 or 1024?): write `{num} {binary}` for \
                 powers of 1024, or the exact number of bytes with `B`"
            ));
        }
        u => match unit_bytes(u) {
            Some(m) => m,
            None => {
                return err(format!(
                    "`{text}`: unknown unit `{u}` (use B, blocks, KiB, MiB, GiB or TiB)"
                ))
            }
        },
    };
    let scale = 10u64.pow(places);
    let total = u128::from(mantissa) * u128::from(mult);
    if total % u128::from(scale) != 0 {
        return err(format!("`{text}` is not a whole number of bytes"));
    }
    u64::try_from(total / u128::from(scale)).or_else(|_| err(format!("`{text}` is too large")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        for (t, v) in [
            ("4096 B", 4096),
            ("8 KiB", 8192),
            ("8K", 8192),
            ("64k", 64 << 10),
            ("128MiB", 128 << 20),
            ("110M", 110 << 20),
            ("2G", 2 << 30),
            ("1 TiB", 1 << 40),
            ("16 blocks", 8192),
            ("1 block", 512),
            ("272 s", 272 * 512),
            ("0x2000 B", 0x2000),
            ("0x10 blocks", 8192),
            ("102_400 blocks", 102400 * 512),
            ("1.5 GiB", 3 << 29),
            ("0.5 KiB", 512),
            (" 12 bytes ", 12),
            ("0", 0),
            ("0x0", 0),
        ] {
            assert_eq!(parse_size(t), Ok(v), "{t}");
        }
    }

    #[test]
    fn bare_numbers_are_refused_with_the_fix() {
        let e = parse_size("272").unwrap_err().0;
        assert!(
            e.contains("no unit") && e.contains("`272 B`") && e.contains("`272 blocks`"),
            "{e}"
        );
        assert!(parse_size("0x110").unwrap_err().0.contains("no unit"));
    }

    #[test]
    fn decimal_units_are_refused() {
        for (t, fix) in [
            ("64MB", "`64 MiB`"),
            ("4 kB", "`4 KiB`"),
            ("1GB", "`1 GiB`"),
        ] {
            let e = parse_size(t).unwrap_err().0;
            assert!(e.contains("ambiguous") && e.contains(fix), "{t}: {e}");
        }
    }

    #[test]
    fn bad_sizes() {
        let e = parse_size("12 furlongs").unwrap_err().0;
        assert!(e.contains("unknown unit `furlongs`"), "{e}");
        for t in [
            "lots",
            "",
            "MiB",
            "1.2.3 MiB",
            "1. MiB",
            "0x MiB",
            "-1 B",
            "0x1.5 KiB",
        ] {
            assert!(parse_size(t).is_err(), "{t}");
        }
        assert!(parse_size("1.1 B").unwrap_err().0.contains("whole number"));
        assert!(parse_size("99999999999999 TiB")
            .unwrap_err()
            .0
            .contains("too large"));
        assert!(parse_size("1.0000000001 KiB").is_err());
    }
}
