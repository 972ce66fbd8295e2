//! Where each f2fs area goes for a given size: the same arithmetic mkfs.f2fs (f2fs-tools 1.15,
//! `f2fs_prepare_super_block`) does for a single non-zoned device with 2 MiB segments, one
//! segment per section and one section per zone, so the kernel and fsck see the geometry they
//! expect. Spec: <https://www.kernel.org/doc/html/latest/filesystems/f2fs.html>.

use crate::ondisk::*;

const SEG_BYTES: u64 = (BLOCK_SIZE as u64) * BLOCKS_PER_SEG as u64;
/// Checkpoint + SIT + NAT + SSA + main.
const MIN_SEGMENTS: u32 = 9;
/// 16 TiB: f2fs block addresses are 32 bits.
pub const MAX_SEGMENTS: u32 = (16 * 1024 * 1024) / 2;
/// The size of the largest region formatted: 16 TiB of segments plus the leading area.
pub const MAX_SIZE: u64 = MAX_SEGMENTS as u64 * SEG_BYTES + SEG_BYTES;

/// The computed layout. Block addresses are in 4 KiB blocks from the start of the region.
#[derive(Clone, Debug, PartialEq)]
pub struct Geometry {
    pub block_count: u64,
    pub segment0_blkaddr: u32,
    pub segment_count: u32,
    pub segment_count_ckpt: u32,
    pub segment_count_sit: u32,
    pub segment_count_nat: u32,
    pub segment_count_ssa: u32,
    pub segment_count_main: u32,
    pub section_count: u32,
    pub cp_blkaddr: u32,
    pub sit_blkaddr: u32,
    pub nat_blkaddr: u32,
    pub ssa_blkaddr: u32,
    pub main_blkaddr: u32,
    pub cp_payload: u32,
    /// Overprovision ratio in percent, chosen as mkfs does (most user space).
    pub overprovision: f64,
    pub reserved_segments: u32,
    pub overprov_segments: u32,
    /// Main-area segment of each current log, indexed by CURSEG_* type.
    pub cur_seg: [u32; 6],
}

/// Why a size cannot hold f2fs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GeometryError {
    TooSmall,
    TooLarge,
}

/// Byte offset of segment 0 inside the region: past the two superblocks and aligned to a
/// 2 MiB boundary of the disk (mkfs aligns to the partition's start sector the same way). A
/// region not on a 4 KiB boundary of its disk cannot be aligned, so it aligns to itself.
pub fn segment0_offset(disk_offset: u64) -> u64 {
    let base = if disk_offset.is_multiple_of(BLOCK_SIZE as u64) {
        disk_offset % SEG_BYTES
    } else {
        0
    };
    (base + 2 * BLOCK_SIZE as u64).div_ceil(SEG_BYTES) * SEG_BYTES - base
}

