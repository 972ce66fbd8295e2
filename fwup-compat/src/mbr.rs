//! `mbr` sections and `mbr_write`: up to four primary partitions, up to eight logical ones
//! behind an extended partition in slot 3 (one EBR per logical partition, in consecutive
//! blocks from the extended partition's start), bootstrap code or an Intel OSIP header in the
//! first 440 bytes, the disk signature, and `expand`.
//!
//! This module reads the `mbr` section and applies fwup's rules (numbering, `expand`, where the
//! EBRs go, overlap checks); the bytes come from partition-table's MBR encoder, the same one
//! the layout writer uses.
//!
//! Spec: fwup's docs/fwup.md "mbr" (partition rules, OSIP fields).

use crate::config::{strtoull, Section};
use partition_table::{BootArea, LogicalPartition, MbrPartition, MbrSpec, OsImage, Osip};

const PRIMARY: usize = 4;
const LOGICAL: usize = 8;
const ALL: usize = PRIMARY + LOGICAL;

#[derive(Clone, Copy, Default, Debug)]
struct Part {
    boot: bool,
    expand: bool,
    kind: u8,
    offset: u32,
    count: u32,
    /// Block of the EBR describing a logical partition (0 for primaries).
    record: u32,
}

struct Table {
    parts: [Part; ALL],
    logical: usize,
}

fn is_extended(kind: u8) -> bool {
    kind == 0x05 || kind == 0x0f
}

fn to_table(sec: &Section) -> Result<Table, String> {
    let mut t = Table {
        parts: [Part::default(); ALL],
        logical: 0,
    };
    let mut found = 0u32;
    for p in sec.secs("partition") {
        let ix = strtoull(p.title()) as usize;
        if ix >= ALL {
            return Err(format!("partition must be numbered 0 through {}", ALL - 1));
        }
        if found & (1 << ix) != 0 {
            return Err(format!(
                "invalid or duplicate partition number found for {ix}"
            ));
        }
        found |= 1 << ix;
        if ix >= PRIMARY {
            t.logical = ix - PRIMARY + 1;
        }
        let kind = p.get_int("type");
        if !(0..=0xff).contains(&kind) {
            return Err(format!("partition {ix}'s type must be between 0 and 255"));
        }
        let off_str = p.get_str("block-offset").unwrap_or("");
        if off_str.is_empty() {
            return Err(format!("partition {ix}'s block_offset is required"));
        }
        // A negative offset gets fwup's range message (its strtoul wraps it past 2^32).
        let offset = match crate::config::parse_c_int(off_str) {
            Some(v) if (0..u32::MAX as i64).contains(&v) => v as u32,
            Some(_) => {
                return Err(format!(
                    "partition {ix}'s block_offset must be positive and less than 2^32 - 1: '{off_str}'"
                ))
            }
            None => return Err(format!("error parsing partition {ix}'s block offset")),
        };
        let mut count = p.get_int("block-count");
        let part = &mut t.parts[ix];
        part.kind = kind as u8;
        part.offset = offset;
        if is_extended(kind as u8) {
            if ix != 3 {
                return Err("only partition 3 may be specified as the extended partition".into());
            }
            part.boot = false;
            part.expand = true;
            if count >= i32::MAX as i64 {
                count = 1;
            }
        } else {
            part.boot = p.get_bool("boot");
            part.expand = p.get_bool("expand");
            if count >= i32::MAX as i64 {
                return Err(format!(
                    "partition {ix}'s block-count must be specified and less than 2^31 - 1"
                ));
            }
        }
        part.count = count as u32;
    }
    if t.logical > 0 {
        if !is_extended(t.parts[3].kind) {
            return Err("to use more than 4 partitions with MBR, partition 3 must have extended partition type 0xf or 0x5".into());
        }
        let first = t.parts[3].offset;
        for (n, i) in (PRIMARY..ALL).enumerate() {
            if t.parts[i].kind == 0 {
                break;
            }
            t.parts[i].record = first + n as u32;
        }
    }
    Ok(t)
}

