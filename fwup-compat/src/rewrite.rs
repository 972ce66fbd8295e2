//! Rewriting a firmware archive someone else made (`imgtool fw tune`): read every entry, replace
//! resources (their `length` and `blake2b-256` in meta.conf follow), edit the `uboot_setenv`
//! calls of its tasks, and write it again, signed with a new key or unsigned.
//!
//! meta.conf is re-read with `${FWUP_META_UUID}` and `${FWUP_META_NICKNAME}` left as they are
//! (as `fwup -c` writes them), so the rewritten archive gets its own UUID when applied, as any
//! new archive does. Spec: fwup 1.16's docs/fwup.md ("meta.conf", "Firmware signing").

use std::io::Read;
use std::path::Path;

use crate::config::{self, Mode, Section, Vars};
use crate::error::{Error, Result};
use crate::ops::{open_archive, open_input, sign};
use crate::zip::{pack, Packed, ZipWriter};

/// The mtime fwup gives resources (1980-01-01, the ZIP epoch).
const RESOURCE_MTIME: i64 = 315_532_800;

/// One archive entry after meta.conf.
#[derive(Debug, Clone)]
pub struct Entry {
    pub name: String,
    pub data: Vec<u8>,
    pub mtime: i64,
}

/// A whole archive, in memory.
#[derive(Debug, Clone)]
pub struct Archive {
    /// meta.conf as parsed for rewriting (UUID variables unexpanded).
    pub meta: Section,
    /// meta.conf's text as it was in the archive.
    pub meta_text: Vec<u8>,
    pub meta_mtime: i64,
    /// It carried meta.conf.ed25519.
    pub signed: bool,
    pub entries: Vec<Entry>,
}

/// A `uboot_setenv(env, NAME, VALUE)` call in a task, where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setenv {
    pub task: String,
    pub name: String,
    pub value: String,
}

fn archive_name(resource: &str) -> String {
    match resource.strip_prefix('/') {
        Some(p) => p.to_string(),
        None => format!("data/{resource}"),
    }
}

/// The task sections holding action lists (on-init, on-finish, on-error, on-resource).
const EVENTS: [&str; 4] = ["on-init", "on-finish", "on-error", "on-resource"];

/// Read `path` whole. Each entry may be at most `max_entry` bytes (a bound for hostile input).
pub fn read(path: &Path, max_entry: usize) -> Result<Archive> {
    let name = path.to_string_lossy();
    let r = open_input(Some(&name), false)?;
    let mut o = open_archive(r, &name, &[], false)?;
    let mut vars = Vars::from_env();
    vars.set("FWUP_META_UUID", "${FWUP_META_UUID}");
    vars.set("FWUP_META_NICKNAME", "${FWUP_META_NICKNAME}");
    let meta = config::parse(&o.meta_conf, "meta.conf", &mut vars, Mode::Apply)?;
    let mut entries = Vec::new();
    while let Some(e) = o.zip.next_entry()? {
        let mut data = Vec::new();
        (&mut o.zip)
            .take(max_entry as u64 + 1)
            .read_to_end(&mut data)
            .map_err(|err| Error::msg(format!("{name}: {}: {err}", e.name)))?;
        if data.len() > max_entry {
            return Err(Error::msg(format!(
                "{name}: entry {} is larger than {max_entry} bytes",
                e.name
            )));
        }
        entries.push(Entry {
            name: e.name,
            data,
            mtime: e.mtime,
        });
    }
    Ok(Archive {
        meta,
        meta_text: o.meta_conf,
        meta_mtime: o.mtime,
        signed: o.signed,
        entries,
    })
}

impl Archive {
    /// The file-resources meta.conf names, in its order.
    pub fn resource_names(&self) -> Vec<String> {
        self.meta
            .secs("file-resource")
            .iter()
            .map(|r| r.title().to_string())
            .collect()
    }

