//! fwup's command line (getopt-style flags), see `fwup --help` in fwup 1.16.
//! Errors print as `fwup: <message>` on stdout, as fwup does.

use crate::ops;
use crate::progress::Mode as PMode;
use std::ffi::OsString;
use std::io::Write;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Cmd {
    Apply,
    Create,
    List,
    Metadata,
    Verify,
    Sign,
    GenKeys,
    Version,
    Help,
}

#[derive(Default)]
struct Opts {
    cmd: Option<Cmd>,
    input: Option<String>,
    output: Option<String>,
    config: Option<String>,
    dest: Option<String>,
    task: Option<String>,
    numeric: bool,
    quiet: bool,
    level: Option<u32>,
    private_key: Option<String>,
    private_key_file: Option<String>,
    public_keys: Vec<String>,
    public_key_files: Vec<String>,
    metadata_key: Option<String>,
    progress_low: i64,
    progress_high: i64,
    max_size: Option<u64>,
    positional: Vec<String>,
}

const WITH_ARG_SHORT: &str = "iofdtspe";

fn usage() -> &'static str {
    "Usage: fwup [options] [firmware file]\n\
     \n  -a, --apply   Apply the firmware update\n  -c, --create  Create the firmware update\n\
     \x20 -d <file>     Device file for the memory card\n  -f <fwup.conf> Specify the firmware update configuration file\n\
     \x20 -g, --gen-keys Generate firmware signing keys (fwup-key.pub and fwup-key.priv)\n\
     \x20 -i <file>     Specify the input firmware update file (Use - for stdin)\n\
     \x20 -l, --list    List the available tasks in a firmware update\n  -m, --metadata Print metadata in the firmware update\n\
     \x20 -n            Report numeric progress\n  -o <file>     Specify the output file when creating an update (Use - for stdout)\n\
     \x20 -p, --public-key-file <keyfile> A public key file for verifying firmware updates\n\
     \x20 -q, --quiet   Quiet\n  -s, --private-key-file <keyfile> A private key file for signing firmware updates\n\
     \x20 -S, --sign    Sign an existing firmware file (specify -i and -o)\n  -t, --task <task> Task to apply within the firmware update\n\
     \x20 -V, --verify  Verify an existing firmware file (specify -i)\n  --version     Print out the version\n"
}

fn parse(argv: &[String]) -> Result<Opts, String> {
    let mut o = Opts {
        progress_high: 100,
        ..Default::default()
    };
    let mut i = 1;
    while i < argv.len() {
        let a = &argv[i];
        i += 1;
        let take = |i: &mut usize, name: &str| -> Result<String, String> {
            let v = argv
                .get(*i)
                .cloned()
                .ok_or(format!("option '{name}' requires an argument"))?;
            *i += 1;
            Ok(v)
        };
        if let Some(long) = a.strip_prefix("--") {
            let (name, inline) = match long.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (long, None),
            };
            let val = |i: &mut usize| -> Result<String, String> {
                match &inline {
                    Some(v) => Ok(v.clone()),
                    None => take(i, name),
                }
            };
            match name {
                "apply" => o.cmd = Some(Cmd::Apply),
                "create" => o.cmd = Some(Cmd::Create),
                "list" => o.cmd = Some(Cmd::List),
                "metadata" => o.cmd = Some(Cmd::Metadata),
                "verify" => o.cmd = Some(Cmd::Verify),
                "sign" => o.cmd = Some(Cmd::Sign),
                "gen-keys" => o.cmd = Some(Cmd::GenKeys),
                "version" => o.cmd = Some(Cmd::Version),
                "help" => o.cmd = Some(Cmd::Help),
                "quiet" => o.quiet = true,
                "task" => o.task = Some(val(&mut i)?),
                "metadata-key" => o.metadata_key = Some(val(&mut i)?),
                "public-key" => o.public_keys.push(val(&mut i)?),
                "private-key" => o.private_key = Some(val(&mut i)?),
                "public-key-file" => o.public_key_files.push(val(&mut i)?),
                "private-key-file" => o.private_key_file = Some(val(&mut i)?),
                "progress-low" => {
                    o.progress_low = val(&mut i)?.parse().map_err(|_| "bad --progress-low")?
                }
                "progress-high" => {
                    o.progress_high = val(&mut i)?.parse().map_err(|_| "bad --progress-high")?
                }
                "max-size" => {
                    o.max_size = Some(val(&mut i)?.parse().map_err(|_| "bad --max-size")?)
                }
                "reboot-param-path" => crate::host::set_reboot_param_path(Some(val(&mut i)?)),
                "sparse-check" | "sparse-check-size" => {
                    val(&mut i)?;
                }
                "unsafe" => crate::host::set_unsafe(true),
                "verify-writes" | "no-verify-writes" | "minimize-writes" | "no-minimize-writes"
                | "enable-trim" | "no-eject" | "exit-handshake" | "framing" => {}
                _ => return Err(format!("unrecognized option '--{name}'")),
            }
            continue;
        }
        if a.len() > 1 && a.starts_with('-') {
            let chars: Vec<char> = a[1..].chars().collect();
            let mut k = 0;
            while k < chars.len() {
                let c = chars[k];
                k += 1;
                if WITH_ARG_SHORT.contains(c) {
                    let rest: String = chars[k..].iter().collect();
                    let v = if rest.is_empty() {
                        take(&mut i, &c.to_string())?
                    } else {
                        rest
                    };
                    k = chars.len();
                    match c {
                        'i' => o.input = Some(v),
                        'o' => o.output = Some(v),
                        'f' => o.config = Some(v),
                        'd' => o.dest = Some(v),
                        't' => o.task = Some(v),
                        's' => o.private_key_file = Some(v),
                        'p' => o.public_key_files.push(v),
                        _ => {}
                    }
                    continue;
                }
                match c {
                    'a' => o.cmd = Some(Cmd::Apply),
                    'c' => o.cmd = Some(Cmd::Create),
                    'l' => o.cmd = Some(Cmd::List),
                    'm' => o.cmd = Some(Cmd::Metadata),
                    'V' => o.cmd = Some(Cmd::Verify),
                    'S' => o.cmd = Some(Cmd::Sign),
                    'g' => o.cmd = Some(Cmd::GenKeys),
                    'n' => o.numeric = true,
                    'q' => o.quiet = true,
                    'v' | 'y' | 'u' | 'U' | 'E' | 'F' | 'z' | 'D' => {}
                    '1'..='9' => o.level = c.to_digit(10),
                    'h' => o.cmd = Some(Cmd::Help),
                    _ => return Err(format!("invalid option -- '{c}'")),
                }
            }
            continue;
        }
        o.positional.push(a.clone());
    }
    Ok(o)
}

