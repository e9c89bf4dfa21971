//! `zstore checkout`

use std::path::PathBuf;

use anyhow::Context;
use zstore::store::checkout::{CheckoutMode, checkout};

use super::{Ctx, output};

/// Build an image's root filesystem at DEST.
///
/// Layers are applied in order with OCI whiteouts; file types, permission bits (setuid, setgid,
/// sticky), ownership (as root), nanosecond mtimes and xattrs are reproduced. DEST must not
/// exist or be an empty directory; the tree appears there only when complete.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Image name, manifest digest, or a unique digest prefix
    image: String,
    /// Where to create the tree
    dest: PathBuf,
    /// auto: reflink if the filesystem can, else hardlink, else copy. hardlink: link to store
    /// objects (read-only by contract; same filesystem). reflink: share extents (xfs, btrfs).
    /// copy: real, unshared copies.
    #[arg(long, value_enum, default_value_t = ModeArg::Auto)]
    mode: ModeArg,
    /// Print one JSON document on stdout
    #[arg(long)]
    json: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum ModeArg {
    Auto,
    Hardlink,
    Reflink,
    Copy,
}

pub fn run(ctx: &Ctx, a: Args) -> anyhow::Result<u8> {
    let store = ctx.store()?;
    let progress = ctx.progress(a.json);
    let mode = match a.mode {
        ModeArg::Auto => CheckoutMode::Auto,
        ModeArg::Hardlink => CheckoutMode::Hardlink,
        ModeArg::Reflink => CheckoutMode::Reflink,
        ModeArg::Copy => CheckoutMode::Copy,
    };
    let report = checkout(&store, &a.image, &a.dest, mode, &progress)
        .with_context(|| format!("checking out {} at {}", a.image, a.dest.display()))?;
    for w in &report.warnings {
        progress.println(&format!("warning: {w}"));
    }
    if a.json {
        output::json(&report)?;
    } else if !ctx.quiet {
        println!(
            "checked out {} files ({}) at {}: {} hardlinked, {} reflinked, {} copied",
            report.files,
            output::bytes(report.bytes),
            report.path,
            report.hardlinked,
            report.reflinked,
            report.copied
        );
    }
    Ok(0)
}
