//! f2fs on-disk structures: every field at its place, little-endian. Each struct parses from and
//! serializes to bytes through the same field list, so a round trip is exact.
//!
//! Spec: <https://www.kernel.org/doc/html/latest/filesystems/f2fs.html> (layout overview) and the
//! struct definitions in f2fs-tools `include/f2fs_fs.h`
//! (<https://git.kernel.org/pub/scm/linux/kernel/git/jaegeuk/f2fs-tools.git/tree/include/f2fs_fs.h>),
//! which the kernel's `include/linux/f2fs_fs.h` mirrors.

pub const MAGIC: u32 = 0xF2F5_2010;
pub const MAJOR_VERSION: u16 = 1;
pub const MINOR_VERSION: u16 = 15;
pub const BLOCK_SIZE: usize = 4096;
pub const LOG_BLOCK_SIZE: u32 = 12;
pub const BLOCKS_PER_SEG: u32 = 512;
pub const LOG_BLOCKS_PER_SEG: u32 = 9;
/// Byte offset of the superblock inside each of the first two blocks.
pub const SUPER_OFFSET: usize = 1024;
pub const SUPER_SIZE: usize = 3072;
/// Where the superblock CRC sits when the sb_checksum feature is on.
pub const SB_CHKSUM_OFFSET: u32 = 3068;
pub const CP_CHKSUM_OFFSET: u32 = 4092;
/// Size of the fixed checkpoint header; the SIT/NAT version bitmaps follow it.
pub const CP_BITMAP_OFFSET: usize = 192;
pub const MAX_VOLUME_NAME: usize = 512;
pub const MAX_EXTENSION: usize = 64;
pub const EXTENSION_LEN: usize = 8;
pub const VERSION_LEN: usize = 256;
pub const MAX_DEVICES: usize = 8;
pub const DEVICE_PATH_LEN: usize = 64;
pub const MAX_QUOTAS: usize = 3;
pub const MAX_ACTIVE_NODE_LOGS: usize = 8;
pub const MAX_ACTIVE_DATA_LOGS: usize = 8;
pub const MAX_ACTIVE_LOGS: usize = 16;

pub const FEATURE_SB_CHKSUM: u32 = 0x0800;

pub const CP_UMOUNT_FLAG: u32 = 0x0001;
pub const CP_COMPACT_SUM_FLAG: u32 = 0x0004;
pub const CP_NAT_BITS_FLAG: u32 = 0x0080;
pub const CP_TRIMMED_FLAG: u32 = 0x0100;

/// Current-segment types, in the kernel's order (also the SIT entry's type field).
pub const CURSEG_HOT_DATA: u16 = 0;
pub const CURSEG_WARM_DATA: u16 = 1;
pub const CURSEG_COLD_DATA: u16 = 2;
pub const CURSEG_HOT_NODE: u16 = 3;
pub const CURSEG_WARM_NODE: u16 = 4;
pub const CURSEG_COLD_NODE: u16 = 5;
pub const NR_CURSEG_TYPE: u32 = 6;

pub const NAT_ENTRY_SIZE: usize = 9;
pub const NAT_ENTRY_PER_BLOCK: usize = BLOCK_SIZE / NAT_ENTRY_SIZE; // 455
pub const SIT_ENTRY_SIZE: usize = 74;
pub const SIT_ENTRY_PER_BLOCK: usize = BLOCK_SIZE / SIT_ENTRY_SIZE; // 55
pub const SIT_VBLOCK_MAP_SIZE: usize = 64;
pub const SIT_VBLOCKS_SHIFT: u16 = 10;

pub const SUMMARY_SIZE: usize = 7;
pub const ENTRIES_IN_SUM: usize = 512;
pub const SUM_FOOTER_SIZE: usize = 5;
/// The journal between the summary entries and the footer: 2-byte count + 505 bytes.
pub const SUM_JOURNAL_SIZE: usize = BLOCK_SIZE - SUM_FOOTER_SIZE - SUMMARY_SIZE * ENTRIES_IN_SUM;
pub const NAT_JOURNAL_ENTRY_SIZE: usize = 13;
pub const SIT_JOURNAL_ENTRY_SIZE: usize = 78;
pub const NAT_JOURNAL_ENTRIES: usize = (SUM_JOURNAL_SIZE - 2) / NAT_JOURNAL_ENTRY_SIZE; // 38
pub const SIT_JOURNAL_ENTRIES: usize = (SUM_JOURNAL_SIZE - 2) / SIT_JOURNAL_ENTRY_SIZE; // 6
pub const SUM_TYPE_DATA: u8 = 0;
pub const SUM_TYPE_NODE: u8 = 1;

pub const ADDRS_PER_INODE: usize = 923;
pub const NIDS_PER_INODE: usize = 5;
pub const NAME_LEN: usize = 255;
pub const NODE_FOOTER_SIZE: usize = 24;

pub const NR_DENTRY_IN_BLOCK: usize = 214;
pub const SLOT_LEN: usize = 8;
pub const DIR_ENTRY_SIZE: usize = 11;
pub const DENTRY_BITMAP_SIZE: usize = NR_DENTRY_IN_BLOCK.div_ceil(8); // 27
pub const DENTRY_RESERVED_SIZE: usize =
    BLOCK_SIZE - ((DIR_ENTRY_SIZE + SLOT_LEN) * NR_DENTRY_IN_BLOCK + DENTRY_BITMAP_SIZE); // 3
