//! `imgtool env print|get|set|unset`, and the `fw_printenv`/`fw_setenv` personalities.
//!
//! The environment is found from flags (`--offset/--size/--redund-offset`), from a
//! `fw_env.config` (`-c`), from the image's env locator (sector 0, written by `imgtool build`
//! for an env away from the default), or defaults to the built-in Nerves layout (offset 0x2000,
//! 0x20000 bytes, one copy). Writes update the block in place with one `pwrite` (the inactive copy for
//! a redundant environment, so the current one survives a torn write) and never extend the
//! file. A copy with a bad CRC is reported, never used.
//! Personality flags follow u-boot-tools' tools/env/fw_env_main.c
//! (<https://github.com/u-boot/u-boot/blob/master/tools/env/fw_env_main.c>).

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use serde_json::json;
use uboot_env::config::{parse_c_number, Config};
use uboot_env::{Env, FlagRule, Redundant, Stored, WriteOptions};

use super::UsageError;

/// Built-in Nerves layout: env at 0x2000, 0x20000 bytes (see layout/).
const DEFAULT_OFFSET: u64 = 0x2000;
const DEFAULT_SIZE: u64 = 0x20000;
const UBOOT_TOOLS_CONFIG: &str = "/etc/fw_env.config";

#[derive(clap::Args, Clone, Debug)]
pub struct Location {
    /// Disk image or block device holding the environment (overrides the config's device).
    #[arg(long, short = 'i')]
    image: Option<PathBuf>,
    /// Byte offset of the (first) copy; hex with 0x [default: 0x2000].
    #[arg(long, value_parser = parse_number, conflicts_with = "config")]
    offset: Option<u64>,
    /// Size of one copy in bytes; hex with 0x [default: 0x20000].
    #[arg(long, value_parser = parse_number, conflicts_with = "config")]
    size: Option<u64>,
    /// Byte offset of the second copy: selects the redundant layout.
    #[arg(long, value_parser = parse_number, conflicts_with = "config")]
    redund_offset: Option<u64>,
    /// A u-boot-tools fw_env.config giving device, offset and size (one or two lines).
    #[arg(short = 'c', long)]
    config: Option<PathBuf>,
}

#[derive(clap::Subcommand)]
pub enum Command {
    /// Print every variable as name=value.
    Print {
        #[command(flatten)]
        loc: Location,
        /// Machine-readable output: variables plus which copy is active and its status.
        #[arg(long)]
        json: bool,
    },
    /// Print one variable's value.
    Get {
        #[command(flatten)]
        loc: Location,
        name: String,
    },
    /// Set variables: NAME VALUE [NAME VALUE ...].
    Set {
        #[command(flatten)]
        loc: Location,
        /// When no valid environment exists, start from an empty one instead of failing.
        #[arg(long)]
        init: bool,
        #[arg(required = true, value_names = ["NAME", "VALUE"])]
        pairs: Vec<String>,
    },
    /// Remove variables (a missing one is not an error).
    Unset {
        #[command(flatten)]
        loc: Location,
        #[arg(required = true)]
        names: Vec<String>,
    },
}

fn parse_number(s: &str) -> Result<u64, String> {
    parse_c_number(s.trim()).ok_or_else(|| format!("{s:?} is not a number (e.g. 8192 or 0x2000)"))
}

/// Where the copies are.
#[derive(Clone, Debug)]
struct Resolved {
    /// One (single layout) or two (redundant) `(device, offset)`.
    copies: Vec<(PathBuf, u64)>,
    size: usize,
    /// For messages: where this came from.
    origin: String,
}

impl Resolved {
    fn describe(&self, i: usize) -> String {
        let (p, off) = &self.copies[i];
        format!(
            "{} at offset 0x{off:x} (size 0x{:x})",
            p.display(),
            self.size
        )
    }
}

fn load_config(path: &Path) -> Result<Config> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read environment config {}", path.display()))?;
    Config::parse(&text).map_err(|e| {
        UsageError(format!(
            "{}:{e} (format: `device offset size` per copy, size in hex)",
            path.display()
        ))
        .into()
    })
}

