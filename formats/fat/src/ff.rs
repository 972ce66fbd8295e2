//! FAT volumes that end up byte-for-byte like those of ChaN's FatFs R0.15 in the build fwup
//! 1.16 ships: long names on, OEM code page 850, 512-byte sectors, two FATs, FSInfo kept up to
//! date, and every timestamp fixed at 1980-01-01 00:00.
//!
//! fwup's users compare `mdir` listings (short names with NT lower-case flags, `~1` tails,
//! bytes free, the volume serial) and expect the same cluster layout on every run, so this
//! module follows FatFs's rules for what lands on disk: how `f_mkfs` sizes the volume, how
//! names become 8.3 entries, where new clusters and directory entries are allocated, and what
//! each operation writes. Cluster allocation state (`last_clst`, `free_clst`) lives in the
//! [`Volume`] exactly as long as FatFs keeps a mount, which the caller controls.
//!
//! Spec: FatFs documentation <http://elm-chan.org/fsw/ff/> (f_mkfs, f_open, f_rename,
//! f_setlabel, "Long File Name" and "Numbered SFN" notes) and Microsoft's fatgen103
//! <https://academy.cba.mit.edu/classes/networking_communications/SD/FAT.pdf>.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::io;

/// Sector size: the only one fwup's FatFs build supports.
pub const SS: usize = 512;
const SZDIRE: u32 = 32;
const MAX_DIR: u32 = 0x20_0000;
const MAX_FAT12: u32 = 0xFF5;
const MAX_FAT16: u32 = 0xFFF5;
const MAX_FAT32: u32 = 0x0FFF_FFF5;

const DDEM: u8 = 0xE5;
const RDDEM: u8 = 0x05;
const LLEF: u8 = 0x40;

pub const AM_RDO: u8 = 0x01;
pub const AM_HID: u8 = 0x02;
pub const AM_SYS: u8 = 0x04;
pub const AM_VOL: u8 = 0x08;
const AM_LFN: u8 = 0x0F;
pub const AM_DIR: u8 = 0x10;
pub const AM_ARC: u8 = 0x20;
const AM_MASK: u8 = 0x3F;

const NS_LOSS: u8 = 0x01;
const NS_LFN: u8 = 0x02;
const NS_LAST: u8 = 0x04;
const NS_BODY: u8 = 0x08;
const NS_EXT: u8 = 0x10;
const NS_NOLFN: u8 = 0x40;
const NS_NONAME: u8 = 0x80;

// Directory entry fields (fatgen103 "FAT Directory Structure").
const DIR_ATTR: usize = 11;
const DIR_NTRES: usize = 12;
const DIR_CRT_TIME: usize = 14;
const DIR_LST_ACC_DATE: usize = 18;
const DIR_FST_CLUS_HI: usize = 20;
const DIR_MOD_TIME: usize = 22;
const DIR_FST_CLUS_LO: usize = 26;
const DIR_FILE_SIZE: usize = 28;
const LDIR_CHKSUM: usize = 13;
const LDIR_TYPE: usize = 12;
/// Where the 13 UTF-16 units of a long-name entry sit.
const LFN_OFS: [usize; 13] = [1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30];

/// The FAT timestamp fwup sets before every apply: 1980-01-01 00:00:00 (date 0x0021, time 0).
pub const FWUP_FATTIME: u32 = 0x0021_0000;

/// Sector access to the region holding the volume; `lba` counts 512-byte sectors from the
/// start of the volume.
pub trait BlockDev {
    fn read(&mut self, lba: u64, buf: &mut [u8]) -> io::Result<()>;
    fn write(&mut self, lba: u64, buf: &[u8]) -> io::Result<()>;
}

/// FatFs's result codes, for the ones these operations return.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FResult {
    DiskErr,
    IntErr,
    NoFile,
    NoPath,
    InvalidName,
    Denied,
    Exist,
    NoFilesystem,
    MkfsAborted,
}

impl FResult {
    /// The text fwup prints for each code (src/fatfs.c).
    pub fn message(self) -> &'static str {
        match self {
            FResult::DiskErr => "FATFS: A hard error occurred in the low level disk I/O layer",
            FResult::IntErr => "FATFS: Assertion failed (check for corruption)",
            FResult::NoFile => "FATFS: Could not find the file",
            FResult::NoPath => "FATFS: Could not find the path",
            FResult::InvalidName => "FATFS: The path name format is invalid",
            FResult::Denied => {
                "FATFS: Access denied due to prohibited access or directory full"
            }
            FResult::Exist => "FATFS: Destination file already exists",
            FResult::NoFilesystem => "FATFS: There is no valid FAT volume",
            FResult::MkfsAborted => {
                "FATFS: f_mkfs() aborted due to a parameter error. Try adjusting the partition size."
            }
        }
    }
}

/// A failed operation: the FatFs code, plus the I/O error behind a `DiskErr`.
#[derive(Debug)]
pub struct FfError {
    pub code: FResult,
    pub io: Option<io::Error>,
}

impl fmt::Display for FfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code.message())?;
        if let Some(e) = &self.io {
            write!(f, " ({e})")?;
        }
        Ok(())
    }
}

impl std::error::Error for FfError {}

impl From<FResult> for FfError {
    fn from(code: FResult) -> Self {
        FfError { code, io: None }
    }
}

impl From<io::Error> for FfError {
    fn from(e: io::Error) -> Self {
        FfError {
            code: FResult::DiskErr,
            io: Some(e),
        }
    }
}

pub type Result<T> = std::result::Result<T, FfError>;