pub const FT_REG_FILE: u8 = 1;
pub const FT_DIR: u8 = 2;
pub const FT_SYMLINK: u8 = 7;

/// f2fs's CRC32: the reflected 0xEDB88320 polynomial, seeded with the caller's value and with no
/// final inversion (f2fs seeds with [`MAGIC`]). crc32fast inverts on the way in and out, so the
/// seed and the result are inverted around it.
pub fn crc32(seed: u32, data: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new_with_initial(!seed);
    h.update(data);
    !h.finalize()
}

/// Little-endian reader over a byte slice; callers size the slice, so reads never run short.
pub struct Rd<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Rd<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Rd { buf, pos: 0 }
    }
    pub fn bytes<const N: usize>(&mut self) -> [u8; N] {
        let mut a = [0u8; N];
        a.copy_from_slice(&self.buf[self.pos..self.pos + N]);
        self.pos += N;
        a
    }
    pub fn u8(&mut self) -> u8 {
        self.bytes::<1>()[0]
    }
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.bytes())
    }
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.bytes())
    }
    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.bytes())
    }
    pub fn vec(&mut self, n: usize) -> Vec<u8> {
        let v = self.buf[self.pos..self.pos + n].to_vec();
        self.pos += n;
        v
    }
    pub fn pos(&self) -> usize {
        self.pos
    }
}

/// Little-endian writer into a byte slice.
pub struct Wr<'a> {
    buf: &'a mut [u8],
    pos: usize,
}

impl<'a> Wr<'a> {
    pub fn new(buf: &'a mut [u8]) -> Self {
        Wr { buf, pos: 0 }
    }
    pub fn put(&mut self, b: &[u8]) {
        self.buf[self.pos..self.pos + b.len()].copy_from_slice(b);
        self.pos += b.len();
    }
    pub fn u8(&mut self, v: u8) {
        self.put(&[v]);
    }
    pub fn u16(&mut self, v: u16) {
        self.put(&v.to_le_bytes());
    }
    pub fn u32(&mut self, v: u32) {
        self.put(&v.to_le_bytes());
    }
    pub fn u64(&mut self, v: u64) {
        self.put(&v.to_le_bytes());
    }
    pub fn pos(&self) -> usize {
        self.pos
    }
}

/// One entry of the superblock's multi-device list (unused for a single device: all zero).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Device {
    pub path: [u8; DEVICE_PATH_LEN],
    pub total_segments: u32,
}

/// `struct f2fs_super_block`: 3072 bytes at byte 1024 of blocks 0 and 1.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Superblock {
    pub magic: u32,
    pub major_ver: u16,
    pub minor_ver: u16,
    pub log_sectorsize: u32,
    pub log_sectors_per_block: u32,
    pub log_blocksize: u32,
    pub log_blocks_per_seg: u32,
    pub segs_per_sec: u32,
    pub secs_per_zone: u32,
    pub checksum_offset: u32,
    pub block_count: u64,
    pub section_count: u32,
    pub segment_count: u32,
    pub segment_count_ckpt: u32,
    pub segment_count_sit: u32,
    pub segment_count_nat: u32,
    pub segment_count_ssa: u32,
    pub segment_count_main: u32,
    pub segment0_blkaddr: u32,
    pub cp_blkaddr: u32,
    pub sit_blkaddr: u32,
    pub nat_blkaddr: u32,
    pub ssa_blkaddr: u32,
    pub main_blkaddr: u32,
    pub root_ino: u32,
    pub node_ino: u32,
    pub meta_ino: u32,
    pub uuid: [u8; 16],
    /// UTF-16LE, zero padded.
    pub volume_name: [u16; MAX_VOLUME_NAME],
    pub extension_count: u32,
    pub extension_list: [[u8; EXTENSION_LEN]; MAX_EXTENSION],
    pub cp_payload: u32,
    pub version: [u8; VERSION_LEN],
    pub init_version: [u8; VERSION_LEN],
    pub feature: u32,
    pub encryption_level: u8,
    pub encrypt_pw_salt: [u8; 16],
    pub devs: [Device; MAX_DEVICES],
    pub qf_ino: [u32; MAX_QUOTAS],
    pub hot_ext_count: u8,
    pub s_encoding: u16,
    pub s_encoding_flags: u16,
    pub reserved: [u8; 306],
    pub crc: u32,
}

impl Default for Superblock {
    fn default() -> Self {
        Superblock::parse(&[0u8; SUPER_SIZE])
    }
}

