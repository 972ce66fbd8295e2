//! What the guest's init (rootfs/init) and the host agree on: the init's config file, the swap
//! header it writes, and the mounts it makes. The console protocol is the `guest-protocol` crate.
//!
//! This file is compiled twice: into the `rootfs` library (the host writes the config) and into
//! the init itself (`#[path]` include), so it uses `std` only.
//!
//! Swap header layout: `union swap_header` in include/linux/swap.h,
//! <https://github.com/torvalds/linux/blob/v6.1/include/linux/swap.h>.

use std::fmt::{self, Write as _};

/// Where the init reads its config inside the guest.
pub const CONFIG_PATH: &str = "/etc/imgtool-init.conf";
/// First line of a config file; a different version is refused.
pub const CONFIG_HEADER: &str = "# imgtool-init.conf v1";
/// The same binary as a helper in someone else's firmware (erlinit's `--pre-run-exec`): it is
/// started under this name and reads this config (same format, `role=helper`).
pub const HELPER_PATH: &str = "/usr/sbin/imgtool-helper";
pub const HELPER_CONFIG_PATH: &str = "/etc/imgtool-helper.conf";
/// The helper's console, the `virt` board's second UART (qemu::helper_console says why not a
/// virtconsole): the user's console stays erlinit's and IEx's.
pub const HELPER_CONSOLE: &str = "/dev/ttyAMA1";
/// The process a helper measures, by /proc/PID/comm (the BEAM's emulator).
pub const HELPER_PROGRAM: &str = "beam.smp";

