//! `cargo xtask demo`: a zstd:chunked partial pull end to end, on a machine without internet:
//! a loopback registry, two near-identical images pushed by zstore as zstd:chunked, pulled
//! back by a second store that fetches almost nothing for the second one, and a hardlink
//! checkout. Everything it starts or writes is removed at the end.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};
use zstore_fixtures::registry::{AuthKind, TestRegistry};
use zstore_fixtures::tools::have;
use zstore_fixtures::{Compression, Layout, near_identical_tar};

struct Zstore<'a> {
    bin: &'a Path,
    root: &'a Path,
}

impl Zstore<'_> {
    /// Runs zstore, echoing the command line; returns stdout.
    fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        println!(
            "\n$ zstore --root {} {}",
            self.root.display(),
            args.join(" ")
        );
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
    format!("{:.2} MiB", n as f64 / (1 << 20) as f64)
}

/// Installs a missing tool from Debian's packages when running as root.
fn ensure(cmd: &str, package: &str) -> anyhow::Result<()> {
    if have(cmd) {
        return Ok(());
    }
    let root = zstore_fixtures::tools::is_root();
    if !root {
        bail!(
            "{cmd} is needed: install the {package} package (e.g. `sudo apt-get install {package}`)"
        );
    }
    eprintln!("== installing {package}");
    let status = Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends", package])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()?;
    if !status.success() {
        Command::new("apt-get").args(["update", "-qq"]).status()?;
        let status = Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends", package])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()?;
        if !status.success() {
            bail!("could not install {package}");
        }
    }
    Ok(())
}

pub fn run(_args: &[String]) -> anyhow::Result<()> {
    for (cmd, package) in TestRegistry::needs(AuthKind::Anonymous) {
        ensure(cmd, package)?;
    }
    let bin = crate::build_zstore()?;
    let tmp = std::env::temp_dir().join(format!("zstore-demo-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    let result = demo(&bin, &tmp);
    let _ = std::fs::remove_dir_all(&tmp);
    result
}

fn demo(bin: &Path, tmp: &Path) -> anyhow::Result<()> {
    let (files, size) = (300usize, 100 * 1024usize);
    println!("== starting a registry (CNCF distribution) on loopback");
    let registry = TestRegistry::start(AuthKind::Anonymous, tmp);
    println!("   {}", registry.host);

    println!(
        "== building two images: {files} files of {} each, differing in one file",
        mib(size as u64)
    );
    let mut layout = Layout::new(&tmp.join("images"));
    layout.add_image(
        "v1",
        &[(near_identical_tar(1, files, size), Compression::None)],
    );
    layout.add_image(
        "v2",
        &[(near_identical_tar(2, files, size), Compression::None)],
    );

    let builder = Zstore {
        bin,
        root: &tmp.join("builder-store"),
    };
    for tag in ["v1", "v2"] {
        builder.run(&["pull", &layout.source(tag)])?;
        let dest = format!("{}/demo/app:{tag}", registry.host);
        let pushed = builder.json(&[
            "push",
            &layout.source(tag),
            &dest,
            "--format",
            "zstd:chunked",
        ])?;
        println!(
            "pushed {dest} as zstd:chunked: {} uploaded",
            mib(pushed["pushed_bytes"].as_u64().unwrap_or(0))
        );
    }

    println!("\n== a node with its own store pulls v1, then v2");
    let node = Zstore {
        bin,
        root: &tmp.join("node-store"),
    };
    let mut results = Vec::new();
    for tag in ["v1", "v2"] {
        let before = registry.bytes_sent();
        let t = std::time::Instant::now();
        let r = node.json(&["pull", &format!("{}/demo/app:{tag}", registry.host)])?;
        let secs = t.elapsed().as_secs_f64();
        let sent = registry.bytes_sent() - before;
        let l = &r["layers"][0];
        println!(
            "{tag}: {secs:.2} s, {} from the registry (access log), layer of {}: {} of {} files already stored, DiffID verified: {}",
            mib(sent),
            mib(l["size"].as_u64().unwrap_or(0)),
            l["reused_files"],
            l["files"],
            l["diff_id_verified"]
        );
        results.push(sent);
    }
    println!(
        "v2 transferred {:.2}% of what v1 did",
        results[1] as f64 * 100.0 / results[0].max(1) as f64
    );

    let dest = tmp.join("v2-root");
    let co = node.json(&[
        "checkout",
        &format!("{}/demo/app:v2", registry.host),
        dest.to_str().unwrap_or_default(),
        "--mode",
        "hardlink",
    ])?;
    println!(
        "checkout of v2: {} files, {} hardlinked to the store",
        co["files"], co["hardlinked"]
    );
    println!(
        "{}",
        std::fs::read_to_string(dest.join("var/www/html/index.html"))?.trim()
    );
    let df = node.json(&["df"])?;
    println!(
        "node store: {} images, {} of files in their layers, {} on disk",
        df["images"],
        mib(df["logical_bytes"].as_u64().unwrap_or(0)),
        mib(df["stored_bytes"].as_u64().unwrap_or(0))
    );
    let fsck = node.json(&["fsck"])?;
    println!(
        "fsck: {} object files verified, {} problems",
        fsck["objects_checked"],
        fsck["errors"].as_array().map_or(0, Vec::len)
    );
    drop(registry);
    println!("\ndemo finished; the registry is stopped and everything it made is being removed");
    Ok(())
}