impl Superblock {
    /// Parse the 3072 bytes of a superblock (no validation: see [`Superblock::check`]).
    pub fn parse(b: &[u8]) -> Self {
        assert!(b.len() >= SUPER_SIZE);
        let mut r = Rd::new(&b[..SUPER_SIZE]);
        let mut sb = Superblock {
            magic: r.u32(),
            major_ver: r.u16(),
            minor_ver: r.u16(),
            log_sectorsize: r.u32(),
            log_sectors_per_block: r.u32(),
            log_blocksize: r.u32(),
            log_blocks_per_seg: r.u32(),
            segs_per_sec: r.u32(),
            secs_per_zone: r.u32(),
            checksum_offset: r.u32(),
            block_count: r.u64(),
            section_count: r.u32(),
            segment_count: r.u32(),
            segment_count_ckpt: r.u32(),
            segment_count_sit: r.u32(),
            segment_count_nat: r.u32(),
            segment_count_ssa: r.u32(),
            segment_count_main: r.u32(),
            segment0_blkaddr: r.u32(),
            cp_blkaddr: r.u32(),
            sit_blkaddr: r.u32(),
            nat_blkaddr: r.u32(),
            ssa_blkaddr: r.u32(),
            main_blkaddr: r.u32(),
            root_ino: r.u32(),
            node_ino: r.u32(),
            meta_ino: r.u32(),
            uuid: r.bytes(),
            volume_name: [0; MAX_VOLUME_NAME],
            extension_count: 0,
            extension_list: [[0; EXTENSION_LEN]; MAX_EXTENSION],
            cp_payload: 0,
            version: [0; VERSION_LEN],
            init_version: [0; VERSION_LEN],
            feature: 0,
            encryption_level: 0,
            encrypt_pw_salt: [0; 16],
            devs: std::array::from_fn(|_| Device {
                path: [0; DEVICE_PATH_LEN],
                total_segments: 0,
            }),
            qf_ino: [0; MAX_QUOTAS],
            hot_ext_count: 0,
            s_encoding: 0,
            s_encoding_flags: 0,
            reserved: [0; 306],
            crc: 0,
        };
        for c in sb.volume_name.iter_mut() {
            *c = r.u16();
        }
        sb.extension_count = r.u32();
        for e in sb.extension_list.iter_mut() {
            *e = r.bytes();
        }
        sb.cp_payload = r.u32();
        sb.version = r.bytes();
        sb.init_version = r.bytes();
        sb.feature = r.u32();
        sb.encryption_level = r.u8();
        sb.encrypt_pw_salt = r.bytes();
        for d in sb.devs.iter_mut() {
            d.path = r.bytes();
            d.total_segments = r.u32();
        }
        for q in sb.qf_ino.iter_mut() {
            *q = r.u32();
        }
        sb.hot_ext_count = r.u8();
        sb.s_encoding = r.u16();
        sb.s_encoding_flags = r.u16();
        sb.reserved = r.bytes();
        sb.crc = r.u32();
        debug_assert_eq!(r.pos(), SUPER_SIZE);
        sb
    }

    /// Serialize as stored (the `crc` field as it is; see [`Superblock::seal`]).
    pub fn to_bytes(&self) -> [u8; SUPER_SIZE] {
        let mut b = [0u8; SUPER_SIZE];
        let mut w = Wr::new(&mut b);
        w.u32(self.magic);
        w.u16(self.major_ver);
        w.u16(self.minor_ver);
        for v in [
            self.log_sectorsize,
            self.log_sectors_per_block,
            self.log_blocksize,
            self.log_blocks_per_seg,
            self.segs_per_sec,
            self.secs_per_zone,
            self.checksum_offset,
        ] {
            w.u32(v);
        }
        w.u64(self.block_count);
        for v in [
            self.section_count,
            self.segment_count,
            self.segment_count_ckpt,
            self.segment_count_sit,
            self.segment_count_nat,
            self.segment_count_ssa,
            self.segment_count_main,
            self.segment0_blkaddr,
            self.cp_blkaddr,
            self.sit_blkaddr,
            self.nat_blkaddr,
            self.ssa_blkaddr,
            self.main_blkaddr,
            self.root_ino,
            self.node_ino,
            self.meta_ino,
        ] {
            w.u32(v);
        }
        w.put(&self.uuid);
        for c in self.volume_name {
            w.u16(c);
        }
        w.u32(self.extension_count);
        for e in &self.extension_list {
            w.put(e);
        }
        w.u32(self.cp_payload);
        w.put(&self.version);
        w.put(&self.init_version);
        w.u32(self.feature);
        w.u8(self.encryption_level);
        w.put(&self.encrypt_pw_salt);
        for d in &self.devs {
            w.put(&d.path);
            w.u32(d.total_segments);
        }
        for q in self.qf_ino {
            w.u32(q);
        }
        w.u8(self.hot_ext_count);
        w.u16(self.s_encoding);
        w.u16(self.s_encoding_flags);
        w.put(&self.reserved);
        w.u32(self.crc);
        debug_assert_eq!(w.pos(), SUPER_SIZE);
        b
    }

    /// The CRC f2fs stores when sb_checksum is on: over the bytes before `checksum_offset`.
    pub fn compute_crc(&self) -> u32 {
        let b = self.to_bytes();
        let end = (self.checksum_offset as usize).min(SUPER_SIZE);
        crc32(MAGIC, &b[..end])
    }

    /// Set `checksum_offset` and `crc` for the sb_checksum feature (or clear them without it).
    pub fn seal(&mut self) {
        if self.feature & FEATURE_SB_CHKSUM != 0 {
            self.checksum_offset = SB_CHKSUM_OFFSET;
            self.crc = self.compute_crc();
        } else {
            self.checksum_offset = 0;
            self.crc = 0;
        }
    }

    /// The volume label, decoded from UTF-16 up to the first NUL.
    pub fn label(&self) -> String {
        let end = self
            .volume_name
            .iter()
            .position(|&c| c == 0)
            .unwrap_or(MAX_VOLUME_NAME);
        String::from_utf16_lossy(&self.volume_name[..end])
    }

    /// A full 4 KiB block holding this superblock at byte 1024, as blocks 0 and 1 store it.
    pub fn to_block(&self) -> Vec<u8> {
        let mut b = vec![0u8; BLOCK_SIZE];
        b[SUPER_OFFSET..SUPER_OFFSET + SUPER_SIZE].copy_from_slice(&self.to_bytes());
        b
    }
}

