//! Several zstore processes at once: pulls of overlapping images all succeed and store each
//! file once; checkouts and gc run beside them without errors.

mod common;

use std::process::{Child, Stdio};

use common::*;

fn spawn(zs: &Zs, args: &[&str]) -> Child {
    zs.cmd()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn finish(c: Child, what: &str) -> String {
    let out = c.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn concurrent_pulls_of_overlapping_images_store_each_file_once() {
    let tmp = tempfile::tempdir().unwrap();
    let mut layout = Layout::new(&tmp.path().join("layout"));
    let files = 24;
    near_identical_images(&mut layout, 4, files, 40_000, Compression::Gzip);
    for round in 0..4 {
        let zs = Zs::new(&tmp.path().join(format!("store-{round}")));
        let pulls: Vec<Child> = (0..4)
            .map(|i| spawn(&zs, &["pull", &layout.source(&format!("c{i}"))]))
            .collect();
        for (i, p) in pulls.into_iter().enumerate() {
            finish(p, &format!("round {round} pull c{i}"));
        }
        let df = zs.json(&["df"]);
        assert_eq!(df["images"], 4, "{df}");
        assert_eq!(df["objects"], files as u64 + 4, "each file once: {df}");
        assert_eq!(df["variants"], files as u64 + 4, "{df}");
        let fsck = zs.json(&["fsck"]);
        assert_eq!(fsck["errors"], serde_json::json!([]), "{fsck}");
    }
}

#[test]
fn pulls_checkouts_and_gc_together() {
    let tmp = tempfile::tempdir().unwrap();
    let mut layout = Layout::new(&tmp.path().join("layout"));
    near_identical_images(&mut layout, 6, 16, 30_000, Compression::Zstd);
    let zs = Zs::new(&tmp.path().join("store"));
    zs.ok(&["pull", &layout.source("c0")]);
    for round in 0..3 {
        let mut procs = Vec::new();
        for i in 1..6 {
            procs.push((
                format!("pull c{i}"),
                spawn(&zs, &["pull", &layout.source(&format!("c{i}"))]),
            ));
        }
        let dest = tmp.path().join(format!("co-{round}"));
        procs.push((
            "checkout".into(),
            spawn(
                &zs,
                &[
                    "checkout",
                    &layout.source("c0"),
                    dest.to_str().unwrap(),
                    "--mode",
                    "hardlink",
                ],
            ),
        ));
        procs.push(("gc".into(), spawn(&zs, &["gc"])));
        procs.push(("fsck".into(), spawn(&zs, &["fsck"])));
        for (what, p) in procs {
            finish(p, &format!("round {round}: {what}"));
        }
        let fsck = zs.json(&["fsck"]);
        assert_eq!(
            fsck["errors"],
            serde_json::json!([]),
            "round {round}: {fsck}"
        );
        assert_eq!(zs.json(&["images"]).as_array().unwrap().len(), 6);
        // gc never takes what a finished pull recorded.
        for i in 0..6 {
            let d = tmp.path().join(format!("verify-{round}-{i}"));
            zs.ok(&[
                "checkout",
                &layout.source(&format!("c{i}")),
                d.to_str().unwrap(),
                "--mode",
                "hardlink",
            ]);
            let html = std::fs::read_to_string(d.join("var/www/html/index.html")).unwrap();
            assert!(html.contains(&format!("Container #{i}")));
        }
        // Remove the images again (except c0) so the next round pulls them anew beside gc.
        let names: Vec<String> = (1..6).map(|i| layout.source(&format!("c{i}"))).collect();
        let mut args = vec!["rm"];
        args.extend(names.iter().map(String::as_str));
        zs.ok(&args);
    }
}
