//! `imgtool kernel build|fragments`: a small guest kernel from kernel-configs/ fragments, cached.
//!
//! Recipe (Documentation/kbuild/kconfig.rst, <https://www.kernel.org/doc/html/v6.1/kbuild/kconfig.html>):
//! `make allnoconfig`, `scripts/kconfig/merge_config.sh -m` with the fragments, `make
//! olddefconfig`, then every requested symbol is checked against the merged `.config` (Kconfig
//! drops a symbol whose dependencies are off and merge_config only warns), then `make Image`.
//! The Image is cached under `<cache>/imgtool/kernels/<key>/Image`, the key hashing the source's
//! identity, the fragments' text and the compiler's version.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Stdio};
use std::time::{Duration, Instant, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};

use super::UsageError;

/// Debian's kernel source (package linux-source-6.1, installed by scripts/install-deps).
const DEFAULT_SOURCE: &str = "/usr/src/linux-source-6.1.tar.xz";
/// Bumped when the build recipe changes, so old cache entries are not reused.
const RECIPE_VERSION: &str = "1";

/// Built-in fragments (kernel-configs/*.config), embedded so an installed binary has them.
const FRAGMENTS: &[(&str, &str)] = &[
    (
        "qemu-aarch64",
        include_str!("../../../kernel-configs/qemu-aarch64.config"),
    ),
    (
        "small-memory",
        include_str!("../../../kernel-configs/small-memory.config"),
    ),
];

#[derive(clap::Subcommand)]
pub enum Command {
    /// Build (or find in the cache) a kernel Image; prints its path as the last line.
    Build(BuildArgs),
    /// List the built-in config fragments.
    Fragments,
}

#[derive(clap::Args)]
pub struct BuildArgs {
    /// Guest architecture.
    #[arg(long, default_value = "aarch64", value_parser = ["aarch64"])]
    arch: String,
    /// Extra fragment: a built-in name (see `imgtool kernel fragments`) or a .config file path.
    /// Applied in order after the arch's base fragment (`qemu-<arch>`).
    #[arg(long = "fragment", value_name = "NAME")]
    fragments: Vec<String>,
    /// Kernel source: a tree or a .tar.{xz,gz} [default: /usr/src/linux-source-6.1.tar.xz].
    #[arg(long, value_name = "PATH_OR_TARBALL")]
    source: Option<PathBuf>,
    /// Parallel make jobs [default: number of CPUs].
    #[arg(long, short = 'j')]
    jobs: Option<usize>,
    /// Rebuild even when the cache has this kernel.
    #[arg(long)]
    force: bool,
    /// Stop after merging and checking the config; print the merged .config's path.
    #[arg(long)]
    config_only: bool,
}

pub fn run(c: Command) -> Result<()> {
    match c {
        Command::Build(a) => {
            let image = build(&a)?;
            println!("{}", image.display());
            Ok(())
        }
        Command::Fragments => {
            for (name, text) in FRAGMENTS {
                let about = text
                    .lines()
                    .next()
                    .unwrap_or("")
                    .trim_start_matches('#')
                    .trim();
                println!("{name:14} {about}");
            }
            Ok(())
        }
    }
}

/// `$XDG_CACHE_HOME/imgtool` or `~/.cache/imgtool`.
pub fn cache_root() -> Result<PathBuf> {
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|x| !x.is_empty()) {
        return Ok(PathBuf::from(x).join("imgtool"));
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .context("neither XDG_CACHE_HOME nor HOME is set: cannot place the cache")?;
    Ok(PathBuf::from(home).join(".cache/imgtool"))
}

/// A fragment, resolved to its text.
struct Fragment {
    name: String,
    text: String,
}

fn resolve_fragment(name: &str) -> Result<Fragment> {
    if let Some((_, text)) = FRAGMENTS.iter().find(|(n, _)| *n == name) {
        return Ok(Fragment {
            name: name.to_string(),
            text: text.to_string(),
        });
    }
    let path = Path::new(name);
    if name.contains('/') || name.ends_with(".config") {
        let text = fs::read_to_string(path)
            .with_context(|| format!("reading config fragment {}", path.display()))?;
        return Ok(Fragment {
            name: path.display().to_string(),
            text,
        });
    }
    let known: Vec<&str> = FRAGMENTS.iter().map(|(n, _)| *n).collect();
    Err(UsageError(format!(
        "unknown kernel config fragment {name:?}: built-in ones are {}; or give a path to a .config file",
        known.join(", ")
    ))
    .into())
}

