//! `cargo xtask demo`: zstore end to end on a machine without internet.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};
use zstore_fixtures::{Compression, Layout, near_identical_tar};

struct Zstore<'a> {
    bin: &'a Path,
    root: &'a Path,
}

impl Zstore<'_> {
    /// Runs zstore, echoing the command line; returns stdout.
    fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        println!("\n$ zstore {}", args.join(" "));
        let out = Command::new(self.bin)
            .arg("--root")
            .arg(self.root)
            .args(args)
            .output()
            .context("running zstore")?;
        eprint!("{}", String::from_utf8_lossy(&out.stderr));
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            bail!(
                "zstore {} failed ({})\n{stdout}",
                args.join(" "),
                out.status
            );
        }
        Ok(stdout)
    }

    fn json(&self, args: &[&str]) -> anyhow::Result<serde_json::Value> {
        let mut a = args.to_vec();
        a.push("--json");
        let out = self.run(&a)?;
        serde_json::from_str(&out)
            .with_context(|| format!("parsing the output of zstore {}", args.join(" ")))
    }
}

fn mib(n: u64) -> String {
    format!("{:.1} MiB", n as f64 / (1 << 20) as f64)
}

pub fn run(_args: &[String]) -> anyhow::Result<()> {
    let bin = crate::build_zstore()?;
    let tmp = std::env::temp_dir().join(format!("zstore-demo-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    let result = demo(&bin, &tmp);
    // Hardlinked checkouts may be read-only trees; a plain removal is enough as root or owner.
    let _ = std::fs::remove_dir_all(&tmp);
    result
}

fn demo(bin: &Path, tmp: &Path) -> anyhow::Result<()> {
    let (files, size) = (200usize, 100 * 1024usize);
    println!(
        "== building two near-identical images ({files} files of {} each, differing in one file)",
        mib(size as u64)
    );
    let mut layout = Layout::new(&tmp.join("images"));
    layout.add_image(
        "v1",
        &[(near_identical_tar(1, files, size), Compression::Gzip)],
    );
    layout.add_image(
        "v2",
        &[(near_identical_tar(2, files, size), Compression::Zstd)],
    );
    let zs = Zstore {
        bin,
        root: &tmp.join("store"),
    };

    let v1 = zs.json(&["pull", &layout.source("v1")])?;
    let v2 = zs.json(&["pull", &layout.source("v2")])?;
    for (name, r) in [("v1", &v1), ("v2", &v2)] {
        let l = &r["layers"][0];
        println!(
            "{name}: {} files, {} already in the store ({} of content not written again)",
            l["files"],
            l["reused_files"],
            mib(r["reused_bytes"].as_u64().unwrap_or(0))
        );
    }
    let df = zs.json(&["df"])?;
    println!(
        "store: {} images, {} of files, {} on disk",
        df["images"],
        mib(df["logical_bytes"].as_u64().unwrap_or(0)),
        mib(df["stored_bytes"].as_u64().unwrap_or(0))
    );

    let dest = tmp.join("v2-root");
    let co = zs.json(&[
        "checkout",
        &layout.source("v2"),
        dest.to_str().unwrap_or_default(),
        "--mode",
        "hardlink",
    ])?;
    println!(
        "checkout: {} files, {} hardlinked to the store",
        co["files"], co["hardlinked"]
    );
    let html = std::fs::read_to_string(dest.join("var/www/html/index.html"))?;
    println!("{}", html.trim());

    let fsck = zs.json(&["fsck"])?;
    println!(
        "fsck: {} object files verified, {} problems",
        fsck["objects_checked"],
        fsck["errors"].as_array().map_or(0, Vec::len)
    );
    zs.run(&["rm", &layout.source("v1")])?;
    let gc = zs.json(&["gc"])?;
    println!(
        "gc after removing v1: {} objects removed (only v1's own file)",
        gc["removed_objects"]
    );
    println!("\ndemo finished; everything it made is being removed");
    Ok(())
}
