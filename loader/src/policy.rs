//! Which slot boots, and what the env must say afterwards: Nerves' A/B rules, plain Rust.
//!
//! Variables (Nerves' U-Boot conventions, <https://hexdocs.pm/nerves_runtime/readme.html>):
//! - `nerves_fw_active`: `a` or `b`.
//! - `upgrade_available`: `1` after an update that has not been validated yet.
//! - `bootcount`: boots tried since that update.
//! - `<slot>.kernel_lba`, `<slot>.kernel_args`, optional `<slot>.initrd_lba` + `<slot>.initrd_size`.
//!
//! Failback: with `upgrade_available=1`, the first boot sets `bootcount=1` (and writes the env);
//! a boot that finds `bootcount>=1` has not been validated by the new firmware, so it switches
//! to the other slot, clears `upgrade_available` and `bootcount`, and writes the env.

use alloc::format;
use alloc::string::{String, ToString};
use core::fmt;

use uboot_env::Env;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slot {
    A,
    B,
}

impl Slot {
    pub fn name(self) -> &'static str {
        match self {
            Slot::A => "a",
            Slot::B => "b",
        }
    }

    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }
}

/// What the policy decided about the env (printed by the loader).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    /// Nothing pending: boot the active slot, env untouched.
    Normal,
    /// First boot of a new firmware: bootcount set to 1.
    TryingUpgrade,
    /// The new firmware did not validate itself: back to the other slot.
    Failback { from: Slot },
}

/// A slot's boot inputs, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotConfig {
    pub slot: Slot,
    pub kernel_lba: u64,
    pub kernel_args: String,
    /// `(lba, size in bytes)`.
    pub initrd: Option<(u64, u64)>,
}

/// Everything the loader needs from the env.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub boot: SlotConfig,
    pub transition: Transition,
    /// The env was changed and must be written back before the kernel starts.
    pub env_changed: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PolicyError {
    /// `nerves_fw_active` is not `a` or `b`.
    BadActive { value: String },
    /// A required variable is missing.
    Missing { name: String },
    /// A numeric variable does not parse.
    BadNumber { name: String, value: String },
    /// An initrd needs both `<slot>.initrd_lba` and `<slot>.initrd_size`.
    HalfInitrd { slot: Slot },
    /// The env cannot hold the changed variables.
    Env(uboot_env::Error),
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PolicyError::BadActive { value } => {
                write!(f, "nerves_fw_active is {value:?}; expected \"a\" or \"b\"")
            }
            PolicyError::Missing { name } => write!(f, "env variable {name} is not set"),
            PolicyError::BadNumber { name, value } => {
                write!(f, "env variable {name}={value:?} is not a number")
            }
            PolicyError::HalfInitrd { slot } => write!(
                f,
                "{s}.initrd_lba and {s}.initrd_size must be set together",
                s = slot.name()
            ),
            PolicyError::Env(e) => write!(f, "cannot update the env: {e}"),
        }
    }
}

