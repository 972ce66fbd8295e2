//! Assemble a root filesystem from a spec: Debian packages (resolved by what their ELF files
//! need), trimming, directory trees, inline files, the init and its config; then pack it.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::deb::{Deb, EntryKind, Index, Mirror, PackageInfo};
use crate::elf::{self, ElfInfo};
use crate::initconf::{DataMount, InitConfig, Program, Zram};
use crate::lock::{Inputs, LockedPackage, Lockfile, REASON_FILE, REASON_LISTED};
use crate::profile::{self, Profile};
use crate::spec::{parse_mode, DebianSpec, Loaded};
use crate::tree::Tree;
use crate::{Error, Progress, Result};

/// What went into the tree.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// Packages in the order they were added: (name, version, why).
    pub packages: Vec<PackageLine>,
    /// Where the package set came from: `index` (resolved against the mirror's index now),
    /// `lockfile` (installed as locked), or absent (no Debian packages).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolved_from: Option<String>,
    /// Mirror and suite, and the signed Release file's date, when packages were resolved.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mirror: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suite: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub release_date: Option<String>,
    pub trimmed_entries: u64,
    pub trimmed_bytes: u64,
    pub profile: Option<String>,
    /// The init's config text, if an init was installed.
    pub init_config: Option<String>,
    /// ELF files whose libraries are missing (after `ignore-missing`).
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PackageLine {
    pub name: String,
    pub version: String,
    pub architecture: String,
    pub sha256: String,
    pub size: u64,
    /// Path in the mirror's pool, or the spec's path of a local .deb.
    pub filename: String,
    pub reason: String,
}

/// One library an ELF file in the tree needs.
#[derive(Debug, Clone)]
struct Need {
    elf: PathBuf,
    owner: String,
    /// A soname looked up in `dirs`, or (for PT_INTERP) a full guest path.
    what: String,
    dirs: Vec<PathBuf>,
    interp: bool,
    /// The owner was added by the resolver (its needs always count).
    owner_added: bool,
}

fn scan_elf(tree: &Tree, arch: &str, rel: &Path, owner: &str, out: &mut Vec<Need>) -> Result<()> {
    let full = tree.root.join(rel);
    let Ok(meta) = std::fs::symlink_metadata(&full) else {
        return Ok(());
    };
    if !meta.is_file() || meta.len() < 64 {
        return Ok(());
    }
    let mut head = [0u8; 4];
    {
        use std::io::Read;
        let mut f = std::fs::File::open(&full).map_err(|e| Error::io(&full, e))?;
        if f.read_exact(&mut head).is_err() || &head != b"\x7fELF" {
            return Ok(());
        }
    }
    let bytes = std::fs::read(&full).map_err(|e| Error::io(&full, e))?;
    let info: ElfInfo = match elf::inspect(&bytes) {
        Some(Ok(i)) => i,
        Some(Err(e)) => {
            tracing::warn!("{}: unreadable ELF ({e}); not scanned", rel.display());
            return Ok(());
        }
        None => return Ok(()),
    };
    if Some(info.machine) != elf::machine_for_arch(arch) {
        tracing::warn!(
            "{}: ELF for another machine ({})",
            rel.display(),
            info.machine
        );
        return Ok(());
    }
    let dirs = elf::search_dirs(arch, rel, &info);
    for n in &info.needed {
        out.push(Need {
            elf: rel.to_path_buf(),
            owner: owner.into(),
            what: n.clone(),
            dirs: dirs.clone(),
            interp: false,
            owner_added: false,
        });
    }
    if let Some(i) = &info.interpreter {
        out.push(Need {
            elf: rel.to_path_buf(),
            owner: owner.into(),
            what: i.clone(),
            dirs: vec![],
            interp: true,
            owner_added: false,
        });
    }
    Ok(())
}

