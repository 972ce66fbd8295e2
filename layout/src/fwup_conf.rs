//! A fwup.conf for an A/B layout, rendered from its resolved [`Plan`]: the MBR, the U-Boot env,
//! the kernel and root filesystem resources, the `complete` task (the env the layout writes) and
//! Nerves-style `upgrade.a`/`upgrade.b` tasks (raw writes to the other slot, with the running
//! slot as delta source, then the slot's metadata and `nerves_fw_active`). Every offset comes
//! from the plan, so a .fw made from it lands exactly where `imgtool build` puts things.
//!
//! Config language: <https://github.com/fwup-home/fwup#configuration-file-format>. Task
//! structure and variable names follow the Nerves qemu aarch64 system's fwup.conf
//! (<https://github.com/nerves-project/nerves_system_qemu_aarch64/blob/main/fwup.conf>).
//!
//! The plan must have an MBR, a U-Boot env, and regions named `kernel_a`, `kernel_b`,
//! `rootfs_a`, `rootfs_b` (the built-in `nerves-qemu-aarch64` has them).

use std::fmt::Write as _;

use crate::error::{Error, Result};
use crate::plan::{DiskId, PartitionType, Plan, Region, TableKind};
use crate::units::BLOCK;

/// Where the resources come from when the .fw is created. fwup expands `${NAME}` from the
/// environment, so `${KERNEL}` is a fine value.
#[derive(Debug, Clone)]
pub struct Resources {
    pub kernel: String,
    pub rootfs: String,
}

/// Env variables whose value is only known when the .fw is applied: fwup expands `\${...}`
/// then (Nerves' provisioning and its UUID bookkeeping).
const APPLY_TIME: &[(&str, &str)] = &[
    ("nerves_serial_number", "NERVES_SERIAL_NUMBER"),
    ("a.nerves_fw_uuid", "FWUP_META_UUID"),
    ("b.nerves_fw_uuid", "FWUP_META_UUID"),
];

/// `meta-*` keys and the slot-A env variables they mirror.
const META: &[(&str, &str)] = &[
    ("meta-product", "a.nerves_fw_product"),
    ("meta-description", "a.nerves_fw_description"),
    ("meta-version", "a.nerves_fw_version"),
    ("meta-platform", "a.nerves_fw_platform"),
    ("meta-architecture", "a.nerves_fw_architecture"),
    ("meta-author", "a.nerves_fw_author"),
    ("meta-vcs-identifier", "a.nerves_fw_vcs_identifier"),
    ("meta-misc", "a.nerves_fw_misc"),
];

/// Slot metadata an interrupted upgrade must not leave behind (cleared first, set last).
const VOLATILE: &[&str] = &[
    "nerves_fw_version",
    "nerves_fw_platform",
    "nerves_fw_architecture",
    "nerves_fw_uuid",
];

struct Slot<'a> {
    name: &'static str,
    kernel: &'a Region,
    rootfs: &'a Region,
}

fn err(plan: &Plan, msg: impl Into<String>) -> Error {
    Error::FwupConf {
        layout: plan.name.clone(),
        msg: msg.into(),
    }
}

