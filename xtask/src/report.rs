//! The benchmark report: Markdown tables, a target check, and two SVG bar charts.

use std::fmt::Write;

use serde_json::Value;

fn mb(v: &Value) -> String {
    format!("{:.2}", v.as_f64().unwrap_or(0.0) / 1e6)
}

fn secs(v: &Value) -> String {
    format!("{:.2}", v.as_f64().unwrap_or(0.0))
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(0.0)
}

/// Sum of a field over the pulls of one run.
fn sum(pulls: &Value, field: &str) -> f64 {
    pulls
        .as_array()
        .map(|a| a.iter().map(|p| f(&p[field])).sum())
        .unwrap_or(0.0)
}

/// One target: what, measured ratio, limit (ratio must be ≤ limit unless `at_least`).
struct Target {
    what: String,
    ratio: f64,
    limit: f64,
    at_least: bool,
}

fn targets(fs: &Value, image_bytes: f64) -> Vec<Target> {
    let mut t = Vec::new();
    let z = &fs["zstore_pull_zstd_chunked"]["pulls"];
    if let Some(runs) = fs["podman"].as_array() {
        // The faster podman configuration for each figure.
        let best = |i: usize, field: &str| {
            runs.iter()
                .map(|r| f(&r["pulls"][i][field]))
                .fold(f64::INFINITY, f64::min)
        };
        t.push(Target {
            what: "c0 cold pull time / podman's".into(),
            ratio: f(&z[0]["seconds"]) / best(0, "seconds"),
            limit: 0.5,
            at_least: false,
        });
        t.push(Target {
            what: "c1 after c0: pull time / podman's".into(),
            ratio: f(&z[1]["seconds"]) / best(1, "seconds"),
            limit: 0.25,
            at_least: false,
        });
        t.push(Target {
            what: "c1 after c0: registry bytes / podman's".into(),
            ratio: f(&z[1]["registry_bytes"]) / best(1, "registry_bytes"),
            limit: 1.0,
            at_least: false,
        });
        if let Some(hl) = runs.iter().find(|r| r["use_hard_links"] == true)
            && let Some(m) = fs["checkout_modes"]
                .as_array()
                .and_then(|m| m.iter().find(|m| m["mode"] == "hardlink"))
        {
            let ours = f(&fs["zstore_pull_zstd_chunked"]["disk_bytes"]) + f(&m["disk_bytes"]);
            t.push(Target {
                what: "disk, all images checked out by hardlink / podman's hardlink graphroot"
                    .into(),
                ratio: ours / f(&hl["disk_bytes"]).max(1.0),
                limit: 0.75,
                at_least: false,
            });
        }
    }
    t.push(Target {
        what: "disk of all gzip images / one image's files".into(),
        ratio: f(&fs["zstore_pull_gzip"]["disk_bytes"]) / image_bytes,
        limit: 1.3,
        at_least: false,
    });
    if let Some(m) = fs["checkout_modes"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["mode"] == "hardlink"))
        && m["page_cache"].is_object()
    {
        t.push(Target {
            what: "page cache after reading all hardlink checkouts / one image".into(),
            ratio: f(&m["page_cache"]["page_cache_bytes"]) / image_bytes,
            limit: 1.2,
            at_least: false,
        });
    }
    let fsck = &fs["fsck"];
    if f(&fsck["seconds"]) > 0.0 && f(&fsck["sha256sum_seconds"]) > 0.0 {
        t.push(Target {
            what: "fsck throughput / sha256sum's (same files)".into(),
            ratio: f(&fsck["sha256sum_seconds"]) / f(&fsck["seconds"]),
            limit: 0.8,
            at_least: true,
        });
    }
    t
}

