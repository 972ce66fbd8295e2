//! Tasks resolved into typed actions. Each action keeps its three parts together, as fwup's
//! src/functions.c table does: `validate` (create time, from the raw argv), `progress_units`
//! (so the total is known before any write) and `run` (in [`crate::exec`]).
//!
//! Spec: fwup's docs/fwup.md "Functions" (<https://github.com/fwup-home/fwup/blob/main/docs/fwup.md>).

use crate::config::{parse_c_int, strtoull, Section};

pub const BLOCK: u64 = 512;

/// One action with its arguments parsed.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    RawWrite {
        block: u64,
        options: Vec<String>,
    },
    RawMemset {
        block: u64,
        count: u64,
        value: u8,
    },
    Trim {
        block: u64,
        count: u64,
    },
    MbrWrite {
        mbr: String,
    },
    GptWrite {
        gpt: String,
    },
    UbootClearenv {
        env: String,
    },
    UbootSetenv {
        env: String,
        name: String,
        value: String,
    },
    UbootUnsetenv {
        env: String,
        name: String,
    },
    UbootRecover {
        env: String,
    },
    FatMkfs {
        block: u64,
        count: u64,
    },
    FatAttrib {
        block: u64,
        path: String,
        attrib: String,
    },
    FatWrite {
        block: u64,
        path: String,
    },
    /// fat_mv and fat_mv! (`force`).
    FatMv {
        cmd: String,
        block: u64,
        from: String,
        to: String,
        force: bool,
    },
    /// fat_rm and fat_rm! (`must_exist`).
    FatRm {
        cmd: String,
        block: u64,
        path: String,
        must_exist: bool,
    },
    FatCp {
        from_block: u64,
        from: String,
        to_block: u64,
        to: String,
    },
    FatMkdir {
        block: u64,
        path: String,
    },
    FatSetlabel {
        block: u64,
        label: String,
    },
    FatTouch {
        block: u64,
        path: String,
    },
    PathWrite {
        path: String,
    },
    PipeWrite {
        cmd: String,
    },
    UbiVolumeWrite {
        path: String,
    },
    Execute {
        cmd: String,
    },
    RebootParam {
        param: String,
    },
    Info(String),
    Error(String),
    /// Recognised by the config language but not implemented by this engine yet.
    Unsupported {
        name: String,
    },
}

pub type Argv = [String];

fn need(argv: &Argv, n: usize, what: &str) -> Result<(), String> {
    if argv.len() != n {
        Err(what.to_string())
    } else {
        Ok(())
    }
}

fn uint(s: &str, what: &str) -> Result<u64, String> {
    match parse_c_int(s) {
        Some(v) if v >= 0 => Ok(v as u64),
        _ => Err(what.to_string()),
    }
}

/// C `strtoull(s, &end, 0)` that must consume the whole, non-empty string (fwup's
/// CHECK_ARG_UINT64).
fn is_uint64(s: &str) -> bool {
    let t = s.trim_start();
    let t = t.strip_prefix(['-', '+']).unwrap_or(t);
    let ok = if let Some(h) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        !h.is_empty() && u64::from_str_radix(h, 16).is_ok()
    } else if t.len() > 1 && t.starts_with('0') {
        u64::from_str_radix(&t[1..], 8).is_ok()
    } else {
        !t.is_empty() && t.parse::<u64>().is_ok()
    };
    !s.is_empty() && ok
}

fn check_u64(s: &str, msg: &str) -> Result<(), String> {
    if is_uint64(s) {
        Ok(())
    } else {
        Err(msg.to_string())
    }
}

