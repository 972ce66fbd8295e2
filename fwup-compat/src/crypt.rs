//! fwup's disk encryption: `raw_write(BLOCK, "cipher=...", "secret=...")` and
//! `delta-source-raw-options = "cipher=...,secret=..."`.
//!
//! Every 512-byte sector is encrypted on its own, as dm-crypt does with these cipher specs
//! (<https://gitlab.com/cryptsetup/cryptsetup/-/wikis/DMCrypt>, "IV generators"):
//!
//! - `aes-cbc-plain`: AES-256-CBC; the IV is the sector number truncated to 32 bits,
//!   little-endian, zero-padded to 16 bytes. Key: 64 hex digits (fwup 1.5's base64 form of
//!   the 32 bytes is still accepted, for this cipher only).
//! - `aes-xts-plain64`: AES-256-XTS (IEEE 1619, two 256-bit keys: data key first, then
//!   tweak key); the tweak is the 64-bit sector number, little-endian, zero-padded to 16
//!   bytes. Key: 128 hex digits.
//!
//! Sector numbers count from the start of the encrypted region, not the device: fwup passes
//! the raw_write destination (or `delta-source-raw-offset`) as the base, so sector 0 is the
//! first sector written. Data is always whole sectors; fwup zero-pads a resource's last
//! partial sector before encrypting it. Checked against fwup 1.16 (src/disk_crypto.c,
//! src/functions.c raw_write, src/fwup_apply.c delta sources) and against its output.

use aes::cipher::{
    block_padding::NoPadding, BlockDecryptMut, BlockEncryptMut, InnerIvInit, KeyInit,
};
use aes::Aes256;
use base64::Engine;
use std::fmt;
use std::str::FromStr;

/// The sector size every cipher works in (fwup's FWUP_BLOCK_SIZE).
pub const SECTOR_SIZE: usize = 512;

/// A cipher fwup supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cipher {
    AesCbcPlain,
    AesXtsPlain64,
}

impl Cipher {
    /// The name used in `cipher=`.
    pub fn name(self) -> &'static str {
        match self {
            Cipher::AesCbcPlain => "aes-cbc-plain",
            Cipher::AesXtsPlain64 => "aes-xts-plain64",
        }
    }

    /// Key bytes (twice as many hex digits in `secret=`).
    pub fn key_len(self) -> usize {
        match self {
            Cipher::AesCbcPlain => 32,
            Cipher::AesXtsPlain64 => 64,
        }
    }
}

impl fmt::Display for Cipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Cipher {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "aes-cbc-plain" => Ok(Cipher::AesCbcPlain),
            "aes-xts-plain64" => Ok(Cipher::AesXtsPlain64),
            other => Err(Error::UnknownCipher(other.to_string())),
        }
    }
}

/// Errors never include the secret.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "unsupported disk encryption cipher '{0}': fwup supports aes-cbc-plain and \
         aes-xts-plain64"
    )]
    UnknownCipher(String),
    #[error("{cipher} requires a hex-encoded {bits}-bit key ({digits} hex digits); {problem}")]
    BadKey {
        cipher: Cipher,
        bits: usize,
        digits: usize,
        problem: String,
    },
    #[error(
        "disk encryption option {index} has no '=': write \"cipher=NAME\" and \"secret=HEX\" \
         (separate arguments or joined with a comma)"
    )]
    MissingEquals { index: usize },
    #[error("unexpected disk encryption option '{0}': only cipher= and secret= are allowed")]
    UnknownOption(String),
    #[error("disk encryption needs both cipher= and secret= ({missing} is missing)")]
    Incomplete { missing: &'static str },
    #[error(
        "encrypted data must be whole {SECTOR_SIZE}-byte sectors starting on a sector of the \
         encrypted region: {len} bytes at offset {offset}, region starts at {base}"
    )]
    Unaligned { offset: u64, len: usize, base: u64 },
}

pub type Result<T> = std::result::Result<T, Error>;

/// `cipher=` and `secret=` from fwup's option arguments.
#[derive(Clone, PartialEq, Eq)]
pub struct Options {
    pub cipher: Cipher,
    pub secret: String,
}

impl fmt::Debug for Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Options")
            .field("cipher", &self.cipher)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// Parse fwup's encryption options: each argument holds one or more comma-separated
