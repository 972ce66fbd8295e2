//! From the YAML spec to a [`Plan`]: substitute inputs, size and place every region, build the
//! partition table, check overlaps and bounds. Nothing is written to the output here.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde_saphyr::Spanned;

use crate::error::{Error, Result};
use crate::fills;
use crate::plan::*;
use crate::spec::*;
use common::size::parse_size;

use crate::units::{Bytes, BLOCK};

/// Where a layout came from and what the user set on the command line.
pub struct Context {
    /// The layout's file name (or `builtin:NAME`), for error messages.
    pub file: String,
    /// Relative host paths are taken from here.
    pub base_dir: PathBuf,
    /// `-D name=value` from the command line.
    pub overrides: BTreeMap<String, String>,
    /// Timestamp for generated filesystems (SOURCE_DATE_EPOCH).
    pub mtime: u32,
}

impl Context {
    /// `-D`-style overrides; relative paths from the current directory (or the layout file's),
    /// timestamps 0.
    pub fn new(overrides: BTreeMap<String, String>) -> Context {
        Context {
            file: String::new(),
            base_dir: PathBuf::new(),
            overrides,
            mtime: 0,
        }
    }
}

/// Blocks a GPT needs at each end: the protective MBR, the header and 128 entries of 128 bytes.
const GPT_HEAD_BLOCKS: u64 = 34;
const GPT_TAIL_BLOCKS: u64 = 33;

struct Resolver<'a> {
    ctx: &'a Context,
    inputs: BTreeMap<String, String>,
    generated: Vec<tempfile::TempPath>,
}