fn ld16(b: &[u8], o: usize) -> u32 {
    u16::from_le_bytes([b[o], b[o + 1]]) as u32
}
fn ld32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}
fn st16(b: &mut [u8], o: usize, v: u32) {
    b[o..o + 2].copy_from_slice(&(v as u16).to_le_bytes());
}
fn st32(b: &mut [u8], o: usize, v: u32) {
    b[o..o + 4].copy_from_slice(&v.to_le_bytes());
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsType {
    Fat12,
    Fat16,
    Fat32,
}

// ---- f_mkfs --------------------------------------------------------------------------------

/// Format `sectors` sectors as fwup's `fat_mkfs` does: FatFs `f_mkfs` with FM_SFD | FM_FAT |
/// FM_FAT32, one sector per cluster, two FATs, 512 root entries, no alignment, and the volume
/// serial `sectors + fattime`. Only the boot sector(s), FSInfo, the FATs and the root
/// directory are written; the caller decides what the rest of the region holds.
pub fn mkfs(dev: &mut dyn BlockDev, sectors: u64, fattime: u32) -> Result<FsType> {
    if !(128..1 << 32).contains(&sectors) {
        return Err(FResult::MkfsAborted.into());
    }
    let sz_vol = sectors as u32;
    let n_fat = 2u32;
    let n_root = 512u32;
    let pau = 1u32;
    // FatFs first tries FAT12/16 and switches to FAT32 when there are too many clusters;
    // with a fixed cluster size it cannot retry with a bigger one.
    let mut fsty = FsType::Fat16;
    let (sz_rsv, sz_fat, sz_dir, n_clst) = loop {
        let (sz_rsv, sz_fat, sz_dir);
        if fsty == FsType::Fat32 {
            let n = sz_vol / pau;
            sz_fat = (n * 4 + 8).div_ceil(SS as u32);
            sz_rsv = 32;
            sz_dir = 0;
            if n <= MAX_FAT16 || n > MAX_FAT32 {
                return Err(FResult::MkfsAborted.into());
            }
        } else {
            let n = sz_vol / pau;
            let bytes = if n > MAX_FAT12 {
                n * 2 + 4
            } else {
                fsty = FsType::Fat12;
                (n * 3).div_ceil(2) + 3
            };
            sz_fat = bytes.div_ceil(SS as u32);
            sz_rsv = 1;
            sz_dir = n_root * SZDIRE / SS as u32;
        }
        let b_data = sz_rsv + sz_fat * n_fat + sz_dir;
        if sz_vol < b_data + pau * 16 {
            return Err(FResult::MkfsAborted.into());
        }
        let n_clst = (sz_vol - sz_rsv - sz_fat * n_fat - sz_dir) / pau;
        if fsty == FsType::Fat32 && n_clst <= MAX_FAT16 {
            return Err(FResult::MkfsAborted.into());
        }
        if fsty == FsType::Fat16 {
            if n_clst > MAX_FAT16 {
                fsty = FsType::Fat32;
                continue;
            }
            if n_clst <= MAX_FAT12 {
                return Err(FResult::MkfsAborted.into());
            }
        }
        if fsty == FsType::Fat12 && n_clst > MAX_FAT12 {
            return Err(FResult::MkfsAborted.into());
        }
        break (sz_rsv, sz_fat, sz_dir, n_clst);
    };
    let vsn = sz_vol.wrapping_add(fattime);

    let mut vbr = [0u8; SS];
    vbr[..11].copy_from_slice(b"\xEB\xFE\x90MSDOS5.0");
    st16(&mut vbr, 11, SS as u32);
    vbr[13] = pau as u8;
    st16(&mut vbr, 14, sz_rsv);
    vbr[16] = n_fat as u8;
    st16(&mut vbr, 17, if fsty == FsType::Fat32 { 0 } else { n_root });
    if sz_vol < 0x10000 {
        st16(&mut vbr, 19, sz_vol);
    } else {
        st32(&mut vbr, 32, sz_vol);
    }
    vbr[21] = 0xF8;
    st16(&mut vbr, 24, 63);
    st16(&mut vbr, 26, 255);
    st32(&mut vbr, 28, 0);
    if fsty == FsType::Fat32 {
        st32(&mut vbr, 67, vsn);
        st32(&mut vbr, 36, sz_fat);
        st32(&mut vbr, 44, 2);
        st16(&mut vbr, 48, 1);
        st16(&mut vbr, 50, 6);
        vbr[64] = 0x80;
        vbr[66] = 0x29;
        vbr[71..90].copy_from_slice(b"NO NAME    FAT32   ");
    } else {
        st32(&mut vbr, 39, vsn);
        st16(&mut vbr, 22, sz_fat);
        vbr[36] = 0x80;
        vbr[38] = 0x29;
        // fwup's copy names FAT12/FAT16 (not "FAT     ") because U-Boot needs it.
        vbr[43..62].copy_from_slice(if fsty == FsType::Fat12 {
            b"NO NAME    FAT12   "
        } else {
            b"NO NAME    FAT16   "
        });
    }
    vbr[510] = 0x55;
    vbr[511] = 0xAA;
    dev.write(0, &vbr)?;

    if fsty == FsType::Fat32 {
        dev.write(6, &vbr)?;
        let mut fsi = [0u8; SS];
        st32(&mut fsi, 0, 0x4161_5252);
        st32(&mut fsi, 484, 0x6141_7272);
        st32(&mut fsi, 488, n_clst - 1);
        st32(&mut fsi, 492, 2);
        fsi[510] = 0x55;
        fsi[511] = 0xAA;
        dev.write(7, &fsi)?;
        dev.write(1, &fsi)?;
    }

    // The FATs: the first sector carries the media and end-of-chain marks, the rest is zero.
    const CHUNK: usize = 128;
    let zeros = vec![0u8; SS * CHUNK];
    let mut sect = sz_rsv as u64;
    for _ in 0..n_fat {
        let mut first = [0u8; SS];
        match fsty {
            FsType::Fat32 => {
                st32(&mut first, 0, 0xFFFF_FFF8);
                st32(&mut first, 4, 0xFFFF_FFFF);
                st32(&mut first, 8, 0x0FFF_FFFF);
            }
            FsType::Fat16 => st32(&mut first, 0, 0xFFFF_FFF8),
            FsType::Fat12 => st32(&mut first, 0, 0x00FF_FFF8),
        }
        dev.write(sect, &first)?;
        write_zeros(dev, sect + 1, sz_fat as u64 - 1, &zeros)?;
        sect += sz_fat as u64;
    }
    // The root directory: one cluster on FAT32, the fixed table otherwise.
    let root = if fsty == FsType::Fat32 { pau } else { sz_dir };
    write_zeros(dev, sect, root as u64, &zeros)?;
    Ok(fsty)
}

/// fwup's `fat_mkfs` first fills the region's last sector with 0xff, to check that it exists
/// and to grow an image file to its full size; that sector is part of fwup's output, so every
/// format in this crate writes it too.
pub fn clear_final_sector(dev: &mut dyn BlockDev, sectors: u64) -> io::Result<()> {
    match sectors.checked_sub(1) {
        Some(last) => dev.write(last, &[0xffu8; SS]),
        None => Ok(()),
    }
}

/// Copy a volume label (already upper-case and space-padded) into the boot sector, and on
/// FAT32 its backup, as mkfs.fat does. FatFs's `f_setlabel` (and so fwup's `fat_setlabel`)
/// only writes the root directory entry, which fsck.fat 4.2 reports as a mismatch.
pub fn write_boot_label(dev: &mut dyn BlockDev, label: &[u8; 11]) -> Result<()> {
    let mut b = [0u8; SS];
    dev.read(0, &mut b)?;
    if !is_fat_vbr(&b) {
        return Err(FResult::NoFilesystem.into());
    }
    let fat32 = ld16(&b, 22) == 0;
    let at = if fat32 { 71 } else { 43 };
    b[at..at + 11].copy_from_slice(label);
    dev.write(0, &b)?;
    let backup = ld16(&b, 50) as u64;
    if fat32 && backup != 0 {
        dev.read(backup, &mut b)?;
        b[at..at + 11].copy_from_slice(label);
        dev.write(backup, &b)?;
    }
    Ok(())
}

fn write_zeros(dev: &mut dyn BlockDev, mut lba: u64, mut n: u64, zeros: &[u8]) -> Result<()> {
    let per = (zeros.len() / SS) as u64;
    while n > 0 {
        let k = n.min(per);
        dev.write(lba, &zeros[..k as usize * SS])?;
        lba += k;
        n -= k;
    }
    Ok(())
}

// ---- names ---------------------------------------------------------------------------------

/// Code page 850 bytes 0x80..=0xFF as Unicode (the table FatFs's `ff_oem2uni` uses).
const CP850: [u16; 128] = [
    0x00C7, 0x00FC, 0x00E9, 0x00E2, 0x00E4, 0x00E0, 0x00E5, 0x00E7, 0x00EA, 0x00EB, 0x00E8, 0x00EF,
    0x00EE, 0x00EC, 0x00C4, 0x00C5, 0x00C9, 0x00E6, 0x00C6, 0x00F4, 0x00F6, 0x00F2, 0x00FB, 0x00F9,
    0x00FF, 0x00D6, 0x00DC, 0x00F8, 0x00A3, 0x00D8, 0x00D7, 0x0192, 0x00E1, 0x00ED, 0x00F3, 0x00FA,
    0x00F1, 0x00D1, 0x00AA, 0x00BA, 0x00BF, 0x00AE, 0x00AC, 0x00BD, 0x00BC, 0x00A1, 0x00AB, 0x00BB,
    0x2591, 0x2592, 0x2593, 0x2502, 0x2524, 0x00C1, 0x00C2, 0x00C0, 0x00A9, 0x2563, 0x2551, 0x2557,
    0x255D, 0x00A2, 0x00A5, 0x2510, 0x2514, 0x2534, 0x252C, 0x251C, 0x2500, 0x253C, 0x00E3, 0x00C3,
    0x255A, 0x2554, 0x2569, 0x2566, 0x2560, 0x2550, 0x256C, 0x00A4, 0x00F0, 0x00D0, 0x00CA, 0x00CB,
    0x00C8, 0x0131, 0x00CD, 0x00CE, 0x00CF, 0x2518, 0x250C, 0x2588, 0x2584, 0x00A6, 0x00CC, 0x2580,
    0x00D3, 0x00DF, 0x00D4, 0x00D2, 0x00F5, 0x00D5, 0x00B5, 0x00FE, 0x00DE, 0x00DA, 0x00DB, 0x00D9,
    0x00FD, 0x00DD, 0x00AF, 0x00B4, 0x00AD, 0x00B1, 0x2017, 0x00BE, 0x00B6, 0x00A7, 0x00F7, 0x00B8,
    0x00B0, 0x00A8, 0x00B7, 0x00B9, 0x00B3, 0x00B2, 0x25A0, 0x00A0,
];

/// Upper-case form of each code page 850 byte 0x80..=0xFF, for 8.3 names.
const CP850_UPPER: [u8; 128] = [
    0x80, 0x9A, 0x90, 0xB6, 0x8E, 0xB7, 0x8F, 0x80, 0xD2, 0xD3, 0xD4, 0xD8, 0xD7, 0xDE, 0x8E, 0x8F,
    0x90, 0x92, 0x92, 0xE2, 0x99, 0xE3, 0xEA, 0xEB, 0x98, 0x99, 0x9A, 0x9D, 0x9C, 0x9D, 0x9E, 0x9F,
    0xB5, 0xD6, 0xE0, 0xE9, 0xA5, 0xA5, 0xA6, 0xA7, 0xA8, 0xA9, 0xAA, 0xAB, 0xAC, 0xAD, 0xAE, 0xAF,
    0xB0, 0xB1, 0xB2, 0xB3, 0xB4, 0xB5, 0xB6, 0xB7, 0xB8, 0xB9, 0xBA, 0xBB, 0xBC, 0xBD, 0xBE, 0xBF,
    0xC0, 0xC1, 0xC2, 0xC3, 0xC4, 0xC5, 0xC7, 0xC7, 0xC8, 0xC9, 0xCA, 0xCB, 0xCC, 0xCD, 0xCE, 0xCF,
    0xD1, 0xD1, 0xD2, 0xD3, 0xD4, 0x49, 0xD6, 0xD7, 0xD8, 0xD9, 0xDA, 0xDB, 0xDC, 0xDD, 0xDE, 0xDF,
    0xE0, 0xE1, 0xE2, 0xE3, 0xE5, 0xE5, 0xE6, 0xE8, 0xE8, 0xE9, 0xEA, 0xEB, 0xED, 0xED, 0xEE, 0xEF,
    0xF0, 0xF1, 0xF2, 0xF3, 0xF4, 0xF5, 0xF6, 0xF7, 0xF8, 0xF9, 0xFA, 0xFB, 0xFC, 0xFD, 0xFE, 0xFF,
];

/// Path bytes are code page 850 (FatFs built with FF_LFN_UNICODE = 0), not UTF-8.
fn oem2uni(b: u8) -> u16 {
    if b < 0x80 {
        b as u16
    } else {
        CP850[(b - 0x80) as usize]
    }
}

fn uni2oem(c: u16) -> u16 {
    if c < 0x80 {
        return c;
    }
    CP850
        .iter()
        .position(|&u| u == c)
        .map(|i| 0x80 + i as u16)
        .unwrap_or(0)
}

fn wtoupper(c: u16) -> u16 {
    if c < 0x80 {
        return (c as u8).to_ascii_uppercase() as u16;
    }
    char::from_u32(c as u32)
        .and_then(|ch| {
            let mut up = ch.to_uppercase();
            match (up.next(), up.next()) {
                (Some(u), None) if (u as u32) < 0x10000 => Some(u as u16),
                _ => None,
            }
        })
        .unwrap_or(c)
}

fn is_sep(b: u8) -> bool {
    b == b'/' || b == b'\\'
}

/// One path segment as FatFs's `create_name` sees it: the long name, the 8.3 name in
/// directory form, and the NS_* flags.
#[derive(Clone)]
struct Name {
    lfn: Vec<u16>,
    sfn: [u8; 11],
    flags: u8,
}

/// Parse the next segment of `path` (starting at `*pos`), as FatFs `create_name`.
fn create_name(path: &[u8], pos: &mut usize) -> Result<Name> {
    let mut p = *pos;
    let mut lfn: Vec<u16> = Vec::new();
    let stop;
    loop {
        let c = path.get(p).copied().unwrap_or(0);
        p += 1;
        let wc = oem2uni(c);
        if wc < 0x20 || is_sep(c) {
            stop = wc;
            break;
        }
        if wc < 0x80 && b"*:<>|\"?\x7F".contains(&(wc as u8)) {
            return Err(FResult::InvalidName.into());
        }
        if lfn.len() >= 255 {
            return Err(FResult::InvalidName.into());
        }
        lfn.push(wc);
    }
    let mut cf;
    if stop < 0x20 {
        cf = NS_LAST;
        p -= 1;
    } else {
        while path.get(p).is_some_and(|&b| is_sep(b)) {
            p += 1;
        }
        cf = 0;
        if path.get(p).copied().unwrap_or(0) < 0x20 {
            cf = NS_LAST;
        }
    }
    *pos = p;

    while let Some(&c) = lfn.last() {
        if c != b' ' as u16 && c != b'.' as u16 {
            break;
        }
        lfn.pop();
    }
    if lfn.is_empty() {
        return Err(FResult::InvalidName.into());
    }
    let at = |i: usize| lfn.get(i).copied().unwrap_or(0);
    let mut si = 0usize;
    while at(si) == b' ' as u16 {
        si += 1;
    }
    if si > 0 || at(si) == b'.' as u16 {
        cf |= NS_LOSS | NS_LFN;
    }
    // di: just past the last dot (0 when there is none).
    let mut di = lfn.len();
    while di > 0 && at(di - 1) != b'.' as u16 {
        di -= 1;
    }

    let mut sfn = [b' '; 11];
    let (mut i, mut ni, mut b) = (0usize, 8usize, 0u8);
    loop {
        let mut wc = at(si);
        si += 1;
        if wc == 0 {
            break;
        }
        if wc == b' ' as u16 || (wc == b'.' as u16 && si != di) {
            cf |= NS_LOSS | NS_LFN;
            continue;
        }
        if i >= ni || si == di {
            if ni == 11 {
                cf |= NS_LOSS | NS_LFN;
                break;
            }
            if si != di {
                cf |= NS_LOSS | NS_LFN;
            }
            if si > di {
                break;
            }
            si = di;
            i = 8;
            ni = 11;
            b <<= 2;
            continue;
        }
        if wc >= 0x80 {
            cf |= NS_LFN;
            wc = uni2oem(wc);
            if wc & 0x80 != 0 {
                wc = CP850_UPPER[(wc & 0x7F) as usize] as u16;
            }
        }
        if wc == 0 || b"+,;=[]".contains(&(wc as u8)) && wc < 0x80 {
            wc = b'_' as u16;
            cf |= NS_LOSS | NS_LFN;
        } else if (b'A' as u16..=b'Z' as u16).contains(&wc) {
            b |= 2;
        } else if (b'a' as u16..=b'z' as u16).contains(&wc) {
            b |= 1;
            wc -= 0x20;
        }
        sfn[i] = wc as u8;
        i += 1;
    }
    if sfn[0] == DDEM {
        sfn[0] = RDDEM;
    }
    if ni == 8 {
        b <<= 2;
    }
    if (b & 0x0C) == 0x0C || (b & 0x03) == 0x03 {
        cf |= NS_LFN;
    }
    if cf & NS_LFN == 0 {
        if b & 0x01 != 0 {
            cf |= NS_EXT;
        }
        if b & 0x04 != 0 {
            cf |= NS_BODY;
        }
    }
    Ok(Name {
        lfn,
        sfn,
        flags: cf,
    })
}

/// A numbered short name (`NAME~N`), as FatFs `gen_numname`; past 5 collisions the number
/// becomes a hash of the long name.
fn gen_numname(src: &[u8; 11], lfn: &[u16], seq: u32) -> [u8; 11] {
    let mut dst = *src;
    let mut seq = seq;
    if seq > 5 {
        let mut sreg = seq;
        for &c in lfn {
            let mut wc = c;
            for _ in 0..16 {
                sreg = (sreg << 1) + (wc & 1) as u32;
                wc >>= 1;
                if sreg & 0x10000 != 0 {
                    sreg ^= 0x11021;
                }
            }
        }
        seq = sreg;
    }
    let mut ns = [0u8; 8];
    let mut i = 7usize;
    loop {
        let mut c = (seq % 16) as u8 + b'0';
        seq /= 16;
        if c > b'9' {
            c += 7;
        }
        ns[i] = c;
        i -= 1;
        if i == 0 || seq == 0 {
            break;
        }
    }
    ns[i] = b'~';
    let mut j = 0usize;
    while j < i && dst[j] != b' ' {
        j += 1;
    }
    loop {
        dst[j] = if i < 8 {
            let c = ns[i];
            i += 1;
            c
        } else {
            b' '
        };
        j += 1;
        if j >= 8 {
            break;
        }
    }
    dst
}

fn sum_sfn(sfn: &[u8]) -> u8 {
    sfn[..11]
        .iter()
        .fold(0u8, |s, &c| s.rotate_right(1).wrapping_add(c))
}

fn put_lfn(lfn: &[u16], dir: &mut [u8], ord: u8, sum: u8) {
    dir[LDIR_CHKSUM] = sum;
    dir[DIR_ATTR] = AM_LFN;
    dir[LDIR_TYPE] = 0;
    st16(dir, DIR_FST_CLUS_LO, 0);
    let mut i = (ord as usize - 1) * 13;
    let mut wc: u16 = 0;
    for &o in LFN_OFS.iter() {
        if wc != 0xFFFF {
            wc = lfn.get(i).copied().unwrap_or(0);
            i += 1;
        }
        st16(dir, o, wc as u32);
        if wc == 0 {
            wc = 0xFFFF;
        }
    }
    let mut ord = ord;
    if wc == 0xFFFF || lfn.get(i).copied().unwrap_or(0) == 0 {
        ord |= LLEF;
    }
    dir[0] = ord;
}

fn cmp_lfn(lfn: &[u16], dir: &[u8]) -> bool {
    if ld16(dir, DIR_FST_CLUS_LO) != 0 {
        return false;
    }
    let mut i = ((dir[0] & 0x3F) as usize).wrapping_sub(1).wrapping_mul(13);
    let mut wc: u16 = 1;
    for &o in LFN_OFS.iter() {
        let uc = ld16(dir, o) as u16;
        if wc != 0 {
            if i > 255 || wtoupper(uc) != wtoupper(lfn.get(i).copied().unwrap_or(0)) {
                return false;
            }
            i += 1;
            wc = uc;
        } else if uc != 0xFFFF {
            return false;
        }
    }
    !(dir[0] & LLEF != 0 && wc != 0 && lfn.get(i).copied().unwrap_or(0) != 0)
}

// ---- the mounted volume --------------------------------------------------------------------

/// A directory cursor (FatFs `DIR`): the table's first cluster (0 = root), the byte offset of
/// the current entry, and where that entry is on disk.
#[derive(Clone, Debug, Default)]
struct Dir {
    sclust: u32,
    dptr: u32,
    clust: u32,
    sect: u64,
    /// Offset of the first long-name entry of the found object, if it has one.
    blk_ofs: Option<u32>,
    /// Attribute of the entry the cursor is on.
    attr: u8,
}

/// A mounted FAT volume. The sector window, the FAT cache and the allocation hints are the
/// mount state FatFs keeps; drop the Volume (after [`Volume::sync`]) where fwup unmounts.
pub struct Volume<'d> {
    dev: &'d mut dyn BlockDev,
    pub fs_type: FsType,
    csize: u32,
    n_fats: u32,
    fsize: u32,
    n_rootdir: u32,
    n_fatent: u32,
    fatbase: u64,
    /// Root directory: first sector (FAT12/16) or first cluster (FAT32).
    dirbase: u64,
    database: u64,
    last_clst: u32,
    free_clst: u32,
    fsi_flag: u8,
    fattime: u32,
    /// The one-sector window for directory and FSInfo access.
    win: [u8; SS],
    winsect: u64,
    wflag: bool,
    /// FAT sectors read so far (index from the start of the first FAT), and the dirty ones.
    fat: HashMap<u32, Box<[u8; SS]>>,
    fat_dirty: BTreeSet<u32>,
}