/// `cipher=NAME` / `secret=KEY` pairs (`raw_write(0, "cipher=x", "secret=y")` and
/// `delta-source-raw-options = "cipher=x,secret=y"` are the same). A later pair wins.
/// Run it after `${VAR}` substitution: secrets usually come from the environment.
pub fn parse_options<S: AsRef<str>>(args: &[S]) -> Result<Options> {
    let (mut cipher, mut secret) = (None, None);
    for (index, pair) in args.iter().flat_map(|a| a.as_ref().split(',')).enumerate() {
        let (key, value) = pair
            .split_once('=')
            .ok_or(Error::MissingEquals { index: index + 1 })?;
        match key {
            "cipher" => cipher = Some(value),
            "secret" => secret = Some(value),
            other => return Err(Error::UnknownOption(other.to_string())),
        }
    }
    match (cipher, secret) {
        (Some(c), Some(s)) => Ok(Options {
            cipher: c.parse()?,
            secret: s.to_string(),
        }),
        (None, _) => Err(Error::Incomplete { missing: "cipher=" }),
        (_, None) => Err(Error::Incomplete { missing: "secret=" }),
    }
}

/// Decode `secret` for `cipher`: exactly `2 * key_len` hex digits (either case); for
/// aes-cbc-plain also base64 of 32 bytes (deprecated fwup 1.5 form).
pub fn parse_key(cipher: Cipher, secret: &str) -> Result<Vec<u8>> {
    let n = cipher.key_len();
    let bad = |problem: String| Error::BadKey {
        cipher,
        bits: n * 8,
        digits: n * 2,
        problem,
    };
    if let Some(key) = common::hex::decode(secret).filter(|k| k.len() == n) {
        return Ok(key);
    }
    if cipher == Cipher::AesCbcPlain {
        if let Ok(key) = base64::engine::general_purpose::STANDARD.decode(secret) {
            if key.len() == n {
                return Ok(key);
            }
        }
    }
    Err(bad(if secret.len() != n * 2 {
        format!("the secret has {} characters", secret.len())
    } else {
        "the secret has a character that is not a hex digit".to_string()
    }))
}

/// Expanded key schedules (about 1 KiB per AES-256 key), boxed to keep sessions small.
enum Keys {
    Cbc(Box<Aes256>),
    Xts(Box<xts_mode::Xts128<Aes256>>),
}

/// An encryption session for one region: fwup's `struct disk_crypto`.
pub struct DiskCrypto {
    cipher: Cipher,
    keys: Keys,
    base: u64,
}

