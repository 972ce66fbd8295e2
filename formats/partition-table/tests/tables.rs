//! Round trips through the independent readers (mbrman, gpt crate), validation, sparseness.

use std::io::Cursor;

use partition_table::gpt::{GptHeader, ENTRY_COUNT, FIRST_USABLE_LBA};
use partition_table::{
    read, write_gpt, write_mbr, Error, GptPartition, GptSpec, Guid, MbrPartition, MbrSpec, Table,
};

const MIB: u64 = 1 << 20;

fn mbr_spec() -> MbrSpec {
    MbrSpec {
        disk_signature: 0x0102_0304,
        partitions: [
            Some(MbrPartition {
                start_lba: 63,
                sectors: 77261,
                kind: 0x0c,
                bootable: true,
            }),
            Some(MbrPartition {
                start_lba: 77324,
                sectors: 289044,
                kind: 0x83,
                bootable: false,
            }),
            None,
            Some(MbrPartition {
                start_lba: 366368,
                sectors: 2048,
                kind: 0x82,
                bootable: false,
            }),
        ],
        ..Default::default()
    }
}

#[test]
fn mbr_round_trip_and_bytes() {
    let spec = mbr_spec();
    let mut dev = Cursor::new(vec![0xaau8; 1024]);
    write_mbr(&mut dev, &spec, 400 * MIB).unwrap();
    let b = dev.get_ref();
    assert_eq!(&b[440..446], &[4, 3, 2, 1, 0, 0]);
    // Slot 0: boot, CHS of 63 = c0 h1 s1, type, CHS of 77323 = c4 h207 s23, LBA, count.
    assert_eq!(
        &b[446..462],
        &[0x80, 1, 1, 0, 0x0c, 207, 23, 4, 63, 0, 0, 0, 0xcd, 0x2d, 1, 0]
    );
    assert_eq!(&b[478..494], &[0; 16], "unused slot is zero");
    assert_eq!(&b[510..512], &[0x55, 0xaa]);
    assert!(
        b[512..].iter().all(|&x| x == 0xaa),
        "only sector 0 is written"
    );
    assert_eq!(read(&mut dev).unwrap(), Some(Table::Mbr(spec)));
}

#[test]
fn mbr_chs_past_1023_cylinders_is_zero_as_fwup_writes() {
    use partition_table::mbr::lba_to_chs;
    assert_eq!(lba_to_chs(63 * 255 * 1023).unwrap().cylinder, 1023);
    assert_eq!(lba_to_chs(63 * 255 * 1023 + 1), None);
    // Bytes recorded from real fwup 1.16 for a partition at 63 of 20000000 sectors: start
    // CHS 0/1/1, end past cylinder 1023 so zero.
    let spec = MbrSpec {
        partitions: [
            Some(MbrPartition {
                start_lba: 63,
                sectors: 20_000_000,
                kind: 0x83,
                bootable: false,
            }),
            None,
            None,
            None,
        ],
        ..Default::default()
    };
    let b = spec.to_bytes().unwrap();
    assert_eq!(
        &b[446..462],
        &[0, 1, 1, 0, 0x83, 0, 0, 0, 0x3f, 0, 0, 0, 0x00, 0x2d, 0x31, 0x01]
    );
}

#[test]
fn mbr_validation() {
    let mut s = mbr_spec();
    let err = write_mbr(&mut Cursor::new(vec![]), &s, 100 * MIB)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("partition 1") && err.contains("204800 sectors"),
        "{err}"
    );
    s.partitions[2] = Some(MbrPartition {
        start_lba: 100,
        sectors: 10,
        kind: 0x83,
        bootable: false,
    });
    let err = s.validate(400 * MIB).unwrap_err().to_string();
    assert!(
        err.contains("partition 0") && err.contains("overlap partition 2"),
        "{err}"
    );
    s.partitions[2] = Some(MbrPartition {
        start_lba: 400000,
        sectors: 10,
        kind: 0,
        bootable: false,
    });
    assert!(s
        .validate(400 * MIB)
        .unwrap_err()
        .to_string()
        .contains("type 0"));
}

fn guid(s: &str) -> Guid {
    s.parse().unwrap()
}