/// Check one action's arguments (fwup's `*_validate`), at create time and when meta.conf is
/// read. `resource` is the on-resource title when the action is in one; `fat_write` without
/// a file name gets it here, so meta.conf always names the file.
pub fn validate_action(argv: &mut Vec<String>, resource: Option<&str>) -> Result<(), String> {
    let only_resource = |name: &str| -> Result<(), String> {
        if resource.is_none() {
            Err(format!("{name} only usable in on-resource"))
        } else {
            Ok(())
        }
    };
    let a = argv.clone();
    match a[0].as_str() {
        "fat_mkfs" => {
            need(&a, 3, "fat_mkfs requires a block offset and block count")?;
            check_u64(
                &a[1],
                "fat_mkfs requires a non-negative integer block offset",
            )?;
            check_u64(
                &a[2],
                "fat_mkfs requires a non-negative integer block count",
            )
        }
        "fat_attrib" => {
            need(
                &a,
                4,
                "fat_attrib requires a block offset, filename, and attributes (SHR)",
            )?;
            check_u64(
                &a[1],
                "fat_mkfs requires a non-negative integer block offset",
            )?;
            if a[3].chars().any(|c| !"SsHhRr".contains(c)) {
                return Err("fat_attrib only supports R, H, and S attributes".into());
            }
            Ok(())
        }
        "fat_write" => {
            only_resource("fat_write")?;
            if a.len() == 2 {
                argv.push(resource.unwrap_or("").to_string());
            } else if a.len() != 3 {
                return Err(
                    "fat_write requires a block offset and optional destination filename".into(),
                );
            }
            check_u64(
                &a[1],
                "fat_write requires a non-negative integer block offset",
            )
        }
        "fat_mv" | "fat_mv!" => {
            need(
                &a,
                4,
                "fat_mv requires a block offset, old filename, new filename",
            )?;
            check_u64(&a[1], "fat_mv requires a non-negative integer block offset")
        }
        "fat_rm" | "fat_rm!" => {
            need(&a, 3, "fat_rm requires a block offset and filename")?;
            check_u64(&a[1], "fat_rm requires a non-negative integer block offset")
        }
        "fat_cp" => match a.len() {
            4 => check_u64(&a[1], "fat_cp requires a non-negative integer block offset"),
            5 => {
                check_u64(
                    &a[1],
                    "fat_cp requires a non-negative integer source block offset",
                )?;
                check_u64(
                    &a[3],
                    "fat_cp requires a non-negative integer destination block offset",
                )
            }
            _ => Err("fat_cp requires either 3 or 4 arguments".into()),
        },
        "fat_mkdir" => {
            need(
                &a,
                3,
                "fat_mkdir requires a block offset and directory name",
            )?;
            check_u64(
                &a[1],
                "fat_mkdir requires a non-negative integer block offset",
            )
        }
        "fat_setlabel" => {
            need(&a, 3, "fat_setlabel requires a block offset and name")?;
            check_u64(
                &a[1],
                "fat_setlabel requires a non-negative integer block offset",
            )
        }
        "fat_touch" => {
            need(&a, 3, "fat_touch requires a block offset and filename")?;
            check_u64(
                &a[1],
                "fat_touch requires a non-negative integer block offset",
            )
        }
        "path_write" => {
            only_resource("path_write")?;
            need(&a, 2, "path_write requires a file path")
        }
        "pipe_write" => {
            only_resource("pipe_write")?;
            need(&a, 2, "pipe_write requires a command to execute")
        }
        "ubi_volume_write" => {
            only_resource("ubi_volume_write")?;
            need(
                &a,
                2,
                "ubi_volume_write requires a UBI volume path (e.g. /dev/ubi0_3)",
            )
        }
        "execute" => need(&a, 2, "execute requires a command to execute"),
        "reboot_param" => need(&a, 2, "reboot_param requires a single string parameter"),
        "raw_write" => {
            only_resource("raw_write")?;
            if a.len() < 2 {
                return Err("raw_write requires a block offset".into());
            }
            check_u64(
                &a[1],
                "raw_write requires a non-negative integer block offset",
            )
        }
        "raw_memset" => {
            need(
                &a,
                4,
                "raw_memset requires a block offset, count, and value",
            )?;
            uint(
                &a[1],
                "raw_memset requires a non-negative integer block offset",
            )?;
            let c = uint(&a[2], "raw_memset requires a positive integer block count")?;
            if c == 0 {
                return Err("raw_memset requires a positive integer block count".into());
            }
            match parse_c_int(&a[3]) {
                Some(0..=255) => Ok(()),
                _ => Err("raw_memset requires value to be between 0 and 255".into()),
            }
        }
        "trim" => {
            need(&a, 3, "trim requires a block offset and count")?;
            check_u64(&a[1], "trim requires a non-negative integer block offset")?;
            match uint(&a[2], "trim requires a block count >1")? {
                0 => Err("trim requires a block count >1".into()),
                _ => Ok(()),
            }
        }
        "mbr_write" => need(&a, 2, "mbr_write requires an mbr"),
        "gpt_write" => need(&a, 2, "gpt_write requires a gpt"),
        "uboot_clearenv" => need(
            &a,
            2,
            "uboot_clearenv requires a uboot-environment reference",
        ),
        "uboot_recover" => need(
            &a,
            2,
            "uboot_recover requires a uboot-environment reference",
        ),
        "uboot_setenv" => need(
            &a,
            4,
            "uboot_setenv requires a uboot-environment reference, variable name and value",
        ),
        "uboot_unsetenv" => need(
            &a,
            3,
            "uboot_unsetenv requires a uboot-environment reference and a variable name",
        ),
        "info" => need(&a, 2, "info() requires a message parameter"),
        "error" => need(&a, 2, "error() requires a message parameter"),
        _ => Ok(()),
    }
}