impl Resolver<'_> {
    fn field(&self, line: usize, field: impl Into<String>, msg: impl Into<String>) -> Error {
        Error::Field {
            file: self.ctx.file.clone(),
            line,
            field: field.into(),
            msg: msg.into(),
        }
    }

    /// Replace `${input}` (and, given `geo`, `${lba:REGION}` and friends) in `text`.
    fn subst(
        &self,
        text: &str,
        line: usize,
        field: &str,
        geo: Option<&HashMap<String, (u64, u64)>>,
    ) -> Result<String> {
        let mut out = String::new();
        let mut rest = text;
        while let Some(i) = rest.find("${") {
            out += &rest[..i];
            let end = rest[i..]
                .find('}')
                .ok_or_else(|| self.field(line, field, format!("unclosed `${{` in `{text}`")))?;
            let key = &rest[i + 2..i + end];
            rest = &rest[i + end + 1..];
            if let Some((name, word)) = key.split_once(":+") {
                // POSIX `${name:+word}`: `word` when the input is set and not empty, else
                // nothing (`args${cmdline:+ }${cmdline}` adds the space only when needed).
                let v = self.inputs.get(name).ok_or_else(|| {
                    self.field(
                        line,
                        field,
                        format!(
                            "unknown input `{name}` in `${{{key}}}`: declare it under `inputs:`"
                        ),
                    )
                })?;
                if !v.is_empty() {
                    out += word;
                }
            } else if let Some((func, region)) = key.split_once(':') {
                let geo = geo.ok_or_else(|| {
                    self.field(
                        line,
                        field,
                        format!("`${{{key}}}` is only allowed in uboot-env vars"),
                    )
                })?;
                let &(off, size) = geo.get(region).ok_or_else(|| {
                    self.field(
                        line,
                        field,
                        format!("`${{{key}}}`: no region named `{region}`"),
                    )
                })?;
                let v = match func {
                    "lba" => off / BLOCK,
                    "blocks" => size / BLOCK,
                    "offset" => off,
                    "size" => size,
                    _ => {
                        return Err(self.field(
                            line,
                            field,
                            format!("`${{{key}}}`: unknown function `{func}` (use lba, blocks, offset or size)"),
                        ))
                    }
                };
                out += &v.to_string();
            } else {
                let v =
                    self.inputs.get(key).ok_or_else(|| {
                        let known: Vec<_> = self.inputs.keys().map(String::as_str).collect();
                        self.field(
                            line,
                            field,
                            format!(
                            "unknown input `${{{key}}}`: declare it under `inputs:` (known: {})",
                            if known.is_empty() { "none".into() } else { known.join(", ") }
                        ),
                        )
                    })?;
                out += v;
            }
        }
        out += rest;
        Ok(out)
    }

    fn size(&self, s: &Spanned<SizeSpec>, field: &str) -> Result<Option<u64>> {
        let line = s.referenced.line() as usize;
        let text = match &s.value {
            SizeSpec::Number(n) => n.to_string(),
            SizeSpec::Text(t) if t.trim() == "fit" => return Ok(None),
            SizeSpec::Text(t) => self.subst(t, line, field, None)?,
        };
        let bytes = parse_size(&text).map_err(|m| self.field(line, field, m.to_string()))?;
        if !bytes.is_multiple_of(BLOCK) {
            return Err(self.field(
                line,
                field,
                format!(
                    "{bytes} bytes is not a multiple of 512: offsets and sizes are whole blocks"
                ),
            ));
        }
        Ok(Some(bytes))
    }

    fn host_path(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.ctx.base_dir.join(p)
        }
    }

    /// The content of a region, and the length it needs (None: it takes the region's size).
    fn content(&mut self, r: &RegionSpec) -> Result<(Content, Option<u64>)> {
        let line = r.name.referenced.line() as usize;
        let name = &r.name.value;
        let input_path = |me: &Self, p: &str, field: &str| -> Result<Option<PathBuf>> {
            let s = me.subst(p, line, field, None)?;
            if s.is_empty() {
                if r.optional {
                    return Ok(None);
                }
                return Err(me.field(
                    line,
                    field,
                    format!("region `{name}` needs a path (`{p}` is empty): set it, or mark the region `optional: true`"),
                ));
            }
            Ok(Some(me.host_path(&s)))
        };
        let stat = |me: &Self, path: &Path, field: &str| -> Result<std::fs::Metadata> {
            std::fs::metadata(path).map_err(|source| Error::Input {
                file: me.ctx.file.clone(),
                line,
                field: field.into(),
                path: path.to_path_buf(),
                source,
            })
        };
        Ok(match &r.fill {
            None => (Content::Empty, Some(0)),
            Some(FillSpec::Pattern(b)) => (Content::Pattern(*b), None),
            Some(FillSpec::File(p)) => match input_path(self, p, "fill.file")? {
                None => (Content::Empty, Some(0)),
                Some(path) => {
                    let md = stat(self, &path, "fill.file")?;
                    if !md.is_file() {
                        return Err(self.field(
                            line,
                            "fill.file",
                            format!("`{}` is not a regular file", path.display()),
                        ));
                    }
                    let what = format!("file {}", path.display());
                    (
                        Content::File {
                            path,
                            len: md.len(),
                            what,
                        },
                        Some(md.len()),
                    )
                }
            },
            Some(FillSpec::Squashfs(sq)) => {
                match input_path(self, &sq.source, "fill.squashfs.source")? {
                    None => (Content::Empty, Some(0)),
                    Some(path) => {
                        let md = stat(self, &path, "fill.squashfs.source")?;
                        if md.is_dir() {
                            let opts = fills::SquashfsOptions {
                                comp: sq.comp.clone().unwrap_or_else(|| "xz".into()),
                                all_root: sq.all_root,
                                mtime: sq.mtime.unwrap_or(self.ctx.mtime),
                            };
                            let tmp = tempfile::Builder::new()
                                .prefix(".imgtool-squashfs-")
                                .tempfile()
                                .map_err(|source| Error::Io {
                                    path: std::env::temp_dir(),
                                    source,
                                })?
                                .into_temp_path();
                            fills::build_squashfs(&path, &tmp, &opts).map_err(|msg| {
                                Error::Fill {
                                    region: name.clone(),
                                    msg: format!("squashfs from `{}`: {msg}", path.display()),
                                }
                            })?;
                            let len = stat(self, &tmp, "fill.squashfs.source")?.len();
                            let what = format!("squashfs ({}) of {}", opts.comp, path.display());
                            let c = Content::File {
                                path: tmp.to_path_buf(),
                                len,
                                what,
                            };
                            self.generated.push(tmp);
                            (c, Some(len))
                        } else {
                            fills::check_squashfs_magic(&path)
                                .map_err(|m| self.field(line, "fill.squashfs.source", m))?;
                            let what = format!("squashfs {}", path.display());
                            (
                                Content::File {
                                    path,
                                    len: md.len(),
                                    what,
                                },
                                Some(md.len()),
                            )
                        }
                    }
                }
            }
            Some(FillSpec::Fat(f)) => {
                let label = f
                    .label
                    .as_deref()
                    .map(|l| self.subst(l, line, "fill.fat.label", None))
                    .transpose()?;
                let mut files = Vec::new();
                for (dest, src) in &f.files {
                    let field = format!("fill.fat.files.{dest}");
                    let path = self.host_path(&self.subst(src, line, &field, None)?);
                    stat(self, &path, &field)?;
                    files.push((dest.clone(), path));
                }
                (Content::Fat { label, files }, None)
            }
            Some(FillSpec::F2fs(f)) => {
                let label = f
                    .label
                    .as_deref()
                    .map(|l| self.subst(l, line, "fill.f2fs.label", None))
                    .transpose()?;
                let uuid = f
                    .uuid
                    .as_deref()
                    .map(|u| parse_guid(u).map_err(|m| self.field(line, "fill.f2fs.uuid", m)))
                    .transpose()?;
                (
                    Content::F2fs {
                        label,
                        uuid,
                        mtime: self.ctx.mtime,
                    },
                    None,
                )
            }
            // Encoded once the geometry is known (its vars may refer to regions).
            Some(FillSpec::UbootEnv(_)) => (Content::Empty, None),
        })
    }
}

