//! Small guest kernels from the Kconfig fragments in this directory, built once and cached.
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

use sha2::{Digest, Sha256};

/// Debian's kernel source (package linux-source-6.1, installed by scripts/install-deps).
pub const DEFAULT_SOURCE: &str = "/usr/src/linux-source-6.1.tar.xz";
/// Bumped when the build recipe changes, so old cache entries are not reused.
const RECIPE_VERSION: &str = "1";

/// Built-in fragments (`*.config` beside this crate), embedded so an installed binary has them.
pub const FRAGMENTS: &[(&str, &str)] = &[
    ("qemu-aarch64", include_str!("../qemu-aarch64.config")),
    ("small-memory", include_str!("../small-memory.config")),
];

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}", common::cache::NoCacheDir)]
    NoCacheDir,
    #[error("unsupported arch {0:?}: the only one is aarch64")]
    UnknownArch(String),
    #[error("unknown kernel config fragment {name:?}: built-in ones are {known}; or give a path to a .config file")]
    UnknownFragment { name: String, known: String },
    #[error("reading config fragment {path}")]
    ReadFragment {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{fragment} line {line}: {text:?} is not {want}")]
    Syntax {
        fragment: String,
        line: usize,
        text: String,
        want: &'static str,
    },
    #[error("kernel source {path}: {reason}: {hint}")]
    SourceMissing {
        path: String,
        reason: std::io::Error,
        hint: &'static str,
    },
    #[error("kernel source {0} has no Makefile or arch/arm64: not a Linux source tree")]
    NotATree(String),
    #[error(
        "{gcc}: {reason}: install the cross compiler (gcc-aarch64-linux-gnu; scripts/install-deps)"
    )]
    NoCompiler { gcc: String, reason: std::io::Error },
    #[error("{what} failed{}{output}", status.as_ref().map(|s| format!(" ({s}):\n")).unwrap_or_else(|| ": ".into()))]
    StepFailed {
        what: String,
        status: Option<String>,
        output: String,
    },
    #[error("{n} requested kernel option(s) did not survive `make olddefconfig`:\n  {}", .bad.join("\n  "), n = .bad.len())]
    Dropped { bad: Vec<String> },
    #[error("kernel build failed ({status}); last lines:\n{last}\nfull log: {log}")]
    BuildFailed {
        status: String,
        last: String,
        log: String,
    },
    #[error("unpacking {tarball}: {stderr}")]
    Unpack { tarball: String, stderr: String },
    #[error("{0} holds no kernel tree (no Makefile at its top level)")]
    NoTree(String),
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// The input is wrong (a fragment, a symbol, the source path), not the machine.
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            Error::UnknownArch(_)
                | Error::UnknownFragment { .. }
                | Error::Syntax { .. }
                | Error::SourceMissing { .. }
                | Error::NotATree(_)
                | Error::Dropped { .. }
        )
    }
}

type Result<T, E = Error> = std::result::Result<T, E>;

/// Context for an io error: what was being done, naming the file.
fn io(what: impl FnOnce() -> String) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io {
        what: what(),
        source,
    }
}

/// What a build reports while it runs; every method defaults to nothing.
pub trait Progress {
    /// A one-line note for the user (configuring, waiting for a lock, built).
    fn note(&mut self, _msg: &str) {}
    /// Unpacking the source tarball starts / ends.
    fn unpack_start(&mut self, _tarball: &Path) {}
    fn unpack_end(&mut self) {}
    /// `make Image` starts; the previous build of this tree took `expected` steps.
    fn build_start(&mut self, _expected: u64) {}
    /// One compile/assemble/link step (`CC foo.o`), counted from 1.
    fn build_step(&mut self, _step: u64, _line: &str) {}
    fn build_end(&mut self) {}
}

/// No progress output.
impl Progress for () {}

/// The cache root ([`common::cache::root`]).
pub fn cache_root() -> Result<PathBuf> {
    common::cache::root().map_err(|_| Error::NoCacheDir)
}

/// A built-in fragment's one-line description (its first comment line).
pub fn about(text: &str) -> &str {
    text.lines()
        .next()
        .unwrap_or("")
        .trim_start_matches('#')
        .trim()
}

