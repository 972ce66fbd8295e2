//! VM templates: a guest booted once to readiness and saved, then restored many times, each
//! clone mapping the saved RAM copy-on-write.
//!
//! Follows qemu's VM templating (docs/system/vm-templating.rst,
//! <https://www.qemu.org/docs/master/system/vm-templating.html>): the template runs with its
//! RAM in a file (`memory-backend-file,share=on`), is stopped at readiness and migrated to a
//! state file with the `x-ignore-shared` capability, so the RAM stays in its file and the state
//! file holds only the devices. A clone maps the RAM file privately
//! (`share=off,readonly=on,rom=off`): pages it only reads stay shared in the page cache, pages
//! it writes become its own. The disk is a qcow2 overlay over the raw image, saved with the
//! state, so every clone sees the filesystem its kernel has cached; each clone writes to its own
//! overlay on top.
//!
//! The manifest records what a restore must match: the qemu version, the accelerator, `-m`,
//! the image's sha256. A mismatch is refused before any qemu starts.

use std::fs;
use std::io::Read as _;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use qapi::qmp;
use regex::Regex;
use serde::{Deserialize, Serialize};
use validate::console::{Console, Wait};

use crate::{Accel, Error, QEMU};

/// Bump when the template directory's layout or the manifest's meaning changes.
pub const TEMPLATE_SCHEMA: u32 = 1;
pub const MANIFEST: &str = "manifest.json";
pub const RAM_FILE: &str = "ram";
pub const STATE_FILE: &str = "state";
pub const DISK_FILE: &str = "disk.qcow2";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub schema: u32,
    /// `qemu-system-aarch64 --version`'s first line.
    pub qemu_version: String,
    pub accel: String,
    /// qemu -m, as given.
    pub memory: String,
    pub memory_bytes: u64,
    /// The raw image the overlay sits on (absolute), its size and sha256.
    pub image: String,
    pub image_size: u64,
    pub image_sha256: String,
    /// The memory profile the image was built with, when known.
    pub profile: Option<String>,
    /// Whether the template has a virtio network device (clones then get one, with a MAC each).
    pub net: bool,
    /// Whether the template has imgtool's helper console ([`crate::helper_console`], a second
    /// UART): a firmware whose PID 1 is its own (erlinit) takes its identity from the helper
    /// there, so each clone gets one too, on its own socket, and the machine stays the template's.
    #[serde(default)]
    pub helper: bool,
    /// The full argv the template booted with.
    pub argv: Vec<String>,
    /// The argv for a clone, before its own disk overlay, RAM mapping, network and incoming
    /// state are added (see [`restore_argv`]).
    pub clone_base: Vec<String>,
    /// Spawn to readiness of the template's boot, and to the saved state.
    pub boot_s: f64,
    pub save_s: f64,
    /// Size of the device state file in bytes.
    pub state_bytes: u64,
}

/// Parse a qemu -m size (`110M`, `1G`, `131072K`, bare number = MiB) into bytes.
pub fn memory_bytes(m: &str) -> Result<u64, Error> {
    let t = m.trim();
    let (num, mult) = match t.chars().last() {
        Some('K' | 'k') => (&t[..t.len() - 1], 1u64 << 10),
        Some('M' | 'm') => (&t[..t.len() - 1], 1 << 20),
        Some('G' | 'g') => (&t[..t.len() - 1], 1 << 30),
        Some('T' | 't') => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1 << 20),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .filter(|&b| b > 0)
        .ok_or_else(|| Error::Template(format!("-m {m:?}: not a memory size (e.g. 110M)")))
}

/// The first line of `qemu-system-aarch64 --version`.
pub fn qemu_version() -> Result<String, Error> {
    let out = Command::new(QEMU)
        .arg("--version")
        .output()
        .map_err(Error::Spawn)?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or("")
        .trim()
        .to_string())
}

fn sha256_file(p: &Path) -> Result<String, Error> {
    common::hash::sha256_file(p).map_err(|source| Error::Io {
        what: "hashing the template's image".into(),
        source,
    })
}

