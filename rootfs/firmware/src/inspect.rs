//! `imgtool fw inspect`: a firmware's resources, root filesystem, PID 1, release, vm.args,
//! sysctl.conf, erlinit.config, kernel version and meta.conf identity.

use std::path::Path;

use fwup_compat::rewrite::{self, Archive};
use serde::Serialize;
use squashfs::image::Image;

use crate::release::{self, ErlinitOptions, Release, ReleaseError, ERLINIT_CONFIG};
use crate::{Error, Result, MAX_ENTRY};

#[derive(Debug, Clone, Serialize)]
pub struct Info {
    pub file: String,
    pub bytes: u64,
    pub signed: bool,
    pub product: Option<String>,
    pub version: Option<String>,
    pub platform: Option<String>,
    pub architecture: Option<String>,
    pub author: Option<String>,
    pub resources: Vec<Resource>,
    pub rootfs: Option<RootfsInfo>,
    pub kernel: Option<KernelInfo>,
    /// `uboot_setenv(…, "*kernel_args", …)` calls of the tasks: where kernel arguments go.
    pub kernel_args: Vec<KernelArgs>,
}

/// One `uboot_setenv` of a `*kernel_args` variable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KernelArgs {
    pub task: String,
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Resource {
    pub name: String,
    pub bytes: u64,
    /// squashfs, arm64-image, or data.
    pub kind: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct RootfsInfo {
    pub resource: String,
    pub fs_type: String,
    pub compression: Option<String>,
    pub block_size: u32,
    pub pid1: Pid1,
    pub erlinit_config: Option<String>,
    pub erlinit: Option<ErlinitOptions>,
    pub sysctl_conf: Option<String>,
    pub release: Option<Release>,
    /// Why no release was found, when none was.
    pub release_error: Option<String>,
    pub vm_args_flags: Vec<String>,
    /// imgtool's helper is already in (a tuned firmware).
    pub helper: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Pid1 {
    /// /sbin/init resolved through the image's symlinks.
    pub path: Option<String>,
    /// erlinit, imgtool-init, other or missing.
    pub kind: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct KernelInfo {
    pub resource: String,
    /// The kernel's `Linux version ...` banner.
    pub version: Option<String>,
}

const SQUASHFS_MAGIC: &[u8] = b"hsqs";

/// An arm64 Linux Image: "ARM\x64" at 0x38 (Documentation/arm64/booting.rst).
fn is_arm64_image(d: &[u8]) -> bool {
    d.get(0x38..0x3c) == Some(b"ARM\x64")
}

/// The `Linux version ...` banner in an uncompressed kernel image.
pub fn kernel_version(d: &[u8]) -> Option<String> {
    let needle = b"Linux version ";
    let at = d.windows(needle.len()).position(|w| w == needle)?;
    let rest = &d[at..d.len().min(at + 256)];
    let end = rest
        .iter()
        .position(|&b| b == 0 || b == b'\n')
        .unwrap_or(rest.len());
    Some(String::from_utf8_lossy(&rest[..end]).trim().to_string())
}

/// Read the archive, mapping fwup's errors to "not a firmware".
pub(crate) fn load(path: &Path) -> Result<Archive> {
    let file = path.display().to_string();
    if !path.is_file() {
        return Err(Error::NotFirmware {
            file,
            why: "no such file".into(),
        });
    }
    rewrite::read(path, MAX_ENTRY).map_err(|e| Error::NotFirmware {
        file,
        why: e.to_string(),
    })
}

/// The first resource holding a squashfs image.
pub(crate) fn rootfs_resource(a: &Archive) -> Option<String> {
    a.resource_names()
        .into_iter()
        .find(|n| a.resource(n).is_some_and(|d| d.starts_with(SQUASHFS_MAGIC)))
}

pub(crate) fn pid1(img: &Image) -> Pid1 {
    let path = img.real_path("/sbin/init");
    let kind = match img.read("/sbin/init", 64 << 20) {
        Ok(Some(b)) => {
            let has = |s: &[u8]| b.windows(s.len()).any(|w| w == s);
            if has(ERLINIT_CONFIG.as_bytes()) {
                "erlinit"
            } else if has(rootfs::initconf::CONFIG_PATH.as_bytes()) {
                "imgtool-init"
            } else {
                "other"
            }
        }
        _ => "missing",
    };
    Pid1 {
        path,
        kind: kind.into(),
    }
}

pub(crate) fn release_of(
    img: &Image,
    opts: &ErlinitOptions,
) -> std::result::Result<Release, ReleaseError> {
    let path = opts
        .release_path
        .as_deref()
        .unwrap_or(release::DEFAULT_RELEASE_PATH);
    release::find(img, path, opts.boot.as_deref())
}

pub(crate) fn rootfs_err(file: &str, e: impl std::fmt::Display) -> Error {
    Error::Rootfs {
        file: file.to_string(),
        why: e.to_string(),
    }
}

/// Everything `fw inspect` shows. A firmware without a root filesystem or a release is still
/// described (those parts are empty); only an unreadable archive is an error.
pub fn inspect(path: &Path) -> Result<Info> {
    let file = path.display().to_string();
    let a = load(path)?;
    let bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let resources: Vec<Resource> = a
        .resource_names()
        .into_iter()
        .map(|name| {
            let d = a.resource(&name).unwrap_or(&[]);
            let kind = if d.starts_with(SQUASHFS_MAGIC) {
                "squashfs"
            } else if is_arm64_image(d) {
                "arm64-image"
            } else {
                "data"
            };
            Resource {
                bytes: d.len() as u64,
                kind: kind.into(),
                name,
            }
        })
        .collect();
    let kernel = resources
        .iter()
        .find(|r| r.kind == "arm64-image")
        .map(|r| KernelInfo {
            resource: r.name.clone(),
            version: kernel_version(a.resource(&r.name).unwrap_or(&[])),
        });
    let rootfs = match rootfs_resource(&a) {
        None => None,
        Some(name) => {
            let data = a.resource(&name).unwrap_or(&[]);
            let img = Image::open(data).map_err(|e| rootfs_err(&file, e))?;
            let erlinit_config =
                release::read_text(&img, ERLINIT_CONFIG).map_err(|e| rootfs_err(&file, e))?;
            let erlinit = erlinit_config.as_deref().map(release::erlinit_options);
            let (release, release_error) =
                match release_of(&img, &erlinit.clone().unwrap_or_default()) {
                    Ok(r) => (Some(r), None),
                    Err(ReleaseError::Missing(d)) => {
                        (None, Some(format!("no releases/VSN/NAME.boot under {d}")))
                    }
                    Err(ReleaseError::NotBeam { why, .. }) => (None, Some(why)),
                    Err(ReleaseError::Read(e)) => return Err(rootfs_err(&file, e)),
                };
            let vm_args_flags = release
                .as_ref()
                .and_then(|r| r.vm_args.as_deref())
                .map(release::vm_args_flags)
                .unwrap_or_default();
            Some(RootfsInfo {
                resource: name,
                fs_type: "squashfs".into(),
                compression: img.compression().map(|c| c.name().to_string()),
                block_size: img.block_size(),
                pid1: pid1(&img),
                sysctl_conf: release::read_text(&img, "/etc/sysctl.conf")
                    .map_err(|e| rootfs_err(&file, e))?,
                helper: img.kind(rootfs::initconf::HELPER_PATH).is_some(),
                erlinit_config,
                erlinit,
                release,
                release_error,
                vm_args_flags,
            })
        }
    };
    let kernel_args = a
        .setenvs()
        .into_iter()
        .filter(|s| s.name.ends_with("kernel_args"))
        .map(|s| KernelArgs {
            task: s.task,
            name: s.name,
            value: s.value,
        })
        .collect();
    let meta = |k: &str| a.meta_value(k).map(str::to_string);
    Ok(Info {
        file,
        bytes,
        signed: a.signed,
        product: meta("meta-product"),
        version: meta("meta-version"),
        platform: meta("meta-platform"),
        architecture: meta("meta-architecture"),
        author: meta("meta-author"),
        resources,
        rootfs,
        kernel,
        kernel_args,
    })
}

impl Info {
    /// The text `fw inspect` prints.
    pub fn render(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let o = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
        let _ = writeln!(
            s,
            "{} ({} bytes{})",
            self.file,
            self.bytes,
            if self.signed { ", signed" } else { "" }
        );
        let _ = writeln!(s, "product:      {} {}", o(&self.product), o(&self.version));
        let _ = writeln!(
            s,
            "platform:     {} ({})",
            o(&self.platform),
            o(&self.architecture)
        );
        let _ = writeln!(s, "resources:");
        for r in &self.resources {
            let _ = writeln!(s, "  {:<20} {:>12} bytes  {}", r.name, r.bytes, r.kind);
        }
        match &self.kernel {
            Some(k) => {
                let _ = writeln!(s, "kernel:       {} ({})", o(&k.version), k.resource);
            }
            None => {
                let _ = writeln!(s, "kernel:       none found (no arm64 Image resource)");
            }
        }
        for k in &self.kernel_args {
            let _ = writeln!(
                s,
                "kernel args:  {}={:?} (task {})",
                k.name, k.value, k.task
            );
        }
        let Some(r) = &self.rootfs else {
            let _ = writeln!(s, "rootfs:       none (no squashfs resource)");
            return s;
        };
        let _ = writeln!(
            s,
            "rootfs:       {} ({}, {}, {} KiB blocks)",
            r.resource,
            r.fs_type,
            r.compression.as_deref().unwrap_or("?"),
            r.block_size / 1024
        );
        let _ = writeln!(
            s,
            "PID 1:        {} ({})",
            r.pid1.kind,
            r.pid1.path.as_deref().unwrap_or("no /sbin/init")
        );
        if r.helper {
            let _ = writeln!(s, "helper:       imgtool's helper is in (a tuned firmware)");
        }
        match &r.release {
            Some(rel) => {
                let _ = writeln!(
                    s,
                    "release:      {} {} in {} (erts-{})",
                    rel.name, rel.version, rel.root, rel.erts_version
                );
                let _ = writeln!(s, "vm.args:      {}", r.vm_args_flags.join("  "));
            }
            None => {
                let _ = writeln!(
                    s,
                    "release:      none: {}",
                    r.release_error.as_deref().unwrap_or("-")
                );
            }
        }
        let text = |name: &str, t: &Option<String>, s: &mut String| match t {
            Some(t) => {
                let _ = writeln!(s, "{name}:");
                for l in t
                    .lines()
                    .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
                {
                    let _ = writeln!(s, "  {l}");
                }
            }
            None => {
                let _ = writeln!(s, "{name}: none");
            }
        };
        text(ERLINIT_CONFIG, &r.erlinit_config, &mut s);
        text("/etc/sysctl.conf", &r.sysctl_conf, &mut s);
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small .fw with a squashfs holding an erlinit-looking /sbin/init and a config.
    fn small_fw(dir: &Path) -> std::path::PathBuf {
        let tree = dir.join("tree");
        std::fs::create_dir_all(tree.join("sbin")).unwrap();
        std::fs::create_dir_all(tree.join("etc")).unwrap();
        std::fs::write(tree.join("sbin/init"), b"reads /etc/erlinit.config").unwrap();
        std::fs::write(tree.join("etc/erlinit.config"), b"-r /srv/erlang\n").unwrap();
        squashfs::build_to_file(&tree, &dir.join("rootfs.img"), &Default::default()).unwrap();
        std::fs::write(
            dir.join("fwup.conf"),
            "meta-platform = \"qemu_aarch64\"\nfile-resource rootfs.img { host-path = \"rootfs.img\" }\n\
             task complete { on-resource rootfs.img { raw_write(0) } }\n",
        )
        .unwrap();
        let fw = dir.join("a.fw");
        fwup_compat::ops::create(&fwup_compat::ops::CreateOptions {
            config: dir.join("fwup.conf").to_str().unwrap(),
            output: fw.to_str().unwrap(),
            level: 1,
            private_key: None,
        })
        .unwrap();
        fw
    }

    #[test]
    fn damaged_archives_are_errors_not_panics() {
        let d = tempfile::tempdir().unwrap();
        let fw = small_fw(d.path());
        let info = inspect(&fw).unwrap();
        assert_eq!(info.rootfs.as_ref().unwrap().pid1.kind, "erlinit");
        assert!(info.rootfs.as_ref().unwrap().release.is_none());
        let good = std::fs::read(&fw).unwrap();
        let bad = d.path().join("bad.fw");
        // Flip bytes across the whole archive (meta.conf, the zip structure, the squashfs):
        // every result is a value or an error.
        for i in (0..good.len()).step_by(97) {
            let mut b = good.clone();
            b[i] ^= 0xa5;
            std::fs::write(&bad, &b).unwrap();
            let _ = inspect(&bad);
        }
        for cut in [0, 10, 100, good.len() / 2, good.len() - 1] {
            std::fs::write(&bad, &good[..cut]).unwrap();
            assert!(inspect(&bad).is_err(), "truncated at {cut}");
        }
    }

    #[test]
    fn kernel_banner_is_found() {
        let mut img = vec![0u8; 0x40];
        img[0x38..0x3c].copy_from_slice(b"ARM\x64");
        img.extend_from_slice(b"xx\0Linux version 6.1.0-imgtool (root@x) #1 SMP\n\0tail");
        assert!(is_arm64_image(&img));
        assert_eq!(
            kernel_version(&img).as_deref(),
            Some("Linux version 6.1.0-imgtool (root@x) #1 SMP")
        );
        assert_eq!(kernel_version(b"nothing here"), None);
    }
}