/// Create-time check that the sections an action names were defined above it.
pub fn check_references(argv: &Argv, known: impl Fn(&str, &str) -> bool) -> Result<(), String> {
    let name = argv[0].as_str();
    match name {
        "mbr_write" if argv.len() == 2 && !known("mbr", &argv[1]) => {
            Err("mbr_write can't find mbr reference".into())
        }
        "gpt_write" if argv.len() == 2 && !known("gpt", &argv[1]) => {
            Err("gpt_write can't find gpt reference".into())
        }
        "uboot_clearenv" | "uboot_setenv" | "uboot_unsetenv" | "uboot_recover"
            if argv.len() >= 2 && !known("uboot-environment", &argv[1]) =>
        {
            Err(format!(
                "{name} can't find uboot-environment reference {}",
                argv[1]
            ))
        }
        "require-uboot-variable" if argv.len() == 4 && !known("uboot-environment", &argv[1]) => {
            Err("require-uboot-variable can't find uboot-environment reference".into())
        }
        _ => Ok(()),
    }
}

/// Check a `require-*` line's arguments (fwup's requirement.c `*_validate`).
pub fn validate_requirement(argv: &Argv) -> Result<(), String> {
    let a = argv;
    match a[0].as_str() {
        "require-partition-offset" => {
            need(
                a,
                3,
                "require-partition-offset requires a partition number and a block offset",
            )?;
            let p = parse_c_int(&a[1]).unwrap_or_else(|| crate::config::strtoull(&a[1]) as i64);
            if !(0..4).contains(&p) {
                return Err(
                    "require-partition-offset requires the partition number to be 0-3".into(),
                );
            }
            check_u64(
                &a[2],
                "require-partition-offset requires a non-negative integer block offset",
            )
        }
        "require-uboot-variable" => need(
            a,
            4,
            "require-uboot-variable requires a uboot-environment reference, variable name, and value",
        ),
        "require-fat-file-exists" => {
            need(
                a,
                3,
                "require-fat-file-exists requires a FAT FS block offset and a filename",
            )?;
            check_u64(
                &a[1],
                "require-fat-file-exists requires a non-negative integer block offset",
            )
        }
        "require-fat-file-match" => {
            need(
                a,
                4,
                "require-fat-file-match requires a FAT FS block offset, a filename, and a pattern",
            )?;
            check_u64(
                &a[1],
                "require-fat-file-match requires a non-negative integer block offset",
            )
        }
        "require-path-on-device" => need(a, 3, "require-path-on-device requires a path and a device"),
        "require-path-at-offset" => {
            need(a, 3, "require-path-at-offset requires a path and a block offset")?;
            check_u64(
                &a[2],
                "require-path-at-offset requires a non-negative integer block offset",
            )
        }
        "require-execute" => need(a, 2, "require-execute requires a command"),
        _ => Ok(()),
    }
}