/// Drop the RAM backend a profile chose (memfd): a template's RAM must be a file.
fn without_ram_backend(extra: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < extra.len() {
        let a = &extra[i];
        let next = extra.get(i + 1).map(String::as_str).unwrap_or("");
        if (a == "-object" && next.starts_with("memory-backend-"))
            || ((a == "-machine" || a == "-M") && next.starts_with("memory-backend="))
        {
            i += 2;
            continue;
        }
        out.push(a.clone());
        i += 1;
    }
    out
}

fn ram_object(dir: &Path, bytes: u64, template: bool) -> String {
    let path = dir.join(RAM_FILE).to_string_lossy().replace(',', ",,");
    if template {
        format!("memory-backend-file,id=imgtool-ram,size={bytes},mem-path={path},share=on")
    } else {
        format!(
            "memory-backend-file,id=imgtool-ram,size={bytes},mem-path={path},share=off,readonly=on,rom=off"
        )
    }
}

/// What `save` needs.
pub struct SaveOptions<'a> {
    /// The raw image to boot.
    pub image: &'a Path,
    pub dir: &'a Path,
    pub memory: &'a str,
    pub net: bool,
    pub accel: Accel,
    /// Profile qemu arguments (tb-size, balloon, ...); a RAM backend among them is replaced.
    pub extra: &'a [String],
    pub loader: &'a Path,
    pub profile: Option<String>,
    pub marker: Regex,
    pub timeout: Duration,
    /// Time between readiness and the save (the init's after-ready knobs run, the guest idles).
    pub settle: Duration,
    pub console_copy: Option<Box<dyn std::io::Write + Send>>,
    /// Give the template imgtool's helper console and save it only once a line matching this
    /// regex came there too (the helper's ready): for a firmware whose PID 1 is its own.
    pub helper_ready: Option<Regex>,
}

/// How long a helper console may stay silent after the marker before the firmware counts as
/// having no helper: the helper speaks when it starts, before the firmware's VM.
const HELPER_SILENCE: Duration = Duration::from_secs(3);

