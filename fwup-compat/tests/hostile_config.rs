//! Hostile fwup.conf and meta.conf (issue 22): include cycles and depth, defines that double
//! each other, NUL bytes, negative block numbers and calls with too many arguments. Each is
//! refused within a second with a message naming the problem (and the file and line), and
//! an archive carrying one in its meta.conf writes nothing to the destination.

use fwup_compat::config::{self, Mode, Vars};
use fwup_compat::ops::{self, ApplyOptions, CreateOptions};
use fwup_compat::zip::{pack, ZipStream, ZipWriter};
use std::path::Path;
use std::time::{Duration, Instant};

const QUICK: Duration = Duration::from_secs(1);

/// Run `f`, failing the test if it takes a second or more.
fn quick<T>(what: &str, f: impl FnOnce() -> T) -> T {
    let t = Instant::now();
    let r = f();
    let took = t.elapsed();
    assert!(took < QUICK, "{what}: took {took:?}");
    r
}

fn create(conf: &Path, out: &Path) -> fwup_compat::Result<()> {
    ops::create(&CreateOptions {
        config: conf.to_str().unwrap(),
        output: out.to_str().unwrap(),
        level: 1,
        private_key: None,
    })
}

/// `fwup -c` on `text` written to `dir`/`name`: the error's text.
fn create_err(dir: &Path, name: &str, text: &[u8]) -> String {
    let conf = dir.join(name);
    std::fs::write(&conf, text).unwrap();
    let out = dir.join("out.fw");
    let e = quick(name, || create(&conf, &out)).expect_err(name);
    assert!(!out.exists(), "{name}: an archive was written");
    e.to_string()
}

fn parse(text: &[u8], mode: Mode) -> fwup_compat::Result<config::Section> {
    config::parse(text, "meta.conf", &mut Vars::default(), mode)
}

/// `define(A0, "xx")` and `n` more defines, each twice the one before.
fn doubling_defines(n: usize) -> String {
    let mut s = "define(A0, \"xx\")\n".to_string();
    for i in 1..=n {
        s.push_str(&format!(
            "define(A{i}, \"${{A{}}}${{A{}}}\")\n",
            i - 1,
            i - 1
        ));
    }
    s
}

#[test]
fn a_file_that_includes_itself_is_a_cycle() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let e = create_err(
        d,
        "self.conf",
        b"include(\"self.conf\")\nmeta-product = \"x\"\n",
    );
    let me = d.join("self.conf");
    let me = me.display();
    assert!(
        e.starts_with(&format!("{me}:1: include cycle: {me} → {me};")),
        "{e}"
    );
}

#[test]
fn two_files_that_include_each_other_are_a_cycle_named_in_order() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    std::fs::write(
        d.join("b.conf"),
        "meta-version = \"1\"\ninclude(\"a.conf\")\n",
    )
    .unwrap();
    // Another spelling of the same file is the same file.
    let e = create_err(d, "a.conf", b"include(\"./b.conf\")\n");
    let (a, b) = (d.join("a.conf"), d.join("./b.conf"));
    let want = format!(
        "{}:2: include cycle: {} → {} → {}",
        b.display(),
        a.display(),
        b.display(),
        a.display()
    );
    assert!(e.starts_with(&want), "{e}\nwant {want}");
    assert!(e.contains("remove one of these includes"), "{e}");
}

#[test]
fn includes_nest_ten_deep_as_in_fwup_and_no_deeper() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    // n0 includes n1 ... includes n{depth}: `depth` nested includes.
    let chain = |depth: usize| {
        for i in 0..depth {
            std::fs::write(
                d.join(format!("n{i}.conf")),
                format!("include(\"n{}.conf\")\n", i + 1),
            )
            .unwrap();
        }
        std::fs::write(
            d.join(format!("n{depth}.conf")),
            "meta-product = \"deep\"\n",
        )
        .unwrap();
        create(&d.join("n0.conf"), &d.join("out.fw"))
    };
    chain(10).expect("10 nested includes, as real fwup 1.16 allows");
    let e = quick("11 deep", || chain(11)).unwrap_err().to_string();
    let n = |i: usize| d.join(format!("n{i}.conf")).display().to_string();
    assert!(
        e.starts_with(&format!(
            "{}:1: includes nested too deeply (at most 10 levels)",
            n(10)
        )),
        "{e}"
    );
    assert!(e.contains(&format!("{} → {}", n(0), n(1))), "{e}");
    assert!(e.ends_with(&format!("{} → {}", n(10), n(11))), "{e}");
}