fn to_osip(sec: &Section) -> Result<Option<Osip>, String> {
    if !sec.get_bool("include-osip") {
        return Ok(None);
    }
    let mut images = vec![OsImage::default(); 16];
    let mut found = 0u32;
    let mut largest: i64 = -1;
    for o in sec.secs("osii") {
        let ix = strtoull(o.title()) as usize;
        if ix >= 15 {
            return Err("osii must be numbered 0 through 15".into());
        }
        if found & (1 << ix) != 0 {
            return Err("invalid or duplicate osii number found".into());
        }
        found |= 1 << ix;
        largest = largest.max(ix as i64);
        let g = |k: &str| o.get_int(k);
        images[ix] = OsImage {
            os_minor: g("os-minor") as u16,
            os_major: g("os-major") as u16,
            start_block: g("start-block-offset") as u32,
            ddr_load_address: g("ddr-load-address") as u32,
            entry_point: g("entry-point") as u32,
            size_blocks: g("image-size-blocks") as u32,
            attribute: g("attribute") as u8,
        };
    }
    if largest < 0 {
        return Err("need to specify one or more osii".into());
    }
    images.truncate(largest as usize + 1);
    Ok(Some(Osip {
        major: sec.get_int("osip-major") as u8,
        minor: sec.get_int("osip-minor") as u8,
        pointers: sec.get_int("osip-num-pointers") as u8,
        images,
    }))
}

/// Grow `expand` partitions to the end of the destination (`num_blocks`, or the end of the
/// furthest partition when that is larger or the size is unknown).
fn expanded(t: &Table, num_blocks: u32) -> Table {
    let mut n = num_blocks;
    for p in &t.parts {
        n = n.max(p.offset.wrapping_add(p.count));
    }
    let mut out = Table {
        parts: t.parts,
        logical: t.logical,
    };
    for p in out.parts.iter_mut() {
        // Checked: offset + count can pass 2^32 in a hostile meta.conf (verify rejects it).
        if p.expand && p.offset.checked_add(p.count).is_some_and(|end| n > end) {
            p.count = n - p.offset;
        }
        p.expand = false;
    }
    out
}

fn verify(t: &Table) -> Result<(), String> {
    let mut expanding = false;
    for i in 0..ALL {
        let p = &t.parts[i];
        let (il, ir) = (p.offset, p.offset.wrapping_add(p.count));
        if p.kind == 0 || (il == ir && !p.expand) {
            continue;
        }
        if expanding {
            return Err(
                "a partition can't be specified after the one with \"expand = true\"".into(),
            );
        }
        if p.expand && i != 3 && !is_extended(p.kind) {
            expanding = true;
        }
        for j in i + 1..ALL {
            let q = &t.parts[j];
            if q.kind == 0 {
                continue;
            }
            let (jl, jr) = (q.offset, q.offset.wrapping_add(q.count));
            if jl == jr {
                continue;
            }
            let required = i == 3 && is_extended(p.kind);
            let overlaps = !(il >= jr || ir <= jl);
            let ebr_i = p.record > 0 && p.record >= jl && p.record < jr;
            let ebr_j = q.record > 0 && q.record >= il && q.record < ir;
            if overlaps != required {
                return Err(if required {
                    format!(
                        "partition 3, the extended partition, is expected to contain partition {j}"
                    )
                } else {
                    format!(
                        "partitions {i} (blocks {il} to {ir}) and {j} (blocks {jl} to {jr}) overlap"
                    )
                });
            }
            if ebr_j != required {
                return Err(if required {
                    format!("partition 3, the extended partition, is expected to contain the EBR for partition {j}")
                } else {
                    format!(
                        "partition {i} (blocks {il} to {ir}) overlaps the EBR at {} for partition {j}",
                        q.record
                    )
                });
            }
            if ebr_i {
                return Err(format!(
                    "partition {j} (blocks {jl} to {jr}) overlaps the EBR at {} for partition {i}",
                    p.record
                ));
            }
        }
    }
    Ok(())
}

/// Create-time check of an `mbr` section (fwup's mbr_verify_cfg).
pub fn verify_cfg(sec: &Section) -> Result<(), String> {
    let code = sec.get_str("bootstrap-code");
    if code.is_some_and(|c| c.len() != 880) {
        return Err("bootstrap-code should be exactly 440 bytes".into());
    }
    let osip = to_osip(sec)?;
    if osip.is_some() && code.is_some() {
        return Err("cannot specify OSIP if including bootstrap code".into());
    }
    let t = to_table(sec)?;
    verify(&expanded(&t, 0))
}

/// A table slot as partition-table's entry: `None` when the slot was never given.
fn spec_part(p: &Part) -> Option<MbrPartition> {
    (p.kind != 0 || p.offset != 0 || p.count != 0).then_some(MbrPartition {
        start_lba: p.offset,
        sectors: p.count,
        kind: p.kind,
        bootable: p.boot,
    })
}