    /// A resource's stored bytes (the data of a sparse resource, without its holes).
    pub fn resource(&self, name: &str) -> Option<&[u8]> {
        let path = archive_name(name);
        self.entries
            .iter()
            .find(|e| e.name == path)
            .map(|e| e.data.as_slice())
    }

    /// A meta-* value (meta-product, meta-version, meta-platform, ...).
    pub fn meta_value(&self, key: &str) -> Option<&str> {
        self.meta.get_str(key)
    }

    /// Replace a resource's data; its length and hash in meta.conf follow.
    pub fn set_resource(&mut self, name: &str, data: Vec<u8>) -> Result<()> {
        let path = archive_name(name);
        let hash = crate::uuid::blake2b_256(&[&data]);
        let sec = self
            .meta
            .secs_mut("file-resource")
            .iter_mut()
            .find(|r| r.title() == name)
            .ok_or_else(|| Error::msg(format!("meta.conf has no file-resource {name}")))?;
        sec.set_list("length", vec![data.len().to_string()]);
        sec.set("blake2b-256", common::hex::encode(&hash));
        match self.entries.iter_mut().find(|e| e.name == path) {
            Some(e) => e.data = data,
            None => self.entries.push(Entry {
                name: path,
                data,
                mtime: RESOURCE_MTIME,
            }),
        }
        Ok(())
    }

    /// Every `uboot_setenv` call of every task.
    pub fn setenvs(&self) -> Vec<Setenv> {
        let mut out = Vec::new();
        for t in self.meta.secs("task") {
            for ev in EVENTS {
                for sec in t.secs(ev) {
                    let Ok(calls) = crate::plan::split_funlist(sec.list("funlist")) else {
                        continue;
                    };
                    for c in calls {
                        if c.len() == 4 && c[0] == "uboot_setenv" {
                            out.push(Setenv {
                                task: t.title().to_string(),
                                name: c[2].clone(),
                                value: c[3].clone(),
                            });
                        }
                    }
                }
            }
        }
        out
    }

    /// Rewrite the value of every `uboot_setenv(env, NAME, VALUE)` for which `edit(NAME, VALUE)`
    /// gives a new one; returns how many calls changed.
    pub fn edit_setenvs(&mut self, edit: &dyn Fn(&str, &str) -> Option<String>) -> usize {
        let mut n = 0;
        for t in self.meta.secs_mut("task") {
            for ev in EVENTS {
                if t.secs(ev).is_empty() {
                    continue;
                }
                for sec in t.secs_mut(ev) {
                    let mut list = sec.list("funlist").to_vec();
                    let mut i = 0;
                    while i < list.len() {
                        let argc = config::strtoull(&list[i]) as usize;
                        if argc == 0 || i + 1 + argc > list.len() {
                            break;
                        }
                        let call = &list[i + 1..i + 1 + argc];
                        if argc == 4 && call[0] == "uboot_setenv" {
                            if let Some(v) = edit(&call[2], &call[3]) {
                                list[i + 4] = v;
                                n += 1;
                            }
                        }
                        i += 1 + argc;
                    }
                    sec.set_list("funlist", list);
                }
            }
        }
        n
    }

    /// meta.conf as it will be written.
    pub fn meta_conf(&self) -> String {
        let m = config::to_meta_conf(&self.meta);
        if m.is_empty() {
            "# Empty file\n".into()
        } else {
            m
        }
    }

