//! `fw_env.config`, the u-boot-tools / libubootenv description of where the environment is.
//!
//! Format (tools/env/fw_env.config in U-Boot,
//! <https://github.com/u-boot/u-boot/blob/master/tools/env/fw_env.config>): one line per copy,
//! `device offset size [sector-size [sectors]]`, `#` starts a comment. As in fw_env.c
//! (`sscanf("%s %lli %lx %lx %lx")`), the offset is C-style (`0x` hex, leading `0` octal,
//! else decimal) while size, sector size and sector count are always hexadecimal, with or
//! without `0x`: `20000` means 0x20000.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

/// One line: where one copy lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigEntry {
    pub device: String,
    pub offset: u64,
    pub size: u64,
    pub sector_size: Option<u64>,
    pub sectors: Option<u64>,
    /// 1-based line number in the file.
    pub line: usize,
}

/// One entry (single layout) or two (redundant layout).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub primary: ConfigEntry,
    pub redundant: Option<ConfigEntry>,
}

/// A config error with the line it is on (0 when it is about the whole file).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub line: usize,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line > 0 {
            write!(f, "line {}: {}", self.line, self.message)
        } else {
            f.write_str(&self.message)
        }
    }
}

impl core::error::Error for ConfigError {}

fn err(line: usize, message: impl Into<String>) -> ConfigError {
    ConfigError {
        line,
        message: message.into(),
    }
}

/// C `strtoull(s, 0)`-style number: `0x` hex, leading `0` octal, else decimal.
pub fn parse_c_number(s: &str) -> Option<u64> {
    if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        u64::from_str_radix(h, 16).ok()
    } else if s.len() > 1 && s.starts_with('0') {
        u64::from_str_radix(&s[1..], 8).ok()
    } else {
        s.parse().ok()
    }
}

fn parse_hex(s: &str) -> Option<u64> {
    let h = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .unwrap_or(s);
    u64::from_str_radix(h, 16).ok()
}

impl Config {
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let mut entries: Vec<ConfigEntry> = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let content = raw.split('#').next().unwrap_or("").trim();
            if content.is_empty() {
                continue;
            }
            let fields: Vec<&str> = content.split_whitespace().collect();
            if fields.len() < 3 || fields.len() > 5 {
                return Err(err(
                    line,
                    format!(
                        "expected `device offset size [sector-size [sectors]]`, found {} fields",
                        fields.len()
                    ),
                ));
            }
            if entries.len() == 2 {
                return Err(err(
                    line,
                    "more than two environment copies; at most two lines",
                ));
            }
            if fields[1].starts_with('-') {
                return Err(err(
                    line,
                    format!(
                        "offset {:?}: offsets from the device end are not supported",
                        fields[1]
                    ),
                ));
            }
            let offset = parse_c_number(fields[1]).ok_or_else(|| {
                err(
                    line,
                    format!(
                        "offset {:?} is not a number (e.g. 0x2000 or 8192)",
                        fields[1]
                    ),
                )
            })?;
            let hex = |idx: usize, what: &str| -> Result<Option<u64>, ConfigError> {
                fields
                    .get(idx)
                    .map(|f| {
                        parse_hex(f).ok_or_else(|| {
                            err(
                                line,
                                format!("{what} {f:?} is not a hexadecimal number (e.g. 0x20000)"),
                            )
                        })
                    })
                    .transpose()
            };
            let size = hex(2, "size")?.unwrap_or(0);
            if size < 6 {
                return Err(err(
                    line,
                    format!("size {:?} is too small for an environment", fields[2]),
                ));
            }
            entries.push(ConfigEntry {
                device: fields[0].to_string(),
                offset,
                size,
                sector_size: hex(3, "sector size")?,
                sectors: hex(4, "sector count")?,
                line,
            });
        }
        let mut it = entries.into_iter();
        let primary = it
            .next()
            .ok_or_else(|| err(0, "no environment line (`device offset size`)"))?;
        let redundant = it.next();
        if let Some(r) = &redundant {
            if r.size != primary.size {
                return Err(err(
                    r.line,
                    format!(
                        "redundant copy size 0x{:x} differs from the first copy's 0x{:x}; they must match",
                        r.size, primary.size
                    ),
                ));
            }
        }
        Ok(Config { primary, redundant })
    }
}
