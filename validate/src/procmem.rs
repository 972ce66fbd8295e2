//! A process's memory as Linux reports it: `/proc/PID/status` (VmRSS, VmHWM) and
//! `/proc/PID/smaps_rollup` (Rss, Pss summed over all mappings).
//! Format: <https://docs.kernel.org/filesystems/proc.html> (tables 1-2 and "smaps_rollup").

use std::fs;

use crate::Error;

/// One reading of a process's memory, in KiB (the kernel's "kB" is KiB).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcMem {
    /// Resident set now (VmRSS).
    pub rss_kib: u64,
    /// Peak resident set since the process started (VmHWM).
    pub hwm_kib: u64,
    /// Proportional set size: shared pages divided among the processes sharing them.
    pub pss_kib: u64,
    /// Pss_Anon + Pss_Shmem: the anonymous and shmem part of PSS (for qemu: guest RAM, the TCG
    /// cache, its heap), which no other process shares unless it forked from this one. None on
    /// kernels older than 5.9, whose smaps_rollup lacks the split.
    pub anon_kib: Option<u64>,
}

/// `Key:   N kB` lines of status, meminfo or smaps_rollup; other lines are skipped.
pub fn kb_fields(text: &str) -> impl Iterator<Item = (&str, u64)> {
    text.lines().filter_map(|l| {
        let (k, rest) = l.split_once(':')?;
        let mut it = rest.split_whitespace();
        let n = it.next()?.parse().ok()?;
        (it.next()? == "kB").then_some((k.trim(), n))
    })
}

fn field(text: &str, name: &str) -> Option<u64> {
    kb_fields(text).find(|(k, _)| *k == name).map(|(_, v)| v)
}

/// VmRSS and VmHWM from the text of /proc/PID/status.
pub fn parse_status(text: &str) -> Option<(u64, u64)> {
    Some((field(text, "VmRSS")?, field(text, "VmHWM")?))
}

/// Pss from the text of /proc/PID/smaps_rollup.
pub fn parse_smaps_rollup(text: &str) -> Option<u64> {
    field(text, "Pss")
}

/// Pss_Anon + Pss_Shmem from the text of /proc/PID/smaps_rollup.
pub fn parse_anon(text: &str) -> Option<u64> {
    Some(field(text, "Pss_Anon")? + field(text, "Pss_Shmem")?)
}

/// Read a live process's memory. Fails when the process is gone (or is a zombie, whose status
/// has no VmRSS any more).
pub fn read(pid: u32) -> Result<ProcMem, Error> {
    let path = format!("/proc/{pid}/status");
    let status = fs::read_to_string(&path).map_err(|e| Error::Io(path.clone(), e))?;
    let (rss_kib, hwm_kib) = parse_status(&status).ok_or(Error::ProcGone(pid))?;
    let path = format!("/proc/{pid}/smaps_rollup");
    let rollup = fs::read_to_string(&path).map_err(|e| Error::Io(path.clone(), e))?;
    let pss_kib = parse_smaps_rollup(&rollup).ok_or(Error::ProcGone(pid))?;
    Ok(ProcMem {
        rss_kib,
        hwm_kib,
        pss_kib,
        anon_kib: parse_anon(&rollup),
    })
}

