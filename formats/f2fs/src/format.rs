//! Building the metadata blocks of an empty f2fs and writing them into a region.
//! Spec: <https://www.kernel.org/doc/html/latest/filesystems/f2fs.html>.

use std::io::{Read, Seek, SeekFrom, Write};
use std::ops::Range;

use crate::geometry::{min_size, Geometry, GeometryError, MAX_SIZE};
use crate::ondisk::*;
use crate::tree::{self, Content, Logs, ROOT_INO};
use crate::{default_uuid, Error, Options, ZeroMode};

const NODE_INO: u32 = 1;
const META_INO: u32 = 2;
const BS: u64 = BLOCK_SIZE as u64;

/// File-name extensions the kernel treats as cold data and as hot data: the defaults mkfs.f2fs
/// 1.15 stores, so the kernel separates the same files as on a filesystem mkfs made.
const COLD_EXTENSIONS: &[&str] = &[
    "mp", "wm", "og", "jp", "avi", "m4v", "m4p", "mkv", "mov", "webm", "wav", "m4a", "3gp", "opus",
    "flac", "gif", "png", "svg", "webp", "jar", "deb", "iso", "gz", "xz", "zst", "pdf", "pyc",
    "ttc", "ttf", "exe", "apk", "cnt", "exo", "odex", "vdex", "so",
];
const HOT_EXTENSIONS: &[&str] = &["db", "vmdk", "vdi", "qcow2"];
const VERSION: &str = "imgtool-f2fs";

/// One 4 KiB block to write, at a byte offset from the start of the region.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Block {
    pub offset: u64,
    pub data: Vec<u8>,
}

/// Everything a format writes: the non-zero blocks in offset order, and the byte ranges
/// (relative to the region) that must read as zero. Anything else may hold any bytes.
#[derive(Clone, Debug)]
pub struct Plan {
    pub geometry: Geometry,
    pub superblock: Superblock,
    pub checkpoint: Checkpoint,
    pub blocks: Vec<Block>,
    pub zero_ranges: Vec<Range<u64>>,
}

fn check_label(label: &str) -> Result<Vec<u16>, Error> {
    let units: Vec<u16> = label.encode_utf16().collect();
    let bad = |reason| Error::Label {
        label: label.to_string(),
        reason,
    };
    if units.len() > MAX_VOLUME_NAME {
        return Err(bad("longer than 512 UTF-16 units; shorten it"));
    }
    if units.contains(&0) {
        return Err(bad("contains a NUL character; remove it"));
    }
    Ok(units)
}

