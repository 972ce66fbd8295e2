//! The resolved layout: every region with its byte offset, size and content source, in disk
//! order. One plan drives the writer, `--dry-run` and the overlap checks.

use std::path::PathBuf;

pub use crate::spec::TableKind;
use crate::units::Bytes;

#[derive(Debug)]
pub struct Plan {
    pub name: String,
    /// The image's size in bytes (a multiple of 512).
    pub size: u64,
    pub table: Option<TablePlan>,
    /// Sorted by offset; no two overlap.
    pub regions: Vec<Region>,
    /// The U-Boot env, if the layout has one.
    pub env: Option<EnvPlan>,
    /// Filesystems generated while planning (squashfs from a directory) live here until written.
    pub(crate) _generated: Vec<tempfile::TempPath>,
}

/// The layout's U-Boot env: where it is and what it holds (after `${...}` substitution).
#[derive(Debug, Clone)]
pub struct EnvPlan {
    /// The region that holds the (first) copy.
    pub region: String,
    /// Bytes.
    pub offset: u64,
    pub size: u64,
    pub redundant_offset: Option<u64>,
    /// In the layout's order.
    pub vars: Vec<(String, String)>,
    /// YAML line of the env's region, for messages.
    pub line: usize,
}

impl EnvPlan {
    /// The value of a variable.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Where a loader finds this env (the record the writer puts in sector 0 when it is not
    /// the default place).
    pub fn locator(&self) -> Result<uboot_env::locator::Locator, String> {
        let size = u32::try_from(self.size)
            .map_err(|_| format!("an env of {} bytes is too large", self.size))?;
        let l = uboot_env::locator::Locator {
            offset: self.offset,
            size,
            redundant_offset: self.redundant_offset,
        };
        l.check().map_err(|e| e.to_string())?;
        Ok(l)
    }
}

#[derive(Debug)]
pub struct Region {
    pub name: String,
    pub offset: u64,
    pub size: u64,
    pub content: Content,
}

#[derive(Debug)]
pub enum Content {
    /// Nothing is written: the region stays a hole.
    Empty,
    /// A host file's bytes (`what` says where they came from, for the plan listing).
    File {
        path: PathBuf,
        len: u64,
        what: String,
    },
    /// Every byte set to this value.
    Pattern(u8),
    /// Bytes computed while planning (a U-Boot env block).
    Bytes { data: Vec<u8>, what: String },
    Fat {
        label: Option<String>,
        files: Vec<(String, PathBuf)>,
    },
    F2fs {
        label: Option<String>,
        uuid: Option<[u8; 16]>,
        mtime: u32,
    },
}

impl Content {
    /// Bytes the writer will move for this content (for progress).
    pub fn work(&self, region_size: u64) -> u64 {
        match self {
            Content::Empty | Content::Pattern(0) => 0,
            Content::File { len, .. } => *len,
            Content::Pattern(_) => region_size,
            Content::Bytes { data, .. } => data.len() as u64,
            Content::Fat { .. } | Content::F2fs { .. } => 1 << 20,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Content::Empty => "empty".into(),
            Content::File { what, len, .. } => format!("{what} ({})", Bytes(*len)),
            Content::Pattern(b) => format!("fill 0x{b:02x}"),
            Content::Bytes { what, .. } => what.clone(),
            Content::Fat { label, files } => format!(
                "fat{} with {} file(s)",
                label
                    .as_deref()
                    .map(|l| format!(" \"{l}\""))
                    .unwrap_or_default(),
                files.len()
            ),
            Content::F2fs { label, .. } => format!(
                "f2fs{}",
                label
                    .as_deref()
                    .map(|l| format!(" \"{l}\""))
                    .unwrap_or_default()
            ),
        }
    }
}

#[derive(Debug, Clone)]
pub struct TablePlan {
    pub kind: TableKind,
    pub disk_id: DiskId,
    /// Sorted by partition number.
    pub partitions: Vec<PartitionPlan>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskId {
    Mbr(u32),
    Gpt([u8; 16]),
}

#[derive(Debug, Clone)]
pub struct PartitionPlan {
    pub number: u32,
    pub region: String,
    pub first_lba: u64,
    pub blocks: u64,
    pub kind: PartitionType,
    pub boot: bool,
    pub label: Option<String>,
    /// GPT partition GUID, in the canonical (RFC 4122) byte order.
    pub guid: Option<[u8; 16]>,
    pub flags: u64,
    /// Grows to the end of the disk (`expand: true`).
    pub expand: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartitionType {
    Mbr(u8),
    /// A GPT type GUID in canonical (RFC 4122) byte order.
    Gpt([u8; 16]),
}

impl Plan {
    /// A human-readable listing, in disk order (`imgtool build --dry-run`).
    pub fn listing(&self) -> String {
        let mut s = format!(
            "image `{}`: {} ({} blocks)\n",
            self.name,
            Bytes(self.size),
            self.size / 512
        );
        if let Some(t) = &self.table {
            s += &format!(
                "table: {:?} with {} partition(s)\n",
                t.kind,
                t.partitions.len()
            );
        }
        s += "     offset (LBA)      blocks  region              content\n";
        for r in &self.regions {
            let part = self
                .table
                .as_ref()
                .and_then(|t| t.partitions.iter().find(|p| p.region == r.name))
                .map(|p| format!(" [p{}]", p.number))
                .unwrap_or_default();
            s += &format!(
                "{:>18} {:>11}  {:<18}  {}{}\n",
                r.offset / 512,
                r.size / 512,
                r.name,
                r.content.describe(),
                part
            );
        }
        s
    }
}
