//! `zstore inspect`

use super::{Ctx, output};

/// Show an image's names, digests, layers and config.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Image name, manifest digest, or a unique digest prefix (12+ hex digits)
    image: String,
    /// Print one JSON document on stdout
    #[arg(long)]
    json: bool,
}

pub fn run(ctx: &Ctx, a: Args) -> anyhow::Result<u8> {
    let store = ctx.store()?;
    let d = zstore::ops::images::inspect(&store, &a.image)?;
    if a.json {
        output::json(&d)?;
        return Ok(0);
    }
    println!("names:    {}", d.names.join(", "));
    println!(
        "manifest: {} ({})",
        d.manifest_digest, d.manifest_media_type
    );
    println!("config:   {}", d.config_digest);
    println!("source:   {}", d.source);
    println!("layers:");
    for (i, l) in d.layers.iter().enumerate() {
        println!(
            "  {i}: {} {} {} -> {} tar, {} files ({} of content)",
            l.digest,
            l.format,
            output::bytes(l.size),
            output::bytes(l.tar_size),
            l.files,
            output::bytes(l.logical_bytes)
        );
        println!("     diff_id {}", l.diff_id);
    }
    Ok(0)
}