// mount(2) flags (include/uapi/linux/mount.h); identical on every Linux architecture.
pub const MS_RDONLY: u64 = 1;
pub const MS_NOSUID: u64 = 2;
pub const MS_NODEV: u64 = 4;
pub const MS_NOEXEC: u64 = 8;
pub const MS_NOATIME: u64 = 1024;
pub const MS_NODIRATIME: u64 = 2048;
pub const MS_RELATIME: u64 = 1 << 21;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Zram {
    pub size_bytes: u64,
    /// Written to /sys/block/zram0/comp_algorithm (lzo-rle, lz4, zstd, ...).
    pub algorithm: String,
    /// swapon priority, 0..=32767.
    pub priority: i32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataMount {
    pub device: String,
    pub fstype: String,
    pub mountpoint: String,
    /// Comma-separated; known flags (noatime, nodev, ...) go to the flags word, the rest to data.
    pub options: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Program {
    pub exec: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct InitConfig {
    pub hostname: Option<String>,
    /// (key in dotted form, value), applied in order.
    pub sysctls: Vec<(String, String)>,
    /// (absolute /proc or /sys path, value): other kernel knobs, written after the sysctls
    /// (e.g. /sys/module/page_reporting/parameters/page_reporting_order).
    pub writes: Vec<(String, String)>,
    /// (path, value) written once the program is ready (e.g. /proc/sys/vm/drop_caches=1).
    pub ready_writes: Vec<(String, String)>,
    pub zram: Option<Zram>,
    pub data: Option<DataMount>,
    pub program: Program,
    /// A substring of the program's output that means "up"; none: ready once started.
    pub ready_match: Option<String>,
    /// Take a snapshot this long after ready, without being asked.
    pub snapshot_after_ready_ms: Option<u64>,
    /// Power off after that automatic snapshot (for unattended runs).
    pub poweroff_after_snapshot: bool,
    /// Answer TCP connections on this port with the identity file, then close.
    pub identity_port: Option<u16>,
    /// Run as a helper beside another PID 1 (erlinit): apply the knobs, then answer the
    /// protocol on [`HELPER_CONSOLE`]; `exec` is optional (a pre-run program to chain to).
    pub helper: bool,
    /// A helper's "ready": this long after the BEAM process appears (it cannot see the
    /// program's output, which goes to erlinit's console).
    pub ready_after_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub line: usize,
    pub msg: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: line {}: {}", CONFIG_PATH, self.line, self.msg)
    }
}

impl std::error::Error for ConfigError {}

impl InitConfig {
    /// Parse the config: `key=value` lines, `#` comments; list keys (`sysctl`, `arg`, `env`)
    /// repeat. Values are taken verbatim after the first `=` (no quoting, so any byte but
    /// newline fits in an argument).
    pub fn parse(text: &str) -> Result<InitConfig, ConfigError> {
        let mut c = InitConfig::default();
        let mut zram = Zram::default();
        let mut have_zram = false;
        let (mut dev, mut fstype, mut mnt, mut opts) = (None, None, None, String::new());
        let mut lines = text.lines().enumerate();
        match lines.next() {
            Some((_, l)) if l.trim_end() == CONFIG_HEADER => {}
            Some((_, l)) => {
                return Err(ConfigError {
                    line: 1,
                    msg: format!("expected `{CONFIG_HEADER}`, found `{l}`"),
                })
            }
            None => {
                return Err(ConfigError {
                    line: 1,
                    msg: "empty file".into(),
                })
            }
        }
        for (i, raw) in lines {
            let line = i + 1;
            let l = raw.strip_suffix('\r').unwrap_or(raw);
            if l.trim().is_empty() || l.trim_start().starts_with('#') {
                continue;
            }
            let err = |msg: String| ConfigError { line, msg };
            let (k, v) = l
                .split_once('=')
                .ok_or_else(|| err(format!("expected key=value, found `{l}`")))?;
            let num = |v: &str| -> Result<u64, ConfigError> {
                v.parse::<u64>()
                    .map_err(|_| err(format!("`{k}` needs a whole number, found `{v}`")))
            };
            let pair = |v: &str| -> Result<(String, String), ConfigError> {
                v.split_once('=')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| err(format!("`{k}` needs NAME=VALUE, found `{v}`")))
            };
            let knob = |v: &str| -> Result<(String, String), ConfigError> {
                let (p, val) = pair(v)?;
                knob_path_ok(&p).map_err(err)?;
                Ok((p, val))
            };
            match k {
                "hostname" => c.hostname = Some(v.into()),
                "sysctl" => c.sysctls.push(pair(v)?),
                "write" => c.writes.push(knob(v)?),
                "ready.write" => c.ready_writes.push(knob(v)?),
                "zram.size" => {
                    zram.size_bytes = num(v)?;
                    have_zram = true;
                }
                "zram.algorithm" => zram.algorithm = v.into(),
                "zram.priority" => {
                    zram.priority = num(v)?
                        .try_into()
                        .ok()
                        .filter(|p| *p <= 32767)
                        .ok_or_else(|| err("zram.priority must be 0..=32767".into()))?
                }
                "data.device" => dev = Some(v.to_string()),
                "data.fstype" => fstype = Some(v.to_string()),
                "data.mountpoint" => mnt = Some(v.to_string()),
                "data.options" => opts = v.to_string(),
                "exec" => c.program.exec = v.into(),
                "arg" => c.program.args.push(v.into()),
                "env" => c.program.env.push(pair(v)?),
                "cwd" => c.program.cwd = Some(v.into()),
                "ready.match" => c.ready_match = Some(v.into()).filter(|s: &String| !s.is_empty()),
                "snapshot.after-ready-ms" => c.snapshot_after_ready_ms = Some(num(v)?),
                "role" => match v {
                    "helper" => c.helper = true,
                    "init" => c.helper = false,
                    _ => return Err(err(format!("`role` is init or helper, found `{v}`"))),
                },
                "ready.after-ms" => c.ready_after_ms = Some(num(v)?),
                "identity.port" => {
                    c.identity_port = Some(
                        num(v)?
                            .try_into()
                            .ok()
                            .filter(|p| *p > 0)
                            .ok_or_else(|| err("identity.port must be 1..=65535".into()))?,
                    )
                }
                "snapshot.poweroff" => {
                    c.poweroff_after_snapshot = match v {
                        "true" => true,
                        "false" => false,
                        _ => return Err(err(format!("`{k}` is true or false, found `{v}`"))),
                    }
                }
                _ => return Err(err(format!("unknown key `{k}`"))),
            }
        }
        if have_zram {
            if zram.size_bytes == 0 {
                return Err(ConfigError {
                    line: 0,
                    msg: "zram.size must be more than 0".into(),
                });
            }
            c.zram = Some(zram);
        }
        if let Some(device) = dev {
            c.data = Some(DataMount {
                device,
                fstype: fstype.unwrap_or_else(|| "f2fs".into()),
                mountpoint: mnt.unwrap_or_else(|| "/root".into()),
                options: opts,
            });
        }
        if c.program.exec.is_empty() && !c.helper {
            return Err(ConfigError {
                line: 0,
                msg: "no `exec=` line: the init needs a program to start".into(),
            });
        }
        Ok(c)
    }

    /// The config file's text; `parse(render(c)) == c`.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "{CONFIG_HEADER}");
        if self.helper {
            let _ = writeln!(s, "role=helper");
        }
        if let Some(ms) = self.ready_after_ms {
            let _ = writeln!(s, "ready.after-ms={ms}");
        }
        if let Some(h) = &self.hostname {
            let _ = writeln!(s, "hostname={h}");
        }
        for (k, v) in &self.sysctls {
            let _ = writeln!(s, "sysctl={k}={v}");
        }
        for (k, v) in &self.writes {
            let _ = writeln!(s, "write={k}={v}");
        }
        for (k, v) in &self.ready_writes {
            let _ = writeln!(s, "ready.write={k}={v}");
        }
        if let Some(z) = &self.zram {
            let _ = writeln!(s, "zram.size={}", z.size_bytes);
            if !z.algorithm.is_empty() {
                let _ = writeln!(s, "zram.algorithm={}", z.algorithm);
            }
            let _ = writeln!(s, "zram.priority={}", z.priority);
        }
        if let Some(d) = &self.data {
            let _ = writeln!(s, "data.device={}", d.device);
            let _ = writeln!(s, "data.fstype={}", d.fstype);
            let _ = writeln!(s, "data.mountpoint={}", d.mountpoint);
            let _ = writeln!(s, "data.options={}", d.options);
        }
        let p = &self.program;
        if !p.exec.is_empty() {
            let _ = writeln!(s, "exec={}", p.exec);
        }
        for a in &p.args {
            let _ = writeln!(s, "arg={a}");
        }
        for (k, v) in &p.env {
            let _ = writeln!(s, "env={k}={v}");
        }
        if let Some(d) = &p.cwd {
            let _ = writeln!(s, "cwd={d}");
        }
        if let Some(m) = &self.ready_match {
            let _ = writeln!(s, "ready.match={m}");
        }
        if let Some(ms) = self.snapshot_after_ready_ms {
            let _ = writeln!(s, "snapshot.after-ready-ms={ms}");
        }
        if self.poweroff_after_snapshot {
            let _ = writeln!(s, "snapshot.poweroff=true");
        }
        if let Some(p) = self.identity_port {
            let _ = writeln!(s, "identity.port={p}");
        }
        s
    }
}

