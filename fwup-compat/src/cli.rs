//! fwup's command line: GNU getopt_long-style flags (options and operands may mix, long
//! options may be abbreviated), the same commands, defaults, checks and exit codes as fwup
//! 1.16. Results and errors go to stdout (framed with `--framing`); getopt complaints go to
//! stderr.
//!
//! Spec: `fwup --help` and docs/fwup.md of fwup 1.16
//! (<https://github.com/fwup-home/fwup/blob/main/docs/fwup.md>).

use crate::host::HostOptions;
use crate::ops;
use crate::out::{self, Out};
use crate::progress::Mode as PMode;
use std::ffi::OsString;

/// At most this many public keys are used; more are ignored with a warning.
const MAX_PUBLIC_KEYS: usize = 10;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Cmd {
    None,
    Apply,
    Create,
    List,
    Metadata,
    GenKeys,
    Sign,
    Verify,
    SparseCheck,
}

/// Options with an argument (`x:` in the optstring); the rest take none.
const SHORT_WITH_ARG: &str = "dfiopst";
const SHORT_FLAGS: &str = "acDEFghlmnqSVvUuyZz123456789";

/// Long options: name and whether it takes an argument.
const LONG: &[(&str, bool)] = &[
    ("apply", false),
    ("create", false),
    ("detect", false),
    ("eject", false),
    ("no-eject", false),
    ("enable-trim", false),
    ("exit-handshake", false),
    ("framing", false),
    ("gen-keys", false),
    ("help", false),
    ("metadata-key", true),
    ("list", false),
    ("max-size", true),
    ("metadata", false),
    ("minimize-writes", false),
    ("no-minimize-writes", false),
    ("private-key", true),
    ("private-key-file", true),
    ("public-key", true),
    ("public-key-file", true),
    ("progress-low", true),
    ("progress-high", true),
    ("quiet", false),
    ("reboot-param-path", true),
    ("sparse-check", true),
    ("sparse-check-size", true),
    ("sign", false),
    ("task", true),
    ("unmount", false),
    ("no-unmount", false),
    ("unsafe", false),
    ("verbose", false),
    ("verify", false),
    ("verify-writes", false),
    ("no-verify-writes", false),
    ("version", false),
];