fn resolve(loc: &Location) -> Result<Resolved> {
    if let Some(cfg_path) = &loc.config {
        let cfg = load_config(cfg_path)?;
        let dev = |d: &str| loc.image.clone().unwrap_or_else(|| PathBuf::from(d));
        let mut copies = vec![(dev(&cfg.primary.device), cfg.primary.offset)];
        if let Some(r) = &cfg.redundant {
            copies.push((dev(&r.device), r.offset));
        }
        return Ok(Resolved {
            copies,
            size: usize::try_from(cfg.primary.size)?,
            origin: format!("config {}", cfg_path.display()),
        });
    }
    let image = loc
        .image
        .clone()
        .ok_or_else(|| UsageError("no image: give --image IMAGE (or -c fw_env.config)".into()))?;
    if loc.offset.is_none() && loc.size.is_none() && loc.redund_offset.is_none() && image.exists() {
        // No flags: where the image's env locator says (imgtool build writes one for an env
        // away from the default), else the default.
        let at = layout::inspect::env_location(&image)
            .map_err(|e| UsageError(format!("{e}; give --offset/--size")))?;
        let mut copies = vec![(image.clone(), at.offset)];
        if let Some(r) = at.redundant_offset {
            copies.push((image, r));
        }
        return Ok(Resolved {
            copies,
            size: usize::try_from(at.size)?,
            origin: "the image's env locator, else the default".into(),
        });
    }
    let offset = loc.offset.unwrap_or(DEFAULT_OFFSET);
    let mut copies = vec![(image.clone(), offset)];
    let size = loc.size.unwrap_or(DEFAULT_SIZE);
    if let Some(r) = loc.redund_offset {
        if r < offset + size && offset < r + size {
            return Err(UsageError(format!(
                "--redund-offset 0x{r:x} overlaps the first copy at 0x{offset:x} (size 0x{size:x})"
            ))
            .into());
        }
        copies.push((image, r));
    }
    Ok(Resolved {
        copies,
        size: usize::try_from(size)?,
        origin: "flags".into(),
    })
}

/// Length of a file or block device.
fn device_len(f: &File) -> Result<u64> {
    use std::io::Seek;
    let mut f = f;
    Ok(f.seek(std::io::SeekFrom::End(0))?)
}

fn read_copy(loc: &Resolved, i: usize) -> Result<Vec<u8>> {
    let (path, off) = &loc.copies[i];
    let f = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    check_fits(&f, loc, i)?;
    let mut buf = vec![0u8; loc.size];
    f.read_exact_at(&mut buf, *off)
        .with_context(|| format!("reading the environment: {}", loc.describe(i)))?;
    Ok(buf)
}

fn check_fits(f: &File, loc: &Resolved, i: usize) -> Result<()> {
    let (path, off) = &loc.copies[i];
    let len = device_len(f)?;
    let end = off + loc.size as u64;
    if end > len {
        bail!(UsageError(format!(
            "{} is {len} bytes but the environment ends at byte {end} (offset 0x{off:x} + size 0x{:x}); \
             check the offset/size ({})",
            path.display(),
            loc.size,
            loc.origin
        )));
    }
    Ok(())
}

/// Neither copy holds a valid environment (what `set --init` may replace).
#[derive(Debug)]
struct NoValidEnv(String);

impl std::fmt::Display for NoValidEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NoValidEnv {}

fn load(loc: &Resolved) -> Result<Stored> {
    let first = read_copy(loc, 0)?;
    if loc.copies.len() == 1 {
        let env = Env::parse_single(&first).map_err(|e| {
            NoValidEnv(format!(
                "no valid U-Boot environment in {}: {e}",
                loc.describe(0)
            ))
        })?;
        return Ok(Stored::Single(env));
    }
    let second = read_copy(loc, 1)?;
    let r = Redundant::parse(&first, &second, FlagRule::UBoot).map_err(|e| {
        NoValidEnv(format!(
            "no valid redundant U-Boot environment in {} / {}: {e}",
            loc.describe(0),
            loc.describe(1)
        ))
    })?;
    for (i, c) in r.copies.iter().enumerate() {
        if let Some(e) = &c.error {
            tracing::warn!("copy {} ({}) is not usable: {e}", i + 1, loc.describe(i));
        }
    }
    tracing::debug!("active copy {:?}, flag {}", r.active, r.flag);
    Ok(Stored::Redundant(r))
}