/// The Markdown report.
pub fn markdown(r: &Value) -> String {
    let mut s = String::new();
    let image_bytes = f(&r["image_mib"]) * 1048576.0;
    let _ = writeln!(s, "# zstore benchmark report\n");
    let _ = writeln!(
        s,
        "{} images of {} MiB of real files ({} files each), differing in one file; {} run. Every figure below comes from this one run of `cargo xtask bench{}`.\n",
        r["images"],
        r["image_mib"],
        r["files_per_image"],
        if r["quick"] == true {
            "a quick"
        } else {
            "a full"
        },
        if r["quick"] == true { " --quick" } else { "" }
    );
    let _ = writeln!(
        s,
        "Machine: {} CPUs, kernel {}, {}.\n",
        r["machine"]["cpus"],
        r["machine"]["kernel"].as_str().unwrap_or(""),
        r["machine"]["memory"]
            .as_str()
            .unwrap_or("")
            .split_whitespace()
            .skip(1)
            .collect::<Vec<_>>()
            .join(" ")
    );
    let _ = writeln!(
        s,
        "Versions: {}.\n",
        r["versions"]
            .as_object()
            .map(|m| m
                .iter()
                .map(|(k, v)| format!("{k}: {}", v.as_str().unwrap_or("")))
                .collect::<Vec<_>>()
                .join("; "))
            .unwrap_or_default()
    );
    for sk in r["skipped"].as_array().into_iter().flatten() {
        let _ = writeln!(s, "Skipped: {}\n", sk.as_str().unwrap_or(""));
    }
    for fs in r["filesystems"].as_array().into_iter().flatten() {
        let name = fs["fs"].as_str().unwrap_or("?");
        let _ = writeln!(s, "## {name}\n");
        let _ = writeln!(
            s,
            "### Targets\n\n| target | measured | limit | result |\n| --- | --- | --- | --- |"
        );
        for t in targets(fs, image_bytes) {
            let ok = if t.at_least {
                t.ratio >= t.limit
            } else {
                t.ratio <= t.limit
            };
            let _ = writeln!(
                s,
                "| {} | {:.3} | {} {} | {} |",
                t.what,
                t.ratio,
                if t.at_least { "≥" } else { "≤" },
                t.limit,
                if ok { "met" } else { "**missed**" }
            );
        }
        let _ = writeln!(
            s,
            "\n### Pulls (seconds, MB from the registry's access log)\n"
        );
        let mut header = "| image | zstore zstd:chunked | zstore gzip |".to_string();
        let mut rule = "| --- | --- | --- |".to_string();
        let runs = fs["podman"].as_array().cloned().unwrap_or_default();
        for run in &runs {
            let _ = write!(
                header,
                " podman (use_hard_links={}) |",
                run["use_hard_links"]
            );
            rule.push_str(" --- |");
        }
        let _ = writeln!(s, "{header}\n{rule}");
        let z = &fs["zstore_pull_zstd_chunked"]["pulls"];
        let g = &fs["zstore_pull_gzip"]["pulls"];
        for i in 0..z.as_array().map_or(0, Vec::len) {
            let _ = write!(
                s,
                "| c{i} | {} s, {} MB | {} s, {} MB |",
                secs(&z[i]["seconds"]),
                mb(&z[i]["registry_bytes"]),
                secs(&g[i]["seconds"]),
                mb(&g[i]["registry_bytes"])
            );
            for run in &runs {
                let _ = write!(
                    s,
                    " {} s, {} MB |",
                    secs(&run["pulls"][i]["seconds"]),
                    mb(&run["pulls"][i]["registry_bytes"])
                );
            }
            s.push('\n');
        }
        let _ = write!(
            s,
            "| all | {:.2} s, {:.2} MB | {:.2} s, {:.2} MB |",
            sum(z, "seconds"),
            sum(z, "registry_bytes") / 1e6,
            sum(g, "seconds"),
            sum(g, "registry_bytes") / 1e6
        );
        for run in &runs {
            let _ = write!(
                s,
                " {:.2} s, {:.2} MB |",
                sum(&run["pulls"], "seconds"),
                sum(&run["pulls"], "registry_bytes") / 1e6
            );
        }
        let synced = |pulls: &Value| (sum(pulls, "sync_seconds"), sum(pulls, "seconds"));
        let ((zs, zt), (gs, gt)) = (synced(z), synced(g));
        let _ = writeln!(
            s,
            "\n\nDurability (syncfs of new objects, then the database commit's fsyncs) took {zs:.2} s of the {zt:.2} s of zstore's zstd:chunked pulls ({:.0} %) and {gs:.2} s of {gt:.2} s of its gzip pulls ({:.0} %).",
            100.0 * zs / zt.max(1e-9),
            100.0 * gs / gt.max(1e-9)
        );
        let _ = writeln!(
            s,
            "\n### Disk (MB, `df` deltas) and page cache (MB after reading every file of all checkouts, caches dropped first)\n"
        );
        let _ = writeln!(s, "| what | disk | page cache |\n| --- | --- | --- |");
        let _ = writeln!(
            s,
            "| zstore store, zstd:chunked images | {} | |",
            mb(&fs["zstore_pull_zstd_chunked"]["disk_bytes"])
        );
        let _ = writeln!(
            s,
            "| zstore store, gzip images | {} | |",
            mb(&fs["zstore_pull_gzip"]["disk_bytes"])
        );
        for m in fs["checkout_modes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|m| m["disk_bytes"].is_number())
        {
            let _ = writeln!(
                s,
                "| + checkouts of every image, {} | {} | {} |",
                m["mode"].as_str().unwrap_or(""),
                mb(&m["disk_bytes"]),
                mb(&m["page_cache"]["page_cache_bytes"])
            );
        }
        for run in &runs {
            let _ = writeln!(
                s,
                "| podman graphroot (use_hard_links={}) | {} | |",
                run["use_hard_links"],
                mb(&run["disk_bytes"])
            );
        }
        let du: Vec<&Value> = fs["checkout_modes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|m| m["btrfs_du"].is_array())
            .collect();
        if !du.is_empty() {
            let _ = writeln!(
                s,
                "\n`btrfs filesystem du` (MB) of the store and of the checkouts of every image, per mode:\n\n| mode | store total | store exclusive | checkouts total | checkouts exclusive | checkouts shared |\n| --- | --- | --- | --- | --- | --- |"
            );
            for m in du {
                let (st, co) = (&m["btrfs_du"][0], &m["btrfs_du"][1]);
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} | {} | {} |",
                    m["mode"].as_str().unwrap_or(""),
                    mb(&st["total"]),
                    mb(&st["exclusive"]),
                    mb(&co["total"]),
                    mb(&co["exclusive"]),
                    mb(&co["shared"])
                );
            }
        }
        let _ = writeln!(
            s,
            "\n### Checkout speed (one image)\n\n| method | seconds | files/s |\n| --- | --- | --- |"
        );
        for m in fs["checkout_modes"].as_array().into_iter().flatten() {
            let _ = writeln!(
                s,
                "| {} | {} | {:.0} |",
                m["mode"].as_str().unwrap_or(""),
                secs(&m["checkout_seconds"]),
                f(&m["files_per_second"])
            );
        }
        let _ = writeln!(
            s,
            "\n### fsck and gc\n\nfsck: {} s for {} MB ({:.0} MB/s); sha256sum of the same object files: {} s ({:.0} MB/s). gc after removing all but one image: {} s, {} objects, {} MB freed.\n",
            secs(&fs["fsck"]["seconds"]),
            mb(&fs["fsck"]["bytes"]),
            f(&fs["fsck"]["bytes"]) / 1e6 / f(&fs["fsck"]["seconds"]).max(1e-9),
            secs(&fs["fsck"]["sha256sum_seconds"]),
            f(&fs["fsck"]["bytes"]) / 1e6 / f(&fs["fsck"]["sha256sum_seconds"]).max(1e-9),
            secs(&fs["gc"]["seconds"]),
            fs["gc"]["removed_objects"],
            mb(&fs["gc"]["removed_bytes"]),
        );
    }
    let _ = writeln!(
        s,
        "Charts: [pull bytes](pull-bytes.svg), [disk per mode](disk.svg). Raw figures: [results.json](results.json)."
    );
    s
}