/// Resolve a parsed layout into a plan, in steps: inputs, placement and sizing of each region,
/// the partitions, the image size, overlaps, the U-Boot env, the table. Each step reports the
/// first problem it finds, naming the line and field.
pub fn resolve(spec: &LayoutSpec, ctx: &Context) -> Result<Plan> {
    let mut rs = Resolver::new(spec, ctx)?;
    let table_kind = spec.table.as_ref().map(|t| t.kind.value);
    let reserved = Reserved::for_table(table_kind);
    let mut placed = place(&mut rs, spec, reserved.head)?;
    let parts = partitions(&rs, spec, table_kind, &placed)?;
    let size = image_size(&rs, spec, &mut placed, &parts, reserved)?;
    check_overlaps(&rs, spec, &placed, reserved, size)?;
    let (env, extra) = encode_env(&rs, spec, &mut placed)?;
    let regions = final_regions(&rs, spec, placed, extra, size)?;
    let table = match &spec.table {
        None => None,
        Some(t) => Some(table_plan(&rs, spec, t, &parts, &regions)?),
    };
    if let Some(e) = &env {
        check_env_locator(&rs, e, &regions)?;
    }
    Ok(Plan {
        name: spec.name.clone().unwrap_or_else(|| ctx.file.clone()),
        size,
        table,
        regions,
        env,
        _generated: rs.generated,
    })
}