fn satisfied(tree: &Tree, n: &Need) -> bool {
    if n.interp {
        return tree
            .map(&n.what)
            .map(|p| elf::exists_in_tree(&tree.root, &p))
            .unwrap_or(false);
    }
    n.dirs
        .iter()
        .any(|d| elf::exists_in_tree(&tree.root, &d.join(&n.what)))
}

/// How likely package `pkg` ships `soname`, by Debian's library naming (libfoo.so.1 -> libfoo1).
pub fn name_score(soname: &str, pkg: &str) -> u32 {
    let base = soname.rsplit('/').next().unwrap_or(soname);
    let (stem, ver) = match base.split_once(".so") {
        Some((s, v)) => (s, v.trim_start_matches('.').split('.').next().unwrap_or("")),
        None => (base, ""),
    };
    let stem = stem.replace('_', "-").to_lowercase();
    let bare = stem.trim_start_matches("lib");
    let sep = if stem.ends_with(|c: char| c.is_ascii_digit()) {
        "-"
    } else {
        ""
    };
    if pkg == format!("{stem}{sep}{ver}") {
        4
    } else if !bare.is_empty() && (pkg.starts_with(&stem) || pkg.starts_with(bare)) {
        3
    } else if !bare.is_empty() && bare.len() > 1 && pkg.contains(bare) {
        2
    } else {
        1
    }
}

struct Resolver<'a> {
    tree: &'a Tree,
    arch: String,
    mirror: Option<Mirror>,
    index: Option<Index>,
    progress: &'a dyn Progress,
    chosen: BTreeMap<String, PackageInfo>,
    /// Candidate .debs opened while searching, by package name.
    listings: BTreeMap<String, Vec<(String, EntryKind)>>,
    needs: Vec<Need>,
    /// Only these ELF files (patterns) drive resolution; empty: all.
    needed_by: Vec<String>,
    report: Report,
}

