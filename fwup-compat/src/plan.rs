//! Tasks resolved into typed actions. Each action keeps its three parts together, as fwup's
//! src/functions.c table does: `validate` (create time, from the raw argv), `progress_units`
//! (so the total is known before any write) and `run` (in [`crate::exec`]).
//!
//! Spec: fwup's docs/fwup.md "Functions" (<https://github.com/fwup-home/fwup/blob/main/docs/fwup.md>).

use crate::blocks::Blocks;
use crate::config::{parse_c_int, strtoull, Section};

pub use crate::blocks::BLOCK;

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
/// CHECK_ARG_UINT64), except that a negative number is refused: strtoull turns `-1` into
/// 2^64 - 1, which fwup then multiplies into a negative byte offset.
fn is_uint64(s: &str) -> bool {
    let t = s.trim_start();
    let (neg, t) = match t.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, t.strip_prefix('+').unwrap_or(t)),
    };
    let (radix, digits) = if let Some(h) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        (16, h)
    } else if t.len() > 1 && t.starts_with('0') {
        (8, &t[1..])
    } else {
        (10, t)
    };
    // from_str_radix would also take a sign here, which strtoull does not.
    let v = (!digits.is_empty() && digits.chars().all(|c| c.is_digit(radix)))
        .then(|| u64::from_str_radix(digits, radix).ok())
        .flatten();
    v.is_some_and(|v| !neg || v == 0)
}

fn check_u64(s: &str, msg: &str) -> Result<(), String> {
    if is_uint64(s) {
        Ok(())
    } else {
        Err(msg.to_string())
    }
}

/// The create-time check of one call, for [`crate::config::Parser::on_call`]: its arguments,
/// then the sections it names.
pub fn check_call(c: crate::config::Call<'_>) -> Result<(), String> {
    if c.func == crate::config::Func::Action {
        validate_action(c.argv, c.resource)?;
    } else {
        validate_requirement(c.argv)?;
    }
    check_references(c.argv, c.known)
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
                    (s.get_int("block-count").max(0) as u64).saturating_mul(BLOCK * copies)
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
            Action::RawMemset { count, .. } => count.saturating_mul(BLOCK),
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

impl Action {
    /// The blocks this action may touch, checked: offsets and ends that overflow, or pass
    /// `end` (the destination's hard end in bytes, 0 if none), are errors naming the action
    /// and the value. FAT actions count their volume's first block; the volume's own size
    /// is checked by the FAT code when it is read.
    pub fn regions(
        &self,
        cfg: &Section,
        resource: Option<&str>,
        end: u64,
    ) -> crate::Result<Vec<Blocks>> {
        let res_len = || {
            resource
                .and_then(|r| cfg.sec("file-resource", r))
                .map(resource_total_len_checked)
                .transpose()
                .map(|v| v.unwrap_or(0))
        };
        let one = |what: String, b: u64, n: u64| -> crate::Result<Vec<Blocks>> {
            let r = Blocks::new(&what, b, n)?;
            r.within(&what, end)?;
            Ok(vec![r])
        };
        match self {
            Action::RawWrite { block, .. } => {
                let what = format!("raw_write({block})");
                let len = res_len()?;
                let r = Blocks::for_bytes(&what, *block, len)?;
                r.within(&what, end)?;
                Ok(vec![r])
            }
            Action::RawMemset {
                block,
                count,
                value,
            } => one(
                format!("raw_memset({block}, {count}, {value})"),
                *block,
                *count,
            ),
            Action::Trim { block, count } => {
                // A trim past the end only drops cache segments; its numbers still must not wrap.
                Blocks::new(&format!("trim({block}, {count})"), *block, *count).map(|r| vec![r])
            }
            Action::FatMkfs { block, count } => {
                one(format!("fat_mkfs({block}, {count})"), *block, *count)
            }
            Action::FatAttrib { block, .. }
            | Action::FatWrite { block, .. }
            | Action::FatMv { block, .. }
            | Action::FatRm { block, .. }
            | Action::FatMkdir { block, .. }
            | Action::FatSetlabel { block, .. }
            | Action::FatTouch { block, .. } => Ok(vec![Blocks::new(
                &format!("{}({block}, ...)", self.name()),
                *block,
                1,
            )?]),
            Action::FatCp {
                from_block,
                to_block,
                ..
            } => Ok(vec![
                Blocks::new(&format!("fat_cp({from_block}, ...)"), *from_block, 1)?,
                Blocks::new(&format!("fat_cp(..., {to_block}, ...)"), *to_block, 1)?,
            ]),
            Action::UbootClearenv { env }
            | Action::UbootSetenv { env, .. }
            | Action::UbootUnsetenv { env, .. }
            | Action::UbootRecover { env } => {
                let Some(s) = cfg.sec("uboot-environment", env) else {
                    return Ok(Vec::new());
                };
                let (a, b) = env_blocks(s, &format!("{}({env})", self.name()))?;
                let what = format!("{}({env})", self.name());
                a.within(&what, end)?;
                if let Some(b) = b {
                    b.within(&what, end)?;
                }
                Ok([Some(a), b].into_iter().flatten().collect())
            }
            Action::MbrWrite { mbr } => {
                let Some(s) = cfg.sec("mbr", mbr) else {
                    return Ok(Vec::new());
                };
                let what = format!("mbr_write({mbr})");
                let num_blocks = u32::try_from(end / BLOCK).unwrap_or(u32::MAX);
                let blocks = crate::mbr::encode(s, num_blocks)
                    .map_err(|e| crate::Error::msg(format!("{what}: {e}")))?;
                blocks
                    .iter()
                    .map(|(b, _)| {
                        let r = Blocks::new(&what, *b, 1)?;
                        r.within(&what, end)?;
                        Ok(r)
                    })
                    .collect()
            }
            Action::GptWrite { gpt } => {
                let Some(s) = cfg.sec("gpt", gpt) else {
                    return Ok(Vec::new());
                };
                let what = format!("gpt_write({gpt})");
                let g = gpt_geometry(s, end, &what)?;
                let head = Blocks::new(&what, 0, 34)?;
                let tail = Blocks::new(&what, g.num_blocks - 33, 33)?;
                head.within(&what, end)?;
                tail.within(&what, end)?;
                Ok(vec![head, tail])
            }
            _ => Ok(Vec::new()),
        }
    }

    /// fwup's name for the action (for messages).
    pub fn name(&self) -> &'static str {
        match self {
            Action::RawWrite { .. } => "raw_write",
            Action::RawMemset { .. } => "raw_memset",
            Action::Trim { .. } => "trim",
            Action::MbrWrite { .. } => "mbr_write",
            Action::GptWrite { .. } => "gpt_write",
            Action::UbootClearenv { .. } => "uboot_clearenv",
            Action::UbootSetenv { .. } => "uboot_setenv",
            Action::UbootUnsetenv { .. } => "uboot_unsetenv",
            Action::UbootRecover { .. } => "uboot_recover",
            Action::FatMkfs { .. } => "fat_mkfs",
            Action::FatAttrib { .. } => "fat_attrib",
            Action::FatWrite { .. } => "fat_write",
            Action::FatMv { .. } => "fat_mv",
            Action::FatRm { .. } => "fat_rm",
            Action::FatCp { .. } => "fat_cp",
            Action::FatMkdir { .. } => "fat_mkdir",
            Action::FatSetlabel { .. } => "fat_setlabel",
            Action::FatTouch { .. } => "fat_touch",
            Action::PathWrite { .. } => "path_write",
            Action::PipeWrite { .. } => "pipe_write",
            Action::UbiVolumeWrite { .. } => "ubi_volume_write",
            Action::Execute { .. } => "execute",
            Action::RebootParam { .. } => "reboot_param",
            Action::Info(_) => "info",
            Action::Error(_) => "error",
            Action::Unsupported { .. } => "?",
        }
    }
}