/// A horizontal bar chart.
fn bars(title: &str, unit: &str, items: &[(String, f64)]) -> String {
    let max = items.iter().map(|(_, v)| *v).fold(0.0, f64::max).max(1e-9);
    let row = 22;
    let height = 40 + row * items.len();
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"820\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"12\">\n<text x=\"10\" y=\"20\" font-size=\"14\">{title}</text>\n"
    );
    for (i, (label, v)) in items.iter().enumerate() {
        let y = 34 + i * row;
        let w = (v / max * 420.0).max(1.0);
        let _ = writeln!(
            s,
            "<text x=\"10\" y=\"{}\">{label}</text><rect x=\"300\" y=\"{y}\" width=\"{w:.1}\" height=\"16\" fill=\"#4a7fb0\"/><text x=\"{:.1}\" y=\"{}\">{v:.2} {unit}</text>",
            y + 12,
            305.0 + w,
            y + 12
        );
    }
    s.push_str("</svg>\n");
    s
}

/// Bytes from the registry for each pull, zstore against podman, on the first filesystem.
pub fn pull_bytes_svg(r: &Value) -> String {
    let mut items = Vec::new();
    if let Some(fs) = r["filesystems"].as_array().and_then(|a| a.first()) {
        let z = &fs["zstore_pull_zstd_chunked"]["pulls"];
        for i in 0..z.as_array().map_or(0, Vec::len) {
            items.push((format!("c{i} zstore"), f(&z[i]["registry_bytes"]) / 1e6));
            if let Some(run) = fs["podman"].as_array().and_then(|a| a.first()) {
                items.push((
                    format!("c{i} podman"),
                    f(&run["pulls"][i]["registry_bytes"]) / 1e6,
                ));
            }
        }
    }
    bars("MB from the registry per pull (zstd:chunked)", "MB", &items)
}

