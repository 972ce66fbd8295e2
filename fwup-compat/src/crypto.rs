//! Disk encryption for `raw_write(offset, "cipher=...", "secret=...")`: every 512-byte
//! sector is encrypted on its own, keyed by its sector number from the start of the write,
//! as dm-crypt's "plain"/"plain64" IV modes do.
//!
//! - aes-cbc-plain: AES-256-CBC, IV = sector number as 32-bit little-endian, zero padded.
//! - aes-xts-plain64: AES-256-XTS (IEEE 1619), tweak = sector number as 64-bit little-endian.
//!
//! Spec: fwup's docs/fwup.md "Disk encryption", dm-crypt's IV modes
//! (<https://gitlab.com/cryptsetup/cryptsetup/-/wikis/DMCrypt>), IEEE 1619-2007 (XTS).

use crate::error::{Error, Result};
use aes::cipher::{generic_array::GenericArray, BlockDecrypt, BlockEncrypt, KeyInit};
use aes::Aes256;

const SECTOR: usize = 512;

enum Cipher {
    CbcPlain(Box<Aes256>),
    XtsPlain64 {
        data: Box<Aes256>,
        tweak: Box<Aes256>,
    },
}

/// One raw_write's encryption session.
pub struct DiskCrypto {
    cipher: Cipher,
    /// Byte offset of sector 0 (the raw_write destination).
    base: u64,
}

fn hex_key(s: &str, n: usize) -> Option<Vec<u8>> {
    if s.len() != n * 2 || !s.is_ascii() {
        return None;
    }
    (0..n)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok())
        .collect()
}

/// Parse `cipher=...,secret=...` options (one or several arguments).
fn parse_options(args: &[String]) -> Result<(String, String)> {
    let (mut cipher, mut secret) = (String::new(), String::new());
    for arg in args {
        for kv in arg.split(',') {
            let Some((k, v)) = kv.split_once('=') else {
                return Err(Error::msg(format!("Expecting '=' for in parameter '{kv}'")));
            };
            match k {
                "cipher" => cipher = v.chars().take(32).collect(),
                "secret" => secret = v.chars().take(128).collect(),
                _ => return Err(Error::msg(format!("Unexpected parameter: {kv}"))),
            }
        }
    }
    if cipher.is_empty() != secret.is_empty() {
        return Err(Error::msg(
            "Both a cipher and secret are required if one is supplied",
        ));
    }
    Ok((cipher, secret))
}

impl DiskCrypto {
    /// `base` is the byte offset that is sector 0; `args` the raw_write options.
    pub fn new(base: u64, args: &[String]) -> Result<Self> {
        let (cipher, secret) = parse_options(args)?;
        let cipher = match cipher.as_str() {
            "aes-cbc-plain" => {
                let key = hex_key(&secret, 32)
                    .or_else(|| {
                        // fwup 1.5 took base64 keys for this cipher; still accepted.
                        use base64::Engine;
                        base64::engine::general_purpose::STANDARD
                            .decode(&secret)
                            .ok()
                            .filter(|k| k.len() == 32)
                    })
                    .ok_or_else(|| {
                        Error::msg("aes-cbc-plain requires a hex-encoded 256-bit key")
                    })?;
                Cipher::CbcPlain(Box::new(Aes256::new(GenericArray::from_slice(&key))))
            }
            "aes-xts-plain64" => {
                let key = hex_key(&secret, 64).ok_or_else(|| {
                    Error::msg("aes-xts-plain64 requires a hex-encoded 512-bit key")
                })?;
                Cipher::XtsPlain64 {
                    data: Box::new(Aes256::new(GenericArray::from_slice(&key[..32]))),
                    tweak: Box::new(Aes256::new(GenericArray::from_slice(&key[32..]))),
                }
            }
            other => return Err(Error::msg(format!("Unsupported disk encryption: {other}"))),
        };
        Ok(DiskCrypto { cipher, base })
    }

    fn sectors(&self, offset: u64) -> u64 {
        (offset - self.base) / SECTOR as u64
    }

    /// Encrypt whole sectors in place; `offset` is where `buf` goes on the destination.
    pub fn encrypt(&mut self, buf: &mut [u8], offset: u64) {
        let first = self.sectors(offset);
        for (i, s) in buf.chunks_exact_mut(SECTOR).enumerate() {
            let lba = first + i as u64;
            match &self.cipher {
                Cipher::CbcPlain(aes) => {
                    let mut iv = [0u8; 16];
                    iv[..4].copy_from_slice(&(lba as u32).to_le_bytes());
                    for b in s.chunks_exact_mut(16) {
                        for (x, v) in b.iter_mut().zip(iv.iter()) {
                            *x ^= v;
                        }
                        aes.encrypt_block(GenericArray::from_mut_slice(b));
                        iv.copy_from_slice(b);
                    }
                }
                Cipher::XtsPlain64 { data, tweak } => xts(data, tweak, lba, s, true),
            }
        }
    }

