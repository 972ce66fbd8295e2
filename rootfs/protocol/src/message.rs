//! Init -> host: the marked lines the init prints among the program's output.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};

use crate::{
    Fields, ParseError, MARK_ERROR, MARK_EXIT, MARK_IDENTITY, MARK_LOG, MARK_PONG, MARK_READY,
    MARK_SNAPSHOT,
};

/// What a marked console line says.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// `IMGTOOL-INIT text`: the init's log.
    Log(String),
    /// The program is up (its ready text was seen, or it started and there is none).
    Ready {
        uptime_ms: u64,
        pid: u32,
    },
    Snapshot(Box<Snapshot>),
    /// The program ended; the init powers off next.
    Exit {
        ended: Ended,
        uptime_ms: u64,
    },
    Pong {
        uptime_ms: u64,
    },
    /// A command could not be carried out.
    Error(String),
    Identity(IdentityAnswer),
}

/// How the program ended, as waitpid(2) tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    Status(i32),
    Signal(i32),
}

impl Ended {
    /// From a waitpid(2) status word.
    pub fn from_wait_status(st: i32) -> Ended {
        if st & 0x7f == 0 {
            Ended::Status((st >> 8) & 0xff)
        } else {
            Ended::Signal(st & 0x7f)
        }
    }
}

/// The init's answer to `identity`: what it applied, and 16 bytes it then read from the
/// reseeded RNG (clones of one template must show different ones).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IdentityAnswer {
    pub serial: String,
    pub hostname: String,
    pub mac: Option<String>,
    pub random: Vec<u8>,
    pub uptime_ms: u64,
}

/// One memory snapshot, all figures in kB except zram's (bytes, as the kernel reports them).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[cfg_attr(feature = "json", derive(serde::Serialize, serde::Deserialize))]
pub struct Snapshot {
    pub seq: u64,
    pub uptime_ms: u64,
    pub since_ready_ms: Option<u64>,
    /// /proc/meminfo's kB fields.
    pub meminfo: BTreeMap<String, u64>,
    pub process: Option<ProcessMem>,
    pub zram: Option<ZramStat>,
    /// What of the memory profile the guest's kernel and program show (older guests omit it).
    #[cfg_attr(feature = "json", serde(default))]
    pub in_force: Option<InForce>,
}

/// The profile's settings as the guest sees them: read back, not as configured.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[cfg_attr(feature = "json", derive(serde::Serialize, serde::Deserialize))]
pub struct InForce {
    /// Each configured sysctl (dotted name) with /proc/sys's text for it now.
    pub sysctl: BTreeMap<String, String>,
    /// The measured program's command line (/proc/PID/cmdline): the BEAM's flags.
    pub cmdline: Vec<String>,
    /// Active swap devices from /proc/swaps: (device, size in kB).
    pub swaps: Vec<(String, u64)>,
}