impl Resolver<'_> {
    fn install(
        &mut self,
        info: PackageInfo,
        path: &Path,
        reason: String,
        for_a_need: bool,
    ) -> Result<()> {
        let deb = Deb::open(path)?;
        let mut files = Vec::new();
        let tree = self.tree;
        deb.for_each_entry(|p, kind, mode, r| {
            let res = match kind {
                EntryKind::Dir => tree.mkdir(p, mode).map(|_| ()),
                EntryKind::File => tree.write(p, r, mode).map(|rel| files.push(rel)),
                EntryKind::Symlink(t) => tree.symlink(p, &t).map(|_| ()),
                EntryKind::Hardlink(t) => tree.hardlink(p, &t).map(|rel| files.push(rel)),
                EntryKind::Other => {
                    tracing::warn!("{}: {p}: device or fifo skipped", info.name);
                    Ok(())
                }
            };
            res.map_err(|e| Error::Other(format!("package {}: {e}", info.name)))
        })?;
        let first = self.needs.len();
        for f in &files {
            scan_elf(self.tree, &self.arch, f, &info.name, &mut self.needs)?;
        }
        if for_a_need {
            for n in &mut self.needs[first..] {
                n.owner_added = true;
            }
        }
        tracing::info!("added {} {} ({reason})", info.name, info.version);
        self.report.packages.push(PackageLine {
            name: info.name.clone(),
            version: info.version.clone(),
            architecture: info.arch.clone(),
            sha256: info.sha256.clone(),
            size: info.size,
            filename: info.filename.clone(),
            reason,
        });
        self.chosen.insert(info.name.clone(), info);
        Ok(())
    }

    fn index(&self) -> Result<&Index> {
        self.index
            .as_ref()
            .ok_or_else(|| Error::Resolve("no Debian mirror configured".into()))
    }

    fn fetch(&self, info: &PackageInfo) -> Result<PathBuf> {
        self.mirror
            .as_ref()
            .ok_or_else(|| Error::Resolve("no Debian mirror configured".into()))?
            .fetch(info, self.progress)
    }

    fn add_by_name(&mut self, name: &str, reason: &str) -> Result<()> {
        let info = self.index()?.lookup(name).cloned().ok_or_else(|| {
            Error::Resolve(format!(
                "package `{name}` is not in the mirror's index for this suite and architecture"
            ))
        })?;
        if self.chosen.contains_key(&info.name) {
            return Ok(());
        }
        let path = self.fetch(&info)?;
        self.install(info, &path, reason.into(), false)
    }

    /// Packages reachable through Depends from `from`, nearest first, not yet chosen.
    fn candidates(&self, from: &str, depth_max: usize) -> Vec<(usize, String)> {
        let Some(idx) = self.index.as_ref() else {
            return vec![];
        };
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        let mut q = VecDeque::from([(0usize, from.to_string())]);
        while let Some((d, name)) = q.pop_front() {
            if !seen.insert(name.clone()) || d > depth_max {
                continue;
            }
            let Some(info) = idx.lookup(&name) else {
                continue;
            };
            if d > 0 && !self.chosen.contains_key(&info.name) {
                out.push((d, info.name.clone()));
            }
            for alts in &info.depends {
                for a in alts {
                    q.push_back((d + 1, a.clone()));
                }
            }
        }
        out
    }

    fn ships(&mut self, pkg: &str, need: &Need) -> Result<bool> {
        if !self.listings.contains_key(pkg) {
            let info = self.index()?.packages[pkg].clone();
            let path = self.fetch(&info)?;
            let paths = Deb::open(&path)?.paths()?;
            self.listings.insert(pkg.to_string(), paths);
        }
        let tree = self.tree;
        let hit = self.listings[pkg].iter().any(|(p, k)| {
            if matches!(k, EntryKind::Dir) {
                return false;
            }
            let Ok(mapped) = tree.map(p) else {
                return false;
            };
            if need.interp {
                tree.map(&need.what).is_ok_and(|w| w == mapped)
            } else {
                need.dirs.iter().any(|d| d.join(&need.what) == mapped)
            }
        });
        Ok(hit)
    }

    fn unsatisfied(&self, ignore: &[String]) -> Vec<Need> {
        let drives = |n: &Need| {
            // Libraries pulled in for a driving binary drive in turn.
            n.owner_added
                || self.needed_by.is_empty()
                || self
                    .needed_by
                    .iter()
                    .any(|p| crate::tree::glob_match(p, &n.elf.to_string_lossy()))
        };
        let mut v: Vec<Need> = self
            .needs
            .iter()
            .filter(|n| drives(n) && !ignore.contains(&n.what) && !satisfied(self.tree, n))
            .cloned()
            .collect();
        v.sort_by(|a, b| (&a.what, &a.elf).cmp(&(&b.what, &b.elf)));
        v
    }

    /// Add packages until every ELF file's libraries are in the tree.
    fn close(&mut self, ignore: &[String]) -> Result<()> {
        loop {
            let open = self.unsatisfied(ignore);
            if open.is_empty() {
                return Ok(());
            }
            // Try the need whose best candidate looks most like its soname first, so libc6 comes
            // in for libc.so.6 before anything is tried for libm.so.6.
            let mut plans: Vec<(u32, usize, Need, Vec<String>)> = Vec::new();
            for n in open {
                let mut c = self.candidates(&n.owner, 3);
                c.sort_by_key(|(d, name)| (std::cmp::Reverse(name_score(&n.what, name)), *d));
                let best = c.first().map_or(0, |(_, p)| name_score(&n.what, p));
                let depth = c.first().map_or(9, |(d, _)| *d);
                plans.push((best, depth, n, c.into_iter().map(|(_, p)| p).collect()));
            }
            plans.sort_by_key(|(s, d, n, _)| (std::cmp::Reverse(*s), *d, n.what.clone()));
            let (_, _, need, cands) = plans.swap_remove(0);
            let mut found = None;
            for c in cands {
                if self.ships(&c, &need)? {
                    found = Some(c);
                    break;
                }
            }
            match found {
                Some(p) => {
                    let info = self.index()?.packages[&p].clone();
                    let path = self.fetch(&info)?;
                    let reason = format!(
                        "/{} ({}) needs {}",
                        need.elf.display(),
                        need.owner,
                        need.what
                    );
                    self.install(info, &path, reason, true)?;
                }
                None => {
                    return Err(Error::Resolve(format!(
                        "/{} (package {}) needs {}, and no package among {}'s dependencies \
                         ships it: add the package that does to debian.packages, or list `{}` \
                         in debian.ignore-missing",
                        need.elf.display(),
                        need.owner,
                        need.what,
                        need.owner,
                        need.what
                    )))
                }
            }
        }
    }
}