/// How many other processes run the same executable as `pid` (other qemus): they share its
/// binary and library pages, which lowers its PSS. 0 when /proc cannot tell.
/// The host's 1-minute load average (/proc/loadavg's first field); None where there is none.
pub fn loadavg() -> Option<f64> {
    fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

pub fn peers(pid: u32) -> u32 {
    let Ok(exe) = fs::read_link(format!("/proc/{pid}/exe")) else {
        return 0;
    };
    let Ok(dir) = fs::read_dir("/proc") else {
        return 0;
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&p| p != pid)
        .filter(|p| fs::read_link(format!("/proc/{p}/exe")).is_ok_and(|x| x == exe))
        .count() as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// Two processes of one executable see each other; a lone one sees none.
    #[test]
    fn peers_run_the_same_executable() {
        let dir = std::env::temp_dir().join(format!("imgtool-peers-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let exe = dir.join("sleepy");
        fs::copy("/bin/sleep", &exe).unwrap();
        let wait_exec = |c: &std::process::Child| {
            for _ in 0..200 {
                if fs::read_link(format!("/proc/{}/exe", c.id())).is_ok_and(|x| x == exe) {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            panic!("child never ran {}", exe.display());
        };
        let mut a = Command::new(&exe).arg("5").spawn().unwrap();
        wait_exec(&a);
        assert_eq!(peers(a.id()), 0);
        let mut b = Command::new(&exe).arg("5").spawn().unwrap();
        wait_exec(&b);
        assert_eq!(peers(a.id()), 1);
        for c in [&mut a, &mut b] {
            c.kill().unwrap();
            c.wait().unwrap();
        }
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn parses_real_proc_of_a_child() {
        let mut child = Command::new("sleep").arg("5").spawn().unwrap();
        // Until exec completes the child is a copy of this test binary.
        let comm = format!("/proc/{}/comm", child.id());
        for _ in 0..100 {
            if fs::read_to_string(&comm).unwrap().trim() == "sleep" {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        // Let the dynamic loader finish mapping libc; then sleep is idle.
        std::thread::sleep(std::time::Duration::from_millis(300));
        let m = read(child.id()).unwrap();
        // ps (procps) reads the same resident size through /proc/PID/stat.
        let ps = Command::new("ps")
            .args(["-o", "rss=", "-p", &child.id().to_string()])
            .output()
            .unwrap();
        let ps_rss: u64 = String::from_utf8_lossy(&ps.stdout).trim().parse().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(m.rss_kib.abs_diff(ps_rss) <= 64, "{m:?} vs ps {ps_rss}");
        // sleep maps libc: a few hundred KiB resident at least, and PSS can't exceed RSS.
        assert!(m.rss_kib > 100, "{m:?}");
        assert!(m.hwm_kib >= m.rss_kib, "{m:?}");
        assert!(m.pss_kib > 0 && m.pss_kib <= m.rss_kib, "{m:?}");
        // sleep's heap and stack are anonymous; they are part of its PSS.
        let anon = m.anon_kib.expect("this kernel splits PSS");
        assert!(anon > 0 && anon <= m.pss_kib, "{m:?}");
        // Once reaped, the process is gone and reading says so.
        assert!(read(child.id()).is_err());
    }

    #[test]
    fn our_own_figures_agree_with_the_kernel_text() {
        let status = fs::read_to_string("/proc/self/status").unwrap();
        let (rss, hwm) = parse_status(&status).unwrap();
        assert!(rss > 0 && hwm >= rss);
        let rollup = fs::read_to_string("/proc/self/smaps_rollup").unwrap();
        assert!(parse_smaps_rollup(&rollup).unwrap() > 0);
    }

    #[test]
    fn field_parsing() {
        let t = "Name:\tqemu\nVmHWM:\t  190000 kB\nVmRSS:\t  150000 kB\nThreads:\t5\nHugePages_Total: 0\n";
        assert_eq!(parse_status(t), Some((150000, 190000)));
        assert_eq!(parse_status("Name:\tzombie\nState:\tZ\n"), None);
        let r = "55a0-7ffd ---p 00000000 00:00 0 [rollup]\nRss:  1000 kB\nPss:   700 kB\nPss_Anon:  500 kB\n";
        assert_eq!(parse_smaps_rollup(r), Some(700));
        assert_eq!(parse_anon(r), None);
        let r = "Rss: 1000 kB\nPss: 700 kB\nPss_Anon: 500 kB\nPss_File: 150 kB\nPss_Shmem: 50 kB\n";
        assert_eq!(parse_anon(r), Some(550));
    }
}
