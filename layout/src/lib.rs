//! Disk layouts: the YAML a user writes ([`spec`]), the resolved [`Plan`] of regions, and the
//! sparse, streaming, byte-reproducible image writer ([`write_image`]).
//!
//! ```text
//! layout.yaml --parse--> LayoutSpec --resolve--> Plan --write_image--> special.img
//!                                                  \--fwup_conf::render--> fwup.conf
//! ```

pub mod error;
mod fills;
#[doc(hidden)]
pub mod fuzzing;
pub mod fwup_conf;
pub mod inspect;
pub mod plan;
pub mod probe;
mod resolve;
pub mod spec;
pub mod units;
pub mod window;
mod write;

use std::path::Path;

pub use error::{Error, Result};
pub use plan::{EnvPlan, Plan};
pub use resolve::{parse_guid, Context};
pub use write::{write_image, WriteStats};

/// The layouts that ship inside imgtool: (name, YAML text).
pub const BUILTIN: &[(&str, &str)] = &[(
    "nerves-qemu-aarch64",
    include_str!("../builtin/nerves-qemu-aarch64.yaml"),
)];

/// The YAML text of a built-in layout.
pub fn builtin(name: &str) -> Option<&'static str> {
    BUILTIN.iter().find(|(n, _)| *n == name).map(|(_, y)| *y)
}

/// Parse layout YAML; `file` names it in errors.
pub fn parse(yaml: &str, file: &str) -> Result<spec::LayoutSpec> {
    serde_saphyr::from_str(yaml).map_err(|e| Error::Syntax {
        file: file.to_string(),
        msg: e.to_string(),
    })
}

/// Load a layout by built-in name or path and resolve it into a plan.
pub fn plan_from(name_or_path: &str, mut ctx_base: Context) -> Result<Plan> {
    let (yaml, file, base) = match builtin(name_or_path) {
        Some(y) if !Path::new(name_or_path).exists() => (
            y.to_string(),
            format!("builtin:{name_or_path}"),
            std::env::current_dir().unwrap_or_default(),
        ),
        _ => {
            let path = Path::new(name_or_path);
            let yaml = std::fs::read_to_string(path).map_err(|source| Error::Input {
                file: name_or_path.to_string(),
                line: 0,
                field: "layout".into(),
                path: path.to_path_buf(),
                source,
            })?;
            let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
            (yaml, name_or_path.to_string(), base)
        }
    };
    let spec = parse(&yaml, &file)?;
    ctx_base.file = file;
    if ctx_base.base_dir.as_os_str().is_empty() {
        ctx_base.base_dir = base;
    }
    resolve::resolve(&spec, &ctx_base)
}