fn write_at(loc: &Resolved, i: usize, block: &[u8]) -> Result<()> {
    let (path, off) = &loc.copies[i];
    let f = OpenOptions::new()
        .write(true)
        .open(path)
        .with_context(|| format!("cannot open {} for writing", path.display()))?;
    check_fits(&f, loc, i)?;
    f.write_all_at(block, *off)
        .with_context(|| format!("writing the environment: {}", loc.describe(i)))?;
    f.sync_data()
        .with_context(|| format!("syncing {}", path.display()))?;
    Ok(())
}

fn store(loc: &Resolved, loaded: &mut Stored) -> Result<()> {
    let w = loaded
        .encode(loc.size, WriteOptions::STANDARD)
        .with_context(|| format!("environment {}", loc.describe(0)))?;
    write_at(loc, w.copy.index(), &w.block)?;
    loaded.commit(&w);
    Ok(())
}

/// A fresh, empty environment for `set --init` (both copies get written).
fn init_empty(loc: &Resolved) -> Result<Stored> {
    let env = Env::new();
    if loc.copies.len() == 1 {
        return Ok(Stored::Single(env));
    }
    let block = uboot_env::initial_block(&env, loc.size, WriteOptions::STANDARD)?;
    for i in 0..2 {
        write_at(loc, i, &block)?;
    }
    Ok(Stored::Redundant(Redundant::parse(
        &block,
        &block,
        FlagRule::UBoot,
    )?))
}

pub fn run(c: Command) -> Result<()> {
    match c {
        Command::Print { loc, json } => {
            let loc = resolve(&loc)?;
            let loaded = load(&loc)?;
            let mut out = std::io::stdout().lock();
            if json {
                writeln!(
                    out,
                    "{}",
                    serde_json::to_string_pretty(&to_json(&loc, &loaded))?
                )?;
            } else {
                for (n, v) in loaded.env().iter() {
                    writeln!(out, "{n}={v}")?;
                }
            }
        }
        Command::Get { loc, name } => {
            let loc = resolve(&loc)?;
            let loaded = load(&loc)?;
            match loaded.env().get(&name) {
                Some(v) => println!("{v}"),
                None => bail!("variable {name:?} is not set in {}", loc.describe(0)),
            }
        }
        Command::Set { loc, init, pairs } => {
            if pairs.len() % 2 != 0 {
                bail!(UsageError(format!(
                    "set takes NAME VALUE pairs; {:?} has no value (use \"\" for an empty one)",
                    pairs.last().unwrap()
                )));
            }
            let loc = resolve(&loc)?;
            let mut loaded = match load(&loc) {
                Ok(l) => l,
                Err(e) if init && e.downcast_ref::<NoValidEnv>().is_some() => {
                    tracing::info!("{e:#}; starting an empty environment (--init)");
                    init_empty(&loc)?
                }
                Err(e) => {
                    return Err(e.context("use `set --init` to replace it with a new environment"))
                }
            };
            for p in pairs.chunks(2) {
                loaded
                    .env_mut()
                    .set(&p[0], &p[1])
                    .map_err(|e| UsageError(e.to_string()))?;
            }
            store(&loc, &mut loaded)?;
        }
        Command::Unset { loc, names } => {
            let loc = resolve(&loc)?;
            let mut loaded = load(&loc)?;
            for n in &names {
                loaded.env_mut().unset(n);
            }
            store(&loc, &mut loaded)?;
        }
    }
    Ok(())
}