/// Decimal, or hex with `0x`, as U-Boot scripts and fwup's `${...}` write them.
pub fn parse_number(s: &str) -> Option<u64> {
    let s = s.trim();
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

fn number(env: &Env, name: &str) -> Result<Option<u64>, PolicyError> {
    match env.get(name) {
        None => Ok(None),
        Some(v) => parse_number(v).map(Some).ok_or(PolicyError::BadNumber {
            name: name.to_string(),
            value: v.to_string(),
        }),
    }
}

fn active_slot(env: &Env) -> Result<Slot, PolicyError> {
    match env.get("nerves_fw_active") {
        // An env without the variable (a fresh, hand-made one) boots slot a.
        None => Ok(Slot::A),
        Some("a") => Ok(Slot::A),
        Some("b") => Ok(Slot::B),
        Some(v) => Err(PolicyError::BadActive {
            value: v.to_string(),
        }),
    }
}

/// The boot inputs of one slot.
pub fn slot_config(env: &Env, slot: Slot) -> Result<SlotConfig, PolicyError> {
    let s = slot.name();
    let lba_name = format!("{s}.kernel_lba");
    let kernel_lba = number(env, &lba_name)?.ok_or(PolicyError::Missing { name: lba_name })?;
    let kernel_args = env
        .get(&format!("{s}.kernel_args"))
        .unwrap_or("")
        .to_string();
    let initrd = match (
        number(env, &format!("{s}.initrd_lba"))?,
        number(env, &format!("{s}.initrd_size"))?,
    ) {
        (Some(lba), Some(size)) => Some((lba, size)),
        (None, None) => None,
        _ => return Err(PolicyError::HalfInitrd { slot }),
    };
    Ok(SlotConfig {
        slot,
        kernel_lba,
        kernel_args,
        initrd,
    })
}

fn set(env: &mut Env, name: &str, value: &str) -> Result<(), PolicyError> {
    env.set(name, value).map_err(PolicyError::Env)
}

/// Decide the slot and apply the A/B bookkeeping to `env`.
pub fn decide(env: &mut Env) -> Result<Decision, PolicyError> {
    let active = active_slot(env)?;
    let upgrade = env.get("upgrade_available") == Some("1");
    let bootcount = number(env, "bootcount")?.unwrap_or(0);

    let (slot, transition) = if !upgrade {
        (active, Transition::Normal)
    } else if bootcount == 0 {
        set(env, "bootcount", "1")?;
        (active, Transition::TryingUpgrade)
    } else {
        let other = active.other();
        set(env, "nerves_fw_active", other.name())?;
        set(env, "upgrade_available", "0")?;
        set(env, "bootcount", "0")?;
        (other, Transition::Failback { from: active })
    };
    Ok(Decision {
        boot: slot_config(env, slot)?,
        transition,
        env_changed: transition != Transition::Normal,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Env {
        let mut base = Env::from_pairs([
            ("a.kernel_lba", "272"),
            ("a.kernel_args", "root=/dev/vda1 console=ttyAMA0"),
            ("b.kernel_lba", "0x19110"),
            ("b.kernel_args", "root=/dev/vda2 console=ttyAMA0"),
        ])
        .unwrap();
        for (n, v) in pairs {
            base.set(n, v).unwrap();
        }
        base
    }

    #[test]
    fn normal_boot_uses_the_active_slot_and_leaves_the_env_alone() {
        let mut e = env(&[("nerves_fw_active", "b"), ("upgrade_available", "0")]);
        let before = e.clone();
        let d = decide(&mut e).unwrap();
        assert_eq!(d.boot.slot, Slot::B);
        assert_eq!(d.boot.kernel_lba, 0x19110);
        assert_eq!(d.boot.kernel_args, "root=/dev/vda2 console=ttyAMA0");
        assert_eq!(d.transition, Transition::Normal);
        assert!(!d.env_changed);
        assert_eq!(e, before);
    }

    #[test]
    fn missing_active_means_a() {
        let mut e = env(&[]);
        assert_eq!(decide(&mut e).unwrap().boot.slot, Slot::A);
    }

    #[test]
    fn upgrade_try_then_failback() {
        let mut e = env(&[
            ("nerves_fw_active", "b"),
            ("upgrade_available", "1"),
            ("bootcount", "0"),
        ]);
        // First boot of the new firmware: try it, count the try.
        let d = decide(&mut e).unwrap();
        assert_eq!(d.boot.slot, Slot::B);
        assert_eq!(d.transition, Transition::TryingUpgrade);
        assert!(d.env_changed);
        assert_eq!(e.get("bootcount"), Some("1"));
        assert_eq!(e.get("upgrade_available"), Some("1"));

        // It never validated (upgrade_available still 1): the next boot falls back.
        let d = decide(&mut e).unwrap();
        assert_eq!(d.boot.slot, Slot::A);
        assert_eq!(d.boot.kernel_lba, 272);
        assert_eq!(d.transition, Transition::Failback { from: Slot::B });
        assert!(d.env_changed);
        assert_eq!(e.get("nerves_fw_active"), Some("a"));
        assert_eq!(e.get("upgrade_available"), Some("0"));
        assert_eq!(e.get("bootcount"), Some("0"));

        // And stays there.
        let d = decide(&mut e).unwrap();
        assert_eq!(d.boot.slot, Slot::A);
        assert!(!d.env_changed);
    }

    #[test]
    fn validated_upgrade_boots_normally() {
        // The new firmware validated itself: upgrade_available=0, bootcount left at 1.
        let mut e = env(&[
            ("nerves_fw_active", "b"),
            ("upgrade_available", "0"),
            ("bootcount", "1"),
        ]);
        let d = decide(&mut e).unwrap();
        assert_eq!(d.boot.slot, Slot::B);
        assert!(!d.env_changed);
    }

    #[test]
    fn missing_bootcount_counts_as_zero() {
        let mut e = env(&[("nerves_fw_active", "a"), ("upgrade_available", "1")]);
        let d = decide(&mut e).unwrap();
        assert_eq!(d.transition, Transition::TryingUpgrade);
        assert_eq!(e.get("bootcount"), Some("1"));
    }

    #[test]
    fn errors_name_the_variable() {
        let mut e = env(&[("nerves_fw_active", "c")]);
        let err = decide(&mut e).unwrap_err();
        assert_eq!(
            format!("{err}"),
            "nerves_fw_active is \"c\"; expected \"a\" or \"b\""
        );

        let mut e = env(&[("nerves_fw_active", "a")]);
        e.unset("a.kernel_lba");
        assert_eq!(
            format!("{}", decide(&mut e).unwrap_err()),
            "env variable a.kernel_lba is not set"
        );

        let mut e = env(&[("a.kernel_lba", "12x")]);
        assert_eq!(
            decide(&mut e).unwrap_err(),
            PolicyError::BadNumber {
                name: "a.kernel_lba".into(),
                value: "12x".into()
            }
        );

        let mut e = env(&[("a.initrd_lba", "5000")]);
        assert_eq!(
            decide(&mut e).unwrap_err(),
            PolicyError::HalfInitrd { slot: Slot::A }
        );
    }

    #[test]
    fn initrd_and_numbers() {
        let mut e = env(&[("a.initrd_lba", "0x1000"), ("a.initrd_size", "123456")]);
        assert_eq!(decide(&mut e).unwrap().boot.initrd, Some((4096, 123456)));
        assert_eq!(parse_number(" 42 "), Some(42));
        assert_eq!(parse_number("0X1f"), Some(31));
        assert_eq!(parse_number(""), None);
        assert_eq!(parse_number("-1"), None);
    }
}
