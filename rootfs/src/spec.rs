//! `rootfs.yaml`: what goes into a root filesystem. Relative paths are relative to the file.
//!
//! ```yaml
//! arch: arm64                 # Debian architecture of the packages (the init is aarch64)
//! profile: nerves-tuned       # memory profile for the init (name or path)
//! compression: xz             # xz | zstd | gzip | lz4
//! debian:
//!   mirror: http://deb.debian.org/debian
//!   suite: bookworm
//!   packages: [erlang-base]   # plus what their ELF files need (DT_NEEDED), found in Depends
//!   debs: [{ path: my.deb, sha256: ... }]
//! trees:                      # copied in order, later ones win (overlays)
//!   - dir: base/
//!   - { dir: overlay/, to: /srv }
//! files:
//!   - { path: /etc/hostname, content: "guest\n" }
//!   - { path: /etc/motd, source: motd.txt, mode: "0644" }
//!   - { path: /bin/sh, symlink: busybox }
//! init:
//!   program: beam             # or exec: /path + args
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::profile::Scalar;
use crate::{Error, Result};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RootfsSpec {
    #[serde(default = "default_arch")]
    pub arch: String,
    /// Fold /bin, /sbin, /lib into /usr (Debian bookworm's layout). Default true.
    pub merged_usr: Option<bool>,
    pub profile: Option<String>,
    pub compression: Option<String>,
    pub debian: Option<DebianSpec>,
    #[serde(default)]
    pub trees: Vec<TreeSpec>,
    #[serde(default)]
    pub files: Vec<FileSpec>,
    pub init: Option<InitSpec>,
}