fn usage() -> String {
    "fwup creates and applies firmware update archives (.fw files: ZIP archives of metadata,\n\
     instructions and data) for memory cards, eMMC and image files.\n\
     \n\
     Usage: fwup [OPTION]... [FIRMWARE.fw]\n\
     \n\
     Options:\n\
     \x20 -a, --apply              apply a firmware update (-i, -d, -t)\n\
     \x20 -c, --create             create a firmware update (-f, -o)\n\
     \x20 -d <file>                destination device or image file\n\
     \x20 -D, --detect             list memory cards that could be written\n\
     \x20 -E, --eject / --no-eject eject (or not) the card after writing\n\
     \x20 --enable-trim            allow TRIM commands on the destination\n\
     \x20 --exit-handshake         send Ctrl+Z and the exit status, then wait for stdin to close\n\
     \x20 -f <fwup.conf>           configuration file for --create\n\
     \x20 -F, --framing            length-prefixed frames on stdin and stdout\n\
     \x20 -g, --gen-keys           make a signing key pair (fwup-key.pub/.priv, or -o PREFIX)\n\
     \x20 -i <file.fw>             input archive (- for stdin)\n\
     \x20 -l, --list               list the tasks in an archive\n\
     \x20 --max-size <blocks>      destination size in 512-byte blocks\n\
     \x20 -m, --metadata           print an archive's metadata\n\
     \x20 --metadata-key <key>     print just this metadata key\n\
     \x20 --minimize-writes        skip writes that would not change the destination\n\
     \x20 --no-minimize-writes     always write (default)\n\
     \x20 -n                       numeric progress, one percentage per line\n\
     \x20 -o <file>                output file for --create/--sign (- for stdout)\n\
     \x20 -p, --public-key-file <f> public key to check signatures with (repeatable)\n\
     \x20 --private-key <key>      signing key given inline\n\
     \x20 --progress-low <n>       progress starts at n (default 0)\n\
     \x20 --progress-high <n>      progress ends at n (default 100)\n\
     \x20 --public-key <key>       public key given inline (repeatable)\n\
     \x20 -q, --quiet              no progress output\n\
     \x20 --reboot-param-path <p>  where reboot_param() writes\n\
     \x20 -s, --private-key-file <f> signing key file\n\
     \x20 -S, --sign               sign an existing archive (-i, -o, -s)\n\
     \x20 --sparse-check <path>    check that sparse files work at path\n\
     \x20 --sparse-check-size <n>  hole size for --sparse-check\n\
     \x20 -t, --task <task>        task to apply (prefix match)\n\
     \x20 -u, --unmount / -U, --no-unmount  unmount the device's partitions first (or not)\n\
     \x20 --unsafe                 allow host commands and paths (path_write, execute, ...)\n\
     \x20 -v, --verbose            verbose\n\
     \x20 -V, --verify             check an archive's hashes (and signature with -p)\n\
     \x20 --verify-writes / --no-verify-writes  read back every write (default for devices)\n\
     \x20 --version                print the version\n\
     \x20 -y                       accept an automatically found memory card\n\
     \x20 -z                       print the memory card that would be used\n\
     \x20 -1 ... -9                compression level for --create (default 9)\n\
     \n\
     Examples:\n\
     \x20 fwup -c -f fwup.conf -o firmware.fw\n\
     \x20 fwup -a -i firmware.fw -d image.img -t complete\n\
     \x20 fwup -g; fwup -S -s fwup-key.priv -i firmware.fw -o signed.fw\n"
        .to_string()
}

/// Why the command line stopped early.
enum Stop {
    /// Exit with this status now (output already done).
    Exit(i32),
}

struct Opts {
    cmd: Cmd,
    easy_mode: bool,
    dest: Option<String>,
    input: Option<String>,
    output: Option<String>,
    task: Option<String>,
    config: String,
    sparse_check: Option<String>,
    sparse_check_size: i64,
    level: u32,
    signing_key: Option<[u8; 64]>,
    public_keys: Vec<[u8; 32]>,
    metadata_key: Option<String>,
    numeric: bool,
    quiet: bool,
    progress_low: i64,
    progress_high: i64,
    verify_writes: Option<bool>,
    minimize_writes: bool,
    enable_trim: bool,
    max_size_blocks: u64,
    operands: Vec<String>,
    /// `--framing`, `--exit-handshake`.
    out: Out,
    /// `--unsafe`, `--reboot-param-path`.
    host: HostOptions,
}

impl Default for Opts {
    /// fwup's defaults.
    fn default() -> Self {
        Opts {
            cmd: Cmd::None,
            easy_mode: true,
            dest: None,
            input: None,
            output: None,
            task: None,
            config: "fwupdate.conf".into(),
            sparse_check: None,
            sparse_check_size: 4096,
            level: 9,
            signing_key: None,
            public_keys: Vec::new(),
            metadata_key: None,
            numeric: false,
            quiet: false,
            progress_low: 0,
            progress_high: 100,
            verify_writes: None,
            minimize_writes: false,
            enable_trim: false,
            max_size_blocks: 0,
            operands: Vec::new(),
            out: Out::default(),
            host: HostOptions::default(),
        }
    }
}

/// C `strtol(s, 0, 0)`: the leading number, 0 if none.
fn strtol(s: &str) -> i64 {
    let t = s.trim_start();
    let (neg, t) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    let v = crate::config::strtoull(t) as i64;
    if neg {
        -v
    } else {
        v
    }
}

fn prog(argv: &[String]) -> &str {
    argv.first().map(|s| s.as_str()).unwrap_or("fwup")
}

