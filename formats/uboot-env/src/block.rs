//! On-disk layout of one environment copy; both parsing and serializing go through here.
//!
//! Spec: U-Boot's `env_t` in include/env_internal.h
//! (<https://github.com/u-boot/u-boot/blob/master/include/env_internal.h>) and the reader in
//! tools/env/fw_env.c (<https://github.com/u-boot/u-boot/blob/master/tools/env/fw_env.c>):
//!
//! ```text
//! offset 0   u32 LE  CRC32 (IEEE) of the data area
//! offset 4   u8      flags (redundant layout only): serial number of the write
//! then       data:   "name=value\0" ... "\0", the rest padded up to the block size
//! ```

use alloc::string::String;
use alloc::vec::Vec;

use crate::Error;

/// Size of the CRC field.
pub const CRC_LEN: usize = 4;

/// Single copy (CRC only) or one copy of a redundant pair (CRC + flag byte).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    Single,
    Redundant,
}

impl Layout {
    /// Bytes before the data area.
    pub const fn header_len(self) -> usize {
        match self {
            Layout::Single => CRC_LEN,
            Layout::Redundant => CRC_LEN + 1,
        }
    }

    /// Smallest block that can hold an empty environment (header + one NUL).
    pub const fn min_block_len(self) -> usize {
        self.header_len() + 1
    }
}

/// The header of one copy as stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub crc: u32,
    /// `Some` in the redundant layout.
    pub flag: Option<u8>,
}

impl Header {
    pub fn layout(&self) -> Layout {
        match self.flag {
            Some(_) => Layout::Redundant,
            None => Layout::Single,
        }
    }

    pub fn read(block: &[u8], layout: Layout) -> Result<Header, Error> {
        check_len(block.len(), layout)?;
        let crc = u32::from_le_bytes([block[0], block[1], block[2], block[3]]);
        let flag = match layout {
            Layout::Single => None,
            Layout::Redundant => Some(block[CRC_LEN]),
        };
        Ok(Header { crc, flag })
    }

    pub fn write(&self, block: &mut [u8]) {
        block[..CRC_LEN].copy_from_slice(&self.crc.to_le_bytes());
        if let Some(flag) = self.flag {
            block[CRC_LEN] = flag;
        }
    }
}

fn check_len(len: usize, layout: Layout) -> Result<(), Error> {
    let min = layout.min_block_len();
    if len < min {
        return Err(Error::BlockTooSmall { len, min });
    }
    Ok(())
}

/// One copy split into header and data area, with the CRC the data actually has.
#[derive(Clone, Copy, Debug)]
pub struct RawBlock<'a> {
    pub header: Header,
    pub computed_crc: u32,
    pub data: &'a [u8],
}

impl<'a> RawBlock<'a> {
    pub fn parse(block: &'a [u8], layout: Layout) -> Result<Self, Error> {
        let header = Header::read(block, layout)?;
        let data = &block[layout.header_len()..];
        Ok(RawBlock {
            header,
            computed_crc: crc32fast::hash(data),
            data,
        })
    }

    pub fn crc_ok(&self) -> bool {
        self.header.crc == self.computed_crc
    }

    /// The variables, after checking the CRC (a bad CRC is never trusted).
    pub fn vars(&self) -> Result<Vec<(String, String)>, Error> {
        if !self.crc_ok() {
            return Err(Error::BadCrc {
                stored: self.header.crc,
                computed: self.computed_crc,
            });
        }
        decode_vars(self.data, self.header.layout().header_len())
    }
}