fn default_arch() -> String {
    "arm64".into()
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct DebianSpec {
    pub mirror: Option<String>,
    pub suite: Option<String>,
    pub components: Option<Vec<String>>,
    /// OpenPGP keyring for the mirror's InRelease; `none` skips the signature check.
    pub keyring: Option<String>,
    #[serde(default)]
    pub packages: Vec<String>,
    #[serde(default)]
    pub debs: Vec<LocalDeb>,
    /// `needed` (default): add the packages that ship the libraries ELF files need;
    /// `none`: exactly the listed packages.
    pub resolve: Option<String>,
    /// Only the ELF files matching these patterns (and the libraries added for them) decide
    /// which packages come in; default: every ELF file of the listed packages.
    #[serde(default)]
    pub needed_by: Vec<String>,
    /// Sonames that may stay missing (loaded optionally, or provided another way).
    #[serde(default)]
    pub ignore_missing: Vec<String>,
    pub trim: Option<TrimSpec>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct LocalDeb {
    pub path: String,
    /// Required unless the mirror's index lists the same file.
    pub sha256: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct TrimSpec {
    pub docs: Option<bool>,
    pub man: Option<bool>,
    pub locales: Option<bool>,
    pub gconv: Option<bool>,
    /// systemd units, udev rules, lintian overrides and other files only a full distro reads.
    pub distro: Option<bool>,
    /// More patterns to delete (`*`, `?`, `**`), relative to /.
    #[serde(default)]
    pub paths: Vec<String>,
    /// Patterns to keep even if a rule above matches.
    #[serde(default)]
    pub keep: Vec<String>,
}

impl TrimSpec {
    /// The delete patterns these settings stand for (every rule defaults to on).
    pub fn patterns(&self) -> Vec<String> {
        let on = |o: Option<bool>| o.unwrap_or(true);
        let mut v: Vec<&str> = Vec::new();
        if on(self.docs) {
            v.extend(["usr/share/doc", "usr/share/doc-base", "usr/share/bug"]);
        }
        if on(self.man) {
            v.extend(["usr/share/man", "usr/share/info"]);
        }
        if on(self.locales) {
            v.extend(["usr/share/locale", "usr/lib/locale", "usr/share/i18n"]);
        }
        if on(self.gconv) {
            v.extend(["usr/lib/*/gconv"]);
        }
        if on(self.distro) {
            v.extend([
                "usr/share/lintian",
                "lib/systemd",
                "usr/lib/systemd",
                "lib/udev",
                "usr/lib/udev",
                "etc/systemd",
                "etc/init.d",
                "etc/cron.d",
                "etc/logrotate.d",
            ]);
        }
        let mut v: Vec<String> = v.into_iter().map(String::from).collect();
        v.extend(self.paths.iter().cloned());
        v
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct TreeSpec {
    pub dir: String,
    /// Where in the guest the directory's contents go (default `/`).
    pub to: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileSpec {
    pub path: String,
    pub content: Option<String>,
    pub source: Option<String>,
    pub symlink: Option<String>,
    /// Octal, as a string (`"0755"`) or digits (`755`).
    pub mode: Option<Scalar>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct InitSpec {
    /// `beam`: erlexec from the tree's Erlang, with the profile's flags; else give `exec`.
    pub program: Option<String>,
    pub exec: Option<String>,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    pub cwd: Option<String>,
    pub hostname: Option<String>,
    /// Text in the program's output that means it is up (default for beam: IMGTOOL-APP-UP).
    pub ready_match: Option<String>,
    pub snapshot_after_ready_ms: Option<u64>,
    pub poweroff_after_snapshot: Option<bool>,
    /// Answer TCP connections on this port with the clone's identity (serial, hostname, MAC).
    pub identity_port: Option<u16>,
}

/// A spec with the directory its relative paths start from.
pub struct Loaded {
    pub spec: RootfsSpec,
    pub file: String,
    pub base: PathBuf,
}

impl Loaded {
    pub fn path(&self, p: &str) -> PathBuf {
        self.base.join(p)
    }

    pub fn input_err(&self, field: &str, msg: impl std::fmt::Display) -> Error {
        Error::Input {
            file: self.file.clone(),
            line: None,
            msg: format!("{field}: {msg}"),
        }
    }
}

pub fn parse(yaml: &str, file: &str, base: &Path) -> Result<Loaded> {
    let spec: RootfsSpec = serde_saphyr::from_str(yaml).map_err(|e| Error::Input {
        file: file.into(),
        line: None,
        msg: e.to_string(),
    })?;
    let l = Loaded {
        spec,
        file: file.into(),
        base: base.to_path_buf(),
    };
    validate(&l)?;
    Ok(l)
}

pub fn load(path: &Path) -> Result<Loaded> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let base = path.parent().unwrap_or(Path::new("")).to_path_buf();
    parse(&text, &path.display().to_string(), &base)
}

/// Specs that ship inside imgtool: (name, YAML text). They use no relative paths.
pub const BUILTIN: &[(&str, &str)] = &[("beam-guest", include_str!("../examples/beam-guest.yaml"))];

/// Lockfiles of the built-in specs: (name, YAML text).
pub const BUILTIN_LOCKS: &[(&str, &str)] = &[(
    "beam-guest",
    include_str!("../examples/beam-guest.yaml.lock"),
)];

/// A built-in spec by name, or a spec file. A file wins over a built-in of the same name.
pub fn load_named(name: &str) -> Result<Loaded> {
    let path = Path::new(name);
    if path.exists() {
        return load(path);
    }
    if let Some((n, text)) = BUILTIN.iter().find(|(n, _)| *n == name) {
        return parse(text, &format!("builtin:{n}"), Path::new("."));
    }
    let names: Vec<&str> = BUILTIN.iter().map(|(n, _)| *n).collect();
    Err(Error::Input {
        file: name.into(),
        line: None,
        msg: format!(
            "no such rootfs spec file, and not a built-in one (built in: {})",
            names.join(", ")
        ),
    })
}

/// Octal file mode from `"0755"`, `755` or `0o755`.
pub fn parse_mode(s: &Scalar) -> std::result::Result<u32, String> {
    let t = s.to_string();
    let digits = t.trim_start_matches("0o");
    u32::from_str_radix(digits, 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| format!("`{t}` is not an octal mode (write e.g. \"0644\")"))
}

fn validate(l: &Loaded) -> Result<()> {
    let s = &l.spec;
    if crate::elf::triplet(&s.arch).is_none() {
        return Err(l.input_err(
            "arch",
            format!(
                "`{}` (use a Debian architecture: arm64, amd64, armhf, riscv64)",
                s.arch
            ),
        ));
    }
    if let Some(c) = &s.compression {
        if !["xz", "zstd", "gzip", "lz4"].contains(&c.as_str()) {
            return Err(l.input_err("compression", format!("`{c}` (use xz, zstd, gzip or lz4)")));
        }
    }
    for (i, f) in s.files.iter().enumerate() {
        let n = [f.content.is_some(), f.source.is_some(), f.symlink.is_some()]
            .iter()
            .filter(|x| **x)
            .count();
        if n != 1 {
            return Err(l.input_err(
                &format!("files[{i}] ({})", f.path),
                "give exactly one of content, source, symlink",
            ));
        }
        if let Some(m) = &f.mode {
            parse_mode(m).map_err(|e| l.input_err(&format!("files[{i}].mode"), e))?;
        }
        if f.path.split('/').any(|c| c == "..") {
            return Err(l.input_err(&format!("files[{i}].path"), "must not contain `..`"));
        }
    }
    for (i, t) in s.trees.iter().enumerate() {
        if !l.path(&t.dir).is_dir() {
            return Err(l.input_err(
                &format!("trees[{i}].dir"),
                format!("{} is not a directory", l.path(&t.dir).display()),
            ));
        }
    }
    if let Some(d) = &s.debian {
        if let Some(r) = &d.resolve {
            if r != "needed" && r != "none" {
                return Err(l.input_err("debian.resolve", format!("`{r}` (use needed or none)")));
            }
        }
        for (i, deb) in d.debs.iter().enumerate() {
            if !l.path(&deb.path).is_file() {
                return Err(l.input_err(
                    &format!("debian.debs[{i}].path"),
                    format!("{} does not exist", l.path(&deb.path).display()),
                ));
            }
        }
    }
    if let Some(i) = &s.init {
        match (i.program.as_deref(), &i.exec) {
            (Some("beam"), None) | (None, Some(_)) => {}
            (Some(p), _) if p != "beam" => {
                return Err(l.input_err(
                    "init.program",
                    format!("`{p}` (only `beam` is known; or give exec:)"),
                ))
            }
            _ => return Err(l.input_err("init", "give either `program: beam` or `exec: /path`")),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("base")).unwrap();
        let ok = "arch: arm64\ntrees: [{ dir: base }]\nfiles:\n  - { path: /etc/x, content: hi, mode: \"0600\" }\n";
        let l = parse(ok, "r.yaml", d.path()).unwrap();
        assert_eq!(l.spec.files.len(), 1);
        for (bad, want) in [
            ("arch: vax\n", "arch"),
            ("colour: red\n", "colour"),
            ("trees: [{ dir: nope }]\n", "trees[0].dir"),
            (
                "files: [{ path: /a, content: x, symlink: y }]\n",
                "exactly one",
            ),
            (
                "files: [{ path: /a, content: x, mode: \"0999\" }]\n",
                "octal",
            ),
            ("init: { program: java }\n", "init.program"),
            ("compression: brotli\n", "compression"),
        ] {
            let e = parse(bad, "r.yaml", d.path()).err().unwrap().to_string();
            assert!(e.contains("r.yaml") && e.contains(want), "{bad}: {e}");
        }
    }

    #[test]
    fn builtin_specs_parse() {
        for (n, _) in BUILTIN {
            let l = load_named(n).unwrap();
            assert_eq!(l.file, format!("builtin:{n}"));
            // Each ships a lockfile that fits it.
            match crate::lock::find(&l, None).unwrap() {
                (crate::lock::Status::Fresh(lf), _) => assert!(!lf.packages.is_empty()),
                (s, from) => panic!("{n}: {from}: {s:?}"),
            }
        }
        let e = load_named("no-such-spec").err().unwrap().to_string();
        assert!(e.contains("beam-guest"), "{e}");
    }

    #[test]
    fn modes() {
        assert_eq!(parse_mode(&Scalar::Str("0755".into())).unwrap(), 0o755);
        assert_eq!(parse_mode(&Scalar::Int(644)).unwrap(), 0o644);
        assert!(parse_mode(&Scalar::Int(9)).is_err());
    }
}