/// A U-Boot environment's copies, checked: block-count in 1..2^16-1 (fwup's limit), both
/// offsets and ends representable.
pub fn env_blocks(s: &Section, what: &str) -> crate::Result<(Blocks, Option<Blocks>)> {
    let count = s.get_int("block-count");
    if count <= 0 || count >= u16::MAX as i64 {
        return Err(crate::Error::msg(format!(
            "{what}: block-count must be specified, greater than 0 and less than 2^16 - 1"
        )));
    }
    let off = s
        .get_str("block-offset")
        .and_then(|o| parse_c_int(o).or_else(|| strtoull_checked(o)))
        .filter(|o| *o >= 0)
        .ok_or_else(|| crate::Error::msg(format!("{what}: block-offset must be specified")))?;
    let a = Blocks::new(&format!("{what} block-offset"), off as u64, count as u64)?;
    let b = match s.get_str("block-offset-redund") {
        Some(r) => {
            let r = parse_c_int(r)
                .or_else(|| strtoull_checked(r))
                .filter(|v| *v >= 0)
                .ok_or_else(|| {
                    crate::Error::msg(format!(
                        "{what}: block-offset-redund '{r}' is not a block number"
                    ))
                })?;
            let b = Blocks::new(
                &format!("{what} block-offset-redund"),
                r as u64,
                count as u64,
            )?;
            if b.offset() < a.offset() + a.count() && a.offset() < b.offset() + b.count() {
                return Err(crate::Error::msg(format!(
                    "{what}: block-offset-redund can't overlap primary U-Boot environment"
                )));
            }
            Some(b)
        }
        None => None,
    };
    Ok((a, b))
}

/// An on-resource's delta source offsets are block numbers (fwup reads a negative one as
/// a huge block and reads before the disk's start).
pub fn check_delta_source(r: &Section) -> Result<(), String> {
    for key in ["delta-source-raw-offset", "delta-source-fat-offset"] {
        if let Some(v) = r.get_str(key) {
            if !is_uint64(v) {
                return Err(format!(
                    "on-resource '{}': {key} must be a non-negative integer block offset, not '{v}'",
                    r.title()
                ));
            }
        }
    }
    Ok(())
}