fn getopt_fail(argv: &[String], msg: String) -> Stop {
    eprintln!("{}: {msg}", prog(argv));
    print!("{}", usage());
    Stop::Exit(1)
}

fn fail(out: &Out, msg: &str) -> Stop {
    Stop::Exit(out.error(msg))
}

fn load_key<const N: usize>(out: &Out, path: &str, kind: &str) -> Result<[u8; N], Stop> {
    let bytes = std::fs::read(path).map_err(|e| {
        let e = std::io::Error::from(e.kind());
        fail(out, &format!("Error opening {kind} key file '{path}': {e}"))
    })?;
    // fwup reads at most the base64 length of the key.
    let max = N.div_ceil(3) * 4;
    let bytes = &bytes[..bytes.len().min(max)];
    ops::decode_key::<N>(bytes, kind).map_err(|_| {
        fail(
            out,
            &format!("Error reading or decoding {kind} key from file '{path}'"),
        )
    })
}

fn parse_key<const N: usize>(out: &Out, text: &str, kind: &str) -> Result<[u8; N], Stop> {
    ops::decode_key::<N>(text.as_bytes(), kind)
        .map_err(|_| fail(out, &format!("Error decoding {kind} key")))
}

/// One option as getopt returned it: its canonical name (`-x` or `--long`) and argument.
type Parsed = (String, Option<String>);

/// Parse `argv` into `o`, as fwup's main does: first getopt_long's scan, then each option in
/// order. `o` keeps what was set before a failure (framing, the exit handshake).
fn parse(argv: &[String], o: &mut Opts) -> Result<(), Stop> {
    if argv.len() <= 1 {
        print!("{}", usage());
        return Err(Stop::Exit(1));
    }
    let opts = scan(argv, &mut o.operands)?;
    for (opt, val) in opts {
        apply_option(o, &opt, val)?;
    }
    Ok(())
}

/// getopt_long's scan, GNU style: options and operands may mix; `--` ends the options.
fn scan(argv: &[String], operands: &mut Vec<String>) -> Result<Vec<Parsed>, Stop> {
    let mut i = 1;
    let mut opts = Vec::new();
    while i < argv.len() {
        let a = &argv[i];
        i += 1;
        if a == "--" {
            operands.extend(argv[i..].iter().cloned());
            break;
        }
        if let Some(long) = a.strip_prefix("--") {
            opts.push(long_option(argv, long, &mut i)?);
        } else if a.len() > 1 && a.starts_with('-') {
            short_options(argv, &a[1..], &mut i, &mut opts)?;
        } else {
            operands.push(a.clone());
        }
    }
    Ok(opts)
}

/// `--name[=value]`: an exact name or an unambiguous prefix; the argument inline or next.
fn long_option(argv: &[String], long: &str, i: &mut usize) -> Result<Parsed, Stop> {
    let (name, inline) = match long.split_once('=') {
        Some((n, v)) => (n, Some(v.to_string())),
        None => (long, None),
    };
    let (lname, has_arg) = match LONG.iter().find(|(n, _)| *n == name) {
        Some(e) => *e,
        None => {
            let cands: Vec<_> = LONG.iter().filter(|(n, _)| n.starts_with(name)).collect();
            match cands.len() {
                1 => *cands[0],
                0 => return Err(getopt_fail(argv, format!("unrecognized option '--{name}'"))),
                _ => return Err(getopt_fail(argv, format!("option '--{name}' is ambiguous"))),
            }
        }
    };
    let val = match (has_arg, inline) {
        (true, Some(v)) => Some(v),
        (true, None) if *i < argv.len() => {
            *i += 1;
            Some(argv[*i - 1].clone())
        }
        (true, None) => {
            return Err(getopt_fail(
                argv,
                format!("option '--{lname}' requires an argument"),
            ))
        }
        (false, Some(_)) => {
            return Err(getopt_fail(
                argv,
                format!("option '--{lname}' doesn't allow an argument"),
            ))
        }
        (false, None) => None,
    };
    Ok((format!("--{lname}"), val))
}