impl InForce {
    /// From the texts of /proc/PID/cmdline (NUL-separated) and /proc/swaps, and the sysctls read.
    pub fn from_proc(sysctl: BTreeMap<String, String>, cmdline: &[u8], swaps: &str) -> InForce {
        InForce {
            sysctl,
            cmdline: cmdline
                .split(|&b| b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect(),
            swaps: swaps
                .lines()
                .skip(1)
                .filter_map(|l| {
                    let mut f = l.split_whitespace();
                    let dev = f.next()?.to_string();
                    let size = f.nth(1)?.parse().ok()?;
                    Some((dev, size))
                })
                .collect(),
        }
    }

    fn write_json(&self, o: &mut String) {
        o.push_str("{\"sysctl\":{");
        for (i, (k, v)) in self.sysctl.iter().enumerate() {
            if i > 0 {
                o.push(',');
            }
            json_str(o, k);
            o.push(':');
            json_str(o, v);
        }
        o.push_str("},\"cmdline\":[");
        for (i, a) in self.cmdline.iter().enumerate() {
            if i > 0 {
                o.push(',');
            }
            json_str(o, a);
        }
        o.push_str("],\"swaps\":[");
        for (i, (d, kb)) in self.swaps.iter().enumerate() {
            if i > 0 {
                o.push(',');
            }
            o.push('[');
            json_str(o, d);
            let _ = write!(o, ",{kb}]");
        }
        o.push_str("]}");
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[cfg_attr(feature = "json", derive(serde::Serialize, serde::Deserialize))]
pub struct ProcessMem {
    pub pid: u32,
    /// VmRSS, VmHWM, VmSize, VmSwap, RssAnon, RssFile, RssShmem, ... in kB.
    pub status: BTreeMap<String, u64>,
    /// Rss, Pss, Pss_Anon, Pss_File, Swap, SwapPss, ... in kB.
    pub smaps_rollup: BTreeMap<String, u64>,
}

/// /sys/block/zram0/mm_stat's first three fields, in bytes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[cfg_attr(feature = "json", derive(serde::Serialize, serde::Deserialize))]
pub struct ZramStat {
    pub orig_data_size: u64,
    pub compr_data_size: u64,
    pub mem_used_total: u64,
}

/// What the init read for one snapshot: the kernel's files as text.
pub struct SnapshotInput<'a> {
    pub seq: u64,
    pub uptime_ms: u64,
    pub since_ready_ms: Option<u64>,
    pub meminfo: &'a str,
    pub pid: Option<u32>,
    pub status: &'a str,
    pub smaps_rollup: &'a str,
    /// /sys/block/zram0/mm_stat: orig_data_size compr_data_size mem_used_total ... (bytes).
    pub zram_mm_stat: Option<&'a str>,
    pub in_force: Option<InForce>,
}

/// Parse `Key:   123 kB` lines (/proc/meminfo, /proc/PID/status, smaps_rollup) into (Key, kB).
/// Lines without a kB figure are skipped.
pub fn parse_kb_fields(text: &str) -> Vec<(String, u64)> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            let mut it = v.split_whitespace();
            let n = it.next()?.parse().ok()?;
            (it.next()? == "kB").then(|| (k.trim().to_string(), n))
        })
        .collect()
}

impl Snapshot {
    /// The snapshot of what the init read. Of /proc/PID/status only the Vm* and Rss* fields
    /// are kept; a pid without status text still names the process.
    pub fn from_proc(s: &SnapshotInput) -> Snapshot {
        let kb = |text: &str, keep: &dyn Fn(&str) -> bool| -> BTreeMap<String, u64> {
            parse_kb_fields(text)
                .into_iter()
                .filter(|(k, _)| keep(k))
                .collect()
        };
        let zram = s.zram_mm_stat.and_then(|t| {
            let n: Vec<u64> = t
                .split_whitespace()
                .take(3)
                .filter_map(|x| x.parse().ok())
                .collect();
            (n.len() == 3).then(|| ZramStat {
                orig_data_size: n[0],
                compr_data_size: n[1],
                mem_used_total: n[2],
            })
        });
        Snapshot {
            seq: s.seq,
            uptime_ms: s.uptime_ms,
            since_ready_ms: s.since_ready_ms,
            meminfo: kb(s.meminfo, &|_| true),
            process: s.pid.map(|pid| ProcessMem {
                pid,
                status: kb(s.status, &|k| k.starts_with("Vm") || k.starts_with("Rss")),
                smaps_rollup: kb(s.smaps_rollup, &|_| true),
            }),
            zram,
            in_force: s.in_force.clone(),
        }
    }

