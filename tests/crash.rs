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

#[test]
fn checkout_killed_before_its_rename_leaves_no_tree_and_is_cleaned_by_the_next() {
    let tmp = tempfile::tempdir().unwrap();
    let mut layout = Layout::new(&tmp.path().join("layout"));
    near_identical_images(&mut layout, 1, 6, 10_000, Compression::Gzip);
    let zs = Zs::new(&tmp.path().join("store"));
    zs.ok(&["pull", &layout.source("c0")]);
    let hooks = tmp.path().join("hooks");
    std::fs::create_dir(&hooks).unwrap();
    let dest = tmp.path().join("co");
    let child = zs
        .cmd()
        .args([
            "checkout",
            &layout.source("c0"),
            dest.to_str().unwrap(),
            "--mode",
            "copy",
        ])
        .env("ZSTORE_TEST_HOOK_DIR", &hooks)
        .env("ZSTORE_TEST_HOOK_POINTS", "checkout-before-rename")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_hook(&hooks, "checkout-before-rename");
    std::fs::write(hooks.join("checkout-before-rename.abort"), b"").unwrap();
    assert!(!child.wait_with_output().unwrap().status.success());
    assert!(
        !dest.exists(),
        "a killed checkout never shows a partial tree at its destination"
    );
    let staging_dirs = || {
        std::fs::read_dir(tmp.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .contains("zstore-checkout")
            })
            .count()
    };
    assert_eq!(
        staging_dirs(),
        1,
        "the half-built tree is hidden next to it"
    );
    zs.ok(&[
        "checkout",
        &layout.source("c0"),
        dest.to_str().unwrap(),
        "--mode",
        "copy",
    ]);
    assert_eq!(
        staging_dirs(),
        0,
        "the next checkout to that destination removed it"
    );
    assert!(dest.join("var/www/html/index.html").exists());
}

#[test]
fn pulls_killed_at_random_moments_leave_a_consistent_store() {
    // A deterministic sequence of kill delays (no randomness between runs), spread over the
    // whole pull: each round kills a pull, checks the store, and the last pull completes.
    let tmp = tempfile::tempdir().unwrap();
    let mut layout = Layout::new(&tmp.path().join("layout"));
    near_identical_images(&mut layout, 2, 60, 40_000, Compression::Gzip);
    let zs = Zs::new(&tmp.path().join("store"));
    let mut x: u64 = 0x9e3779b97f4a7c15;
    for round in 0..8 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let delay_ms = 5 + x % 120;
        let tag = format!("c{}", round % 2);
        let mut child = zs
            .cmd()
            .args(["pull", &layout.source(&tag)])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        let _ = child.kill();
        let _ = child.wait();
        let fsck = zs.json(&["fsck"]);
        assert_eq!(
            fsck["errors"],
            serde_json::json!([]),
            "round {round} (killed after {delay_ms} ms): {fsck}"
        );
    }
    zs.ok(&["gc"]);
    assert_eq!(std::fs::read_dir(zs.root.join("tmp")).unwrap().count(), 0);
    for tag in ["c0", "c1"] {
        zs.ok(&["pull", &layout.source(tag)]);
    }
    let fsck = zs.json(&["fsck"]);
    assert_eq!(fsck["errors"], serde_json::json!([]), "{fsck}");
    assert_eq!(fsck["unreferenced_variants"], 0);
}