/// The open file (FatFs `FIL`), for fwup's fat_write.
#[derive(Debug, Clone)]
pub struct File {
    sclust: u32,
    objsize: u32,
    fptr: u32,
    clust: u32,
    sect: u64,
    buf: Box<[u8; SS]>,
    dirty: bool,
    modified: bool,
    writable: bool,
    dir_sect: u64,
    dir_ofs: usize,
}

/// Open modes fwup uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// FA_READ | FA_OPEN_EXISTING
    Read,
    /// FA_OPEN_EXISTING (no access; fwup's existence check)
    Existing,
    /// FA_WRITE | FA_CREATE_ALWAYS
    CreateAlways,
    /// FA_WRITE | FA_OPEN_ALWAYS
    WriteOpenAlways,
    /// FA_OPEN_ALWAYS without write access (fat_touch)
    OpenAlways,
}

/// What FatFs remembers about a volume between calls while it stays mounted: the
/// allocation hints and whether FSInfo needs writing. fwup keeps a mount across actions until
/// it unmounts (before on-finish, at the end, after fat_mkfs), so pass this back in to
/// [`Volume::mount`] to allocate exactly where FatFs would.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MountState {
    last_clst: u32,
    free_clst: u32,
    fsi_flag: u8,
}

/// What `stat` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    pub attr: u8,
    pub size: u32,
}

