//! Host-side tests: round trips, errors, redundant copy selection, and fwup byte-identity.

use uboot_env::block::{self, RawBlock};
use uboot_env::config::Config;
use uboot_env::{Copy, Env, Error, FlagRule, Layout, Order, Redundant, WriteOptions};

fn sample() -> Env {
    Env::from_pairs([
        ("bootcmd", "run x; echo y"),
        ("a", "1"),
        ("empty", ""),
        ("eq", "a=b"),
    ])
    .unwrap()
}

#[test]
fn single_round_trip_keeps_values_and_sorts() {
    let env = sample();
    let block = env.to_block(256, None, WriteOptions::STANDARD).unwrap();
    assert_eq!(&block[4..10], b"a=1\0bo");
    let back = Env::parse_single(&block).unwrap();
    let names: Vec<_> = back.iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["a", "bootcmd", "empty", "eq"]);
    for (n, v) in env.iter() {
        assert_eq!(back.get(n), Some(v));
    }
    // Serialize what we parsed: identical bytes.
    assert_eq!(
        back.to_block(256, None, WriteOptions::STANDARD).unwrap(),
        block
    );
}

#[test]
fn stored_order_and_padding() {
    let env = sample();
    let opts = WriteOptions {
        order: Order::Stored,
        pad: 0x00,
        spare: 0,
    };
    let block = env.to_block(128, None, opts).unwrap();
    let used = env.encoded_len();
    assert_eq!(&block[4..4 + 13], b"bootcmd=run x");
    assert_eq!(block[4 + used - 2..4 + used], [0, 0]);
    assert!(block[4 + used..].iter().all(|&b| b == 0));
    let ff = env.to_block(128, None, WriteOptions::STANDARD).unwrap();
    assert!(ff[4 + used..].iter().all(|&b| b == 0xff));
    let back = Env::parse_single(&block).unwrap();
    assert_eq!(back, env);
}

#[test]
fn header_struct_round_trip() {
    let env = sample();
    let block = env.to_block(64, Some(7), WriteOptions::STANDARD).unwrap();
    let raw = RawBlock::parse(&block, Layout::Redundant).unwrap();
    assert!(raw.crc_ok());
    assert_eq!(raw.header.flag, Some(7));
    let mut copy = block.clone();
    raw.header.write(&mut copy[..5]);
    assert_eq!(copy, block);
    let mut sorted = env.clone();
    sorted.sort();
    assert_eq!(Env::parse(&block, Layout::Redundant).unwrap(), sorted);
}

#[test]
fn overflow_names_bytes_needed() {
    let mut env = Env::new();
    env.set("k", "0123456789").unwrap(); // 13 bytes + final NUL = 14
    assert_eq!(env.encoded_len(), 14);
    assert!(env.to_block(4 + 14, None, WriteOptions::STANDARD).is_ok());
    let e = env
        .to_block(4 + 13, None, WriteOptions::STANDARD)
        .unwrap_err();
    assert_eq!(
        e,
        Error::TooBig {
            needed: 14,
            available: 13
        }
    );
    assert!(e.to_string().contains("14 bytes"));
    // fwup keeps the last byte free.
    let e = env.to_block(4 + 14, None, WriteOptions::FWUP).unwrap_err();
    assert_eq!(
        e,
        Error::TooBig {
            needed: 14,
            available: 13
        }
    );
    assert!(env.to_block(4 + 15, None, WriteOptions::FWUP).is_ok());
}

#[test]
fn bad_crc_is_rejected() {
    let mut block = sample()
        .to_block(128, None, WriteOptions::STANDARD)
        .unwrap();
    block[10] ^= 1;
    assert!(matches!(
        Env::parse_single(&block),
        Err(Error::BadCrc { .. })
    ));
    // Blank flash has no valid env either.
    assert!(matches!(
        Env::parse_single(&[0xff; 64]),
        Err(Error::BadCrc { .. })
    ));
}

