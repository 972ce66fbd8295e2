//! `imgtool fw tune`: apply a memory profile to a firmware imgtool did not build, as far as the
//! firmware allows, and say what could not be applied.
//!
//! - BEAM flags and mode go into the release's vm.args (erlexec reads it through `-args_file`).
//! - sysctls, sysfs knobs, after-ready knobs and zram go to imgtool's helper (the guest init
//!   binary started as /usr/sbin/imgtool-helper), which erlinit runs through `--pre-run-exec`;
//!   the sysctls also go into /etc/sysctl.conf, which nerves_runtime applies again at start.
//! - kernel arguments go into the `*kernel_args` values the firmware's tasks write to the U-Boot
//!   env, when its fwup.conf has them.
//! - the root filesystem is written again with its own compressor and block size; meta.conf's
//!   length and hash follow; a signed input is signed again with the given key, or its
//!   signature is dropped with a warning.
//!
//! Kernel config and qemu settings are not part of a firmware: the report says so.

use std::collections::BTreeMap;
use std::path::Path;

use rootfs::initconf::{InitConfig, Program, HELPER_CONFIG_PATH, HELPER_CONSOLE, HELPER_PATH};
use rootfs::profile::{BeamProfile, Profile};
use serde::Serialize;
use squashfs::image::{Image, Put};

use crate::inspect::{load, pid1, release_of, rootfs_err, rootfs_resource};
use crate::release::{self, ReleaseError, ERLINIT_CONFIG};
use crate::{Error, Result};

/// The marker line above what tune adds to a text file (a second tune replaces the block).
const MARK: &str = "imgtool fw tune";
/// After-ready knobs: this long after the BEAM process appears.
const READY_AFTER_MS: u64 = 5000;

