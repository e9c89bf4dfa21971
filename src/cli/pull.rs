//! `zstore pull`

use anyhow::Context;
use zstore::image::platform::Platform;
use zstore::ops::pull::{Partial, PullOptions, pull};

use super::{Ctx, output};

/// Fetch an image into the store, verifying every digest and storing each file once.
///
/// SOURCE is a registry reference (docker://HOST[:PORT]/REPO[:TAG|@DIGEST], or the same without
/// docker://; short names as docker: `alpine` is docker.io/library/alpine:latest) or
/// oci:DIR[:TAG] (an OCI image layout). Layers in tar, gzip and zstd are streamed, verified
/// against the image config's DiffIDs and deduplicated file by file. zstd:chunked layers are
/// read by ranges: only their table of contents and the files the store lacks. Layers already
/// stored are not read again.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// What to pull: [docker://]HOST/REPO[:TAG|@DIGEST] or oci:DIR[:TAG]
    source: String,
    /// Platform to pick from a multi-platform image, as OS/ARCH[/VARIANT] [default: the host's]
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    platform: Option<Platform>,
    /// zstd:chunked layers by ranges: auto (unless most of a layer is missing), always, never
    #[arg(long, value_enum, default_value_t = PartialArg::Auto)]
    partial: PartialArg,
    #[command(flatten)]
    registry: super::registry_args::RegistryArgs,
    /// Print one JSON document describing the pull on stdout
    #[arg(long)]
    json: bool,
}

pub fn run(ctx: &Ctx, a: Args) -> anyhow::Result<u8> {
    let store = ctx.store()?;
    let progress = ctx.progress(a.json);
    let opts = PullOptions {
        platform: a.platform,
        partial: match a.partial {
            PartialArg::Auto => Partial::Auto,
            PartialArg::Always => Partial::Always,
            PartialArg::Never => Partial::Never,
        },
        client: a.registry.client_options(),
        authfile: a.registry.authfile.clone(),
    };
    let report = pull(&store, &a.source, &opts, &progress)
        .with_context(|| format!("pulling {}", a.source))?;
    if a.json {
        output::json(&report)?;
    } else if !ctx.quiet {
        let files: u64 = report.layers.iter().map(|l| l.files).sum();
        let reused: u64 = report.layers.iter().map(|l| l.reused_files).sum();
        let size: u64 = report.layers.iter().map(|l| l.size).sum();
        let layer_bytes: u64 = report.layers.iter().map(|l| l.fetched_bytes).sum();
        let skipped = size.saturating_sub(layer_bytes);
        let pct = if size > 0 {
            skipped as f64 * 100.0 / size as f64
        } else {
            0.0
        };
        println!(
            "pulled {} ({}): {} layers, {} files ({} already stored); fetched {}, skipped: {} ({pct:.2}%)",
            report.image,
            report.manifest_digest,
            report.layers.len(),
            files,
            reused,
            output::bytes(report.fetched_bytes),
            output::bytes(skipped),
        );
        if ctx.verbose > 0 {
            for (i, l) in report.layers.iter().enumerate() {
                println!(
                    "  layer {i}: {} {} {} files ({} reused), read {}, diff_id {}",
                    l.digest,
                    l.format,
                    l.files,
                    l.reused_files,
                    output::bytes(l.fetched_bytes),
                    if l.diff_id_verified {
                        "verified"
                    } else {
                        "not verifiable"
                    }
                );
            }
        }
    }
    Ok(0)
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum PartialArg {
    Auto,
    Always,
    Never,
}
