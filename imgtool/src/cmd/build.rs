//! `imgtool build LAYOUT -o IMAGE`: resolve a layout into a plan and write it.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressStyle};

use super::UsageError;

#[derive(clap::Args)]
pub struct Args {
    /// A layout YAML file, or the name of a built-in layout (`imgtool layout list`).
    pub layout: String,
    /// The image file to write (written under a temporary name, renamed on success).
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// Set a layout input: `-D kernel=Image -D rootfs=rootfs/`.
    #[arg(short = 'D', value_name = "NAME=VALUE")]
    pub define: Vec<String>,
    /// Print the plan and write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the plan (and what was written) as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let mut overrides = BTreeMap::new();
    for d in &a.define {
        let (k, v) = d
            .split_once('=')
            .ok_or_else(|| UsageError(format!("-D {d}: write NAME=VALUE")))?;
        overrides.insert(k.to_string(), v.to_string());
    }
    let mtime = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let ctx = layout::Context {
        file: String::new(),
        base_dir: PathBuf::new(),
        overrides,
        mtime,
    };
    let plan = layout::plan_from(&a.layout, ctx).map_err(input_error)?;

    if a.dry_run {
        if a.json {
            println!("{}", serde_json::to_string_pretty(&plan_json(&plan, None))?);
        } else {
            print!("{}", plan.listing());
        }
        return Ok(());
    }
    let out = a
        .output
        .ok_or_else(|| UsageError("no output: give -o IMAGE (or --dry-run)".into()))?;
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}")
            .expect("template")
            .progress_chars("=> "),
    );
    bar.set_message(format!("writing {}", out.display()));
    let stats = layout::write_image(&plan, &out, &mut |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    })
    .map_err(input_error)
    .with_context(|| format!("writing {}", out.display()))?;
    bar.finish_and_clear();
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&plan_json(&plan, Some(&stats)))?
        );
    } else {
        print!("{}", plan.listing());
        println!(
            "wrote {}: {} bytes of data in a {}-byte image",
            out.display(),
            stats.written,
            stats.image_size
        );
    }
    Ok(())
}

/// Layout mistakes exit with 2; machine failures with 1.
pub(crate) fn input_error(e: layout::Error) -> anyhow::Error {
    if e.is_input_error() {
        UsageError(e.to_string()).into()
    } else {
        e.into()
    }
}

fn plan_json(plan: &layout::Plan, stats: Option<&layout::WriteStats>) -> serde_json::Value {
    use serde_json::json;
    let regions: Vec<_> = plan
        .regions
        .iter()
        .map(|r| {
            json!({
                "name": r.name,
                "offset": r.offset,
                "lba": r.offset / 512,
                "size": r.size,
                "blocks": r.size / 512,
                "content": r.content.describe(),
            })
        })
        .collect();
    let table = plan.table.as_ref().map(|t| {
        json!({
            "type": format!("{:?}", t.kind).to_lowercase(),
            "partitions": t.partitions.iter().map(|p| json!({
                "number": p.number,
                "region": p.region,
                "first_lba": p.first_lba,
                "blocks": p.blocks,
                "boot": p.boot,
            })).collect::<Vec<_>>(),
        })
    });
    json!({
        "name": plan.name,
        "size": plan.size,
        "table": table,
        "regions": regions,
        "written": stats.map(|s| s.written),
    })
}