/// A fwup string literal. `$` is refused: fwup would expand it.
fn quote(plan: &Plan, what: &str, v: &str) -> Result<String> {
    if v.contains('$') {
        return Err(err(
            plan,
            format!("{what} = {v:?}: a `$` would be expanded by fwup; remove it"),
        ));
    }
    let mut s = String::from("\"");
    for c in v.chars() {
        match c {
            '"' | '\\' => {
                s.push('\\');
                s.push(c);
            }
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s.push('"');
    Ok(s)
}

fn lba(r: &Region) -> u64 {
    r.offset / BLOCK
}

fn blocks(r: &Region) -> u64 {
    r.size / BLOCK
}

/// Render the fwup.conf for `plan`.
pub fn render(plan: &Plan, res: &Resources) -> Result<String> {
    let region = |name: &str| {
        plan.regions.iter().find(|r| r.name == name).ok_or_else(|| {
            err(
                plan,
                format!(
                    "no region `{name}`: the fwup.conf needs regions kernel_a, kernel_b, \
                         rootfs_a and rootfs_b"
                ),
            )
        })
    };
    let a = Slot {
        name: "a",
        kernel: region("kernel_a")?,
        rootfs: region("rootfs_a")?,
    };
    let b = Slot {
        name: "b",
        kernel: region("kernel_b")?,
        rootfs: region("rootfs_b")?,
    };
    let table = plan
        .table
        .as_ref()
        .ok_or_else(|| err(plan, "the layout has no partition table"))?;
    if table.kind != TableKind::Mbr {
        return Err(err(
            plan,
            "only MBR layouts are rendered (fwup's `gpt` blocks are not generated yet)",
        ));
    }
    let env = plan
        .env
        .as_ref()
        .ok_or_else(|| err(plan, "the layout has no U-Boot env (`fill: uboot-env`)"))?;
    let platform = env.get("a.nerves_fw_platform");
    let arch = env.get("a.nerves_fw_architecture");
    let (Some(platform), Some(arch)) = (platform, arch) else {
        return Err(err(
            plan,
            "the env needs a.nerves_fw_platform and a.nerves_fw_architecture: the upgrade tasks \
             check them",
        ));
    };
    let platform = quote(plan, "a.nerves_fw_platform", platform)?;
    let arch = quote(plan, "a.nerves_fw_architecture", arch)?;

    let mut o = String::new();
    let w = &mut o;
    let _ = writeln!(
        w,
        "# Generated by imgtool from layout `{}`: offsets are the layout's (512-byte blocks).",
        plan.name
    );
    let _ = writeln!(w, "require-fwup-version = \"1.0.0\"\n");
    for (key, var) in META {
        if let Some(v) = env.get(var) {
            let _ = writeln!(w, "{key} = {}", quote(plan, var, v)?);
        }
    }

    let _ = writeln!(
        w,
        "\nfile-resource Image {{\n    host-path = {}\n    assert-size-lte = {}\n}}",
        quote_path(&res.kernel),
        blocks(a.kernel).min(blocks(b.kernel))
    );
    let _ = writeln!(
        w,
        "file-resource rootfs.img {{\n    host-path = {}\n    assert-size-lte = {}\n}}",
        quote_path(&res.rootfs),
        blocks(a.rootfs).min(blocks(b.rootfs))
    );

    let _ = writeln!(w, "\nmbr mbr {{");
    if let DiskId::Mbr(sig) = table.disk_id {
        if sig != 0 {
            let _ = writeln!(w, "    signature = 0x{sig:08x}");
        }
    }
    // An env away from LBA 16 is found through its locator record in the boot-code area,
    // which the MBR write would otherwise clear.
    let loc = env.locator().map_err(|m| err(plan, m))?;
    if !loc.is_default() {
        let mut code = [0u8; 440];
        let rec = loc.encode();
        let at = uboot_env::locator::OFFSET;
        code[at..at + rec.len()].copy_from_slice(&rec);
        let hex = common::hex::encode(&code);
        let _ = writeln!(w, "    bootstrap-code = \"{hex}\"");
    }
    for p in &table.partitions {
        let PartitionType::Mbr(kind) = p.kind else {
            unreachable!("an MBR plan has MBR types")
        };
        let _ = writeln!(w, "    partition {} {{", p.number - 1);
        let _ = writeln!(w, "        block-offset = {}", p.first_lba);
        let _ = writeln!(w, "        block-count = {}", p.blocks);
        let _ = writeln!(w, "        type = 0x{kind:02x}");
        if p.boot {
            let _ = writeln!(w, "        boot = true");
        }
        if p.expand {
            let _ = writeln!(w, "        expand = true");
        }
        let _ = writeln!(w, "    }}");
    }
    let _ = writeln!(w, "}}");

    let _ = writeln!(
        w,
        "\nuboot-environment uboot-env {{\n    block-offset = {}\n    block-count = {}",
        env.offset / BLOCK,
        env.size / BLOCK
    );
    if let Some(r) = env.redundant_offset {
        let _ = writeln!(w, "    block-offset-redund = {}", r / BLOCK);
    }
    let _ = writeln!(w, "}}");

    // complete: the whole disk, as `imgtool build` writes it (less the f2fs pre-format).
    let _ = writeln!(
        w,
        "\ntask complete {{\n    require-unmounted-destination = true\n    on-init {{\n        mbr_write(mbr)\n        uboot_clearenv(uboot-env)"
    );
    for (k, v) in &env.vars {
        let _ = writeln!(w, "        {}", setenv(plan, k, v)?);
    }
    let _ = writeln!(
        w,
        "    }}\n    on-resource Image {{ raw_write({}) }}\n    on-resource rootfs.img {{ raw_write({}) }}\n    on-finish {{",
        lba(a.kernel),
        lba(a.rootfs)
    );
    // As Nerves does: nothing in slot B may pass for a filesystem, and the application
    // partition's end is invalidated so the device formats it on first boot.
    let _ = writeln!(
        w,
        "        raw_memset({}, {}, 0xff)",
        lba(b.rootfs),
        blocks(b.rootfs).min(256)
    );
    if let Some(app) = table.partitions.iter().find(|p| p.expand) {
        if app.blocks >= 256 {
            let _ = writeln!(
                w,
                "        raw_memset({}, 256, 0xff)",
                app.first_lba + app.blocks - 256
            );
        }
    }
    let _ = writeln!(w, "    }}\n}}");

    for (to, from) in [(&a, &b), (&b, &a)] {
        upgrade(w, plan, env, to, from, &platform, &arch)?;
    }

    let _ = writeln!(
        w,
        "\ntask upgrade.unvalidated {{\n    require-uboot-variable(uboot-env, \"upgrade_available\", \"1\")\n    on-init {{ error(\"Please validate the running firmware before upgrading it again.\") }}\n}}"
    );
    let _ = writeln!(
        w,
        "\ntask upgrade.unexpected {{\n    require-uboot-variable(uboot-env, \"a.nerves_fw_platform\", {platform})\n    require-uboot-variable(uboot-env, \"a.nerves_fw_architecture\", {arch})\n    on-init {{ error(\"Neither slot A nor slot B is active on this media.\") }}\n}}"
    );
    let wrong = format!(
        "error(\"Expecting platform={} and architecture={}\")",
        platform.trim_matches('"'),
        arch.trim_matches('"')
    );
    let _ = writeln!(
        w,
        "\ntask upgrade.wrongplatform {{\n    on-init {{ {wrong} }}\n}}"
    );
    let _ = write!(
        w,
        "\ntask provision {{\n    require-uboot-variable(uboot-env, \"a.nerves_fw_platform\", {platform})\n    require-uboot-variable(uboot-env, \"a.nerves_fw_architecture\", {arch})\n    on-init {{\n"
    );
    if let Some(v) = env.get("nerves_serial_number") {
        let _ = writeln!(w, "        {}", setenv(plan, "nerves_serial_number", v)?);
    }
    let _ = writeln!(w, "    }}\n}}");
    let _ = writeln!(
        w,
        "\ntask provision.wrongplatform {{\n    on-init {{ {wrong} }}\n}}"
    );
    Ok(o)
}

/// A host path may name environment variables (`${KERNEL}`): it is quoted but not checked.
fn quote_path(p: &str) -> String {
    format!("\"{}\"", p.replace('\\', "\\\\").replace('"', "\\\""))
}

fn setenv(plan: &Plan, name: &str, value: &str) -> Result<String> {
    let v = match APPLY_TIME.iter().find(|(n, _)| *n == name) {
        Some((_, var)) => format!("\"\\${{{var}}}\""),
        None => quote(plan, name, value)?,
    };
    Ok(format!(
        "uboot_setenv(uboot-env, {}, {v})",
        quote(plan, "a variable name", name)?
    ))
}

fn upgrade(
    w: &mut String,
    plan: &Plan,
    env: &crate::plan::EnvPlan,
    to: &Slot,
    from: &Slot,
    platform: &str,
    arch: &str,
) -> Result<()> {
    let (t, f) = (to.name, from.name);
    let _ = writeln!(w, "\ntask upgrade.{t} {{");
    let _ = writeln!(
        w,
        "    require-uboot-variable(uboot-env, \"nerves_fw_active\", \"{f}\")"
    );
    // Only a validated running slot is a safe place to fail back to.
    let _ = writeln!(
        w,
        "    require-uboot-variable(uboot-env, \"upgrade_available\", \"0\")"
    );
    let _ = writeln!(
        w,
        "    require-uboot-variable(uboot-env, \"{f}.nerves_fw_platform\", {platform})"
    );
    let _ = writeln!(
        w,
        "    require-uboot-variable(uboot-env, \"{f}.nerves_fw_architecture\", {arch})"
    );
    let _ = writeln!(
        w,
        "    on-init {{\n        info(\"Upgrading partition {}\")",
        t.to_uppercase()
    );
    for v in VOLATILE {
        let _ = writeln!(w, "        uboot_unsetenv(uboot-env, \"{t}.{v}\")");
    }
    let _ = writeln!(
        w,
        "        trim({}, {})\n    }}",
        lba(to.rootfs),
        blocks(to.rootfs)
    );
    for (res, dst, src) in [
        ("Image", to.kernel, from.kernel),
        ("rootfs.img", to.rootfs, from.rootfs),
    ] {
        let _ = writeln!(
            w,
            "    on-resource {res} {{\n        delta-source-raw-offset = {}\n        delta-source-raw-count = {}\n        raw_write({})\n    }}",
            lba(src),
            blocks(src),
            lba(dst)
        );
    }
    let _ = writeln!(w, "    on-finish {{");
    // The slot's variables: its own where the layout sets them (kernel_lba, kernel_args),
    // else slot A's (the metadata the complete task writes for A only).
    let mut names: Vec<&str> = Vec::new();
    for (k, _) in &env.vars {
        let suffix = k.strip_prefix("a.").or_else(|| k.strip_prefix("b."));
        if let Some(s) = suffix {
            if !names.contains(&s) {
                names.push(s);
            }
        }
    }
    for s in names {
        let own = format!("{t}.{s}");
        let v = env
            .get(&own)
            .or_else(|| env.get(&format!("a.{s}")))
            .or_else(|| env.get(&format!("b.{s}")))
            .unwrap_or_default();
        let _ = writeln!(w, "        {}", setenv(plan, &own, v)?);
    }
    let _ = writeln!(
        w,
        "        uboot_setenv(uboot-env, \"nerves_fw_active\", \"{t}\")\n        uboot_setenv(uboot-env, \"upgrade_available\", \"1\")\n        uboot_setenv(uboot-env, \"bootcount\", \"0\")\n    }}\n    on-error {{\n    }}\n}}"
    );
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::Context;

    fn plan(defs: &[(&str, &str)]) -> Plan {
        let overrides = defs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        crate::plan_from("nerves-qemu-aarch64", Context::new(overrides)).unwrap()
    }

    fn res() -> Resources {
        Resources {
            kernel: "${KERNEL}".into(),
            rootfs: "${ROOTFS}".into(),
        }
    }

    #[test]
    fn nerves_offsets_env_and_tasks_come_from_the_plan() {
        let c = render(&plan(&[("version", "2.0.0"), ("cmdline", "quiet")]), &res()).unwrap();
        for want in [
            "meta-version = \"2.0.0\"",
            "meta-platform = \"qemu_aarch64\"",
            "meta-architecture = \"arm\"",
            "block-offset = 205072\n        block-count = 102400\n        type = 0x83\n",
            "block-offset = 307472\n",
            "block-offset = 409872\n        block-count = 307200\n        type = 0x83\n        expand = true\n",
            "uboot-environment uboot-env {\n    block-offset = 16\n    block-count = 256\n}",
            "uboot_setenv(uboot-env, \"a.kernel_lba\", \"272\")",
            "uboot_setenv(uboot-env, \"b.kernel_lba\", \"102672\")",
            "uboot_setenv(uboot-env, \"a.kernel_args\", \"root=/dev/vda1 rootfstype=squashfs quiet\")",
            "uboot_setenv(uboot-env, \"nerves_serial_number\", \"\\${NERVES_SERIAL_NUMBER}\")",
            "uboot_setenv(uboot-env, \"a.nerves_fw_uuid\", \"\\${FWUP_META_UUID}\")",
            "on-resource Image { raw_write(272) }",
            "on-resource rootfs.img { raw_write(205072) }",
            "raw_memset(307472, 256, 0xff)",
            "raw_memset(716816, 256, 0xff)",
            "task upgrade.b {\n    require-uboot-variable(uboot-env, \"nerves_fw_active\", \"a\")",
            "require-uboot-variable(uboot-env, \"a.nerves_fw_architecture\", \"arm\")",
            "trim(307472, 102400)",
            "delta-source-raw-offset = 272\n        delta-source-raw-count = 102400\n        raw_write(102672)",
            "delta-source-raw-offset = 205072\n        delta-source-raw-count = 102400\n        raw_write(307472)",
            "uboot_setenv(uboot-env, \"b.kernel_lba\", \"102672\")\n",
            "uboot_setenv(uboot-env, \"b.nerves_fw_platform\", \"qemu_aarch64\")",
            "uboot_setenv(uboot-env, \"b.nerves_fw_uuid\", \"\\${FWUP_META_UUID}\")",
            "uboot_setenv(uboot-env, \"nerves_fw_active\", \"b\")\n        uboot_setenv(uboot-env, \"upgrade_available\", \"1\")",
            "task upgrade.a {\n    require-uboot-variable(uboot-env, \"nerves_fw_active\", \"b\")",
            "raw_write(205072)\n    }",
            "Expecting platform=qemu_aarch64 and architecture=arm",
        ] {
            assert!(c.contains(want), "{want:?} missing from:\n{c}");
        }
        // No stale 1 MiB-aligned offsets.
        for gone in ["206848", "309248", "411648", "boot = true"] {
            assert!(!c.contains(gone), "{gone} in:\n{c}");
        }
    }

    #[test]
    fn a_moved_env_and_its_redundant_copy_follow_the_plan() {
        let dir = tempfile::tempdir().unwrap();
        let p = plan_yaml(dir.path(), &layout_with_env_at(4096, Some(4112))).unwrap();
        let c = render(&p, &res()).unwrap();
        assert!(
            c.contains(
                "block-offset = 4096\n    block-count = 16\n    block-offset-redund = 4112\n"
            ),
            "{c}"
        );
        // The env locator rides in the MBR's boot code ("imgtENV1", then the offsets).
        let hex = common::hex::encode(&p.env.as_ref().unwrap().locator().unwrap().encode());
        assert!(hex.starts_with("696d6774454e5631"));
        assert!(c.contains(&format!("    bootstrap-code = \"{hex}")), "{c}");
        let line = c.lines().find(|l| l.contains("bootstrap-code")).unwrap();
        assert_eq!(line.trim().len(), "bootstrap-code = \"\"".len() + 880);
    }

    #[test]
    fn what_cannot_be_rendered_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let bare = "name: bare\ntable: { type: mbr }\nregions:\n  - name: x\n    offset: 2048 blocks\n    size: 8 blocks\n";
        let p = plan_yaml(dir.path(), bare).unwrap();
        let e = render(&p, &res()).unwrap_err().to_string();
        assert!(e.contains("no region `kernel_a`"), "{e}");
        let e = render(&plan(&[("product", "a$b")]), &res())
            .unwrap_err()
            .to_string();
        assert!(e.contains("a.nerves_fw_product") && e.contains('$'), "{e}");
    }

    /// The plan of layout text `yaml`, written as `dir/l.yaml`.
    pub(crate) fn plan_yaml(dir: &std::path::Path, yaml: &str) -> crate::Result<Plan> {
        let path = dir.join("l.yaml");
        std::fs::write(&path, yaml).unwrap();
        let mut ctx = Context::new(Default::default());
        ctx.base_dir = dir.into();
        crate::plan_from(path.to_str().unwrap(), ctx)
    }

    /// A small A/B layout with its env at `env` (blocks) and an optional redundant copy.
    pub(crate) fn layout_with_env_at(env: u64, redundant: Option<u64>) -> String {
        let r = redundant
            .map(|r| format!("\n        redundant-offset: {r} blocks"))
            .unwrap_or_default();
        format!(
            "name: moved-env\ntable: {{ type: mbr }}\nregions:\n  - name: env\n    offset: {env} blocks\n    size: 16 blocks\n    fill:\n      uboot-env:{r}\n        vars:\n          a.nerves_fw_platform: p\n          a.nerves_fw_architecture: arm\n          a.kernel_lba: ${{lba:kernel_a}}\n          b.kernel_lba: ${{lba:kernel_b}}\n  - name: kernel_a\n    offset: 8192 blocks\n    size: 2048 blocks\n  - name: kernel_b\n    size: 2048 blocks\n  - name: rootfs_a\n    size: 2048 blocks\n    partition: {{ number: 1, type: 0x83 }}\n  - name: rootfs_b\n    size: 2048 blocks\n    partition: {{ number: 2, type: 0x83 }}\n"
        )
    }
}
