//! `zstore gc`

use super::{Ctx, output};

/// Remove layers and objects no image references, and leftovers of interrupted work.
///
/// Safe to run from cron while pulls and checkouts run: gc waits for them (and they for it).
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Report what would be removed without removing anything
    #[arg(long)]
    dry_run: bool,
    /// Print one JSON document on stdout
    #[arg(long)]
    json: bool,
}

pub fn run(ctx: &Ctx, a: Args) -> anyhow::Result<u8> {
    let store = ctx.store()?;
    let progress = ctx.progress(a.json);
    let r = zstore::store::gc::gc(&store, a.dry_run, &progress)?;
    if a.json {
        output::json(&r)?;
    } else if !ctx.quiet {
        let verb = if r.dry_run { "would remove" } else { "removed" };
        println!(
            "{verb} {} objects ({} variants), {} layers ({} metadata records), {} temp entries; {} freed",
            r.removed_objects,
            r.removed_variants,
            r.removed_layers,
            r.removed_metadata,
            r.removed_temp,
            output::bytes(r.removed_bytes)
        );
    }
    Ok(0)
}
