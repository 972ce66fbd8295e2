//! What an ELF file needs from the tree: DT_NEEDED libraries, its PT_INTERP loader, RUNPATH.
//! Spec: <https://refspecs.linuxfoundation.org/elf/gabi4+/ch5.dynamic.html>.

use std::path::{Path, PathBuf};

use goblin::elf::Elf;

/// EM_AARCH64, EM_X86_64, EM_ARM, EM_RISCV.
pub fn machine_for_arch(debian_arch: &str) -> Option<u16> {
    Some(match debian_arch {
        "arm64" => goblin::elf::header::EM_AARCH64,
        "amd64" => goblin::elf::header::EM_X86_64,
        "armhf" | "armel" => goblin::elf::header::EM_ARM,
        "riscv64" => goblin::elf::header::EM_RISCV,
        _ => return None,
    })
}

/// The multiarch triplet Debian uses in library paths.
pub fn triplet(debian_arch: &str) -> Option<&'static str> {
    Some(match debian_arch {
        "arm64" => "aarch64-linux-gnu",
        "amd64" => "x86_64-linux-gnu",
        "armhf" => "arm-linux-gnueabihf",
        "armel" => "arm-linux-gnueabi",
        "riscv64" => "riscv64-linux-gnu",
        _ => return None,
    })
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElfInfo {
    pub machine: u16,
    pub needed: Vec<String>,
    pub interpreter: Option<String>,
    pub runpath: Vec<String>,
    pub soname: Option<String>,
}

/// Parse an ELF file's dynamic section; `None` if the bytes are not ELF.
pub fn inspect(bytes: &[u8]) -> Option<std::result::Result<ElfInfo, String>> {
    if bytes.len() < 4 || &bytes[..4] != b"\x7fELF" {
        return None;
    }
    Some(match Elf::parse(bytes) {
        Ok(e) => {
            let mut runpath: Vec<String> = e.runpaths.iter().map(|s| s.to_string()).collect();
            runpath.extend(e.rpaths.iter().map(|s| s.to_string()));
            Ok(ElfInfo {
                machine: e.header.e_machine,
                needed: e.libraries.iter().map(|s| s.to_string()).collect(),
                interpreter: e.interpreter.map(str::to_string),
                runpath,
                soname: e.soname.map(str::to_string),
            })
        }
        Err(err) => Err(err.to_string()),
    })
}

/// Directories (relative to the tree's root) where the glibc loader looks for libraries, in
/// order, without an ld.so.cache: RUNPATH (with $ORIGIN) first, then the multiarch and plain dirs.
pub fn search_dirs(arch: &str, elf_rel_path: &Path, info: &ElfInfo) -> Vec<PathBuf> {
    let origin = elf_rel_path.parent().unwrap_or(Path::new(""));
    let mut v: Vec<PathBuf> = info
        .runpath
        .iter()
        .flat_map(|r| r.split(':'))
        .filter(|r| !r.is_empty())
        .map(|r| {
            let r = r.replace("${ORIGIN}", "$ORIGIN");
            match r.strip_prefix("$ORIGIN") {
                Some(rest) => normalize(&origin.join(rest.trim_start_matches('/'))),
                None => PathBuf::from(r.trim_start_matches('/')),
            }
        })
        .collect();
    if let Some(t) = triplet(arch) {
        v.push(PathBuf::from(format!("lib/{t}")));
        v.push(PathBuf::from(format!("usr/lib/{t}")));
    }
    v.push("lib".into());
    v.push("usr/lib".into());
    v
}

/// Resolve `..` and `.` lexically (paths inside the tree are relative, never escape it).
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::Normal(s) => out.push(s),
            _ => {}
        }
    }
    out
}

/// Whether `rel` exists under `root` following symlinks, but only within `root` (absolute link
/// targets are taken relative to `root`, as they will be in the guest).
pub fn exists_in_tree(root: &Path, rel: &Path) -> bool {
    resolve_in_tree(root, rel, 0).is_some()
}

/// The path (relative to `root`) that `rel` leads to in the guest, following symlinks.
pub fn resolve_in_tree(root: &Path, rel: &Path, depth: u32) -> Option<PathBuf> {
    if depth > 40 {
        return None;
    }
    let mut cur = PathBuf::new();
    let comps: Vec<_> = normalize(rel)
        .components()
        .map(|c| c.as_os_str().to_owned())
        .collect();
    for (i, c) in comps.iter().enumerate() {
        cur.push(c);
        let full = root.join(&cur);
        let meta = std::fs::symlink_metadata(&full).ok()?;
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&full).ok()?;
            let base = if target.is_absolute() {
                PathBuf::from(target.strip_prefix("/").ok()?)
            } else {
                cur.parent().unwrap_or(Path::new("")).join(&target)
            };
            let mut rest = base;
            for c2 in &comps[i + 1..] {
                rest.push(c2);
            }
            return resolve_in_tree(root, &rest, depth + 1);
        }
    }
    Some(cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_elf_is_none() {
        assert!(inspect(b"#!/bin/sh\n").is_none());
        assert!(matches!(inspect(b"\x7fELF garbage"), Some(Err(_))));
    }

    #[test]
    fn host_binary_has_needed() {
        // The test binary itself is a dynamically linked host ELF.
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let info = inspect(&me).unwrap().unwrap();
        assert!(
            info.needed.iter().any(|n| n.starts_with("libc.so")),
            "{info:?}"
        );
        assert!(info.interpreter.is_some());
    }

    #[test]
    fn symlinks_resolve_inside_the_tree() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        std::fs::create_dir_all(r.join("usr/lib/x")).unwrap();
        std::fs::write(r.join("usr/lib/x/libz.so.1.2"), b"").unwrap();
        std::os::unix::fs::symlink("libz.so.1.2", r.join("usr/lib/x/libz.so.1")).unwrap();
        std::os::unix::fs::symlink("/usr/lib", r.join("lib")).unwrap();
        assert!(exists_in_tree(r, Path::new("lib/x/libz.so.1")));
        assert_eq!(
            resolve_in_tree(r, Path::new("lib/x/libz.so.1"), 0).unwrap(),
            PathBuf::from("usr/lib/x/libz.so.1.2")
        );
        assert!(!exists_in_tree(r, Path::new("lib/x/libc.so.6")));
    }

    #[test]
    fn runpath_origin() {
        let info = ElfInfo {
            machine: 0,
            needed: vec![],
            interpreter: None,
            runpath: vec!["$ORIGIN/../lib:/opt/x".into()],
            soname: None,
        };
        let dirs = search_dirs("arm64", Path::new("usr/lib/erlang/bin/beam"), &info);
        assert_eq!(dirs[0], PathBuf::from("usr/lib/erlang/lib"));
        assert_eq!(dirs[1], PathBuf::from("opt/x"));
        assert_eq!(dirs[2], PathBuf::from("lib/aarch64-linux-gnu"));
    }
}
