//! Project tasks: `cargo xtask demo` (more to come: bench).

mod bench;
mod demo;
mod report;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

const USAGE: &str = "usage: cargo xtask <task>

tasks:
  demo    a zstd:chunked partial pull end to end, without internet: start a registry on
          loopback (installing docker-registry if missing and root), push two near-identical
          images with zstore, pull them into a second store (the second fetches almost
          nothing), check one out by hardlink; everything is removed afterwards
  bench   [--quick] [--out DIR] zstore against podman on one loopback registry and the same
          images, hardlink against reflink against copy on loop-mounted xfs, btrfs and ext4
          (root), fsck against sha256sum; writes report.md, results.json and SVG charts
          (default DIR: target/bench-report). --quick: 3 images of 20 MiB";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("demo") => demo::run(&args[1..]),
        Some("bench") => bench::run(&args[1..]),
        Some("-h") | Some("--help") | None => {
            println!("{USAGE}");
            Ok(())
        }
        Some(other) => {
            eprintln!("unknown task {other:?}\n\n{USAGE}");
            std::process::exit(2);
        }
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// Builds the zstore binary in release mode and returns its path.
pub fn build_zstore() -> anyhow::Result<PathBuf> {
    let root = workspace_root();
    eprintln!("== building zstore (release)");
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args([
            "build",
            "--release",
            "--package",
            "zstore",
            "--bin",
            "zstore",
        ])
        .current_dir(&root)
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("cargo build failed");
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    Ok(target.join("release").join("zstore"))
}