impl Geometry {
    pub fn compute(size: u64, disk_offset: u64) -> Result<Geometry, GeometryError> {
        let bps = BLOCKS_PER_SEG;
        let seg_align = |blks: u64| blks.div_ceil(bps as u64) as u32;
        let seg0_off = segment0_offset(disk_offset);
        if size < seg0_off + MIN_SEGMENTS as u64 * SEG_BYTES {
            return Err(GeometryError::TooSmall);
        }
        let total_segments = (size - seg0_off) / SEG_BYTES;
        if total_segments > MAX_SEGMENTS as u64 {
            return Err(GeometryError::TooLarge);
        }
        let segment_count = total_segments as u32;
        let segment0_blkaddr = (seg0_off / BLOCK_SIZE as u64) as u32;
        let segment_count_ckpt = 2;
        let sit_blkaddr = segment0_blkaddr + segment_count_ckpt * bps;

        let blocks_for_sit = (segment_count as u64).div_ceil(SIT_ENTRY_PER_BLOCK as u64);
        let sit_segments = seg_align(blocks_for_sit);
        let segment_count_sit = sit_segments * 2;
        let nat_blkaddr = sit_blkaddr + segment_count_sit * bps;

        let valid_blks =
            (segment_count - segment_count_ckpt - segment_count_sit) as u64 * bps as u64;
        let blocks_for_nat = valid_blks.div_ceil(NAT_ENTRY_PER_BLOCK as u64);
        let mut nat_segments = seg_align(blocks_for_nat);

        // The SIT version bitmap lives in the checkpoint block, or in extra "payload" blocks
        // after it when it does not fit; the NAT bitmap gets what is left of the block.
        let max_bitmap_in_cp = (CP_CHKSUM_OFFSET as usize - CP_BITMAP_OFFSET) as u32;
        let max_sit_bitmap_in_cp = max_bitmap_in_cp - 64;
        let sit_bitmap_size = (sit_segments * bps) / 8;
        let max_sit_bitmap_size = {
            let blocks = (MAX_SEGMENTS as u64).div_ceil(SIT_ENTRY_PER_BLOCK as u64);
            seg_align(blocks) * bps / 8
        };
        let max_sit = sit_bitmap_size.min(max_sit_bitmap_size);
        let (max_nat_bitmap, cp_payload) = if max_sit > max_sit_bitmap_in_cp {
            (max_bitmap_in_cp, max_sit.div_ceil(BLOCK_SIZE as u32))
        } else {
            (max_bitmap_in_cp - max_sit, 0)
        };
        let max_nat_segments = (max_nat_bitmap * 8) >> LOG_BLOCKS_PER_SEG;
        nat_segments = nat_segments.min(max_nat_segments);
        let segment_count_nat = nat_segments * 2;
        let ssa_blkaddr = nat_blkaddr + segment_count_nat * bps;

        let valid_segs = segment_count - segment_count_ckpt - segment_count_sit - segment_count_nat;
        let blocks_for_ssa = valid_segs as u64 + 1;
        let segment_count_ssa = seg_align(blocks_for_ssa);
        let meta_segments =
            segment_count_ckpt + segment_count_sit + segment_count_nat + segment_count_ssa;
        let main_blkaddr = segment0_blkaddr + meta_segments * bps;
        if meta_segments >= segment_count {
            return Err(GeometryError::TooSmall);
        }
        let total_zones = segment_count - meta_segments;
        let section_count = total_zones;
        let segment_count_main = section_count;

        let overprovision = best_overprovision(segment_count_main, section_count);
        let reserved_segments = reserved_for(overprovision, segment_count_main, section_count);
        if overprovision == 0.0
            || segment_count_main < NR_CURSEG_TYPE
            || segment_count_main - NR_CURSEG_TYPE < reserved_segments
            || total_zones <= NR_CURSEG_TYPE
        {
            return Err(GeometryError::TooSmall);
        }
        let overprov_segments = ((segment_count_main - reserved_segments) as f64 * overprovision
            / 100.0) as u32
            + reserved_segments;
        if segment_count_main <= overprov_segments {
            return Err(GeometryError::TooSmall);
        }

        // Current logs: the three node logs and hot data at the front, cold data a quarter in,
        // warm data half way, as mkfs places them.
        let mut cur = [0u32; 6];
        cur[CURSEG_HOT_NODE as usize] = 0;
        cur[CURSEG_WARM_NODE as usize] = 1;
        cur[CURSEG_COLD_NODE as usize] = 2;
        cur[CURSEG_HOT_DATA as usize] = 3;
        cur[CURSEG_COLD_DATA as usize] = ((total_zones >> 2).saturating_sub(1)).max(4);
        cur[CURSEG_WARM_DATA as usize] =
            ((total_zones >> 1).saturating_sub(1)).max(cur[CURSEG_COLD_DATA as usize] + 1);
        let mut seen = cur.to_vec();
        seen.sort_unstable();
        seen.dedup();
        if seen.len() != cur.len() {
            let order = [
                CURSEG_HOT_NODE,
                CURSEG_WARM_NODE,
                CURSEG_COLD_NODE,
                CURSEG_HOT_DATA,
                CURSEG_WARM_DATA,
                CURSEG_COLD_DATA,
            ];
            for (i, t) in order.iter().enumerate() {
                cur[*t as usize] = i as u32;
            }
        }

        Ok(Geometry {
            block_count: size / BLOCK_SIZE as u64,
            segment0_blkaddr,
            segment_count,
            segment_count_ckpt,
            segment_count_sit,
            segment_count_nat,
            segment_count_ssa,
            segment_count_main,
            section_count,
            cp_blkaddr: segment0_blkaddr,
            sit_blkaddr,
            nat_blkaddr,
            ssa_blkaddr,
            main_blkaddr,
            cp_payload,
            overprovision,
            reserved_segments,
            overprov_segments,
            cur_seg: cur,
        })
    }

    /// Free segments after format: all main segments but the six current logs.
    pub fn free_segments(&self) -> u32 {
        self.segment_count_main - NR_CURSEG_TYPE
    }

    /// Blocks user data may fill (main area less overprovisioning).
    pub fn user_block_count(&self) -> u64 {
        (self.segment_count_main - self.overprov_segments) as u64 * BLOCKS_PER_SEG as u64
    }