    /// Write the archive to `out` (a temporary name beside it, renamed at the end), signed
    /// with `key` if given. Entries keep their order; resources are deflated at `level`.
    pub fn write(&self, out: &Path, key: Option<&[u8; 64]>, level: u32) -> Result<()> {
        let meta = self.meta_conf();
        let tmp = out.with_file_name(format!(
            ".{}.tmp{}",
            out.file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default(),
            std::process::id()
        ));
        let res = (|| {
            let f = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
            let mut z = ZipWriter::new(std::io::BufWriter::with_capacity(1 << 20, f));
            let wr = |e: std::io::Error| Error::io(out, e);
            if let Some(k) = key {
                let sig = sign(k, meta.as_bytes());
                z.add("meta.conf.ed25519", &stored(&sig), RESOURCE_MTIME, false)
                    .map_err(wr)?;
            }
            z.add(
                "meta.conf",
                &pack(meta.as_bytes(), level),
                self.meta_mtime,
                true,
            )
            .map_err(wr)?;
            for e in &self.entries {
                z.add(&e.name, &pack(&e.data, level), e.mtime, false)
                    .map_err(wr)?;
            }
            let w = z.finish().map_err(wr)?;
            let f = w
                .into_inner()
                .map_err(|e| Error::io(&tmp, e.into_error()))?;
            f.sync_all().map_err(|e| Error::io(&tmp, e))?;
            std::fs::rename(&tmp, out).map_err(|e| Error::io(out, e))
        })();
        if res.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        res
    }
}

fn stored(d: &[u8]) -> Packed {
    let mut h = crc32fast::Hasher::new();
    h.update(d);
    Packed {
        method: 0,
        data: d.to_vec(),
        crc: h.finalize(),
        size: d.len() as u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::{create, CreateOptions};

    fn make(dir: &Path) -> std::path::PathBuf {
        std::fs::write(dir.join("rootfs.img"), vec![7u8; 3000]).unwrap();
        std::fs::write(
            dir.join("fwup.conf"),
            r#"
meta-product = "p"
meta-version = "1.0"
meta-platform = "qemu_aarch64"
meta-architecture = "arm"
file-resource rootfs.img { host-path = "rootfs.img" }
uboot-environment uboot-env { block-offset = 16 block-count = 256 }
task complete {
    on-init {
        uboot_setenv(uboot-env, "a.kernel_args", "root=/dev/vda1")
        uboot_setenv(uboot-env, "a.nerves_fw_uuid", "\${FWUP_META_UUID}")
    }
    on-resource rootfs.img { raw_write(1024) }
}
"#,
        )
        .unwrap();
        let out = dir.join("a.fw");
        let conf = dir.join("fwup.conf");
        create(&CreateOptions {
            config: conf.to_str().unwrap(),
            output: out.to_str().unwrap(),
            private_key: None,
            level: 9,
        })
        .unwrap();
        out
    }

    #[test]
    fn read_edit_write_read() {
        let d = tempfile::tempdir().unwrap();
        let fw = make(d.path());
        let mut a = read(&fw, 1 << 20).unwrap();
        assert_eq!(a.resource_names(), vec!["rootfs.img".to_string()]);
        assert_eq!(a.resource("rootfs.img").unwrap().len(), 3000);
        assert_eq!(a.meta_value("meta-platform"), Some("qemu_aarch64"));
        // Unchanged, meta.conf prints back as fwup wrote it.
        assert_eq!(a.meta_conf().as_bytes(), a.meta_text.as_slice());
        a.set_resource("rootfs.img", vec![9u8; 5000]).unwrap();
        let n = a.edit_setenvs(&|name, v| (name == "a.kernel_args").then(|| format!("{v} quiet")));
        assert_eq!(n, 1);
        let out = d.path().join("b.fw");
        a.write(&out, None, 9).unwrap();
        let b = read(&out, 1 << 20).unwrap();
        assert_eq!(b.resource("rootfs.img").unwrap(), &[9u8; 5000][..]);
        let envs = b.setenvs();
        assert!(envs.contains(&Setenv {
            task: "complete".into(),
            name: "a.kernel_args".into(),
            value: "root=/dev/vda1 quiet".into()
        }));
        assert!(envs
            .iter()
            .any(|e| e.name == "a.nerves_fw_uuid" && e.value == "${FWUP_META_UUID}"));
        let text = String::from_utf8(b.meta_text.clone()).unwrap();
        assert!(text.contains("length=5000"), "{text}");
        assert!(!b.signed);
    }

    #[test]
    fn not_an_archive_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.fw");
        std::fs::write(&p, b"this is not a zip file at all").unwrap();
        assert!(read(&p, 1 << 20).is_err());
    }
}