/// Options from the command line.
pub struct BuildOptions<'a> {
    /// Overrides the spec's `profile`.
    pub profile: Option<String>,
    /// Cache for .debs and indexes.
    pub cache: PathBuf,
    pub progress: &'a dyn Progress,
    /// Install exactly these packages (checked against the spec with [`Lockfile::check`]);
    /// no index is read, and the network is used only for .debs missing from the cache.
    pub lock: Option<&'a Lockfile>,
    /// Never use the network.
    pub offline: bool,
}

impl<'a> BuildOptions<'a> {
    /// Resolve against the index, online; as builds did before lockfiles.
    pub fn new(profile: Option<String>, cache: PathBuf, progress: &'a dyn Progress) -> Self {
        BuildOptions {
            profile,
            cache,
            progress,
            lock: None,
            offline: false,
        }
    }
}

/// Fill `stage` (an empty directory) from the spec. Packing is separate ([`crate::pack`]).
pub fn assemble(l: &Loaded, stage: &Path, o: &BuildOptions) -> Result<Report> {
    let s = &l.spec;
    let tree = Tree::new(stage, s.merged_usr.unwrap_or(true))?;
    let profile: Option<Profile> = match o.profile.as_ref().or(s.profile.as_ref()) {
        Some(p) => {
            let near = if p.ends_with(".yaml") || p.contains('/') {
                l.path(p).display().to_string()
            } else {
                p.clone()
            };
            Some(profile::load(&near)?)
        }
        None => None,
    };
    let mut r = Resolver {
        tree: &tree,
        arch: s.arch.clone(),
        mirror: None,
        index: None,
        progress: o.progress,
        chosen: BTreeMap::new(),
        listings: BTreeMap::new(),
        needs: Vec::new(),
        needed_by: Vec::new(),
        report: Report::default(),
    };
    if let Some(d) = &s.debian {
        // A locked build reads no index, so it needs no keys.
        let keyring = match (d.keyring.as_deref(), o.lock) {
            (Some("none"), _) | (_, Some(_)) => None,
            (Some(k), None) => Some(crate::openpgp::Keyring::load(&l.path(k))?),
            (None, None) => Some(crate::openpgp::Keyring::debian()?),
        };
        let mirror = Mirror {
            url: d
                .mirror
                .clone()
                .unwrap_or_else(|| crate::deb::DEFAULT_MIRROR.into()),
            suite: d
                .suite
                .clone()
                .unwrap_or_else(|| crate::deb::DEFAULT_SUITE.into()),
            components: d.components.clone().unwrap_or_else(|| vec!["main".into()]),
            arch: s.arch.clone(),
            keyring,
            cache: o.cache.clone(),
            offline: o.offline,
        };
        r.report.mirror = Some(mirror.url.clone());
        r.report.suite = Some(mirror.suite.clone());
        if let Some(lock) = o.lock {
            lock.check(l).map_err(|why| {
                l.input_err("debian", format!("the lockfile does not fit: {why}"))
            })?;
            r.mirror = Some(mirror);
            r.report.resolved_from = Some("lockfile".into());
            r.report.release_date = lock.release_date.clone();
            install_locked(&mut r, l, lock)?;
        } else {
            r.report.resolved_from = Some("index".into());
            resolve_from_index(&mut r, l, d, mirror, o)?;
        }
    }
    finish(l, &tree, r, profile)
}