    /// The JSON object of the snapshot line (written by hand: the init has no serde).
    fn write_json(&self, o: &mut String) {
        let _ = write!(
            o,
            "{{\"seq\":{},\"uptime_ms\":{},\"since_ready_ms\":",
            self.seq, self.uptime_ms
        );
        match self.since_ready_ms {
            Some(v) => {
                let _ = write!(o, "{v}");
            }
            None => o.push_str("null"),
        }
        o.push_str(",\"meminfo\":");
        json_kb_object(o, &self.meminfo);
        o.push_str(",\"process\":");
        match &self.process {
            Some(p) => {
                let _ = write!(o, "{{\"pid\":{},\"status\":", p.pid);
                json_kb_object(o, &p.status);
                o.push_str(",\"smaps_rollup\":");
                json_kb_object(o, &p.smaps_rollup);
                o.push('}');
            }
            None => o.push_str("null"),
        }
        o.push_str(",\"zram\":");
        match &self.zram {
            Some(z) => {
                let _ = write!(
                    o,
                    "{{\"orig_data_size\":{},\"compr_data_size\":{},\"mem_used_total\":{}}}",
                    z.orig_data_size, z.compr_data_size, z.mem_used_total
                );
            }
            None => o.push_str("null"),
        }
        o.push_str(",\"in_force\":");
        match &self.in_force {
            Some(f) => f.write_json(o),
            None => o.push_str("null"),
        }
        o.push('}');
    }
}

fn json_str(o: &mut String, s: &str) {
    o.push('"');
    for ch in s.chars() {
        match ch {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(o, "\\u{:04x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o.push('"');
}

fn json_kb_object(o: &mut String, fields: &BTreeMap<String, u64>) {
    o.push('{');
    for (i, (k, v)) in fields.iter().enumerate() {
        if i > 0 {
            o.push(',');
        }
        json_str(o, k);
        let _ = write!(o, ":{v}");
    }
    o.push('}');
}

/// Free text stays on its line.
fn one_line(s: &str) -> String {
    s.replace(['\r', '\n'], " ")
}

impl fmt::Display for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Message::Log(t) => write!(f, "{MARK_LOG} {}", one_line(t)),
            Message::Ready { uptime_ms, pid } => {
                write!(f, "{MARK_READY} uptime_ms={uptime_ms} pid={pid}")
            }
            Message::Snapshot(s) => {
                let mut o = format!("{MARK_SNAPSHOT} ");
                s.write_json(&mut o);
                f.write_str(&o)
            }
            Message::Exit { ended, uptime_ms } => {
                let (k, v) = match ended {
                    Ended::Status(v) => ("status", v),
                    Ended::Signal(v) => ("signal", v),
                };
                write!(f, "{MARK_EXIT} {k}={v} uptime_ms={uptime_ms}")
            }
            Message::Pong { uptime_ms } => write!(f, "{MARK_PONG} uptime_ms={uptime_ms}"),
            Message::Error(t) => write!(f, "{MARK_ERROR} {}", one_line(t)),
            Message::Identity(a) => write!(
                f,
                "{MARK_IDENTITY} serial={} hostname={} mac={} random={} uptime_ms={}",
                a.serial,
                a.hostname,
                a.mac.as_deref().unwrap_or("none"),
                common::hex::encode(&a.random),
                a.uptime_ms
            ),
        }
    }
}

impl Message {
    /// Parse one console line (a trailing CR/LF is fine; the marker starts the line).
    /// [`ParseError::NotProtocol`] for anything else the console shows.
    pub fn parse(line: &str) -> Result<Message, ParseError> {
        let l = line.trim_end_matches(['\r', '\n']);
        let (word, rest) = l.split_once(' ').unwrap_or((l, ""));
        let marker = [
            MARK_LOG,
            MARK_READY,
            MARK_SNAPSHOT,
            MARK_EXIT,
            MARK_PONG,
            MARK_ERROR,
            MARK_IDENTITY,
        ]
        .into_iter()
        .find(|m| *m == word)
        .ok_or(ParseError::NotProtocol)?;
        match marker {
            MARK_LOG => Ok(Message::Log(rest.to_string())),
            MARK_ERROR => Ok(Message::Error(rest.to_string())),
            MARK_SNAPSHOT => parse_snapshot(rest).map(|s| Message::Snapshot(Box::new(s))),
            _ => {
                let f = Fields::parse(marker, rest)?;
                Ok(match marker {
                    MARK_READY => Message::Ready {
                        uptime_ms: f.need("uptime_ms")?,
                        pid: f.need("pid")?,
                    },
                    MARK_EXIT => Message::Exit {
                        ended: match (f.num("status")?, f.num("signal")?) {
                            (Some(s), None) => Ended::Status(s),
                            (None, Some(s)) => Ended::Signal(s),
                            _ => return Err(f.bad("needs one of `status=`, `signal=`".into())),
                        },
                        uptime_ms: f.need("uptime_ms")?,
                    },
                    MARK_PONG => Message::Pong {
                        uptime_ms: f.need("uptime_ms")?,
                    },
                    _ => Message::Identity(IdentityAnswer {
                        serial: f.need_str("serial")?.to_string(),
                        hostname: f.need_str("hostname")?.to_string(),
                        mac: match f.need_str("mac")? {
                            "none" => None,
                            m if crate::command::parse_mac(m).is_some() => Some(m.to_string()),
                            m => return Err(f.bad(format!("`mac={m}` is not a MAC"))),
                        },
                        random: common::hex::decode(f.need_str("random")?)
                            .ok_or_else(|| f.bad("`random=` is not hex".into()))?,
                        uptime_ms: f.need("uptime_ms")?,
                    }),
                })
            }
        }
    }
}