/// One requested symbol: `Some(value)` for `CONFIG_X=value`, `None` for "is not set".
#[derive(Debug, Clone, PartialEq, Eq)]
struct Request {
    value: Option<String>,
    fragment: String,
    line: usize,
}

/// Requested symbols of all fragments; a later fragment overrides an earlier one.
fn requests(frags: &[Fragment]) -> Result<BTreeMap<String, Request>> {
    let mut out = BTreeMap::new();
    for f in frags {
        for (i, raw) in f.text.lines().enumerate() {
            let line = raw.trim();
            let (sym, value) = if let Some(rest) = line.strip_prefix("# CONFIG_") {
                match rest.strip_suffix(" is not set") {
                    Some(sym) => (format!("CONFIG_{sym}"), None),
                    None => continue,
                }
            } else if line.is_empty() || line.starts_with('#') {
                continue;
            } else if let Some((sym, value)) = line.split_once('=') {
                if !sym.starts_with("CONFIG_") {
                    bail!(UsageError(format!(
                        "{} line {}: {raw:?} is not CONFIG_NAME=value",
                        f.name,
                        i + 1
                    )));
                }
                (sym.to_string(), Some(value.to_string()))
            } else {
                bail!(UsageError(format!(
                    "{} line {}: {raw:?} is not CONFIG_NAME=value or \"# CONFIG_NAME is not set\"",
                    f.name,
                    i + 1
                )));
            };
            out.insert(
                sym,
                Request {
                    value,
                    fragment: f.name.clone(),
                    line: i + 1,
                },
            );
        }
    }
    Ok(out)
}

/// Symbols of a `.config`: `Some(value)` when set, absent or `None` when not.
fn read_dotconfig(text: &str) -> BTreeMap<String, Option<String>> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# CONFIG_") {
            if let Some(sym) = rest.strip_suffix(" is not set") {
                out.insert(format!("CONFIG_{sym}"), None);
            }
        } else if let Some((sym, value)) = line.split_once('=') {
            if sym.starts_with("CONFIG_") {
                out.insert(sym.to_string(), Some(value.to_string()));
            }
        }
    }
    out
}

/// Every requested symbol that did not land, one line each.
fn check_config(req: &BTreeMap<String, Request>, dotconfig: &str) -> Vec<String> {
    let have = read_dotconfig(dotconfig);
    let mut bad = Vec::new();
    for (sym, r) in req {
        let got = have.get(sym).cloned().flatten();
        let ok = match (&r.value, &got) {
            (None, None) => true,
            (None, Some(v)) => v == "n",
            (Some(want), Some(v)) => want == v,
            (Some(want), None) => want == "n",
        };
        if !ok {
            let want = r.value.as_deref().unwrap_or("n (is not set)");
            let got = got.as_deref().unwrap_or("unset");
            bad.push(format!(
                "{sym}={want} ({} line {}) ended up {got} in .config: Kconfig dropped it, \
                 usually because a symbol it depends on is off; add that symbol to the fragment",
                r.fragment, r.line
            ));
        }
    }
    bad
}

/// Where the kernel source is, and what identifies it for the cache key.
struct Source {
    /// Tarball or tree given by the user.
    given: PathBuf,
    tarball: bool,
    /// Short id for directory names.
    id: String,
}

fn resolve_source(arg: Option<&Path>) -> Result<Source> {
    let given = arg
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOURCE));
    let meta = fs::metadata(&given).map_err(|e| {
        let hint = if arg.is_none() {
            "install Debian's linux-source-6.1 (scripts/install-deps) or pass --source"
        } else {
            "pass a kernel tree or a .tar.xz/.tar.gz of one"
        };
        UsageError(format!("kernel source {}: {e}: {hint}", given.display()))
    })?;
    let canon = fs::canonicalize(&given)?;
    let tarball = meta.is_file();
    let mut h = Sha256::new();
    h.update(canon.to_string_lossy().as_bytes());
    if tarball {
        // Path, size and mtime: a changed tarball (a Debian update) gets a new id.
        let mtime = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_secs())
            .unwrap_or(0);
        h.update(meta.len().to_le_bytes());
        h.update(mtime.to_le_bytes());
    } else if !canon.join("Makefile").is_file() || !canon.join("arch/arm64").is_dir() {
        bail!(UsageError(format!(
            "kernel source {} has no Makefile or arch/arm64: not a Linux source tree",
            given.display()
        )));
    }
    Ok(Source {
        given: canon,
        tarball,
        id: hex(&h.finalize())[..16].to_string(),
    })
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn cross_compiler_version(prefix: &str) -> Result<String> {
    let gcc = format!("{prefix}gcc");
    let out = Process::new(&gcc).arg("--version").output().map_err(|e| {
        anyhow::anyhow!(
            "{gcc}: {e}: install the cross compiler (gcc-aarch64-linux-gnu; scripts/install-deps)"
        )
    })?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or("")
        .to_string())
}