/// Replay a lockfile: the requested packages, trim, the rest, trim (as resolution did).
fn install_locked(r: &mut Resolver, l: &Loaded, lock: &Lockfile) -> Result<()> {
    let d = l.spec.debian.clone().unwrap_or_default();
    let trim = d.trim.clone().unwrap_or_default();
    let resolve = d.resolve.as_deref() != Some("none");
    let split = lock
        .packages
        .iter()
        .rposition(|p| p.requested())
        .map_or(0, |i| i + 1);
    let mut trimmed = (0, 0);
    for (i, p) in lock.packages.iter().enumerate() {
        if i == split {
            trimmed = r.tree.trim(&trim.patterns(), &trim.keep)?;
        }
        let info = locked_info(p);
        let path = if p.reason == REASON_FILE {
            let path = l.path(&p.filename);
            let sha = crate::deb::file_sha256(&path)?;
            if sha != p.sha256 {
                return Err(Error::Checksum {
                    what: format!("{} (locked)", path.display()),
                    expected: p.sha256.clone(),
                    got: sha,
                });
            }
            path
        } else {
            r.fetch(&info)?
        };
        r.install(info, &path, p.reason.clone(), !p.requested())?;
    }
    if split == lock.packages.len() {
        trimmed = r.tree.trim(&trim.patterns(), &trim.keep)?;
    } else if resolve {
        let (n, b) = r.tree.trim(&trim.patterns(), &trim.keep)?;
        trimmed = (trimmed.0 + n, trimmed.1 + b);
    }
    r.report.trimmed_entries = trimmed.0;
    r.report.trimmed_bytes = trimmed.1;
    Ok(())
}

fn locked_info(p: &LockedPackage) -> PackageInfo {
    PackageInfo {
        name: p.name.clone(),
        version: p.version.clone(),
        arch: p.architecture.clone(),
        filename: p.filename.clone(),
        size: p.size,
        sha256: p.sha256.clone(),
        depends: vec![],
        provides: vec![],
    }
}

fn resolve_from_index(
    r: &mut Resolver,
    l: &Loaded,
    d: &DebianSpec,
    mirror: Mirror,
    o: &BuildOptions,
) -> Result<()> {
    let tree = r.tree;
    let resolve = d.resolve.as_deref() != Some("none");
    if !d.packages.is_empty() || (resolve && !d.debs.is_empty()) {
        let idx = mirror.index(o.progress)?;
        r.report.release_date = idx.release_date.clone();
        r.index = Some(idx);
    }
    r.mirror = Some(mirror);
    for (i, ld) in d.debs.iter().enumerate() {
        let path = l.path(&ld.path);
        let deb = Deb::open(&path)?;
        let ctl = deb.control()?;
        let name = ctl.get("Package").cloned().unwrap_or_default();
        let sha = crate::deb::file_sha256(&path)?;
        let expected = match (
            &ld.sha256,
            r.index.as_ref().and_then(|x| x.packages.get(&name)),
        ) {
            (Some(e), _) => e.to_lowercase(),
            (None, Some(p)) if p.version == ctl.get("Version").cloned().unwrap_or_default() => {
                p.sha256.clone()
            }
            _ => {
                return Err(l.input_err(
                    &format!("debian.debs[{i}]"),
                    format!(
                        "{} is not in the mirror's index: give its `sha256: {sha}` \
                         after checking it",
                        path.display()
                    ),
                ))
            }
        };
        if sha != expected {
            return Err(Error::Checksum {
                what: path.display().to_string(),
                expected,
                got: sha,
            });
        }
        let mut depends = crate::deb::parse_depends(ctl.get("Pre-Depends").map_or("", |s| s));
        depends.extend(crate::deb::parse_depends(
            ctl.get("Depends").map_or("", |s| s),
        ));
        let info = PackageInfo {
            name: name.clone(),
            version: ctl.get("Version").cloned().unwrap_or_default(),
            arch: ctl.get("Architecture").cloned().unwrap_or_default(),
            filename: ld.path.clone(),
            size: std::fs::metadata(&path).map_or(0, |m| m.len()),
            sha256: sha,
            depends,
            provides: vec![],
        };
        // Local .debs take part in Depends search like indexed ones.
        if let Some(idx) = r.index.as_mut() {
            idx.packages.insert(name.clone(), info.clone());
        }
        r.install(info, &path, REASON_FILE.into(), false)?;
    }
    for p in &d.packages {
        r.add_by_name(p, REASON_LISTED)?;
    }
    // Trim before resolving: what is deleted needs no libraries (epmd and libsystemd).
    let trim = d.trim.clone().unwrap_or_default();
    let mut trimmed = tree.trim(&trim.patterns(), &trim.keep)?;
    if resolve {
        r.needs.retain(|n| tree.root.join(&n.elf).is_file());
        if !d.needed_by.is_empty() {
            r.needed_by = d.needed_by.clone();
        }
        r.close(&d.ignore_missing)?;
        let (n, b) = tree.trim(&trim.patterns(), &trim.keep)?;
        trimmed = (trimmed.0 + n, trimmed.1 + b);
    }
    r.report.trimmed_entries = trimmed.0;
    r.report.trimmed_bytes = trimmed.1;
    Ok(())
}