/// Compute the blocks of an empty f2fs for a region of `size` bytes (floor to 4 KiB blocks).
pub fn plan(size: u64, opts: &Options) -> Result<Plan, Error> {
    let label = check_label(&opts.label)?;
    let g = Geometry::compute(size, opts.disk_offset).map_err(|e| match e {
        GeometryError::TooSmall => Error::TooSmall {
            size,
            min: min_size(opts.disk_offset),
        },
        GeometryError::TooLarge => Error::TooLarge {
            size,
            max: MAX_SIZE,
        },
    })?;
    let uuid = opts.uuid.unwrap_or_else(|| default_uuid(&opts.label, size));

    let sb = superblock(&g, &label, uuid, opts.sb_checksum);
    let logs = Logs {
        hot_node: g.seg_blkaddr(g.cur_seg[CURSEG_HOT_NODE as usize]),
        warm_node: g.seg_blkaddr(g.cur_seg[CURSEG_WARM_NODE as usize]),
        hot_data: g.seg_blkaddr(g.cur_seg[CURSEG_HOT_DATA as usize]),
        warm_data: g.seg_blkaddr(g.cur_seg[CURSEG_WARM_DATA as usize]),
        time: opts.timestamp,
    };
    let content = tree::build(&opts.root, &logs).map_err(Error::Tree)?;
    // Any version above pack 2's 0 works; derive it from the UUID to stay reproducible.
    let cp_ver = (u32::from_le_bytes(uuid[..4].try_into().unwrap()) as u64 & 0x7fff_ffff) | 1;
    let cp = checkpoint(&g, cp_ver, &content);

    let mut blocks = Vec::new();
    let mut put = |blk: u64, data: Vec<u8>| {
        debug_assert_eq!(data.len(), BLOCK_SIZE);
        blocks.push(Block {
            offset: blk * BS,
            data,
        })
    };
    let sb_block = sb.to_block();
    put(0, sb_block.clone());
    put(1, sb_block);

    // Checkpoint pack 1: cp, payload, compacted data summary, 3 node summaries, cp again.
    let seg0 = g.segment0_blkaddr as u64;
    let cp_block = cp.to_bytes();
    let mut b = seg0;
    put(b, cp_block.clone());
    for _ in 0..g.cp_payload {
        b += 1;
        put(b, vec![0; BLOCK_SIZE]);
    }
    let data_sum = compact_summary(&g, &content);
    put(b + 1, data_sum.to_bytes());
    let node_summary = |nodes: &[InodeBlock]| {
        let mut s = SummaryBlock::new(SUM_TYPE_NODE);
        for (e, n) in s.entries.iter_mut().zip(nodes) {
            e.nid = n.footer.nid;
        }
        s.to_bytes()
    };
    put(b + 2, node_summary(&content.hot_nodes));
    put(b + 3, node_summary(&content.warm_nodes));
    put(b + 4, node_summary(&[]));
    put(b + 5, cp_block);
    if cp.ckpt_flags & CP_NAT_BITS_FLAG != 0 {
        let nb = nat_bits(&g, &cp);
        let first = seg0 + BLOCKS_PER_SEG as u64 - (nb.len() / BLOCK_SIZE) as u64;
        for (i, chunk) in nb.chunks(BLOCK_SIZE).enumerate() {
            put(first + i as u64, chunk.to_vec());
        }
    }

    // Checkpoint pack 2: version 0, so pack 1 is the one in use; same layout, no summaries.
    let mut cp2 = cp.clone();
    cp2.checkpoint_ver = 0;
    cp2.seal();
    let cp2_block = cp2.to_bytes();
    let seg1 = seg0 + BLOCKS_PER_SEG as u64;
    put(seg1, cp2_block.clone());
    for i in 0..g.cp_payload as u64 {
        put(seg1 + 1 + i, vec![0; BLOCK_SIZE]);
    }
    put(seg1 + cp.cp_pack_total_block_count as u64 - 1, cp2_block);

    // NAT block 0: node and meta inodes (address 1 marks them in use), then every inode.
    let mut nat = NatBlock::new();
    for ino in [NODE_INO, META_INO] {
        nat.entries[ino as usize] = NatEntry {
            version: 0,
            ino,
            block_addr: 1,
        };
    }
    for &(nid, addr) in &content.nat {
        nat.entries[nid as usize] = NatEntry {
            version: 0,
            ino: nid,
            block_addr: addr,
        };
    }
    put(g.nat_blkaddr as u64, nat.to_bytes());

    // The tree: directory inodes (root first) in the hot node log, other inodes in the warm
    // node log, dentry blocks in the hot data log, file data in the warm data log.
    for (i, n) in content.hot_nodes.iter().enumerate() {
        put(logs.hot_node as u64 + i as u64, n.to_bytes());
    }
    for (i, n) in content.warm_nodes.iter().enumerate() {
        put(logs.warm_node as u64 + i as u64, n.to_bytes());
    }
    for (i, (_, d)) in content.hot_data.iter().enumerate() {
        put(logs.hot_data as u64 + i as u64, d.clone());
    }
    for (i, (_, _, d)) in content.warm_data.iter().enumerate() {
        put(logs.warm_data as u64 + i as u64, d.clone());
    }

    blocks.sort_by_key(|b| b.offset);

    // Must read as zero: the live SIT copy, the live NAT copy (even segments of the NAT area)
    // and the block where roll-forward recovery starts (the warm node log's next block).
    let seg = BLOCKS_PER_SEG as u64 * BS;
    let mut zero_ranges = vec![];
    let sit = g.sit_blkaddr as u64 * BS;
    zero_ranges.push(sit..sit + (g.segment_count_sit / 2) as u64 * seg);
    for i in 0..(g.segment_count_nat / 2) as u64 {
        let start = g.nat_blkaddr as u64 * BS + 2 * i * seg;
        zero_ranges.push(start..start + seg);
    }
    let warm = (logs.warm_node as u64 + content.warm_nodes.len() as u64) * BS;
    zero_ranges.push(warm..warm + BS);

    Ok(Plan {
        geometry: g,
        superblock: sb,
        checkpoint: cp,
        blocks,
        zero_ranges,
    })
}