impl<'a> Resolver<'a> {
    /// The layout's inputs with the command line's `-D` overrides applied; an override of an
    /// input the layout does not have is refused.
    fn new(spec: &LayoutSpec, ctx: &'a Context) -> Result<Resolver<'a>> {
        let mut inputs: BTreeMap<String, String> = spec
            .inputs
            .iter()
            .map(|(k, v)| (k.clone(), v.as_text()))
            .collect();
        for (k, v) in &ctx.overrides {
            if !inputs.contains_key(k) {
                let known: Vec<_> = inputs.keys().map(String::as_str).collect();
                return Err(Error::Field {
                    file: ctx.file.clone(),
                    line: 0,
                    field: format!("-D {k}"),
                    msg: format!(
                        "the layout has no input `{k}` (its inputs: {})",
                        known.join(", ")
                    ),
                });
            }
            inputs.insert(k.clone(), v.clone());
        }
        Ok(Resolver {
            ctx,
            inputs,
            generated: Vec::new(),
        })
    }
}

/// Bytes the partition table keeps for itself at the start and the end of the disk.
#[derive(Clone, Copy)]
struct Reserved {
    head: u64,
    tail: u64,
}

impl Reserved {
    fn for_table(kind: Option<TableKind>) -> Reserved {
        match kind {
            Some(TableKind::Gpt) => Reserved {
                head: GPT_HEAD_BLOCKS * BLOCK,
                tail: GPT_TAIL_BLOCKS * BLOCK,
            },
            Some(TableKind::Mbr) => Reserved {
                head: BLOCK,
                tail: 0,
            },
            None => Reserved { head: 0, tail: 0 },
        }
    }
}

/// A region with its place, in the order written.
struct Placed {
    offset: u64,
    size: u64,
    content: Content,
    line: usize,
}

/// Placement and sizing, region by region in the order written: each starts at its `offset`,
/// after the region it names, or after the one above (aligned up), and takes its `size` or its
/// contents' size.
fn place(rs: &mut Resolver, spec: &LayoutSpec, first_free: u64) -> Result<Vec<Placed>> {
    let mut placed: Vec<Placed> = Vec::new();
    let mut by_name: HashMap<String, usize> = HashMap::new();
    for r in &spec.regions {
        let name = &r.name.value;
        let line = r.name.referenced.line() as usize;
        if by_name.contains_key(name) {
            return Err(rs.field(line, "name", format!("region `{name}` is defined twice")));
        }
        if r.offset.is_some() && r.after.is_some() {
            return Err(rs.field(
                line,
                "after",
                format!("region `{name}` has both `offset` and `after`: keep one"),
            ));
        }
        let (content, need) = rs.content(r)?;
        let offset = region_offset(rs, r, &placed, &by_name, first_free)?;
        let size = region_size(rs, r, &content, need, offset)?;
        by_name.insert(name.clone(), placed.len());
        placed.push(Placed {
            offset,
            size,
            content,
            line,
        });
    }
    Ok(placed)
}

/// Where region `r` starts (placement).
fn region_offset(
    rs: &Resolver,
    r: &RegionSpec,
    placed: &[Placed],
    by_name: &HashMap<String, usize>,
    first_free: u64,
) -> Result<u64> {
    let line = r.name.referenced.line() as usize;
    let mut offset = match (&r.offset, &r.after) {
        (Some(o), _) => rs
            .size(o, "offset")?
            .ok_or_else(|| rs.field(line, "offset", "an offset cannot be `fit`"))?,
        (None, Some(a)) => {
            let i = *by_name.get(&a.value).ok_or_else(|| {
                rs.field(
                    a.referenced.line() as usize,
                    "after",
                    format!(
                        "no earlier region named `{}` (regions can only follow ones above them)",
                        a.value
                    ),
                )
            })?;
            placed[i].offset + placed[i].size
        }
        (None, None) => placed
            .last()
            .map(|p| p.offset + p.size)
            .unwrap_or(first_free),
    };
    if let Some(a) = &r.align {
        let a = rs
            .size(a, "align")?
            .filter(|&a| a > 0)
            .ok_or_else(|| rs.field(line, "align", "align must be a size"))?;
        offset = offset.div_ceil(a) * a;
    }
    Ok(offset)
}

/// How large region `r` is (sizing): its `size`, which its contents (`need` bytes) must fit,
/// or the contents' size rounded up to a block.
fn region_size(
    rs: &Resolver,
    r: &RegionSpec,
    content: &Content,
    need: Option<u64>,
    offset: u64,
) -> Result<u64> {
    let name = &r.name.value;
    let line = r.name.referenced.line() as usize;
    let explicit = match &r.size {
        Some(s) => rs.size(s, "size")?,
        None => None,
    };
    let size = match (explicit, need) {
        (Some(s), Some(n)) if n > s => {
            return Err(rs.field(
                line,
                "size",
                format!(
                    "the contents of region `{name}` ({}) are larger than the region ({}): grow `size` or shrink the input",
                    Bytes(n),
                    Bytes(s)
                ),
            ))
        }
        (Some(s), _) => s,
        (None, Some(n)) => n.div_ceil(BLOCK) * BLOCK,
        (None, None) => {
            return Err(rs.field(line, "size", format!("region `{name}` needs a `size` (its fill has no natural size)")))
        }
    };
    if matches!(content, Content::F2fs { .. }) && size < f2fs::min_size(offset) {
        return Err(rs.field(
            line,
            "size",
            format!(
                "region `{name}` ({}) is too small for f2fs: the minimum here is {}; grow `size`",
                Bytes(size),
                Bytes(f2fs::min_size(offset))
            ),
        ));
    }
    Ok(size)
}

/// The regions that are partitions, by partition number: numbers used once, a table to hold
/// them, and only the last partition on the disk may `expand`.
fn partitions<'s>(
    rs: &Resolver,
    spec: &'s LayoutSpec,
    table_kind: Option<TableKind>,
    placed: &[Placed],
) -> Result<Vec<(usize, &'s PartitionSpec)>> {
    let mut parts: Vec<(usize, &PartitionSpec)> = spec
        .regions
        .iter()
        .enumerate()
        .filter_map(|(i, r)| r.partition.as_ref().map(|p| (i, p)))
        .collect();
    if table_kind.is_none() {
        if let Some((i, _)) = parts.first() {
            return Err(rs.field(
                placed[*i].line,
                "partition",
                "a region has a `partition:` block but the layout has no `table:`",
            ));
        }
    }
    parts.sort_by_key(|(_, p)| p.number.value);
    for w in parts.windows(2) {
        if w[0].1.number.value == w[1].1.number.value {
            return Err(rs.field(
                w[1].1.number.referenced.line() as usize,
                "partition.number",
                format!("partition number {} is used twice", w[1].1.number.value),
            ));
        }
    }
    let last_part = parts
        .iter()
        .map(|(i, _)| *i)
        .max_by_key(|&i| placed[i].offset);
    for (i, p) in &parts {
        if p.expand && Some(*i) != last_part {
            return Err(rs.field(
                placed[*i].line,
                "partition.expand",
                "only the last partition on the disk can `expand`",
            ));
        }
    }
    Ok(parts)
}