/// One mount(2) call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountStep {
    pub source: String,
    pub target: String,
    pub fstype: String,
    pub flags: u64,
    pub data: String,
    /// A failed optional mount is logged and boot goes on (the data partition may be blank).
    pub required: bool,
}

/// Split mount options into mount(2) flags and the filesystem's own option string.
pub fn split_mount_options(opts: &str) -> (u64, String) {
    let mut flags = 0;
    let mut rest = Vec::new();
    for o in opts.split(',').filter(|o| !o.is_empty()) {
        match o {
            "ro" => flags |= MS_RDONLY,
            "nosuid" => flags |= MS_NOSUID,
            "nodev" => flags |= MS_NODEV,
            "noexec" => flags |= MS_NOEXEC,
            "noatime" => flags |= MS_NOATIME,
            "nodiratime" => flags |= MS_NODIRATIME,
            "relatime" => flags |= MS_RELATIME,
            "rw" | "defaults" => {}
            other => rest.push(other),
        }
    }
    (flags, rest.join(","))
}

/// The mounts the init makes, in order: the kernel's pseudo filesystems, /tmp, then data.
pub fn mount_plan(c: &InitConfig) -> Vec<MountStep> {
    let step = |source: &str, target: &str, fstype: &str, flags, data: &str| MountStep {
        source: source.into(),
        target: target.into(),
        fstype: fstype.into(),
        flags,
        data: data.into(),
        required: true,
    };
    let mut v = vec![
        step(
            "proc",
            "/proc",
            "proc",
            MS_NOSUID | MS_NODEV | MS_NOEXEC,
            "",
        ),
        step(
            "sysfs",
            "/sys",
            "sysfs",
            MS_NOSUID | MS_NODEV | MS_NOEXEC,
            "",
        ),
        // CONFIG_DEVTMPFS_MOUNT may already have mounted it: EBUSY is fine there.
        step("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755"),
        step("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777"),
        // Run-time state such as the clone identity (IDENTITY_PATH).
        step("tmpfs", "/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755"),
    ];
    if let Some(d) = &c.data {
        let (flags, data) = split_mount_options(&d.options);
        v.push(MountStep {
            source: d.device.clone(),
            target: d.mountpoint.clone(),
            fstype: d.fstype.clone(),
            flags,
            data,
            required: false,
        });
    }
    v
}