/// `struct f2fs_checkpoint`: the first (and last) block of a checkpoint pack. The version
/// bitmaps fill the rest of the block up to the CRC at `checksum_offset` (4092).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    pub checkpoint_ver: u64,
    pub user_block_count: u64,
    pub valid_block_count: u64,
    pub rsvd_segment_count: u32,
    pub overprov_segment_count: u32,
    pub free_segment_count: u32,
    pub cur_node_segno: [u32; MAX_ACTIVE_NODE_LOGS],
    pub cur_node_blkoff: [u16; MAX_ACTIVE_NODE_LOGS],
    pub cur_data_segno: [u32; MAX_ACTIVE_DATA_LOGS],
    pub cur_data_blkoff: [u16; MAX_ACTIVE_DATA_LOGS],
    pub ckpt_flags: u32,
    pub cp_pack_total_block_count: u32,
    pub cp_pack_start_sum: u32,
    pub valid_node_count: u32,
    pub valid_inode_count: u32,
    pub next_free_nid: u32,
    pub sit_ver_bitmap_bytesize: u32,
    pub nat_ver_bitmap_bytesize: u32,
    pub checksum_offset: u32,
    pub elapsed_time: u64,
    pub alloc_type: [u8; MAX_ACTIVE_LOGS],
    /// Bytes 192..4092: SIT then NAT version bitmaps.
    pub sit_nat_version_bitmap: Vec<u8>,
    pub crc: u32,
}

impl Checkpoint {
    pub fn parse(b: &[u8]) -> Self {
        assert!(b.len() >= BLOCK_SIZE);
        let mut r = Rd::new(&b[..BLOCK_SIZE]);
        let mut cp = Checkpoint {
            checkpoint_ver: r.u64(),
            user_block_count: r.u64(),
            valid_block_count: r.u64(),
            rsvd_segment_count: r.u32(),
            overprov_segment_count: r.u32(),
            free_segment_count: r.u32(),
            cur_node_segno: [0; 8],
            cur_node_blkoff: [0; 8],
            cur_data_segno: [0; 8],
            cur_data_blkoff: [0; 8],
            ckpt_flags: 0,
            cp_pack_total_block_count: 0,
            cp_pack_start_sum: 0,
            valid_node_count: 0,
            valid_inode_count: 0,
            next_free_nid: 0,
            sit_ver_bitmap_bytesize: 0,
            nat_ver_bitmap_bytesize: 0,
            checksum_offset: 0,
            elapsed_time: 0,
            alloc_type: [0; MAX_ACTIVE_LOGS],
            sit_nat_version_bitmap: Vec::new(),
            crc: 0,
        };
        cp.cur_node_segno = std::array::from_fn(|_| r.u32());
        cp.cur_node_blkoff = std::array::from_fn(|_| r.u16());
        cp.cur_data_segno = std::array::from_fn(|_| r.u32());
        cp.cur_data_blkoff = std::array::from_fn(|_| r.u16());
        cp.ckpt_flags = r.u32();
        cp.cp_pack_total_block_count = r.u32();
        cp.cp_pack_start_sum = r.u32();
        cp.valid_node_count = r.u32();
        cp.valid_inode_count = r.u32();
        cp.next_free_nid = r.u32();
        cp.sit_ver_bitmap_bytesize = r.u32();
        cp.nat_ver_bitmap_bytesize = r.u32();
        cp.checksum_offset = r.u32();
        cp.elapsed_time = r.u64();
        cp.alloc_type = r.bytes();
        debug_assert_eq!(r.pos(), CP_BITMAP_OFFSET);
        cp.sit_nat_version_bitmap = r.vec(CP_CHKSUM_OFFSET as usize - CP_BITMAP_OFFSET);
        cp.crc = r.u32();
        cp
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = vec![0u8; BLOCK_SIZE];
        let mut w = Wr::new(&mut b);
        w.u64(self.checkpoint_ver);
        w.u64(self.user_block_count);
        w.u64(self.valid_block_count);
        w.u32(self.rsvd_segment_count);
        w.u32(self.overprov_segment_count);
        w.u32(self.free_segment_count);
        self.cur_node_segno.iter().for_each(|&v| w.u32(v));
        self.cur_node_blkoff.iter().for_each(|&v| w.u16(v));
        self.cur_data_segno.iter().for_each(|&v| w.u32(v));
        self.cur_data_blkoff.iter().for_each(|&v| w.u16(v));
        for v in [
            self.ckpt_flags,
            self.cp_pack_total_block_count,
            self.cp_pack_start_sum,
            self.valid_node_count,
            self.valid_inode_count,
            self.next_free_nid,
            self.sit_ver_bitmap_bytesize,
            self.nat_ver_bitmap_bytesize,
            self.checksum_offset,
        ] {
            w.u32(v);
        }
        w.u64(self.elapsed_time);
        w.put(&self.alloc_type);
        let mut bm = self.sit_nat_version_bitmap.clone();
        bm.resize(CP_CHKSUM_OFFSET as usize - CP_BITMAP_OFFSET, 0);
        w.put(&bm);
        w.u32(self.crc);
        b
    }

    /// CRC over the block up to `checksum_offset` (the f2fs default layout puts it at 4092).
    pub fn compute_crc(&self) -> u32 {
        let b = self.to_bytes();
        crc32(MAGIC, &b[..(self.checksum_offset as usize).min(BLOCK_SIZE)])
    }

