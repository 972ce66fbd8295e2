//! Reading an f2fs back: the superblock (first valid of the two copies) and the checkpoint in
//! use, summarized for `imgtool inspect`.
//! Spec: <https://www.kernel.org/doc/html/latest/filesystems/f2fs.html>.

use std::io::{Read, Seek, SeekFrom};

use crate::ondisk::*;
use crate::{format_uuid, Error};

/// What `imgtool inspect` shows of an f2fs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Info {
    pub label: String,
    pub uuid: String,
    pub version: String,
    pub block_size: u32,
    pub block_count: u64,
    pub segment_size: u32,
    pub segment_count: u32,
    pub segs_per_sec: u32,
    pub secs_per_zone: u32,
    pub section_count: u32,
    pub zone_count: u32,
    pub segment_count_ckpt: u32,
    pub segment_count_sit: u32,
    pub segment_count_nat: u32,
    pub segment_count_ssa: u32,
    pub segment_count_main: u32,
    pub segment0_blkaddr: u32,
    pub main_blkaddr: u32,
    pub features: u32,
    pub sb_checksum: bool,
    /// From the checkpoint in use (None when no valid checkpoint was found).
    pub checkpoint: Option<CheckpointInfo>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointInfo {
    pub version: u64,
    pub pack: u32,
    pub clean_unmount: bool,
    pub user_block_count: u64,
    pub valid_block_count: u64,
    pub free_segment_count: u32,
    pub valid_inode_count: u32,
}

fn read_at<R: Read + Seek>(r: &mut R, at: u64, buf: &mut [u8]) -> Result<(), Error> {
    r.seek(SeekFrom::Start(at))?;
    r.read_exact(buf)?;
    Ok(())
}

/// Why this superblock is not usable, if it is not.
fn check(sb: &Superblock) -> Result<(), String> {
    if sb.magic != MAGIC {
        return Err(format!("bad magic {:#010x} (want {MAGIC:#010x})", sb.magic));
    }
    if sb.feature & FEATURE_SB_CHKSUM != 0 {
        if sb.checksum_offset != SB_CHKSUM_OFFSET {
            return Err(format!("bad checksum offset {}", sb.checksum_offset));
        }
        let want = sb.compute_crc();
        if sb.crc != want {
            return Err(format!(
                "superblock CRC {:#010x}, computed {want:#010x}",
                sb.crc
            ));
        }
    }
    if sb.log_blocksize != LOG_BLOCK_SIZE || sb.log_blocks_per_seg != LOG_BLOCKS_PER_SEG {
        return Err(format!(
            "unsupported block/segment size (log {} / {})",
            sb.log_blocksize, sb.log_blocks_per_seg
        ));
    }
    if sb.segs_per_sec == 0 || sb.secs_per_zone == 0 {
        return Err("zero segments per section or sections per zone".into());
    }
    Ok(())
}

/// Read the superblock of the f2fs at `offset`: the first copy, or the second if the first is
/// damaged.
pub fn read_superblock<R: Read + Seek>(r: &mut R, offset: u64) -> Result<Superblock, Error> {
    let mut errs = vec![];
    for copy in 0..2u64 {
        let mut buf = [0u8; SUPER_SIZE];
        read_at(
            r,
            offset + copy * BLOCK_SIZE as u64 + SUPER_OFFSET as u64,
            &mut buf,
        )?;
        let sb = Superblock::parse(&buf);
        match check(&sb) {
            Ok(()) => return Ok(sb),
            Err(e) => errs.push(format!("copy {}: {e}", copy + 1)),
        }
    }
    Err(Error::NotF2fs(errs.join("; ")))
}