impl fmt::Debug for DiskCrypto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DiskCrypto")
            .field("cipher", &self.cipher)
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl DiskCrypto {
    /// A session for the region starting at byte `base_offset` of the device (sector 0 of
    /// the IVs/tweaks). fwup: the raw_write destination `BLOCK * 512`, or
    /// `delta-source-raw-offset * 512` for a delta source.
    pub fn new(cipher: Cipher, secret: &str, base_offset: u64) -> Result<Self> {
        let key = parse_key(cipher, secret)?;
        let keys = match cipher {
            Cipher::AesCbcPlain => {
                Keys::Cbc(Box::new(Aes256::new_from_slice(&key).expect("32-byte key")))
            }
            Cipher::AesXtsPlain64 => {
                let (data, tweak) = key.split_at(32);
                Keys::Xts(Box::new(xts_mode::Xts128::new(
                    Aes256::new_from_slice(data).expect("32-byte key"),
                    Aes256::new_from_slice(tweak).expect("32-byte key"),
                )))
            }
        };
        Ok(DiskCrypto {
            cipher,
            keys,
            base: base_offset,
        })
    }

    /// [`parse_options`] then [`DiskCrypto::new`].
    pub fn from_options<S: AsRef<str>>(args: &[S], base_offset: u64) -> Result<Self> {
        let o = parse_options(args)?;
        Self::new(o.cipher, &o.secret, base_offset)
    }

    pub fn cipher(&self) -> Cipher {
        self.cipher
    }

    pub fn base_offset(&self) -> u64 {
        self.base
    }

    /// Encrypt `buf` in place; it will be written at device byte `offset`. Whole sectors
    /// only, at a whole number of sectors from the base.
    pub fn encrypt(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let first = self.first_sector(buf.len(), offset)?;
        for (i, s) in buf.chunks_exact_mut(SECTOR_SIZE).enumerate() {
            self.encrypt_sector(first + i as u64, s.try_into().expect("sector"));
        }
        Ok(())
    }

    /// Decrypt `buf` in place; it was read from device byte `offset`.
    pub fn decrypt(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let first = self.first_sector(buf.len(), offset)?;
        for (i, s) in buf.chunks_exact_mut(SECTOR_SIZE).enumerate() {
            self.decrypt_sector(first + i as u64, s.try_into().expect("sector"));
        }
        Ok(())
    }

    fn first_sector(&self, len: usize, offset: u64) -> Result<u64> {
        let rel = offset.checked_sub(self.base);
        match rel {
            Some(rel)
                if rel.is_multiple_of(SECTOR_SIZE as u64) && len.is_multiple_of(SECTOR_SIZE) =>
            {
                Ok(rel / SECTOR_SIZE as u64)
            }
            _ => Err(Error::Unaligned {
                offset,
                len,
                base: self.base,
            }),
        }
    }

    /// Encrypt one sector, `sector` counted from the base.
    pub fn encrypt_sector(&self, sector: u64, buf: &mut [u8; SECTOR_SIZE]) {
        match &self.keys {
            Keys::Cbc(aes) => {
                cbc::Encryptor::<Aes256>::inner_iv_init((**aes).clone(), &plain_iv(sector).into())
                    .encrypt_padded_mut::<NoPadding>(buf, SECTOR_SIZE)
                    .expect("whole blocks");
            }
            Keys::Xts(xts) => xts.encrypt_sector(buf, plain64_iv(sector)),
        }
    }

    /// Decrypt one sector, `sector` counted from the base.
    pub fn decrypt_sector(&self, sector: u64, buf: &mut [u8; SECTOR_SIZE]) {
        match &self.keys {
            Keys::Cbc(aes) => {
                cbc::Decryptor::<Aes256>::inner_iv_init((**aes).clone(), &plain_iv(sector).into())
                    .decrypt_padded_mut::<NoPadding>(buf)
                    .expect("whole blocks");
            }
            Keys::Xts(xts) => xts.decrypt_sector(buf, plain64_iv(sector)),
        }
    }
}

/// dm-crypt "plain": the low 32 bits of the sector number, little-endian.
fn plain_iv(sector: u64) -> [u8; 16] {
    let mut iv = [0u8; 16];
    iv[..4].copy_from_slice(&(sector as u32).to_le_bytes());
    iv
}

/// dm-crypt "plain64": the 64-bit sector number, little-endian.
fn plain64_iv(sector: u64) -> [u8; 16] {
    let mut iv = [0u8; 16];
    iv[..8].copy_from_slice(&sector.to_le_bytes());
    iv
}

#[cfg(test)]
mod tests {
    //! Known answers: per-sector values from OpenSSL (AES-256-CBC through the `openssl enc`
    //! CLI and EVP, AES-256-XTS through EVP), and whole-write values from the real fwup 1.16
    //! (`raw_write(3, ...)` of a 3000-byte resource). The generator: for sector n the
    //! plaintext byte i is `(i * 31 + n * 7 + 11) & 0xff`; keys are SHA-256("imgtool
    //! aes-cbc-plain test key") and SHA-512("imgtool aes-xts-plain64 test key").
    use super::*;
    use blake2::{digest::consts::U32, Blake2b, Digest};

    const CBC_KEY: &str = "711e4f69e9386b082d5aa549841b1630c2c74d3d5b3fec5883b4dd54e581ae20";
    const CBC_KEY_BASE64: &str = "cR5Paek4awgtWqVJhBsWMMLHTT1bP+xYg7TdVOWBriA=";
    const XTS_KEY: &str = "a3760508e25c9800ff00095bdb806341d5a629d66b964803327f7614563722952b2fb5\
                           a9a0f7db0a47d05843e8b769dd225f7d67b4da6850af6cd45590d0619a";