    pub fn seal(&mut self) {
        self.checksum_offset = CP_CHKSUM_OFFSET;
        self.crc = self.compute_crc();
    }
}

/// `struct f2fs_nat_entry`: where node `nid` lives.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatEntry {
    pub version: u8,
    pub ino: u32,
    pub block_addr: u32,
}

impl NatEntry {
    pub fn read(r: &mut Rd) -> Self {
        NatEntry {
            version: r.u8(),
            ino: r.u32(),
            block_addr: r.u32(),
        }
    }
    pub fn write(&self, w: &mut Wr) {
        w.u8(self.version);
        w.u32(self.ino);
        w.u32(self.block_addr);
    }
}

/// `struct f2fs_nat_block`: 455 entries, indexed by nid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NatBlock {
    pub entries: Vec<NatEntry>,
}

impl NatBlock {
    pub fn new() -> Self {
        NatBlock {
            entries: vec![NatEntry::default(); NAT_ENTRY_PER_BLOCK],
        }
    }
    pub fn parse(b: &[u8]) -> Self {
        let mut r = Rd::new(b);
        NatBlock {
            entries: (0..NAT_ENTRY_PER_BLOCK)
                .map(|_| NatEntry::read(&mut r))
                .collect(),
        }
    }
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = vec![0u8; BLOCK_SIZE];
        let mut w = Wr::new(&mut b);
        self.entries.iter().for_each(|e| e.write(&mut w));
        b
    }
}

impl Default for NatBlock {
    fn default() -> Self {
        Self::new()
    }
}

/// `struct f2fs_sit_entry`: valid-block count (low 10 bits) and segment type (high 6 bits),
/// a validity bitmap (MSB first), and the segment's age.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SitEntry {
    pub vblocks: u16,
    pub valid_map: [u8; SIT_VBLOCK_MAP_SIZE],
    pub mtime: u64,
}

impl Default for SitEntry {
    fn default() -> Self {
        SitEntry {
            vblocks: 0,
            valid_map: [0; SIT_VBLOCK_MAP_SIZE],
            mtime: 0,
        }
    }
}

impl SitEntry {
    /// An entry of segment type `ty` whose first `valid` blocks are in use.
    pub fn with_blocks(ty: u16, valid: u16) -> Self {
        let mut e = SitEntry {
            vblocks: (ty << SIT_VBLOCKS_SHIFT) | valid,
            ..Default::default()
        };
        for i in 0..valid as usize {
            e.valid_map[i / 8] |= 0x80 >> (i % 8);
        }
        e
    }
    pub fn read(r: &mut Rd) -> Self {
        SitEntry {
            vblocks: r.u16(),
            valid_map: r.bytes(),
            mtime: r.u64(),
        }
    }
    pub fn write(&self, w: &mut Wr) {
        w.u16(self.vblocks);
        w.put(&self.valid_map);
        w.u64(self.mtime);
    }
}

/// `struct f2fs_summary`: owner of one block of a segment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub nid: u32,
    pub version: u8,
    pub ofs_in_node: u16,
}

impl Summary {
    pub fn read(r: &mut Rd) -> Self {
        Summary {
            nid: r.u32(),
            version: r.u8(),
            ofs_in_node: r.u16(),
        }
    }
    pub fn write(&self, w: &mut Wr) {
        w.u32(self.nid);
        w.u8(self.version);
        w.u16(self.ofs_in_node);
    }
}

/// `struct f2fs_journal`: the NAT or SIT journal in a summary block (507 bytes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Journal {
    Nat(Vec<(u32, NatEntry)>),
    Sit(Vec<(u32, SitEntry)>),
}

impl Journal {
    pub fn read_nat(b: &[u8]) -> Self {
        let mut r = Rd::new(b);
        let n = (r.u16() as usize).min(NAT_JOURNAL_ENTRIES);
        Journal::Nat((0..n).map(|_| (r.u32(), NatEntry::read(&mut r))).collect())
    }
    pub fn read_sit(b: &[u8]) -> Self {
        let mut r = Rd::new(b);
        let n = (r.u16() as usize).min(SIT_JOURNAL_ENTRIES);
        Journal::Sit((0..n).map(|_| (r.u32(), SitEntry::read(&mut r))).collect())
    }
    pub fn to_bytes(&self) -> [u8; SUM_JOURNAL_SIZE] {
        let mut b = [0u8; SUM_JOURNAL_SIZE];
        let mut w = Wr::new(&mut b);
        match self {
            Journal::Nat(v) => {
                assert!(v.len() <= NAT_JOURNAL_ENTRIES);
                w.u16(v.len() as u16);
                for (nid, e) in v {
                    w.u32(*nid);
                    e.write(&mut w);
                }
            }
            Journal::Sit(v) => {
                assert!(v.len() <= SIT_JOURNAL_ENTRIES);
                w.u16(v.len() as u16);
                for (segno, e) in v {
                    w.u32(*segno);
                    e.write(&mut w);
                }
            }
        }
        b
    }
}

/// `struct f2fs_summary_block`: 512 summaries, a journal (raw: its kind depends on the
/// segment type) and the footer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SummaryBlock {
    pub entries: Vec<Summary>,
    pub journal: [u8; SUM_JOURNAL_SIZE],
    pub entry_type: u8,
    pub check_sum: u32,
}