impl Action {
    /// Parse one funlist entry (argv[0] is the name). Runtime values were already expanded
    /// when meta.conf was parsed.
    pub fn from_argv(argv: &Argv) -> Result<Action, String> {
        let mut v = argv.to_vec();
        // Apply-time parsing: the context was checked when the archive was made.
        validate_action(&mut v, Some(""))?;
        let argv = &v[..];
        let s = |i: usize| argv[i].clone();
        Ok(match argv[0].as_str() {
            "raw_write" => Action::RawWrite {
                block: strtoull(&argv[1]),
                options: argv[2..].to_vec(),
            },
            "raw_memset" => Action::RawMemset {
                block: strtoull(&argv[1]),
                count: strtoull(&argv[2]),
                value: parse_c_int(&argv[3]).unwrap_or(0) as u8,
            },
            "trim" => Action::Trim {
                block: strtoull(&argv[1]),
                count: strtoull(&argv[2]),
            },
            "mbr_write" => Action::MbrWrite { mbr: s(1) },
            "gpt_write" => Action::GptWrite { gpt: s(1) },
            "uboot_clearenv" => Action::UbootClearenv { env: s(1) },
            "uboot_recover" => Action::UbootRecover { env: s(1) },
            "uboot_setenv" => Action::UbootSetenv {
                env: s(1),
                name: s(2),
                value: s(3),
            },
            "uboot_unsetenv" => Action::UbootUnsetenv {
                env: s(1),
                name: s(2),
            },
            "fat_mkfs" => Action::FatMkfs {
                block: strtoull(&argv[1]),
                count: strtoull(&argv[2]),
            },
            "fat_attrib" => Action::FatAttrib {
                block: strtoull(&argv[1]),
                path: s(2),
                attrib: s(3),
            },
            "fat_write" => Action::FatWrite {
                block: strtoull(&argv[1]),
                path: s(2),
            },
            "fat_mv" | "fat_mv!" => Action::FatMv {
                cmd: s(0),
                block: strtoull(&argv[1]),
                from: s(2),
                to: s(3),
                force: argv[0] == "fat_mv!",
            },
            "fat_rm" | "fat_rm!" => Action::FatRm {
                cmd: s(0),
                block: strtoull(&argv[1]),
                path: s(2),
                must_exist: argv[0] == "fat_rm!",
            },
            "fat_cp" if argv.len() == 4 => Action::FatCp {
                from_block: strtoull(&argv[1]),
                from: s(2),
                to_block: strtoull(&argv[1]),
                to: s(3),
            },
            "fat_cp" => Action::FatCp {
                from_block: strtoull(&argv[1]),
                from: s(2),
                to_block: strtoull(&argv[3]),
                to: s(4),
            },
            "fat_mkdir" => Action::FatMkdir {
                block: strtoull(&argv[1]),
                path: s(2),
            },
            "fat_setlabel" => Action::FatSetlabel {
                block: strtoull(&argv[1]),
                label: s(2),
            },
            "fat_touch" => Action::FatTouch {
                block: strtoull(&argv[1]),
                path: s(2),
            },
            "path_write" => Action::PathWrite { path: s(1) },
            "pipe_write" => Action::PipeWrite { cmd: s(1) },
            "ubi_volume_write" => Action::UbiVolumeWrite { path: s(1) },
            "execute" => Action::Execute { cmd: s(1) },
            "reboot_param" => Action::RebootParam { param: s(1) },
            "info" => Action::Info(s(1)),
            "error" => Action::Error(s(1)),
            other => Action::Unsupported {
                name: other.to_string(),
            },
        })
    }

    /// Progress units (bytes, mostly) this action reports, as fwup's `*_compute_progress`.
    pub fn progress_units(&self, cfg: &Section, resource: Option<&str>) -> u64 {
        let env_units = |env: &str| {
            cfg.sec("uboot-environment", env)
                .map(|s| {
                    // Both copies of a redundant environment count.
                    let copies = if s.is_set("block-offset-redund") {
                        2
                    } else {
                        1
                    };
                    s.get_int("block-count") as u64 * BLOCK * copies
                })
                .unwrap_or(BLOCK)
        };
        match self {
            Action::RawWrite { .. } | Action::PathWrite { .. } => resource
                .and_then(|r| cfg.sec("file-resource", r))
                .map(resource_data_len)
                .unwrap_or(0),
            // These count holes: they are written out as zeros.
            Action::FatWrite { .. } | Action::PipeWrite { .. } | Action::UbiVolumeWrite { .. } => {
                resource
                    .and_then(|r| cfg.sec("file-resource", r))
                    .map(resource_total_len)
                    .unwrap_or(0)
            }
            Action::FatMkfs { .. }
            | Action::FatAttrib { .. }
            | Action::FatMv { .. }
            | Action::FatRm { .. }
            | Action::FatCp { .. }
            | Action::FatMkdir { .. }
            | Action::FatSetlabel { .. }
            | Action::FatTouch { .. }
            | Action::Execute { .. }
            | Action::RebootParam { .. } => BLOCK,
            Action::RawMemset { count, .. } => count * BLOCK,
            Action::Trim { count, .. } => count / 256,
            Action::MbrWrite { .. } => BLOCK,
            Action::GptWrite { .. } => 33 * BLOCK,
            Action::UbootClearenv { env }
            | Action::UbootSetenv { env, .. }
            | Action::UbootUnsetenv { env, .. }
            | Action::UbootRecover { env } => env_units(env),
            Action::Info(_) | Action::Error(_) => 0,
            Action::Unsupported { .. } => BLOCK,
        }
    }
}