#[test]
fn malformed_data_errors_with_offsets() {
    let mk = |data: &[u8]| {
        let mut b = vec![0u8; 4];
        b.extend_from_slice(data);
        let crc = crc(&b[4..]);
        b[..4].copy_from_slice(&crc.to_le_bytes());
        b
    };
    assert_eq!(
        Env::parse_single(&mk(b"a=1\0noequals\0\0")),
        Err(Error::MissingEquals { offset: 8 })
    );
    assert_eq!(
        Env::parse_single(&mk(b"=1\0\0")),
        Err(Error::EmptyName { offset: 4 })
    );
    assert_eq!(
        Env::parse_single(&mk(b"a=1\0b=2")),
        Err(Error::Unterminated { offset: 8 })
    );
    assert_eq!(
        Env::parse_single(&mk(b"a=\xff\0\0")),
        Err(Error::NotUtf8 { offset: 4 })
    );
    // Duplicates: first position, last value.
    let env = Env::parse_single(&mk(b"a=1\0b=2\0a=3\0\0")).unwrap();
    assert_eq!(env.iter().collect::<Vec<_>>(), [("a", "3"), ("b", "2")]);
    // A full area without the double NUL is accepted (the end terminates the list).
    assert_eq!(
        Env::parse_single(&mk(b"a=1\0")).unwrap().get("a"),
        Some("1")
    );
    assert!(matches!(
        Env::parse_single(&[0; 4]),
        Err(Error::BlockTooSmall { len: 4, min: 5 })
    ));
}

fn crc(data: &[u8]) -> u32 {
    // Plain CRC-32/IEEE, bit by bit, independent of crc32fast.
    let mut c = !0u32;
    for &b in data {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0xedb8_8320
            } else {
                c >> 1
            };
        }
    }
    !c
}

#[test]
fn crc_matches_reference() {
    let block = sample()
        .to_block(100, None, WriteOptions::STANDARD)
        .unwrap();
    assert_eq!(
        u32::from_le_bytes(block[..4].try_into().unwrap()),
        crc(&block[4..])
    );
}

#[test]
fn set_unset_validate() {
    let mut env = sample();
    assert_eq!(env.unset("a"), Some("1".into()));
    assert_eq!(env.unset("a"), None);
    env.set("bootcmd", "new").unwrap();
    assert_eq!(env.iter().next(), Some(("bootcmd", "new")));
    assert!(matches!(
        env.set("a=b", "1"),
        Err(Error::InvalidName { .. })
    ));
    assert!(matches!(env.set("", "1"), Err(Error::InvalidName { .. })));
    assert!(matches!(
        env.set("x", "a\0b"),
        Err(Error::InvalidValue { .. })
    ));
    env.clear();
    assert!(env.is_empty());
    assert_eq!(env.to_block(6, None, WriteOptions::STANDARD).unwrap()[4], 0);
}

fn pair(f1: u8, f2: u8, good1: bool, good2: bool) -> (Vec<u8>, Vec<u8>) {
    let mut a = Env::new();
    a.set("copy", "1").unwrap();
    let mut b = Env::new();
    b.set("copy", "2").unwrap();
    let mut x = a.to_block(64, Some(f1), WriteOptions::STANDARD).unwrap();
    let mut y = b.to_block(64, Some(f2), WriteOptions::STANDARD).unwrap();
    if !good1 {
        x[6] ^= 0x55;
    }
    if !good2 {
        y[6] ^= 0x55;
    }
    (x, y)
}