/// A fragment, resolved to its text.
#[derive(Debug, Clone)]
pub struct Fragment {
    pub name: String,
    pub text: String,
}

/// A built-in fragment by name, or a `.config` file by path.
pub fn resolve_fragment(name: &str) -> Result<Fragment> {
    if let Some((_, text)) = FRAGMENTS.iter().find(|(n, _)| *n == name) {
        return Ok(Fragment {
            name: name.to_string(),
            text: text.to_string(),
        });
    }
    let path = Path::new(name);
    if name.contains('/') || name.ends_with(".config") {
        let text = fs::read_to_string(path).map_err(|source| Error::ReadFragment {
            path: path.display().to_string(),
            source,
        })?;
        return Ok(Fragment {
            name: path.display().to_string(),
            text,
        });
    }
    let known: Vec<&str> = FRAGMENTS.iter().map(|(n, _)| *n).collect();
    Err(Error::UnknownFragment {
        name: name.to_string(),
        known: known.join(", "),
    })
}

/// One requested symbol: `Some(value)` for `CONFIG_X=value`, `None` for "is not set".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub value: Option<String>,
    pub fragment: String,
    pub line: usize,
}

/// Requested symbols of all fragments; a later fragment overrides an earlier one.
pub fn requests(frags: &[Fragment]) -> Result<BTreeMap<String, Request>> {
    let mut out = BTreeMap::new();
    for f in frags {
        for (i, raw) in f.text.lines().enumerate() {
            let line = raw.trim();
            let syntax = |want| Error::Syntax {
                fragment: f.name.clone(),
                line: i + 1,
                text: raw.to_string(),
                want,
            };
            let (sym, value) = if let Some(rest) = line.strip_prefix("# CONFIG_") {
                match rest.strip_suffix(" is not set") {
                    Some(sym) => (format!("CONFIG_{sym}"), None),
                    None => continue,
                }
            } else if line.is_empty() || line.starts_with('#') {
                continue;
            } else if let Some((sym, value)) = line.split_once('=') {
                if !sym.starts_with("CONFIG_") {
                    return Err(syntax("CONFIG_NAME=value"));
                }
                (sym.to_string(), Some(value.to_string()))
            } else {
                return Err(syntax("CONFIG_NAME=value or \"# CONFIG_NAME is not set\""));
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
pub fn read_dotconfig(text: &str) -> BTreeMap<String, Option<String>> {
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
pub fn check_config(req: &BTreeMap<String, Request>, dotconfig: &str) -> Vec<String> {
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
    let meta = fs::metadata(&given).map_err(|reason| Error::SourceMissing {
        path: given.display().to_string(),
        reason,
        hint: if arg.is_none() {
            "install Debian's linux-source-6.1 (scripts/install-deps) or pass --source"
        } else {
            "pass a kernel tree or a .tar.xz/.tar.gz of one"
        },
    })?;
    let canon =
        fs::canonicalize(&given).map_err(io(|| format!("resolving {}", given.display())))?;
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
        return Err(Error::NotATree(given.display().to_string()));
    }
    Ok(Source {
        given: canon,
        tarball,
        id: common::hex::encode(&h.finalize())[..16].to_string(),
    })
}

fn cross_compiler_version(prefix: &str) -> Result<String> {
    let gcc = format!("{prefix}gcc");
    let out = Process::new(&gcc)
        .arg("--version")
        .output()
        .map_err(|reason| Error::NoCompiler {
            gcc: gcc.clone(),
            reason,
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
        .map_err(io(|| {
            format!("running make kernelversion in {}", tree.display())
        }))?;
    if !out.status.success() {
        return Err(Error::StepFailed {
            what: format!("make kernelversion in {}", tree.display()),
            status: None,
            output: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The cache directory name of a build: 16 hex digits of a hash over the recipe version, the
/// arch, the source id, the compiler's version line, a tree's `kernelversion` (tarballs: none)
/// and each fragment's name and text. Changing it makes every cached kernel rebuild.
pub fn cache_key(
    arch: &str,
    source_id: &str,
    gcc: &str,
    tree_version: Option<&str>,
    frags: &[Fragment],
) -> String {
    let mut key = Sha256::new();
    for part in [RECIPE_VERSION, arch, source_id, gcc] {
        key.update(part.as_bytes());
        key.update([0]);
    }
    if let Some(v) = tree_version {
        key.update(v.as_bytes());
    }
    for f in frags {
        key.update(f.name.as_bytes());
        key.update([0]);
        key.update(f.text.as_bytes());
        key.update([0]);
    }
    common::hex::encode(&key.finalize())[..16].to_string()
}

/// What to build.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Guest architecture (aarch64).
    pub arch: String,
    /// Extra fragments (built-in names or `.config` paths), applied after `qemu-<arch>`.
    pub fragments: Vec<String>,
    /// A tree or a .tar.{xz,gz}; default [`DEFAULT_SOURCE`].
    pub source: Option<PathBuf>,
    /// Parallel make jobs; default the number of CPUs.
    pub jobs: Option<usize>,
    /// Rebuild even when cached.
    pub force: bool,
    /// Stop after merging and checking the config; return the merged .config's path.
    pub config_only: bool,
}

/// Build the Image (or, with `config_only`, the checked .config) or return the cached one.
pub fn build(a: &BuildOptions, progress: &mut dyn Progress) -> Result<PathBuf> {
    let arch = a.arch.as_str();
    let (karch, cross) = match arch {
        "aarch64" => ("arm64", "aarch64-linux-gnu-"),
        _ => return Err(Error::UnknownArch(arch.to_string())),
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
    let tree_version = if src.tarball {
        None
    } else {
        Some(kernel_version(&src.given)?)
    };
    let key = cache_key(arch, &src.id, &gcc, tree_version.as_deref(), &frags);

    let root = cache_root()?.join("kernels");
    let out_dir = root.join(&key);
    let image = out_dir.join("Image");
    if image.is_file() && !a.force && !a.config_only {
        tracing::info!("cached kernel {}", image.display());
        return Ok(image);
    }
    fs::create_dir_all(&root).map_err(io(|| format!("creating {}", root.display())))?;
    let _lock = DirLock::acquire(
        &root.join(format!("build-{arch}-{}.lock", src.id)),
        progress,
    )?;
    if image.is_file() && !a.force && !a.config_only {
        return Ok(image); // another imgtool built it while we waited
    }

    let tree = if src.tarball {
        extract(&src, &root.join("src"), progress)?
    } else {
        src.given.clone()
    };
    let build_dir = root.join("build").join(format!("{arch}-{}", src.id));
    fs::create_dir_all(&build_dir).map_err(io(|| format!("creating {}", build_dir.display())))?;
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
    progress.note(&format!(
        "configuring {} with {}",
        tree.display(),
        names.join(" + ")
    ));
    run_quiet(make(&["-s", "allnoconfig"]), "make allnoconfig")?;
    let frag_dir = build_dir.join(format!(".fragments-{}", std::process::id()));
    fs::create_dir_all(&frag_dir).map_err(io(|| format!("creating {}", frag_dir.display())))?;
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
        fs::write(&p, &f.text).map_err(io(|| format!("writing {}", p.display())))?;
        merge.arg(p);
    }
    run_quiet(merge, "scripts/kconfig/merge_config.sh")?;
    run_quiet(make(&["-s", "olddefconfig"]), "make olddefconfig")?;
    let _ = fs::remove_dir_all(&frag_dir);
    let config_path = build_dir.join(".config");
    let dotconfig = fs::read_to_string(&config_path)
        .map_err(io(|| format!("reading {}", config_path.display())))?;
    let bad = check_config(&req, &dotconfig);
    if !bad.is_empty() {
        return Err(Error::Dropped { bad });
    }
    if a.config_only {
        let merged = root.join(format!("config-{key}"));
        fs::write(&merged, &dotconfig).map_err(io(|| format!("writing {}", merged.display())))?;
        return Ok(merged);
    }

    // Build, counting compiled files against the previous build's count for progress.
    let count_file = build_dir.join(".imgtool-steps");
    let expected: u64 = fs::read_to_string(&count_file)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1000);
    progress.build_start(expected);
    let started = Instant::now();
    let log_path = build_dir.join("build.log");
    let log_err = io(|| format!("writing {}", log_path.display()));
    let mut log =
        fs::File::create(&log_path).map_err(io(|| format!("creating {}", log_path.display())))?;
    let mut child = make(&[&format!("-j{jobs}"), "Image"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(io(|| "starting make".to_string()))?;
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
    let mut write_log = |lines: &mut dyn Iterator<Item = &str>| -> std::io::Result<()> {
        for l in lines {
            writeln!(log, "{l}")?;
        }
        Ok(())
    };
    let mut logged = Ok(());
    for l in BufReader::new(child.stdout.take().expect("piped"))
        .lines()
        .map_while(Result::ok)
    {
        if logged.is_ok() {
            logged = write_log(&mut std::iter::once(l.as_str()));
        }
        let t = l.trim_start();
        if t.starts_with("CC ") || t.starts_with("AS ") || t.starts_with("LD ") {
            steps += 1;
            progress.build_step(steps, t);
        }
    }
    let status = child
        .wait()
        .map_err(io(|| "waiting for make".to_string()))?;
    let err_lines = err_thread.join().unwrap_or_default();
    if logged.is_ok() {
        logged = write_log(&mut err_lines.iter().map(String::as_str));
    }
    progress.build_end();
    logged.map_err(log_err)?;
    if !status.success() {
        let from = err_lines.len().saturating_sub(30);
        return Err(Error::BuildFailed {
            status: status.to_string(),
            last: err_lines[from..].join("\n"),
            log: log_path.display().to_string(),
        });
    }
    fs::write(&count_file, steps.max(1).to_string())
        .map_err(io(|| format!("writing {}", count_file.display())))?;

    let built = build_dir.join(format!("arch/{karch}/boot/Image"));
    fs::create_dir_all(&out_dir).map_err(io(|| format!("creating {}", out_dir.display())))?;
    let tmp = out_dir.join("Image.tmp");
    fs::copy(&built, &tmp).map_err(io(|| format!("copying {}", built.display())))?;
    let write = |name: &str, text: &str| {
        let p = out_dir.join(name);
        fs::write(&p, text).map_err(io(|| format!("writing {}", p.display())))
    };
    write("config", &dotconfig)?;
    write(
        "recipe.txt",
        &format!(
            "source: {}\nfragments: {}\ncompiler: {gcc}\n",
            src.given.display(),
            names.join(" ")
        ),
    )?;
    fs::rename(&tmp, &image).map_err(io(|| format!("renaming {}", tmp.display())))?;
    progress.note(&format!(
        "kernel built in {:.0?} ({} steps)",
        started.elapsed(),
        steps
    ));
    Ok(image)
}

fn run_quiet(mut p: Process, what: &str) -> Result<()> {
    let out = p.output().map_err(io(|| format!("starting {what}")))?;
    if !out.status.success() {
        return Err(Error::StepFailed {
            what: what.to_string(),
            status: Some(out.status.to_string()),
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        });
    }
    Ok(())
}

/// Unpack the tarball once into `<dir>/<id>/` (via a temporary name, so a half-unpacked tree is
/// never used) and return the tree inside.
fn extract(src: &Source, dir: &Path, progress: &mut dyn Progress) -> Result<PathBuf> {
    let dest = dir.join(&src.id);
    if !dest.is_dir() {
        fs::create_dir_all(dir).map_err(io(|| format!("creating {}", dir.display())))?;
        let tmp = dir.join(format!("{}.tmp-{}", src.id, std::process::id()));
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir_all(&tmp).map_err(io(|| format!("creating {}", tmp.display())))?;
        progress.unpack_start(&src.given);
        let r = Process::new("tar")
            .arg("-xf")
            .arg(&src.given)
            .arg("-C")
            .arg(&tmp)
            .output();
        progress.unpack_end();
        let r = r.map_err(io(|| "running tar".to_string()))?;
        if !r.status.success() {
            let _ = fs::remove_dir_all(&tmp);
            return Err(Error::Unpack {
                tarball: src.given.display().to_string(),
                stderr: String::from_utf8_lossy(&r.stderr).into_owned(),
            });
        }
        fs::rename(&tmp, &dest).map_err(io(|| format!("renaming {}", tmp.display())))?;
    }
    // The tarball's single top-level directory (or the root itself).
    if dest.join("Makefile").is_file() {
        return Ok(dest);
    }
    let entries = fs::read_dir(&dest).map_err(io(|| format!("reading {}", dest.display())))?;
    for e in entries {
        let p = e
            .map_err(io(|| format!("reading {}", dest.display())))?
            .path();
        if p.join("Makefile").is_file() {
            return Ok(p);
        }
    }
    Err(Error::NoTree(src.given.display().to_string()))
}

/// A lock held as a directory with our pid inside; a dead holder's lock is taken over.
struct DirLock(PathBuf);

impl DirLock {
    fn acquire(path: &Path, progress: &mut dyn Progress) -> Result<DirLock> {
        let mut told = false;
        loop {
            match fs::create_dir(path) {
                Ok(()) => {
                    let pid = path.join("pid");
                    fs::write(&pid, std::process::id().to_string())
                        .map_err(io(|| format!("writing {}", pid.display())))?;
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
                        progress.note(&format!(
                            "waiting for another kernel build ({})",
                            path.display()
                        ));
                        told = true;
                    }
                    std::thread::sleep(Duration::from_millis(500));
                }
                Err(e) => return Err(io(|| format!("creating lock {}", path.display()))(e)),
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
        assert!(e.is_usage());
        assert_eq!(
            e.to_string(),
            "c line 1: \"VIRTIO=y\" is not CONFIG_NAME=value"
        );
        let e = requests(&[frag("d", "\n CONFIG_X\n")]).unwrap_err();
        assert!(e
            .to_string()
            .starts_with("d line 2: \" CONFIG_X\" is not CONFIG_NAME=value or"));
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
        let e = Error::Dropped { bad: msgs };
        assert!(e.is_usage());
        assert!(e.to_string().starts_with(
            "3 requested kernel option(s) did not survive `make olddefconfig`:\n  CONFIG_"
        ));
    }

    #[test]
    fn builtin_fragments_parse() {
        for (name, text) in FRAGMENTS {
            let f = resolve_fragment(name).unwrap();
            let r = requests(&[f]).unwrap();
            assert!(!r.is_empty());
            assert!(!about(text).is_empty(), "{name} has no description line");
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
        let e = resolve_fragment("nope").unwrap_err();
        assert!(e.is_usage());
        assert!(e.to_string().contains("qemu-aarch64, small-memory"), "{e}");
    }

    /// The key names cache directories of kernels that take minutes to build: it must only
    /// change on purpose (then bump RECIPE_VERSION and this value together).
    #[test]
    fn cache_key_is_stable_and_covers_every_input() {
        let frags = [frag("qemu-aarch64", "CONFIG_A=y\n")];
        let k = cache_key("aarch64", "0123456789abcdef", "gcc 12", None, &frags);
        // Computed independently (Python hashlib) from the recipe above, before the move.
        assert_eq!(k, "fbdb37129ecadac4");
        assert_eq!(k.len(), 16);
        for other in [
            cache_key("aarch64", "0123456789abcdee", "gcc 12", None, &frags),
            cache_key("aarch64", "0123456789abcdef", "gcc 13", None, &frags),
            cache_key(
                "aarch64",
                "0123456789abcdef",
                "gcc 12",
                Some("6.1.0"),
                &frags,
            ),
            cache_key(
                "aarch64",
                "0123456789abcdef",
                "gcc 12",
                None,
                &[frag("qemu-aarch64", "CONFIG_A=m\n")],
            ),
            cache_key(
                "aarch64",
                "0123456789abcdef",
                "gcc 12",
                None,
                &[frag("other", "CONFIG_A=y\n")],
            ),
        ] {
            assert_ne!(other, k);
        }
    }
}
