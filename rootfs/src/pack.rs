//! Pack a staged tree into a squashfs image through the workspace's `squashfs` crate: every
//! file owned by root, every time 0, so the same tree gives the same bytes.

use std::path::Path;

use crate::{Error, Result};

/// Build `out` (through a temporary name beside it) from `stage`.
pub fn pack(stage: &Path, out: &Path, compression: &str) -> Result<squashfs::Stats> {
    let compression = compression
        .parse::<squashfs::Compression>()
        .map_err(Error::Other)?;
    let opts = squashfs::Options {
        compression,
        mtime: 0,
        all_root: true,
        ..Default::default()
    };
    squashfs::build_to_file(stage, out, &opts).map_err(|e| Error::Other(e.to_string()))
}