/// The blocks `mbr_write` writes: (block number, 512 bytes), the MBR first, then one EBR per
/// logical partition. `num_blocks` is the destination size in blocks (0 if unknown). The bytes
/// come from partition-table's encoder; this module only applies fwup's config rules.
pub fn encode(sec: &Section, num_blocks: u32) -> Result<Vec<(u64, [u8; 512])>, String> {
    let t = to_table(sec)?;
    let osip = to_osip(sec)?;
    let boot_area = match (sec.get_str("bootstrap-code"), osip) {
        (Some(h), _) => BootArea::Code(Box::new(
            common::hex::decode(h)
                .and_then(|b| <[u8; 440]>::try_from(b).ok())
                .ok_or("bootstrap-code should be exactly 440 bytes")?,
        )),
        (None, Some(o)) => BootArea::Osip(o),
        (None, None) => BootArea::Zero,
    };
    let signature = sec
        .get_str("signature")
        .map(|s| strtoull(s) as u32)
        .unwrap_or(0);
    let x = expanded(&t, num_blocks);
    // fwup builds the records even when the expanded layout fails its checks.
    let _ = verify(&x);
    let spec = MbrSpec {
        disk_signature: signature,
        partitions: std::array::from_fn(|i| spec_part(&x.parts[i])),
        logical: x.parts[PRIMARY..PRIMARY + x.logical]
            .iter()
            .map(|p| LogicalPartition {
                ebr_lba: p.record,
                partition: MbrPartition {
                    start_lba: p.offset,
                    sectors: p.count,
                    kind: p.kind,
                    bootable: false,
                },
            })
            .collect(),
        boot_area,
    };
    spec.to_sectors().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse, Mode, Vars};

    fn mbr(text: &str) -> Section {
        let top = parse(text.as_bytes(), "t.conf", &mut Vars::default(), Mode::Apply).unwrap();
        top.secs("mbr")[0].clone()
    }

    #[test]
    fn logical_partitions_get_chained_ebrs() {
        let s = mbr(r#"mbr m {
            signature = 0x01020304
            partition 0 { block-offset = 64 block-count = 64 type = 0xc boot = true }
            partition 3 { block-offset = 1000 type = 0xf }
            partition 4 { block-offset = 1002 block-count = 100 type = 0x83 }
            partition 5 { block-offset = 1200 block-count = 50 type = 0x83 expand = true }
        }"#);
        verify_cfg(&s).unwrap();
        let out = encode(&s, 4000).unwrap();
        assert_eq!(out.len(), 3);
        let m = &out[0].1;
        assert_eq!(&m[440..444], &[4, 3, 2, 1]);
        assert_eq!(m[446], 0x80);
        assert_eq!(m[446 + 16 * 3 + 4], 0x0f);
        // The extended partition reaches the end of the 4000-block destination.
        let ext_count = u32::from_le_bytes(m[446 + 48 + 12..446 + 64].try_into().unwrap());
        assert_eq!(ext_count, 3000);
        // EBRs sit in consecutive blocks from the extended partition's start.
        assert_eq!((out[1].0, out[2].0), (1000, 1001));
        let e1 = &out[1].1;
        assert_eq!(e1[446 + 4], 0x83);
        assert_eq!(u32::from_le_bytes(e1[454..458].try_into().unwrap()), 2);
        assert_eq!(e1[462 + 4], 0x0f, "link to the next EBR");
        let e2 = &out[2].1;
        assert_eq!(
            u32::from_le_bytes(e2[458..462].try_into().unwrap()),
            4000 - 1200
        );
        assert_eq!(e2[462..478], [0u8; 16], "last EBR has no link");
    }

    #[test]
    fn overlaps_and_bad_layouts_are_errors() {
        let s = mbr(r#"mbr m {
            partition 0 { block-offset = 64 block-count = 100 type = 0x83 }
            partition 1 { block-offset = 100 block-count = 100 type = 0x83 }
        }"#);
        assert!(verify_cfg(&s).unwrap_err().contains("overlap"));
        let s = mbr(r#"mbr m { partition 4 { block-offset = 64 block-count = 1 type = 0x83 } }"#);
        assert!(verify_cfg(&s).unwrap_err().contains("partition 3"));
        let s = mbr(r#"mbr m { partition 1 { block-offset = 64 block-count = 1 type = 0xf } }"#);
        assert!(verify_cfg(&s).unwrap_err().contains("only partition 3"));
    }

    #[test]
    fn osip_header_checksum() {
        let s = mbr(r#"mbr m {
            include-osip = true
            osii 0 { os-major = 1 start-block-offset = 0x800 image-size-blocks = 0x100 }
            partition 0 { block-offset = 4096 block-count = 1024 type = 0x83 }
        }"#);
        verify_cfg(&s).unwrap();
        let m = encode(&s, 0).unwrap()[0].1;
        assert_eq!(&m[..4], b"$OS$");
        assert_eq!(u16::from_le_bytes([m[10], m[11]]), 56);
        assert_eq!(
            m[..56].iter().fold(0u8, |a, b| a ^ b),
            0,
            "XOR over the header is 0"
        );
    }
}
