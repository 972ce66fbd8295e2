//! Where erlinit finds things in a root filesystem: its config file, the release, the ERTS.
//! The search follows erlinit 1.15's own (src/erlinit.c, find_release and find_erts_directory):
//! `<path>/releases` or `<path>/<name>/releases`, `start_erl.data` naming the ERTS and release
//! versions (else the first version directory), the ERTS beside the release or under
//! /usr/lib/erlang.

use serde::Serialize;
use squashfs::image::{Image, Kind};

/// erlinit's own default for `-r`.
pub const DEFAULT_RELEASE_PATH: &str = "/srv/erlang";
/// erlinit's ERTS fallback (ERLANG_ROOT_DIR).
pub const ERLANG_ROOT: &str = "/usr/lib/erlang";
pub const ERLINIT_CONFIG: &str = "/etc/erlinit.config";
/// Text files read from a root filesystem are small; a larger one is refused.
const MAX_TEXT: u64 = 1 << 20;

/// Split a config line as erlinit's cfgloader does: blanks separate, double quotes group, `#`
/// starts a comment.
pub fn split_line(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let (mut quoted, mut any) = (false, false);
    for ch in line.chars() {
        match ch {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            '#' if !quoted => break,
            c if c.is_whitespace() && !quoted => {
                if any {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            c => {
                cur.push(c);
                any = true;
            }
        }
    }
    if any {
        out.push(cur);
    }
    out
}

/// The options of /etc/erlinit.config that fw inspect and tune care about.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ErlinitOptions {
    pub release_path: Option<String>,
    pub pre_run_exec: Option<String>,
    pub boot: Option<String>,
}

pub fn erlinit_options(text: &str) -> ErlinitOptions {
    let mut o = ErlinitOptions::default();
    for line in text.lines() {
        let w = split_line(line);
        let (Some(k), Some(v)) = (w.first(), w.get(1)) else {
            continue;
        };
        match k.as_str() {
            "-r" | "--release-path" => o.release_path = Some(v.clone()),
            "--pre-run-exec" => o.pre_run_exec = Some(w[1..].join(" ")),
            "--boot" => o.boot = Some(v.clone()),
            _ => {}
        }
    }
    o
}

pub fn read_text(img: &Image, path: &str) -> Result<Option<String>, String> {
    match img.read(path, MAX_TEXT) {
        Ok(Some(b)) => Ok(Some(String::from_utf8_lossy(&b).into_owned())),
        Ok(None) => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

/// An OTP release as erlinit would start it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Release {
    /// The release's root (ROOTDIR), e.g. /srv/erlang.
    pub root: String,
    pub name: String,
    pub version: String,
    /// releases/VSN
    pub dir: String,
    pub boot: String,
    pub erts_version: String,
    pub erts_dir: String,
    /// releases/VSN/vm.args, when the release has one.
    pub vm_args_path: Option<String>,
    pub vm_args: Option<String>,
    pub sys_config: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReleaseError {
    /// No releases/VSN with a boot file under the release path.
    Missing(String),
    /// Something that is not a BEAM release.
    NotBeam {
        dir: String,
        why: String,
    },
    Read(String),
}

fn is_dir(img: &Image, p: &str) -> bool {
    img.kind(p) == Some(Kind::Dir)
}

/// Find the release under `path` (erlinit's `-r`).
pub fn find(img: &Image, path: &str, boot_opt: Option<&str>) -> Result<Release, ReleaseError> {
    let path = path.trim_end_matches('/');
    let root = if is_dir(img, &format!("{path}/releases")) {
        path.to_string()
    } else {
        img.list(path)
            .into_iter()
            .map(|n| format!("{path}/{n}"))
            .find(|d| is_dir(img, &format!("{d}/releases")))
            .ok_or_else(|| ReleaseError::Missing(path.to_string()))?
    };
    let releases = format!("{root}/releases");
    let start_erl =
        read_text(img, &format!("{releases}/start_erl.data")).map_err(ReleaseError::Read)?;
    let (erts_want, version) = match start_erl.as_deref().map(split_line) {
        Some(w) if w.len() >= 2 => (Some(w[0].clone()), w[1].clone()),
        _ => (
            None,
            img.list(&releases)
                .into_iter()
                .find(|n| is_dir(img, &format!("{releases}/{n}")))
                .ok_or_else(|| ReleaseError::Missing(path.to_string()))?,
        ),
    };
    let dir = format!("{releases}/{version}");
    let files = img.list(&dir);
    let boots: Vec<&str> = files
        .iter()
        .filter_map(|f| f.strip_suffix(".boot"))
        .collect();
    let standard = ["start_clean", "start_sasl", "no_dot_erlang", "start"];
    let name = boot_opt
        .filter(|b| boots.contains(b))
        .or_else(|| {
            boots
                .iter()
                .copied()
                .find(|b| files.iter().any(|f| f == &format!("{b}.rel")))
        })
        .or_else(|| boots.iter().copied().find(|b| !standard.contains(b)))
        .or_else(|| boots.first().copied())
        .ok_or_else(|| ReleaseError::Missing(path.to_string()))?
        .to_string();
    let boot = format!("{dir}/{name}.boot");
    // A boot script is an Erlang external term: version byte 131.
    match img.read(&boot, 64 << 20) {
        Ok(Some(b)) if b.first() == Some(&131) => {}
        Ok(_) => {
            return Err(ReleaseError::NotBeam {
                dir: dir.clone(),
                why: format!("{boot} is not an Erlang boot script (no external-term header)"),
            })
        }
        Err(e) => return Err(ReleaseError::Read(e.to_string())),
    }
    let (erts_version, erts_dir) =
        find_erts(img, &root, erts_want.as_deref()).ok_or_else(|| ReleaseError::NotBeam {
            dir: dir.clone(),
            why: format!(
                "no ERTS with bin/beam.smp in {root}/erts-* or {ERLANG_ROOT}/erts-*{}",
                erts_want
                    .as_deref()
                    .map(|v| format!(" (start_erl.data names erts-{v})"))
                    .unwrap_or_default()
            ),
        })?;
    let vm_args_path = format!("{dir}/vm.args");
    let vm_args = read_text(img, &vm_args_path).map_err(ReleaseError::Read)?;
    Ok(Release {
        root,
        name,
        version,
        boot,
        erts_version,
        erts_dir,
        vm_args_path: vm_args.is_some().then_some(vm_args_path),
        vm_args,
        sys_config: img.kind(&format!("{dir}/sys.config")).is_some(),
        dir,
    })
}

fn find_erts(img: &Image, root: &str, want: Option<&str>) -> Option<(String, String)> {
    let has_beam = |d: &str| {
        matches!(
            img.kind(&format!("{d}/bin/beam.smp")),
            Some(Kind::File { .. })
        )
    };
    for base in [root, ERLANG_ROOT] {
        if let Some(v) = want {
            let d = format!("{base}/erts-{v}");
            if has_beam(&d) {
                return Some((v.to_string(), d));
            }
        }
    }
    for base in [root, ERLANG_ROOT] {
        for n in img.list(base) {
            if let Some(v) = n.strip_prefix("erts-") {
                let d = format!("{base}/{n}");
                if has_beam(&d) {
                    return Some((v.to_string(), d));
                }
            }
        }
    }
    None
}

/// vm.args' flags: one entry per non-comment line, as erlexec reads the file.
pub fn vm_args_flags(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_lines_split_as_erlinit_reads_them() {
        assert_eq!(
            split_line("-s \"/usr/bin/nbtty\""),
            vec!["-s", "/usr/bin/nbtty"]
        );
        assert_eq!(
            split_line("-e LANG=en_US.UTF-8;LANGUAGE=en # comment"),
            vec!["-e", "LANG=en_US.UTF-8;LANGUAGE=en"]
        );
        assert!(split_line("# -v").is_empty());
        let o = erlinit_options("-r /srv/erlang\n--pre-run-exec /usr/bin/x --y\n--boot shoehorn\n");
        assert_eq!(o.release_path.as_deref(), Some("/srv/erlang"));
        assert_eq!(o.pre_run_exec.as_deref(), Some("/usr/bin/x --y"));
        assert_eq!(o.boot.as_deref(), Some("shoehorn"));
    }

    #[test]
    fn vm_args_flags_skip_comments() {
        let f = vm_args_flags("## c\n-mode embedded\n\n+sbwt none # busy wait\n");
        assert_eq!(f, vec!["-mode embedded", "+sbwt none"]);
    }
}