#[test]
fn includes_that_fan_out_stop_at_a_thousand() {
    // Ten levels of ten includes each are 10^10 reads without a cycle (real fwup hangs).
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    for i in 0..10 {
        let line = format!("include(\"f{}.conf\")\n", i + 1);
        std::fs::write(d.join(format!("f{i}.conf")), line.repeat(10)).unwrap();
    }
    std::fs::write(d.join("f10.conf"), "meta-misc = \"leaf\"\n").unwrap();
    let e = quick("fan-out", || create(&d.join("f0.conf"), &d.join("out.fw")))
        .unwrap_err()
        .to_string();
    assert!(e.contains("more than 1000 includes in one config"), "{e}");
}

#[test]
fn doubling_defines_stop_at_the_expansion_limit_in_fwup_conf() {
    let t = tempfile::tempdir().unwrap();
    // A40 would be 2 TiB; A22 (8 MiB) copied twice into A23 passes the 16 MiB limit.
    let text = format!("{}meta-product = \"${{A40}}\"\n", doubling_defines(40));
    let e = create_err(t.path(), "exp.conf", text.as_bytes());
    assert!(
        e.contains(
            "exp.conf:24: expanding ${A22} (8388608 bytes) takes variable expansion past 16 MiB"
        ),
        "{e}"
    );
}

#[test]
fn doubling_defines_stop_at_the_same_limit_in_meta_conf() {
    // The same parser reads meta.conf, where the defines need not even be used.
    for used in [false, true] {
        let mut text = doubling_defines(40);
        if used {
            text.push_str("meta-product = \"${A40}\"\n");
        }
        let e = quick("meta.conf defines", || parse(text.as_bytes(), Mode::Apply)).unwrap_err();
        let e = e.to_string();
        assert!(
            e.starts_with("meta.conf:24: expanding ${A22} (8388608 bytes) takes variable expansion past 16 MiB"),
            "{e}"
        );
    }
}

#[test]
fn expansion_below_the_limit_still_works() {
    // 20 doublings give a 2 MiB value (4 MiB copied in all), which real fwup also accepts.
    let text = format!("{}meta-product = \"${{A20}}\"\n", doubling_defines(20));
    let top = parse(text.as_bytes(), Mode::Create).unwrap();
    assert_eq!(top.get_str("meta-product").unwrap().len(), 2 << 20);
}

#[test]
fn nul_bytes_are_refused_with_their_line() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    // fwup -c keeps "a" of "a\0b" and writes it to meta.conf without a word.
    let e = create_err(
        d,
        "nul.conf",
        b"meta-product = \"x\"\nmeta-misc = \"a\0b\"\n",
    );
    assert!(e.ends_with("nul.conf:2: NUL byte (0x00): a config is text, and fwup ignores everything after a NUL; remove it"), "{e}");
    // In an included file, the included file and its line are named.
    std::fs::write(d.join("inc.conf"), b"\n\n\0").unwrap();
    let e = create_err(d, "main.conf", b"include(\"inc.conf\")\n");
    assert!(e.contains("inc.conf:3: NUL byte"), "{e}");
    // meta.conf: fwup parses only up to the NUL, which can silently drop whole tasks.
    for text in [
        &b"meta-product=\"a\0b\"\n"[..],
        b"meta-product=x\n\0task \"t\" {\n}\n",
    ] {
        let e = parse(text, Mode::Apply).unwrap_err().to_string();
        assert!(e.contains("NUL byte"), "{e}");
    }
}