#[test]
fn redundant_picks_newer_with_wrap() {
    let cases = [
        // f1, f2, expected active under UBoot rule, under fwup's rule
        (1, 2, Copy::Second, Copy::Second),
        (3, 2, Copy::First, Copy::First),
        (5, 5, Copy::First, Copy::First),
        (255, 0, Copy::Second, Copy::Second),
        (0, 255, Copy::First, Copy::First),
        (10, 200, Copy::Second, Copy::First), // the rules differ only far apart
    ];
    for (f1, f2, uboot, fwup) in cases {
        let (x, y) = pair(f1, f2, true, true);
        let r = Redundant::parse(&x, &y, FlagRule::UBoot).unwrap();
        assert_eq!(r.active, uboot, "flags {f1},{f2}");
        assert_eq!(
            r.env.get("copy"),
            Some(if uboot == Copy::First { "1" } else { "2" })
        );
        let next = r.next_write();
        assert_eq!(next.copy, uboot.other());
        assert_eq!(next.flag, [f1, f2][uboot.index()].wrapping_add(1));
        assert_eq!(
            Redundant::parse(&x, &y, FlagRule::Fwup).unwrap().active,
            fwup
        );
    }
}

#[test]
fn redundant_ignores_bad_copy_and_reports_status() {
    let (x, y) = pair(9, 3, false, true);
    let r = Redundant::parse(&x, &y, FlagRule::UBoot).unwrap();
    assert_eq!(r.active, Copy::Second);
    assert!(!r.copies[0].crc_ok && r.copies[0].error.is_some());
    assert!(r.copies[1].crc_ok && r.copies[1].error.is_none());
    assert_eq!(r.next_write().copy, Copy::First);
    assert_eq!(r.next_write().flag, 4);
    let (x, y) = pair(1, 2, false, false);
    let e = Redundant::parse(&x, &y, FlagRule::UBoot).unwrap_err();
    assert!(matches!(e, Error::NoValidCopy { .. }));
    assert!(e.to_string().contains("copy 2: bad CRC32"));
    assert!(matches!(
        Redundant::parse(&x, &y[..32], FlagRule::UBoot),
        Err(Error::SizeMismatch {
            first: 64,
            second: 32
        })
    ));
}

#[test]
fn redundant_write_cycle_round_trips() {
    let (mut x, mut y) = pair(254, 0, true, false);
    for i in 0..5u8 {
        let mut r = Redundant::parse(&x, &y, FlagRule::UBoot).unwrap();
        r.env.set("i", &i.to_string()).unwrap();
        let (next, block) = r.encode_next(64, WriteOptions::STANDARD).unwrap();
        let old_active = r.active;
        match next.copy {
            Copy::First => x = block,
            Copy::Second => y = block,
        }
        r.commit(next);
        let again = Redundant::parse(&x, &y, FlagRule::UBoot).unwrap();
        assert_eq!(again, r);
        assert_ne!(again.active, old_active);
        assert_eq!(again.flag, 254u8.wrapping_add(i + 1));
    }
}

const FIX02_A: usize = 16384;
const FIX02_B: usize = 24576;
const FIX02_SIZE: usize = 8192;

/// One fwup uboot_setenv/unsetenv: read the redundant env, change it, write the other copy.
fn fwup_op(img: &mut [u8], f: impl FnOnce(&mut Env)) {
    let mut r = Redundant::parse(
        &img[FIX02_A..FIX02_A + FIX02_SIZE],
        &img[FIX02_B..FIX02_B + FIX02_SIZE],
        FlagRule::Fwup,
    )
    .unwrap();
    f(&mut r.env);
    let (next, block) = r.encode_next(FIX02_SIZE, WriteOptions::FWUP).unwrap();
    let at = [FIX02_A, FIX02_B][next.copy.index()];
    img[at..at + FIX02_SIZE].copy_from_slice(&block);
}

fn fwup_clearenv(img: &mut [u8]) {
    let block = uboot_env::initial_block(&Env::new(), FIX02_SIZE, WriteOptions::FWUP).unwrap();
    img[FIX02_A..FIX02_A + FIX02_SIZE].copy_from_slice(&block);
    img[FIX02_B..FIX02_B + FIX02_SIZE].copy_from_slice(&block);
}

fn flags(img: &[u8]) -> (u8, u8) {
    (img[FIX02_A + 4], img[FIX02_B + 4])
}

