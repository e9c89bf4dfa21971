//! `zstore fsck`

use super::{Ctx, output};

/// Verify the store: re-hash every object, check every variant's metadata and every database
/// reference. Exits 1 if any problem is found.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Hashing threads [default: one per core]
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Print one JSON document on stdout
    #[arg(long)]
    json: bool,
}

pub fn run(ctx: &Ctx, a: Args) -> anyhow::Result<u8> {
    let store = ctx.store()?;
    let progress = ctx.progress(a.json);
    let r = zstore::store::fsck::fsck(&store, a.threads, &progress)?;
    if a.json {
        output::json(&r)?;
    } else {
        for p in &r.errors {
            println!(
                "{}: {}: {}",
                serde_json::to_value(p.kind)?.as_str().unwrap_or("problem"),
                p.object,
                p.detail
            );
        }
        if !ctx.quiet {
            println!(
                "checked {} object files ({} of data), {} layers, {} images: {} problems",
                r.objects_checked,
                output::bytes(r.bytes_checked),
                r.layers_checked,
                r.images_checked,
                r.errors.len()
            );
        }
    }
    Ok(if r.errors.is_empty() { 0 } else { 1 })
}
