//! The arm64 Linux `Image` header: what the bytes are, nothing about where they go.
//!
//! Spec: Documentation/arm64/booting.rst, "Call the kernel image"
//! (<https://www.kernel.org/doc/html/v6.1/arm64/booting.html>):
//!
//! ```text
//! 0x00 u32 code0, u32 code1      0x08 u64 text_offset (LE)   0x10 u64 image_size (LE)
//! 0x18 u64 flags (LE)            0x20..0x38 reserved         0x38 u32 magic "ARM\x64"
//! ```

use core::fmt;

/// Bytes of the header we read (one sector is enough).
pub const HEADER_LEN: usize = 64;
/// `ARM\x64` read as a little-endian u32.
pub const MAGIC: u32 = 0x644d_5241;
/// Offset of the magic.
pub const MAGIC_OFFSET: usize = 0x38;
/// Largest image we accept: far above any guest kernel, small enough to catch garbage sizes.
pub const MAX_IMAGE_SIZE: u64 = 128 << 20;

/// A checked header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageHeader {
    /// Where in a 2 MiB-aligned window the image must start.
    pub text_offset: u64,
    /// Bytes the kernel needs from its start, including its BSS.
    pub image_size: u64,
    pub flags: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageError {
    /// Too few bytes to hold a header.
    Short { len: usize },
    /// No `ARM\x64` at 0x38: not a raw arm64 Image (a zImage, a gzipped Image, or no kernel).
    BadMagic { found: u32 },
    /// `image_size` is 0: a pre-3.17 kernel, whose size the header does not give.
    NoImageSize,
    /// `image_size` beyond [`MAX_IMAGE_SIZE`].
    TooBig { image_size: u64 },
    /// Flags bit 0 set: a big-endian kernel.
    BigEndian,
    /// `text_offset` not below 2 MiB or not 4 KiB aligned.
    BadTextOffset { text_offset: u64 },
}

impl fmt::Display for ImageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageError::Short { len } => write!(f, "kernel header is {len} bytes, need 64"),
            ImageError::BadMagic { found } => write!(
                f,
                "no arm64 Image magic \"ARM\\x64\" at offset 0x38 (found 0x{found:08x}): \
                 the slot holds no raw arm64 Image (gzipped or missing kernel?)"
            ),
            ImageError::NoImageSize => {
                write!(f, "kernel header has image_size 0 (kernel older than 3.17)")
            }
            ImageError::TooBig { image_size } => write!(
                f,
                "kernel header image_size {image_size} is over the {} MiB limit",
                MAX_IMAGE_SIZE >> 20
            ),
            ImageError::BigEndian => write!(f, "kernel is big-endian (flags bit 0)"),
            ImageError::BadTextOffset { text_offset } => {
                write!(f, "kernel text_offset 0x{text_offset:x} is not usable")
            }
        }
    }
}

fn le64(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

impl ImageHeader {
    /// Check the first bytes of a kernel slot.
    pub fn parse(bytes: &[u8]) -> Result<ImageHeader, ImageError> {
        if bytes.len() < HEADER_LEN {
            return Err(ImageError::Short { len: bytes.len() });
        }
        let mut m = [0u8; 4];
        m.copy_from_slice(&bytes[MAGIC_OFFSET..MAGIC_OFFSET + 4]);
        let magic = u32::from_le_bytes(m);
        if magic != MAGIC {
            return Err(ImageError::BadMagic { found: magic });
        }
        let h = ImageHeader {
            text_offset: le64(bytes, 0x08),
            image_size: le64(bytes, 0x10),
            flags: le64(bytes, 0x18),
        };
        if h.image_size == 0 {
            return Err(ImageError::NoImageSize);
        }
        if h.image_size > MAX_IMAGE_SIZE {
            return Err(ImageError::TooBig {
                image_size: h.image_size,
            });
        }
        if h.flags & 1 != 0 {
            return Err(ImageError::BigEndian);
        }
        if h.text_offset >= 2 << 20 || !h.text_offset.is_multiple_of(4096) {
            return Err(ImageError::BadTextOffset {
                text_offset: h.text_offset,
            });
        }
        Ok(h)
    }
}

#[cfg(test)]
pub(crate) fn test_header(text_offset: u64, image_size: u64, flags: u64) -> [u8; 64] {
    let mut b = [0u8; 64];
    b[0x08..0x10].copy_from_slice(&text_offset.to_le_bytes());
    b[0x10..0x18].copy_from_slice(&image_size.to_le_bytes());
    b[0x18..0x20].copy_from_slice(&flags.to_le_bytes());
    b[0x38..0x3c].copy_from_slice(b"ARM\x64");
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_a_modern_kernel_header() {
        let h = ImageHeader::parse(&test_header(0, 0x74_0000, 0xa)).unwrap();
        assert_eq!(h.image_size, 0x74_0000);
        assert_eq!(h.text_offset, 0);
        assert_eq!(h.flags, 0xa);
    }

    #[test]
    fn rejects_bad_magic_zero_size_and_garbage() {
        let mut b = test_header(0, 0x1000, 0);
        b[0x38] = b'X';
        assert!(matches!(
            ImageHeader::parse(&b),
            Err(ImageError::BadMagic { .. })
        ));
        assert_eq!(
            ImageHeader::parse(&test_header(0, 0, 0)),
            Err(ImageError::NoImageSize)
        );
        assert_eq!(
            ImageHeader::parse(&test_header(0, 1 << 40, 0)),
            Err(ImageError::TooBig {
                image_size: 1 << 40
            })
        );
        assert_eq!(
            ImageHeader::parse(&test_header(0, 4096, 1)),
            Err(ImageError::BigEndian)
        );
        assert_eq!(
            ImageHeader::parse(&test_header(0x123, 4096, 0)),
            Err(ImageError::BadTextOffset { text_offset: 0x123 })
        );
        assert_eq!(
            ImageHeader::parse(&[0u8; 10]),
            Err(ImageError::Short { len: 10 })
        );
        // An all-0xff erased slot names the magic it found.
        let e = ImageHeader::parse(&[0xff; 64]).unwrap_err();
        assert!(format!("{e}").contains("0xffffffff"), "{e}");
    }
}
