//! `SPEC.lock`: the exact Debian packages a spec resolved to, so a build installs the same
//! set (same versions, same .deb bytes) wherever and whenever it runs, and needs no index.
//!
//! ```yaml
//! version: 1
//! mirror: http://deb.debian.org/debian
//! suite: bookworm
//! components: [main]
//! arch: arm64
//! release-date: Sat, 11 Jul 2026 10:16:37 UTC   # the signed Release file it came from
//! inputs: { ... }           # the spec fields resolution depends on; a change makes it stale
//! packages:                 # in install order
//!   - name: erlang-base
//!     version: 1:25.2.3+dfsg-1+deb12u3
//!     architecture: arm64
//!     sha256: ...
//!     size: 10123456
//!     filename: pool/main/e/erlang/erlang-base_..._arm64.deb
//!     reason: listed          # or `file`, or `/usr/bin/x (pkg) needs libfoo.so.1`
//! ```
//!
//! Like Cargo.lock: the mirror's URL is not an input (any mirror of the suite serves the same
//! files, checked by sha256), so a lockfile made against one mirror builds from another.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::spec::Loaded;
use crate::{Error, Result};

pub const VERSION: u32 = 1;

/// Reasons that mean "the spec asked for it" (installed before the first trim).
pub const REASON_LISTED: &str = "listed";
pub const REASON_FILE: &str = "file";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Lockfile {
    pub version: u32,
    pub mirror: String,
    pub suite: String,
    pub components: Vec<String>,
    pub arch: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release_date: Option<String>,
    pub inputs: Inputs,
    pub packages: Vec<LockedPackage>,
}

/// The parts of a spec that decide which packages go in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Inputs {
    pub merged_usr: bool,
    pub packages: Vec<String>,
    /// Local .debs, as the spec gives their paths.
    pub debs: Vec<String>,
    pub resolve: String,
    pub needed_by: Vec<String>,
    pub ignore_missing: Vec<String>,
    /// Trim patterns (the spec's rules expanded) and keeps: trimming happens before resolution.
    pub trim: Vec<String>,
    pub keep: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct LockedPackage {
    pub name: String,
    pub version: String,
    pub architecture: String,
    pub sha256: String,
    pub size: u64,
    /// Path in the mirror's pool, or the spec's path for a local .deb.
    pub filename: String,
    pub reason: String,
}

impl LockedPackage {
    /// Installed because the spec named it (as a package or a file), not for a library.
    pub fn requested(&self) -> bool {
        self.reason == REASON_LISTED || self.reason == REASON_FILE
    }
}

impl Inputs {
    /// None when the spec has no `debian` section (nothing to lock).
    pub fn of(l: &Loaded) -> Option<Inputs> {
        let d = l.spec.debian.as_ref()?;
        let trim = d.trim.clone().unwrap_or_default();
        Some(Inputs {
            merged_usr: l.spec.merged_usr.unwrap_or(true),
            packages: d.packages.clone(),
            debs: d.debs.iter().map(|x| x.path.clone()).collect(),
            resolve: d.resolve.clone().unwrap_or_else(|| "needed".into()),
            needed_by: d.needed_by.clone(),
            ignore_missing: d.ignore_missing.clone(),
            trim: trim.patterns(),
            keep: trim.keep.clone(),
        })
    }
}

/// The suite and components a spec asks for (with the defaults filled in).
pub fn suite_of(l: &Loaded) -> (String, Vec<String>) {
    let d = l.spec.debian.clone().unwrap_or_default();
    (
        d.suite
            .unwrap_or_else(|| crate::deb::DEFAULT_SUITE.to_string()),
        d.components.unwrap_or_else(|| vec!["main".into()]),
    )
}

impl Lockfile {
    /// Why this lockfile does not fit `l` (each changed field), or Ok.
    pub fn check(&self, l: &Loaded) -> std::result::Result<(), String> {
        if self.version != VERSION {
            return Err(format!(
                "lockfile version {} (this imgtool writes {VERSION})",
                self.version
            ));
        }
        let Some(inputs) = Inputs::of(l) else {
            return Err("the spec has no `debian` section".into());
        };
        let (suite, comps) = suite_of(l);
        let mut changed = Vec::new();
        if self.arch != l.spec.arch {
            changed.push(format!("arch ({} -> {})", self.arch, l.spec.arch));
        }
        if self.suite != suite {
            changed.push(format!("debian.suite ({} -> {suite})", self.suite));
        }
        if self.components != comps {
            changed.push(format!(
                "debian.components ({:?} -> {comps:?})",
                self.components
            ));
        }
        let (a, b) = (
            serde_json::to_value(&self.inputs).unwrap_or_default(),
            serde_json::to_value(&inputs).unwrap_or_default(),
        );
        if let (Some(a), Some(b)) = (a.as_object(), b.as_object()) {
            for (k, va) in a {
                let vb = b.get(k).cloned().unwrap_or_default();
                if *va != vb {
                    let field = if k == "merged-usr" {
                        k.clone()
                    } else {
                        format!("debian.{k}")
                    };
                    changed.push(format!("{field} ({va} -> {vb})"));
                }
            }
        }
        if changed.is_empty() {
            Ok(())
        } else {
            Err(format!("the spec changed: {}", changed.join("; ")))
        }
    }

