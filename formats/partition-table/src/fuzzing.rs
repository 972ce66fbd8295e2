//! The body of the `partition_table` fuzz target (fuzz/fuzz_targets/partition_table.rs), also
//! replayed on every kept crash input by tests/fuzz_regressions.rs: one copy, called by both.
//!
//! Besides "never panic, never hang", a table that reads is encoded again and read back, and
//! must give the same [`Table`] (a panic on a mismatch, so the fuzzer reports it):
//! - MBR: sector 0 from [`MbrSpec::to_bytes`];
//! - GPT: protective MBR and both copies from [`GptSpec::to_bytes`], on a disk of the input's
//!   size. The reader takes tables fwup would never write (overlapping entries, entries outside
//!   the usable area, more than 128 slots, a disk too small for two copies); the encoder
//!   refuses those by design ([`GptSpec::validate`]), so they are not round-tripped.
//!
//! [`MbrSpec::to_bytes`]: crate::MbrSpec::to_bytes
//! [`GptSpec::to_bytes`]: crate::GptSpec::to_bytes
//! [`GptSpec::validate`]: crate::GptSpec::validate

use std::io::Cursor;

use crate::{read, Table, SECTOR_SIZE};

/// Read `data` as a disk, and check the round trip above.
pub fn fuzz_one(data: &[u8]) {
    let Ok(Some(table)) = read(&mut Cursor::new(data)) else {
        return;
    };
    let disk = match &table {
        Table::Mbr(m) => m
            .to_bytes()
            .unwrap_or_else(|e| panic!("a read MBR does not encode: {e}"))
            .to_vec(),
        Table::Gpt(g) => {
            let size = data.len() as u64 / SECTOR_SIZE * SECTOR_SIZE;
            if g.validate(size).is_err() {
                return;
            }
            let b = g
                .to_bytes(size)
                .unwrap_or_else(|e| panic!("a valid read GPT does not encode: {e}"));
            let mut disk = vec![0u8; size as usize];
            disk[..512].copy_from_slice(&b.protective_mbr);
            disk[512..512 + b.primary.len()].copy_from_slice(&b.primary);
            let at = (b.backup_lba * SECTOR_SIZE) as usize;
            disk[at..at + b.backup.len()].copy_from_slice(&b.backup);
            disk
        }
    };
    let back = read(&mut Cursor::new(&disk[..]))
        .unwrap_or_else(|e| panic!("a re-encoded table does not read: {e}"));
    assert_eq!(
        back.as_ref(),
        Some(&table),
        "table changed in read -> encode -> read"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{GptPartition, GptSpec, Guid, MbrPartition, MbrSpec};

    fn part(start_lba: u64, sectors: u64, bootable: bool) -> GptPartition {
        GptPartition {
            start_lba,
            sectors,
            type_guid: Guid([0x11; 16]),
            guid: Guid([0x22; 16]),
            name: "rootfs".into(),
            attributes: if bootable { 4 } else { 0 },
            bootable,
        }
    }

    /// Real tables go through the round trip (and pass): an MBR and a GPT with a gap slot.
    #[test]
    fn written_tables_round_trip() {
        let mbr = MbrSpec {
            disk_signature: 0x1234_5678,
            partitions: [
                Some(MbrPartition {
                    start_lba: 63,
                    sectors: 100,
                    kind: 0x0c,
                    bootable: true,
                }),
                None,
                Some(MbrPartition {
                    start_lba: 200,
                    sectors: 50,
                    kind: 0x83,
                    bootable: false,
                }),
                None,
            ],
            ..Default::default()
        };
        let mut disk = vec![0u8; 512 * 300];
        disk[..512].copy_from_slice(&mbr.to_bytes().unwrap());
        assert!(matches!(
            read(&mut Cursor::new(&disk[..])),
            Ok(Some(Table::Mbr(_)))
        ));
        fuzz_one(&disk);

        let size = 512 * 200;
        let gpt = GptSpec {
            disk_guid: Guid([0x33; 16]),
            partitions: vec![Some(part(34, 10, true)), None, Some(part(50, 20, false))],
        };
        let mut disk = Cursor::new(vec![0u8; size]);
        crate::write_gpt(&mut disk, &gpt, size as u64).unwrap();
        let disk = disk.into_inner();
        assert_eq!(
            read(&mut Cursor::new(&disk[..])).unwrap(),
            Some(Table::Gpt(gpt))
        );
        fuzz_one(&disk);
    }
}
