//! GUIDs as text and in GPT's on-disk byte order.
//!
//! Spec: UEFI 2.10 Appendix A (<https://uefi.org/specs/UEFI/2.10/Apx_A_GUID_and_Time_Formats.html>):
//! the first three fields are stored little-endian, the last 8 bytes as written.

use std::fmt;
use std::str::FromStr;

/// A GUID, held as the 16 bytes of its canonical text order (big-endian fields).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Guid(pub [u8; 16]);

impl Guid {
    pub const NIL: Guid = Guid([0; 16]);

    /// The 16 bytes as stored in a GPT header or entry (mixed-endian).
    pub fn to_disk_bytes(self) -> [u8; 16] {
        let b = self.0;
        let mut d = b;
        d[0..4].copy_from_slice(&[b[3], b[2], b[1], b[0]]);
        d[4..6].copy_from_slice(&[b[5], b[4]]);
        d[6..8].copy_from_slice(&[b[7], b[6]]);
        d
    }

    pub fn from_disk_bytes(d: [u8; 16]) -> Guid {
        // The swap is its own inverse.
        Guid(Guid(d).to_disk_bytes())
    }

    pub fn is_nil(self) -> bool {
        self == Guid::NIL
    }
}

/// A GUID string that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid GUID {0:?}: expected the form 01234567-89ab-cdef-0123-456789abcdef")]
pub struct GuidParseError(pub String);

impl FromStr for Guid {
    type Err = GuidParseError;

    fn from_str(s: &str) -> Result<Guid, GuidParseError> {
        let bad = || GuidParseError(s.to_string());
        let groups: Vec<&str> = s.split('-').collect();
        let lens: Vec<usize> = groups.iter().map(|g| g.len()).collect();
        if lens != [8, 4, 4, 4, 12] {
            return Err(bad());
        }
        let hex: String = groups.concat();
        let mut out = [0u8; 16];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(hex.get(2 * i..2 * i + 2).ok_or_else(bad)?, 16)
                .map_err(|_| bad())?;
        }
        Ok(Guid(out))
    }
}

impl fmt::Display for Guid {
    /// Lower-case canonical form.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_and_disk_round_trip() {
        let s = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b";
        let g: Guid = s.parse().unwrap();
        assert_eq!(g.to_string(), s);
        let d = g.to_disk_bytes();
        assert_eq!(&d[..8], &[0x28, 0x73, 0x2a, 0xc1, 0x1f, 0xf8, 0xd2, 0x11]);
        assert_eq!(&d[8..], &[0xba, 0x4b, 0x00, 0xa0, 0xc9, 0x3e, 0xc9, 0x3b]);
        assert_eq!(Guid::from_disk_bytes(d), g);
        assert_eq!(
            "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
                .parse::<Guid>()
                .unwrap(),
            g
        );
        assert!("c12a7328-f81f-11d2-ba4b-00a0c93ec93"
            .parse::<Guid>()
            .is_err());
        assert!("c12a7328f81f-11d2-ba4b-00a0c93ec93bb"
            .parse::<Guid>()
            .is_err());
        assert!("g12a7328-f81f-11d2-ba4b-00a0c93ec93b"
            .parse::<Guid>()
            .is_err());
    }
}
