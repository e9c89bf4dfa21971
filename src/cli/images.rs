//! `zstore images`

use super::{Ctx, output};

/// List stored images with their names, manifest digests, layer counts and sizes.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Print a JSON array on stdout
    #[arg(long)]
    json: bool,
}

pub fn run(ctx: &Ctx, a: Args) -> anyhow::Result<u8> {
    let store = ctx.store()?;
    let images = zstore::ops::images::list(&store)?;
    if a.json {
        output::json(&images)?;
        return Ok(0);
    }
    println!(
        "{:<60} {:<19} {:>6} {:>10}",
        "NAME", "DIGEST", "LAYERS", "SIZE"
    );
    for i in images {
        let digest = &i.manifest_digest.hex()[..12];
        let names = if i.names.is_empty() {
            vec!["<none>".to_string()]
        } else {
            i.names
        };
        for n in names {
            println!(
                "{:<60} sha256:{:<12} {:>6} {:>10}",
                n,
                digest,
                i.layers,
                output::bytes(i.size)
            );
        }
    }
    Ok(0)
}
