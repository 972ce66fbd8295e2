//! The layout YAML as written by a user. Unknown keys are rejected; positions are kept
//! ([`Spanned`]) so that later checks can name the line they complain about.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_saphyr::Spanned;

/// A whole layout file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct LayoutSpec {
    /// A short name, shown by `imgtool layout list`.
    pub name: Option<String>,
    pub description: Option<String>,
    /// Named values the layout refers to as `${name}`; `imgtool build -D name=value` overrides them.
    #[serde(default)]
    pub inputs: BTreeMap<String, Scalar>,
    /// The image size (`fit` by default: the end of the last region).
    pub size: Option<Spanned<SizeSpec>>,
    /// The partition table, if any. Regions with a `partition:` block appear in it.
    pub table: Option<TableSpec>,
    /// The regions, in the order they sit on the disk (offsets may still be given freely).
    pub regions: Vec<RegionSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct TableSpec {
    #[serde(rename = "type")]
    pub kind: Spanned<TableKind>,
    /// MBR: the 32-bit disk signature (`0x...`). GPT: the disk GUID.
    /// Defaults are derived from the layout, so images stay reproducible.
    pub disk_id: Option<Spanned<Scalar>>,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TableKind {
    Mbr,
    Gpt,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RegionSpec {
    pub name: Spanned<String>,
    /// Absolute offset. Without it the region starts where `after`'s region ends,
    /// or right after the previous region.
    pub offset: Option<Spanned<SizeSpec>>,
    pub after: Option<Spanned<String>>,
    /// Round the start up to this boundary.
    pub align: Option<Spanned<SizeSpec>>,
    /// The region's size; `fit` (the default) sizes it to its contents.
    pub size: Option<Spanned<SizeSpec>>,
    pub partition: Option<PartitionSpec>,
    pub fill: Option<FillSpec>,
    /// Leave the region empty when its input path is empty (e.g. no kernel given).
    #[serde(default)]
    pub optional: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct PartitionSpec {
    /// The 1-based slot in the table (MBR: 1-4).
    pub number: Spanned<u32>,
    /// MBR: a type byte (`0x83`) or alias (linux, fat32, fat16, fat12, efi, swap).
    /// GPT: a type GUID or alias (linux, efi, swap, home, root-arm64, root-x86-64, basic-data).
    #[serde(rename = "type")]
    pub kind: Spanned<Scalar>,
    #[serde(default)]
    pub boot: bool,
    /// GPT only: the partition name.
    pub label: Option<String>,
    /// GPT only: the partition GUID (derived from the layout when absent).
    pub guid: Option<String>,
    /// GPT only: attribute bits.
    pub flags: Option<u64>,
    /// Grow to the end of the image (last partition only).
    #[serde(default)]
    pub expand: bool,
}

/// What goes into a region.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub enum FillSpec {
    /// A file's bytes, as they are.
    File(String),
    /// A squashfs: built from a directory, or a prebuilt squashfs image file.
    Squashfs(SquashfsFill),
    /// A FAT filesystem holding files.
    Fat(FatFill),
    /// An empty f2fs filesystem.
    F2fs(F2fsFill),
    /// Every byte set to this value (0 leaves a hole).
    Pattern(u8),
    /// A U-Boot environment block.
    UbootEnv(UbootEnvFill),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct SquashfsFill {
    pub source: String,
    /// gzip, xz, zstd or lz4 (default xz, as Nerves uses).
    pub comp: Option<String>,
    #[serde(default)]
    pub all_root: bool,
    /// Every timestamp in the image (default: SOURCE_DATE_EPOCH, else 0).
    pub mtime: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FatFill {
    pub label: Option<String>,
    /// Path inside the filesystem -> host file.
    #[serde(default)]
    pub files: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct F2fsFill {
    pub label: Option<String>,
    pub uuid: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct UbootEnvFill {
    /// Offset of the redundant copy; the copy has the same size as this region.
    pub redundant_offset: Option<Spanned<SizeSpec>>,
    /// Variables; values may use `${input}` and `${lba:REGION}`, `${blocks:REGION}`,
    /// `${offset:REGION}` (bytes), `${size:REGION}` (bytes).
    #[serde(default)]
    pub vars: BTreeMap<String, Scalar>,
}

/// A size as written: text with a unit (`common::size`), or `fit`. A YAML integer is kept to be
/// refused with the fix (unless it is 0).
#[derive(Debug, Deserialize, Clone)]
#[serde(untagged)]
pub enum SizeSpec {
    Number(u64),
    Text(String),
}

/// A YAML scalar kept as text (so `bootcount: 0` and `bootcount: "0"` mean the same).
#[derive(Debug, Deserialize, Clone)]
#[serde(untagged)]
pub enum Scalar {
    Int(i64),
    Bool(bool),
    Text(String),
}

impl Scalar {
    pub fn as_text(&self) -> String {
        match self {
            Scalar::Int(i) => i.to_string(),
            Scalar::Bool(b) => b.to_string(),
            Scalar::Text(s) => s.clone(),
        }
    }
}