#[test]
fn calls_take_at_most_nine_arguments_as_in_fwup() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let conf = |n: usize| {
        let args = vec!["0"; n].join(", ");
        format!("file-resource r {{ contents = \"hello\" }}\ntask complete {{ on-resource r {{ raw_write({args}) }} }}\n")
    };
    std::fs::write(d.join("nine.conf"), conf(9)).unwrap();
    create(&d.join("nine.conf"), &d.join("nine.fw")).expect("9 arguments");
    for n in [10, 100_000] {
        let e = create_err(d, "many.conf", conf(n).as_bytes());
        assert!(
            e.ends_with(
                "many.conf:2: Too many arguments passed to 'raw_write': at most 9 are allowed"
            ),
            "{n}: {e}"
        );
    }
    // Requirements and meta.conf's calls too.
    let e = create_err(
        d,
        "req.conf",
        format!(
            "task t {{ require-fat-file-exists({}) }}\n",
            ["0"; 10].join(",")
        )
        .as_bytes(),
    );
    assert!(
        e.contains("Too many arguments passed to 'require-fat-file-exists'"),
        "{e}"
    );
    let meta = format!(
        "task \"t\" {{\non-init {{\ninfo({})\n}}\n}}\n",
        vec!["0"; 100_000].join(",")
    );
    let e = quick("meta.conf call", || parse(meta.as_bytes(), Mode::Apply)).unwrap_err();
    assert!(
        e.to_string()
            .contains("meta.conf:3: Too many arguments passed to 'info'"),
        "{e}"
    );
}

#[test]
fn negative_block_offsets_are_refused_at_create() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let with = |action: &str| {
        format!("file-resource r {{ contents = \"hello\" }}\ntask complete {{ on-resource r {{ {action} }} }}\n")
    };
    // fwup's strtoull reads -1 as 2^64 - 1 and accepts it; the write then lands before
    // the disk's start, after earlier actions have written.
    for (action, msg) in [
        (
            "raw_write(-1)",
            "raw_write requires a non-negative integer block offset",
        ),
        (
            "raw_write(\"-0x10\")",
            "raw_write requires a non-negative integer block offset",
        ),
        (
            "trim(-1, 8)",
            "trim requires a non-negative integer block offset",
        ),
        (
            "fat_mkfs(-1, 100)",
            "fat_mkfs requires a non-negative integer block offset",
        ),
        (
            "fat_mkfs(0, -100)",
            "fat_mkfs requires a non-negative integer block count",
        ),
        (
            "raw_memset(-1, 1, 0)",
            "raw_memset requires a non-negative integer block offset",
        ),
    ] {
        let e = create_err(d, "neg.conf", with(action).as_bytes());
        assert!(e.ends_with(&format!("neg.conf:2: {msg}")), "{action}: {e}");
    }
    // -0 is zero, as strtoull reads it.
    std::fs::write(d.join("zero.conf"), with("raw_write(-0)")).unwrap();
    create(&d.join("zero.conf"), &d.join("zero.fw")).unwrap();
}

// ---- meta.conf inside an archive: refused before the destination is touched ----------------

const BASE_CONF: &str = r#"
meta-product = "hostile"
file-resource r { contents = "hello" }
uboot-environment env { block-offset = 16 block-count = 16 }
task complete {
    on-init { raw_memset(0, 2, 0x5a) uboot_clearenv(env) }
    on-resource r { raw_write(4) }
}
task other {
    require-partition-offset(0, 0)
    on-init { info("other") }
}
"#;

/// The base archive's meta.conf.
fn base_meta(d: &Path) -> String {
    std::fs::write(d.join("base.conf"), BASE_CONF).unwrap();
    create(&d.join("base.conf"), &d.join("base.fw")).unwrap();
    let fw = std::fs::read(d.join("base.fw")).unwrap();
    let mut z = ZipStream::new(std::io::Cursor::new(fw));
    z.next_entry().unwrap().unwrap();
    String::from_utf8(z.read_all(50_000).unwrap()).unwrap()
}

/// An archive with `meta` and the resource.
fn archive(meta: &[u8]) -> Vec<u8> {
    let mut z = ZipWriter::new(Vec::new());
    z.add("meta.conf", &pack(meta, 9), 1_700_000_000, true)
        .unwrap();
    z.add("data/r", &pack(b"hello", 9), 315_532_800, false)
        .unwrap();
    z.finish().unwrap()
}