impl<'d> Volume<'d> {
    /// Mount the volume at the start of `dev` (FatFs `mount_volume` for an SFD volume);
    /// `state` continues an earlier mount instead of reading FSInfo again.
    pub fn mount(
        dev: &'d mut dyn BlockDev,
        fattime: u32,
        state: Option<MountState>,
    ) -> Result<Self> {
        let mut b = [0u8; SS];
        dev.read(0, &mut b)?;
        if !is_fat_vbr(&b) {
            // FatFs would also look for partitions behind an MBR here; fwup always points
            // at the volume itself, so anything else is not a FAT volume.
            return Err(FResult::NoFilesystem.into());
        }
        if ld16(&b, 11) != SS as u32 {
            return Err(FResult::NoFilesystem.into());
        }
        let mut fasize = ld16(&b, 22);
        if fasize == 0 {
            fasize = ld32(&b, 36);
        }
        let fsize = fasize;
        let n_fats = b[16] as u32;
        if n_fats != 1 && n_fats != 2 {
            return Err(FResult::NoFilesystem.into());
        }
        let fasize = fasize as u64 * n_fats as u64;
        let csize = b[13] as u32;
        if csize == 0 || !csize.is_power_of_two() {
            return Err(FResult::NoFilesystem.into());
        }
        let n_rootdir = ld16(&b, 17);
        if !n_rootdir.is_multiple_of(SS as u32 / SZDIRE) {
            return Err(FResult::NoFilesystem.into());
        }
        let mut tsect = ld16(&b, 19);
        if tsect == 0 {
            tsect = ld32(&b, 32);
        }
        let nrsv = ld16(&b, 14);
        if nrsv == 0 {
            return Err(FResult::NoFilesystem.into());
        }
        let sysect = nrsv as u64 + fasize + (n_rootdir / (SS as u32 / SZDIRE)) as u64;
        if (tsect as u64) < sysect {
            return Err(FResult::NoFilesystem.into());
        }
        let nclst = ((tsect as u64 - sysect) / csize as u64) as u32;
        if nclst == 0 {
            return Err(FResult::NoFilesystem.into());
        }
        let fs_type = if nclst <= MAX_FAT12 {
            FsType::Fat12
        } else if nclst <= MAX_FAT16 {
            FsType::Fat16
        } else if nclst <= MAX_FAT32 {
            FsType::Fat32
        } else {
            return Err(FResult::NoFilesystem.into());
        };
        let n_fatent = nclst + 2;
        let fatbase = nrsv as u64;
        let database = sysect;
        let (dirbase, szbfat) = if fs_type == FsType::Fat32 {
            if ld16(&b, 42) != 0 || n_rootdir != 0 {
                return Err(FResult::NoFilesystem.into());
            }
            (ld32(&b, 44) as u64, n_fatent as u64 * 4)
        } else {
            if n_rootdir == 0 {
                return Err(FResult::NoFilesystem.into());
            }
            let sz = if fs_type == FsType::Fat16 {
                n_fatent as u64 * 2
            } else {
                n_fatent as u64 * 3 / 2 + (n_fatent & 1) as u64
            };
            (fatbase + fasize, sz)
        };
        if (fsize as u64) < szbfat.div_ceil(SS as u64) {
            return Err(FResult::NoFilesystem.into());
        }
        let mut v = Volume {
            dev,
            fs_type,
            csize,
            n_fats,
            fsize,
            n_rootdir,
            n_fatent,
            fatbase,
            dirbase,
            database,
            last_clst: u32::MAX,
            free_clst: u32::MAX,
            fsi_flag: 0x80,
            fattime,
            win: [0u8; SS],
            winsect: u64::MAX,
            wflag: false,
            fat: HashMap::new(),
            fat_dirty: BTreeSet::new(),
        };
        if let Some(st) = state {
            v.last_clst = st.last_clst;
            v.free_clst = st.free_clst;
            v.fsi_flag = st.fsi_flag;
        } else if fs_type == FsType::Fat32 && ld16(&b, 48) == 1 {
            v.move_window(1)?;
            v.fsi_flag = 0;
            let w = &v.win;
            if w[510] == 0x55
                && w[511] == 0xAA
                && ld32(w, 0) == 0x4161_5252
                && ld32(w, 484) == 0x6141_7272
            {
                v.free_clst = ld32(w, 488);
                v.last_clst = ld32(w, 492);
            }
        }
        Ok(v)
    }

    /// The mount state to carry to the next call (see [`MountState`]).
    pub fn state(&self) -> MountState {
        MountState {
            last_clst: self.last_clst,
            free_clst: self.free_clst,
            fsi_flag: self.fsi_flag,
        }
    }

    // -- sector window and FAT cache --

    fn sync_window(&mut self) -> Result<()> {
        if self.wflag {
            self.dev.write(self.winsect, &self.win)?;
            self.wflag = false;
        }
        Ok(())
    }

    fn move_window(&mut self, sect: u64) -> Result<()> {
        if sect != self.winsect {
            self.sync_window()?;
            if let Err(e) = self.dev.read(sect, &mut self.win) {
                self.winsect = u64::MAX;
                return Err(e.into());
            }
            self.winsect = sect;
        }
        Ok(())
    }

    fn fat_sector(&mut self, idx: u32) -> Result<&mut [u8; SS]> {
        if !self.fat.contains_key(&idx) {
            let mut b = Box::new([0u8; SS]);
            self.dev.read(self.fatbase + idx as u64, &mut b[..])?;
            self.fat.insert(idx, b);
        }
        Ok(self.fat.get_mut(&idx).unwrap())
    }

    /// Write the dirty FAT sectors to every FAT copy.
    fn flush_fat(&mut self) -> Result<()> {
        let dirty = std::mem::take(&mut self.fat_dirty);
        // Runs of consecutive sectors go out in one write.
        let idx: Vec<u32> = dirty.into_iter().collect();
        let mut k = 0;
        while k < idx.len() {
            let mut e = k + 1;
            while e < idx.len() && idx[e] == idx[e - 1] + 1 && e - k < 256 {
                e += 1;
            }
            let mut run = Vec::with_capacity((e - k) * SS);
            for i in &idx[k..e] {
                run.extend_from_slice(&self.fat[i][..]);
            }
            for copy in 0..self.n_fats as u64 {
                self.dev.write(
                    self.fatbase + copy * self.fsize as u64 + idx[k] as u64,
                    &run,
                )?;
            }
            k = e;
        }
        Ok(())
    }

    /// FatFs `sync_fs`: write back the window, the FAT and, on FAT32, the FSInfo sector.
    pub fn sync(&mut self) -> Result<()> {
        self.sync_window()?;
        self.flush_fat()?;
        if self.fs_type == FsType::Fat32 && self.fsi_flag == 1 {
            let mut w = [0u8; SS];
            w[510] = 0x55;
            w[511] = 0xAA;
            st32(&mut w, 0, 0x4161_5252);
            st32(&mut w, 484, 0x6141_7272);
            st32(&mut w, 488, self.free_clst);
            st32(&mut w, 492, self.last_clst);
            self.win = w;
            self.winsect = 1;
            self.dev.write(1, &self.win)?;
            self.fsi_flag = 0;
        }
        Ok(())
    }

    fn clst2sect(&self, clst: u32) -> u64 {
        let c = clst.wrapping_sub(2);
        if c >= self.n_fatent - 2 {
            return 0;
        }
        self.database + self.csize as u64 * c as u64
    }

    /// FAT entry of `clst`: 0 free, 1 internal error, >= n_fatent end of chain.
    fn get_fat(&mut self, clst: u32) -> Result<u32> {
        if clst < 2 || clst >= self.n_fatent {
            return Ok(1);
        }
        Ok(match self.fs_type {
            FsType::Fat12 => {
                let bc = clst + clst / 2;
                let lo = self.fat_sector(bc / SS as u32)?[(bc % SS as u32) as usize] as u32;
                let hi =
                    self.fat_sector((bc + 1) / SS as u32)?[((bc + 1) % SS as u32) as usize] as u32;
                let wc = lo | hi << 8;
                if clst & 1 != 0 {
                    wc >> 4
                } else {
                    wc & 0xFFF
                }
            }
            FsType::Fat16 => {
                let s = self.fat_sector(clst / (SS as u32 / 2))?;
                ld16(&s[..], (clst * 2 % SS as u32) as usize)
            }
            FsType::Fat32 => {
                let s = self.fat_sector(clst / (SS as u32 / 4))?;
                ld32(&s[..], (clst * 4 % SS as u32) as usize) & 0x0FFF_FFFF
            }
        })
    }

    fn put_fat(&mut self, clst: u32, val: u32) -> Result<()> {
        if clst < 2 || clst >= self.n_fatent {
            return Err(FResult::IntErr.into());
        }
        match self.fs_type {
            FsType::Fat12 => {
                let bc = clst + clst / 2;
                let (i0, o0) = (bc / SS as u32, (bc % SS as u32) as usize);
                let s = self.fat_sector(i0)?;
                s[o0] = if clst & 1 != 0 {
                    (s[o0] & 0x0F) | ((val as u8) << 4)
                } else {
                    val as u8
                };
                self.fat_dirty.insert(i0);
                let (i1, o1) = ((bc + 1) / SS as u32, ((bc + 1) % SS as u32) as usize);
                let s = self.fat_sector(i1)?;
                s[o1] = if clst & 1 != 0 {
                    (val >> 4) as u8
                } else {
                    (s[o1] & 0xF0) | ((val >> 8) as u8 & 0x0F)
                };
                self.fat_dirty.insert(i1);
            }
            FsType::Fat16 => {
                let i = clst / (SS as u32 / 2);
                let s = self.fat_sector(i)?;
                st16(&mut s[..], (clst * 2 % SS as u32) as usize, val);
                self.fat_dirty.insert(i);
            }
            FsType::Fat32 => {
                let i = clst / (SS as u32 / 4);
                let s = self.fat_sector(i)?;
                let o = (clst * 4 % SS as u32) as usize;
                let v = (val & 0x0FFF_FFFF) | (ld32(&s[..], o) & 0xF000_0000);
                st32(&mut s[..], o, v);
                self.fat_dirty.insert(i);
            }
        }
        Ok(())
    }