/// A cluster of short options (`-aq`, `-dIMG`, `-d IMG`): one with an argument ends it.
fn short_options(
    argv: &[String],
    cluster: &str,
    i: &mut usize,
    opts: &mut Vec<Parsed>,
) -> Result<(), Stop> {
    let chars: Vec<char> = cluster.chars().collect();
    for (k, &c) in chars.iter().enumerate() {
        if SHORT_WITH_ARG.contains(c) {
            let rest: String = chars[k + 1..].iter().collect();
            let v = if !rest.is_empty() {
                rest
            } else if *i < argv.len() {
                *i += 1;
                argv[*i - 1].clone()
            } else {
                return Err(getopt_fail(
                    argv,
                    format!("option requires an argument -- '{c}'"),
                ));
            };
            opts.push((format!("-{c}"), Some(v)));
            return Ok(());
        }
        if !SHORT_FLAGS.contains(c) {
            return Err(getopt_fail(argv, format!("invalid option -- '{c}'")));
        }
        opts.push((format!("-{c}"), None));
    }
    Ok(())
}

/// Set a command; any explicit option also turns off easy mode (`fwup FILE.fw`).
fn command(o: &mut Opts, cmd: Cmd) {
    o.cmd = cmd;
    o.easy_mode = false;
}

/// Room for one more public key; past [`MAX_PUBLIC_KEYS`] a key is ignored with a warning.
fn room_for_key(o: &Opts) -> bool {
    if o.public_keys.len() < MAX_PUBLIC_KEYS {
        return true;
    }
    o.out.warn(&format!(
        "Ignoring public key since only {MAX_PUBLIC_KEYS} supported"
    ));
    false
}

/// fwup's option switch: one option's effect on `o`.
fn apply_option(o: &mut Opts, opt: &str, val: Option<String>) -> Result<(), Stop> {
    let v = || val.clone().unwrap_or_default();
    match opt {
        "-a" | "--apply" => command(o, Cmd::Apply),
        "-c" | "--create" => command(o, Cmd::Create),
        "-g" | "--gen-keys" => command(o, Cmd::GenKeys),
        "-S" | "--sign" => command(o, Cmd::Sign),
        "-l" | "--list" => command(o, Cmd::List),
        "-m" | "--metadata" => command(o, Cmd::Metadata),
        "-V" | "--verify" => command(o, Cmd::Verify),
        "--sparse-check" => {
            o.sparse_check = Some(v());
            command(o, Cmd::SparseCheck);
        }
        "-f" => {
            o.config = v();
            o.easy_mode = false;
        }
        "-i" => {
            o.input = Some(v());
            o.easy_mode = false;
        }
        "-o" => {
            o.output = Some(v());
            o.easy_mode = false;
        }
        "-F" | "--framing" => {
            o.out.framing = true;
            o.easy_mode = false;
        }
        "-s" | "--private-key-file" => {
            o.signing_key = Some(load_key::<64>(&o.out, &v(), "private")?);
            o.easy_mode = false;
        }
        "--private-key" => {
            o.signing_key = Some(parse_key::<64>(&o.out, &v(), "private")?);
            o.easy_mode = false;
        }
        "-p" | "--public-key-file" => {
            if room_for_key(o) {
                o.public_keys.push(load_key::<32>(&o.out, &v(), "public")?);
                o.easy_mode = false;
            }
        }
        "--public-key" => {
            if room_for_key(o) {
                o.public_keys.push(parse_key::<32>(&o.out, &v(), "public")?);
            }
        }
        "--sparse-check-size" => o.sparse_check_size = strtol(&v()),
        "--metadata-key" => o.metadata_key = Some(v()),
        "-1" | "-2" | "-3" | "-4" | "-5" | "-6" | "-7" | "-8" | "-9" => {
            o.level = opt[1..].parse().unwrap()
        }
        "-d" => o.dest = Some(v()),
        "-n" => o.numeric = true,
        "-q" | "--quiet" => o.quiet = true,
        "-t" | "--task" => o.task = Some(v()),
        "--unsafe" => o.host.allow_unsafe = true,
        "--reboot-param-path" => o.host.reboot_param_path = Some(v()),
        "--exit-handshake" => o.out.handshake = true,
        "--enable-trim" => o.enable_trim = true,
        "--progress-low" => o.progress_low = strtol(&v()),
        "--progress-high" => o.progress_high = strtol(&v()),
        "--verify-writes" => o.verify_writes = Some(true),
        "--no-verify-writes" => o.verify_writes = Some(false),
        "--minimize-writes" => o.minimize_writes = true,
        "--no-minimize-writes" => o.minimize_writes = false,
        "--max-size" => o.max_size_blocks = crate::config::strtoull(&v()) & 0xffff_ffff,
        "-E" | "--eject" | "--no-eject" | "-u" | "--unmount" | "-U" | "--no-unmount" | "-y"
        | "-v" | "--verbose" => {}
        "-z" => {
            // No memory card is ever auto-detected here.
            return Err(fail(
                &o.out,
                "No memory cards found. Try reinserting the card.",
            ));
        }
        "-D" | "--detect" => {
            o.out.output(out::SUCCESS, 0, "");
            return Err(Stop::Exit(0));
        }
        "-h" | "--help" => {
            print!("{}", usage());
            return Err(Stop::Exit(0));
        }
        "--version" => {
            println!("{}", crate::VERSION);
            return Err(Stop::Exit(0));
        }
        _ => {
            // -Z is in fwup's option string but has no handler.
            print!("{}", usage());
            return Err(Stop::Exit(1));
        }
    }
    Ok(())
}