impl SummaryBlock {
    pub fn new(entry_type: u8) -> Self {
        SummaryBlock {
            entries: vec![Summary::default(); ENTRIES_IN_SUM],
            journal: [0; SUM_JOURNAL_SIZE],
            entry_type,
            check_sum: 0,
        }
    }
    pub fn parse(b: &[u8]) -> Self {
        let mut r = Rd::new(b);
        SummaryBlock {
            entries: (0..ENTRIES_IN_SUM).map(|_| Summary::read(&mut r)).collect(),
            journal: r.bytes(),
            entry_type: r.u8(),
            check_sum: r.u32(),
        }
    }
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = vec![0u8; BLOCK_SIZE];
        let mut w = Wr::new(&mut b);
        self.entries.iter().for_each(|e| e.write(&mut w));
        w.put(&self.journal);
        w.u8(self.entry_type);
        w.u32(self.check_sum);
        b
    }
}

/// The compacted data summary (CP_COMPACT_SUM_FLAG): NAT journal, SIT journal, then the
/// summaries of the hot, warm and cold data segments back to back, `cur_data_blkoff[i]` each.
/// This covers the one-block case (up to 441 summaries), which is all a fresh filesystem needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompactSummary {
    pub nat: Journal,
    pub sit: Journal,
    pub data: Vec<Summary>,
}

impl CompactSummary {
    pub const MAX_ENTRIES: usize = (BLOCK_SIZE - 2 * SUM_JOURNAL_SIZE) / SUMMARY_SIZE;

    /// Parse, reading `n_data` summaries (the sum of the three `cur_data_blkoff`).
    pub fn parse(b: &[u8], n_data: usize) -> Self {
        let n = n_data.min(Self::MAX_ENTRIES);
        let mut r = Rd::new(&b[2 * SUM_JOURNAL_SIZE..]);
        CompactSummary {
            nat: Journal::read_nat(&b[..SUM_JOURNAL_SIZE]),
            sit: Journal::read_sit(&b[SUM_JOURNAL_SIZE..2 * SUM_JOURNAL_SIZE]),
            data: (0..n).map(|_| Summary::read(&mut r)).collect(),
        }
    }
    pub fn to_bytes(&self) -> Vec<u8> {
        assert!(self.data.len() <= Self::MAX_ENTRIES);
        let mut b = vec![0u8; BLOCK_SIZE];
        let mut w = Wr::new(&mut b);
        w.put(&self.nat.to_bytes());
        w.put(&self.sit.to_bytes());
        self.data.iter().for_each(|e| e.write(&mut w));
        b
    }
}

/// `struct f2fs_extent`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Extent {
    pub fofs: u32,
    pub blk_addr: u32,
    pub len: u32,
}

/// `struct node_footer`: the last 24 bytes of every node block.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeFooter {
    pub nid: u32,
    pub ino: u32,
    pub flag: u32,
    pub cp_ver: u64,
    pub next_blkaddr: u32,
}

impl NodeFooter {
    pub fn read(r: &mut Rd) -> Self {
        NodeFooter {
            nid: r.u32(),
            ino: r.u32(),
            flag: r.u32(),
            cp_ver: r.u64(),
            next_blkaddr: r.u32(),
        }
    }
    pub fn write(&self, w: &mut Wr) {
        w.u32(self.nid);
        w.u32(self.ino);
        w.u32(self.flag);
        w.u64(self.cp_ver);
        w.u32(self.next_blkaddr);
    }
}

/// `struct f2fs_inode` plus its node footer: one 4 KiB inode block. Without the extra_attr
/// feature all 923 `i_addr` slots are block addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InodeBlock {
    pub i_mode: u16,
    pub i_advise: u8,
    pub i_inline: u8,
    pub i_uid: u32,
    pub i_gid: u32,
    pub i_links: u32,
    pub i_size: u64,
    pub i_blocks: u64,
    pub i_atime: u64,
    pub i_ctime: u64,
    pub i_mtime: u64,
    pub i_atime_nsec: u32,
    pub i_ctime_nsec: u32,
    pub i_mtime_nsec: u32,
    pub i_generation: u32,
    /// Directory depth for directories (gc failures for pinned files).
    pub i_current_depth: u32,
    pub i_xattr_nid: u32,
    pub i_flags: u32,
    pub i_pino: u32,
    pub i_namelen: u32,
    pub i_name: [u8; NAME_LEN],
    pub i_dir_level: u8,
    pub i_ext: Extent,
    pub i_addr: Vec<u32>,
    pub i_nid: [u32; NIDS_PER_INODE],
    pub footer: NodeFooter,
}

impl Default for InodeBlock {
    fn default() -> Self {
        InodeBlock::parse(&[0u8; BLOCK_SIZE])
    }
}