    /// FatFs `remove_chain`: free the chain from `clst`, marking `pclst` (if any) as its end.
    fn remove_chain(&mut self, mut clst: u32, pclst: u32) -> Result<()> {
        if clst < 2 || clst >= self.n_fatent {
            return Err(FResult::IntErr.into());
        }
        if pclst != 0 {
            self.put_fat(pclst, 0xFFFF_FFFF)?;
        }
        loop {
            let nxt = self.get_fat(clst)?;
            if nxt == 0 {
                break;
            }
            if nxt == 1 {
                return Err(FResult::IntErr.into());
            }
            self.put_fat(clst, 0)?;
            if self.free_clst < self.n_fatent - 2 {
                self.free_clst += 1;
                self.fsi_flag |= 1;
            }
            clst = nxt;
            if clst >= self.n_fatent {
                break;
            }
        }
        Ok(())
    }

    /// FatFs `create_chain`: a new chain (`clst` = 0) or the cluster after `clst`, stretching
    /// the chain if it ends there. Ok(0) means the volume is full.
    fn create_chain(&mut self, clst: u32) -> Result<u32> {
        let mut scl;
        if clst == 0 {
            scl = self.last_clst;
            if scl == 0 || scl >= self.n_fatent {
                scl = 1;
            }
        } else {
            let cs = self.get_fat(clst)?;
            if cs < 2 {
                return Err(FResult::IntErr.into());
            }
            if cs < self.n_fatent {
                return Ok(cs);
            }
            scl = clst;
        }
        if self.free_clst == 0 {
            return Ok(0);
        }
        let mut ncl = 0;
        if scl == clst {
            ncl = scl + 1;
            if ncl >= self.n_fatent {
                ncl = 2;
            }
            let cs = self.get_fat(ncl)?;
            if cs == 1 {
                return Err(FResult::IntErr.into());
            }
            if cs != 0 {
                let c = self.last_clst;
                if c >= 2 && c < self.n_fatent {
                    scl = c;
                }
                ncl = 0;
            }
        }
        if ncl == 0 {
            ncl = scl;
            loop {
                ncl += 1;
                if ncl >= self.n_fatent {
                    ncl = 2;
                    if ncl > scl {
                        return Ok(0);
                    }
                }
                let cs = self.get_fat(ncl)?;
                if cs == 0 {
                    break;
                }
                if cs == 1 {
                    return Err(FResult::IntErr.into());
                }
                if ncl == scl {
                    return Ok(0);
                }
            }
        }
        self.put_fat(ncl, 0xFFFF_FFFF)?;
        if clst != 0 {
            self.put_fat(clst, ncl)?;
        }
        self.last_clst = ncl;
        if self.free_clst <= self.n_fatent - 2 {
            self.free_clst -= 1;
        }
        self.fsi_flag |= 1;
        Ok(ncl)
    }

    // -- directories --

    /// FatFs `dir_clear`: zero a new directory cluster; the window ends on its first sector.
    fn dir_clear(&mut self, clst: u32) -> Result<()> {
        self.sync_window()?;
        let sect = self.clst2sect(clst);
        self.winsect = sect;
        self.win = [0u8; SS];
        let zeros = vec![0u8; self.csize as usize * SS];
        self.dev.write(sect, &zeros)?;
        Ok(())
    }

    fn dir_sdi(&mut self, dp: &mut Dir, ofs: u32) -> Result<()> {
        if ofs >= MAX_DIR || !ofs.is_multiple_of(SZDIRE) {
            return Err(FResult::IntErr.into());
        }
        dp.dptr = ofs;
        let mut clst = dp.sclust;
        if clst == 0 && self.fs_type == FsType::Fat32 {
            clst = self.dirbase as u32;
        }
        let mut o = ofs;
        if clst == 0 {
            if ofs / SZDIRE >= self.n_rootdir {
                return Err(FResult::IntErr.into());
            }
            dp.sect = self.dirbase;
        } else {
            let csz = self.csize * SS as u32;
            while o >= csz {
                clst = self.get_fat(clst)?;
                if clst < 2 || clst >= self.n_fatent {
                    return Err(FResult::IntErr.into());
                }
                o -= csz;
            }
            dp.sect = self.clst2sect(clst);
        }
        dp.clust = clst;
        if dp.sect == 0 {
            return Err(FResult::IntErr.into());
        }
        dp.sect += (o / SS as u32) as u64;
        Ok(())
    }

    /// FatFs `dir_next`: Err(NoFile) at the end of the table; with `stretch`, a full
    /// sub-directory grows by a cleared cluster (Err(Denied) when the volume is full).
    fn dir_next(&mut self, dp: &mut Dir, stretch: bool) -> Result<()> {
        let ofs = dp.dptr + SZDIRE;
        if ofs >= MAX_DIR {
            dp.sect = 0;
        }
        if dp.sect == 0 {
            return Err(FResult::NoFile.into());
        }
        if ofs.is_multiple_of(SS as u32) {
            dp.sect += 1;
            if dp.clust == 0 {
                if ofs / SZDIRE >= self.n_rootdir {
                    dp.sect = 0;
                    return Err(FResult::NoFile.into());
                }
            } else if (ofs / SS as u32) & (self.csize - 1) == 0 {
                let mut clst = self.get_fat(dp.clust)?;
                if clst <= 1 {
                    return Err(FResult::IntErr.into());
                }
                if clst >= self.n_fatent {
                    if !stretch {
                        dp.sect = 0;
                        return Err(FResult::NoFile.into());
                    }
                    clst = self.create_chain(dp.clust)?;
                    if clst == 0 {
                        return Err(FResult::Denied.into());
                    }
                    self.dir_clear(clst)?;
                }
                dp.clust = clst;
                dp.sect = self.clst2sect(clst);
            }
        }
        dp.dptr = ofs;
        Ok(())
    }

    fn entry(&self, dp: &Dir) -> &[u8] {
        let o = (dp.dptr % SS as u32) as usize;
        &self.win[o..o + 32]
    }

    fn entry_mut(&mut self, dp: &Dir) -> &mut [u8] {
        let o = (dp.dptr % SS as u32) as usize;
        self.wflag = true;
        &mut self.win[o..o + 32]
    }

    /// FatFs `dir_alloc`: find `n` consecutive free entries; the cursor ends on the last.
    fn dir_alloc(&mut self, dp: &mut Dir, n_ent: u32) -> Result<()> {
        self.dir_sdi(dp, 0)?;
        let mut n = 0;
        loop {
            self.move_window(dp.sect)?;
            let c = self.entry(dp)[0];
            if c == DDEM || c == 0 {
                n += 1;
                if n == n_ent {
                    return Ok(());
                }
            } else {
                n = 0;
            }
            match self.dir_next(dp, true) {
                Ok(()) => {}
                Err(e) if e.code == FResult::NoFile => return Err(FResult::Denied.into()),
                Err(e) => return Err(e),
            }
        }
    }

    fn ld_clust(&self, dir: &[u8]) -> u32 {
        let mut cl = ld16(dir, DIR_FST_CLUS_LO);
        if self.fs_type == FsType::Fat32 {
            cl |= ld16(dir, DIR_FST_CLUS_HI) << 16;
        }
        cl
    }

    fn st_clust(fs_type: FsType, dir: &mut [u8], cl: u32) {
        st16(dir, DIR_FST_CLUS_LO, cl & 0xFFFF);
        if fs_type == FsType::Fat32 {
            st16(dir, DIR_FST_CLUS_HI, cl >> 16);
        }
    }

    /// FatFs `dir_find` for `name` (flags decide LFN and SFN matching).
    fn dir_find(&mut self, dp: &mut Dir, name: &Name) -> Result<()> {
        self.dir_sdi(dp, 0)?;
        let (mut ord, mut sum) = (0xFFu8, 0xFFu8);
        dp.blk_ofs = None;
        loop {
            self.move_window(dp.sect)?;
            let e = self.entry(dp);
            let c = e[0];
            if c == 0 {
                return Err(FResult::NoFile.into());
            }
            let a = e[DIR_ATTR] & AM_MASK;
            dp.attr = a;
            if c == DDEM || (a & AM_VOL != 0 && a != AM_LFN) {
                ord = 0xFF;
                dp.blk_ofs = None;
            } else if a == AM_LFN {
                if name.flags & NS_NOLFN == 0 {
                    let mut c = c;
                    if c & LLEF != 0 {
                        sum = e[LDIR_CHKSUM];
                        c &= !LLEF;
                        ord = c;
                        dp.blk_ofs = Some(dp.dptr);
                    }
                    ord = if c == ord && sum == e[LDIR_CHKSUM] && cmp_lfn(&name.lfn, e) {
                        ord.wrapping_sub(1)
                    } else {
                        0xFF
                    };
                }
            } else {
                if ord == 0 && sum == sum_sfn(e) {
                    return Ok(());
                }
                if name.flags & NS_LOSS == 0 && e[..11] == name.sfn {
                    return Ok(());
                }
                ord = 0xFF;
                dp.blk_ofs = None;
            }
            self.dir_next(dp, false)?;
        }
    }

    /// FatFs `dir_register`: make the entries for `name` (long-name entries if needed, then
    /// the short entry, zeroed but for the name and NT flags). The cursor ends on it.
    fn dir_register(&mut self, dp: &mut Dir, name: &mut Name) -> Result<()> {
        if name.flags & NS_NONAME != 0 {
            return Err(FResult::InvalidName.into());
        }
        let sn = name.sfn;
        let sflags = name.flags;
        if sflags & NS_LOSS != 0 {
            name.flags = NS_NOLFN;
            let mut n = 1;
            while n < 100 {
                name.sfn = gen_numname(&sn, &name.lfn, n);
                match self.dir_find(dp, name) {
                    Ok(()) => {}
                    Err(e) if e.code == FResult::NoFile => break,
                    Err(e) => return Err(e),
                }
                n += 1;
            }
            if n == 100 {
                return Err(FResult::Denied.into());
            }
            name.flags = sflags;
        }
        let len = name.lfn.len() as u32;
        let mut n_ent = if sflags & NS_LFN != 0 {
            len.div_ceil(13) + 1
        } else {
            1
        };
        self.dir_alloc(dp, n_ent)?;
        n_ent -= 1;
        if n_ent > 0 {
            let at = dp.dptr - n_ent * SZDIRE;
            self.dir_sdi(dp, at)?;
            let sum = sum_sfn(&name.sfn);
            while n_ent > 0 {
                self.move_window(dp.sect)?;
                let lfn = name.lfn.clone();
                put_lfn(&lfn, self.entry_mut(dp), n_ent as u8, sum);
                self.dir_next(dp, false)?;
                n_ent -= 1;
            }
        }
        self.move_window(dp.sect)?;
        let sfn = name.sfn;
        let nt = name.flags & (NS_BODY | NS_EXT);
        let e = self.entry_mut(dp);
        e.fill(0);
        e[..11].copy_from_slice(&sfn);
        e[DIR_NTRES] = nt;
        Ok(())
    }

