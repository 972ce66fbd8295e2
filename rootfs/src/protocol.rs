//! Host side of the init's console protocol (see [`crate::initconf`] for the guest side): turn
//! serial console lines into events that `imgtool validate` can act on.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::initconf::{MARK_ERROR, MARK_EXIT, MARK_LOG, MARK_PONG, MARK_READY, MARK_SNAPSHOT};

/// One memory snapshot, as the init prints it (kB unless named `_bytes`/`zram`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub seq: u64,
    pub uptime_ms: u64,
    pub since_ready_ms: Option<u64>,
    pub meminfo: BTreeMap<String, u64>,
    pub process: Option<ProcessMem>,
    pub zram: Option<ZramStat>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessMem {
    pub pid: u32,
    /// VmRSS, VmHWM, VmSize, VmSwap, RssAnon, RssFile, RssShmem, ... in kB.
    pub status: BTreeMap<String, u64>,
    /// Rss, Pss, Pss_Anon, Pss_File, Swap, SwapPss, ... in kB.
    pub smaps_rollup: BTreeMap<String, u64>,
}

/// /sys/block/zram0/mm_stat's first three fields, in bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ZramStat {
    pub orig_data_size: u64,
    pub compr_data_size: u64,
    pub mem_used_total: u64,
}

impl Snapshot {
    pub fn vm_rss_kb(&self) -> Option<u64> {
        self.process.as_ref()?.status.get("VmRSS").copied()
    }
    pub fn pss_kb(&self) -> Option<u64> {
        self.process.as_ref()?.smaps_rollup.get("Pss").copied()
    }
    /// MemTotal - MemAvailable: what the guest as a whole uses.
    pub fn used_kb(&self) -> Option<u64> {
        Some(self.meminfo.get("MemTotal")? - self.meminfo.get("MemAvailable")?)
    }
}

/// What a console line means.
#[derive(Debug, Clone, PartialEq)]
pub enum Line {
    Ready {
        uptime_ms: u64,
        pid: u32,
    },
    Snapshot(Box<Snapshot>),
    Exit {
        status: Option<i32>,
        signal: Option<i32>,
        uptime_ms: u64,
    },
    Pong {
        uptime_ms: u64,
    },
    Log(String),
    Error(String),
    /// Program output, kernel messages, anything else.
    Other,
}

fn field(rest: &str, key: &str) -> Option<i64> {
    rest.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
}

/// Parse one console line (a trailing CR is fine; markers start the line).
pub fn parse_line(line: &str) -> Line {
    let l = line.trim_end_matches(['\r', '\n']);
    let Some((word, rest)) = l.split_once(' ').or(Some((l, ""))) else {
        return Line::Other;
    };
    match word {
        MARK_READY => match (field(rest, "uptime_ms"), field(rest, "pid")) {
            (Some(u), Some(p)) => Line::Ready {
                uptime_ms: u as u64,
                pid: p as u32,
            },
            _ => Line::Other,
        },
        MARK_SNAPSHOT => match serde_json::from_str::<Snapshot>(rest) {
            Ok(s) => Line::Snapshot(Box::new(s)),
            Err(_) => Line::Other,
        },
        MARK_EXIT => Line::Exit {
            status: field(rest, "status").map(|v| v as i32),
            signal: field(rest, "signal").map(|v| v as i32),
            uptime_ms: field(rest, "uptime_ms").unwrap_or(0) as u64,
        },
        MARK_PONG => Line::Pong {
            uptime_ms: field(rest, "uptime_ms").unwrap_or(0) as u64,
        },
        MARK_LOG => Line::Log(rest.to_string()),
        MARK_ERROR => Line::Error(rest.to_string()),
        _ => Line::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::initconf::{format_snapshot, SnapshotInput};

    #[test]
    fn parses_what_the_init_prints() {
        let text = format_snapshot(&SnapshotInput {
            seq: 1,
            uptime_ms: 4000,
            since_ready_ms: Some(10),
            meminfo: "MemTotal: 100 kB\nMemAvailable: 60 kB\n",
            pid: Some(80),
            status: "VmRSS:\t 37000 kB\n",
            smaps_rollup: "Pss: 36000 kB\n",
            zram_mm_stat: Some("1 2 3 4"),
        });
        let Line::Snapshot(s) = parse_line(&format!("{text}\r\n")) else {
            panic!("{text}")
        };
        assert_eq!(s.vm_rss_kb(), Some(37000));
        assert_eq!(s.pss_kb(), Some(36000));
        assert_eq!(s.used_kb(), Some(40));
        assert_eq!(s.zram.unwrap().mem_used_total, 3);
        assert_eq!(
            parse_line("IMGTOOL-READY uptime_ms=3500 pid=80"),
            Line::Ready {
                uptime_ms: 3500,
                pid: 80
            }
        );
        assert_eq!(
            parse_line("IMGTOOL-EXIT status=0 uptime_ms=9"),
            Line::Exit {
                status: Some(0),
                signal: None,
                uptime_ms: 9
            }
        );
        assert_eq!(parse_line("[    1.0] random kernel line"), Line::Other);
        assert_eq!(
            parse_line("IMGTOOL-INIT applied 4 sysctls"),
            Line::Log("applied 4 sysctls".into())
        );
    }
}