/// The valid checkpoint with the higher version (its pack number, 1 or 2), if any.
pub fn read_checkpoint<R: Read + Seek>(
    r: &mut R,
    offset: u64,
    sb: &Superblock,
) -> Result<Option<(u32, Checkpoint)>, Error> {
    let mut best: Option<(u32, Checkpoint)> = None;
    for pack in 0..2u32 {
        let start = sb.cp_blkaddr as u64 + (pack as u64) * BLOCKS_PER_SEG as u64;
        let mut buf = vec![0u8; BLOCK_SIZE];
        read_at(r, offset + start * BLOCK_SIZE as u64, &mut buf)?;
        let cp = Checkpoint::parse(&buf);
        if cp.checksum_offset != CP_CHKSUM_OFFSET || cp.crc != cp.compute_crc() {
            continue;
        }
        // The pack is whole only if its last block repeats the first.
        let total = cp.cp_pack_total_block_count as u64;
        if total == 0 || total > BLOCKS_PER_SEG as u64 {
            continue;
        }
        let mut last = vec![0u8; BLOCK_SIZE];
        read_at(
            r,
            offset + (start + total - 1) * BLOCK_SIZE as u64,
            &mut last,
        )?;
        if Checkpoint::parse(&last).checkpoint_ver != cp.checkpoint_ver {
            continue;
        }
        if best
            .as_ref()
            .is_none_or(|(_, b)| cp.checkpoint_ver > b.checkpoint_ver)
        {
            best = Some((pack + 1, cp));
        }
    }
    Ok(best)
}

fn c_string(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// Superblock and checkpoint summary of the f2fs at `offset`.
pub fn inspect<R: Read + Seek>(r: &mut R, offset: u64) -> Result<Info, Error> {
    let sb = read_superblock(r, offset)?;
    let checkpoint = read_checkpoint(r, offset, &sb)?.map(|(pack, cp)| CheckpointInfo {
        version: cp.checkpoint_ver,
        pack,
        clean_unmount: cp.ckpt_flags & CP_UMOUNT_FLAG != 0,
        user_block_count: cp.user_block_count,
        valid_block_count: cp.valid_block_count,
        free_segment_count: cp.free_segment_count,
        valid_inode_count: cp.valid_inode_count,
    });
    Ok(Info {
        label: sb.label(),
        uuid: format_uuid(&sb.uuid),
        version: c_string(&sb.version),
        block_size: 1 << sb.log_blocksize,
        block_count: sb.block_count,
        segment_size: 1 << (sb.log_blocksize + sb.log_blocks_per_seg),
        segment_count: sb.segment_count,
        segs_per_sec: sb.segs_per_sec,
        secs_per_zone: sb.secs_per_zone,
        section_count: sb.section_count,
        zone_count: sb.section_count / sb.secs_per_zone,
        segment_count_ckpt: sb.segment_count_ckpt,
        segment_count_sit: sb.segment_count_sit,
        segment_count_nat: sb.segment_count_nat,
        segment_count_ssa: sb.segment_count_ssa,
        segment_count_main: sb.segment_count_main,
        segment0_blkaddr: sb.segment0_blkaddr,
        main_blkaddr: sb.main_blkaddr,
        features: sb.feature,
        sb_checksum: sb.feature & FEATURE_SB_CHKSUM != 0,
        checkpoint,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{format, Options, ZeroMode};
    use std::io::Cursor;

    #[test]
    fn inspect_reads_what_format_wrote() {
        let size = 100 << 20;
        let mut dev = Cursor::new(vec![0u8; size as usize]);
        let o = Options {
            label: "APPDATA".into(),
            zero: ZeroMode::Assume,
            ..Default::default()
        };
        let p = format(&mut dev, 0, size, &o).unwrap();
        let info = inspect(&mut dev, 0).unwrap();
        assert_eq!(info.label, "APPDATA");
        assert_eq!(info.block_size, 4096);
        assert_eq!(info.block_count, size / 4096);
        assert_eq!(info.segment_count_main, p.geometry.segment_count_main);
        assert_eq!(info.version, "imgtool-f2fs");
        let cp = info.checkpoint.unwrap();
        assert_eq!(cp.pack, 1);
        assert!(cp.clean_unmount);
        assert_eq!(cp.valid_block_count, 2);

        // A damaged first copy falls back to the second.
        dev.get_mut()[1024 + 200] ^= 0xff;
        assert_eq!(inspect(&mut dev, 0).unwrap().label, "APPDATA");
        dev.get_mut()[4096 + 1024] ^= 0xff;
        let e = inspect(&mut dev, 0).unwrap_err().to_string();
        assert!(e.contains("not an f2fs"), "{e}");
    }
}
