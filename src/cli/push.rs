//! `zstore push`

use anyhow::Context;
use zstore::ops::push::{PushFormat, PushOptions, push};

use super::{Ctx, output};

/// Write a stored image to DEST, re-compressing its layers from their exact tars (DiffIDs are
/// unchanged).
///
/// DEST is a registry reference ([docker://]HOST[:PORT]/REPO[:TAG]; blobs the registry has are
/// not uploaded again) or oci:DIR[:TAG] (an OCI image layout, created if missing). zstd:chunked layers are the
/// current generation (tar-split, 64-byte footer) and carry both the current and the legacy
/// annotation keys, so that old and new podman alike can pull them partially.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Image name, manifest digest, or a unique digest prefix
    image: String,
    /// Where to write: [docker://]HOST/REPO[:TAG] or oci:DIR[:TAG]
    dest: String,
    /// Layer compression
    #[arg(long, value_enum, default_value_t = FormatArg::ZstdChunked)]
    format: FormatArg,
    /// Compression level [default: 10 for zstd:chunked, 3 for zstd, 6 for gzip]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(i32).range(1..=19))]
    compression_level: Option<i32>,
    #[command(flatten)]
    registry: super::registry_args::RegistryArgs,
    /// Print one JSON document on stdout
    #[arg(long)]
    json: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum FormatArg {
    #[value(name = "zstd:chunked")]
    ZstdChunked,
    Zstd,
    Gzip,
}

pub fn run(ctx: &Ctx, a: Args) -> anyhow::Result<u8> {
    let store = ctx.store()?;
    let progress = ctx.progress(a.json);
    let format = match a.format {
        FormatArg::ZstdChunked => PushFormat::ZstdChunked,
        FormatArg::Zstd => PushFormat::Zstd,
        FormatArg::Gzip => PushFormat::Gzip,
    };
    let opts = PushOptions {
        format,
        level: a.compression_level,
        client: a.registry.client_options(),
        authfile: a.registry.authfile.clone(),
    };
    let r = push(&store, &a.image, &a.dest, &opts, &progress)
        .with_context(|| format!("pushing {} to {}", a.image, a.dest))?;
    if a.json {
        output::json(&r)?;
    } else if !ctx.quiet {
        println!(
            "pushed {} ({}) as {}: {} layers, {} written",
            r.destination,
            r.manifest_digest,
            format.name(),
            r.layers.len(),
            output::bytes(r.pushed_bytes)
        );
    }
    Ok(0)
}