    /// Decrypt whole sectors in place; `offset` is where `buf` came from.
    pub fn decrypt(&mut self, buf: &mut [u8], offset: u64) {
        let first = self.sectors(offset);
        for (i, s) in buf.chunks_exact_mut(SECTOR).enumerate() {
            let lba = first + i as u64;
            match &self.cipher {
                Cipher::CbcPlain(aes) => {
                    let mut iv = [0u8; 16];
                    iv[..4].copy_from_slice(&(lba as u32).to_le_bytes());
                    for b in s.chunks_exact_mut(16) {
                        let c: [u8; 16] = b.try_into().unwrap();
                        aes.decrypt_block(GenericArray::from_mut_slice(b));
                        for (x, v) in b.iter_mut().zip(iv.iter()) {
                            *x ^= v;
                        }
                        iv = c;
                    }
                }
                Cipher::XtsPlain64 { data, tweak } => xts(data, tweak, lba, s, false),
            }
        }
    }
}

/// XTS over one sector (a whole number of AES blocks, so no ciphertext stealing).
fn xts(data: &Aes256, tweak: &Aes256, lba: u64, sector: &mut [u8], encrypt: bool) {
    let mut t = [0u8; 16];
    t[..8].copy_from_slice(&lba.to_le_bytes());
    tweak.encrypt_block(GenericArray::from_mut_slice(&mut t));
    for b in sector.chunks_exact_mut(16) {
        for (x, v) in b.iter_mut().zip(t.iter()) {
            *x ^= v;
        }
        if encrypt {
            data.encrypt_block(GenericArray::from_mut_slice(b));
        } else {
            data.decrypt_block(GenericArray::from_mut_slice(b));
        }
        for (x, v) in b.iter_mut().zip(t.iter()) {
            *x ^= v;
        }
        // Multiply the tweak by x in GF(2^128), little-endian.
        let carry = t[15] >> 7;
        for i in (1..16).rev() {
            t[i] = (t[i] << 1) | (t[i - 1] >> 7);
        }
        t[0] = (t[0] << 1) ^ if carry != 0 { 0x87 } else { 0 };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_bad_keys() {
        let key64 = "00112233445566778899aabbccddeeff".repeat(4);
        for opts in [
            vec![format!("cipher=aes-cbc-plain,secret={}", &key64[..64])],
            vec![
                "cipher=aes-xts-plain64".to_string(),
                format!("secret={key64}"),
            ],
        ] {
            let mut c = DiskCrypto::new(4096, &opts).unwrap();
            let plain: Vec<u8> = (0..2048u32).map(|i| i as u8).collect();
            let mut buf = plain.clone();
            c.encrypt(&mut buf, 4096 + 512);
            assert_ne!(buf, plain);
            // Same data, different sector: different ciphertext.
            assert_ne!(buf[..512], buf[512..1024]);
            c.decrypt(&mut buf, 4096 + 512);
            assert_eq!(buf, plain);
        }
        assert!(DiskCrypto::new(0, &["cipher=aes-cbc-plain,secret=12".into()]).is_err());
        assert!(DiskCrypto::new(0, &["cipher=rot13,secret=12".into()]).is_err());
        assert!(DiskCrypto::new(0, &["cipher=aes-cbc-plain".into()]).is_err());
    }

    #[test]
    fn xts_matches_ieee1619_vector() {
        // IEEE 1619-2007 Annex B vector 10 (AES-256, 512-byte data unit 0xff): first bytes.
        let k1 = "2718281828459045235360287471352662497757247093699959574966967627";
        let k2 = "3141592653589793238462643383279502884197169399375105820974944592";
        let mut c =
            DiskCrypto::new(0, &[format!("cipher=aes-xts-plain64,secret={k1}{k2}")]).unwrap();
        let mut buf: Vec<u8> = (0..512u32).map(|i| i as u8).collect();
        c.encrypt(&mut buf, 0xff * 512);
        assert_eq!(
            &buf[..16],
            &[
                0x1c, 0x3b, 0x3a, 0x10, 0x2f, 0x77, 0x03, 0x86, 0xe4, 0x83, 0x6c, 0x99, 0xe3, 0x70,
                0xcf, 0x9b
            ]
        );
    }
}