fn to_json(loc: &Resolved, loaded: &Stored) -> serde_json::Value {
    let env = loaded.env();
    let vars: serde_json::Map<String, serde_json::Value> =
        env.iter().map(|(n, v)| (n.to_string(), json!(v))).collect();
    let names: Vec<&str> = env.iter().map(|(n, _)| n).collect();
    let copy = |i: usize| json!({"device": loc.copies[i].0, "offset": loc.copies[i].1});
    let mut j = json!({
        "size": loc.size,
        "used": env.encoded_len(),
        "vars": vars,
        "order": names,
    });
    match loaded {
        Stored::Single(_) => {
            j["layout"] = json!("single");
            j["copies"] = json!([copy(0)]);
        }
        Stored::Redundant(r) => {
            j["layout"] = json!("redundant");
            j["active_copy"] = json!(r.active.index() + 1);
            j["flag"] = json!(r.flag);
            j["copies"] = json!((0..2)
                .map(|i| {
                    let mut c = copy(i);
                    c["flag"] = json!(r.copies[i].flag);
                    c["crc_ok"] = json!(r.copies[i].crc_ok);
                    c["error"] = json!(r.copies[i].error.as_ref().map(|e| e.to_string()));
                    c
                })
                .collect::<Vec<_>>());
        }
    }
    j
}

/// Parsed u-boot-tools command line.
struct ToolArgs {
    config: PathBuf,
    /// Directory of the lock file (`-l`), as u-boot-tools: `DIR/fw_printenv.lock`.
    lock_dir: PathBuf,
    no_header: bool,
    script: Option<PathBuf>,
    rest: Vec<String>,
}

const PRINTENV_USAGE: &str = "Usage: fw_printenv [-c CONFIG] [-n] [NAME ...]\n\
  -c, --config CONFIG  fw_env.config to use (default /etc/fw_env.config)\n\
  -n, --noheader       print only the value (exactly one NAME)\n\
  -l, --lock DIR       lock DIR/fw_printenv.lock while working (default /var/lock)";
const SETENV_USAGE: &str = "Usage: fw_setenv [-c CONFIG] NAME [VALUE ...]\n\
       fw_setenv [-c CONFIG] -s SCRIPT\n\
  -c, --config CONFIG  fw_env.config to use (default /etc/fw_env.config)\n\
  -s, --script SCRIPT  lines of `NAME VALUE` (`NAME` alone deletes; '-' is stdin)\n\
  -l, --lock DIR       lock DIR/fw_printenv.lock while working (default /var/lock)\n\
  Without VALUE, NAME is deleted; several VALUEs are joined with spaces.";

fn parse_tool_args(setenv: bool, argv: Vec<OsString>) -> Result<Option<ToolArgs>, String> {
    let mut a = ToolArgs {
        config: PathBuf::from(UBOOT_TOOLS_CONFIG),
        lock_dir: PathBuf::from(UBOOT_TOOLS_LOCK_DIR),
        no_header: false,
        script: None,
        rest: Vec::new(),
    };
    let mut it = argv
        .into_iter()
        .skip(1)
        .map(|s| s.to_string_lossy().into_owned());
    let mut options_done = false;
    while let Some(arg) = it.next() {
        if options_done || !arg.starts_with('-') || arg == "-" {
            a.rest.push(arg);
            // u-boot-tools stops option parsing at the first name (values may start with '-').
            options_done = true;
            continue;
        }
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = |name: &str| {
            inline
                .clone()
                .or_else(|| it.next())
                .ok_or_else(|| format!("option {name} needs a value"))
        };
        match flag.as_str() {
            "--" => options_done = true,
            "-h" | "--help" => return Ok(None),
            "-c" | "--config" => a.config = PathBuf::from(value("-c")?),
            "-l" | "--lock" => a.lock_dir = PathBuf::from(value("-l")?),
            "-n" | "--noheader" | "--no-header" if !setenv => a.no_header = true,
            "-s" | "--script" if setenv => a.script = Some(PathBuf::from(value("-s")?)),
            _ => return Err(format!("unknown option {arg}")),
        }
    }
    Ok(Some(a))
}