/// Replays /work/shared/fixtures/fwup/02-uboot-env-redundant and compares the image sha256
/// values real fwup 1.16.0 produced (recorded in its expect.txt).
#[test]
fn fwup_fixture_02_redundant_is_byte_identical() {
    let mut img = vec![0u8; 131072];
    fwup_clearenv(&mut img);
    let set = |img: &mut Vec<u8>, n: &str, v: &str| fwup_op(img, |e| e.set(n, v).unwrap());
    let unset = |img: &mut Vec<u8>, n: &str| {
        fwup_op(img, |e| {
            e.unset(n);
        })
    };
    set(&mut img, "bootdelay", "0");
    set(&mut img, "bootcmd", "run altbootcmd; echo done");
    set(&mut img, "serial#", "FIXTURE-0001");
    set(&mut img, "tmp_var", "to be removed");
    set(&mut img, "empty_value", "");
    set(&mut img, "value_with_spaces", "a=b c=d  two spaces");
    unset(&mut img, "tmp_var");
    set(&mut img, "bootdelay", "3");
    set(&mut img, "zzz_last", "z");
    set(&mut img, "AAA_first", "A");
    assert_eq!(flags(&img), (11, 10));
    assert_eq!(
        common::hash::sha256_hex(&img),
        "a9f69c48d8520185144d0c481c36486c9b3b319ae9ddbddb1b9bd13859878e51"
    );

    unset(&mut img, "bootcmd");
    unset(&mut img, "does_not_exist");
    set(&mut img, "upgrade_available", "1");
    set(&mut img, "bootcount", "0");
    assert_eq!(flags(&img), (15, 14));
    assert_eq!(
        common::hash::sha256_hex(&img),
        "ff33058337bb1e6511cc422304f6a427537e38044f6f31e004c0a31b9cdd3d89"
    );

    fwup_clearenv(&mut img);
    set(&mut img, "only", "one");
    assert_eq!(flags(&img), (1, 2));
    assert_eq!(
        common::hash::sha256_hex(&img),
        "cddc3b68c7b3add6a44a3109a9c655ff794000875b76120f23268020cf70d6e5"
    );
}

#[test]
fn decode_vars_reports_block_offsets() {
    assert_eq!(
        block::decode_vars(b"x\0", 5),
        Err(Error::MissingEquals { offset: 5 })
    );
}

#[test]
fn config_parsing() {
    let c = Config::parse("# comment\n/dev/mmcblk0 0x2000 20000\n\n").unwrap();
    assert_eq!(
        (c.primary.device.as_str(), c.primary.offset, c.primary.size),
        ("/dev/mmcblk0", 0x2000, 0x20000)
    );
    assert_eq!(c.primary.line, 2);
    assert!(c.redundant.is_none());
    let c = Config::parse("img 8192 0x2000 0x1000 2 # first\nimg 0x4000 0x2000\n").unwrap();
    assert_eq!(c.primary.offset, 8192);
    assert_eq!(
        (c.primary.sector_size, c.primary.sectors),
        (Some(0x1000), Some(2))
    );
    assert_eq!(c.redundant.unwrap().offset, 0x4000);
    assert_eq!(Config::parse("img 010 0x100").unwrap().primary.offset, 8); // octal, as strtoll
    let e = Config::parse("img 0x2000\n").unwrap_err();
    assert_eq!(e.line, 1);
    let e = Config::parse("\nimg 0x2000 0x2000\nimg 0x4000 0x1000\n").unwrap_err();
    assert_eq!(e.line, 3);
    assert!(e.to_string().contains("differs"));
    assert!(Config::parse("img zz 0x100")
        .unwrap_err()
        .to_string()
        .contains("offset \"zz\""));
    assert!(Config::parse("img 0 0x100\nimg 0x100 0x100\nimg 0x200 0x100").is_err());
    assert!(Config::parse("# nothing\n").is_err());
    assert!(Config::parse("img -0x4000 0x2000")
        .unwrap_err()
        .to_string()
        .contains("not supported"));
}