    /// FatFs `dir_remove`: mark the object's entries (long names included) deleted.
    fn dir_remove(&mut self, dp: &mut Dir) -> Result<()> {
        let last = dp.dptr;
        if let Some(b) = dp.blk_ofs {
            self.dir_sdi(dp, b)?;
        }
        loop {
            self.move_window(dp.sect)?;
            self.entry_mut(dp)[0] = DDEM;
            if dp.dptr >= last {
                return Ok(());
            }
            match self.dir_next(dp, false) {
                Ok(()) => {}
                Err(e) if e.code == FResult::NoFile => return Err(FResult::IntErr.into()),
                Err(e) => return Err(e),
            }
        }
    }

    /// FatFs `dir_read` for a file/directory (`vol` false) or the volume label (`vol` true).
    fn dir_read(&mut self, dp: &mut Dir, vol: bool) -> Result<()> {
        while dp.sect != 0 {
            self.move_window(dp.sect)?;
            let e = self.entry(dp);
            let b = e[0];
            if b == 0 {
                dp.sect = 0;
                return Err(FResult::NoFile.into());
            }
            let attr = e[DIR_ATTR] & AM_MASK;
            dp.attr = attr;
            let is_vol = (attr & !AM_ARC) == AM_VOL;
            if !(b == DDEM || b == b'.' || is_vol != vol) && attr != AM_LFN {
                return Ok(());
            }
            if let Err(e) = self.dir_next(dp, false) {
                dp.sect = 0;
                return Err(e);
            }
        }
        Err(FResult::NoFile.into())
    }

    /// FatFs `follow_path`. On success the cursor is on the object (or, with NS_NONAME in
    /// the returned name, on the origin directory). On Err(NoFile) the cursor's table is the
    /// parent and the returned name is what would be created there.
    fn follow_path(&mut self, path: &[u8], dp: &mut Dir) -> (Result<()>, Option<Name>) {
        let mut p = 0;
        while path.get(p).is_some_and(|&b| is_sep(b)) {
            p += 1;
        }
        dp.sclust = 0;
        if path.get(p).copied().unwrap_or(0) < b' ' {
            let r = self.dir_sdi(dp, 0);
            let name = Name {
                lfn: Vec::new(),
                sfn: [b' '; 11],
                flags: NS_NONAME,
            };
            return (r, Some(name));
        }
        loop {
            let name = match create_name(path, &mut p) {
                Ok(n) => n,
                Err(e) => return (Err(e), None),
            };
            let r = self.dir_find(dp, &name);
            let last = name.flags & NS_LAST != 0;
            if let Err(e) = r {
                let e = if e.code == FResult::NoFile && !last {
                    FResult::NoPath.into()
                } else {
                    e
                };
                return (Err(e), Some(name));
            }
            if last {
                return (Ok(()), Some(name));
            }
            if dp.attr & AM_DIR == 0 {
                return (Err(FResult::NoPath.into()), Some(name));
            }
            dp.sclust = self.ld_clust(self.entry(dp));
        }
    }

    // -- operations --

    /// FatFs `f_stat`.
    pub fn stat(&mut self, path: &str) -> Result<Stat> {
        let mut dj = Dir::default();
        let (r, name) = self.follow_path(path.as_bytes(), &mut dj);
        r?;
        if name.is_some_and(|n| n.flags & NS_NONAME != 0) {
            return Err(FResult::InvalidName.into());
        }
        let e = self.entry(&dj);
        Ok(Stat {
            attr: e[DIR_ATTR] & AM_MASK,
            size: ld32(e, DIR_FILE_SIZE),
        })
    }

    /// FatFs `f_open` with the modes fwup uses.
    pub fn open(&mut self, path: &str, mode: OpenMode) -> Result<File> {
        let mut dj = Dir::default();
        let (mut res, name) = self.follow_path(path.as_bytes(), &mut dj);
        if res.is_ok() && name.as_ref().is_some_and(|n| n.flags & NS_NONAME != 0) {
            res = Err(FResult::InvalidName.into());
        }
        let write = matches!(mode, OpenMode::CreateAlways | OpenMode::WriteOpenAlways);
        let creating = matches!(
            mode,
            OpenMode::CreateAlways | OpenMode::WriteOpenAlways | OpenMode::OpenAlways
        );
        let mut create_always = mode == OpenMode::CreateAlways;
        if creating {
            match res {
                Err(e) if e.code == FResult::NoFile => {
                    let mut name = name.expect("a name when the file is missing");
                    self.dir_register(&mut dj, &mut name)?;
                    create_always = true;
                }
                Err(e) => return Err(e),
                Ok(()) => {
                    if dj.attr & (AM_RDO | AM_DIR) != 0 {
                        return Err(FResult::Denied.into());
                    }
                }
            }
            if create_always {
                let tm = self.fattime;
                let fs_type = self.fs_type;
                let e = self.entry_mut(&dj);
                st32(e, DIR_CRT_TIME, tm);
                st32(e, DIR_MOD_TIME, tm);
                let cl = {
                    let mut c = ld16(e, DIR_FST_CLUS_LO);
                    if fs_type == FsType::Fat32 {
                        c |= ld16(e, DIR_FST_CLUS_HI) << 16;
                    }
                    c
                };
                e[DIR_ATTR] = AM_ARC;
                Self::st_clust(fs_type, e, 0);
                st32(e, DIR_FILE_SIZE, 0);
                if cl != 0 {
                    let sc = self.winsect;
                    self.remove_chain(cl, 0)?;
                    self.move_window(sc)?;
                    self.last_clst = cl - 1;
                }
            }
        } else {
            res?;
            if dj.attr & AM_DIR != 0 {
                return Err(FResult::NoFile.into());
            }
            if write && dj.attr & AM_RDO != 0 {
                return Err(FResult::Denied.into());
            }
        }
        let e = self.entry(&dj);
        let sclust = self.ld_clust(e);
        let objsize = ld32(e, DIR_FILE_SIZE);
        Ok(File {
            sclust,
            objsize,
            fptr: 0,
            clust: 0,
            sect: 0,
            buf: Box::new([0u8; SS]),
            dirty: false,
            modified: create_always,
            writable: write,
            dir_sect: self.winsect,
            dir_ofs: (dj.dptr % SS as u32) as usize,
        })
    }

    /// FatFs `f_write`. Returns the bytes written: fewer than asked when the volume fills.
    pub fn write(&mut self, fp: &mut File, mut data: &[u8]) -> Result<usize> {
        if !fp.writable {
            return Err(FResult::Denied.into());
        }
        let mut btw = data.len().min((u32::MAX - fp.fptr) as usize);
        let mut written = 0usize;
        // Whole sectors are collected into runs and written together.
        let mut run: Option<(u64, Vec<u8>)> = None;
        let flush_run = |dev: &mut dyn BlockDev, run: &mut Option<(u64, Vec<u8>)>| {
            if let Some((lba, buf)) = run.take() {
                dev.write(lba, &buf)?;
            }
            Ok::<(), FfError>(())
        };
        while btw > 0 {
            let mut wcnt;
            if (fp.fptr as usize).is_multiple_of(SS) {
                let csect = (fp.fptr / SS as u32) & (self.csize - 1);
                if csect == 0 {
                    let clst = if fp.fptr == 0 {
                        if fp.sclust == 0 {
                            self.create_chain(0)?
                        } else {
                            fp.sclust
                        }
                    } else {
                        self.create_chain(fp.clust)?
                    };
                    if clst == 0 {
                        break;
                    }
                    if clst == 1 {
                        return Err(FResult::IntErr.into());
                    }
                    fp.clust = clst;
                    if fp.sclust == 0 {
                        fp.sclust = clst;
                    }
                }
                if fp.dirty {
                    flush_run(self.dev, &mut run)?;
                    self.dev.write(fp.sect, &fp.buf[..])?;
                    fp.dirty = false;
                }
                let sect = self.clst2sect(fp.clust);
                if sect == 0 {
                    return Err(FResult::IntErr.into());
                }
                let sect = sect + csect as u64;
                let mut cc = (btw / SS) as u32;
                if cc > 0 {
                    if csect + cc > self.csize {
                        cc = self.csize - csect;
                    }
                    let bytes = cc as usize * SS;
                    match &mut run {
                        Some((lba, buf))
                            if *lba + (buf.len() / SS) as u64 == sect && buf.len() < 1 << 20 =>
                        {
                            buf.extend_from_slice(&data[..bytes]);
                        }
                        _ => {
                            flush_run(self.dev, &mut run)?;
                            run = Some((sect, data[..bytes].to_vec()));
                        }
                    }
                    if fp.sect >= sect && fp.sect - sect < cc as u64 {
                        let o = (fp.sect - sect) as usize * SS;
                        fp.buf.copy_from_slice(&data[o..o + SS]);
                        fp.dirty = false;
                    }
                    wcnt = bytes;
                    btw -= wcnt;
                    written += wcnt;
                    data = &data[wcnt..];
                    fp.fptr += wcnt as u32;
                    fp.objsize = fp.objsize.max(fp.fptr);
                    continue;
                }
                if fp.sect != sect && fp.fptr < fp.objsize {
                    flush_run(self.dev, &mut run)?;
                    self.dev.read(sect, &mut fp.buf[..])?;
                }
                fp.sect = sect;
            }
            wcnt = SS - fp.fptr as usize % SS;
            wcnt = wcnt.min(btw);
            let o = fp.fptr as usize % SS;
            fp.buf[o..o + wcnt].copy_from_slice(&data[..wcnt]);
            fp.dirty = true;
            btw -= wcnt;
            written += wcnt;
            data = &data[wcnt..];
            fp.fptr += wcnt as u32;
            fp.objsize = fp.objsize.max(fp.fptr);
        }
        flush_run(self.dev, &mut run)?;
        fp.modified = true;
        Ok(written)
    }

