//! Lowercase hex, as digests, MACs and the console protocol's byte fields are written.

use std::fmt::Write as _;

/// `[0xab, 0x01]` -> `"ab01"`.
pub fn encode(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// The bytes of an even-length hex string (either case); `None` for anything else.
pub fn decode(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| {
            let pair = s.get(i..i + 2)?;
            // from_str_radix takes a leading '+', which is not hex.
            pair.bytes()
                .all(|c| c.is_ascii_hexdigit())
                .then(|| u8::from_str_radix(pair, 16).ok())?
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let b: Vec<u8> = (0..=255).collect();
        assert_eq!(decode(&encode(&b)).unwrap(), b);
        assert_eq!(encode(&[0xab, 0x01]), "ab01");
        assert_eq!(decode("AB01"), Some(vec![0xab, 0x01]));
        assert_eq!(decode(""), Some(vec![]));
        for bad in ["a", "0g", "+1", "é0", "abc"] {
            assert_eq!(decode(bad), None, "{bad}");
        }
    }
}
