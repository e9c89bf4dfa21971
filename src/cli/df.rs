//! `zstore df`

use super::{Ctx, output};

/// Show what the store holds and the disk space it really uses.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Print one JSON document on stdout
    #[arg(long)]
    json: bool,
}

pub fn run(ctx: &Ctx, a: Args) -> anyhow::Result<u8> {
    let store = ctx.store()?;
    let progress = ctx.progress(a.json);
    let r = zstore::store::df::df(&store, &progress)?;
    if a.json {
        output::json(&r)?;
        return Ok(0);
    }
    println!("images:    {}", r.images);
    println!("layers:    {}", r.layers);
    println!("objects:   {} ({} variants)", r.objects, r.variants);
    println!(
        "logical:   {} (file content over all layers)",
        output::bytes(r.logical_bytes)
    );
    println!(
        "stored:    {} (disk used by objects)",
        output::bytes(r.stored_bytes)
    );
    if r.stored_bytes > 0 {
        println!(
            "ratio:     {:.2}x",
            r.logical_bytes as f64 / r.stored_bytes as f64
        );
    }
    println!("metadata:  {}", output::bytes(r.metadata_bytes));
    println!("checkouts: {}", r.checkouts);
    Ok(0)
}