fn gpt_spec() -> GptSpec {
    let linux = guid("0fc63daf-8483-4772-8e79-3d69e47d8e47");
    GptSpec {
        disk_guid: guid("b443fbeb-2c93-481b-88b3-0ecb0aeba911"),
        partitions: vec![
            Some(GptPartition {
                start_lba: 64,
                sectors: 2048,
                type_guid: guid("c12a7328-f81f-11d2-ba4b-00a0c93ec93b"),
                guid: guid("5278721d-0089-4768-85df-b8f1b97e6684"),
                name: "efi-part.vfat".into(),
                attributes: 0x4,
                bootable: true,
            }),
            None,
            Some(GptPartition {
                start_lba: 4096,
                sectors: 100,
                type_guid: linux,
                guid: guid("fcc205c8-2f1c-4dcd-bef4-7b209aa15cca"),
                name: "rootfs ü".into(),
                attributes: 1 << 60,
                bootable: false,
            }),
        ],
    }
}

#[test]
fn gpt_round_trip_keeps_slots_and_is_sparse() {
    let spec = gpt_spec();
    let size = 8 * MIB;
    let mut dev = Cursor::new(vec![0xaau8; size as usize]);
    write_gpt(&mut dev, &spec, size).unwrap();
    let b = dev.get_ref();
    let n = (size / 512) as usize;
    // Written: sectors 0..34 and the last 33; the rest untouched.
    assert!(b[34 * 512..(n - 33) * 512].iter().all(|&x| x == 0xaa));
    assert_eq!(&b[512..520], b"EFI PART");
    assert_eq!(&b[(n - 1) * 512..(n - 1) * 512 + 8], b"EFI PART");
    assert_eq!(
        u32::from_le_bytes(b[512 + 80..512 + 84].try_into().unwrap()),
        ENTRY_COUNT as u32
    );
    // Protective MBR.
    assert_eq!(
        &b[446..462],
        &[0, 0, 2, 0, 0xee, 0xff, 0xff, 0xff, 1, 0, 0, 0, 0xff, 0x3f, 0, 0]
    );
    // Slot 1 stays empty: entry 2 is at slot 2.
    assert!(b[1024 + 128..1024 + 256].iter().all(|&x| x == 0));
    assert_eq!(read(&mut dev).unwrap(), Some(Table::Gpt(spec)));
}

#[test]
fn gpt_validation() {
    let mut s = gpt_spec();
    assert!(matches!(
        s.validate(30 * 512),
        Err(Error::DiskTooSmall { .. })
    ));
    let n: u64 = 4200;
    let err = s.validate(n * 512).unwrap_err().to_string();
    assert!(
        err.contains("partition 2") && err.contains("usable area 34..=4166"),
        "{err}"
    );
    if let Some(p) = s.partitions[2].as_mut() {
        p.start_lba = 2000;
    }
    let err = s.validate(MIB * 8).unwrap_err().to_string();
    assert!(err.contains("overlap partition 2"), "{err}");
    if let Some(p) = s.partitions[2].as_mut() {
        p.start_lba = FIRST_USABLE_LBA - 1;
    }
    assert!(s.validate(MIB * 8).is_err());
    if let Some(p) = s.partitions[2].as_mut() {
        p.start_lba = 5000;
        p.name = "x".repeat(37);
    }
    assert!(s
        .validate(MIB * 8)
        .unwrap_err()
        .to_string()
        .contains("37 UTF-16 units"));
    s.partitions.resize(129, None);
    assert!(matches!(
        s.validate(MIB * 8),
        Err(Error::TooManyPartitions { count: 129, .. })
    ));
}

#[test]
fn gpt_header_reads_back_and_odd_entry_arrays_are_refused() {
    let spec = gpt_spec();
    let size = 8 * MIB;
    let mut dev = Cursor::new(vec![0u8; size as usize]);
    write_gpt(&mut dev, &spec, size).unwrap();
    let sector = |b: &[u8], lba: u64| b[(lba * 512) as usize..(lba * 512 + 512) as usize].to_vec();
    let h = GptHeader::from_sector(&sector(dev.get_ref(), 1)).unwrap();
    assert_eq!(h.to_sector().to_vec(), sector(dev.get_ref(), 1));
    assert_eq!((h.entry_size, h.entry_count), (128, ENTRY_COUNT as u32));
    let mut bad = sector(dev.get_ref(), 1);
    bad[40] ^= 1;
    assert_eq!(GptHeader::from_sector(&bad), None, "a bad CRC is no header");

    // A valid primary header whose entries are 0 bytes long (the `gpt` crate asserts on
    // it), or too many: an error naming the field, never a panic.
    for (field, value, want) in [
        (
            84,
            0,
            "primary header: partition entry size 0 (only 128 is supported)",
        ),
        (
            80,
            1 << 20,
            "primary header: 1048576 partition entries (at most 16384)",
        ),
    ] {
        let mut d = dev.clone();
        let mut h = sector(d.get_ref(), 1);
        h[field..field + 4].copy_from_slice(&(value as u32).to_le_bytes());
        h[16..20].fill(0);
        let crc = crc32fast::hash(&h[..92]);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        d.get_mut()[512..1024].copy_from_slice(&h);
        let err = read(&mut d).unwrap_err().to_string();
        assert_eq!(err, format!("GPT: {want}"));
        // Also when the disk ends right after the header's 92 bytes.
        let mut short = Cursor::new(d.get_ref()[..512 + 92].to_vec());
        let err = read(&mut short).unwrap_err().to_string();
        assert_eq!(err, format!("GPT: {want}"));
    }
}