impl InodeBlock {
    pub fn parse(b: &[u8]) -> Self {
        let mut r = Rd::new(&b[..BLOCK_SIZE]);
        InodeBlock {
            i_mode: r.u16(),
            i_advise: r.u8(),
            i_inline: r.u8(),
            i_uid: r.u32(),
            i_gid: r.u32(),
            i_links: r.u32(),
            i_size: r.u64(),
            i_blocks: r.u64(),
            i_atime: r.u64(),
            i_ctime: r.u64(),
            i_mtime: r.u64(),
            i_atime_nsec: r.u32(),
            i_ctime_nsec: r.u32(),
            i_mtime_nsec: r.u32(),
            i_generation: r.u32(),
            i_current_depth: r.u32(),
            i_xattr_nid: r.u32(),
            i_flags: r.u32(),
            i_pino: r.u32(),
            i_namelen: r.u32(),
            i_name: r.bytes(),
            i_dir_level: r.u8(),
            i_ext: Extent {
                fofs: r.u32(),
                blk_addr: r.u32(),
                len: r.u32(),
            },
            i_addr: (0..ADDRS_PER_INODE).map(|_| r.u32()).collect(),
            i_nid: std::array::from_fn(|_| r.u32()),
            footer: NodeFooter::read(&mut r),
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = vec![0u8; BLOCK_SIZE];
        let mut w = Wr::new(&mut b);
        w.u16(self.i_mode);
        w.u8(self.i_advise);
        w.u8(self.i_inline);
        w.u32(self.i_uid);
        w.u32(self.i_gid);
        w.u32(self.i_links);
        w.u64(self.i_size);
        w.u64(self.i_blocks);
        w.u64(self.i_atime);
        w.u64(self.i_ctime);
        w.u64(self.i_mtime);
        for v in [
            self.i_atime_nsec,
            self.i_ctime_nsec,
            self.i_mtime_nsec,
            self.i_generation,
            self.i_current_depth,
            self.i_xattr_nid,
            self.i_flags,
            self.i_pino,
            self.i_namelen,
        ] {
            w.u32(v);
        }
        w.put(&self.i_name);
        w.u8(self.i_dir_level);
        w.u32(self.i_ext.fofs);
        w.u32(self.i_ext.blk_addr);
        w.u32(self.i_ext.len);
        assert_eq!(self.i_addr.len(), ADDRS_PER_INODE);
        self.i_addr.iter().for_each(|&a| w.u32(a));
        self.i_nid.iter().for_each(|&n| w.u32(n));
        self.footer.write(&mut w);
        debug_assert_eq!(w.pos(), BLOCK_SIZE);
        b
    }
}

/// `struct f2fs_dir_entry`: one 11-byte slot header; the name sits in `filename` slots.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DirEntry {
    pub hash_code: u32,
    pub ino: u32,
    pub name_len: u16,
    pub file_type: u8,
}

/// `struct f2fs_dentry_block`: bitmap (LSB first), 214 entries, 214 8-byte name slots.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DentryBlock {
    pub bitmap: [u8; DENTRY_BITMAP_SIZE],
    pub reserved: [u8; DENTRY_RESERVED_SIZE],
    pub dentry: Vec<DirEntry>,
    pub filename: Vec<[u8; SLOT_LEN]>,
}

impl Default for DentryBlock {
    fn default() -> Self {
        DentryBlock::parse(&[0u8; BLOCK_SIZE])
    }
}