/// The image size (sizing): the layout's `size`, which every region must fit in, or the end of
/// the last region (plus the backup GPT). The `expand` partition then grows to the end.
fn image_size(
    rs: &Resolver,
    spec: &LayoutSpec,
    placed: &mut [Placed],
    parts: &[(usize, &PartitionSpec)],
    reserved: Reserved,
) -> Result<u64> {
    let tail = reserved.tail;
    let end_of_regions = placed
        .iter()
        .map(|p| p.offset + p.size)
        .max()
        .unwrap_or(reserved.head);
    let size = match &spec.size {
        Some(s) => match rs.size(s, "size")? {
            Some(fixed) => {
                for (r, p) in spec.regions.iter().zip(placed.iter()) {
                    if p.offset + p.size + tail > fixed {
                        return Err(rs.field(
                            p.line,
                            if r.offset.is_some() { "offset" } else { "size" },
                            format!(
                                "region `{}` ends at {} but the image is {}{}: grow the image `size` or move the region",
                                r.name.value,
                                Bytes(p.offset + p.size),
                                Bytes(fixed),
                                if tail > 0 { " (less 33 blocks for the backup GPT)" } else { "" }
                            ),
                        ));
                    }
                }
                fixed
            }
            None => end_of_regions + tail,
        },
        None => end_of_regions + tail,
    };
    if let Some(i) = parts.iter().find(|(_, p)| p.expand).map(|(i, _)| *i) {
        let grown = size - tail - placed[i].offset;
        if grown > placed[i].size {
            placed[i].size = grown;
        }
    }
    Ok(size)
}