    /// (sector, first 16 ciphertext bytes, BLAKE2b-256 of the 512 ciphertext bytes).
    const CBC_PLAIN: &[(u64, &str, &str)] = &[
        (
            0x0,
            "29b03103e181025bff5230639e7fee6d",
            "8d1d9303e44c7cf1db9b2116792a82847b5366fb1cd42f61053214bc6860791c",
        ),
        (
            0x1,
            "de9ad642e59b5d5c3b6d44de8f8ba04c",
            "cfb4c40159ff2953f398fbda45ac984d8320485d7039201a75b519eff25c7fdb",
        ),
        (
            0x7,
            "28507eb2b6271b523eae75a3188770ed",
            "5fa8e349f0bdf1afaf354124fa8771ae2b233c9ea778c2b839b395704dc59c0e",
        ),
        (
            0xffffffff,
            "73d6bbdc887e92ae1497c1b318658124",
            "38564006e7916a269b2c1979640a2745b6cce5d0b3988817e2faef27d3afb7e4",
        ),
        // "plain" keeps the low 32 bits: the IV here is 5.
        (
            0x100000005,
            "0b6ffcca0a24657c4663daf054613df6",
            "17bb2dde86c6daf6a9032031c53897a4de8fc0d26c2a26a351eecf2be5ba3c5c",
        ),
    ];
    const XTS_PLAIN64: &[(u64, &str, &str)] = &[
        (
            0x0,
            "392f15777d6713b5964a030c706b934c",
            "214780fadde8a24de02d96e10e988bbcb9bbc5b16dfc65f97c11996a43b6b511",
        ),
        (
            0x1,
            "84cbc869af18a7814157c94f415a51a7",
            "fac29506c0be82f1b17e9a779b5ee4c8f10e98a2687f23266f1a6516beca55bf",
        ),
        (
            0x7,
            "b81c99ab952f0e22dd05b0420d2effa4",
            "d064dbf6806b38c2aea7e46bdccc27d34c9b1185f7aa8199d7bcd4bf9feb3f83",
        ),
        (
            0xffffffff,
            "f369f445f0880e972c64a43d973cd0f2",
            "5d65a3ad0b44b57af0e703c7acd91ee55b3e22f654c63365d596f0a0765a570e",
        ),
        (
            0x100000005,
            "8825b4f47087e697074270d3ba333eb3",
            "dcb63e081f7ed20de3a9e9e699191f055524aebcdf899742b34bbeb941c33411",
        ),
        (
            0x123456789abcdef,
            "ce4e142e31bc44b345c2363e7ee57398",
            "69a0262011d246bd22087c24a7e3af8a8dd1a95886182cf6321afb6147b6675b",
        ),
    ];

    fn plaintext(n: u64) -> [u8; SECTOR_SIZE] {
        std::array::from_fn(|i| (i as u64 * 31 + n * 7 + 11) as u8)
    }

    fn blake2b(data: &[u8]) -> String {
        common::hex::encode(&Blake2b::<U32>::digest(data))
    }

    fn known_answers(dc: &DiskCrypto, vectors: &[(u64, &str, &str)]) {
        for &(n, head, digest) in vectors {
            let mut s = plaintext(n);
            dc.encrypt_sector(n, &mut s);
            assert_eq!(
                common::hex::encode(&s[..16]),
                head,
                "{} sector {n:#x}",
                dc.cipher()
            );
            assert_eq!(blake2b(&s), digest, "{} sector {n:#x}", dc.cipher());
            dc.decrypt_sector(n, &mut s);
            assert!(s == plaintext(n), "{} sector {n:#x} decrypts", dc.cipher());
        }
    }

    #[test]
    fn aes_cbc_plain_matches_openssl() {
        let dc = DiskCrypto::new(Cipher::AesCbcPlain, CBC_KEY, 0).unwrap();
        known_answers(&dc, CBC_PLAIN);
    }

    #[test]
    fn aes_xts_plain64_matches_openssl() {
        let dc = DiskCrypto::new(Cipher::AesXtsPlain64, XTS_KEY, 0).unwrap();
        known_answers(&dc, XTS_PLAIN64);
    }

    /// fwup's raw_write(3, ...) of 3000 bytes: six sectors, numbered 0..6 from the write
    /// offset, the last one zero-padded.
    fn fwup_write(args: &[&str], digest: &str) {
        let base = 3 * SECTOR_SIZE as u64;
        let dc = DiskCrypto::from_options(args, base).unwrap();
        let mut buf: Vec<u8> = (0..6).flat_map(plaintext).collect();
        buf[3000..].fill(0);
        let plain = buf.clone();
        dc.encrypt(&mut buf, base).unwrap();
        assert_eq!(blake2b(&buf), digest, "{args:?}");
        // Reading back a part of the region, as a delta source does.
        let mut tail = buf[2 * SECTOR_SIZE..].to_vec();
        dc.decrypt(&mut tail, base + 2 * SECTOR_SIZE as u64)
            .unwrap();
        assert!(tail == plain[2 * SECTOR_SIZE..]);
    }