fn superblock(g: &Geometry, label: &[u16], uuid: [u8; 16], sb_checksum: bool) -> Superblock {
    let mut sb = Superblock {
        magic: MAGIC,
        major_ver: MAJOR_VERSION,
        minor_ver: MINOR_VERSION,
        log_sectorsize: 9,
        log_sectors_per_block: 3,
        log_blocksize: LOG_BLOCK_SIZE,
        log_blocks_per_seg: LOG_BLOCKS_PER_SEG,
        segs_per_sec: 1,
        secs_per_zone: 1,
        block_count: g.block_count,
        section_count: g.section_count,
        segment_count: g.segment_count,
        segment_count_ckpt: g.segment_count_ckpt,
        segment_count_sit: g.segment_count_sit,
        segment_count_nat: g.segment_count_nat,
        segment_count_ssa: g.segment_count_ssa,
        segment_count_main: g.segment_count_main,
        segment0_blkaddr: g.segment0_blkaddr,
        cp_blkaddr: g.cp_blkaddr,
        sit_blkaddr: g.sit_blkaddr,
        nat_blkaddr: g.nat_blkaddr,
        ssa_blkaddr: g.ssa_blkaddr,
        main_blkaddr: g.main_blkaddr,
        root_ino: ROOT_INO,
        node_ino: NODE_INO,
        meta_ino: META_INO,
        uuid,
        cp_payload: g.cp_payload,
        feature: if sb_checksum { FEATURE_SB_CHKSUM } else { 0 },
        ..Default::default()
    };
    sb.volume_name[..label.len()].copy_from_slice(label);
    for (slot, ext) in sb
        .extension_list
        .iter_mut()
        .zip(COLD_EXTENSIONS.iter().chain(HOT_EXTENSIONS))
    {
        slot[..ext.len()].copy_from_slice(ext.as_bytes());
    }
    sb.extension_count = COLD_EXTENSIONS.len() as u32;
    sb.hot_ext_count = HOT_EXTENSIONS.len() as u8;
    sb.version[..VERSION.len()].copy_from_slice(VERSION.as_bytes());
    sb.init_version = sb.version;
    sb.seal();
    sb
}

fn checkpoint(g: &Geometry, cp_ver: u64, c: &Content) -> Checkpoint {
    let seg = |t: u16| g.cur_seg[t as usize];
    let mut cp = Checkpoint::parse(&[0u8; BLOCK_SIZE]);
    cp.checkpoint_ver = cp_ver;
    cp.user_block_count = g.user_block_count();
    let nodes = (c.hot_nodes.len() + c.warm_nodes.len()) as u32;
    cp.valid_block_count = (nodes as usize + c.hot_data.len() + c.warm_data.len()) as u64;
    cp.rsvd_segment_count = g.reserved_segments;
    cp.overprov_segment_count = g.overprov_segments;
    cp.free_segment_count = g.free_segments();
    cp.cur_node_segno = [u32::MAX; MAX_ACTIVE_NODE_LOGS];
    cp.cur_data_segno = [u32::MAX; MAX_ACTIVE_DATA_LOGS];
    cp.cur_node_segno[..3].copy_from_slice(&[
        seg(CURSEG_HOT_NODE),
        seg(CURSEG_WARM_NODE),
        seg(CURSEG_COLD_NODE),
    ]);
    cp.cur_data_segno[..3].copy_from_slice(&[
        seg(CURSEG_HOT_DATA),
        seg(CURSEG_WARM_DATA),
        seg(CURSEG_COLD_DATA),
    ]);
    cp.cur_node_blkoff[0] = c.hot_nodes.len() as u16;
    cp.cur_node_blkoff[1] = c.warm_nodes.len() as u16;
    cp.cur_data_blkoff[0] = c.hot_data.len() as u16;
    cp.cur_data_blkoff[1] = c.warm_data.len() as u16;
    // cp block, payload, 1 compacted data summary, 3 node summaries, cp block.
    cp.cp_pack_total_block_count = 6 + g.cp_payload;
    cp.cp_pack_start_sum = 1 + g.cp_payload;
    cp.ckpt_flags = CP_UMOUNT_FLAG | CP_COMPACT_SUM_FLAG;
    if cp.cp_pack_total_block_count as usize <= BLOCKS_PER_SEG as usize - nat_bits_blocks(g) {
        cp.ckpt_flags |= CP_NAT_BITS_FLAG;
    }
    cp.valid_node_count = nodes;
    cp.valid_inode_count = nodes;
    cp.next_free_nid = c.next_free_nid;
    cp.sit_ver_bitmap_bytesize = (g.segment_count_sit / 2) * BLOCKS_PER_SEG / 8;
    cp.nat_ver_bitmap_bytesize = (g.segment_count_nat / 2) * BLOCKS_PER_SEG / 8;
    cp.seal();
    cp
}

/// Bytes per nat_bits bitmap: one bit per NAT block of one copy.
fn nat_bits_bytes(g: &Geometry) -> usize {
    (g.segment_count_nat as usize) << 5
}

