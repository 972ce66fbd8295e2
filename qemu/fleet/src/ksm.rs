//! The host's kernel samepage merging (KSM), for guests that share most of their memory.
//!
//! KSM merges only private anonymous pages in areas marked mergeable
//! (<https://docs.kernel.org/admin-guide/mm/ksm.html>). A template clone's private pages are
//! its qemu heap, its TCG code buffer, the relocated parts of qemu and its libraries, and the
//! guest RAM pages it wrote since the restore (the saved RAM file is mapped privately). qemu
//! marks only guest RAM mergeable, so clones are started with `PR_SET_MEMORY_MERGE` (Linux 6.4+),
//! which makes every eligible area of the process mergeable, and with address-space
//! randomisation off, so that the heaps and relocated tables of clones are byte-identical and
//! merge too. That trade (no ASLR for the clones' qemu) is only made when KSM is on.

use std::fs;

use serde::Serialize;

const SYSFS: &str = "/sys/kernel/mm/ksm";
pub const KSM_RUN: &str = "/sys/kernel/mm/ksm/run";

/// Whether a run uses KSM: `auto` turns it on when this host lets us (root, a kernel with KSM
/// and `PR_SET_MEMORY_MERGE`), `on` requires it, `off` leaves the host alone.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KsmMode {
    #[default]
    Auto,
    On,
    Off,
}

impl std::str::FromStr for KsmMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(KsmMode::Auto),
            "on" => Ok(KsmMode::On),
            "off" => Ok(KsmMode::Off),
            _ => Err(format!("unknown KSM mode {s:?}: use auto, on or off")),
        }
    }
}

/// KSM switched on for the lifetime of this value; the host's old setting comes back on drop.
/// Merged pages stay merged after that until their owners write or exit.
pub struct Ksm {
    old: Option<String>,
}

impl Ksm {
    /// Turn KSM on, or say why this host cannot.
    pub fn on() -> Result<Ksm, String> {
        let old = fs::read_to_string(KSM_RUN).map_err(|e| format!("{KSM_RUN}: {e}"))?;
        fs::write(KSM_RUN, "1").map_err(|e| format!("writing 1 to {KSM_RUN}: {e}"))?;
        if fs::read_to_string(KSM_RUN).ok().as_deref().map(str::trim) != Some("1") {
            return Err(format!("{KSM_RUN} does not read 1 after writing it"));
        }
        Ok(Ksm { old: Some(old) })
    }

    /// A number from /sys/kernel/mm/ksm/NAME.
    pub fn stat(name: &str) -> Option<u64> {
        fs::read_to_string(format!("{SYSFS}/{name}"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// /sys/kernel/mm/ksm/pages_sharing now: pages saved by merging.
    pub fn pages_sharing() -> Option<u64> {
        Ksm::stat("pages_sharing")
    }

    /// CPU time of the ksmd kernel thread so far, in clock ticks: the price of merging, which a
    /// fair per-guest CPU figure includes.
    pub fn ksmd_ticks() -> Option<u64> {
        let pid = fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
            let name = e.file_name();
            let pid: u32 = name.to_str()?.parse().ok()?;
            let comm = fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
            (comm.trim() == "ksmd").then_some(pid)
        })?;
        crate::fleet::cpu_ticks(pid)
    }
}

impl Drop for Ksm {
    fn drop(&mut self) {
        if let Some(old) = &self.old {
            let _ = fs::write(KSM_RUN, old.trim());
        }
    }
}

/// Whether this kernel has `PR_SET_MEMORY_MERGE` (asked with its `GET` twin, which changes
/// nothing).
pub fn process_merge_supported() -> bool {
    // SAFETY: PR_GET_MEMORY_MERGE only reads a flag of this process.
    unsafe { libc::prctl(libc::PR_GET_MEMORY_MERGE, 0, 0, 0, 0) >= 0 }
}

/// For a child between fork and exec: make all of it mergeable and its layout fixed. Only
/// async-signal-safe calls.
pub fn child_setup() -> std::io::Result<()> {
    // SAFETY: personality and prctl have no memory-safety preconditions.
    unsafe {
        let current = libc::personality(0xffff_ffff);
        if current == -1
            || libc::personality((current | libc::ADDR_NO_RANDOMIZE) as libc::c_ulong) == -1
        {
            return Err(std::io::Error::last_os_error());
        }
        if libc::prctl(libc::PR_SET_MEMORY_MERGE, 1, 0, 0, 0) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_and_refuse_others() {
        assert_eq!("auto".parse::<KsmMode>(), Ok(KsmMode::Auto));
        assert_eq!("on".parse::<KsmMode>(), Ok(KsmMode::On));
        assert_eq!("off".parse::<KsmMode>(), Ok(KsmMode::Off));
        assert!("yes"
            .parse::<KsmMode>()
            .unwrap_err()
            .contains("auto, on or off"));
    }
}