/// Data bytes of a resource (sparse maps alternate data and hole lengths, data first).
pub fn resource_data_len(r: &Section) -> u64 {
    r.list("length")
        .iter()
        .step_by(2)
        .map(|v| parse_c_int(v).unwrap_or(0) as u64)
        .sum()
}

/// Bytes of a resource, holes included.
pub fn resource_total_len(r: &Section) -> u64 {
    r.list("length")
        .iter()
        .map(|v| parse_c_int(v).unwrap_or(0) as u64)
        .sum()
}

/// Split a funlist (`argc, name, args..., argc, ...`) into argv vectors.
pub fn split_funlist(list: &[String]) -> Result<Vec<Vec<String>>, String> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < list.len() {
        let argc = strtoull(&list[i]) as usize;
        if argc == 0 || argc > 10 || i + 1 + argc > list.len() {
            return Err("Unexpected argc value in funlist".into());
        }
        out.push(list[i + 1..i + 1 + argc].to_vec());
        i += 1 + argc;
    }
    Ok(out)
}

/// A task resolved for execution.
#[derive(Debug)]
pub struct Plan {
    pub name: String,
    pub on_init: Vec<Action>,
    /// Resource name → its actions, in task order.
    pub on_resource: Vec<(String, Vec<Action>)>,
    pub on_finish: Vec<Action>,
    pub on_error: Vec<Action>,
}

fn actions(sec: Option<&Section>) -> Result<Vec<Action>, String> {
    let Some(sec) = sec else {
        return Ok(Vec::new());
    };
    split_funlist(sec.list("funlist"))?
        .iter()
        .map(|a| Action::from_argv(a))
        .collect()
}

impl Plan {
    pub fn from_task(task: &Section) -> Result<Plan, String> {
        let mut on_resource = Vec::new();
        for r in task.secs("on-resource") {
            on_resource.push((r.title().to_string(), actions(Some(r))?));
        }
        Ok(Plan {
            name: task.title().to_string(),
            on_init: actions(task.single("on-init"))?,
            on_resource,
            on_finish: actions(task.single("on-finish"))?,
            on_error: actions(task.single("on-error"))?,
        })
    }

    pub fn total_units(&self, cfg: &Section) -> u64 {
        let mut t = 0;
        for a in &self.on_init {
            t += a.progress_units(cfg, None);
        }
        for (r, acts) in &self.on_resource {
            if cfg.sec("file-resource", r).is_none() {
                continue;
            }
            for a in acts {
                t += a.progress_units(cfg, Some(r));
            }
        }
        for a in &self.on_finish {
            t += a.progress_units(cfg, None);
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn parse_actions() {
        assert_eq!(
            Action::from_argv(&argv(&["raw_memset", "63", "16", "0xa5"])).unwrap(),
            Action::RawMemset {
                block: 63,
                count: 16,
                value: 0xa5
            }
        );
        assert!(Action::from_argv(&argv(&["raw_memset", "1", "0", "1"])).is_err());
        assert!(Action::from_argv(&argv(&["raw_memset", "1", "1", "256"])).is_err());
        assert!(Action::from_argv(&argv(&["raw_write"])).is_err());
        let mut w = argv(&["fat_write", "63"]);
        validate_action(&mut w, Some("zImage")).unwrap();
        assert_eq!(w, argv(&["fat_write", "63", "zImage"]));
        assert!(validate_action(&mut argv(&["fat_write", "63"]), None).is_err());
        assert!(validate_action(&mut argv(&["fat_attrib", "63", "f", "RX"]), None).is_err());
        assert_eq!(
            Action::from_argv(&argv(&["fat_mv!", "1", "a", "b"])).unwrap(),
            Action::FatMv {
                cmd: "fat_mv!".into(),
                block: 1,
                from: "a".into(),
                to: "b".into(),
                force: true
            }
        );
        assert!(Action::from_argv(&argv(&["uboot_setenv", "e", "k"])).is_err());
    }

    #[test]
    fn funlist() {
        let l = argv(&["2", "mbr_write", "mbr", "4", "raw_memset", "1", "2", "0xff"]);
        let v = split_funlist(&l).unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(v[1][0], "raw_memset");
        assert!(split_funlist(&argv(&["5", "x"])).is_err());
    }
}
