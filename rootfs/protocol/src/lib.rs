//! The console protocol between imgtool's guest init (rootfs/init) and the host (`validate`,
//! the fleet): one line per message.
//!
//! - The host sends [`ConsoleCommand`]s: `snapshot`, `ping`, `poweroff`, `identity ...`.
//! - The init prints [`Message`]s, each starting with a marker word (`IMGTOOL-READY`, ...), among
//!   the program's own output and the kernel's.
//!
//! Both sides format and parse through these types, so the marker strings live here only.
//! Parsers take untrusted console text: they return errors, never panic. Unknown `key=value`
//! fields are ignored, so a newer init can add some without breaking an older host.

mod command;
mod message;

pub use command::{fnv1a, is_identity_word, ConsoleCommand, Identity};
pub use message::{
    parse_kb_fields, Ended, IdentityAnswer, InForce, Message, ProcessMem, Snapshot, SnapshotInput,
    ZramStat,
};

use std::fmt;

// A macro, so the ready marker can also be spliced into READY_REGEX at compile time.
macro_rules! mark_ready {
    () => {
        "IMGTOOL-READY"
    };
}

/// `IMGTOOL-INIT text`: the init's own log lines.
pub const MARK_LOG: &str = "IMGTOOL-INIT";
/// `IMGTOOL-READY uptime_ms=N pid=P`: the program said it is up.
pub const MARK_READY: &str = mark_ready!();
/// A regex for the ready line, for hosts that wait on a console with regexes.
pub const READY_REGEX: &str = concat!("^", mark_ready!(), "( |$)");
/// `IMGTOOL-SNAPSHOT {json}`: one memory snapshot, one line.
pub const MARK_SNAPSHOT: &str = "IMGTOOL-SNAPSHOT";
/// `IMGTOOL-EXIT status=N uptime_ms=N` (or `signal=N`): the program ended; poweroff follows.
pub const MARK_EXIT: &str = "IMGTOOL-EXIT";
/// `IMGTOOL-PONG uptime_ms=N`: answer to `ping`.
pub const MARK_PONG: &str = "IMGTOOL-PONG";
/// `IMGTOOL-ERROR what`: a console command could not be carried out.
pub const MARK_ERROR: &str = "IMGTOOL-ERROR";
/// `IMGTOOL-IDENTITY serial=S hostname=H mac=M random=HEX uptime_ms=N`: the identity the init
/// applied (answer to `identity`), with 16 bytes it then read from the kernel's RNG.
pub const MARK_IDENTITY: &str = "IMGTOOL-IDENTITY";

/// Commands the init takes on the console, one per line.
pub const CMD_SNAPSHOT: &str = "snapshot";
pub const CMD_PING: &str = "ping";
pub const CMD_POWEROFF: &str = "poweroff";
/// `identity serial=S hostname=H [mac=M] entropy=HEX sum=FNV`: a clone's own identity, sent by
/// the host right after a template is restored. The sum guards against a line cut short while
/// the serial port's state was being restored; the host repeats the line until it is answered.
pub const CMD_IDENTITY: &str = "identity";

/// Where the init writes the applied identity (`key=value` lines, written whole by rename).
/// A program that needs its identity waits for this file: a template is saved before it exists.
pub const IDENTITY_PATH: &str = "/run/imgtool/identity";
/// The TCP port on which the shipped BEAM guest's init answers with the identity file
/// (`identity.port`), and `imgtool fleet run --guest-port`'s default.
pub const IDENTITY_PORT: u16 = 4040;

/// Why a console line is not a message or command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// No marker or command word: program output, kernel messages, a typo.
    NotProtocol,
    /// The marker or command is there but the rest is not what it must be.
    Malformed { word: &'static str, why: String },
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::NotProtocol => write!(f, "not a line of imgtool's console protocol"),
            ParseError::Malformed { word, why } => write!(f, "malformed `{word}` line: {why}"),
        }
    }
}

impl std::error::Error for ParseError {}

/// The `key=value` words after a marker. Words without `=` are refused.
pub(crate) struct Fields<'a> {
    word: &'static str,
    pairs: Vec<(&'a str, &'a str)>,
}

impl<'a> Fields<'a> {
    pub(crate) fn parse(word: &'static str, rest: &'a str) -> Result<Self, ParseError> {
        let pairs = rest
            .split_whitespace()
            .map(|w| {
                w.split_once('=').ok_or_else(|| ParseError::Malformed {
                    word,
                    why: format!("`{w}` is not key=value"),
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Fields { word, pairs })
    }

    pub(crate) fn bad(&self, why: String) -> ParseError {
        ParseError::Malformed {
            word: self.word,
            why,
        }
    }

    pub(crate) fn get(&self, key: &str) -> Option<&'a str> {
        self.pairs.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
    }

    pub(crate) fn num<T: std::str::FromStr>(&self, key: &str) -> Result<Option<T>, ParseError> {
        self.get(key)
            .map(|v| {
                v.parse()
                    .map_err(|_| self.bad(format!("`{key}={v}` is not a number")))
            })
            .transpose()
    }

    pub(crate) fn need<T: std::str::FromStr>(&self, key: &str) -> Result<T, ParseError> {
        self.num(key)?
            .ok_or_else(|| self.bad(format!("no `{key}=`")))
    }

    pub(crate) fn need_str(&self, key: &str) -> Result<&'a str, ParseError> {
        self.get(key)
            .ok_or_else(|| self.bad(format!("no `{key}=`")))
    }
}