/// Overlaps: between regions, with the table's blocks at the start, with the backup GPT.
fn check_overlaps(
    rs: &Resolver,
    spec: &LayoutSpec,
    placed: &[Placed],
    reserved: Reserved,
    size: u64,
) -> Result<()> {
    let (first_free, tail) = (reserved.head, reserved.tail);
    let mut order: Vec<usize> = (0..placed.len()).filter(|&i| placed[i].size > 0).collect();
    order.sort_by_key(|&i| placed[i].offset);
    for w in order.windows(2) {
        let (a, b) = (&placed[w[0]], &placed[w[1]]);
        if a.offset + a.size > b.offset {
            let (na, nb) = (
                &spec.regions[w[0]].name.value,
                &spec.regions[w[1]].name.value,
            );
            return Err(rs.field(
                b.line,
                "offset",
                format!(
                    "region `{nb}` (blocks {}..{}) overlaps region `{na}` (blocks {}..{}): move it with `offset` or `after: {na}`",
                    b.offset / BLOCK,
                    (b.offset + b.size) / BLOCK,
                    a.offset / BLOCK,
                    (a.offset + a.size) / BLOCK
                ),
            ));
        }
    }
    if let Some(&i) = order.first() {
        if placed[i].offset < first_free {
            return Err(rs.field(
                placed[i].line,
                "offset",
                format!(
                    "region `{}` starts at block {} inside the partition table (blocks 0..{}): move it",
                    spec.regions[i].name.value,
                    placed[i].offset / BLOCK,
                    first_free / BLOCK
                ),
            ));
        }
    }
    if tail > 0 {
        if let Some(&i) = order.last() {
            if placed[i].offset + placed[i].size > size - tail {
                return Err(rs.field(
                    placed[i].line,
                    "size",
                    "region overlaps the backup GPT in the last 33 blocks",
                ));
            }
        }
    }
    Ok(())
}

/// The U-Boot env, now that every region has its place (its vars may name them): at most one,
/// encoded into its region, and its redundant copy as an extra region.
fn encode_env(
    rs: &Resolver,
    spec: &LayoutSpec,
    placed: &mut [Placed],
) -> Result<(Option<EnvPlan>, Vec<Region>)> {
    let geo: HashMap<String, (u64, u64)> = spec
        .regions
        .iter()
        .zip(placed.iter())
        .map(|(r, p)| (r.name.value.clone(), (p.offset, p.size)))
        .collect();
    let mut extra: Vec<Region> = Vec::new();
    let mut env_plan: Option<EnvPlan> = None;
    for (r, p) in spec.regions.iter().zip(placed.iter_mut()) {
        let Some(FillSpec::UbootEnv(env)) = &r.fill else {
            continue;
        };
        let mut vars = Vec::new();
        for (k, v) in &env.vars {
            vars.push((
                k.clone(),
                rs.subst(
                    &v.as_text(),
                    p.line,
                    &format!("fill.uboot-env.vars.{k}"),
                    Some(&geo),
                )?,
            ));
        }
        let redund = match &env.redundant_offset {
            Some(o) => Some(
                rs.size(o, "fill.uboot-env.redundant-offset")?
                    .ok_or_else(|| {
                        rs.field(
                            p.line,
                            "fill.uboot-env.redundant-offset",
                            "must be an offset",
                        )
                    })?,
            ),
            None => None,
        };
        let blocks = fills::encode_uboot_env(&vars, p.size as usize, redund.is_some())
            .map_err(|m| rs.field(p.line, "fill.uboot-env", m))?;
        if env_plan.is_some() {
            return Err(rs.field(
                p.line,
                "fill.uboot-env",
                "a layout has one U-Boot env (it may have a `redundant-offset`): remove this one",
            ));
        }
        env_plan = Some(EnvPlan {
            region: r.name.value.clone(),
            offset: p.offset,
            size: p.size,
            redundant_offset: redund,
            vars: vars.clone(),
            line: p.line,
        });
        let mut blocks = blocks.into_iter();
        p.content = Content::Bytes {
            data: blocks.next().unwrap_or_default(),
            what: format!("U-Boot env, {} vars", vars.len()),
        };
        if let (Some(off), Some(data)) = (redund, blocks.next()) {
            extra.push(Region {
                name: format!("{}.redundant", r.name.value),
                offset: off,
                size: p.size,
                content: Content::Bytes {
                    data,
                    what: "U-Boot env (redundant copy)".into(),
                },
            });
        }
    }
    Ok((env_plan, extra))
}