/// Trees, files, the init, and the warnings: everything after the packages.
fn finish(l: &Loaded, tree: &Tree, mut r: Resolver, profile: Option<Profile>) -> Result<Report> {
    let s = &l.spec;
    for t in &s.trees {
        let to = t.to.clone().unwrap_or_else(|| "/".into());
        tree.copy_dir(&l.path(&t.dir), &to)?;
    }
    for f in &s.files {
        let mode = match &f.mode {
            Some(m) => parse_mode(m).map_err(|e| l.input_err("files.mode", e))?,
            None => 0o644,
        };
        if let Some(c) = &f.content {
            tree.write(&f.path, &mut c.as_bytes(), mode)?;
        } else if let Some(src) = &f.source {
            let p = l.path(src);
            let mut fh = std::fs::File::open(&p).map_err(|e| Error::io(&p, e))?;
            tree.write(&f.path, &mut fh, mode)?;
        } else if let Some(t) = &f.symlink {
            tree.symlink(&f.path, t)?;
        }
    }
    if let Some(init) = &s.init {
        let cfg = init_config(tree, init, profile.as_ref()).map_err(|e| l.input_err("init", e))?;
        install_init(tree, &cfg)?;
        r.report.init_config = Some(cfg.render());
    }
    // Anything from trees/files whose libraries are missing is worth a warning, not an error.
    let mut all = Vec::new();
    walk_files(&tree.root, Path::new(""), &mut |rel| {
        scan_elf(tree, &s.arch, rel, "tree", &mut all)
    })?;
    let ignore = s
        .debian
        .as_ref()
        .map(|d| d.ignore_missing.clone())
        .unwrap_or_default();
    for n in all {
        if !ignore.contains(&n.what) && !satisfied(tree, &n) {
            r.report.warnings.push(format!(
                "/{} needs {}, which is not in the tree",
                n.elf.display(),
                n.what
            ));
        }
    }
    r.report.profile = profile.map(|p| p.name);
    Ok(r.report)
}

