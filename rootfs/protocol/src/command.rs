//! Host -> init: the commands the init takes on its console.

use std::fmt::{self, Write as _};

use crate::{ParseError, CMD_IDENTITY, CMD_PING, CMD_POWEROFF, CMD_SNAPSHOT};

/// What a console line from the host asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsoleCommand {
    /// Print one [`crate::Message::Snapshot`].
    Snapshot,
    /// Answer with [`crate::Message::Pong`].
    Ping,
    /// Stop the program (SIGTERM, then SIGKILL after 5 s) and power off.
    Poweroff,
    /// Apply a clone's identity; answered with [`crate::Message::Identity`].
    Identity(Identity),
}

impl ConsoleCommand {
    /// Recognise a command line (surrounding blanks and a trailing CR are ignored). An
    /// `identity` line whose sum does not match is malformed.
    pub fn parse(line: &str) -> Result<ConsoleCommand, ParseError> {
        let l = line.trim();
        match l {
            CMD_SNAPSHOT => Ok(ConsoleCommand::Snapshot),
            CMD_PING => Ok(ConsoleCommand::Ping),
            CMD_POWEROFF => Ok(ConsoleCommand::Poweroff),
            _ if l.split(' ').next() == Some(CMD_IDENTITY) => {
                Identity::parse(l).map(ConsoleCommand::Identity)
            }
            _ => Err(ParseError::NotProtocol),
        }
    }
}

impl fmt::Display for ConsoleCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConsoleCommand::Snapshot => f.write_str(CMD_SNAPSHOT),
            ConsoleCommand::Ping => f.write_str(CMD_PING),
            ConsoleCommand::Poweroff => f.write_str(CMD_POWEROFF),
            ConsoleCommand::Identity(id) => f.write_str(&id.to_line()),
        }
    }
}

/// A clone's identity, given by the host.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Identity {
    pub serial: String,
    pub hostname: String,
    /// `aa:bb:cc:dd:ee:ff`, when the guest has a network device.
    pub mac: Option<String>,
    /// Bytes to mix into the kernel's RNG and credit.
    pub entropy: Vec<u8>,
}