#[cfg(feature = "json")]
fn parse_snapshot(json: &str) -> Result<Snapshot, ParseError> {
    serde_json::from_str(json.trim()).map_err(|e| ParseError::Malformed {
        word: MARK_SNAPSHOT,
        why: format!("JSON: {e}"),
    })
}

#[cfg(not(feature = "json"))]
fn parse_snapshot(_: &str) -> Result<Snapshot, ParseError> {
    Err(ParseError::Malformed {
        word: MARK_SNAPSHOT,
        why: "guest-protocol was built without its `json` feature".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input() -> SnapshotInput<'static> {
        SnapshotInput {
            seq: 2,
            uptime_ms: 5000,
            since_ready_ms: Some(1200),
            meminfo: "MemTotal:         102400 kB\nMemFree:  5000 kB\nHugePages_Total:       0\n",
            pid: Some(87),
            status: "Name:\tbeam.smp\nVmPeak:\t  100 kB\nVmRSS:\t   37000 kB\nRssAnon:\t 30000 kB\nThreads:\t9\nVmSwap:\t0 kB\n",
            smaps_rollup: "00400000-ffff [rollup]\nRss:  37000 kB\nPss:   36000 kB\n",
            zram_mm_stat: Some("  4096 1024 12288 0 12288 0 0 0 0\n"),
            in_force: None,
        }
    }

    #[test]
    fn snapshot_line_from_proc_text() {
        let line = Message::Snapshot(Box::new(Snapshot::from_proc(&input()))).to_string();
        assert_eq!(
            line,
            "IMGTOOL-SNAPSHOT {\"seq\":2,\"uptime_ms\":5000,\"since_ready_ms\":1200,\
             \"meminfo\":{\"MemFree\":5000,\"MemTotal\":102400},\
             \"process\":{\"pid\":87,\"status\":{\"RssAnon\":30000,\"VmPeak\":100,\"VmRSS\":37000,\"VmSwap\":0},\
             \"smaps_rollup\":{\"Pss\":36000,\"Rss\":37000}},\
             \"zram\":{\"orig_data_size\":4096,\"compr_data_size\":1024,\"mem_used_total\":12288},\
             \"in_force\":null}"
        );
        let none = Snapshot::from_proc(&SnapshotInput {
            pid: None,
            zram_mm_stat: None,
            since_ready_ms: None,
            ..input()
        });
        let line = Message::Snapshot(Box::new(none)).to_string();
        assert!(
            line.ends_with(",\"process\":null,\"zram\":null,\"in_force\":null}"),
            "{line}"
        );
        assert!(line.contains("\"since_ready_ms\":null,"), "{line}");
    }

    #[test]
    fn messages_round_trip() {
        let mut odd_keys = Snapshot::from_proc(&input());
        odd_keys.meminfo.insert("Quote\"Back\\slash\u{1}".into(), 7);
        let mut with_force = Snapshot::from_proc(&input());
        with_force.in_force = Some(InForce::from_proc(
            [("vm.swappiness".to_string(), "1".to_string())].into(),
            b"/usr/lib/erlang/erts-13.1.5/bin/beam.smp\0-S\x001:1\0-mode\0interactive\0",
            "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n/dev/zram0  partition\t49148\t\t0\t\t100\n",
        ));
        assert_eq!(
            with_force.in_force.as_ref().unwrap().cmdline[1..3],
            ["-S".to_string(), "1:1".to_string()]
        );
        assert_eq!(
            with_force.in_force.as_ref().unwrap().swaps,
            vec![("/dev/zram0".to_string(), 49148)]
        );
        let all = [
            Message::Log("applied 4 sysctls".into()),
            Message::Log(String::new()),
            Message::Ready {
                uptime_ms: 3500,
                pid: 80,
            },
            Message::Snapshot(Box::new(Snapshot::from_proc(&input()))),
            Message::Snapshot(Box::default()),
            Message::Snapshot(Box::new(odd_keys)),
            Message::Snapshot(Box::new(with_force)),
            Message::Exit {
                ended: Ended::Status(0),
                uptime_ms: 9,
            },
            Message::Exit {
                ended: Ended::Signal(9),
                uptime_ms: 10,
            },
            Message::Pong { uptime_ms: 1 },
            Message::Error("unknown command `x`".into()),
            Message::Identity(IdentityAnswer {
                serial: "sim-0001".into(),
                hostname: "sim-0001".into(),
                mac: Some("52:54:00:00:00:02".into()),
                random: (0..16).collect(),
                uptime_ms: 77,
            }),
            Message::Identity(IdentityAnswer {
                serial: "a".into(),
                hostname: "b".into(),
                ..Default::default()
            }),
        ];
        for m in all {
            let line = m.to_string();
            assert!(!line.contains('\n'), "{line}");
            assert_eq!(Message::parse(&format!("{line}\r\n")), Ok(m), "{line}");
        }
        assert_eq!(
            Message::parse("IMGTOOL-INIT two\nlines")
                .unwrap()
                .to_string(),
            "IMGTOOL-INIT two\nlines".replace('\n', " ")
        );
    }

    #[test]
    fn wait_status_words() {
        assert_eq!(Ended::from_wait_status(3 << 8), Ended::Status(3));
        assert_eq!(Ended::from_wait_status(9), Ended::Signal(9));
    }

    #[test]
    fn other_lines_and_malformed_ones() {
        for l in [
            "[    1.0] random kernel line",
            "",
            "IMGTOOL-READYX",
            " IMGTOOL-READY",
        ] {
            assert_eq!(Message::parse(l), Err(ParseError::NotProtocol), "{l:?}");
        }
        for l in [
            "IMGTOOL-READY uptime_ms=1",
            "IMGTOOL-READY uptime_ms=x pid=1",
            "IMGTOOL-READY uptime_ms=1 pid=-1",
            "IMGTOOL-READY uptime_ms=1 pid",
            "IMGTOOL-EXIT uptime_ms=9",
            "IMGTOOL-EXIT status=0 signal=9 uptime_ms=9",
            "IMGTOOL-EXIT status=0",
            "IMGTOOL-PONG",
            "IMGTOOL-SNAPSHOT {broken",
            "IMGTOOL-SNAPSHOT {\"seq\":1}",
            "IMGTOOL-IDENTITY serial=a hostname=b mac=zz random=00 uptime_ms=1",
            "IMGTOOL-IDENTITY serial=a hostname=b mac=none random=0 uptime_ms=1",
            "IMGTOOL-IDENTITY serial=a mac=none random=00 uptime_ms=1",
        ] {
            match Message::parse(l) {
                Err(ParseError::Malformed { word, why }) => {
                    assert!(l.starts_with(word), "{l}: {word}");
                    assert!(!why.is_empty());
                }
                other => panic!("{l}: {other:?}"),
            }
        }
        // A newer init may add fields.
        assert_eq!(
            Message::parse("IMGTOOL-PONG uptime_ms=5 load=1"),
            Ok(Message::Pong { uptime_ms: 5 })
        );
    }
}
