//! `cargo xtask bench [--quick] [--out DIR]`: zstore against podman on the same loopback
//! registry and images, and hardlink against reflink against copy, on loop-mounted xfs, btrfs
//! and ext4. Every figure comes from this one run; the report states ratios against baselines
//! measured beside them, and says plainly which targets are missed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};
use serde_json::{Value, json};
use zstore_fixtures::fs::LoopFs;
use zstore_fixtures::podman::Podman;
use zstore_fixtures::registry::{AuthKind, TestRegistry};
use zstore_fixtures::tools::{have, is_root, skopeo};
use zstore_fixtures::{Layout, real_files, real_files_tar};

struct Options {
    quick: bool,
    out: PathBuf,
}

fn parse(args: &[String]) -> anyhow::Result<Options> {
    let mut o = Options {
        quick: false,
        out: crate::workspace_root().join("target/bench-report"),
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => o.quick = true,
            "--out" => o.out = PathBuf::from(it.next().context("--out needs a directory")?),
            other => bail!("unknown bench option {other:?} (options: --quick, --out DIR)"),
        }
    }
    Ok(o)
}

fn version(cmd: &str, arg: &str) -> String {
    Command::new(cmd)
        .arg(arg)
        .output()
        .map(|o| {
            // The first line naming a version (ostree starts with "libostree:").
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .find(|l| l.bytes().any(|b| b.is_ascii_digit()))
                .unwrap_or("")
                .trim()
                .to_string()
        })
        .unwrap_or_else(|_| "not found".into())
}

struct Zstore {
    bin: PathBuf,
    root: PathBuf,
}

impl Zstore {
    fn json(&self, args: &[&str]) -> anyhow::Result<(Value, f64)> {
        let t = Instant::now();
        let out = Command::new(&self.bin)
            .arg("--root")
            .arg(&self.root)
            .args(args)
            .arg("--json")
            .output()?;
        let secs = t.elapsed().as_secs_f64();
        if !out.status.success() {
            bail!(
                "zstore {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok((serde_json::from_slice(&out.stdout)?, secs))
    }
}

fn drop_caches() -> anyhow::Result<()> {
    Command::new("sync").status()?;
    std::fs::write("/proc/sys/vm/drop_caches", "3").context("dropping the page cache")?;
    Ok(())
}

fn page_cache_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("Cached:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .unwrap_or(0)
        * 1024
}

/// Reads every regular file below `dir` (to pull it into the page cache).
fn read_tree(dir: &Path) -> u64 {
    let mut total = 0;
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    for e in rd.flatten() {
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_dir() {
            total += read_tree(&e.path());
        } else if ft.is_file()
            && let Ok(mut f) = std::fs::File::open(e.path())
        {
            total += std::io::copy(&mut f, &mut std::io::sink()).unwrap_or(0);
        }
    }
    total
}

/// `btrfs filesystem du -s --raw` of each path: total, exclusive and shared bytes (null if the
/// command fails).
fn btrfs_du(paths: &[&Path]) -> Value {
    let Ok(out) = Command::new("btrfs")
        .args(["filesystem", "du", "-s", "--raw"])
        .args(paths)
        .output()
    else {
        return Value::Null;
    };
    let rows: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let total: u64 = w.next()?.parse().ok()?;
            let exclusive: u64 = w.next()?.parse().ok()?;
            let shared: u64 = w.next()?.parse().ok()?;
            Some(json!({"path": w.collect::<Vec<_>>().join(" "), "total": total, "exclusive": exclusive, "shared": shared}))
        })
        .collect();
    json!(rows)
}