/// `make -s kernelversion` of a tree (part of the key for user trees, whose files may change).
fn kernel_version(tree: &Path) -> Result<String> {
    let out = Process::new("make")
        .args(["-s", "kernelversion"])
        .current_dir(tree)
        .output()
        .with_context(|| format!("running make kernelversion in {}", tree.display()))?;
    if !out.status.success() {
        bail!(
            "make kernelversion in {} failed: {}",
            tree.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Build the Image or return the cached one.
pub fn build(a: &BuildArgs) -> Result<PathBuf> {
    let arch = a.arch.as_str();
    let (karch, cross) = match arch {
        "aarch64" => ("arm64", "aarch64-linux-gnu-"),
        _ => unreachable!("clap restricts --arch"),
    };
    let mut names = vec![format!("qemu-{arch}")];
    for f in &a.fragments {
        if !names.contains(f) {
            names.push(f.clone());
        }
    }
    let frags = names
        .iter()
        .map(|n| resolve_fragment(n))
        .collect::<Result<Vec<_>>>()?;
    let req = requests(&frags)?;
    let src = resolve_source(a.source.as_deref())?;
    let gcc = cross_compiler_version(cross)?;

    let mut key = Sha256::new();
    for part in [RECIPE_VERSION, arch, &src.id, &gcc] {
        key.update(part.as_bytes());
        key.update([0]);
    }
    if !src.tarball {
        key.update(kernel_version(&src.given)?.as_bytes());
    }
    for f in &frags {
        key.update(f.name.as_bytes());
        key.update([0]);
        key.update(f.text.as_bytes());
        key.update([0]);
    }
    let key = hex(&key.finalize())[..16].to_string();

    let root = cache_root()?.join("kernels");
    let out_dir = root.join(&key);
    let image = out_dir.join("Image");
    if image.is_file() && !a.force && !a.config_only {
        tracing::info!("cached kernel {}", image.display());
        return Ok(image);
    }
    fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    let _lock = DirLock::acquire(&root.join(format!("build-{arch}-{}.lock", src.id)))?;
    if image.is_file() && !a.force && !a.config_only {
        return Ok(image); // another imgtool built it while we waited
    }

    let tree = if src.tarball {
        extract(&src, &root.join("src"))?
    } else {
        src.given.clone()
    };
    let build_dir = root.join("build").join(format!("{arch}-{}", src.id));
    fs::create_dir_all(&build_dir)?;
    let jobs = a
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let make = |args: &[&str]| -> Process {
        let mut p = Process::new("make");
        p.current_dir(&tree)
            .arg(format!("ARCH={karch}"))
            .arg(format!("CROSS_COMPILE={cross}"))
            .arg(format!("O={}", build_dir.display()))
            .args(args);
        p
    };

    // Configure.
    eprintln!(
        "imgtool: configuring {} with {}",
        tree.display(),
        names.join(" + ")
    );
    run_quiet(make(&["-s", "allnoconfig"]), "make allnoconfig")?;
    let frag_dir = tempfile_dir(&build_dir)?;
    let mut merge = Process::new(tree.join("scripts/kconfig/merge_config.sh"));
    merge
        .current_dir(&tree)
        .env("ARCH", karch)
        .env("CROSS_COMPILE", cross)
        .args(["-m", "-O"])
        .arg(&build_dir)
        .arg(build_dir.join(".config"));
    for (i, f) in frags.iter().enumerate() {
        let p = frag_dir.join(format!("{i}.config"));
        fs::write(&p, &f.text)?;
        merge.arg(p);
    }
    run_quiet(merge, "scripts/kconfig/merge_config.sh")?;
    run_quiet(make(&["-s", "olddefconfig"]), "make olddefconfig")?;
    let _ = fs::remove_dir_all(&frag_dir);
    let dotconfig = fs::read_to_string(build_dir.join(".config"))?;
    let bad = check_config(&req, &dotconfig);
    if !bad.is_empty() {
        bail!(UsageError(format!(
            "{} requested kernel option(s) did not survive `make olddefconfig`:\n  {}",
            bad.len(),
            bad.join("\n  ")
        )));
    }
    if a.config_only {
        let merged = root.join(format!("config-{key}"));
        fs::write(&merged, &dotconfig)?;
        return Ok(merged);
    }

    // Build, counting compiled files against the previous build's count for progress.
    let count_file = build_dir.join(".imgtool-steps");
    let expected: u64 = fs::read_to_string(&count_file)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1000);
    let bar = ProgressBar::new(expected).with_style(
        ProgressStyle::with_template(
            "{spinner} kernel {elapsed_precise} [{bar:30}] {pos}/~{len} {wide_msg}",
        )
        .expect("static template")
        .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    let started = Instant::now();
    let log_path = build_dir.join("build.log");
    let mut log = fs::File::create(&log_path)?;
    let mut child = make(&[&format!("-j{jobs}"), "Image"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting make")?;
    // stderr on its own thread so neither pipe fills up.
    let stderr = child.stderr.take().expect("piped");
    let err_thread = std::thread::spawn(move || {
        let mut lines = Vec::new();
        for l in BufReader::new(stderr).lines().map_while(Result::ok) {
            lines.push(l);
        }
        lines
    });
    let mut steps = 0u64;
    let mut tail: Vec<String> = Vec::new();
    for l in BufReader::new(child.stdout.take().expect("piped"))
        .lines()
        .map_while(Result::ok)
    {
        writeln!(log, "{l}")?;
        let t = l.trim_start();
        if t.starts_with("CC ") || t.starts_with("AS ") || t.starts_with("LD ") {
            steps += 1;
            if steps > bar.length().unwrap_or(0) {
                bar.set_length(steps);
            }
            bar.set_position(steps);
            bar.set_message(t.to_string());
        }
        tail.push(l);
        if tail.len() > 40 {
            tail.remove(0);
        }
    }
    let status = child.wait()?;
    let err_lines = err_thread.join().unwrap_or_default();
    for l in &err_lines {
        writeln!(log, "{l}")?;
    }
    bar.finish_and_clear();
    if !status.success() {
        let last: Vec<&String> = err_lines.iter().rev().take(30).collect();
        let last: Vec<&str> = last.into_iter().rev().map(String::as_str).collect();
        bail!(
            "kernel build failed ({status}); last lines:\n{}\nfull log: {}",
            last.join("\n"),
            log_path.display()
        );
    }
    fs::write(&count_file, steps.max(1).to_string())?;

    let built = build_dir.join(format!("arch/{karch}/boot/Image"));
    fs::create_dir_all(&out_dir)?;
    let tmp = out_dir.join("Image.tmp");
    fs::copy(&built, &tmp).with_context(|| format!("copying {}", built.display()))?;
    fs::write(out_dir.join("config"), &dotconfig)?;
    fs::write(
        out_dir.join("recipe.txt"),
        format!(
            "source: {}\nfragments: {}\ncompiler: {gcc}\n",
            src.given.display(),
            names.join(" ")
        ),
    )?;
    fs::rename(&tmp, &image)?;
    eprintln!(
        "imgtool: kernel built in {:.0?} ({} steps)",
        started.elapsed(),
        steps
    );
    Ok(image)
}

fn tempfile_dir(parent: &Path) -> Result<PathBuf> {
    let d = parent.join(format!(".fragments-{}", std::process::id()));
    fs::create_dir_all(&d)?;
    Ok(d)
}

fn run_quiet(mut p: Process, what: &str) -> Result<()> {
    let out = p.output().with_context(|| format!("starting {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Unpack the tarball once into `<dir>/<id>/` (via a temporary name, so a half-unpacked tree is
/// never used) and return the tree inside.
fn extract(src: &Source, dir: &Path) -> Result<PathBuf> {
    let dest = dir.join(&src.id);
    if !dest.is_dir() {
        fs::create_dir_all(dir)?;
        let tmp = dir.join(format!("{}.tmp-{}", src.id, std::process::id()));
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir_all(&tmp)?;
        let spinner =
            ProgressBar::new_spinner().with_message(format!("unpacking {}", src.given.display()));
        spinner.enable_steady_tick(Duration::from_millis(200));
        let r = Process::new("tar")
            .arg("-xf")
            .arg(&src.given)
            .arg("-C")
            .arg(&tmp)
            .output()
            .context("running tar")?;
        spinner.finish_and_clear();
        if !r.status.success() {
            let _ = fs::remove_dir_all(&tmp);
            bail!(
                "unpacking {}: {}",
                src.given.display(),
                String::from_utf8_lossy(&r.stderr)
            );
        }
        fs::rename(&tmp, &dest)?;
    }
    // The tarball's single top-level directory (or the root itself).
    if dest.join("Makefile").is_file() {
        return Ok(dest);
    }
    for e in fs::read_dir(&dest)? {
        let p = e?.path();
        if p.join("Makefile").is_file() {
            return Ok(p);
        }
    }
    bail!(
        "{} holds no kernel tree (no Makefile at its top level)",
        src.given.display()
    )
}

/// A lock held as a directory with our pid inside; a dead holder's lock is taken over.
struct DirLock(PathBuf);

impl DirLock {
    fn acquire(path: &Path) -> Result<DirLock> {
        let mut told = false;
        loop {
            match fs::create_dir(path) {
                Ok(()) => {
                    fs::write(path.join("pid"), std::process::id().to_string())?;
                    return Ok(DirLock(path.to_path_buf()));
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let holder = fs::read_to_string(path.join("pid")).unwrap_or_default();
                    let alive = holder
                        .trim()
                        .parse::<u32>()
                        .is_ok_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
                    if !alive && !holder.is_empty() {
                        let _ = fs::remove_dir_all(path);
                        continue;
                    }
                    if !told {
                        eprintln!(
                            "imgtool: waiting for another kernel build ({})",
                            path.display()
                        );
                        told = true;
                    }
                    std::thread::sleep(Duration::from_millis(500));
                }
                Err(e) => {
                    return Err(e).with_context(|| format!("creating lock {}", path.display()))
                }
            }
        }
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frag(name: &str, text: &str) -> Fragment {
        Fragment {
            name: name.into(),
            text: text.into(),
        }
    }

    #[test]
    fn later_fragments_override_and_not_set_is_understood() {
        let r = requests(&[
            frag("a", "CONFIG_A=y\nCONFIG_B=y\n# comment\n"),
            frag("b", "# CONFIG_B is not set\nCONFIG_S=\"x\"\n"),
        ])
        .unwrap();
        assert_eq!(r["CONFIG_A"].value.as_deref(), Some("y"));
        assert_eq!(r["CONFIG_B"].value, None);
        assert_eq!(r["CONFIG_B"].fragment, "b");
        assert_eq!(r["CONFIG_S"].value.as_deref(), Some("\"x\""));
        let e = requests(&[frag("c", "VIRTIO=y\n")]).unwrap_err();
        assert!(format!("{e}").contains("c line 1"), "{e}");
    }

    #[test]
    fn check_names_every_dropped_symbol() {
        let r = requests(&[frag(
            "qemu-aarch64",
            "CONFIG_BLOCK=y\nCONFIG_VIRTIO_BLK=y\n# CONFIG_PCI is not set\nCONFIG_NR=4\n",
        )])
        .unwrap();
        let good = "CONFIG_BLOCK=y\nCONFIG_VIRTIO_BLK=y\n# CONFIG_PCI is not set\nCONFIG_NR=4\n";
        assert!(check_config(&r, good).is_empty());
        let bad = "CONFIG_BLOCK=y\n# CONFIG_VIRTIO_BLK is not set\nCONFIG_PCI=y\nCONFIG_NR=8\n";
        let msgs = check_config(&r, bad);
        assert_eq!(msgs.len(), 3, "{msgs:?}");
        assert!(msgs
            .iter()
            .any(|m| m.starts_with("CONFIG_VIRTIO_BLK=y (qemu-aarch64 line 2)")));
        assert!(msgs.iter().any(|m| m.starts_with("CONFIG_PCI=n")));
        assert!(msgs
            .iter()
            .any(|m| m.contains("CONFIG_NR=4") && m.contains("ended up 8")));
    }

    #[test]
    fn builtin_fragments_parse() {
        for (name, _) in FRAGMENTS {
            let f = resolve_fragment(name).unwrap();
            let r = requests(&[f]).unwrap();
            assert!(!r.is_empty());
        }
        let base = requests(&[resolve_fragment("qemu-aarch64").unwrap()]).unwrap();
        for sym in [
            "CONFIG_VIRTIO_BLK",
            "CONFIG_SQUASHFS",
            "CONFIG_F2FS_FS",
            "CONFIG_ZRAM",
            "CONFIG_DEVTMPFS",
        ] {
            assert_eq!(base[sym].value.as_deref(), Some("y"), "{sym}");
        }
        assert!(resolve_fragment("nope").is_err());
    }
}
