//! The bodies of the `layout_yaml` and `inspect_probes` fuzz targets (fuzz/fuzz_targets/), also
//! replayed on every kept crash input by tests/fuzz_regressions.rs: one copy, called by both.
//!
//! `layout_yaml` also checks round trips on a layout that resolves, panicking on a mismatch so
//! the fuzzer reports it:
//! - its partition table, written as `imgtool build` writes it, reads back (with
//!   `partition_table::read`, as `imgtool inspect` does) as the same table. A GPT entry's
//!   attributes read back with bit 2 set when the partition is `boot: true`, as written;
//! - its U-Boot env block parses back to the layout's variables.
//!
//! A resolved plan whose table the writer refuses is a finding too: `build` would fail late.

use std::os::unix::fs::FileExt;

use crate::plan::{Content, Plan};

fn scratch(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("{tag}-fuzz-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&d);
    d
}

/// Layout YAML: parse, resolve (sizes, offsets, overlaps) and check the round trips above,
/// without writing an image.
pub fn layout_yaml(data: &[u8]) {
    let Ok(yaml) = std::str::from_utf8(data) else {
        return;
    };
    if crate::parse(yaml, "fuzz.yaml").is_err() {
        return;
    }
    let dir = scratch("layout");
    let path = dir.join("fuzz.yaml");
    if std::fs::write(&path, yaml).is_err() {
        return;
    }
    let ctx = crate::Context {
        file: String::new(),
        base_dir: dir.clone(),
        overrides: Default::default(),
        mtime: 0,
    };
    let Ok(plan) = crate::plan_from(path.to_str().unwrap(), ctx) else {
        return;
    };
    table_round_trip(&plan, &dir.join("disk.img"));
    env_round_trip(&plan);
}

fn table_round_trip(plan: &Plan, img: &std::path::Path) {
    use partition_table::{gpt::ATTR_LEGACY_BIOS_BOOTABLE, Table};
    let Some(t) = &plan.table else {
        return;
    };
    let Ok(file) = std::fs::File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(img)
    else {
        return;
    };
    // Sparse; a size past what the host's filesystem allows is not the table's concern.
    if file.set_len(plan.size).is_err() {
        return;
    }
    crate::fills::write_table(&file, plan.size, t)
        .unwrap_or_else(|e| panic!("a resolved layout's table does not write: {e}"));
    let back = partition_table::read(&mut &file)
        .unwrap_or_else(|e| panic!("a written layout table does not read: {e}"));
    let mut want = crate::fills::table_spec(t);
    if let Table::Gpt(g) = &mut want {
        for p in g.partitions.iter_mut().flatten() {
            if p.bootable {
                p.attributes |= ATTR_LEGACY_BIOS_BOOTABLE;
            }
        }
    }
    assert_eq!(
        back.as_ref(),
        Some(&want),
        "layout table changed in write -> read"
    );
    let _ = file.set_len(0);
}

fn env_round_trip(plan: &Plan) {
    use uboot_env::{Env, Layout};
    let Some(e) = &plan.env else {
        return;
    };
    let Some(Content::Bytes { data, .. }) = plan
        .regions
        .iter()
        .find(|r| r.name == e.region)
        .map(|r| &r.content)
    else {
        panic!("env region `{}` holds no env block", e.region)
    };
    let layout = match e.redundant_offset {
        Some(_) => Layout::Redundant,
        None => Layout::Single,
    };
    let mut back =
        Env::parse(data, layout).unwrap_or_else(|err| panic!("layout env does not parse: {err}"));
    let mut want = Env::from_pairs(e.vars.iter().map(|(n, v)| (n.as_str(), v.as_str())))
        .unwrap_or_else(|err| panic!("layout env vars are not valid: {err}"));
    back.sort();
    want.sort();
    assert_eq!(back, want, "layout env changed in encode -> parse");
}

/// `imgtool inspect`'s probes (partition table, env, kernel header, squashfs, f2fs, FAT) on an
/// image file holding the input at byte 0 (tables, env) and again at 0x2000 and 1 MiB, where
/// kernels and filesystems are probed.
pub fn inspect_probes(data: &[u8]) {
    let path = scratch("inspect").join("img");
    let Ok(f) = std::fs::File::create(&path) else {
        return;
    };
    let _ = f.write_all_at(data, 0);
    let _ = f.write_all_at(data, 0x2000);
    let _ = f.write_all_at(data, 0x100000);
    let _ = f.set_len(0x100000 + data.len() as u64);
    drop(f);
    let Ok(f) = std::fs::File::open(&path) else {
        return;
    };
    let _ = crate::probe::table(&f);
    let _ = crate::probe::kernel(&f, 0);
    let _ = crate::probe::filesystem(&f, 0, data.len() as u64);
    let _ = crate::probe::filesystem(&f, 0x100000, data.len() as u64);
    let _ = crate::inspect::inspect(&path, crate::inspect::EnvLocation::default());
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The round trips are not skipped on a real layout: the built-in one resolves (its files
    /// are optional), has a table and an env, and both come back as written.
    #[test]
    fn the_builtin_layout_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = crate::Context {
            file: String::new(),
            base_dir: dir.path().to_path_buf(),
            overrides: Default::default(),
            mtime: 0,
        };
        let plan = crate::plan_from("nerves-qemu-aarch64", ctx).unwrap();
        assert!(plan.table.is_some() && plan.env.is_some());
        table_round_trip(&plan, &dir.path().join("disk.img"));
        env_round_trip(&plan);
    }
}