#[test]
fn read_blank_and_short() {
    assert_eq!(read(&mut Cursor::new(vec![0u8; 4096])).unwrap(), None);
    assert_eq!(read(&mut Cursor::new(vec![0u8; 100])).unwrap(), None);
}

fn part(start_lba: u32, sectors: u32, kind: u8) -> MbrPartition {
    MbrPartition {
        start_lba,
        sectors,
        kind,
        bootable: false,
    }
}

#[test]
fn mbr_logical_partitions_get_chained_ebrs_as_fwup_writes() {
    use partition_table::LogicalPartition;
    let spec = MbrSpec {
        partitions: [
            Some(part(63, 1000, 0x83)),
            None,
            None,
            Some(part(5000, 1000, 0x05)),
        ],
        logical: vec![
            LogicalPartition {
                ebr_lba: 5000,
                partition: part(5010, 100, 0x83),
            },
            LogicalPartition {
                ebr_lba: 5001,
                partition: part(5200, 100, 0x0c),
            },
            LogicalPartition {
                ebr_lba: 5002,
                partition: part(5400, 600, 0x83),
            },
        ],
        ..Default::default()
    };
    spec.validate(6000 * 512).unwrap();
    let sectors = spec.to_sectors().unwrap();
    let at: Vec<u64> = sectors.iter().map(|(lba, _)| *lba).collect();
    assert_eq!(at, [0, 5000, 5001, 5002]);
    // EBR 5001 as real fwup 1.16 writes it: the partition relative to the EBR (199), then
    // the link to the next EBR (relative to the extended partition: 2, one sector).
    let ebr = &sectors[2].1;
    assert_eq!(
        &ebr[446..478],
        &[
            0, 3, 0x0b, 0, 0x0c, 4, 0x2f, 0, 0xc7, 0, 0, 0, 0x64, 0, 0, 0, //
            0, 0, 3, 0, 0x0f, 0, 3, 0, 2, 0, 0, 0, 1, 0, 0, 0,
        ]
    );
    assert_eq!(
        &sectors[3].1[462..478],
        &[0; 16],
        "the last EBR has no link"
    );
    assert_eq!(&ebr[510..], &[0x55, 0xaa]);

    let mut dev = Cursor::new(vec![0u8; 6000 * 512]);
    write_mbr(&mut dev, &spec, 6000 * 512).unwrap();
    assert_eq!(&dev.get_ref()[5001 * 512..5002 * 512], &ebr[..]);

    let mut bad = spec.clone();
    bad.partitions[3] = Some(part(5000, 1000, 0x83));
    let e = bad.validate(6000 * 512).unwrap_err().to_string();
    assert!(e.contains("extended"), "{e}");
    let mut bad = spec.clone();
    bad.logical[2].partition.start_lba = 5001;
    let e = bad.validate(6000 * 512).unwrap_err().to_string();
    assert!(e.contains("EBR"), "{e}");
}

#[test]
fn mbr_osip_header_xors_to_zero_and_fits() {
    use partition_table::{BootArea, OsImage, Osip};
    let osip = Osip {
        major: 1,
        minor: 0,
        pointers: 1,
        images: vec![OsImage {
            os_major: 1,
            start_block: 0x800,
            size_blocks: 0x100,
            ..Default::default()
        }],
    };
    let spec = MbrSpec {
        boot_area: BootArea::Osip(osip.clone()),
        ..Default::default()
    };
    let b = spec.to_bytes().unwrap();
    assert_eq!(&b[..4], b"$OS$");
    assert_eq!(u16::from_le_bytes([b[10], b[11]]), 56);
    assert_eq!(b[..56].iter().fold(0u8, |a, x| a ^ x), 0);
    let too_many = Osip {
        images: vec![OsImage::default(); 18],
        ..osip
    };
    assert!(too_many.to_bytes().is_err());
}