/// `/proc/sys/...` path of a dotted sysctl name (`vm.swappiness` -> `/proc/sys/vm/swappiness`).
pub fn sysctl_path(key: &str) -> Option<String> {
    let ok = !key.is_empty()
        && key
            .split('.')
            .all(|p| !p.is_empty() && p != ".." && !p.contains('/'));
    ok.then(|| format!("/proc/sys/{}", key.replace('.', "/")))
}

/// A kernel knob the init may write: an absolute path under /proc/sys or /sys, no `..`, no `=`.
pub fn knob_path_ok(p: &str) -> Result<(), String> {
    let ok = (p.starts_with("/proc/sys/") || p.starts_with("/sys/"))
        && !p.contains('=')
        && p.split('/').skip(1).all(|c| !c.is_empty() && c != "..");
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{p}` is not a kernel knob path (an absolute path under /proc/sys/ or /sys/)"
        ))
    }
}

/// One page holding a version-1 swap header for a device of `device_bytes`, as mkswap writes it:
/// 1024 boot bytes, then version, last_page, nr_badpages, uuid, volume label, and
/// "SWAPSPACE2" in the page's last 10 bytes.
pub fn swap_header(page_size: usize, device_bytes: u64, uuid: [u8; 16]) -> Result<Vec<u8>, String> {
    if page_size < 4096 || !page_size.is_power_of_two() {
        return Err(format!(
            "page size {page_size} is not a power of two >= 4096"
        ));
    }
    let pages = device_bytes / page_size as u64;
    // The kernel needs the header page plus at least 9 more (mkswap's minimum is 10 pages).
    if pages < 10 {
        return Err(format!(
            "{device_bytes} bytes is too small for swap ({page_size}-byte pages, 10 needed)"
        ));
    }
    let last_page =
        u32::try_from(pages - 1).map_err(|_| "device too large for swap".to_string())?;
    let mut p = vec![0u8; page_size];
    p[1024..1028].copy_from_slice(&1u32.to_ne_bytes());
    p[1028..1032].copy_from_slice(&last_page.to_ne_bytes());
    // nr_badpages (1032..1036) stays 0; the label (1052..1068) stays empty.
    p[1036..1052].copy_from_slice(&uuid);
    p[page_size - 10..].copy_from_slice(b"SWAPSPACE2");
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> InitConfig {
        InitConfig {
            hostname: Some("nerves".into()),
            sysctls: vec![("vm.swappiness".into(), "1".into())],
            writes: vec![(
                "/sys/module/page_reporting/parameters/page_reporting_order".into(),
                "0".into(),
            )],
            ready_writes: vec![("/proc/sys/vm/drop_caches".into(), "1".into())],
            zram: Some(Zram {
                size_bytes: 32 << 20,
                algorithm: "lz4".into(),
                priority: 100,
            }),
            data: Some(DataMount {
                device: "/dev/vda3".into(),
                fstype: "f2fs".into(),
                mountpoint: "/root".into(),
                options: "noatime,background_gc=off".into(),
            }),
            program: Program {
                exec: "/usr/lib/erlang/bin/erlexec".into(),
                args: vec![
                    "-eval".into(),
                    "io:format(\"up = yes~n\").".into(),
                    "".into(),
                ],
                env: vec![("ROOTDIR".into(), "/usr/lib/erlang".into())],
                cwd: Some("/root".into()),
            },
            ready_match: Some("IMGTOOL-APP-UP".into()),
            snapshot_after_ready_ms: Some(1500),
            poweroff_after_snapshot: true,
            identity_port: Some(guest_protocol::IDENTITY_PORT),
            helper: false,
            ready_after_ms: None,
        }
    }

    #[test]
    fn config_round_trips() {
        let c = sample();
        let text = c.render();
        assert_eq!(InitConfig::parse(&text).unwrap(), c);
        // Arguments keep '=' and spaces; an empty argument survives.
        assert!(text.contains("arg=io:format(\"up = yes~n\").\n"));
        assert!(text.contains("\narg=\n"));
    }

    #[test]
    fn helper_config_round_trips_without_a_program() {
        let c = InitConfig {
            helper: true,
            ready_after_ms: Some(5000),
            program: Program::default(),
            ..sample()
        };
        let text = c.render();
        assert!(!text.contains("exec="), "{text}");
        assert_eq!(InitConfig::parse(&text).unwrap(), c);
        // An init still needs its program.
        let e = InitConfig::parse("# imgtool-init.conf v1\nsysctl=vm.swappiness=1\n").unwrap_err();
        assert!(e.msg.contains("exec="), "{e}");
        let e = InitConfig::parse("# imgtool-init.conf v1\nrole=boss\n").unwrap_err();
        assert!(e.msg.contains("init or helper"), "{e}");
    }

    #[test]
    fn config_errors_name_the_line() {
        let e = InitConfig::parse("# imgtool-init.conf v1\nexec=/x\nbogus=1\n").unwrap_err();
        assert_eq!(e.line, 3);
        assert!(e.msg.contains("unknown key `bogus`"), "{e}");
        let e = InitConfig::parse("# imgtool-init.conf v1\nexec=/x\nzram.size=lots\n").unwrap_err();
        assert_eq!(e.line, 3);
        let e = InitConfig::parse("# imgtool-init.conf v2\n").unwrap_err();
        assert_eq!(e.line, 1);
        let e = InitConfig::parse("# imgtool-init.conf v1\nsysctl=vm.swappiness\n").unwrap_err();
        assert!(e.msg.contains("NAME=VALUE"), "{e}");
        let e = InitConfig::parse("# imgtool-init.conf v1\n").unwrap_err();
        assert!(e.msg.contains("exec="), "{e}");
        for bad in ["identity.port=0", "identity.port=65536"] {
            let e = InitConfig::parse(&format!("# imgtool-init.conf v1\nexec=/x\n{bad}\n"))
                .unwrap_err();
            assert_eq!(e.line, 3, "{bad}");
            assert!(e.msg.contains("1..=65535"), "{bad}: {e}");
        }
        for bad in [
            "write=/etc/passwd=x",
            "ready.write=/sys/../etc/x=1",
            "write=proc=1",
        ] {
            let e = InitConfig::parse(&format!("# imgtool-init.conf v1\nexec=/x\n{bad}\n"))
                .unwrap_err();
            assert_eq!(e.line, 3, "{bad}");
            assert!(e.msg.contains("knob"), "{bad}: {e}");
        }
    }

    #[test]
    fn mount_plan_order_and_data_options() {
        let c = sample();
        let plan = mount_plan(&c);
        let targets: Vec<_> = plan.iter().map(|m| m.target.as_str()).collect();
        assert_eq!(targets, ["/proc", "/sys", "/dev", "/tmp", "/run", "/root"]);
        assert!(plan[..5].iter().all(|m| m.required));
        let data = &plan[5];
        assert!(!data.required);
        assert_eq!(data.fstype, "f2fs");
        assert_eq!(data.flags, MS_NOATIME);
        assert_eq!(data.data, "background_gc=off");
        let mut c = c;
        c.data = None;
        assert_eq!(mount_plan(&c).len(), 5);
    }

    #[test]
    fn sysctl_paths() {
        assert_eq!(
            sysctl_path("vm.dirty_background_ratio").unwrap(),
            "/proc/sys/vm/dirty_background_ratio"
        );
        assert!(sysctl_path("vm..x").is_none());
        assert!(sysctl_path("vm/../../etc").is_none());
        assert!(sysctl_path("").is_none());
    }

    #[test]
    fn swap_header_fields() {
        let uuid = *b"0123456789abcdef";
        let h = swap_header(4096, 32 << 20, uuid).unwrap();
        assert_eq!(h.len(), 4096);
        assert_eq!(&h[4086..], b"SWAPSPACE2");
        assert_eq!(u32::from_ne_bytes(h[1024..1028].try_into().unwrap()), 1);
        assert_eq!(
            u32::from_ne_bytes(h[1028..1032].try_into().unwrap()),
            (32 << 20) / 4096 - 1
        );
        assert_eq!(&h[1036..1052], &uuid);
        let h = swap_header(65536, 1 << 30, uuid).unwrap();
        assert_eq!(&h[65526..], b"SWAPSPACE2");
        assert!(swap_header(4096, 4096 * 9, uuid).is_err());
        assert!(swap_header(3000, 1 << 20, uuid).is_err());
    }
}