/// The plan's regions in disk order, with the env's redundant copy, which must overlap nothing
/// and end inside the image.
fn final_regions(
    rs: &Resolver,
    spec: &LayoutSpec,
    placed: Vec<Placed>,
    extra: Vec<Region>,
    size: u64,
) -> Result<Vec<Region>> {
    let mut regions: Vec<Region> = spec
        .regions
        .iter()
        .zip(placed)
        .map(|(r, p)| Region {
            name: r.name.value.clone(),
            offset: p.offset,
            size: p.size,
            content: p.content,
        })
        .chain(extra)
        .collect();
    regions.sort_by_key(|r| r.offset);
    for w in regions.windows(2) {
        if w[0].size > 0 && w[0].offset + w[0].size > w[1].offset {
            return Err(rs.field(
                0,
                "redundant-offset",
                format!("region `{}` overlaps `{}`", w[1].name, w[0].name),
            ));
        }
    }
    if let Some(r) = regions.iter().find(|r| r.offset + r.size > size) {
        return Err(rs.field(
            0,
            "redundant-offset",
            format!("region `{}` ends past the image", r.name),
        ));
    }
    Ok(regions)
}

/// An env away from LBA 16 is found through the locator record in sector 0 (see
/// `uboot_env::locator`); that needs a record the loader can read and sector 0's boot-code
/// area free.
fn check_env_locator(rs: &Resolver, e: &EnvPlan, regions: &[Region]) -> Result<()> {
    let loc = e
        .locator()
        .map_err(|m| rs.field(e.line, "fill.uboot-env", m))?;
    if loc.is_default() {
        return Ok(());
    }
    if let Some(r) = regions.iter().find(|r| r.size > 0 && r.offset < BLOCK) {
        return Err(rs.field(
            e.line,
            "offset",
            format!(
                "the env is not at LBA 16 (128 KiB, one copy), so imgtool's loader finds it through a \
                 record in sector 0, but region `{}` covers sector 0: add a `table:` or move the region",
                r.name
            ),
        ));
    }
    Ok(())
}

fn table_plan(
    rs: &Resolver,
    spec: &LayoutSpec,
    t: &TableSpec,
    parts: &[(usize, &PartitionSpec)],
    regions: &[Region],
) -> Result<TablePlan> {
    let kind = t.kind.value;
    let seed = spec.name.clone().unwrap_or_default();
    let disk_id = match (kind, &t.disk_id) {
        (TableKind::Mbr, None) => DiskId::Mbr(u32::from_le_bytes(
            derive_id(&seed, "mbr-disk-id")[..4].try_into().unwrap(),
        )),
        (TableKind::Gpt, None) => DiskId::Gpt(derive_id(&seed, "gpt-disk-guid")),
        (TableKind::Mbr, Some(s)) => {
            let text = s.value.as_text();
            let v = match &s.value {
                Scalar::Int(i) => u32::try_from(*i).ok(),
                _ => text
                    .strip_prefix("0x")
                    .and_then(|h| u32::from_str_radix(h, 16).ok()),
            };
            DiskId::Mbr(v.ok_or_else(|| {
                rs.field(
                    s.referenced.line() as usize,
                    "table.disk-id",
                    format!("`{text}` is not a 32-bit MBR signature like 0x12345678"),
                )
            })?)
        }
        (TableKind::Gpt, Some(s)) => DiskId::Gpt(
            parse_guid(&s.value.as_text())
                .map_err(|m| rs.field(s.referenced.line() as usize, "table.disk-id", m))?,
        ),
    };
    let mut out = Vec::new();
    for (i, p) in parts {
        let r = &spec.regions[*i];
        let line = p.number.referenced.line() as usize;
        let region = regions
            .iter()
            .find(|x| x.name == r.name.value)
            .expect("placed");
        let n = p.number.value;
        let max = if kind == TableKind::Mbr { 4 } else { 128 };
        if n == 0 || n > max {
            return Err(rs.field(
                line,
                "partition.number",
                format!("{n} is out of range for {kind:?} (1..={max})"),
            ));
        }
        let tline = p.kind.referenced.line() as usize;
        let ptype = match kind {
            TableKind::Mbr => PartitionType::Mbr(
                mbr_type(&p.kind.value).map_err(|m| rs.field(tline, "partition.type", m))?,
            ),
            TableKind::Gpt => PartitionType::Gpt(
                gpt_type(&p.kind.value).map_err(|m| rs.field(tline, "partition.type", m))?,
            ),
        };
        if kind == TableKind::Mbr && (p.label.is_some() || p.guid.is_some() || p.flags.is_some()) {
            return Err(rs.field(
                line,
                "partition",
                "label, guid and flags are GPT-only: remove them or use `table: {type: gpt}`",
            ));
        }
        let guid = match (kind, &p.guid) {
            (TableKind::Gpt, Some(g)) => {
                Some(parse_guid(g).map_err(|m| rs.field(line, "partition.guid", m))?)
            }
            (TableKind::Gpt, None) => {
                Some(derive_id(&seed, &format!("partition-{}", r.name.value)))
            }
            _ => None,
        };
        if kind == TableKind::Mbr
            && (region.offset / BLOCK > u32::MAX as u64 || region.size / BLOCK > u32::MAX as u64)
        {
            return Err(rs.field(
                line,
                "partition",
                "an MBR partition must start and end below 2 TiB: use a GPT",
            ));
        }
        out.push(PartitionPlan {
            number: n,
            region: r.name.value.clone(),
            first_lba: region.offset / BLOCK,
            blocks: region.size / BLOCK,
            kind: ptype,
            boot: p.boot,
            label: p.label.clone(),
            guid,
            flags: p.flags.unwrap_or(0),
            expand: p.expand,
        });
    }
    Ok(TablePlan {
        kind,
        disk_id,
        partitions: out,
    })
}