    /// FatFs `f_read`.
    pub fn read(&mut self, fp: &mut File, out: &mut [u8]) -> Result<usize> {
        let remain = fp.objsize.saturating_sub(fp.fptr) as usize;
        let mut btr = out.len().min(remain);
        let mut done = 0usize;
        while btr > 0 {
            if (fp.fptr as usize).is_multiple_of(SS) {
                let csect = (fp.fptr / SS as u32) & (self.csize - 1);
                if csect == 0 {
                    let clst = if fp.fptr == 0 {
                        fp.sclust
                    } else {
                        self.get_fat(fp.clust)?
                    };
                    if clst < 2 || clst >= self.n_fatent {
                        return Err(FResult::IntErr.into());
                    }
                    fp.clust = clst;
                }
                let sect = self.clst2sect(fp.clust);
                if sect == 0 {
                    return Err(FResult::IntErr.into());
                }
                let sect = sect + csect as u64;
                let mut cc = (btr / SS) as u32;
                if cc > 0 {
                    if csect + cc > self.csize {
                        cc = self.csize - csect;
                    }
                    let n = cc as usize * SS;
                    self.dev.read(sect, &mut out[done..done + n])?;
                    if fp.dirty && fp.sect >= sect && fp.sect - sect < cc as u64 {
                        let o = done + (fp.sect - sect) as usize * SS;
                        out[o..o + SS].copy_from_slice(&fp.buf[..]);
                    }
                    done += n;
                    btr -= n;
                    fp.fptr += n as u32;
                    continue;
                }
                if fp.sect != sect {
                    if fp.dirty {
                        self.dev.write(fp.sect, &fp.buf[..])?;
                        fp.dirty = false;
                    }
                    self.dev.read(sect, &mut fp.buf[..])?;
                }
                fp.sect = sect;
            }
            let o = fp.fptr as usize % SS;
            let n = (SS - o).min(btr);
            out[done..done + n].copy_from_slice(&fp.buf[o..o + n]);
            done += n;
            btr -= n;
            fp.fptr += n as u32;
        }
        Ok(done)
    }

    /// FatFs `f_lseek` within the file (fwup only seeks inside it or to its end).
    pub fn seek(&mut self, fp: &mut File, ofs: u32) -> Result<()> {
        let ofs = ofs.min(fp.objsize);
        let bcs = self.csize * SS as u32;
        fp.fptr = 0;
        let mut nsect = 0u64;
        if ofs > 0 {
            let mut clst = fp.sclust;
            if clst == 0 {
                return Err(FResult::IntErr.into());
            }
            let mut o = ofs;
            fp.clust = clst;
            while o > bcs {
                o -= bcs;
                fp.fptr += bcs;
                clst = self.get_fat(clst)?;
                if clst <= 1 || clst >= self.n_fatent {
                    return Err(FResult::IntErr.into());
                }
                fp.clust = clst;
            }
            fp.fptr += o;
            if !(o as usize).is_multiple_of(SS) {
                nsect = self.clst2sect(clst) + (o / SS as u32) as u64;
            }
        }
        if !(fp.fptr as usize).is_multiple_of(SS) && nsect != fp.sect {
            if fp.dirty {
                self.dev.write(fp.sect, &fp.buf[..])?;
                fp.dirty = false;
            }
            self.dev.read(nsect, &mut fp.buf[..])?;
            fp.sect = nsect;
        }
        Ok(())
    }

    pub fn size(fp: &File) -> u32 {
        fp.objsize
    }

    pub fn tell(fp: &File) -> u32 {
        fp.fptr
    }

    /// FatFs `f_truncate`: cut the file at its current position.
    pub fn truncate(&mut self, fp: &mut File) -> Result<()> {
        if !fp.writable {
            return Err(FResult::Denied.into());
        }
        if fp.fptr < fp.objsize {
            if fp.fptr == 0 {
                self.remove_chain(fp.sclust, 0)?;
                fp.sclust = 0;
            } else {
                let ncl = self.get_fat(fp.clust)?;
                if ncl == 1 {
                    return Err(FResult::IntErr.into());
                }
                if ncl < self.n_fatent {
                    self.remove_chain(ncl, fp.clust)?;
                }
            }
            fp.objsize = fp.fptr;
            fp.modified = true;
            if fp.dirty {
                self.dev.write(fp.sect, &fp.buf[..])?;
                fp.dirty = false;
            }
        }
        Ok(())
    }

    /// FatFs `f_sync`: write the cached sector and update the directory entry.
    pub fn sync_file(&mut self, fp: &mut File) -> Result<()> {
        if fp.modified {
            if fp.dirty {
                self.dev.write(fp.sect, &fp.buf[..])?;
                fp.dirty = false;
            }
            let tm = self.fattime;
            self.move_window(fp.dir_sect)?;
            let fs_type = self.fs_type;
            self.wflag = true;
            let e = &mut self.win[fp.dir_ofs..fp.dir_ofs + 32];
            e[DIR_ATTR] |= AM_ARC;
            Self::st_clust(fs_type, e, fp.sclust);
            st32(e, DIR_FILE_SIZE, fp.objsize);
            st32(e, DIR_MOD_TIME, tm);
            st16(e, DIR_LST_ACC_DATE, 0);
            self.sync()?;
            fp.modified = false;
        }
        Ok(())
    }

    /// FatFs `f_unlink`: remove a file or an empty directory.
    pub fn unlink(&mut self, path: &str) -> Result<()> {
        let mut dj = Dir::default();
        let (r, name) = self.follow_path(path.as_bytes(), &mut dj);
        r?;
        if name.is_some_and(|n| n.flags & NS_NONAME != 0) {
            return Err(FResult::InvalidName.into());
        }
        if dj.attr & AM_RDO != 0 {
            return Err(FResult::Denied.into());
        }
        let dclst = self.ld_clust(self.entry(&dj));
        if dj.attr & AM_DIR != 0 {
            let mut sdj = Dir {
                sclust: dclst,
                ..Default::default()
            };
            self.dir_sdi(&mut sdj, 0)?;
            match self.dir_read(&mut sdj, false) {
                Ok(()) => return Err(FResult::Denied.into()),
                Err(e) if e.code == FResult::NoFile => {}
                Err(e) => return Err(e),
            }
            // dir_read moved the window; bring the entry back.
        }
        self.dir_remove(&mut dj)?;
        if dclst != 0 {
            self.remove_chain(dclst, 0)?;
        }
        self.sync()
    }

    /// FatFs `f_mkdir`.
    pub fn mkdir(&mut self, path: &str) -> Result<()> {
        let mut dj = Dir::default();
        let (r, name) = self.follow_path(path.as_bytes(), &mut dj);
        match r {
            Ok(()) => return Err(FResult::Exist.into()),
            Err(e) if e.code == FResult::NoFile => {}
            Err(e) => return Err(e),
        }
        let mut name = name.expect("a name when the directory is missing");
        let dcl = self.create_chain(0)?;
        if dcl == 0 {
            return Err(FResult::Denied.into());
        }
        let tm = self.fattime;
        let fs_type = self.fs_type;
        self.dir_clear(dcl)?;
        {
            let w = &mut self.win;
            w[..11].fill(b' ');
            w[0] = b'.';
            w[DIR_ATTR] = AM_DIR;
            st32(w, DIR_MOD_TIME, tm);
            Self::st_clust(fs_type, &mut w[..32], dcl);
            let (dot, rest) = w.split_at_mut(32);
            rest[..32].copy_from_slice(dot);
            rest[1] = b'.';
            Self::st_clust(fs_type, &mut rest[..32], dj.sclust);
            self.wflag = true;
        }
        if let Err(e) = self.dir_register(&mut dj, &mut name) {
            let _ = self.remove_chain(dcl, 0);
            return Err(e);
        }
        let e = self.entry_mut(&dj);
        st32(e, DIR_MOD_TIME, tm);
        Self::st_clust(fs_type, e, dcl);
        e[DIR_ATTR] = AM_DIR;
        self.sync()
    }

    /// FatFs `f_rename`: rename or move a file or directory; the target must not exist.
    pub fn rename(&mut self, from: &str, to: &str) -> Result<()> {
        let mut djo = Dir::default();
        let (r, name) = self.follow_path(from.as_bytes(), &mut djo);
        r?;
        if name.is_some_and(|n| n.flags & NS_NONAME != 0) {
            return Err(FResult::InvalidName.into());
        }
        let saved: Vec<u8> = self.entry(&djo).to_vec();
        let mut djn = djo.clone();
        let (r, name) = self.follow_path(to.as_bytes(), &mut djn);
        let r = match r {
            Ok(()) => {
                if djn.sclust == djo.sclust && djn.dptr == djo.dptr {
                    Err(FResult::NoFile.into())
                } else {
                    Err(FResult::Exist.into())
                }
            }
            Err(e) => Err(e),
        };
        match r {
            Err(e) if e.code == FResult::NoFile => {}
            Err(e) => return Err(e),
            Ok(()) => unreachable!(),
        }
        let mut name = name.ok_or(FResult::InvalidName)?;
        self.dir_register(&mut djn, &mut name)?;
        let fs_type = self.fs_type;
        let new_sclust = djn.sclust;
        let e = self.entry_mut(&djn);
        e[13..].copy_from_slice(&saved[13..]);
        e[DIR_ATTR] = saved[DIR_ATTR];
        if e[DIR_ATTR] & AM_DIR == 0 {
            e[DIR_ATTR] |= AM_ARC;
        }
        let is_dir = e[DIR_ATTR] & AM_DIR != 0;
        if is_dir && djo.sclust != new_sclust {
            let cl = {
                let e = self.entry(&djn);
                self.ld_clust(e)
            };
            let sect = self.clst2sect(cl);
            if sect == 0 {
                return Err(FResult::IntErr.into());
            }
            self.move_window(sect)?;
            if self.win[32 + 1] == b'.' {
                Self::st_clust(fs_type, &mut self.win[32..64], new_sclust);
                self.wflag = true;
            }
        }
        // The old entry's position is unchanged by registering the new one.
        let mut djo2 = djo.clone();
        self.dir_sdi(&mut djo2, djo.dptr)?;
        djo2.blk_ofs = djo.blk_ofs;
        self.dir_remove(&mut djo2)?;
        self.sync()
    }

