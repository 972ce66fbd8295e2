//! Memory profiles: sysctls, zram, BEAM flags, kernel command line and config fragment, qemu
//! settings. Profiles are YAML files (built in from rootfs/profiles/, or a path), composed with
//! `include: [a, b]` (or `base: a`): included profiles apply first, in order, then the file's own
//! settings; maps merge key by key and a `null` value removes an inherited key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use common::size::parse_size;

use crate::{Error, Result};

/// The profiles that ship inside imgtool: (name, YAML text).
pub const BUILTIN: &[(&str, &str)] = &[
    ("baseline", include_str!("../profiles/baseline.yaml")),
    (
        "nerves-tuned",
        include_str!("../profiles/nerves-tuned.yaml"),
    ),
    ("minimal", include_str!("../profiles/minimal.yaml")),
];

/// A YAML scalar where the profile means a string (`30`, `true` and `aobf` all fit).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum Scalar {
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
}

impl std::fmt::Display for Scalar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scalar::Bool(b) => write!(f, "{b}"),
            Scalar::Int(i) => write!(f, "{i}"),
            Scalar::Float(x) => write!(f, "{x}"),
            Scalar::Str(s) => f.write_str(s),
        }
    }
}

type Map = BTreeMap<String, Option<Scalar>>;

/// One profile file as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ProfileFile {
    pub description: Option<String>,
    pub include: Option<Vec<String>>,
    pub base: Option<String>,
    /// `vm.swappiness: 1`, ... (written to /proc/sys by the init).
    pub sysctl: Option<Map>,
    /// Other kernel knobs by absolute /sys path, written by the init after the sysctls.
    pub sysfs: Option<Map>,
    /// Knobs written once the program is ready (a dotted sysctl name or an absolute path),
    /// e.g. `vm.drop_caches: 1` to drop the page cache the boot filled.
    pub after_ready: Option<Map>,
    pub zram: Option<ZramFile>,
    pub beam: Option<BeamFile>,
    pub kernel: Option<KernelFile>,
    pub qemu: Option<QemuFile>,
    pub data: Option<DataFile>,
    pub snapshot: Option<SnapshotFile>,
}

/// A size as the YAML has it: text in the `common::size` grammar, or an integer, which that
/// grammar refuses (unless 0) with the fix.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum SizeField {
    Number(u64),
    Text(String),
}

impl SizeField {
    fn text(&self) -> String {
        match self {
            SizeField::Number(n) => n.to_string(),
            SizeField::Text(t) => t.clone(),
        }
    }

    /// The size in bytes; errors name `field`.
    fn bytes(&self, field: &str) -> std::result::Result<u64, String> {
        parse_size(&self.text()).map_err(|e| format!("{field}: {e}"))
    }