/// A reproducible identifier: the same layout always gets the same GUIDs and disk signature.
fn derive_id(seed: &str, what: &str) -> [u8; 16] {
    use sha2::{Digest, Sha256};
    let h = Sha256::digest(format!("imgtool:{seed}:{what}"));
    let mut id: [u8; 16] = h[..16].try_into().unwrap();
    id[6] = (id[6] & 0x0f) | 0x50; // RFC 4122 version 5 (name-based)
    id[8] = (id[8] & 0x3f) | 0x80; // RFC 4122 variant
    id
}

/// Parse `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` into canonical byte order.
pub fn parse_guid(s: &str) -> Result<[u8; 16], String> {
    s.parse::<partition_table::Guid>()
        .map(|g| g.0)
        .map_err(|_| format!("`{s}` is not a GUID like 0fc63daf-8483-4772-8e79-3d69d8477de4"))
}

fn mbr_type(s: &Scalar) -> Result<u8, String> {
    let text = s.as_text();
    Ok(match (s, text.as_str()) {
        (Scalar::Int(i), _) => u8::try_from(*i).map_err(|_| format!("{i} is not a type byte (0..=255)"))?,
        (_, "linux") => 0x83,
        (_, "swap") => 0x82,
        (_, "fat12") => 0x01,
        (_, "fat16") => 0x06,
        (_, "fat32") => 0x0c,
        (_, "efi") => 0xef,
        (_, t) => t
            .strip_prefix("0x")
            .and_then(|h| u8::from_str_radix(h, 16).ok())
            .ok_or_else(|| format!("`{t}` is not an MBR type: use a byte like 0x83 or linux, swap, fat12, fat16, fat32, efi"))?,
    })
}

fn gpt_type(s: &Scalar) -> Result<[u8; 16], String> {
    let text = s.as_text();
    let guid = match text.as_str() {
        "linux" => "0fc63daf-8483-4772-8e79-3d69d8477de4",
        "efi" => "c12a7328-f81f-11d2-ba4b-00a0c93ec93b",
        "swap" => "0657fd6d-a4ab-43c4-84e5-0933c84b4f4f",
        "home" => "933ac7e1-2eb4-4f13-b844-0e14e2aef915",
        "root-arm64" => "b921b045-1df0-41c3-af44-4c6f280d3fae",
        "root-x86-64" => "4f68bce3-e8cd-4db1-96e7-fbcaf984b709",
        "basic-data" => "ebd0a0a2-b9e5-4433-87c0-68b6b72699c7",
        t => t,
    };
    parse_guid(guid).map_err(|_| {
        format!("`{text}` is not a GPT type: use a GUID or linux, efi, swap, home, root-arm64, root-x86-64, basic-data")
    })
}