fn timed(cmd: &mut Command) -> anyhow::Result<f64> {
    let t = Instant::now();
    let out = cmd.output()?;
    if !out.status.success() {
        bail!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(t.elapsed().as_secs_f64())
}

pub fn run(args: &[String]) -> anyhow::Result<()> {
    let o = parse(args)?;
    let (count, size_mib) = if o.quick {
        (3usize, 20u64)
    } else {
        (10usize, 100u64)
    };
    let mut skipped: Vec<String> = Vec::new();
    let root = is_root();
    if !root {
        skipped.push(
            "loop filesystems (xfs, btrfs, ext4), podman and page-cache figures: they need root"
                .into(),
        );
    }
    for (cmd, pkg) in [("docker-registry", "docker-registry"), ("skopeo", "skopeo")] {
        if !have(cmd) {
            bail!("{cmd} is needed: install the {pkg} package");
        }
    }
    if root && !have("ostree") && have("apt-get") {
        eprintln!("== installing ostree (checkout baseline)");
        let _ = Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends", "ostree"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .output();
    }
    if !have("ostree") {
        skipped.push("ostree checkout baseline: ostree is not installed".into());
    }
    let podman_ok = root && have("podman");
    if root && !podman_ok {
        skipped.push("podman comparisons: podman is not installed".into());
    }
    let bin = crate::build_zstore()?;
    let work = PathBuf::from("/var/tmp").join(format!("zstore-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let result = bench(
        &o,
        count,
        size_mib,
        &bin,
        &work,
        root,
        podman_ok,
        &mut skipped,
    );
    let _ = std::fs::remove_dir_all(&work);
    let report = result?;
    std::fs::create_dir_all(&o.out)?;
    std::fs::write(
        o.out.join("results.json"),
        serde_json::to_vec_pretty(&report)?,
    )?;
    std::fs::write(
        o.out.join("pull-bytes.svg"),
        crate::report::pull_bytes_svg(&report),
    )?;
    std::fs::write(o.out.join("disk.svg"), crate::report::disk_svg(&report))?;
    std::fs::write(o.out.join("report.md"), crate::report::markdown(&report))?;
    println!("\nreport: {}", o.out.join("report.md").display());
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn bench(
    o: &Options,
    count: usize,
    size_mib: u64,
    bin: &Path,
    work: &Path,
    root: bool,
    podman_ok: bool,
    skipped: &mut Vec<String>,
) -> anyhow::Result<Value> {
    eprintln!(
        "== registry and fixtures: {count} images of {size_mib} MiB of real files, differing in one file"
    );
    let registry = TestRegistry::start(AuthKind::Anonymous, work);
    let files = real_files(size_mib << 20);
    let mut layout = Layout::new(&work.join("layout"));
    for i in 0..count {
        let tar = real_files_tar(&files, i)?;
        layout.add_image(
            &format!("c{i}"),
            &[(tar, zstore_fixtures::Compression::None)],
        );
    }
    let formats = ["zstd:chunked", "gzip"];
    for format in formats {
        let cache = work.join(format!("bic-{}", format.replace(':', "-")));
        for i in 0..count {
            let dest = format!(
                "docker://{}/bench/{}:c{i}",
                registry.host,
                format.replace(':', "-")
            );
            skopeo(
                &cache,
                &[
                    "copy",
                    "--quiet",
                    "--dest-tls-verify=false",
                    "--dest-compress-format",
                    format,
                    &layout.source(&format!("c{i}")),
                    &dest,
                ],
            )?;
        }
    }
    let image = |format: &str, i: usize| {
        format!("{}/bench/{}:c{i}", registry.host, format.replace(':', "-"))
    };

    let mut fs_results = Vec::new();
    let kinds: Vec<&str> = if root {
        vec!["xfs", "btrfs", "ext4"]
    } else {
        vec!["tmp"]
    };
    for kind in kinds {
        eprintln!("== {kind}");
        let size = if o.quick { 3072 } else { 12288 };
        let loopfs = if kind == "tmp" {
            None
        } else {
            Some(LoopFs::create(kind, size, work)?)
        };
        let mnt = loopfs
            .as_ref()
            .map(|l| l.mount.clone())
            .unwrap_or_else(|| work.join("tmpfs-dir"));
        std::fs::create_dir_all(&mnt)?;
        let used = || {
            loopfs
                .as_ref()
                .map(|l| l.used_bytes().unwrap_or(0))
                .unwrap_or(0)
        };
        let mut r = json!({"fs": kind});

        // Pulls.
        for format in formats {
            let zs = Zstore {
                bin: bin.to_path_buf(),
                root: mnt.join(format!("zstore-{}", format.replace(':', "-"))),
            };
            let before_used = used();
            let mut pulls = Vec::new();
            for i in 0..count {
                let b0 = registry.bytes_sent();
                let (j, secs) = zs.json(&["pull", &image(format, i)])?;
                pulls.push(json!({"image": i, "seconds": secs, "registry_bytes": registry.bytes_sent() - b0, "fetched_bytes": j["fetched_bytes"], "sync_seconds": j["sync_seconds"]}));
            }
            r[format!("zstore_pull_{}", format.replace(':', "_"))] =
                json!({"pulls": pulls, "disk_bytes": used() - before_used});
        }
        // Disk and page cache per checkout mode, over all images.
        let zs = Zstore {
            bin: bin.to_path_buf(),
            root: mnt.join("zstore-zstd-chunked"),
        };
        let mut modes = Vec::new();
        for mode in ["hardlink", "reflink", "copy"] {
            if mode == "reflink" && kind != "xfs" && kind != "btrfs" {
                continue;
            }
            let before = used();
            let base = mnt.join(format!("co-{mode}"));
            std::fs::create_dir_all(&base)?;
            let mut first_secs = 0.0;
            let mut files_n = 0u64;
            for i in 0..count {
                let (j, secs) = zs.json(&[
                    "checkout",
                    &image("zstd:chunked", i),
                    base.join(format!("c{i}")).to_str().unwrap_or_default(),
                    "--mode",
                    mode,
                ])?;
                if i == 0 {
                    first_secs = secs;
                    files_n = j["files"].as_u64().unwrap_or(0);
                }
            }
            let disk = used() - before;
            let btrfs_du = if kind == "btrfs" {
                btrfs_du(&[&zs.root, &base])
            } else {
                Value::Null
            };
            let mut cache = Value::Null;
            if root {
                drop_caches()?;
                let c0 = page_cache_bytes();
                let read = read_tree(&base);
                cache = json!({"page_cache_bytes": page_cache_bytes().saturating_sub(c0), "read_bytes": read});
            }
            modes.push(json!({"mode": mode, "disk_bytes": disk, "checkout_seconds": first_secs, "files": files_n, "files_per_second": files_n as f64 / first_secs.max(1e-9), "page_cache": cache, "btrfs_du": btrfs_du}));
            // Baselines for checkout speed, from the first tree.
            if mode == "copy" {
                let src = base.join("c0");
                let t = timed(
                    Command::new("cp")
                        .arg("-al")
                        .arg(&src)
                        .arg(mnt.join("cp-al")),
                )?;
                modes.push(json!({"mode": "cp -al", "checkout_seconds": t, "files": files_n, "files_per_second": files_n as f64 / t.max(1e-9)}));
                if kind == "xfs" || kind == "btrfs" {
                    let t = timed(
                        Command::new("cp")
                            .args(["-a", "--reflink=always"])
                            .arg(&src)
                            .arg(mnt.join("cp-reflink")),
                    )?;
                    modes.push(json!({"mode": "cp -a --reflink=always", "checkout_seconds": t, "files": files_n, "files_per_second": files_n as f64 / t.max(1e-9)}));
                }
                if have("ostree") {
                    // ostree's own hardlink checkout of the same tree, from a bare repository on
                    // the same filesystem (the commit is not timed: it is ostree's import).
                    let repo = mnt.join("ostree-repo");
                    let ostree = |args: &[&str]| {
                        let mut c = Command::new("ostree");
                        c.arg(format!("--repo={}", repo.display())).args(args);
                        c
                    };
                    timed(&mut ostree(&["init", "--mode=bare"]))?;
                    timed(&mut ostree(&[
                        "commit",
                        "-b",
                        "c0",
                        &format!("--tree=dir={}", src.display()),
                    ]))?;
                    let t = timed(
                        ostree(&["checkout", "--require-hardlinks", "c0"])
                            .arg(mnt.join("ostree-co")),
                    )?;
                    modes.push(json!({"mode": "ostree checkout (hardlinks)", "checkout_seconds": t, "files": files_n, "files_per_second": files_n as f64 / t.max(1e-9)}));
                    let _ = std::fs::remove_dir_all(mnt.join("ostree-co"));
                    let _ = std::fs::remove_dir_all(&repo);
                }
                let _ = std::fs::remove_dir_all(mnt.join("cp-al"));
                let _ = std::fs::remove_dir_all(mnt.join("cp-reflink"));
            }
            std::fs::remove_dir_all(&base)?;
        }
        r["checkout_modes"] = json!(modes);
        // fsck against sha256sum of the same object files.
        drop_caches().ok();
        let (fsck, fsck_secs) = zs.json(&["fsck"])?;
        let objects = zs.root.join("objects");
        drop_caches().ok();
        let sha_secs = timed(Command::new("sh").arg("-c").arg(format!(
            "find {} -type f -name '*.*' -print0 | xargs -0 -r sha256sum > /dev/null",
            objects.display()
        )))?;
        r["fsck"] = json!({"seconds": fsck_secs, "bytes": fsck["bytes_checked"], "sha256sum_seconds": sha_secs});
        // gc after removing all but the last image.
        let names: Vec<String> = (0..count - 1).map(|i| image("zstd:chunked", i)).collect();
        let mut rm = Command::new(bin);
        rm.arg("--root").arg(&zs.root).arg("rm").args(&names);
        timed(&mut rm)?;
        let (gc, gc_secs) = zs.json(&["gc"])?;
        r["gc"] = json!({"seconds": gc_secs, "removed_objects": gc["removed_objects"], "removed_bytes": gc["removed_bytes"]});

        // podman on the same filesystem.
        if podman_ok && kind != "tmp" {
            let mut runs = Vec::new();
            for hard_links in [false, true] {
                let base = mnt.join(format!("podman-{hard_links}"));
                std::fs::create_dir_all(&base)?;
                let podman = Podman::new(&base, &registry.host, hard_links)?;
                let before = used();
                let mut pulls = Vec::new();
                for i in 0..count {
                    let b0 = registry.bytes_sent();
                    let t = Instant::now();
                    let (ok, log) = podman.run(&["pull", "-q", &image("zstd:chunked", i)]);
                    if !ok {
                        bail!("podman pull failed: {log}");
                    }
                    pulls.push(json!({"image": i, "seconds": t.elapsed().as_secs_f64(), "registry_bytes": registry.bytes_sent() - b0}));
                }
                runs.push(json!({"use_hard_links": hard_links, "pulls": pulls, "disk_bytes": used() - before}));
                drop(podman);
                let _ = std::fs::remove_dir_all(&base);
            }
            r["podman"] = json!(runs);
        }
        fs_results.push(r);
    }
    let _ = o;
    Ok(json!({
        "quick": o.quick,
        "images": count,
        "image_mib": size_mib,
        "files_per_image": files.len() + 1,
        "machine": {
            "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            "kernel": version("uname", "-r"),
            "memory": std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| m.lines().next().map(str::to_string)),
        },
        "versions": {
            "zstore": version(bin.to_str().unwrap_or("zstore"), "--version"),
            "podman": version("podman", "--version"),
            "skopeo": version("skopeo", "--version"),
            "docker-registry": version("docker-registry", "--version"),
            "ostree": version("ostree", "--version"),
        },
        "skipped": skipped,
        "filesystems": fs_results,
    }))
}