/// 32-bit FNV-1a: a check on a console line, not a security measure.
pub fn fnv1a(data: &[u8]) -> u32 {
    data.iter().fold(0x811c_9dc5u32, |h, &b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// Characters allowed in serials and hostnames: they travel as one console word.
pub fn is_identity_word(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

pub(crate) fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for o in &mut out {
        let p = parts.next()?;
        *o = common::hex::decode(p).filter(|b| b.len() == 1)?[0];
    }
    parts.next().is_none().then_some(out)
}

impl Identity {
    /// The MAC as bytes (checked when the line was parsed).
    pub fn mac_bytes(&self) -> Option<[u8; 6]> {
        self.mac.as_deref().and_then(parse_mac)
    }

    /// The command line the host sends.
    pub fn to_line(&self) -> String {
        let mut l = format!(
            "{CMD_IDENTITY} serial={} hostname={}",
            self.serial, self.hostname
        );
        if let Some(m) = &self.mac {
            let _ = write!(l, " mac={m}");
        }
        let _ = write!(l, " entropy={}", common::hex::encode(&self.entropy));
        let sum = fnv1a(l.as_bytes());
        let _ = write!(l, " sum={sum:08x}");
        l
    }

    /// Parse and check a line made by [`Identity::to_line`].
    pub fn parse(line: &str) -> Result<Identity, ParseError> {
        let bad = |why: &str| ParseError::Malformed {
            word: CMD_IDENTITY,
            why: why.to_string(),
        };
        let (body, sum) = line
            .trim()
            .rsplit_once(" sum=")
            .ok_or_else(|| bad("no `sum=` at the end"))?;
        let sum_ok = sum.len() == 8
            && common::hex::decode(sum).is_some()
            && u32::from_str_radix(sum, 16).ok() == Some(fnv1a(body.as_bytes()));
        if !sum_ok {
            return Err(bad("the sum does not match (line damaged in transit)"));
        }
        let mut words = body.split(' ');
        if words.next() != Some(CMD_IDENTITY) {
            return Err(bad("does not start with `identity `"));
        }
        let mut id = Identity::default();
        for w in words {
            let (k, v) = w
                .split_once('=')
                .ok_or_else(|| bad("a word is not key=value"))?;
            match k {
                "serial" if is_identity_word(v) => id.serial = v.to_string(),
                "hostname" if is_identity_word(v) => id.hostname = v.to_string(),
                "mac" if parse_mac(v).is_some() => id.mac = Some(v.to_ascii_lowercase()),
                "entropy" if v.len() <= 1024 => {
                    id.entropy = common::hex::decode(v).ok_or_else(|| bad("entropy is not hex"))?
                }
                _ => return Err(bad(&format!("bad field `{w}`"))),
            }
        }
        if id.serial.is_empty() || id.hostname.is_empty() {
            return Err(bad("needs serial= and hostname="));
        }
        Ok(id)
    }

    /// What the init writes to [`crate::IDENTITY_PATH`] (and Nerves' name for the serial).
    pub fn file_text(&self) -> String {
        let mut t = format!(
            "serial={}\nnerves_serial_number={}\nhostname={}\n",
            self.serial, self.serial, self.hostname
        );
        if let Some(m) = &self.mac {
            let _ = writeln!(t, "mac={m}");
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Identity {
        Identity {
            serial: "sim-0017".into(),
            hostname: "nerves-0017".into(),
            mac: Some("52:54:00:12:34:56".into()),
            entropy: (0..32).collect(),
        }
    }

    #[test]
    fn commands_round_trip() {
        for c in [
            ConsoleCommand::Snapshot,
            ConsoleCommand::Ping,
            ConsoleCommand::Poweroff,
            ConsoleCommand::Identity(sample()),
            ConsoleCommand::Identity(Identity {
                mac: None,
                entropy: vec![],
                ..sample()
            }),
        ] {
            assert_eq!(ConsoleCommand::parse(&c.to_string()), Ok(c.clone()), "{c}");
            assert_eq!(ConsoleCommand::parse(&format!(" {c}\r")), Ok(c));
        }
    }

    #[test]
    fn other_lines_are_not_commands() {
        for l in ["snap", "", "ping pong", "SNAPSHOT", "identityx"] {
            assert_eq!(
                ConsoleCommand::parse(l),
                Err(ParseError::NotProtocol),
                "{l:?}"
            );
        }
    }

    #[test]
    fn identity_line_shape_and_damage() {
        let id = sample();
        let line = id.to_line();
        assert!(line.starts_with(
            "identity serial=sim-0017 hostname=nerves-0017 mac=52:54:00:12:34:56 entropy=000102"
        ));
        assert_eq!(id.mac_bytes(), Some([0x52, 0x54, 0, 0x12, 0x34, 0x56]));
        // A chunk lost in the middle, or a changed byte, fails the sum.
        let cut = format!("{}{}", &line[..40], &line[56..]);
        let malformed =
            |l: &str| matches!(ConsoleCommand::parse(l), Err(ParseError::Malformed { .. }));
        assert!(malformed(&cut));
        assert!(malformed(&line.replace("0017", "0018")));
        assert!(malformed("identity serial=a hostname=b"));
        assert_eq!(
            ConsoleCommand::parse(&line[3..]),
            Err(ParseError::NotProtocol)
        );
        // Words that would break the line, or a bad MAC, are refused even with a good sum.
        for bad in [
            Identity {
                serial: "a b".into(),
                ..sample()
            },
            Identity {
                mac: Some("52:54:00:12:34".into()),
                ..sample()
            },
            Identity {
                mac: Some("52:54:00:12:34:+5".into()),
                ..sample()
            },
            Identity {
                hostname: String::new(),
                ..sample()
            },
        ] {
            assert!(malformed(&bad.to_line()), "{}", bad.to_line());
        }
        assert!(id.file_text().contains("nerves_serial_number=sim-0017\n"));
    }
}