impl DentryBlock {
    pub fn parse(b: &[u8]) -> Self {
        let mut r = Rd::new(&b[..BLOCK_SIZE]);
        DentryBlock {
            bitmap: r.bytes(),
            reserved: r.bytes(),
            dentry: (0..NR_DENTRY_IN_BLOCK)
                .map(|_| DirEntry {
                    hash_code: r.u32(),
                    ino: r.u32(),
                    name_len: r.u16(),
                    file_type: r.u8(),
                })
                .collect(),
            filename: (0..NR_DENTRY_IN_BLOCK).map(|_| r.bytes()).collect(),
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = vec![0u8; BLOCK_SIZE];
        let mut w = Wr::new(&mut b);
        w.put(&self.bitmap);
        w.put(&self.reserved);
        for d in &self.dentry {
            w.u32(d.hash_code);
            w.u32(d.ino);
            w.u16(d.name_len);
            w.u8(d.file_type);
        }
        self.filename.iter().for_each(|f| w.put(f));
        debug_assert_eq!(w.pos(), BLOCK_SIZE);
        b
    }

    /// Put `name` at slot `pos`, taking ceil(len/8) slots, and mark them used.
    pub fn add(&mut self, pos: usize, name: &[u8], ino: u32, file_type: u8, hash_code: u32) {
        let slots = name.len().div_ceil(SLOT_LEN).max(1);
        self.dentry[pos] = DirEntry {
            hash_code,
            ino,
            name_len: name.len() as u16,
            file_type,
        };
        for (i, chunk) in name.chunks(SLOT_LEN).enumerate() {
            self.filename[pos + i][..chunk.len()].copy_from_slice(chunk);
        }
        for s in pos..pos + slots {
            self.bitmap[s / 8] |= 1 << (s % 8);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_match_the_spec() {
        assert_eq!(NAT_ENTRY_PER_BLOCK, 455);
        assert_eq!(SIT_ENTRY_PER_BLOCK, 55);
        assert_eq!(SUM_JOURNAL_SIZE, 507);
        assert_eq!(NAT_JOURNAL_ENTRIES, 38);
        assert_eq!(SIT_JOURNAL_ENTRIES, 6);
        assert_eq!(DENTRY_BITMAP_SIZE, 27);
        assert_eq!(DENTRY_RESERVED_SIZE, 3);
        assert_eq!(Superblock::default().to_bytes().len(), SUPER_SIZE);
    }

    #[test]
    fn crc_is_unfinalized_crc32_with_f2fs_seed() {
        // Bit-at-a-time reference of the definition: reflected poly, no pre/post inversion.
        fn slow(mut crc: u32, data: &[u8]) -> u32 {
            for &b in data {
                crc ^= b as u32;
                for _ in 0..8 {
                    crc = (crc >> 1) ^ if crc & 1 != 0 { 0xEDB8_8320 } else { 0 };
                }
            }
            crc
        }
        let data: Vec<u8> = (0..5000u32).map(|i| (i * 7 + 3) as u8).collect();
        assert_eq!(crc32(MAGIC, &data), slow(MAGIC, &data));
        assert_eq!(crc32(0, b""), 0);
        // With seed !0 and a final inversion it is the usual CRC-32 ("123456789" -> cbf43926).
        assert_eq!(!crc32(!0, b"123456789"), 0xCBF4_3926);
    }

    fn pattern(n: usize, salt: u8) -> Vec<u8> {
        (0..n)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(salt))
            .collect()
    }

    #[test]
    fn superblock_round_trips() {
        let b = pattern(SUPER_SIZE, 1);
        let sb = Superblock::parse(&b);
        assert_eq!(sb.to_bytes().to_vec(), b);
        assert_eq!(Superblock::parse(&sb.to_bytes()), sb);
        // Field offsets from the spec.
        assert_eq!(
            sb.block_count,
            u64::from_le_bytes(b[36..44].try_into().unwrap())
        );
        assert_eq!(
            sb.main_blkaddr,
            u32::from_le_bytes(b[92..96].try_into().unwrap())
        );
        assert_eq!(sb.uuid[..], b[108..124]);
        assert_eq!(
            sb.cp_payload,
            u32::from_le_bytes(b[1664..1668].try_into().unwrap())
        );
        assert_eq!(
            sb.feature,
            u32::from_le_bytes(b[2180..2184].try_into().unwrap())
        );
        assert_eq!(
            sb.crc,
            u32::from_le_bytes(b[3068..3072].try_into().unwrap())
        );
    }

    #[test]
    fn superblock_seal_and_label() {
        let mut sb = Superblock {
            feature: FEATURE_SB_CHKSUM,
            ..Default::default()
        };
        for (i, c) in "DATA é".encode_utf16().enumerate() {
            sb.volume_name[i] = c;
        }
        sb.seal();
        assert_eq!(sb.checksum_offset, SB_CHKSUM_OFFSET);
        assert_eq!(sb.crc, crc32(MAGIC, &sb.to_bytes()[..3068]));
        assert_eq!(sb.label(), "DATA é");
    }

    #[test]
    fn checkpoint_round_trips() {
        let b = pattern(BLOCK_SIZE, 2);
        let cp = Checkpoint::parse(&b);
        assert_eq!(cp.to_bytes(), b);
        let mut cp = cp;
        cp.seal();
        let bytes = cp.to_bytes();
        assert_eq!(
            u32::from_le_bytes(bytes[4092..].try_into().unwrap()),
            crc32(MAGIC, &bytes[..4092])
        );
        assert_eq!(
            cp.ckpt_flags,
            u32::from_le_bytes(b[132..136].try_into().unwrap())
        );
        assert_eq!(cp.alloc_type[..], b[176..192]);
    }

    #[test]
    fn node_blocks_round_trip() {
        let b = pattern(BLOCK_SIZE, 3);
        let n = InodeBlock::parse(&b);
        assert_eq!(n.to_bytes(), b);
        assert_eq!(
            n.i_addr[0],
            u32::from_le_bytes(b[360..364].try_into().unwrap())
        );
        assert_eq!(
            n.footer.next_blkaddr,
            u32::from_le_bytes(b[4092..].try_into().unwrap())
        );
    }

    #[test]
    fn tables_round_trip() {
        let b = pattern(BLOCK_SIZE, 4);
        let mut nat = pattern(BLOCK_SIZE, 5);
        nat[4095] = 0; // the NAT block's last byte is padding
        assert_eq!(NatBlock::parse(&nat).to_bytes(), nat);
        assert_eq!(SummaryBlock::parse(&b).to_bytes(), b);
        assert_eq!(DentryBlock::parse(&b).to_bytes(), b);

        let j = Journal::Sit(vec![(7, SitEntry::with_blocks(CURSEG_HOT_NODE, 3))]);
        let jb = j.to_bytes();
        assert_eq!(Journal::read_sit(&jb), j);
        if let Journal::Sit(v) = &j {
            assert_eq!(v[0].1.vblocks, (3 << 10) | 3);
            assert_eq!(v[0].1.valid_map[0], 0b1110_0000);
        }
        let n = Journal::Nat(vec![(
            3,
            NatEntry {
                version: 0,
                ino: 3,
                block_addr: 4096,
            },
        )]);
        assert_eq!(Journal::read_nat(&n.to_bytes()), n);

        let cs = CompactSummary {
            nat: Journal::Nat(vec![]),
            sit: j.clone(),
            data: vec![Summary {
                nid: 3,
                version: 0,
                ofs_in_node: 0,
            }],
        };
        assert_eq!(CompactSummary::parse(&cs.to_bytes(), 1), cs);
    }

    #[test]
    fn dentry_add_marks_slots() {
        let mut d = DentryBlock::default();
        d.add(0, b".", 3, FT_DIR, 0);
        d.add(1, b"..", 3, FT_DIR, 0);
        d.add(2, b"lost+found", 4, FT_DIR, 0x1234);
        assert_eq!(d.bitmap[0], 0b0000_1111);
        assert_eq!(&d.filename[2], b"lost+fou");
        assert_eq!(&d.filename[3][..2], b"nd");
        assert_eq!(DentryBlock::parse(&d.to_bytes()), d);
    }
}
