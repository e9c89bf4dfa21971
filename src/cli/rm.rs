//! `zstore rm`

use super::{Ctx, output};

/// Remove image names; an image left without names (or named by digest) is removed.
/// Its data is freed by the next `zstore gc`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Image names, manifest digests, or unique digest prefixes
    #[arg(required = true)]
    images: Vec<String>,
    /// Print one JSON document on stdout
    #[arg(long)]
    json: bool,
}

pub fn run(ctx: &Ctx, a: Args) -> anyhow::Result<u8> {
    let store = ctx.store()?;
    let progress = ctx.progress(a.json);
    let report = zstore::ops::images::rm(&store, &a.images, &progress)?;
    if a.json {
        output::json(&report)?;
    } else if !ctx.quiet {
        for n in &report.untagged {
            println!("untagged {n}");
        }
        for d in &report.removed {
            println!("removed {d}");
        }
    }
    Ok(0)
}