    #[test]
    fn matches_real_fwup_raw_write() {
        let cbc_secret = format!("secret={CBC_KEY}");
        let cbc = "0a4b1b55a9da1f4214ef4bee233d4e40c7896971e0cf15c98626da1b82561cb7";
        fwup_write(&["cipher=aes-cbc-plain", &cbc_secret], cbc);
        // The deprecated base64 key, and the comma-joined form delta-source-raw-options uses.
        fwup_write(
            &[&format!("cipher=aes-cbc-plain,secret={CBC_KEY_BASE64}")],
            cbc,
        );
        fwup_write(
            &[
                &cbc_secret.to_uppercase().replace("SECRET", "secret"),
                "cipher=aes-cbc-plain",
            ],
            cbc,
        );
        let xts = "1666c25b6c4c514bd68f7248d54216b077fab258138305f460987e6ed841d5fd";
        fwup_write(&[&format!("cipher=aes-xts-plain64,secret={XTS_KEY}")], xts);
    }

    #[test]
    fn option_errors() {
        let err = |args: &[&str]| DiskCrypto::from_options(args, 0).unwrap_err();
        // fwup's test 170: a cipher without a secret, a secret without a cipher, an unknown
        // option.
        assert!(matches!(
            err(&["cipher=aes-cbc-plain"]),
            Error::Incomplete { missing: "secret=" }
        ));
        assert!(matches!(
            err(&["secret=123"]),
            Error::Incomplete { missing: "cipher=" }
        ));
        assert!(matches!(err(&["unsupported=1"]), Error::UnknownOption(k) if k == "unsupported"));
        assert!(matches!(
            err(&["cipher=aes-cbc-plain", "secret"]),
            Error::MissingEquals { index: 2 }
        ));
        let e = err(&[&format!("cipher=aes-ctr-plain,secret={CBC_KEY}")]);
        assert_eq!(
            e.to_string(),
            "unsupported disk encryption cipher 'aes-ctr-plain': fwup supports aes-cbc-plain and \
             aes-xts-plain64"
        );
        // A CBC key where an XTS key belongs, a key one digit short, a non-hex digit. The
        // messages name the cipher and key size and never echo the secret.
        for (cipher, secret, problem) in [
            (
                "aes-xts-plain64",
                CBC_KEY.to_string(),
                "the secret has 64 characters",
            ),
            (
                "aes-cbc-plain",
                CBC_KEY[1..].to_string(),
                "the secret has 63 characters",
            ),
            (
                "aes-cbc-plain",
                format!("{}g", &CBC_KEY[1..]),
                "not a hex digit",
            ),
        ] {
            let e = err(&[&format!("cipher={cipher}"), &format!("secret={secret}")]).to_string();
            assert!(e.starts_with(cipher) && e.contains(problem), "{e}");
            assert!(!e.contains(&secret[..20]), "{e}");
        }
        // base64 is only the deprecated CBC form.
        let e = err(&[
            "cipher=aes-xts-plain64",
            &format!("secret={CBC_KEY_BASE64}"),
        ]);
        assert!(
            e.to_string().contains("512-bit key (128 hex digits)"),
            "{e}"
        );
    }

    #[test]
    fn unaligned_data_is_refused() {
        let dc = DiskCrypto::new(Cipher::AesXtsPlain64, XTS_KEY, 1024).unwrap();
        let mut buf = vec![0u8; 1024];
        assert!(matches!(
            dc.encrypt(&mut buf, 1024 + 100),
            Err(Error::Unaligned { .. })
        ));
        assert!(matches!(
            dc.encrypt(&mut buf[..1000], 1024),
            Err(Error::Unaligned { .. })
        ));
        assert!(matches!(
            dc.decrypt(&mut buf, 512),
            Err(Error::Unaligned { .. })
        ));
        assert!(buf.iter().all(|&b| b == 0), "nothing changes on error");
        // Offsets are relative to the base: device offset 1024 + 7 * 512 is sector 7.
        let mut s = plaintext(7);
        dc.encrypt(&mut s, 1024 + 7 * 512).unwrap();
        assert_eq!(blake2b(&s), XTS_PLAIN64[2].2);
    }
}
