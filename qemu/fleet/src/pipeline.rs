//! From a memory profile to a bootable image, in-process: the small kernel (kernel-configs),
//! the root filesystem (rootfs), then either the disk layout written directly (layout) or a
//! fwup archive made and applied (fwup-compat), as `imgtool demo` does.
//!
//! Every step is a library call, so a failing step's own error (file, field, fix) reaches the
//! caller as it is.

use std::fs;
use std::path::{Path, PathBuf};

use crate::host::Host;
use crate::{write_atomic, Error, Result};

/// A memory profile's host-side settings: guest memory (qemu -m), the other qemu arguments
/// (tb-size, balloon, smp), the kernel fragments and command line.
#[derive(Clone, Debug)]
pub struct ProfileHost {
    pub memory: String,
    pub qemu: Vec<String>,
    pub fragments: Vec<String>,
    pub cmdline: String,
}

/// Load profile `name` (a built-in name or a YAML path) and split out what the host needs.
pub fn profile_host(name: &str, cache: &Path) -> Result<ProfileHost> {
    let p = rootfs::profile::load(name).map_err(|e| {
        if e.is_input() {
            Error::Usage(format!("profile `{name}`: {e}"))
        } else {
            Error::Failed(format!("profile `{name}`: {e}"))
        }
    })?;
    let mut qemu = p.qemu.args();
    let mut memory = "128M".to_string();
    // -m is passed on its own (qemu::Vm::memory).
    if let Some(i) = qemu.iter().position(|a| a == "-m") {
        if i + 1 < qemu.len() {
            memory = qemu[i + 1].clone();
            qemu.drain(i..i + 2);
        }
    }
    // The arch's base fragment is always applied by the kernel build.
    let mut fragments: Vec<String> = p
        .kernel
        .fragments
        .into_iter()
        .filter(|f| f != "qemu-aarch64")
        .collect();
    if let Some(text) = &p.kernel.config {
        fragments.push(inline_fragment(text, cache)?.display().to_string());
    }
    Ok(ProfileHost {
        memory,
        qemu,
        fragments,
        cmdline: p.kernel.cmdline,
    })
}