fn nat_bits_blocks(g: &Geometry) -> usize {
    (2 * nat_bits_bytes(g) + 8).div_ceil(BLOCK_SIZE)
}

/// The nat_bits area at the end of checkpoint segment 0: the checkpoint's version and CRC,
/// then "full" bits (none) and "empty" bits (all NAT blocks but block 0).
fn nat_bits(g: &Geometry, cp: &Checkpoint) -> Vec<u8> {
    let n = nat_bits_bytes(g);
    let mut v = vec![0u8; nat_bits_blocks(g) * BLOCK_SIZE];
    let stamp = cp.checkpoint_ver | ((cp.crc as u64) << 32);
    v[..8].copy_from_slice(&stamp.to_le_bytes());
    v[8 + n..8 + 2 * n].fill(0xff);
    v[8 + n] &= !1;
    v
}

fn compact_summary(g: &Geometry, c: &Content) -> CompactSummary {
    let seg = |t: u16| g.cur_seg[t as usize];
    let n = |v: usize| v as u16;
    // The six open segments and how many of their first blocks are in use.
    let sit = [
        (CURSEG_HOT_NODE, n(c.hot_nodes.len())),
        (CURSEG_WARM_NODE, n(c.warm_nodes.len())),
        (CURSEG_COLD_NODE, 0),
        (CURSEG_HOT_DATA, n(c.hot_data.len())),
        (CURSEG_WARM_DATA, n(c.warm_data.len())),
        (CURSEG_COLD_DATA, 0),
    ]
    .iter()
    .map(|&(t, n)| (seg(t), SitEntry::with_blocks(t, n)))
    .collect();
    let hot = c.hot_data.iter().map(|&(nid, _)| Summary {
        nid,
        version: 0,
        ofs_in_node: 0,
    });
    let warm = c.warm_data.iter().map(|&(nid, ofs, _)| Summary {
        nid,
        version: 0,
        ofs_in_node: ofs,
    });
    CompactSummary {
        // Every NAT entry is in the NAT block itself; an empty journal keeps nat_bits
        // consistent (fsck -f flags a journal next to nat_bits).
        nat: Journal::Nat(vec![]),
        sit: Journal::Sit(sit),
        data: hot.chain(warm).collect(),
    }
}

/// Format `size` bytes at `offset` of `dev` as an empty f2fs. Writes only inside
/// `offset..offset + size`. Returns the plan that was written.
pub fn format<D: Read + Write + Seek>(
    dev: &mut D,
    offset: u64,
    size: u64,
    opts: &Options,
) -> Result<Plan, Error> {
    let p = plan(size, opts)?;
    match opts.zero {
        ZeroMode::Assume => {}
        ZeroMode::Always => {
            let zeros = vec![0u8; 1 << 20];
            for r in &p.zero_ranges {
                dev.seek(SeekFrom::Start(offset + r.start))?;
                let mut left = r.end - r.start;
                while left > 0 {
                    let n = left.min(zeros.len() as u64) as usize;
                    dev.write_all(&zeros[..n])?;
                    left -= n as u64;
                }
            }
        }
        ZeroMode::Detect => {
            for r in &p.zero_ranges {
                zero_nonzero_blocks(dev, offset + r.start, r.end - r.start)?;
            }
        }
    }
    for b in &p.blocks {
        debug_assert!(b.offset + BS <= size);
        dev.seek(SeekFrom::Start(offset + b.offset))?;
        dev.write_all(&b.data)?;
    }
    dev.flush()?;
    Ok(p)
}

/// Read `len` bytes at `start` (1 MiB at a time) and overwrite each run of non-zero 4 KiB
/// blocks with zeros. Bytes past the end of `dev` read as zero.
fn zero_nonzero_blocks<D: Read + Write + Seek>(
    dev: &mut D,
    start: u64,
    len: u64,
) -> Result<(), Error> {
    const CHUNK: u64 = 1 << 20;
    let mut buf = vec![0u8; CHUNK as usize];
    let zeros = vec![0u8; CHUNK as usize];
    let mut pos = start;
    while pos < start + len {
        let n = (start + len - pos).min(CHUNK) as usize;
        dev.seek(SeekFrom::Start(pos))?;
        let got = read_full(dev, &mut buf[..n])?;
        buf[got..n].fill(0);
        let mut run: Option<usize> = None;
        let blocks = n / BLOCK_SIZE;
        for i in 0..=blocks {
            let nonzero = i < blocks
                && buf[i * BLOCK_SIZE..(i + 1) * BLOCK_SIZE]
                    .iter()
                    .any(|&x| x != 0);
            match (nonzero, run) {
                (true, None) => run = Some(i),
                (false, Some(s)) => {
                    dev.seek(SeekFrom::Start(pos + (s * BLOCK_SIZE) as u64))?;
                    dev.write_all(&zeros[..(i - s) * BLOCK_SIZE])?;
                    run = None;
                }
                _ => {}
            }
        }
        pos += n as u64;
    }
    Ok(())
}

fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    const MIB: u64 = 1 << 20;

    #[test]
    fn writes_only_metadata_and_stays_in_the_region() {
        let p = plan(150 * MIB, &Options::default()).unwrap();
        assert!(p.blocks.len() < 20, "{} blocks", p.blocks.len());
        assert!(p.blocks.iter().all(|b| b.offset + BS <= 150 * MIB));
        assert!(p.blocks.windows(2).all(|w| w[0].offset < w[1].offset));
    }

    #[test]
    fn reproducible_and_label_dependent() {
        let o = Options {
            label: "APPDATA".into(),
            ..Default::default()
        };
        let a = plan(64 * MIB, &o).unwrap();
        let b = plan(64 * MIB, &o).unwrap();
        assert_eq!(a.blocks, b.blocks);
        assert_eq!(a.superblock.label(), "APPDATA");
        let c = plan(64 * MIB, &Options::default()).unwrap();
        assert_ne!(a.superblock.uuid, c.superblock.uuid);
    }

    #[test]
    fn rejects_bad_input() {
        let e = plan(4 * MIB, &Options::default()).unwrap_err();
        let min = min_size(0);
        assert!(matches!(e, Error::TooSmall { min: m, .. } if m == min));
        assert!(e.to_string().contains(&min.to_string()), "{e}");
        let o = Options {
            label: "a\0b".into(),
            ..Default::default()
        };
        assert!(matches!(plan(64 * MIB, &o), Err(Error::Label { .. })));
        let o = Options {
            label: "x".repeat(513),
            ..Default::default()
        };
        assert!(matches!(plan(64 * MIB, &o), Err(Error::Label { .. })));
        assert!(matches!(
            plan(MAX_SIZE + (4 << 20), &Options::default()),
            Err(Error::TooLarge { .. })
        ));
    }

    #[test]
    fn detect_zeroes_stale_metadata_only() {
        let size = 64 * MIB;
        let off = 4096;
        let mut dev = Cursor::new(vec![0xa5u8; (off + size + 8192) as usize]);
        let p = format(&mut dev, off, size, &Options::default()).unwrap();
        let img = dev.into_inner();
        // Outside the region: untouched.
        assert!(img[..off as usize].iter().all(|&b| b == 0xa5));
        assert!(img[(off + size) as usize..].iter().all(|&b| b == 0xa5));
        for r in &p.zero_ranges {
            let s = (off + r.start) as usize;
            let e = (off + r.end) as usize;
            let written: Vec<_> = p
                .blocks
                .iter()
                .filter(|b| b.offset >= r.start && b.offset < r.end)
                .collect();
            for blk in (s..e).step_by(BLOCK_SIZE) {
                let rel = (blk - off as usize) as u64;
                if !written.iter().any(|b| b.offset == rel) {
                    assert!(img[blk..blk + BLOCK_SIZE].iter().all(|&b| b == 0));
                }
            }
        }
        for b in &p.blocks {
            let s = (off + b.offset) as usize;
            assert_eq!(&img[s..s + BLOCK_SIZE], &b.data[..]);
        }
        // Free main-area blocks keep their old bytes: nothing there needs to be zero.
        let last = (off + size - BS) as usize;
        assert!(img[last..last + BLOCK_SIZE].iter().all(|&b| b == 0xa5));
    }

    #[test]
    fn checkpoint_and_sb_parse_back() {
        let p = plan(1 << 30, &Options::default()).unwrap();
        let sb_blk = &p.blocks[0];
        let sb = Superblock::parse(&sb_blk.data[SUPER_OFFSET..]);
        assert_eq!(sb, p.superblock);
        assert_eq!(sb.crc, sb.compute_crc());
        let seg0 = p.geometry.segment0_blkaddr as u64 * BS;
        let cp_blk = p.blocks.iter().find(|b| b.offset == seg0).unwrap();
        let cp = Checkpoint::parse(&cp_blk.data);
        assert_eq!(cp, p.checkpoint);
        assert_eq!(cp.crc, cp.compute_crc());
    }
}