/// Resolve `l` against the mirror's index (in a scratch tree under `o.cache`) and return the
/// lockfile for it. `o.lock` is ignored.
pub fn lock(l: &Loaded, o: &BuildOptions) -> Result<Lockfile> {
    let Some(inputs) = Inputs::of(l) else {
        return Err(l.input_err(
            "debian",
            "the spec installs no Debian packages, so there is nothing to lock",
        ));
    };
    let stage = o.cache.join(format!("lock-stage-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&stage);
    let opts = BuildOptions {
        profile: o.profile.clone(),
        cache: o.cache.clone(),
        progress: o.progress,
        lock: None,
        offline: o.offline,
    };
    let res = assemble(l, &stage, &opts);
    let _ = std::fs::remove_dir_all(&stage);
    let report = res?;
    let (suite, components) = crate::lock::suite_of(l);
    Ok(Lockfile {
        version: crate::lock::VERSION,
        mirror: report.mirror.clone().unwrap_or_default(),
        suite,
        components,
        arch: l.spec.arch.clone(),
        release_date: report.release_date.clone(),
        inputs,
        packages: report
            .packages
            .iter()
            .map(|p| LockedPackage {
                name: p.name.clone(),
                version: p.version.clone(),
                architecture: p.architecture.clone(),
                sha256: p.sha256.clone(),
                size: p.size,
                filename: p.filename.clone(),
                reason: p.reason.clone(),
            })
            .collect(),
    })
}

fn walk_files(root: &Path, rel: &Path, f: &mut dyn FnMut(&Path) -> Result<()>) -> Result<()> {
    let dir = root.join(rel);
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .map_err(|e| Error::io(&dir, e))?
        .filter_map(|e| e.ok())
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let r = rel.join(e.file_name());
        let ft = e.file_type().map_err(|err| Error::io(e.path(), err))?;
        if ft.is_dir() {
            walk_files(root, &r, f)?;
        } else if ft.is_file() {
            f(&r)?;
        }
    }
    Ok(())
}

/// The readiness text the BEAM prints when started by `program: beam`.
pub const BEAM_UP: &str = "IMGTOOL-APP-UP";

/// The profile's kernel knobs as the init (or the helper) applies them: sysctls, sysfs writes,
/// after-ready writes and zram.
pub fn profile_knobs(c: &mut InitConfig, p: &Profile) {
    let pairs =
        |m: &BTreeMap<String, String>| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    c.sysctls = pairs(&p.sysctl);
    c.writes = pairs(&p.sysfs);
    c.ready_writes = pairs(&p.after_ready);
    c.zram = p.zram.as_ref().map(|z| Zram {
        size_bytes: z.size_bytes,
        algorithm: z.algorithm.clone(),
        priority: z.priority,
    });
}

/// The init's config for this tree, spec and profile.
pub fn init_config(
    tree: &Tree,
    init: &crate::spec::InitSpec,
    profile: Option<&Profile>,
) -> std::result::Result<InitConfig, String> {
    let mut c = InitConfig {
        hostname: Some(init.hostname.clone().unwrap_or_else(|| "imgtool".into())),
        ..Default::default()
    };
    if let Some(p) = profile {
        profile_knobs(&mut c, p);
        c.data = p.data.as_ref().map(|d| DataMount {
            device: d.device.clone(),
            fstype: d.fstype.clone(),
            mountpoint: d.mountpoint.clone(),
            options: d.options.clone(),
        });
        c.snapshot_after_ready_ms = p.snapshot_after_ready_ms;
        c.poweroff_after_snapshot = p.snapshot_poweroff;
    }
    let home = c
        .data
        .as_ref()
        .map_or("/root".to_string(), |d| d.mountpoint.clone());
    let mut env: Vec<(String, String)> = Vec::new();
    if init.program.as_deref() == Some("beam") {
        let erts = find_erts(tree)?;
        let root = "/usr/lib/erlang";
        let bindir = format!("{root}/{erts}/bin");
        let mut args = Vec::new();
        if let Some(p) = profile {
            args.extend(p.beam.flag_args());
            args.extend(["-mode".to_string(), p.beam.mode.clone()]);
            args.extend(p.beam.args.iter().cloned());
        }
        args.push("-noinput".into());
        args.extend(init.args.iter().cloned());
        // Runs once the boot script has started kernel and stdlib. `-s` with a BIF loads no
        // module (an `-eval` would load the parser and evaluator, about 2 MiB of code): it prints
        // `['IMGTOOL-APP-UP']` on stdout.
        args.extend(["-s", "erlang", "display", BEAM_UP].map(String::from));
        c.program = Program {
            exec: format!("{bindir}/erlexec"),
            args,
            env: vec![],
            cwd: Some(home.clone()),
        };
        env.extend([
            ("ROOTDIR".to_string(), root.to_string()),
            ("BINDIR".into(), bindir.clone()),
            ("EMU".into(), "beam".into()),
            ("PROGNAME".into(), "erl".into()),
            ("HOME".into(), home.clone()),
            ("PATH".into(), format!("{bindir}:{root}/bin:/usr/bin:/bin")),
        ]);
        c.ready_match = Some(init.ready_match.clone().unwrap_or_else(|| BEAM_UP.into()));
    } else {
        c.program = Program {
            exec: init.exec.clone().unwrap_or_default(),
            args: init.args.clone(),
            env: vec![],
            cwd: init.cwd.clone(),
        };
        env.extend([
            ("HOME".to_string(), home.clone()),
            ("PATH".into(), "/usr/bin:/bin:/usr/sbin:/sbin".into()),
        ]);
        c.ready_match = init.ready_match.clone();
    }
    for (k, v) in &init.env {
        env.retain(|(ek, _)| ek != k);
        env.push((k.clone(), v.clone()));
    }
    c.program.env = env;
    if let Some(cwd) = &init.cwd {
        c.program.cwd = Some(cwd.clone());
    }
    if let Some(ms) = init.snapshot_after_ready_ms {
        c.snapshot_after_ready_ms = Some(ms);
    }
    if let Some(p) = init.poweroff_after_snapshot {
        c.poweroff_after_snapshot = p;
    }
    if init.identity_port == Some(0) {
        return Err("init.identity-port: 0 is not a port (1..=65535)".into());
    }
    c.identity_port = init.identity_port;
    let exec_rel = tree.map(&c.program.exec).map_err(|e| e.to_string())?;
    if !elf::exists_in_tree(&tree.root, &exec_rel) {
        return Err(format!(
            "the program {} is not in the tree (add the package or tree that ships it)",
            c.program.exec
        ));
    }
    Ok(c)
}

/// `erts-X.Y.Z` under /usr/lib/erlang that has beam.smp.
fn find_erts(tree: &Tree) -> std::result::Result<String, String> {
    let dir = tree.root.join("usr/lib/erlang");
    let mut found: Vec<String> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("erts-") && dir.join(n).join("bin/beam.smp").is_file())
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found.pop().ok_or_else(|| {
        "`program: beam` needs Erlang in the tree (/usr/lib/erlang/erts-*/bin/beam.smp): \
         add erlang-base to debian.packages"
            .to_string()
    })
}