fn strtoull_checked(s: &str) -> Option<i64> {
    let v = strtoull(s);
    i64::try_from(v).ok()
}

/// Where gpt_write puts things: the size it assumes for the disk, in blocks.
pub struct GptGeometry {
    pub num_blocks: u64,
}

/// The disk size gpt_write works with (the destination's, or the partitions' extent plus the
/// backup table when unknown), with every partition range checked.
pub fn gpt_geometry(s: &Section, end: u64, what: &str) -> crate::Result<GptGeometry> {
    let mut num_blocks = end / BLOCK;
    let mut furthest = 0u64;
    for p in s.secs("partition") {
        let off = strtoull(p.get_str("block-offset").unwrap_or("0"));
        let count = u64::try_from(p.get_int("block-count")).unwrap_or(0);
        let r = Blocks::new(&format!("{what} partition {}", p.title()), off, count)?;
        furthest = furthest.max(r.offset() + r.count());
    }
    if num_blocks == 0 {
        num_blocks = furthest + 34;
    }
    if num_blocks < 34 + 33 {
        return Err(crate::Error::msg(format!(
            "{what}: the destination ({num_blocks} blocks) is too small for a GPT"
        )));
    }
    Blocks::new(what, 0, num_blocks)?;
    Ok(GptGeometry { num_blocks })
}

/// [`resource_total_len`], failing on lengths that are not numbers or sum past 2^63.
pub fn resource_total_len_checked(r: &Section) -> crate::Result<u64> {
    let mut t = 0u64;
    for v in r.list("length") {
        let n = parse_c_int(v).filter(|n| *n >= 0).ok_or_else(|| {
            crate::Error::msg(format!(
                "file-resource '{}': length '{v}' is not a byte count",
                r.title()
            ))
        })?;
        t = t
            .checked_add(n as u64)
            .filter(|t| *t <= crate::blocks::MAX_BYTES)
            .ok_or_else(|| {
                crate::Error::msg(format!(
                    "file-resource '{}': lengths add up past 2^63 bytes",
                    r.title()
                ))
            })?;
    }
    Ok(t)
}

/// Data bytes of a resource (sparse maps alternate data and hole lengths, data first).
pub fn resource_data_len(r: &Section) -> u64 {
    r.list("length")
        .iter()
        .step_by(2)
        .map(|v| parse_c_int(v).unwrap_or(0).max(0) as u64)
        .fold(0u64, u64::saturating_add)
}

/// Bytes of a resource, holes included.
pub fn resource_total_len(r: &Section) -> u64 {
    r.list("length")
        .iter()
        .map(|v| parse_c_int(v).unwrap_or(0).max(0) as u64)
        .fold(0u64, u64::saturating_add)
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

    /// Check every action's blocks (see [`Action::regions`]) before the first write.
    pub fn check(&self, cfg: &Section, end: u64) -> crate::Result<()> {
        for a in self
            .on_init
            .iter()
            .chain(&self.on_finish)
            .chain(&self.on_error)
        {
            a.regions(cfg, None, end)?;
        }
        for (r, acts) in &self.on_resource {
            for a in acts {
                a.regions(cfg, Some(r), end)?;
            }
        }
        Ok(())
    }

    /// For a destination without a hard end (a regular file that grows): every action that
    /// writes real bytes must fit in `room` (free space plus the file's size), so a hostile
    /// `raw_memset` count cannot fill the host's disk before failing.
    pub fn check_room(&self, cfg: &Section, room: u64) -> crate::Result<()> {
        let too_big = |what: String, n: u64| {
            Err(crate::Error::msg(format!(
                "{what}: writes {n} bytes, but the destination's filesystem has room for {room}"
            )))
        };
        let all = self
            .on_init
            .iter()
            .chain(&self.on_finish)
            .map(|a| (a, None))
            .chain(
                self.on_resource
                    .iter()
                    .flat_map(|(r, acts)| acts.iter().map(move |a| (a, Some(r.as_str())))),
            );
        for (a, r) in all {
            match a {
                Action::RawMemset {
                    block,
                    count,
                    value,
                } if count.saturating_mul(BLOCK) > room => {
                    return too_big(
                        format!("raw_memset({block}, {count}, {value})"),
                        count.saturating_mul(BLOCK),
                    )
                }
                Action::RawWrite { block, .. } => {
                    let n = r
                        .and_then(|r| cfg.sec("file-resource", r))
                        .map(resource_data_len)
                        .unwrap_or(0);
                    if n > room {
                        return too_big(format!("raw_write({block})"), n);
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    pub fn total_units(&self, cfg: &Section) -> u64 {
        let mut t = 0;
        for a in &self.on_init {
            t = a.progress_units(cfg, None).saturating_add(t);
        }
        for (r, acts) in &self.on_resource {
            if cfg.sec("file-resource", r).is_none() {
                continue;
            }
            for a in acts {
                t = a.progress_units(cfg, Some(r)).saturating_add(t);
            }
        }
        for a in &self.on_finish {
            t = a.progress_units(cfg, None).saturating_add(t);
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