pub fn main_as_uboot_tools(argv0: &str, argv: Vec<OsString>) -> ExitCode {
    let setenv = argv0 == "fw_setenv";
    let usage = if setenv { SETENV_USAGE } else { PRINTENV_USAGE };
    let args = match parse_tool_args(setenv, argv) {
        Ok(Some(a)) => a,
        Ok(None) => {
            println!("{usage}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("{argv0}: {e}\n{usage}");
            return ExitCode::from(2);
        }
    };
    // u-boot-tools' fw_env_main.c: both tools hold an exclusive flock on
    // DIR/fw_printenv.lock for the whole read-modify-write, so concurrent fw_setenv runs (and
    // a fw_printenv during one) never see or write a half-updated env.
    let result = tool_lock(&args.lock_dir).and_then(|_lock| {
        if setenv {
            tool_setenv(&args)
        } else {
            tool_printenv(&args)
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{argv0}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Default `-l` directory of u-boot-tools.
const UBOOT_TOOLS_LOCK_DIR: &str = "/var/lock";

/// The lock file, held (flock LOCK_EX) until dropped.
fn tool_lock(dir: &Path) -> Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    use std::os::unix::io::AsRawFd;
    let path = dir.join("fw_printenv.lock");
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o666)
        .open(&path)
        .with_context(|| {
            format!(
                "Error opening lock file {} (give a writable directory with -l DIR)",
                path.display()
            )
        })?;
    loop {
        // SAFETY: flock on a descriptor this function owns; no memory is involved.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } == 0 {
            return Ok(f);
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e).with_context(|| format!("Error locking file {}", path.display()));
        }
    }
}

fn tool_location(args: &ToolArgs) -> Result<Resolved> {
    resolve(&Location {
        image: None,
        offset: None,
        size: None,
        redund_offset: None,
        config: Some(args.config.clone()),
    })
}

fn tool_printenv(args: &ToolArgs) -> Result<ExitCode> {
    if args.no_header && args.rest.len() != 1 {
        bail!("`-n' option requires exactly one argument");
    }
    let loc = tool_location(args)?;
    let loaded = load(&loc)?;
    let env = loaded.env();
    let mut out = std::io::stdout().lock();
    if args.rest.is_empty() {
        for (n, v) in env.iter() {
            writeln!(out, "{n}={v}")?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut code = ExitCode::SUCCESS;
    for name in &args.rest {
        match env.get(name) {
            Some(v) if args.no_header => writeln!(out, "{v}")?,
            Some(v) => writeln!(out, "{name}={v}")?,
            None => {
                eprintln!("## Error: \"{name}\" not defined");
                code = ExitCode::FAILURE;
            }
        }
    }
    Ok(code)
}

/// `(name, Some(value))` to set, `(name, None)` to delete.
type Change = (String, Option<String>);

fn read_script(path: &Path) -> Result<Vec<Change>> {
    let reader: Box<dyn BufRead> = if path == Path::new("-") {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(std::io::BufReader::new(File::open(path).with_context(
            || format!("cannot open script {}", path.display()),
        )?))
    };
    let mut changes = Vec::new();
    for line in reader.lines() {
        let line = line.with_context(|| format!("reading script {}", path.display()))?;
        let t = line.trim_start();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        match t.split_once([' ', '\t']) {
            Some((n, v)) => {
                let v = v.trim_start();
                changes.push((n.to_string(), (!v.is_empty()).then(|| v.to_string())))
            }
            None => changes.push((t.to_string(), None)),
        }
    }
    Ok(changes)
}

fn tool_setenv(args: &ToolArgs) -> Result<ExitCode> {
    let changes: Vec<Change> = match &args.script {
        Some(s) => {
            if !args.rest.is_empty() {
                bail!("give either -s SCRIPT or NAME [VALUE ...], not both");
            }
            read_script(s)?
        }
        None => {
            let Some((name, values)) = args.rest.split_first() else {
                bail!("no variable name given\n{SETENV_USAGE}");
            };
            let value = values.join(" ");
            vec![(name.clone(), (!value.is_empty()).then_some(value))]
        }
    };
    let loc = tool_location(args)?;
    let mut loaded = load(&loc)?;
    for (name, value) in changes {
        match value {
            Some(v) => loaded.env_mut().set(&name, &v)?,
            None => {
                loaded.env_mut().unset(&name);
            }
        }
    }
    store(&loc, &mut loaded)?;
    Ok(ExitCode::SUCCESS)
}