    /// First block of main-area segment `segno`.
    pub fn seg_blkaddr(&self, segno: u32) -> u32 {
        self.main_blkaddr + segno * BLOCKS_PER_SEG
    }
}

/// Segments kept for garbage collection at a given overprovision ratio.
fn reserved_for(ovp: f64, main_segs: u32, sections: u32) -> u32 {
    let segs_per_sec = main_segs.div_ceil(sections.max(1));
    ((2.0 * (100.0 / ovp + 1.0) + NR_CURSEG_TYPE as f64) * segs_per_sec as f64) as u32
}

/// The ratio that leaves the most user space, searched over the same candidates mkfs uses
/// (in f64 steps, so the result matches it exactly); 0 when no ratio leaves any space.
fn best_overprovision(main_segs: u32, sections: u32) -> f64 {
    let (mut candidate, end, diff) = if main_segs < 256 {
        (10.0f64, 95.0, 5.0)
    } else {
        (0.01f64, 10.0, 0.01)
    };
    let segs_per_sec = main_segs.div_ceil(sections.max(1)) as f64;
    let usable = main_segs as f64;
    let (mut max_ovp, mut max_space) = (0.0f64, 0.0f64);
    while candidate <= end {
        let reserved = (2.0 * (100.0 / candidate + 1.0) + 6.0) * segs_per_sec;
        let ovp = (usable - reserved) * candidate / 100.0;
        let space = usable - reserved - ovp;
        if max_space < space {
            max_space = space;
            max_ovp = candidate;
        }
        candidate += diff;
    }
    max_ovp
}

/// The smallest region size, in bytes, that holds f2fs at this disk offset.
pub fn min_size(disk_offset: u64) -> u64 {
    let seg0 = segment0_offset(disk_offset);
    (MIN_SEGMENTS as u64..)
        .map(|segs| seg0 + segs * SEG_BYTES)
        .find(|&size| Geometry::compute(size, disk_offset).is_ok())
        .expect("some size fits")
}

#[cfg(test)]
mod tests {
    use super::*;
    const MIB: u64 = 1 << 20;

    #[test]
    fn matches_mkfs_for_150_mib() {
        // Values mkfs.f2fs 1.15 prints for a 150 MiB file (dump.f2fs -d 1).
        let g = Geometry::compute(150 * MIB, 0).unwrap();
        assert_eq!(g.block_count, 38400);
        assert_eq!(g.segment_count, 74);
        assert_eq!(g.section_count, 67);
        assert_eq!(
            (
                g.segment_count_sit,
                g.segment_count_nat,
                g.segment_count_ssa
            ),
            (2, 2, 1)
        );
        assert_eq!(
            (
                g.segment0_blkaddr,
                g.sit_blkaddr,
                g.nat_blkaddr,
                g.ssa_blkaddr,
                g.main_blkaddr
            ),
            (512, 1536, 2560, 3584, 4096)
        );
        assert_eq!((g.reserved_segments, g.overprov_segments), (18, 27));
        assert_eq!(g.free_segments(), 61);
        assert_eq!(g.user_block_count(), 20480);
        assert_eq!(g.cur_seg, [3, 32, 15, 0, 1, 2]);
    }

    #[test]
    fn sizes_up_to_64_gib_and_beyond() {
        for size in [64 * MIB, 1 << 30, 8 << 30, 64 << 30, 1 << 40] {
            let g = Geometry::compute(size, 0).unwrap();
            assert!(g.main_blkaddr as u64 * 4096 < size);
            assert!(g.overprov_segments < g.segment_count_main);
            assert_eq!(
                g.segment_count,
                g.segment_count_ckpt
                    + g.segment_count_sit
                    + g.segment_count_nat
                    + g.segment_count_ssa
                    + g.segment_count_main
            );
        }
    }

    #[test]
    fn minimum_size() {
        let min = min_size(0);
        assert!(Geometry::compute(min, 0).is_ok());
        assert_eq!(Geometry::compute(min - 1, 0), Err(GeometryError::TooSmall));
        assert_eq!(Geometry::compute(0, 0), Err(GeometryError::TooSmall));
    }

    #[test]
    fn segment0_aligns_to_the_disk() {
        assert_eq!(segment0_offset(0), 2 * MIB);
        assert_eq!(segment0_offset(MIB), MIB);
        assert_eq!(segment0_offset(2 * MIB - 4096), 2 * MIB + 4096);
        assert_eq!(segment0_offset(2 * MIB - 8192), 8192);
        assert_eq!(segment0_offset(512), 2 * MIB);
    }
}
