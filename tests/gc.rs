//! gc keeps everything referenced, removes everything unreferenced (and reports it truly), and
//! a pull running at the same time loses nothing.

mod common;

use std::process::Stdio;

use common::*;

fn store_with_three_images(tmp: &std::path::Path) -> (Zs, Layout) {
    let mut layout = Layout::new(&tmp.join("layout"));
    near_identical_images(&mut layout, 3, 8, 32 * 1024, Compression::Zstd);
    // One image that shares nothing with the others.
    let mut t = TarBuilder::new();
    t.file("only-here", &pseudo_random(100_000, 99), &Meta::default());
    layout.add_image("lonely", &[(t.finish(), Compression::Gzip)]);
    let zs = Zs::new(&tmp.join("store"));
    for tag in ["c0", "c1", "c2", "lonely"] {
        zs.ok(&["pull", &layout.source(tag)]);
    }
    (zs, layout)
}

#[test]
fn gc_removes_only_what_nothing_references() {
    let tmp = tempfile::tempdir().unwrap();
    let (zs, layout) = store_with_three_images(tmp.path());
    let before = zs.json(&["df"]);

    // Nothing unreferenced yet.
    let r = zs.json(&["gc"]);
    assert_eq!(
        (r["removed_objects"].as_u64(), r["removed_layers"].as_u64()),
        (Some(0), Some(0)),
        "{r}"
    );

    zs.ok(&["rm", &layout.source("lonely"), &layout.source("c1")]);
    let dry = zs.json(&["gc", "--dry-run"]);
    assert_eq!(
        zs.json(&["df"])["objects"],
        before["objects"],
        "dry run removes nothing"
    );
    let r = zs.json(&["gc"]);
    for k in [
        "removed_objects",
        "removed_layers",
        "removed_bytes",
        "removed_variants",
    ] {
        assert_eq!(dry[k], r[k], "dry run predicts {k}: {dry} vs {r}");
    }
    // lonely's file + c1's index.html; two layers.
    assert_eq!(r["removed_objects"], 2, "{r}");
    assert_eq!(r["removed_layers"], 2, "{r}");
    let after = zs.json(&["df"]);
    let freed = before["stored_bytes"].as_u64().unwrap() - after["stored_bytes"].as_u64().unwrap();
    assert_eq!(
        r["removed_bytes"].as_u64().unwrap(),
        freed,
        "removed_bytes is what df lost: {r} {after}"
    );
    assert!(freed >= 100_000, "{r}");

    // Everything still referenced works.
    for tag in ["c0", "c2"] {
        let dest = tmp.path().join(format!("co-{tag}"));
        zs.ok(&[
            "checkout",
            &layout.source(tag),
            dest.to_str().unwrap(),
            "--mode",
            "copy",
        ]);
        let html = std::fs::read_to_string(dest.join("var/www/html/index.html")).unwrap();
        assert!(html.contains(&format!("Container #{}", &tag[1..])));
    }
    let fsck = zs.json(&["fsck"]);
    assert_eq!(fsck["errors"], serde_json::json!([]), "{fsck}");
    assert_eq!(fsck["unreferenced_variants"], 0, "{fsck}");
    // Pulling a removed image again works and needs its data again.
    let again = zs.json(&["pull", &layout.source("lonely")]);
    assert_eq!(again["layers"][0]["reused_files"], 0, "{again}");
}

#[test]
fn gc_keeps_a_hardlinked_checkout_alive_and_counts_no_freed_space_for_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (zs, layout) = store_with_three_images(tmp.path());
    let dest = tmp.path().join("co");
    zs.ok(&[
        "checkout",
        &layout.source("lonely"),
        dest.to_str().unwrap(),
        "--mode",
        "hardlink",
    ]);
    zs.ok(&["rm", &layout.source("lonely")]);
    let r = zs.json(&["gc"]);
    assert_eq!(r["removed_objects"], 1, "{r}");
    // The checkout still holds a link to the data: no space was freed.
    assert_eq!(r["removed_bytes"], 0, "{r}");
    assert_eq!(
        std::fs::read(dest.join("only-here")).unwrap(),
        pseudo_random(100_000, 99)
    );
}

#[test]
fn gc_removes_debris_of_interrupted_work() {
    let tmp = tempfile::tempdir().unwrap();
    let (zs, _layout) = store_with_three_images(tmp.path());
    std::fs::create_dir_all(zs.root.join("tmp/stage-99999-1-0")).unwrap();
    std::fs::write(zs.root.join("tmp/stage-99999-1-0/f1"), b"half-written").unwrap();
    let r = zs.json(&["gc"]);
    assert_eq!(r["removed_temp"], 1, "{r}");
    assert_eq!(std::fs::read_dir(zs.root.join("tmp")).unwrap().count(), 0);
}

#[test]
fn gc_during_a_pull_waits_and_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (zs, _) = store_with_three_images(tmp.path());
    let mut layout = Layout::new(&tmp.path().join("layout2"));
    layout.add_image(
        "new",
        &[(near_identical_tar(7, 12, 48 * 1024), Compression::Gzip)],
    );
    let hooks = tmp.path().join("hooks");
    std::fs::create_dir(&hooks).unwrap();

    // The pull stops after staging its new objects, before publishing them.
    let pull = zs
        .cmd()
        .args(["pull", &layout.source("new"), "--json"])
        .env("ZSTORE_TEST_HOOK_DIR", &hooks)
        .env("ZSTORE_TEST_HOOK_POINTS", "pull-before-publish")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_hook(&hooks, "pull-before-publish");

    // gc starts while the pull holds the store lock: it must wait, and say so.
    let mut gc = zs
        .cmd()
        .args(["gc", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut gc_err = std::io::BufReader::new(gc.stderr.take().unwrap());
    let mut first_line = String::new();
    std::io::BufRead::read_line(&mut gc_err, &mut first_line).unwrap();
    assert!(
        first_line.contains("waiting for the store lock"),
        "gc says it waits: {first_line:?}"
    );
    // gc is blocked now; the pull completes first.
    release_hook(&hooks, "pull-before-publish");
    let pull_out = pull.wait_with_output().unwrap();
    assert!(
        pull_out.status.success(),
        "{}",
        String::from_utf8_lossy(&pull_out.stderr)
    );
    let gc_out = gc.wait_with_output().unwrap();
    assert!(gc_out.status.success(), "gc failed");
    let gc_json: serde_json::Value = serde_json::from_slice(&gc_out.stdout).unwrap();
    assert_eq!(
        gc_json["removed_objects"], 0,
        "the new image's objects survive: {gc_json}"
    );

    let fsck = zs.json(&["fsck"]);
    assert_eq!(fsck["errors"], serde_json::json!([]), "{fsck}");
    let dest = tmp.path().join("co-new");
    zs.ok(&[
        "checkout",
        &layout.source("new"),
        dest.to_str().unwrap(),
        "--mode",
        "copy",
    ]);
    assert!(
        std::fs::read_to_string(dest.join("var/www/html/index.html"))
            .unwrap()
            .contains("Container #7")
    );
}