    /// FatFs `f_chmod`: set the bits of `mask` (R, H, S, A) to those of `attr`.
    pub fn chmod(&mut self, path: &str, attr: u8, mask: u8) -> Result<()> {
        let mut dj = Dir::default();
        let (r, name) = self.follow_path(path.as_bytes(), &mut dj);
        r?;
        if name.is_some_and(|n| n.flags & NS_NONAME != 0) {
            return Err(FResult::InvalidName.into());
        }
        let mask = mask & (AM_RDO | AM_HID | AM_SYS | AM_ARC);
        let e = self.entry_mut(&dj);
        e[DIR_ATTR] = (attr & mask) | (e[DIR_ATTR] & !mask);
        self.sync()
    }

    /// FatFs `f_setlabel`: the root directory's label entry only (the boot sector keeps
    /// "NO NAME"). An empty label removes the entry.
    pub fn setlabel(&mut self, label: &str) -> Result<()> {
        const BAD: &[u8] = b"+.,;=[]/*:<>|\\\"?\x7F";
        let mut dirvn = [b' '; 11];
        let mut di = 0usize;
        for &c in label.as_bytes() {
            if c < b' ' {
                break;
            }
            let wc = uni2oem(wtoupper(oem2uni(c)));
            if wc == 0 || (wc < 0x80 && BAD.contains(&(wc as u8))) || di >= 11 {
                return Err(FResult::InvalidName.into());
            }
            dirvn[di] = wc as u8;
            di += 1;
        }
        if dirvn[0] == DDEM {
            return Err(FResult::InvalidName.into());
        }
        while di > 0 && dirvn[di - 1] == b' ' {
            di -= 1;
        }
        let mut dj = Dir::default();
        self.dir_sdi(&mut dj, 0)?;
        match self.dir_read(&mut dj, true) {
            Ok(()) => {
                let e = self.entry_mut(&dj);
                if di != 0 {
                    e[..11].copy_from_slice(&dirvn);
                } else {
                    e[0] = DDEM;
                }
                self.sync()
            }
            Err(e) if e.code == FResult::NoFile => {
                if di != 0 {
                    self.dir_alloc(&mut dj, 1)?;
                    let e = self.entry_mut(&dj);
                    e.fill(0);
                    e[DIR_ATTR] = AM_VOL;
                    e[..11].copy_from_slice(&dirvn);
                    self.sync()?;
                }
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Free clusters, counted from the FAT (the tests compare it with fwup's `mdir` totals).
    #[cfg(test)]
    fn free_clusters(&mut self) -> Result<u32> {
        let mut n = 0;
        for c in 2..self.n_fatent {
            if self.get_fat(c)? == 0 {
                n += 1;
            }
        }
        Ok(n)
    }
}

/// FatFs `check_fs`: is this sector a FAT boot sector?
fn is_fat_vbr(b: &[u8; SS]) -> bool {
    let sign = ld16(b, 510);
    let j = b[0];
    if j != 0xEB && j != 0xE9 && j != 0xE8 {
        return false;
    }
    if sign == 0xAA55 && &b[82..90] == b"FAT32   " {
        return true;
    }
    let w = ld16(b, 11);
    let spc = b[13];
    w.is_power_of_two()
        && w == SS as u32
        && spc != 0
        && spc.is_power_of_two()
        && ld16(b, 14) != 0
        && (b[16] as u32).wrapping_sub(1) <= 1
        && ld16(b, 17) != 0
        && (ld16(b, 19) >= 128 || ld32(b, 32) >= 0x10000)
        && ld16(b, 22) != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Mem(Vec<u8>);
    impl BlockDev for Mem {
        fn read(&mut self, lba: u64, buf: &mut [u8]) -> io::Result<()> {
            let o = lba as usize * SS;
            if o + buf.len() > self.0.len() {
                return Err(io::Error::other("read past the end"));
            }
            buf.copy_from_slice(&self.0[o..o + buf.len()]);
            Ok(())
        }
        fn write(&mut self, lba: u64, buf: &[u8]) -> io::Result<()> {
            let o = lba as usize * SS;
            if o + buf.len() > self.0.len() {
                return Err(io::Error::other("write past the end"));
            }
            self.0[o..o + buf.len()].copy_from_slice(buf);
            Ok(())
        }
    }

    fn name(s: &str) -> Name {
        let mut p = 0;
        create_name(s.as_bytes(), &mut p).unwrap()
    }

    #[test]
    fn short_names_and_case_flags() {
        let n = name("1k-new.bin");
        assert_eq!(&n.sfn, b"1K-NEW  BIN");
        assert_eq!(n.flags & (NS_LFN | NS_LOSS), 0);
        assert_eq!(n.flags & (NS_BODY | NS_EXT), NS_BODY | NS_EXT);
        let n = name("test_dir");
        assert_eq!(&n.sfn, b"TEST_DIR   ");
        assert_eq!(n.flags & (NS_BODY | NS_EXT | NS_LFN), NS_BODY);
        let n = name("areallylongfilenamedir");
        assert_eq!(&n.sfn, b"AREALLYL   ");
        assert_ne!(n.flags & NS_LOSS, 0);
        assert_eq!(&gen_numname(&n.sfn, &n.lfn, 1), b"AREALL~1   ");
        let n = name("Mixed.txt");
        assert_ne!(n.flags & NS_LFN, 0);
        assert_eq!(n.flags & NS_LOSS, 0);
        let n = name("u-boot.img");
        assert_eq!(&n.sfn, b"U-BOOT  IMG");
        let n = name("a.b.c");
        assert_eq!(&n.sfn, b"AB      C  ");
        assert_ne!(n.flags & NS_LOSS, 0);
        let mut p = 0;
        assert!(create_name(b"bad*name", &mut p).is_err());
    }

    #[test]
    fn mkfs_geometry_matches_fwup() {
        // fwup's tests: 77238 sectors → FAT32, serial 0022-2DB6, 38,910,464 bytes free.
        let mut d = Mem(vec![0u8; 77238 * SS]);
        assert_eq!(mkfs(&mut d, 77238, FWUP_FATTIME).unwrap(), FsType::Fat32);
        assert_eq!(ld32(&d.0, 67), 0x0022_2DB6);
        let mut v = Volume::mount(&mut d, FWUP_FATTIME, None).unwrap();
        assert_eq!(v.free_clusters().unwrap() as u64 * 512, 38_910_464);
        let mut d = Mem(vec![0u8; 2000 * SS]);
        assert_eq!(mkfs(&mut d, 2000, FWUP_FATTIME).unwrap(), FsType::Fat12);
        // Between FAT12 and FAT16 with one-sector clusters: FatFs gives up.
        let mut d = Mem(vec![0u8; 4096 * SS]);
        assert_eq!(
            mkfs(&mut d, 4096, FWUP_FATTIME).unwrap_err().code,
            FResult::MkfsAborted
        );
        let mut d = Mem(vec![0u8; 32705 * SS]);
        assert_eq!(mkfs(&mut d, 32705, FWUP_FATTIME).unwrap(), FsType::Fat16);
        let mut d = Mem(vec![0u8; 100 * SS]);
        assert_eq!(
            mkfs(&mut d, 100, FWUP_FATTIME).unwrap_err().code,
            FResult::MkfsAborted
        );
    }

    #[test]
    fn files_dirs_rename_and_label() {
        let mut d = Mem(vec![0u8; 77238 * SS]);
        mkfs(&mut d, 77238, FWUP_FATTIME).unwrap();
        let mut v = Volume::mount(&mut d, FWUP_FATTIME, None).unwrap();
        let data: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
        let mut f = v.open("dir-less.bin", OpenMode::CreateAlways).unwrap();
        assert_eq!(v.write(&mut f, &data[..700]).unwrap(), 700);
        v.sync_file(&mut f).unwrap();
        assert_eq!(v.write(&mut f, &data[700..]).unwrap(), 4300);
        v.sync_file(&mut f).unwrap();
        let mut r = v.open("DIR-LESS.BIN", OpenMode::Read).unwrap();
        let mut back = vec![0u8; 6000];
        assert_eq!(v.read(&mut r, &mut back).unwrap(), 5000);
        assert_eq!(&back[..5000], &data[..]);
        v.mkdir("sub").unwrap();
        assert_eq!(v.mkdir("sub").unwrap_err().code, FResult::Exist);
        v.rename("dir-less.bin", "sub/moved.bin").unwrap();
        assert_eq!(v.stat("sub/moved.bin").unwrap().size, 5000);
        assert_eq!(v.stat("dir-less.bin").unwrap_err().code, FResult::NoFile);
        assert_eq!(v.stat("nodir/x").unwrap_err().code, FResult::NoPath);
        assert_eq!(v.unlink("sub").unwrap_err().code, FResult::Denied);
        v.unlink("sub/moved.bin").unwrap();
        v.unlink("sub").unwrap();
        v.setlabel("fwup").unwrap();
        assert_eq!(
            v.setlabel("waytoolonglabel").unwrap_err().code,
            FResult::InvalidName
        );
        let free = v.free_clusters().unwrap();
        assert_eq!(free, 77238 - 32 - 2 * 604 - 1);
        drop(v);
        assert_eq!(ld32(&d.0, 512 + 488), 77238 - 32 - 2 * 604 - 1);
    }
}