/// Put our init at /sbin/init with its config, and the directories it mounts on.
pub fn install_init(tree: &Tree, cfg: &InitConfig) -> Result<()> {
    let bin = crate::init_binary()?;
    tree.write("/sbin/init", &mut &bin[..], 0o755)?;
    tree.write(
        crate::initconf::CONFIG_PATH,
        &mut cfg.render().as_bytes(),
        0o644,
    )?;
    for m in crate::initconf::mount_plan(cfg) {
        tree.mkdir(&m.target, if m.target == "/tmp" { 0o1777 } else { 0o755 })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn soname_scores() {
        assert_eq!(name_score("libc.so.6", "libc6"), 4);
        assert_eq!(name_score("libstdc++.so.6", "libstdc++6"), 4);
        assert_eq!(name_score("libgcc_s.so.1", "libgcc-s1"), 4);
        assert_eq!(name_score("libtinfo.so.6", "libtinfo6"), 4);
        assert_eq!(name_score("libz.so.1", "zlib1g"), 3);
        assert_eq!(name_score("libssl.so.3", "libssl3"), 4);
        assert_eq!(name_score("libfoo2.so.0", "libfoo2-0"), 4);
        assert!(name_score("libz.so.1", "procps") < name_score("libz.so.1", "zlib1g"));
    }
}