    /// The size in whole MiB (qemu's unit for -m and tb-size).
    fn mib(&self, field: &str) -> std::result::Result<u64, String> {
        let b = self.bytes(field)?;
        if !b.is_multiple_of(1 << 20) {
            return Err(format!(
                "{field}: {} is not a whole number of MiB (qemu's unit)",
                self.text()
            ));
        }
        Ok(b >> 20)
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ZramFile {
    pub enabled: Option<bool>,
    /// `32 MiB`, or a percentage of guest RAM is not supported (the init does not know it).
    pub size: Option<SizeField>,
    pub algorithm: Option<String>,
    pub priority: Option<i32>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct BeamFile {
    /// Emulator flags: `+MBas: aobf` becomes the two arguments `+MBas aobf`; an empty value
    /// gives the flag alone.
    pub flags: Option<Map>,
    /// Code loading: `embedded` (everything in the boot script at start) or `interactive`.
    pub mode: Option<String>,
    /// More arguments after the flags (replaces the inherited list).
    pub args: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct KernelFile {
    pub cmdline: Option<String>,
    /// Fragments in kernel-configs/ (`NAME.config`), applied in order on top of allnoconfig.
    pub fragments: Option<Vec<String>>,
    /// A fragment written inline (`CONFIG_X=y` lines), applied after `fragments`.
    pub config: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct QemuFile {
    /// Guest RAM (`-m`), e.g. `110M`.
    pub memory: Option<SizeField>,
    /// TCG translation cache (`-accel tcg,tb-size=N`, whole MiB), e.g. `8 MiB`; 0: qemu's
    /// default (up to 1 GiB).
    pub tb_size: Option<SizeField>,
    pub smp: Option<u32>,
    /// `-device virtio-balloon-device`.
    pub balloon: Option<bool>,
    /// The balloon's `free-page-reporting=on`: freed guest pages go back to the host.
    pub free_page_reporting: Option<bool>,
    /// Guest RAM backend: `ram` (qemu's default: anonymous memory, which qemu marks for
    /// transparent huge pages) or `memfd` (shmem: 4 KiB host pages unless the host's shmem
    /// THP setting says otherwise).
    pub memory_backend: Option<String>,
    /// `false`: no ACPI tables (`-machine acpi=off`); the loader hands the kernel a device
    /// tree, and building the tables costs qemu about 2 MiB.
    pub acpi: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct DataFile {
    pub device: Option<String>,
    pub fstype: Option<String>,
    pub mountpoint: Option<String>,
    pub options: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct SnapshotFile {
    /// The init prints a snapshot this many ms after ready, unasked.
    pub after_ready_ms: Option<u64>,
    /// Then stops the program and powers off.
    pub poweroff: Option<bool>,
}

fn merge_map(into: &mut Option<Map>, from: Option<Map>) {
    if let Some(m) = from {
        into.get_or_insert_with(Map::new).extend(m);
    }
}

macro_rules! take {
    ($into:expr, $from:expr, $($f:ident),*) => { $( if $from.$f.is_some() { $into.$f = $from.$f; } )* };
}

impl ProfileFile {
    /// Apply `o` on top of `self`.
    fn overlay(&mut self, o: ProfileFile) {
        take!(self, o, description);
        merge_map(&mut self.sysctl, o.sysctl);
        merge_map(&mut self.sysfs, o.sysfs);
        merge_map(&mut self.after_ready, o.after_ready);
        if let Some(z) = o.zram {
            let s = self.zram.get_or_insert_with(Default::default);
            take!(s, z, enabled, size, algorithm, priority);
        }
        if let Some(b) = o.beam {
            let s = self.beam.get_or_insert_with(Default::default);
            merge_map(&mut s.flags, b.flags);
            take!(s, b, mode, args);
        }
        if let Some(k) = o.kernel {
            let s = self.kernel.get_or_insert_with(Default::default);
            take!(s, k, cmdline, fragments, config);
        }
        if let Some(q) = o.qemu {
            let s = self.qemu.get_or_insert_with(Default::default);
            take!(
                s,
                q,
                memory,
                tb_size,
                smp,
                balloon,
                free_page_reporting,
                memory_backend,
                acpi
            );
        }
        if let Some(d) = o.data {
            let s = self.data.get_or_insert_with(Default::default);
            take!(s, d, device, fstype, mountpoint, options);
        }
        if let Some(d) = o.snapshot {
            let s = self.snapshot.get_or_insert_with(Default::default);
            take!(s, d, after_ready_ms, poweroff);
        }
    }
}

/// A profile with its includes applied and every value checked.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Profile {
    pub name: String,
    pub description: String,
    /// Files applied, first to last.
    pub chain: Vec<String>,
    pub sysctl: BTreeMap<String, String>,
    /// Absolute /sys paths.
    pub sysfs: BTreeMap<String, String>,
    /// Absolute /proc/sys or /sys paths, written once the program is ready.
    pub after_ready: BTreeMap<String, String>,
    pub zram: Option<ZramProfile>,
    pub beam: BeamProfile,
    pub kernel: KernelProfile,
    pub qemu: QemuProfile,
    pub data: Option<DataProfile>,
    pub snapshot_after_ready_ms: Option<u64>,
    pub snapshot_poweroff: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct ZramProfile {
    pub size_bytes: u64,
    pub algorithm: String,
    pub priority: i32,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct BeamProfile {
    pub flags: BTreeMap<String, String>,
    pub mode: String,
    pub args: Vec<String>,
}

impl BeamProfile {
    /// The emulator flags as arguments, in a stable order.
    pub fn flag_args(&self) -> Vec<String> {
        let mut v = Vec::new();
        for (k, val) in &self.flags {
            v.push(k.clone());
            v.extend(val.split_whitespace().map(str::to_string));
        }
        v
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct KernelProfile {
    pub cmdline: String,
    pub fragments: Vec<String>,
    /// Inline fragment text, applied after `fragments`.
    pub config: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct QemuProfile {
    pub memory: String,
    pub memory_bytes: u64,
    pub tb_size: Option<u32>,
    pub smp: u32,
    pub balloon: bool,
    pub free_page_reporting: bool,
    /// `ram` (qemu's default) or `memfd`.
    pub memory_backend: String,
    /// qemu builds ACPI tables (its default).
    pub acpi: bool,
}

impl QemuProfile {
    /// The qemu arguments these settings stand for (machine, kernel and disks are not here).
    pub fn args(&self) -> Vec<String> {
        let mut v = vec![
            "-m".to_string(),
            format!("{}M", self.memory_bytes >> 20),
            "-smp".into(),
            self.smp.to_string(),
        ];
        if self.memory_backend == "memfd" {
            v.push("-object".into());
            v.push(format!(
                "memory-backend-memfd,id=imgtool-ram,size={}M",
                self.memory_bytes >> 20
            ));
            v.push("-machine".into());
            v.push("memory-backend=imgtool-ram".into());
        }
        if !self.acpi {
            v.push("-machine".into());
            v.push("acpi=off".into());
        }
        if let Some(tb) = self.tb_size.filter(|t| *t > 0) {
            v.push("-accel".into());
            v.push(format!("tcg,tb-size={tb}"));
        }
        if self.balloon {
            v.push("-device".into());
            v.push(if self.free_page_reporting {
                "virtio-balloon-device,free-page-reporting=on".into()
            } else {
                "virtio-balloon-device".into()
            });
        }
        v
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct DataProfile {
    pub device: String,
    pub fstype: String,
    pub mountpoint: String,
    pub options: String,
}

/// Where a profile's text came from, for errors and for finding its includes.
struct Source {
    label: String,
    dir: Option<PathBuf>,
    text: String,
}

fn find(name: &str, near: Option<&Path>) -> Result<Source> {
    let as_path = Path::new(name);
    let candidates: Vec<PathBuf> = if name.ends_with(".yaml") || name.contains('/') {
        let p = match near {
            Some(d) if as_path.is_relative() => d.join(as_path),
            _ => as_path.to_path_buf(),
        };
        vec![p]
    } else {
        near.map(|d| vec![d.join(format!("{name}.yaml"))])
            .unwrap_or_default()
    };
    for p in candidates {
        if p.is_file() {
            let text = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
            return Ok(Source {
                label: p.display().to_string(),
                dir: p.parent().map(Path::to_path_buf),
                text,
            });
        }
    }
    if let Some((n, y)) = BUILTIN.iter().find(|(n, _)| *n == name) {
        return Ok(Source {
            label: format!("builtin:{n}"),
            dir: None,
            text: y.to_string(),
        });
    }
    let names: Vec<_> = BUILTIN.iter().map(|(n, _)| *n).collect();
    Err(Error::Input {
        file: name.into(),
        line: None,
        msg: format!(
            "no such profile (built in: {}; or give a path to a .yaml file)",
            names.join(", ")
        ),
    })
}

fn parse_file(src: &Source) -> Result<ProfileFile> {
    serde_saphyr::from_str(&src.text).map_err(|e| Error::Input {
        file: src.label.clone(),
        line: None,
        msg: e.to_string(),
    })
}

fn load_merged(
    name: &str,
    near: Option<&Path>,
    stack: &mut Vec<String>,
    chain: &mut Vec<String>,
) -> Result<ProfileFile> {
    let src = find(name, near)?;
    if stack.contains(&src.label) {
        return Err(Error::Input {
            file: src.label.clone(),
            line: None,
            msg: format!("`include` cycle: {} -> {}", stack.join(" -> "), src.label),
        });
    }
    let file = parse_file(&src)?;
    let mut parents = file.include.clone().unwrap_or_default();
    if let Some(b) = &file.base {
        parents.insert(0, b.clone());
    }
    stack.push(src.label.clone());
    let mut merged = ProfileFile::default();
    for p in &parents {
        merged.overlay(load_merged(p, src.dir.as_deref(), stack, chain)?);
    }
    stack.pop();
    chain.push(src.label.clone());
    merged.overlay(ProfileFile {
        include: None,
        base: None,
        ..file
    });
    Ok(merged)
}

/// Load a profile by built-in name or path, apply its includes, check every value.
pub fn load(name: &str) -> Result<Profile> {
    let mut chain = Vec::new();
    let merged = load_merged(name, None, &mut Vec::new(), &mut chain)?;
    let label = chain.last().cloned().unwrap_or_default();
    resolve(name, merged, chain).map_err(|msg| Error::Input {
        file: label,
        line: None,
        msg,
    })
}

fn resolve(name: &str, f: ProfileFile, chain: Vec<String>) -> std::result::Result<Profile, String> {
    let name = Path::new(name)
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| name.to_string());
    let flat = |m: Option<Map>| -> BTreeMap<String, String> {
        m.unwrap_or_default()
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k, v.to_string())))
            .collect()
    };
    let sysctl = flat(f.sysctl);
    for (k, v) in &sysctl {
        if crate::initconf::sysctl_path(k).is_none() {
            return Err(format!(
                "sysctl: `{k}` is not a sysctl name (write e.g. vm.swappiness)"
            ));
        }
        if v.contains('\n') {
            return Err(format!("sysctl.{k}: the value must be one line"));
        }
    }
    let sysfs = flat(f.sysfs);
    for k in sysfs.keys() {
        if !k.starts_with("/sys/") {
            return Err(format!(
                "sysfs: `{k}` is not a /sys path (sysctls go under `sysctl:`)"
            ));
        }
        crate::initconf::knob_path_ok(k).map_err(|e| format!("sysfs: {e}"))?;
    }
    let mut after_ready = BTreeMap::new();
    for (k, v) in flat(f.after_ready) {
        let path = if k.starts_with('/') {
            Some(k.clone())
        } else {
            crate::initconf::sysctl_path(&k)
        };
        let path = path
            .filter(|p| crate::initconf::knob_path_ok(p).is_ok())
            .ok_or(format!(
                "after-ready: `{k}` is neither a sysctl name (vm.drop_caches) nor a /proc/sys or /sys path"
            ))?;
        after_ready.insert(path, v);
    }
    for (k, v) in sysfs.iter().chain(&after_ready) {
        if v.contains('\n') {
            return Err(format!("`{k}`: the value must be one line"));
        }
    }
    let zram = match f.zram {
        Some(z) if z.enabled != Some(false) => {
            let size = z
                .size
                .ok_or("zram.size is missing (e.g. `size: 32 MiB`), or set `enabled: false`")?;
            let size_bytes = size.bytes("zram.size")?;
            if size_bytes < 1 << 20 {
                return Err(format!("zram.size: {} is below 1 MiB", size.text()));
            }
            let priority = z.priority.unwrap_or(100);
            if !(0..=32767).contains(&priority) {
                return Err(format!("zram.priority: {priority} is not in 0..=32767"));
            }
            Some(ZramProfile {
                size_bytes,
                algorithm: z.algorithm.unwrap_or_default(),
                priority,
            })
        }
        _ => None,
    };
    let b = f.beam.unwrap_or_default();
    let flags = flat(b.flags);
    for k in flags.keys() {
        if !(k.starts_with('+') || k.starts_with('-')) {
            return Err(format!(
                "beam.flags: `{k}` is not an emulator flag (they start with + or -)"
            ));
        }
    }
    let mode = b.mode.unwrap_or_else(|| "interactive".into());
    if mode != "interactive" && mode != "embedded" {
        return Err(format!(
            "beam.mode: `{mode}` (use `embedded` or `interactive`)"
        ));
    }
    let k = f.kernel.unwrap_or_default();
    let q = f.qemu.unwrap_or_default();
    let memory_backend = q.memory_backend.unwrap_or_else(|| "ram".into());
    if memory_backend != "ram" && memory_backend != "memfd" {
        return Err(format!(
            "qemu.memory-backend: `{memory_backend}` (use `ram` or `memfd`)"
        ));
    }
    let memory_field = q.memory.unwrap_or(SizeField::Text("128M".into()));
    let memory_mib = memory_field.mib("qemu.memory")?;
    if memory_mib < 16 {
        return Err(format!(
            "qemu.memory: {} is below 16 MiB",
            memory_field.text()
        ));
    }
    let memory_bytes = memory_mib << 20;
    // In qemu's -m syntax, whatever unit the profile used.
    let memory = format!("{memory_mib}M");
    let tb_size = match &q.tb_size {
        None => None,
        Some(t) => Some(
            u32::try_from(t.mib("qemu.tb-size")?)
                .map_err(|_| format!("qemu.tb-size: {} is too large", t.text()))?,
        ),
    };
    let data = match f.data {
        Some(d) => Some(DataProfile {
            device: d.device.ok_or("data.device is missing (e.g. /dev/vda3)")?,
            fstype: d.fstype.unwrap_or_else(|| "f2fs".into()),
            mountpoint: d.mountpoint.unwrap_or_else(|| "/root".into()),
            options: d.options.unwrap_or_default(),
        }),
        None => None,
    };
    let snap = f.snapshot.unwrap_or_default();
    Ok(Profile {
        name,
        description: f.description.unwrap_or_default(),
        chain,
        sysctl,
        sysfs,
        after_ready,
        zram,
        beam: BeamProfile {
            flags,
            mode,
            args: b.args.unwrap_or_default(),
        },
        kernel: KernelProfile {
            cmdline: k.cmdline.unwrap_or_default(),
            fragments: k.fragments.unwrap_or_default(),
            config: k.config.filter(|c| !c.trim().is_empty()),
        },
        qemu: QemuProfile {
            memory,
            memory_bytes,
            tb_size,
            smp: q.smp.unwrap_or(1),
            balloon: q.balloon.unwrap_or(false),
            free_page_reporting: q.free_page_reporting.unwrap_or(false),
            memory_backend,
            acpi: q.acpi.unwrap_or(true),
        },
        data,
        snapshot_after_ready_ms: snap.after_ready_ms,
        snapshot_poweroff: snap.poweroff.unwrap_or(false),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_resolve() {
        for (n, _) in BUILTIN {
            let p = load(n).unwrap_or_else(|e| panic!("{n}: {e}"));
            assert_eq!(p.name, *n);
        }
    }

    #[test]
    fn nerves_tuned_values() {
        let p = load("nerves-tuned").unwrap();
        assert_eq!(p.sysctl["vm.swappiness"], "1");
        assert_eq!(p.sysctl["vm.dirty_ratio"], "5");
        assert_eq!(p.sysctl["vm.dirty_background_ratio"], "2");
        assert_eq!(p.sysctl["vm.vfs_cache_pressure"], "150");
        let args = p.beam.flag_args().join(" ");
        for f in [
            "+MBas aobf",
            "+MHas aobf",
            "+MMmcs 30",
            "+sbwt none",
            "+sbwtdcpu none",
            "+sbwtdio none",
        ] {
            assert!(args.contains(f), "{f} missing from {args}");
        }
        // Inherits the baseline's kernel and data settings.
        assert!(p.chain.len() >= 2, "{:?}", p.chain);
        assert!(p.kernel.cmdline.contains("console="));
        let base = load("baseline").unwrap();
        assert!(base.beam.flags.is_empty());
        assert!(!base.sysctl.contains_key("vm.swappiness"));
    }

    #[test]
    fn include_merges_and_null_removes() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("a.yaml"),
            "sysctl: { vm.swappiness: 10, vm.dirty_ratio: 5 }\nbeam: { flags: { +S: '1:1' } }\n\
             zram: { size: 16 MiB, algorithm: lz4 }\n",
        )
        .unwrap();
        std::fs::write(
            d.path().join("b.yaml"),
            "include: [a]\nsysctl: { vm.swappiness: 1, vm.dirty_ratio: null }\n\
             zram: { size: 32 MiB }\n",
        )
        .unwrap();
        let p = load(d.path().join("b.yaml").to_str().unwrap()).unwrap();
        assert_eq!(p.sysctl.len(), 1);
        assert_eq!(p.sysctl["vm.swappiness"], "1");
        assert_eq!(p.beam.flag_args(), ["+S", "1:1"]);
        let z = p.zram.unwrap();
        assert_eq!((z.size_bytes, z.algorithm.as_str()), (32 << 20, "lz4"));
        assert_eq!(p.name, "b");
    }

    #[test]
    fn minimal_knobs_and_qemu_args() {
        let p = load("minimal").unwrap();
        assert_eq!(
            p.sysfs["/sys/module/page_reporting/parameters/page_reporting_order"],
            "0"
        );
        assert_eq!(p.after_ready["/proc/sys/vm/drop_caches"], "3");
        assert!(p
            .kernel
            .config
            .as_deref()
            .unwrap()
            .contains("CONFIG_VIRTIO_BALLOON=y"));
        let args = p.qemu.args().join(" ");
        for a in [
            "-m 110M",
            "-object memory-backend-memfd,id=imgtool-ram,size=110M -machine memory-backend=imgtool-ram",
            "-accel tcg,tb-size=",
            "-device virtio-balloon-device,free-page-reporting=on",
            "-machine acpi=off",
        ] {
            assert!(args.contains(a), "{a} missing from {args}");
        }
        // The baseline is qemu's defaults at the same guest RAM.
        let b = load("baseline").unwrap();
        assert_eq!(b.qemu.args().join(" "), "-m 110M -smp 1");
        assert!(b.sysfs.is_empty() && b.after_ready.is_empty() && b.kernel.config.is_none());
    }

    #[test]
    fn levers_can_be_taken_back() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("l.yaml");
        std::fs::write(
            &f,
            "include: [minimal]\nqemu: { tb-size: 0, memory-backend: ram, acpi: true }\n\
             after-ready: { vm.drop_caches: null }\nzram: { enabled: false }\n",
        )
        .unwrap();
        let p = load(f.to_str().unwrap()).unwrap();
        let args = p.qemu.args().join(" ");
        assert!(
            !args.contains("tb-size") && !args.contains("memfd") && !args.contains("acpi"),
            "{args}"
        );
        assert!(p.after_ready.is_empty() && p.zram.is_none());
        assert_eq!(p.beam.flags["+S"], "1:1");
    }

    #[test]
    fn bad_profiles_name_file_and_field() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("bad.yaml");
        std::fs::write(&f, "sysctl: {}\nzram:\n  size: 1 MiB\n  colour: red\n").unwrap();
        let e = load(f.to_str().unwrap()).unwrap_err().to_string();
        assert!(
            e.contains("bad.yaml") && e.contains("colour") && e.contains("line 4"),
            "{e}"
        );
        std::fs::write(&f, "zram: { size: lots }\n").unwrap();
        let e = load(f.to_str().unwrap()).unwrap_err().to_string();
        assert!(e.contains("zram.size"), "{e}");
        std::fs::write(&f, "include: [bad]\n").unwrap();
        let e = load(f.to_str().unwrap()).unwrap_err().to_string();
        assert!(e.contains("cycle"), "{e}");
        for (yaml, want) in [
            ("sysfs: { /proc/sys/vm/x: 1 }\n", "sysfs"),
            ("after-ready: { /etc/passwd: x }\n", "after-ready"),
            ("qemu: { memory-backend: hugetlbfs }\n", "memory-backend"),
            (
                "zram: { size: 33554432 }\n",
                "zram.size: `33554432` has no unit",
            ),
            (
                "qemu: { memory: 110MB }\n",
                "qemu.memory: `110MB`: `MB` is ambiguous",
            ),
            ("qemu: { tb-size: 8 }\n", "qemu.tb-size: `8` has no unit"),
            ("qemu: { tb-size: 1.5 MiB }\n", "not a whole number of MiB"),
        ] {
            std::fs::write(&f, yaml).unwrap();
            let e = load(f.to_str().unwrap()).unwrap_err().to_string();
            assert!(e.contains("bad.yaml") && e.contains(want), "{yaml}: {e}");
        }
        let e = load("no-such-profile").unwrap_err().to_string();
        assert!(e.contains("nerves-tuned"), "{e}");
    }
}