/// Decode `name=value\0...\0`. `base` is the data area's offset in the block (for errors).
///
/// The list ends at an empty entry (the double NUL) or exactly at the end of the area.
/// A name that appears twice keeps its first position and its last value, which is what
/// U-Boot's import and fwup's reader both end up with.
pub fn decode_vars(data: &[u8], base: usize) -> Result<Vec<(String, String)>, Error> {
    let mut vars: Vec<(String, String)> = Vec::new();
    let mut pos = 0;
    while pos < data.len() && data[pos] != 0 {
        let offset = base + pos;
        let rest = &data[pos..];
        let len = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or(Error::Unterminated { offset })?;
        let entry = &rest[..len];
        let eq = entry
            .iter()
            .position(|&b| b == b'=')
            .ok_or(Error::MissingEquals { offset })?;
        if eq == 0 {
            return Err(Error::EmptyName { offset });
        }
        let text = core::str::from_utf8(entry).map_err(|_| Error::NotUtf8 { offset })?;
        let (name, value) = (&text[..eq], &text[eq + 1..]);
        match vars.iter_mut().find(|(n, _)| n == name) {
            Some(slot) => slot.1 = String::from(value),
            None => vars.push((String::from(name), String::from(value))),
        }
        pos += len + 1;
    }
    Ok(vars)
}

/// Variable order in the serialized data area.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    /// Byte-wise by name: what U-Boot's `saveenv`, libubootenv and fwup write.
    Sorted,
    /// The `Env`'s own order (insertion order; parse order for a parsed block).
    Stored,
}

/// How to lay out the data area.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriteOptions {
    pub order: Order,
    /// Fill byte after the terminating NUL.
    pub pad: u8,
    /// Bytes that must stay free at the end of the block (fwup keeps one).
    pub spare: usize,
}

impl WriteOptions {
    /// Byte-identical to fwup's `uboot_env_encode` (src/uboot_env.c): sorted, 0xff padding,
    /// and it refuses to fill the last byte of the block.
    pub const FWUP: WriteOptions = WriteOptions {
        order: Order::Sorted,
        pad: 0xff,
        spare: 1,
    };
    /// Sorted, 0xff padding (erased flash; also mkenvimage's default), whole block usable.
    pub const STANDARD: WriteOptions = WriteOptions {
        order: Order::Sorted,
        pad: 0xff,
        spare: 0,
    };
}

impl Default for WriteOptions {
    fn default() -> Self {
        WriteOptions::STANDARD
    }
}

/// Bytes the data area needs for these variables (each `name=value\0`, then the final NUL).
pub fn encoded_len<'a>(vars: impl Iterator<Item = (&'a str, &'a str)>) -> usize {
    vars.map(|(n, v)| n.len() + 1 + v.len() + 1).sum::<usize>() + 1
}

/// Serialize a whole copy into `block` (all of it is written). Returns the bytes of the data
/// area used (including the final NUL).
pub fn encode_block<'a>(
    vars: &[(&'a str, &'a str)],
    flag: Option<u8>,
    opts: WriteOptions,
    block: &mut [u8],
) -> Result<usize, Error> {
    let layout = if flag.is_some() {
        Layout::Redundant
    } else {
        Layout::Single
    };
    check_len(block.len(), layout)?;
    for (name, value) in vars {
        validate(name, value)?;
    }
    let hl = layout.header_len();
    let needed = encoded_len(vars.iter().copied());
    let available = (block.len() - hl).saturating_sub(opts.spare);
    if needed > available {
        return Err(Error::TooBig { needed, available });
    }
    let mut sorted: Vec<(&str, &str)>;
    let ordered: &[(&str, &str)] = match opts.order {
        Order::Stored => vars,
        Order::Sorted => {
            sorted = vars.to_vec();
            sorted.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            &sorted
        }
    };
    let data = &mut block[hl..];
    let mut p = 0;
    for (name, value) in ordered {
        for part in [name.as_bytes(), b"=", value.as_bytes(), b"\0"] {
            data[p..p + part.len()].copy_from_slice(part);
            p += part.len();
        }
    }
    data[p] = 0;
    p += 1;
    data[p..].fill(opts.pad);
    let crc = crc32fast::hash(data);
    Header { crc, flag }.write(block);
    Ok(p)
}

/// Names must be non-empty without `=` or NUL; values must not contain NUL.
pub fn validate(name: &str, value: &str) -> Result<(), Error> {
    if name.is_empty() || name.bytes().any(|b| b == b'=' || b == 0) {
        return Err(Error::InvalidName {
            name: String::from(name),
        });
    }
    if value.bytes().any(|b| b == 0) {
        return Err(Error::InvalidValue {
            name: String::from(name),
        });
    }
    Ok(())
}