fn keys(o: &Opts) -> crate::Result<Vec<[u8; 32]>> {
    let mut v = Vec::new();
    for f in &o.public_key_files {
        v.push(ops::read_key_file::<32>(f, "public key")?);
    }
    for k in &o.public_keys {
        v.push(ops::decode_key::<32>(k.as_bytes(), "public key")?);
    }
    Ok(v)
}

fn private_key(o: &Opts) -> crate::Result<Option<[u8; 64]>> {
    if let Some(f) = &o.private_key_file {
        return ops::read_key_file::<64>(f, "private key").map(Some);
    }
    if let Some(k) = &o.private_key {
        return ops::decode_key::<64>(k.as_bytes(), "private key").map(Some);
    }
    Ok(None)
}

fn run_cmd(o: &Opts) -> crate::Result<()> {
    let cmd = o.cmd.unwrap_or(Cmd::Apply);
    let out = |s: &str| {
        let mut so = std::io::stdout().lock();
        let _ = so.write_all(s.as_bytes());
        let _ = so.flush();
    };
    match cmd {
        Cmd::Version => out(&format!("{}\n", crate::VERSION)),
        Cmd::Help => out(usage()),
        Cmd::GenKeys => ops::gen_keys(o.output.as_deref().unwrap_or("fwup-key"))?,
        Cmd::Create => {
            let config = o
                .config
                .as_deref()
                .ok_or_else(|| crate::Error::msg("Specify a configuration file with -f"))?;
            let output = o
                .output
                .as_deref()
                .ok_or_else(|| crate::Error::msg("Specify an output firmware file (-o)"))?;
            let r = ops::create(&ops::CreateOptions {
                config,
                output,
                level: o.level.unwrap_or(9),
                private_key: private_key(o)?,
            });
            if r.is_err() && output != "-" {
                let _ = std::fs::remove_file(output);
            }
            r?
        }
        Cmd::Metadata | Cmd::List | Cmd::Verify => {
            let input = o
                .input
                .as_deref()
                .or(o.positional.first().map(|s| s.as_str()));
            let r = ops::open_input(input)?;
            let opened = ops::open_archive(r, input.unwrap_or("stdin"), &keys(o)?)?;
            match cmd {
                Cmd::Metadata => out(&ops::metadata(&opened.cfg, o.metadata_key.as_deref())),
                Cmd::List => out(&ops::list(&opened.cfg)),
                _ => {
                    let signed = opened.signed;
                    ops::verify_archive(opened)?;
                    if !keys(o)?.is_empty() && signed {
                        out("Valid archive with a good signature\n");
                    } else {
                        out("Valid archive without a signature\n");
                    }
                }
            }
        }
        Cmd::Sign => {
            let k =
                private_key(o)?.ok_or_else(|| crate::Error::msg("Specify a private key (-s)"))?;
            let input = o
                .input
                .as_deref()
                .ok_or_else(|| crate::Error::msg("Specify an input firmware file (-i)"))?;
            let output = o
                .output
                .as_deref()
                .ok_or_else(|| crate::Error::msg("Specify an output firmware file (-o)"))?;
            ops::resign(input, output, &k)?
        }
        Cmd::Apply => {
            let input = o
                .input
                .as_deref()
                .or(o.positional.first().map(|s| s.as_str()));
            let dest = o.dest.as_deref().ok_or_else(|| {
                crate::Error::msg("No memory cards found. Specify the destination with -d")
            })?;
            let mode = if o.quiet {
                PMode::Off
            } else if o.numeric {
                PMode::Numeric
            } else {
                PMode::Normal
            };
            ops::apply(&ops::ApplyOptions {
                input,
                dest,
                task: o.task.as_deref().unwrap_or("complete"),
                keys: keys(o)?,
                progress: mode,
                progress_low: o.progress_low,
                progress_high: o.progress_high,
                max_size_blocks: o.max_size,
            })?
        }
    }
    Ok(())
}

/// fwup's main: returns the process exit status.
pub fn run(argv: Vec<OsString>) -> i32 {
    let argv: Vec<String> = argv
        .into_iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let o = match parse(&argv) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("fwup: {e}");
            eprint!("{}", usage());
            return 1;
        }
    };
    match run_cmd(&o) {
        Ok(()) => 0,
        Err(e) => {
            let apply_like = matches!(o.cmd, None | Some(Cmd::Apply));
            if apply_like && !o.quiet && !o.numeric {
                eprintln!();
            }
            println!("fwup: {e}");
            1
        }
    }
}