/// Disk used per checkout mode, per filesystem.
pub fn disk_svg(r: &Value) -> String {
    let mut items = Vec::new();
    for fs in r["filesystems"].as_array().into_iter().flatten() {
        let name = fs["fs"].as_str().unwrap_or("?");
        for m in fs["checkout_modes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|m| m["disk_bytes"].is_number())
        {
            items.push((
                format!("{name} {}", m["mode"].as_str().unwrap_or("")),
                (f(&fs["zstore_pull_zstd_chunked"]["disk_bytes"]) + f(&m["disk_bytes"])) / 1e6,
            ));
        }
        if let Some(run) = fs["podman"]
            .as_array()
            .and_then(|a| a.iter().find(|r| r["use_hard_links"] == true))
        {
            items.push((
                format!("{name} podman (hardlinks)"),
                f(&run["disk_bytes"]) / 1e6,
            ));
        }
    }
    bars(
        "MB of disk: store plus checkouts of every image",
        "MB",
        &items,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fs() -> Value {
        json!({
            "fs": "xfs",
            "zstore_pull_zstd_chunked": {"pulls": [{"seconds": 0.4, "registry_bytes": 100}, {"seconds": 0.02, "registry_bytes": 10}], "disk_bytes": 100.0},
            "zstore_pull_gzip": {"pulls": [], "disk_bytes": 110.0},
            "checkout_modes": [{"mode": "hardlink", "disk_bytes": 5.0, "page_cache": {"page_cache_bytes": 100.0}}],
            "fsck": {"seconds": 1.0, "sha256sum_seconds": 0.5},
            "podman": [
                {"use_hard_links": false, "pulls": [{"seconds": 1.0, "registry_bytes": 100}, {"seconds": 0.2, "registry_bytes": 12}], "disk_bytes": 300.0},
                {"use_hard_links": true, "pulls": [{"seconds": 0.5, "registry_bytes": 100}, {"seconds": 0.1, "registry_bytes": 11}], "disk_bytes": 200.0}
            ]
        })
    }

    #[test]
    fn targets_compare_against_the_faster_podman_and_say_which_way() {
        let t = targets(&fs(), 100.0);
        let get = |what: &str| {
            t.iter()
                .find(|t| t.what.starts_with(what))
                .unwrap_or_else(|| panic!("{what}"))
        };
        assert!(
            (get("c0 cold").ratio - 0.8).abs() < 1e-9,
            "against podman's best 0.5 s"
        );
        assert!((get("c1 after c0: pull").ratio - 0.2).abs() < 1e-9);
        assert!((get("c1 after c0: registry").ratio - 10.0 / 11.0).abs() < 1e-9);
        assert!((get("disk, all").ratio - 105.0 / 200.0).abs() < 1e-9);
        assert!((get("page cache").ratio - 1.0).abs() < 1e-9);
        let fsck = get("fsck");
        assert!(fsck.at_least && (fsck.ratio - 0.5).abs() < 1e-9);
        let md = markdown(
            &json!({"images": 2, "image_mib": 1, "files_per_image": 3, "quick": true, "machine": {}, "versions": {}, "skipped": [], "filesystems": [fs()]}),
        );
        assert!(
            md.contains("| c0 cold pull time / podman's | 0.800 | ≤ 0.5 | **missed** |"),
            "{md}"
        );
        assert!(
            md.contains(
                "| fsck throughput / sha256sum's (same files) | 0.500 | ≥ 0.8 | **missed** |"
            ),
            "{md}"
        );
        assert!(
            md.contains("| c1 after c0: pull time / podman's | 0.200 | ≤ 0.25 | met |"),
            "{md}"
        );
    }
}
