//! A pull killed at any stage leaves a store that fsck passes; the next gc removes its debris
//! and a repeated pull completes. (Issue 6 extends this to push, checkout and gc, with random
//! SIGKILLs.)

mod common;

use std::process::Stdio;

use common::*;

fn killed_pull_at(point: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let mut layout = Layout::new(&tmp.path().join("layout"));
    near_identical_images(&mut layout, 2, 10, 30_000, Compression::Gzip);
    let zs = Zs::new(&tmp.path().join("store"));
    zs.ok(&["pull", &layout.source("c0")]);
    let hooks = tmp.path().join("hooks");
    std::fs::create_dir(&hooks).unwrap();
    let child = zs
        .cmd()
        .args(["pull", &layout.source("c1")])
        .env("ZSTORE_TEST_HOOK_DIR", &hooks)
        .env("ZSTORE_TEST_HOOK_POINTS", point)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_hook(&hooks, point);
    std::fs::write(hooks.join(format!("{point}.abort")), b"").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success(), "{point}: the pull was killed");

    let fsck = zs.json(&["fsck"]);
    assert_eq!(fsck["errors"], serde_json::json!([]), "{point}: {fsck}");
    let images = zs.json(&["images"]);
    assert_eq!(
        images.as_array().unwrap().len(),
        1,
        "{point}: the killed pull recorded nothing"
    );
    let gc = zs.json(&["gc"]);
    assert!(
        gc["removed_temp"].as_u64().unwrap() + gc["removed_objects"].as_u64().unwrap() >= 1,
        "{point}: {gc}"
    );
    assert_eq!(std::fs::read_dir(zs.root.join("tmp")).unwrap().count(), 0);
    let again = zs.json(&["pull", &layout.source("c1")]);
    assert_eq!(
        again["layers"][0]["reused_files"], 10,
        "{point}: shared files reused: {again}"
    );
    let fsck = zs.json(&["fsck"]);
    assert_eq!(fsck["errors"], serde_json::json!([]), "{point}: {fsck}");
}

#[test]
fn pull_killed_before_publishing() {
    killed_pull_at("pull-before-publish");
}

#[test]
fn pull_killed_after_publishing_before_commit() {
    killed_pull_at("pull-before-commit");
}

#[test]
fn gc_killed_while_holding_the_lock() {
    let tmp = tempfile::tempdir().unwrap();
    let mut layout = Layout::new(&tmp.path().join("layout"));
    near_identical_images(&mut layout, 1, 4, 10_000, Compression::Zstd);
    let zs = Zs::new(&tmp.path().join("store"));
    zs.ok(&["pull", &layout.source("c0")]);
    let hooks = tmp.path().join("hooks");
    std::fs::create_dir(&hooks).unwrap();
    let child = zs
        .cmd()
        .arg("gc")
        .env("ZSTORE_TEST_HOOK_DIR", &hooks)
        .env("ZSTORE_TEST_HOOK_POINTS", "gc-locked")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_hook(&hooks, "gc-locked");
    std::fs::write(hooks.join("gc-locked.abort"), b"").unwrap();
    assert!(!child.wait_with_output().unwrap().status.success());
    // The lock died with the process: everything works at once.
    let fsck = zs.json(&["fsck"]);
    assert_eq!(fsck["errors"], serde_json::json!([]), "{fsck}");
    zs.ok(&["gc"]);
    zs.ok(&[
        "checkout",
        &layout.source("c0"),
        tmp.path().join("co").to_str().unwrap(),
        "--mode",
        "copy",
    ]);
}