    pub fn parse(text: &str, file: &str) -> Result<Lockfile> {
        let lf: Lockfile = serde_saphyr::from_str(text).map_err(|e| Error::Input {
            file: file.into(),
            line: None,
            msg: format!("{e} (regenerate it with `imgtool rootfs lock`)"),
        })?;
        for (i, p) in lf.packages.iter().enumerate() {
            if p.sha256.len() != 64 || !p.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(Error::Input {
                    file: file.into(),
                    line: None,
                    msg: format!("packages[{i}].sha256: `{}` is not a sha256", p.sha256),
                });
            }
            if p.name.is_empty() || p.filename.split('/').any(|c| c == "..") {
                return Err(Error::Input {
                    file: file.into(),
                    line: None,
                    msg: format!("packages[{i}]: empty name or `..` in filename"),
                });
            }
        }
        Ok(lf)
    }

    pub fn render(&self) -> Result<String> {
        let body = serde_saphyr::to_string(self)
            .map_err(|e| Error::Other(format!("formatting the lockfile: {e}")))?;
        Ok(format!(
            "# Written by `imgtool rootfs lock`: the exact Debian packages of this spec.\n\
             # Builds install this set; regenerate it to move to newer packages.\n{body}"
        ))
    }

    /// Write through a temporary name beside `path`.
    pub fn write(&self, path: &Path) -> Result<()> {
        let text = self.render()?;
        common::fs::write_atomic(path, text.as_bytes()).map_err(|e| Error::io(path, e))
    }
}

/// `SPEC.lock` beside a spec file; None for a built-in spec.
pub fn default_path(l: &Loaded) -> Option<PathBuf> {
    if l.file.starts_with("builtin:") {
        None
    } else {
        Some(PathBuf::from(format!("{}.lock", l.file)))
    }
}

/// What a build found for its lockfile.
#[derive(Debug)]
pub enum Status {
    /// Fits the spec: install exactly this.
    Fresh(Box<Lockfile>),
    /// There is none (or the spec has no `debian` section).
    Missing,
    /// It exists but the spec changed since; the string says what.
    Stale(String),
}

/// Find and check the lockfile for `l`: `explicit` if given, else `SPEC.lock`, else (for a
/// built-in spec) the lockfile built in beside it. Returns the status and where it looked.
pub fn find(l: &Loaded, explicit: Option<&Path>) -> Result<(Status, String)> {
    if l.spec.debian.is_none() {
        return Ok((Status::Missing, String::new()));
    }
    let (text, from) = match explicit.map(Path::to_path_buf).or_else(|| default_path(l)) {
        Some(p) => match std::fs::read_to_string(&p) {
            Ok(t) => (t, p.display().to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && explicit.is_none() => {
                return Ok((Status::Missing, p.display().to_string()))
            }
            Err(e) => return Err(Error::io(&p, e)),
        },
        None => {
            let name = l.file.trim_start_matches("builtin:");
            match crate::spec::BUILTIN_LOCKS.iter().find(|(n, _)| *n == name) {
                Some((_, t)) => (t.to_string(), format!("builtin:{name}.lock")),
                None => return Ok((Status::Missing, format!("builtin:{name}.lock"))),
            }
        }
    };
    let lf = Lockfile::parse(&text, &from)?;
    Ok(match lf.check(l) {
        Ok(()) => (Status::Fresh(Box::new(lf)), from),
        Err(why) => (Status::Stale(why), from),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(extra: &str) -> Loaded {
        crate::spec::parse(
            &format!("arch: arm64\ndebian:\n  packages: [erlang-base]\n{extra}"),
            "r.yaml",
            Path::new("."),
        )
        .unwrap()
    }

    fn lockfile(l: &Loaded) -> Lockfile {
        Lockfile {
            version: VERSION,
            mirror: "http://deb.debian.org/debian".into(),
            suite: "bookworm".into(),
            components: vec!["main".into()],
            arch: "arm64".into(),
            release_date: Some("Sat, 11 Jul 2026 10:16:37 UTC".into()),
            inputs: Inputs::of(l).unwrap(),
            packages: vec![LockedPackage {
                name: "libc6".into(),
                version: "2.36-9+deb12u13".into(),
                architecture: "arm64".into(),
                sha256: "ab".repeat(32),
                size: 42,
                filename: "pool/main/g/glibc/libc6_2.36-9+deb12u13_arm64.deb".into(),
                reason: "/usr/bin/x (erlang-base) needs libc.so.6: yes".into(),
            }],
        }
    }

    #[test]
    fn round_trips_and_notices_spec_changes() {
        let l = spec("");
        let lf = lockfile(&l);
        let text = lf.render().unwrap();
        assert_eq!(Lockfile::parse(&text, "r.yaml.lock").unwrap(), lf, "{text}");
        assert!(lf.check(&l).is_ok());
        // The mirror URL is not an input; packages, suite and trim are.
        assert!(lf
            .check(&spec("  mirror: https://example.invalid/debian\n"))
            .is_ok());
        let e = lf
            .check(&spec("  suite: trixie\n  needed-by: [usr/bin/*]\n"))
            .unwrap_err();
        assert!(
            e.contains("debian.suite (bookworm -> trixie)") && e.contains("debian.needed-by"),
            "{e}"
        );
        let e = lf.check(&spec("  trim: { docs: false }\n")).unwrap_err();
        assert!(e.contains("debian.trim"), "{e}");
    }

    #[test]
    fn bad_lockfiles_are_input_errors() {
        let l = spec("");
        let good = lockfile(&l).render().unwrap();
        let e = Lockfile::parse(&good.replace(&"ab".repeat(32), "zz"), "x.lock").unwrap_err();
        assert!(
            e.is_input() && e.to_string().contains("packages[0].sha256"),
            "{e}"
        );
        let e = Lockfile::parse("version: 1\nmirror: [\n", "x.lock").unwrap_err();
        assert!(e.to_string().starts_with("x.lock"), "{e}");
        let e = Lockfile::parse(&good.replace("pool/main", "../../etc"), "x.lock").unwrap_err();
        assert!(e.to_string().contains(".."), "{e}");
    }
}