fn apply(fw: &Path, dest: &Path) -> fwup_compat::Result<()> {
    ops::apply(&ApplyOptions {
        input: fw.to_str(),
        dest: dest.to_str().unwrap(),
        task: "complete",
        keys: Vec::new(),
        progress: fwup_compat::progress::Mode::Off,
        progress_low: 0,
        progress_high: 100,
        max_size_blocks: None,
        verify_writes: Some(false),
        minimize_writes: false,
        enable_trim: false,
        out: fwup_compat::out::Out::default(),
        host: Default::default(),
    })
}

#[test]
fn hostile_meta_conf_is_refused_by_every_mode_before_any_write() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let meta = base_meta(d);
    let fill = vec![0xa5u8; 64 * 512];
    let dest = d.join("dest.img");
    let fw = d.join("in.fw");
    // The pristine archive applies, and writes the destination.
    std::fs::write(&fw, archive(meta.as_bytes())).unwrap();
    std::fs::write(&dest, &fill).unwrap();
    apply(&fw, &dest).unwrap();
    assert_ne!(std::fs::read(&dest).unwrap(), fill);

    let edit = |from: &str, to: &str| {
        assert!(
            meta.contains(from),
            "base meta.conf has no {from:?}:\n{meta}"
        );
        meta.replacen(from, to, 1).into_bytes()
    };
    let mut nul = meta.clone().into_bytes();
    nul.push(0);
    let cases: Vec<(&str, Vec<u8>, &str)> =
        vec![
        (
            "doubling defines",
            format!("{}{meta}", doubling_defines(40)).into_bytes(),
            "meta.conf:24: expanding ${A22} (8388608 bytes) takes variable expansion past 16 MiB",
        ),
        ("NUL at the end", nul, "NUL byte (0x00)"),
        (
            "NUL in a string",
            edit("hostile", "host\0ile"),
            "meta.conf:1: NUL byte (0x00)",
        ),
        (
            "raw_write(-1)",
            edit("raw_write,4", "raw_write,-1"),
            "meta.conf: task 'complete': raw_write requires a non-negative integer block offset",
        ),
        (
            "raw_memset(-1, ...)",
            edit("raw_memset,0,2", "raw_memset,-1,2"),
            "raw_memset requires a non-negative integer block offset",
        ),
        (
            "negative env block-offset",
            edit("block-offset=16", "block-offset=-1"),
            "uboot-environment: block-offset must be specified",
        ),
        (
            "negative require-partition-offset",
            edit("\"require-partition-offset\",0,0", "\"require-partition-offset\",0,-1"),
            "require-partition-offset requires a non-negative integer block offset",
        ),
        (
            "negative delta source",
            edit(
                "on-resource \"r\" {\n",
                "on-resource \"r\" {\ndelta-source-raw-offset=-1\ndelta-source-raw-count=1\n",
            ),
            "delta-source-raw-offset must be a non-negative integer block offset, not '-1'",
        ),
        (
            "a call of 10 arguments",
            edit(
                "on-init {\n",
                "on-error {\ninfo(1,2,3,4,5,6,7,8,9,10)\n}\non-init {\n",
            ),
            "Too many arguments passed to 'info': at most 9 are allowed",
        ),
        (
            "a funlist entry of 100,000 arguments",
            edit("funlist={2,raw_write,4}", "funlist={100001,raw_write,4}"),
            "Unexpected argc value in funlist",
        ),
    ];
    for (name, m, want) in cases {
        std::fs::write(&fw, archive(&m)).unwrap();
        std::fs::write(&dest, &fill).unwrap();
        let e = quick(name, || apply(&fw, &dest))
            .expect_err(name)
            .to_string();
        assert!(e.contains(want), "{name}: -a said {e:?}, want {want:?}");
        assert_eq!(std::fs::read(&dest).unwrap(), fill, "{name}: -a wrote");
        // -m, -l and -V start by opening the archive the same way.
        for meta_only in [true, false] {
            let r = quick(name, || {
                ops::open_archive(std::io::Cursor::new(archive(&m)), "in.fw", &[], meta_only)
            });
            let e = r
                .err()
                .unwrap_or_else(|| panic!("{name}: opened"))
                .to_string();
            assert!(e.contains(want), "{name}: {e:?}, want {want:?}");
        }
    }
}