fn run_cmd(o: &mut Opts) -> Result<(), Stop> {
    let out = o.out.clone();
    if o.quiet && o.numeric {
        return Err(fail(&out, "pick either -n or -q, but not both"));
    }
    if o.easy_mode && o.operands.len() == 1 {
        o.cmd = Cmd::Apply;
        o.input = Some(o.operands.remove(0));
        if o.task.is_none() {
            o.task = Some("complete".into());
        }
    }
    if let Some(extra) = o.operands.first() {
        return Err(fail(&out, &format!("unexpected parameter: {extra}")));
    }
    if o.input.as_deref() == Some("-") {
        o.input = None;
    }
    if o.output.as_deref() == Some("-") {
        o.output = None;
    }
    let e = |r: crate::Result<()>| r.map_err(|e| fail(&out, &e.to_string()));
    match o.cmd {
        Cmd::None => Err(fail(&out, "specify one of -a, -c, -l, -m, -S, -V, or -z")),
        Cmd::Apply => {
            let Some(task) = o.task.clone() else {
                return Err(fail(&out, "specify a task (-t)"));
            };
            let Some(dest) = o.dest.clone() else {
                return Err(fail(
                    &out,
                    "No memory cards found. Try reinserting the card.",
                ));
            };
            let mode = if o.quiet {
                PMode::Off
            } else if out.framing {
                PMode::Framing
            } else if o.numeric {
                PMode::Numeric
            } else {
                PMode::Normal
            };
            let r = ops::apply(&ops::ApplyOptions {
                input: o.input.as_deref(),
                dest: &dest,
                task: &task,
                keys: o.public_keys.clone(),
                progress: mode,
                progress_low: o.progress_low,
                progress_high: o.progress_high,
                max_size_blocks: (o.max_size_blocks > 0).then_some(o.max_size_blocks),
                verify_writes: o.verify_writes,
                minimize_writes: o.minimize_writes,
                enable_trim: o.enable_trim,
                out: out.clone(),
                host: o.host.clone(),
            });
            match r {
                Ok(()) => {
                    out.output(out::SUCCESS, 0, "");
                    Ok(())
                }
                Err(err) => {
                    if !o.quiet {
                        eprintln!();
                    }
                    Err(fail(&out, &err.to_string()))
                }
            }
        }
        Cmd::Create => {
            let output = o.output.clone().unwrap_or_else(|| "-".into());
            let r = ops::create(&ops::CreateOptions {
                config: &o.config,
                output: &output,
                level: o.level,
                private_key: o.signing_key,
            });
            match r {
                // libconfuse reports where the config is wrong on stderr; fwup then says
                // which file failed.
                Err(err @ crate::Error::Config { .. }) => {
                    eprintln!("{err}");
                    Err(fail(
                        &out,
                        &if o.config == "-" {
                            "Error parsing configuration from stdin".to_string()
                        } else {
                            format!("Error parsing configuration file '{}'", o.config)
                        },
                    ))
                }
                r => e(r),
            }
        }
        Cmd::GenKeys => e(ops::gen_keys(
            o.output.as_deref().unwrap_or("fwup-key"),
            &out,
        )),
        Cmd::Sign => {
            let Some(input) = o.input.clone() else {
                return Err(fail(&out, "Specify an input firmware file"));
            };
            let Some(output) = o.output.clone() else {
                return Err(fail(&out, "Specify an output firmware file"));
            };
            let Some(k) = o.signing_key else {
                return Err(fail(&out, "Specify a signing key"));
            };
            e(ops::resign(&input, &output, &k, out.framing))?;
            out.output(out::SUCCESS, 0, "");
            Ok(())
        }
        Cmd::SparseCheck => {
            let path = o.sparse_check.clone().unwrap_or_default();
            e(ops::sparse_check(&path, o.sparse_check_size))?;
            out.output(out::SUCCESS, 0, "Sparse files supported\n");
            Ok(())
        }
        Cmd::List | Cmd::Metadata | Cmd::Verify => {
            if o.cmd == Cmd::Verify && o.input.is_none() {
                return Err(fail(&out, "Specify an input firmware file"));
            }
            let name = o.input.clone();
            let r = ops::open_input(name.as_deref(), out.framing)
                .map_err(|e| fail(&out, &e.to_string()))?;
            let shown = name.clone().unwrap_or_default();
            let mut opened = ops::open_archive(r, &shown, &o.public_keys, o.cmd != Cmd::Verify)
                .map_err(|e| fail(&out, &e.to_string()))?;
            if o.cmd != Cmd::Verify {
                // -m and -l stop after meta.conf, but not before its end is checked (CRC,
                // sizes, data descriptor) and the record after it is whole: a cut or lying
                // archive is refused here as it would be on apply.
                opened
                    .zip
                    .next_entry()
                    .map_err(|e| fail(&out, &e.to_string()))?;
            }
            match o.cmd {
                Cmd::Metadata => {
                    let s = ops::metadata(&opened.cfg, o.metadata_key.as_deref());
                    out.output(out::SUCCESS, 0, &s);
                }
                Cmd::List => out.output(out::SUCCESS, 0, &ops::list(&opened.cfg)),
                _ => {
                    let signed = opened.signed;
                    e(ops::verify_archive(opened))?;
                    let msg = if !o.public_keys.is_empty() && signed {
                        "Valid archive with a good signature\n"
                    } else if signed {
                        "Valid archive with an unverified signature. Specify a public key to authenticate.\n"
                    } else {
                        "Valid archive without a signature\n"
                    };
                    out.output(out::SUCCESS, 0, msg);
                }
            }
            Ok(())
        }
    }
}

/// fwup's main: returns the process exit status.
pub fn run(argv: Vec<OsString>) -> i32 {
    let argv: Vec<String> = argv
        .into_iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let mut o = Opts::default();
    let status = match parse(&argv, &mut o).and_then(|()| run_cmd(&mut o)) {
        Ok(()) => 0,
        Err(Stop::Exit(code)) => code,
    };
    o.out.exit_handshake(status);
    status
}