pub struct TuneOptions {
    /// A built-in profile name or a .yaml path.
    pub profile: String,
    /// fwup's 64-byte ed25519 private key, to sign the tuned firmware.
    pub private_key: Option<[u8; 64]>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Item {
    pub what: String,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct TuneReport {
    pub input: String,
    pub output: String,
    pub profile: String,
    pub applied: Vec<Item>,
    pub not_applied: Vec<Item>,
    pub warnings: Vec<String>,
    pub rootfs_bytes_before: u64,
    pub rootfs_bytes_after: u64,
    pub signed: bool,
}

impl TuneReport {
    pub fn render(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{} -> {} (profile {})",
            self.input, self.output, self.profile
        );
        let _ = writeln!(s, "applied:");
        for i in &self.applied {
            let _ = writeln!(s, "  {}: {}", i.what, i.detail);
        }
        if !self.not_applied.is_empty() {
            let _ = writeln!(s, "not applied:");
            for i in &self.not_applied {
                let _ = writeln!(s, "  {}: {}", i.what, i.detail);
            }
        }
        for w in &self.warnings {
            let _ = writeln!(s, "warning: {w}");
        }
        let _ = writeln!(
            s,
            "rootfs: {} -> {} bytes{}",
            self.rootfs_bytes_before,
            self.rootfs_bytes_after,
            if self.signed { "; signed" } else { "" }
        );
        s
    }
}

fn item(what: &str, detail: impl Into<String>) -> Item {
    Item {
        what: what.into(),
        detail: detail.into(),
    }
}

/// Drop a block an earlier tune appended (from its marker line to the end).
fn without_block(text: &str, comment: &str) -> String {
    let marker = format!("{comment} {MARK}");
    let mut out = String::new();
    for l in text.lines() {
        if l.starts_with(&marker) {
            break;
        }
        out.push_str(l);
        out.push('\n');
    }
    out
}

fn first_word(l: &str) -> &str {
    l.split('#')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .next()
        .unwrap_or("")
}

/// vm.args with the profile's emulator flags, mode and extra arguments: lines setting the
/// same flag are removed, the profile's lines appended under a marker.
pub fn tune_vm_args(old: &str, beam: &BeamProfile, profile: &str) -> (String, Vec<String>) {
    let mut lines: Vec<String> = beam
        .flags
        .iter()
        .map(|(k, v)| {
            if v.is_empty() {
                k.clone()
            } else {
                format!("{k} {v}")
            }
        })
        .collect();
    if !beam.mode.is_empty() {
        lines.push(format!("-mode {}", beam.mode));
    }
    if !beam.args.is_empty() {
        lines.push(beam.args.join(" "));
    }
    let keys: Vec<&str> = lines.iter().map(|l| first_word(l)).collect();
    let mut out = String::new();
    for l in without_block(old, "##").lines() {
        if !keys.contains(&first_word(l)) || first_word(l).is_empty() {
            out.push_str(l);
            out.push('\n');
        }
    }
    if lines.is_empty() {
        return (out, lines);
    }
    out.push_str(&format!("## {MARK}: memory profile {profile}\n"));
    for l in &lines {
        out.push_str(l);
        out.push('\n');
    }
    (out, lines)
}

/// sysctl.conf with the profile's values: lines for the same keys replaced.
pub fn tune_sysctl_conf(old: &str, sysctl: &BTreeMap<String, String>, profile: &str) -> String {
    let mut out = String::new();
    for l in without_block(old, "#").lines() {
        let key = l.split('=').next().unwrap_or("").trim();
        if l.trim_start().starts_with('#') || !sysctl.contains_key(key) {
            out.push_str(l);
            out.push('\n');
        }
    }
    out.push_str(&format!("# {MARK}: memory profile {profile}\n"));
    for (k, v) in sysctl {
        out.push_str(&format!("{k} = {v}\n"));
    }
    out
}

/// erlinit.config running the helper as its pre-run program; an earlier `--pre-run-exec`
/// (erlinit takes one) is commented out and returned, for the helper to chain to.
pub fn tune_erlinit_config(old: &str) -> (String, Option<String>) {
    let mut out = String::new();
    let mut chained = None;
    for l in without_block(old, "#").lines() {
        let w = release::split_line(l);
        if w.first().map(String::as_str) == Some("--pre-run-exec") {
            let cmd = w[1..].join(" ");
            if cmd != HELPER_PATH {
                out.push_str(&format!(
                    "# {MARK}: run by {HELPER_PATH} after its work:\n# {l}\n"
                ));
                chained = Some(cmd);
            }
            continue;
        }
        out.push_str(l);
        out.push('\n');
    }
    out.push_str(&format!(
        "# {MARK}: memory profile knobs, zram and the measurement console ({HELPER_CONSOLE})\n--pre-run-exec {HELPER_PATH}\n"
    ));
    (out, chained)
}

/// Append the profile's kernel arguments whose key the value lacks.
pub fn merge_cmdline(old: &str, add: &str) -> Option<String> {
    let key = |w: &str| w.split('=').next().unwrap_or(w).to_string();
    let have: Vec<String> = old.split_whitespace().map(key).collect();
    let extra: Vec<&str> = add
        .split_whitespace()
        .filter(|w| !have.contains(&key(w)))
        .collect();
    if extra.is_empty() {
        return None;
    }
    Some(
        format!("{} {}", old.trim_end(), extra.join(" "))
            .trim()
            .to_string(),
    )
}

fn helper_config(p: &Profile, chained: Option<&str>) -> InitConfig {
    let mut c = InitConfig {
        helper: true,
        ready_after_ms: Some(READY_AFTER_MS),
        ..Default::default()
    };
    rootfs::assemble::profile_knobs(&mut c, p);
    if let Some(cmd) = chained {
        let mut w = cmd.split_whitespace().map(str::to_string);
        c.program = Program {
            exec: w.next().unwrap_or_default(),
            args: w.collect(),
            ..Default::default()
        };
    }
    c
}

/// Tune `input` into `output` (never the same file). Nothing is written unless every step
/// succeeded; the output appears by rename.
pub fn tune(input: &Path, output: &Path, o: &TuneOptions) -> Result<TuneReport> {
    let file = input.display().to_string();
    if let (Ok(a), Ok(b)) = (input.canonicalize(), output.canonicalize()) {
        if a == b {
            return Err(Error::Rootfs {
                file,
                why: "the output is the input: give another -o (fw tune never changes its input)"
                    .into(),
            });
        }
    }
    let profile = rootfs::profile::load(&o.profile)?;
    let mut a = load(input)?;
    let Some(rootfs_name) = rootfs_resource(&a) else {
        return Err(Error::NoRootfs {
            file,
            resources: a.resource_names().join(", "),
        });
    };
    let before = a.resource(&rootfs_name).unwrap_or(&[]).to_vec();
    let img = Image::open(&before).map_err(|e| rootfs_err(&file, e))?;
    let init = pid1(&img);
    let erlinit_text =
        release::read_text(&img, ERLINIT_CONFIG).map_err(|e| rootfs_err(&file, e))?;
    let (erlinit_text, "erlinit") = (erlinit_text.unwrap_or_default(), init.kind.as_str()) else {
        return Err(Error::NoErlinit {
            file,
            pid1: format!(
                "{} ({})",
                init.kind,
                init.path.as_deref().unwrap_or("no /sbin/init")
            ),
        });
    };
    let opts = release::erlinit_options(&erlinit_text);
    let rel = release_of(&img, &opts).map_err(|e| match e {
        ReleaseError::Missing(dir) => Error::NoRelease {
            file: file.clone(),
            dir,
        },
        ReleaseError::NotBeam { dir, why } => Error::NotBeam {
            file: file.clone(),
            dir,
            why,
        },
        ReleaseError::Read(why) => Error::Rootfs {
            file: file.clone(),
            why,
        },
    })?;

    let mut applied = Vec::new();
    let mut not_applied = Vec::new();
    let mut warnings = Vec::new();
    let mut puts = Vec::new();

    // BEAM flags.
    let vm_path = rel
        .vm_args_path
        .clone()
        .unwrap_or_else(|| format!("{}/vm.args", rel.dir));
    let (vm_args, flags) = tune_vm_args(
        rel.vm_args.as_deref().unwrap_or(""),
        &profile.beam,
        &profile.name,
    );
    if !flags.is_empty() {
        applied.push(item(
            "BEAM flags",
            format!("{} ({vm_path})", flags.join("  ")),
        ));
        puts.push(Put {
            path: vm_path,
            data: vm_args.into_bytes(),
            mode: 0o644,
        });
    }

    // Kernel knobs and zram, through the helper.
    let (erlinit_new, chained) = tune_erlinit_config(&erlinit_text);
    let helper = helper_config(&profile, chained.as_deref());
    if !profile.sysctl.is_empty() {
        let list: Vec<String> = profile
            .sysctl
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        applied.push(item(
            "sysctls",
            format!(
                "{} (the helper at boot; /etc/sysctl.conf for nerves_runtime)",
                list.join(" ")
            ),
        ));
        let old = release::read_text(&img, "/etc/sysctl.conf")
            .map_err(|e| rootfs_err(&file, e))?
            .unwrap_or_default();
        puts.push(Put {
            path: "/etc/sysctl.conf".into(),
            data: tune_sysctl_conf(&old, &profile.sysctl, &profile.name).into_bytes(),
            mode: 0o644,
        });
    }
    if !profile.sysfs.is_empty() {
        let list: Vec<String> = profile
            .sysfs
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        applied.push(item(
            "sysfs knobs",
            format!("{} (the helper at boot)", list.join(" ")),
        ));
    }
    if !profile.after_ready.is_empty() {
        let list: Vec<String> = profile
            .after_ready
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        applied.push(item(
            "after-ready knobs",
            format!(
                "{} ({} ms after beam.smp starts: the helper cannot see the release's ready line)",
                list.join(" "),
                READY_AFTER_MS
            ),
        ));
    }
    let kernel = a
        .resource_names()
        .into_iter()
        .filter_map(|n| a.resource(&n).map(|d| (n, d)))
        .find(|(_, d)| d.get(0x38..0x3c) == Some(b"ARM\x64"));
    if let Some(z) = &profile.zram {
        applied.push(item(
            "zram",
            format!(
                "{} MiB swap, {}, priority {} (the helper at boot)",
                z.size_bytes >> 20,
                z.algorithm,
                z.priority
            ),
        ));
        if let Some((name, d)) = &kernel {
            if !d.windows(4).any(|w| w == b"zram") {
                warnings.push(format!(
                    "the kernel ({name}) has no zram driver that imgtool can see: zram will not start"
                ));
            }
        }
    }
    puts.push(Put {
        path: HELPER_PATH.into(),
        data: rootfs::init_binary()?.to_vec(),
        mode: 0o755,
    });
    puts.push(Put {
        path: HELPER_CONFIG_PATH.into(),
        data: helper.render().into_bytes(),
        mode: 0o644,
    });
    puts.push(Put {
        path: ERLINIT_CONFIG.into(),
        data: erlinit_new.into_bytes(),
        mode: 0o644,
    });
    applied.push(item(
        "helper",
        format!(
            "{HELPER_PATH} via --pre-run-exec in {ERLINIT_CONFIG}{}; it answers memory snapshots on {HELPER_CONSOLE}",
            chained
                .as_deref()
                .map(|c| format!(" (then runs the firmware's own pre-run program, {c})"))
                .unwrap_or_default()
        ),
    ));

    // Kernel arguments, where the firmware's tasks write them.
    let cmdline = profile.kernel.cmdline.trim().to_string();
    if !cmdline.is_empty() {
        let changed = a.edit_setenvs(&|name, v| {
            if name.ends_with("kernel_args") {
                merge_cmdline(v, &cmdline)
            } else {
                None
            }
        });
        let vars: Vec<String> = a
            .setenvs()
            .into_iter()
            .filter(|s| s.name.ends_with("kernel_args"))
            .map(|s| format!("{}={:?} (task {})", s.name, s.value, s.task))
            .collect();
        if vars.is_empty() {
            not_applied.push(item(
                "kernel arguments",
                format!("`{cmdline}`: the firmware's fwup.conf writes no *kernel_args variable to the U-Boot env"),
            ));
        } else if changed == 0 {
            applied.push(item(
                "kernel arguments",
                format!("`{cmdline}` already there"),
            ));
        } else {
            applied.push(item("kernel arguments", vars.join("; ")));
        }
    }
    let mut kconf = profile.kernel.fragments.clone();
    if let Some(c) = &profile.kernel.config {
        kconf.extend(
            c.lines()
                .filter(|l| !l.trim().is_empty())
                .map(str::to_string),
        );
    }
    if !kconf.is_empty() {
        not_applied.push(item(
            "kernel config",
            format!(
                "{}: the firmware brings its own kernel; one built with these fragments has them (imgtool kernel build --fragment)",
                kconf.join(", ")
            ),
        ));
    }
    not_applied.push(item(
        "qemu settings",
        format!(
            "{}: not part of a firmware; `imgtool experiment` and `imgtool template --profile {}` apply them at run time",
            profile.qemu.args().join(" "),
            profile.name
        ),
    ));
    if profile.data.is_some() {
        not_applied.push(item(
            "data partition",
            "mounted by erlinit's -m line in /etc/erlinit.config, which stays the firmware's",
        ));
    }

    let after = img.rewrite(&puts).map_err(|e| rootfs_err(&file, e))?;
    let after_len = after.len() as u64;
    a.set_resource(&rootfs_name, after)
        .map_err(|e| rootfs_err(&file, e))?;
    if a.signed && o.private_key.is_none() {
        warnings.push(
            "the input was signed: its signature is dropped (give --private-key to sign the tuned firmware)".into(),
        );
    }
    a.write(output, o.private_key.as_ref(), 9)
        .map_err(|e| Error::Io(e.to_string()))?;
    Ok(TuneReport {
        input: file,
        output: output.display().to_string(),
        profile: profile.name.clone(),
        applied,
        not_applied,
        warnings,
        rootfs_bytes_before: before.len() as u64,
        rootfs_bytes_after: after_len,
        signed: o.private_key.is_some(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn beam() -> BeamProfile {
        BeamProfile {
            flags: [
                ("+S".to_string(), "1:1".to_string()),
                ("+sbwt".into(), "none".into()),
            ]
            .into(),
            mode: "interactive".into(),
            args: vec![],
        }
    }

    #[test]
    fn vm_args_replace_flags_and_retune_replaces_the_block() {
        let old = "## flags\n-mode embedded\n+sbwt very_long\n+C multi_time_warp\n";
        let (once, lines) = tune_vm_args(old, &beam(), "minimal");
        assert_eq!(lines, vec!["+S 1:1", "+sbwt none", "-mode interactive"]);
        assert!(
            !once.contains("-mode embedded") && !once.contains("very_long"),
            "{once}"
        );
        assert!(once
            .contains("+C multi_time_warp\n## imgtool fw tune: memory profile minimal\n+S 1:1\n"));
        let (twice, _) = tune_vm_args(&once, &beam(), "minimal");
        assert_eq!(once, twice, "tuning twice gives the same file");
    }

    #[test]
    fn sysctl_conf_keeps_other_keys() {
        let old = "# c\nnet.ipv4.ping_group_range = 0 2147483647\nvm.swappiness=1\n";
        let m: BTreeMap<String, String> = [("vm.swappiness".to_string(), "10".to_string())].into();
        let t = tune_sysctl_conf(old, &m, "p");
        assert!(t.contains("net.ipv4.ping_group_range = 0 2147483647\n"));
        assert!(!t.contains("vm.swappiness=1"), "{t}");
        assert!(t.ends_with("# imgtool fw tune: memory profile p\nvm.swappiness = 10\n"));
        assert_eq!(tune_sysctl_conf(&t, &m, "p"), t);
    }

    #[test]
    fn erlinit_config_chains_an_existing_pre_run_program() {
        let (t, chained) = tune_erlinit_config("-c ttyAMA0\n--pre-run-exec /usr/bin/rngd -q\n");
        assert_eq!(chained.as_deref(), Some("/usr/bin/rngd -q"));
        assert!(t.contains("# --pre-run-exec /usr/bin/rngd -q\n"), "{t}");
        assert!(t.ends_with("--pre-run-exec /usr/sbin/imgtool-helper\n"));
        let (again, chained2) = tune_erlinit_config(&t);
        assert_eq!(chained2, None);
        assert_eq!(
            again
                .matches("--pre-run-exec /usr/sbin/imgtool-helper")
                .count(),
            1
        );
    }

    #[test]
    fn cmdline_merge_adds_missing_keys_only() {
        assert_eq!(
            merge_cmdline(
                "root=/dev/vda1 rootfstype=squashfs",
                "console=ttyAMA0 root=/dev/vda9 quiet"
            )
            .as_deref(),
            Some("root=/dev/vda1 rootfstype=squashfs console=ttyAMA0 quiet")
        );
        assert_eq!(merge_cmdline("quiet", "quiet"), None);
    }
}