/// Connect to a [`crate::helper_console`] socket (qemu makes it before the guest runs),
/// retrying until `limit`; the console's lines can then be waited for as the serial console's.
/// `copy` receives every byte (a log file).
pub fn connect_helper(
    path: &Path,
    limit: Duration,
    copy: Option<Box<dyn std::io::Write + Send>>,
) -> Result<Console, Error> {
    let deadline = Instant::now() + limit;
    let s = loop {
        match UnixStream::connect(path) {
            Ok(s) => break s,
            Err(e) if Instant::now() >= deadline => {
                return Err(Error::Io {
                    what: format!("connecting to the helper console {}", path.display()),
                    source: e,
                })
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    };
    let r = s.try_clone().map_err(|source| Error::Io {
        what: "helper console socket".into(),
        source,
    })?;
    Ok(Console::with_input(r, Some(Box::new(s)), copy))
}

/// A short socket path for a helper console (a unix socket's path has at most 107 bytes):
/// `dir/NAME` when short enough, else a fresh directory under the temp dir, removed with the
/// returned guard.
fn short_socket(dir: &Path, name: &str) -> Result<(std::path::PathBuf, Option<TempDir>), Error> {
    let p = dir.join(name);
    if p.as_os_str().len() < 100 {
        return Ok((p, None));
    }
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let d = std::env::temp_dir().join(format!(
        "imgtool-tpl-{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    ));
    fs::create_dir_all(&d).map_err(|source| Error::Io {
        what: format!("creating {}", d.display()),
        source,
    })?;
    Ok((d.join(name), Some(TempDir(d))))
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Boot `image` to readiness and save a template in `dir` (created; must be empty or absent).
pub fn save(o: SaveOptions) -> Result<Manifest, Error> {
    crate::check_image(o.image)?;
    let image = std::path::absolute(o.image).map_err(|source| Error::Io {
        what: format!("resolving {}", o.image.display()),
        source,
    })?;
    let io = |what: String| move |source| Error::Io { what, source };
    if o.dir.exists()
        && fs::read_dir(o.dir)
            .map_err(io(format!("reading {}", o.dir.display())))?
            .next()
            .is_some()
    {
        return Err(Error::Template(format!(
            "{}: not empty; give a new directory for the template",
            o.dir.display()
        )));
    }
    fs::create_dir_all(o.dir).map_err(io(format!("creating {}", o.dir.display())))?;
    let dir = std::path::absolute(o.dir).map_err(io(format!("resolving {}", o.dir.display())))?;
    let bytes = memory_bytes(o.memory)?;
    let image_sha256 = sha256_file(&image)?;
    let image_size = fs::metadata(&image)
        .map_err(io(format!("reading {}", image.display())))?
        .len();
    qemu_img_overlay(&dir.join(DISK_FILE), &image, "raw")?;
    let vm = crate::Vm {
        image: dir.join(DISK_FILE),
        memory: o.memory.to_string(),
        no_net: !o.net,
        extra: without_ram_backend(o.extra),
        // The template's own qcow2 overlay already keeps the image as it is.
        snapshot: false,
    };
    let base = crate::argv_with_format(&vm, o.loader, o.accel, "qcow2");
    let qmp_path = dir.join("qmp.sock");
    let (helper_sock, _helper_dir) = short_socket(&dir, "helper.sock")?;
    let mut argv = base.clone();
    if o.helper_ready.is_some() {
        argv.extend(crate::helper_console(&helper_sock));
    }
    argv.extend([
        "-object".into(),
        ram_object(&dir, bytes, true),
        "-machine".into(),
        "memory-backend=imgtool-ram".into(),
        "-qmp".into(),
        format!("unix:{},server=on,wait=off", qmp_path.display()),
    ]);
    let start = Instant::now();
    let mut child = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(Error::Spawn)?;
    let mut stderr = child.stderr.take().expect("piped");
    let mut con = Console::new(
        child.stdout.take().expect("piped"),
        child.stdin.take(),
        o.console_copy,
    );
    let mut helper = match &o.helper_ready {
        Some(_) => match connect_helper(&helper_sock, Duration::from_secs(10), None) {
            Ok(h) => Some(h),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(e);
            }
        },
        None => None,
    };
    let result = (|| {
        let boot_s = match con.wait_for_line(&o.marker, start + o.timeout) {
            Wait::Matched(_, at) => at.duration_since(start).as_secs_f64(),
            other => {
                let _ = child.kill();
                let _ = child.wait();
                let mut err = String::new();
                let _ = stderr.read_to_string(&mut err);
                return Err(Error::Template(format!(
                    "the template guest {} before a console line matched /{}/\n--- last console lines ---\n{}{}",
                    if other == Wait::Timeout { format!("timed out after {} s", o.timeout.as_secs()) } else { "exited".to_string() },
                    o.marker,
                    con.tail(),
                    if err.trim().is_empty() { String::new() } else { format!("\n--- qemu stderr ---\n{}", err.trim_end()) }
                )));
            }
        };
        // Ready means the helper too: a clone's identity goes to it the moment it runs.
        let boot_s = match (helper.as_mut(), &o.helper_ready) {
            (Some(h), Some(ready)) => {
                wait_helper(h, ready, &con, o.image, start + o.timeout)?;
                start.elapsed().as_secs_f64()
            }
            _ => boot_s,
        };
        let never = Regex::new("$^").expect("valid");
        let _ = con.wait_for(&never, Instant::now() + o.settle);
        let t = Instant::now();
        let mut q = Qmp::connect(&qmp_path, Duration::from_secs(10))?;
        q.save_state(&dir.join(STATE_FILE), Duration::from_secs(120))?;
        let save_s = t.elapsed().as_secs_f64();
        q.quit();
        Ok((boot_s, save_s))
    })();
    // Whatever happened, the template's qemu ends here.
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    let _ = fs::remove_file(&qmp_path);
    let (boot_s, save_s) = result?;
    let state_bytes = fs::metadata(dir.join(STATE_FILE))
        .map_err(io("reading the saved state".into()))?
        .len();
    let m = Manifest {
        schema: TEMPLATE_SCHEMA,
        qemu_version: qemu_version()?,
        accel: o.accel.as_str().into(),
        memory: o.memory.to_string(),
        memory_bytes: bytes,
        image: image.display().to_string(),
        image_size,
        image_sha256,
        profile: o.profile,
        net: o.net,
        helper: o.helper_ready.is_some(),
        argv,
        clone_base: base,
        boot_s,
        save_s,
        state_bytes,
    };
    let text = serde_json::to_string_pretty(&m).expect("manifest serializes");
    fs::write(dir.join(MANIFEST), text)
        .map_err(io(format!("writing {}", dir.join(MANIFEST).display())))?;
    Ok(m)
}

/// After the firmware's marker: the helper's ready line on its console. A helper that never
/// spoke is not there (an untuned firmware): refused, naming the two fixes.
fn wait_helper(
    h: &mut Console,
    ready: &Regex,
    con: &Console,
    image: &Path,
    deadline: Instant,
) -> Result<(), Error> {
    let silent_until = (Instant::now() + HELPER_SILENCE).min(deadline);
    let any = Regex::new("").expect("valid");
    // The first line says whether a helper is there; it may be the ready line itself.
    match h.wait_for_line(&any, silent_until) {
        Wait::Matched(l, _) if ready.is_match(&l) => return Ok(()),
        Wait::Matched(..) => {}
        _ => {
            let init = if con.saw_protocol() {
                " (its console speaks imgtool's init protocol: an image of imgtool's own needs no --marker)"
            } else {
                ""
            };
            return Err(Error::Template(format!(
                "{}: no imgtool helper answered on the second console (/dev/ttyAMA1){init}: this \
                 firmware runs its own PID 1, and without imgtool's helper a restored clone \
                 cannot be given its identity. Tune the firmware (`imgtool fw tune app.fw \
                 --profile NAME -o tuned.fw`, then `imgtool fwup -a -i tuned.fw -d special.img \
                 -t complete`), or boot the clones cold: `imgtool fleet run --cold {} --marker \
                 REGEX`",
                image.display(),
                image.display()
            )));
        }
    }
    match h.wait_for_line(ready, deadline) {
        Wait::Matched(..) => Ok(()),
        other => Err(Error::Template(format!(
            "{}: imgtool's helper spoke on its console but {} before its ready line \
             (/{ready}/)\n--- last helper lines ---\n{}",
            image.display(),
            if other == Wait::Closed {
                "the console closed"
            } else {
                "the boot timed out"
            },
            h.tail()
        ))),
    }
}

/// `qemu-img create -f qcow2 -b BACKING -F FMT PATH`: qemu's own tool writes the overlay.
pub fn qemu_img_overlay(path: &Path, backing: &Path, backing_format: &str) -> Result<(), Error> {
    let out = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", backing_format, "-b"])
        .arg(backing)
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| Error::Io {
            what: "running qemu-img (install qemu-utils)".into(),
            source,
        })?;
    if !out.status.success() {
        return Err(Error::Template(format!(
            "qemu-img create {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Write `len` bytes of the file `data` at byte `offset` of the virtual disk `disk` (in
/// `format`) with `qemu-io`, qemu's own block tool: a qcow2 overlay takes the bytes as the guest
/// would see them, and its backing file stays untouched.
pub fn qemu_io_write(
    disk: &Path,
    format: &str,
    data: &Path,
    offset: u64,
    len: usize,
) -> Result<(), Error> {
    // qemu-io splits its command at spaces, without quoting: name the data file from its own
    // directory, and give the disk as an absolute path (its own argument, never split).
    let (Some(dir), Some(name)) = (data.parent(), data.file_name().and_then(|n| n.to_str())) else {
        return Err(Error::Template(format!(
            "{}: not a file name",
            data.display()
        )));
    };
    if name.contains(char::is_whitespace) {
        return Err(Error::Template(format!(
            "{}: qemu-io cannot read a file whose name holds a space",
            data.display()
        )));
    }
    let disk = std::path::absolute(disk).map_err(|source| Error::Io {
        what: format!("resolving {}", disk.display()),
        source,
    })?;
    let out = Command::new("qemu-io")
        .current_dir(if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        })
        .args(["-f", format])
        .arg(&disk)
        .arg("-c")
        .arg(format!("write -q -s {name} {offset} {len}"))
        .stdin(Stdio::null())
        .output()
        .map_err(|source| Error::Io {
            what: "running qemu-io (install qemu-utils)".into(),
            source,
        })?;
    if !out.status.success() {
        return Err(Error::Io {
            what: format!(
                "qemu-io writing {len} bytes at 0x{offset:x} of {} ({})",
                disk.display(),
                out.status
            ),
            source: std::io::Error::other(
                String::from_utf8_lossy(&[out.stderr, out.stdout].concat())
                    .trim()
                    .to_string(),
            ),
        });
    }
    Ok(())
}

/// Read a template's manifest and check that it can be restored here: same schema, qemu
/// version, accelerator, and an unchanged image.
pub fn open(dir: &Path, accel: Accel) -> Result<Manifest, Error> {
    open_checking(dir, accel, true)
}

/// [`open`] a template this process saved a moment ago: the image's sha256 was taken by the
/// save itself, so only its size is compared (hashing a few hundred MiB again costs seconds).
pub fn open_just_saved(dir: &Path, accel: Accel) -> Result<Manifest, Error> {
    open_checking(dir, accel, false)
}

fn open_checking(dir: &Path, accel: Accel, hash: bool) -> Result<Manifest, Error> {
    let path = dir.join(MANIFEST);
    let text = fs::read_to_string(&path).map_err(|e| {
        Error::Template(format!(
            "{}: {e} (make a template with `imgtool template IMAGE -o {}`)",
            path.display(),
            dir.display()
        ))
    })?;
    let m: Manifest = serde_json::from_str(&text)
        .map_err(|e| Error::Template(format!("{}: {e}", path.display())))?;
    let refuse = |what: String| {
        Err(Error::Template(format!(
            "template {} cannot be restored: {what}; make it again with `imgtool template`",
            dir.display()
        )))
    };
    if m.schema != TEMPLATE_SCHEMA {
        return refuse(format!(
            "its schema is {}, this imgtool reads {TEMPLATE_SCHEMA}",
            m.schema
        ));
    }
    let v = qemu_version()?;
    if m.qemu_version != v {
        return refuse(format!(
            "it was saved by `{}`, this host runs `{v}`",
            m.qemu_version
        ));
    }
    if m.accel != accel.as_str() {
        return refuse(format!(
            "it was saved under {}, clones would run under {}",
            m.accel,
            accel.as_str()
        ));
    }
    for f in [RAM_FILE, STATE_FILE, DISK_FILE] {
        if !dir.join(f).is_file() {
            return refuse(format!("{} is missing", dir.join(f).display()));
        }
    }
    let img = Path::new(&m.image);
    let size = fs::metadata(img).map(|x| x.len()).map_err(|e| {
        Error::Template(format!(
            "template {}: its image {}: {e}",
            dir.display(),
            m.image
        ))
    })?;
    if size != m.image_size || (hash && sha256_file(img)? != m.image_sha256) {
        return refuse(format!(
            "its image {} changed since the template was saved (sha256 differs)",
            m.image
        ));
    }
    Ok(m)
}

/// One clone's own parts.
pub struct CloneSpec<'a> {
    /// The clone's qcow2 overlay over the template's disk.
    pub disk: &'a Path,
    /// `52:54:00:..` when the template has a network device.
    pub mac: Option<&'a str>,
    /// `hostfwd` rules for user-mode networking (`tcp:127.0.0.1:PORT-:GUESTPORT`).
    pub hostfwd: Vec<String>,
    /// The clone's QMP socket: the restore is started through it ([`Qmp::restore_state`]),
    /// since `x-ignore-shared` is a capability, not a command-line property.
    pub qmp: &'a Path,
    /// The clone's helper console socket, when the template has one ([`Manifest::helper`]).
    pub helper: Option<&'a Path>,
}

/// The argv that restores a clone of the template in `dir`.
pub fn restore_argv(dir: &Path, m: &Manifest, c: &CloneSpec) -> Vec<String> {
    let mut argv = clone_argv(&m.clone_base, c.disk, c.mac, &c.hostfwd);
    // Where the template had it: the devices must come in the same order.
    if m.helper {
        let beside_qmp = c.qmp.with_extension("hlp");
        argv.extend(crate::helper_console(c.helper.unwrap_or(&beside_qmp)));
    }
    argv.extend([
        "-object".into(),
        ram_object(dir, m.memory_bytes, false),
        "-machine".into(),
        "memory-backend=imgtool-ram".into(),
        "-incoming".into(),
        "defer".into(),
        "-qmp".into(),
        format!("unix:{},server=on,wait=off", c.qmp.display()),
    ]);
    argv
}

/// `base` (an argv from [`crate::argv_with_format`]) for one clone: its own disk file, its MAC
/// on the virtio-net device and its `hostfwd` rules on the user-mode netdev, when it has one.
/// Template restores and cold fleets share it, so clones differ from each other the same way.
pub fn clone_argv(
    base: &[String],
    disk: &Path,
    mac: Option<&str>,
    hostfwd: &[String],
) -> Vec<String> {
    let mut argv = Vec::with_capacity(base.len() + 12);
    let mut it = base.iter().peekable();
    while let Some(a) = it.next() {
        argv.push(a.clone());
        if a == "-drive" {
            if let Some(d) = it.next() {
                // The shared disk → this clone's overlay on top of it.
                let file = disk.to_string_lossy().replace(',', ",,");
                argv.push(
                    d.split(',')
                        .map(|kv| {
                            if kv.starts_with("file=") {
                                format!("file={file}")
                            } else {
                                kv.to_string()
                            }
                        })
                        .collect::<Vec<_>>()
                        .join(","),
                );
            }
        } else if a == "-netdev" {
            if let Some(n) = it.next() {
                let mut n = n.clone();
                for f in hostfwd {
                    n.push_str(&format!(",hostfwd={f}"));
                }
                argv.push(n);
            }
        } else if a == "-device"
            && it
                .peek()
                .is_some_and(|d| d.starts_with("virtio-net-device"))
        {
            let d = it.next().expect("peeked");
            argv.push(match mac {
                Some(mac) => format!("{d},mac={mac}"),
                None => d.clone(),
            });
        }
    }
    argv
}

/// A QMP connection (qemu's machine protocol, <https://www.qemu.org/docs/master/interop/qmp-spec.html>),
/// with the types from the `qapi` crate.
pub struct Qmp {
    q: qapi::Qmp<qapi::Stream<std::io::BufReader<UnixStream>, UnixStream>>,
}

impl Qmp {
    /// Connect to a `-qmp unix:PATH,server=on,wait=off` socket, retrying until `limit`.
    pub fn connect(path: &Path, limit: Duration) -> Result<Qmp, Error> {
        let deadline = Instant::now() + limit;
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if Instant::now() >= deadline => {
                    return Err(Error::Io {
                        what: format!("connecting to qemu's QMP socket {}", path.display()),
                        source: e,
                    })
                }
                Err(_) => std::thread::sleep(Duration::from_millis(2)),
            }
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
        let reader = stream.try_clone().map_err(|source| Error::Io {
            what: "QMP socket".into(),
            source,
        })?;
        let mut q = qapi::Qmp::new(qapi::Stream::new(std::io::BufReader::new(reader), stream));
        q.handshake().map_err(qmp_err("QMP handshake"))?;
        Ok(Qmp { q })
    }

    /// Stop the guest and write its device state to `state` (RAM stays in its shared file).
    pub fn save_state(&mut self, state: &Path, limit: Duration) -> Result<(), Error> {
        self.q.execute(&qmp::stop {}).map_err(qmp_err("stop"))?;
        self.q
            .execute(&qmp::migrate_set_capabilities {
                capabilities: vec![qmp::MigrationCapabilityStatus {
                    capability: qmp::MigrationCapability::x_ignore_shared,
                    state: true,
                }],
            })
            .map_err(qmp_err("migrate-set-capabilities x-ignore-shared"))?;
        self.q
            .execute(&qmp::migrate {
                uri: Some(format!("file:{}", state.display())),
                channels: None,
                detach: None,
                resume: None,
            })
            .map_err(qmp_err("migrate"))?;
        let deadline = Instant::now() + limit;
        loop {
            let info = self
                .q
                .execute(&qmp::query_migrate {})
                .map_err(qmp_err("query-migrate"))?;
            match info.status {
                Some(qmp::MigrationStatus::completed) => return Ok(()),
                Some(s @ (qmp::MigrationStatus::failed | qmp::MigrationStatus::cancelled)) => {
                    return Err(Error::Template(format!(
                        "saving the template's state: migration {s:?}: {}",
                        info.error_desc.unwrap_or_default()
                    )))
                }
                _ if Instant::now() > deadline => {
                    return Err(Error::Template(format!(
                        "saving the template's state took over {} s",
                        limit.as_secs()
                    )))
                }
                _ => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    /// Load a template's device state into a clone started with `-incoming defer`; the guest
    /// runs as soon as the load completes.
    pub fn restore_state(&mut self, state: &Path, limit: Duration) -> Result<(), Error> {
        self.q
            .execute(&qmp::migrate_set_capabilities {
                capabilities: vec![qmp::MigrationCapabilityStatus {
                    capability: qmp::MigrationCapability::x_ignore_shared,
                    state: true,
                }],
            })
            .map_err(qmp_err("migrate-set-capabilities x-ignore-shared"))?;
        self.q
            .execute(&qmp::migrate_incoming {
                uri: Some(format!("file:{}", state.display())),
                channels: None,
                exit_on_error: None,
            })
            .map_err(qmp_err("migrate-incoming"))?;
        // The template was stopped before its save, so the clone loads paused: run it once the
        // load is complete.
        let deadline = Instant::now() + limit;
        loop {
            let info = self
                .q
                .execute(&qmp::query_migrate {})
                .map_err(qmp_err("query-migrate"))?;
            match info.status {
                Some(qmp::MigrationStatus::completed) => break,
                Some(s @ (qmp::MigrationStatus::failed | qmp::MigrationStatus::cancelled)) => {
                    return Err(Error::Template(format!(
                        "loading the template's state: migration {s:?}: {}",
                        info.error_desc.unwrap_or_default()
                    )))
                }
                _ if Instant::now() > deadline => {
                    return Err(Error::Template(format!(
                        "loading the template's state took over {} s",
                        limit.as_secs()
                    )))
                }
                _ => std::thread::sleep(Duration::from_millis(2)),
            }
        }
        self.q.execute(&qmp::cont {}).map_err(qmp_err("cont"))?;
        Ok(())
    }

    /// Ask qemu to exit (errors ignored: it may already be gone).
    pub fn quit(&mut self) {
        let _ = self.q.execute(&qmp::quit {});
    }
}

fn qmp_err(what: &'static str) -> impl Fn(qapi::ExecuteError) -> Error {
    move |e| Error::Template(format!("QMP {what}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn memory_sizes() {
        assert_eq!(memory_bytes("110M").unwrap(), 110 << 20);
        assert_eq!(memory_bytes("1G").unwrap(), 1 << 30);
        assert_eq!(memory_bytes("128").unwrap(), 128 << 20);
        assert!(memory_bytes("lots").is_err());
        assert!(memory_bytes("0M").is_err());
        assert!(memory_bytes("99999999999999T").is_err());
    }

    #[test]
    fn a_profiles_memfd_backend_is_replaced() {
        let e = s(&[
            "-object",
            "memory-backend-memfd,id=imgtool-ram,size=110M",
            "-machine",
            "memory-backend=imgtool-ram",
            "-accel",
            "tcg,tb-size=8",
        ]);
        assert_eq!(without_ram_backend(&e), s(&["-accel", "tcg,tb-size=8"]));
    }

    #[test]
    fn clone_argv_has_its_own_disk_mac_and_forward_and_maps_the_ram_privately() {
        let dir = Path::new("/t/tpl");
        let vm = crate::Vm {
            image: dir.join(DISK_FILE),
            memory: "110M".into(),
            no_net: false,
            extra: s(&["-accel", "tcg,tb-size=8"]),
            snapshot: false,
        };
        let base = crate::argv_with_format(&vm, Path::new("/l.elf"), Accel::Tcg, "qcow2");
        let m = Manifest {
            schema: TEMPLATE_SCHEMA,
            qemu_version: "QEMU emulator version 10".into(),
            accel: "tcg".into(),
            memory: "110M".into(),
            memory_bytes: 110 << 20,
            image: "/i.img".into(),
            image_size: 1,
            image_sha256: String::new(),
            profile: None,
            net: true,
            helper: true,
            argv: base.clone(),
            clone_base: base,
            boot_s: 1.0,
            save_s: 0.1,
            state_bytes: 1,
        };
        let c = CloneSpec {
            disk: Path::new("/run/c,1.qcow2"),
            mac: Some("52:54:00:00:00:11"),
            hostfwd: vec!["tcp:127.0.0.1:20017-:22".into()],
            qmp: Path::new("/q/17.sock"),
            helper: Some(Path::new("/q/17.hlp")),
        };
        let line = crate::shell_line(&restore_argv(dir, &m, &c));
        for want in [
            "file=/run/c,,1.qcow2,format=qcow2",
            "user,id=net0,hostfwd=tcp:127.0.0.1:20017-:22",
            "virtio-net-device,netdev=net0,mac=52:54:00:00:00:11",
            "mem-path=/t/tpl/ram,share=off,readonly=on,rom=off",
            "-machine memory-backend=imgtool-ram",
            "-incoming defer",
            "-qmp unix:/q/17.sock,server=on,wait=off",
            "-accel tcg,tb-size=8",
            "-serial mon:stdio -chardev socket,id=imgtool-helper,path=/q/17.hlp,server=on,wait=off -serial chardev:imgtool-helper -object",
        ] {
            assert!(line.contains(want), "{want} missing in {line}");
        }
        assert!(!line.contains("share=on"), "{line}");
    }

    #[test]
    fn a_cold_clone_without_network_gets_only_its_disk() {
        let vm = crate::Vm {
            image: "/img/special.img".into(),
            memory: "128M".into(),
            no_net: true,
            extra: vec![],
            snapshot: false,
        };
        let base = crate::argv_with_format(&vm, Path::new("/l.elf"), Accel::Tcg, "qcow2");
        let argv = clone_argv(&base, Path::new("/run/clone-0003.qcow2"), None, &[]);
        let line = crate::shell_line(&argv);
        assert!(
            line.contains("file=/run/clone-0003.qcow2,format=qcow2,id=disk0"),
            "{line}"
        );
        assert!(
            line.contains("-nic none") && !line.contains("special.img"),
            "{line}"
        );
        assert_eq!(argv.len(), base.len());
    }

    #[test]
    fn qemu_io_writes_into_the_overlay_and_leaves_the_backing_file_alone() {
        let d = tempfile::tempdir().unwrap();
        let base = d.path().join("base.img");
        fs::write(&base, vec![0x11u8; 64 * 1024]).unwrap();
        let overlay = d.path().join("o.qcow2");
        qemu_img_overlay(&overlay, &base, "raw").unwrap();
        let data = d.path().join("block.bin");
        fs::write(&data, vec![0x5au8; 4096]).unwrap();
        qemu_io_write(&overlay, "qcow2", &data, 0x2000, 4096).unwrap();
        let raw = d.path().join("out.raw");
        let st = Command::new("qemu-img")
            .args(["convert", "-O", "raw"])
            .arg(&overlay)
            .arg(&raw)
            .status()
            .unwrap();
        assert!(st.success());
        let out = fs::read(&raw).unwrap();
        assert!(out[..0x2000].iter().all(|&b| b == 0x11));
        assert!(out[0x2000..0x3000].iter().all(|&b| b == 0x5a));
        assert!(out[0x3000..].iter().all(|&b| b == 0x11));
        assert!(fs::read(&base).unwrap().iter().all(|&b| b == 0x11));
        // A missing data file is qemu-io's failure, reported with its words.
        let e = qemu_io_write(&overlay, "qcow2", &d.path().join("none.bin"), 0, 512).unwrap_err();
        assert!(e.to_string().contains("qemu-io writing 512 bytes"), "{e}");
    }
}