/// A profile's inline kernel config as a fragment file the kernel build can read: named by its
/// content under the cache, so the same text is the same file (and the same cached kernel).
fn inline_fragment(text: &str, cache: &Path) -> Result<PathBuf> {
    let dir = cache.join("fragments");
    fs::create_dir_all(&dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    let body = format!("# a memory profile's kernel.config\n{}\n", text.trim_end());
    let path = dir.join(format!(
        "{}.config",
        &common::hash::sha256_hex(text.as_bytes())[..16]
    ));
    if fs::read_to_string(&path).ok().as_deref() != Some(body.as_str()) {
        write_atomic(&path, body.as_bytes())?;
    }
    Ok(path)
}

/// The small arm64 kernel with these extra fragments (cached by kernel-configs).
pub fn kernel(fragments: &[String], host: &Host) -> Result<PathBuf> {
    let opts = kernel_configs::BuildOptions {
        arch: "aarch64".into(),
        fragments: fragments.to_vec(),
        source: None,
        jobs: None,
        force: false,
        config_only: false,
    };
    let mut progress = host.ui.kernel();
    Ok(kernel_configs::build(&opts, progress.as_mut())?)
}

/// Build the root filesystem `spec` (a built-in name or a YAML path) with `profile` into the
/// squashfs file `out`.
pub fn rootfs(
    spec: &str,
    profile: &str,
    out: &Path,
    host: &Host,
) -> Result<rootfs::assemble::Report> {
    Ok(rootfs::build_squashfs(
        spec,
        Some(profile.to_string()),
        out,
        host.ui.rootfs(),
    )?)
}

/// Write disk layout `layout` (built-in name or YAML path) to `out` with the kernel, root
/// filesystem and kernel command line given.
pub fn image(layout: &str, kernel: &Path, rootfs: &Path, cmdline: &str, out: &Path) -> Result<()> {
    let mut overrides = std::collections::BTreeMap::new();
    overrides.insert("kernel".to_string(), kernel.display().to_string());
    overrides.insert("rootfs".to_string(), rootfs.display().to_string());
    overrides.insert("cmdline".to_string(), cmdline.to_string());
    let plan = layout::plan_from(layout, layout::Context::new(overrides))?;
    layout::write_image(&plan, out, &mut |_, _| {})?;
    Ok(())
}

/// Run fwup (imgtool's) in-process with these arguments; its own messages go to stderr as
/// fwup prints them, and a failure says which step ran.
pub fn fwup(what: &str, args: &[&str]) -> Result<()> {
    let argv: Vec<std::ffi::OsString> = std::iter::once("fwup")
        .chain(args.iter().copied())
        .map(Into::into)
        .collect();
    let status = fwup_compat::cli::run(argv);
    if status != 0 {
        return Err(Error::Failed(format!(
            "{what}: `fwup {}` failed with status {status} (its message is above)",
            args.join(" ")
        )));
    }
    Ok(())
}

/// Format `size` bytes at `offset` of `image` as an empty f2fs labelled `label`, growing the
/// file to the region's end.
pub fn format_f2fs(image: &Path, offset: u64, size: u64, label: &str) -> Result<()> {
    let what = |s: &str| format!("{}: {s}", image.display());
    let end = offset
        .checked_add(size)
        .ok_or_else(|| Error::Usage(what("the data partition's end overflows")))?;
    let mut f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(image)
        .map_err(|e| Error::io(what("opening to format the data partition"), e))?;
    let len = f.metadata().map_err(|e| Error::io(what("stat"), e))?.len();
    let opts = f2fs::Options {
        label: label.to_string(),
        uuid: None,
        timestamp: 0,
        sb_checksum: true,
        disk_offset: offset,
        zero: if offset >= len {
            f2fs::ZeroMode::Assume
        } else {
            f2fs::ZeroMode::Detect
        },
        root: Default::default(),
    };
    if len < end {
        f.set_len(end)
            .map_err(|e| Error::io(what("growing to the data partition's end"), e))?;
    }
    f2fs::format(&mut f, offset, size, &opts)
        .map_err(|e| Error::Failed(what(&format!("formatting f2fs: {e}"))))?;
    f.sync_all().map_err(|e| Error::io(what("sync"), e))?;
    Ok(())
}

/// The demo's output files.
pub struct DemoFiles {
    pub kernel: PathBuf,
    pub rootfs: PathBuf,
    pub fwup_conf: PathBuf,
    pub firmware: PathBuf,
    pub image: PathBuf,
}

/// The layout the demo's firmware is for; its fwup.conf is rendered from this layout's plan
/// (`layout::fwup_conf`), so the .fw and `imgtool build` agree on every offset.
const DEMO_LAYOUT: &str = "nerves-qemu-aarch64";

/// The demo's fwup.conf (<https://github.com/fwup-home/fwup#configuration-file-format>) and the
/// application partition's (first LBA, blocks): the built-in Nerves layout with the profile's
/// kernel command line. `KERNEL` and `ROOTFS` come from the environment when fwup makes the .fw.
/// fwup does not format the f2fs data partition (Nerves does that on first boot); the demo does
/// it after applying.
pub fn demo_fwup_conf(cmdline: &str) -> Result<(String, (u64, u64))> {
    let mut overrides = std::collections::BTreeMap::new();
    overrides.insert("cmdline".to_string(), cmdline.to_string());
    overrides.insert("product".to_string(), "imgtool demo".to_string());
    let plan = layout::plan_from(DEMO_LAYOUT, layout::Context::new(overrides))?;
    let conf = layout::fwup_conf::render(
        &plan,
        &layout::fwup_conf::Resources {
            kernel: "${KERNEL}".into(),
            rootfs: "${ROOTFS}".into(),
        },
    )?;
    let data = plan
        .table
        .as_ref()
        .and_then(|t| t.partitions.iter().find(|p| p.expand))
        .map(|p| (p.first_lba, p.blocks))
        .ok_or_else(|| {
            Error::Failed(format!(
                "layout `{DEMO_LAYOUT}` has no expanding data partition"
            ))
        })?;
    Ok((conf, data))
}

/// The demo's first four steps: kernel, BEAM root filesystem (`beam-guest` with `profile`),
/// firmware.fw made with fwup, special.img applied from it with the data partition formatted.
pub fn demo_image(out: &Path, profile: &str, ph: &ProfileHost, host: &Host) -> Result<DemoFiles> {
    fs::create_dir_all(out).map_err(|e| Error::io(format!("creating {}", out.display()), e))?;
    // fwup resolves host-path relative to its config file: give it absolute paths.
    let out = std::path::absolute(out)
        .map_err(|e| Error::io(format!("resolving {}", out.display()), e))?;
    host.ui.note("demo: 1/5 kernel");
    let kernel_path = kernel(&ph.fragments, host)?;
    host.ui.note(&format!(
        "demo: 2/5 BEAM root filesystem ({profile} profile)"
    ));
    let rootfs_path = out.join("rootfs.squashfs");
    rootfs("beam-guest", profile, &rootfs_path, host)?;
    host.ui.note("demo: 3/5 firmware.fw");
    let fw = out.join("firmware.fw");
    let conf = out.join("fwup.conf");
    let (conf_text, (data_lba, data_blocks)) = demo_fwup_conf(&ph.cmdline)?;
    write_atomic(&conf, conf_text.as_bytes())?;
    // fwup reads ${KERNEL} and ${ROOTFS} from the environment, as the real one does.
    std::env::set_var("KERNEL", &kernel_path);
    std::env::set_var("ROOTFS", &rootfs_path);
    let s = |p: &Path| p.to_string_lossy().into_owned();
    fwup(
        "making firmware.fw",
        &["-c", "-q", "-f", &s(&conf), "-o", &s(&fw)],
    )?;
    host.ui.note("demo: 4/5 special.img from firmware.fw");
    let img = out.join("special.img");
    // A fresh file each time: fwup writes into an existing image in place.
    let _ = fs::remove_file(&img);
    fwup(
        "applying firmware.fw",
        &["-a", "-q", "-i", &s(&fw), "-d", &s(&img), "-t", "complete"],
    )?;
    // fwup leaves the application partition alone (Nerves formats it on first boot); format it
    // here, which also grows the file to the partition table's end.
    format_f2fs(&img, data_lba * 512, data_blocks * 512, "APPDATA")?;
    Ok(DemoFiles {
        kernel: kernel_path,
        rootfs: rootfs_path,
        fwup_conf: conf,
        firmware: fw,
        image: img,
    })
}

/// An image for `profile` built the direct way (kernel, rootfs spec, layout) into `dir`.
pub fn profile_image(
    dir: &Path,
    rootfs_spec: &str,
    layout: &str,
    profile: &str,
    ph: &ProfileHost,
    kernel_override: Option<&Path>,
    host: &Host,
) -> Result<PathBuf> {
    fs::create_dir_all(dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    let k = match kernel_override {
        Some(k) => k.to_path_buf(),
        None => kernel(&ph.fragments, host)?,
    };
    let rootfs_path = dir.join("rootfs.squashfs");
    rootfs(rootfs_spec, profile, &rootfs_path, host)?;
    let img = dir.join("special.img");
    image(layout, &k, &rootfs_path, &ph.cmdline, &img)?;
    Ok(img)
}

#[cfg(test)]
mod demo_conf_tests {
    use super::*;

    /// The demo's firmware is rendered from the Nerves layout's plan: its offsets, its env, the
    /// profile's command line; no hard-coded second copy.
    #[test]
    fn the_demo_fwup_conf_is_the_nerves_layout() {
        let (conf, data) = demo_fwup_conf("console=ttyAMA0 quiet").unwrap();
        assert_eq!(data, (409872, 307200));
        for want in [
            "meta-product = \"imgtool demo\"",
            "meta-architecture = \"arm\"",
            "block-offset = 205072",
            "on-resource Image { raw_write(272) }",
            "on-resource rootfs.img { raw_write(205072) }",
            "uboot_setenv(uboot-env, \"a.kernel_args\", \"root=/dev/vda1 rootfstype=squashfs console=ttyAMA0 quiet\")",
            "host-path = \"${KERNEL}\"",
            "host-path = \"${ROOTFS}\"",
            "task upgrade.b {",
        ] {
            assert!(conf.contains(want), "{want:?} missing:\n{conf}");
        }
        assert!(
            !conf.contains("206848") && !conf.contains("${CMDLINE}"),
            "{conf}"
        );
    }
}
