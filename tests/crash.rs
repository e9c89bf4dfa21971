//! A pull, push, checkout or gc killed at any stage (at test hooks, or by SIGKILL at
//! arbitrary moments) leaves a store that fsck passes and destinations that are either as they
//! were or complete; the next gc removes the debris, and repeating the operation completes,
//! reusing what was already stored.

mod common;

use std::process::Stdio;

use common::*;

/// `count` near-identical images (`files` files of `size` bytes) in a layout, and an empty store,
/// in a new temp directory.
fn images_and_store(
    count: usize,
    files: usize,
    size: usize,
    compression: Compression,
) -> (tempfile::TempDir, Layout, Zs) {
    let tmp = tempfile::tempdir().unwrap();
    let mut layout = Layout::new(&tmp.path().join("layout"));
    near_identical_images(&mut layout, count, files, size, compression);
    let zs = Zs::new(&tmp.path().join("store"));
    (tmp, layout, zs)
}

/// An empty directory for test hook files.
fn hooks_dir(tmp: &std::path::Path) -> std::path::PathBuf {
    let hooks = tmp.join("hooks");
    std::fs::create_dir(&hooks).unwrap();
    hooks
}

/// Runs zstore with `args` until it reaches hook `point`, then kills it there (abort: no
/// cleanup, as in a crash); returns its output.
fn run_killed_at(
    zs: &Zs,
    args: &[&str],
    hooks: &std::path::Path,
    point: &str,
) -> std::process::Output {
    let child = zs
        .cmd()
        .args(args)
        .env("ZSTORE_TEST_HOOK_DIR", hooks)
        .env("ZSTORE_TEST_HOOK_POINTS", point)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_hook(hooks, point);
    std::fs::write(hooks.join(format!("{point}.abort")), b"").unwrap();
    child.wait_with_output().unwrap()
}

fn killed_pull_at(point: &str) {
    let (tmp, layout, zs) = images_and_store(2, 10, 30_000, Compression::Gzip);
    zs.ok(&["pull", &layout.source("c0")]);
    let hooks = hooks_dir(tmp.path());
    let out = run_killed_at(&zs, &["pull", &layout.source("c1")], &hooks, point);
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
    let (tmp, layout, zs) = images_and_store(1, 4, 10_000, Compression::Zstd);
    zs.ok(&["pull", &layout.source("c0")]);
    let hooks = hooks_dir(tmp.path());
    let out = run_killed_at(&zs, &["gc"], &hooks, "gc-locked");
    assert!(!out.status.success());
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
    let (tmp, layout, zs) = images_and_store(1, 6, 10_000, Compression::Gzip);
    zs.ok(&["pull", &layout.source("c0")]);
    let hooks = hooks_dir(tmp.path());
    let dest = tmp.path().join("co");
    let out = run_killed_at(
        &zs,
        &[
            "checkout",
            &layout.source("c0"),
            dest.to_str().unwrap(),
            "--mode",
            "copy",
        ],
        &hooks,
        "checkout-before-rename",
    );
    assert!(!out.status.success());
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
    let (_tmp, layout, zs) = images_and_store(2, 60, 40_000, Compression::Gzip);
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

/// Names starting with `.` in a layout and its blob directory: temp files of pushes.
fn layout_debris(layout: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for dir in [layout.to_path_buf(), layout.join("blobs/sha256")] {
        for e in std::fs::read_dir(&dir).unwrap() {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                out.push(name);
            }
        }
    }
    out
}

/// A push into an OCI layout killed at `point` leaves the layout's index as it was (its tag
/// still names the image pushed before, which still pulls), and the next push removes the
/// debris and completes.
fn killed_push_at(point: &str) {
    let (tmp, layout, zs) = images_and_store(2, 10, 30_000, Compression::Gzip);
    let c0 = zs.json(&["pull", &layout.source("c0")]);
    let c1 = zs.json(&["pull", &layout.source("c1")]);
    let out = tmp.path().join("out");
    let dest = format!("oci:{}:v", out.display());
    zs.ok(&["push", &layout.source("c0"), &dest]);
    let index_before = std::fs::read(out.join("index.json")).unwrap();

    let hooks = hooks_dir(tmp.path());
    let killed = run_killed_at(&zs, &["push", &layout.source("c1"), &dest], &hooks, point);
    assert!(!killed.status.success(), "{point}: the push was killed");

    assert_eq!(
        std::fs::read(out.join("index.json")).unwrap(),
        index_before,
        "{point}: the index is unchanged"
    );
    if point == "push-blob-written" {
        assert!(
            !layout_debris(&out).is_empty(),
            "{point}: the killed push left its temp blob"
        );
    }
    let fresh = Zs::new(&tmp.path().join("fresh"));
    let pulled = fresh.json(&["pull", &dest]);
    assert_eq!(
        pulled["config_digest"], c0["config_digest"],
        "{point}: the tag still names the earlier image"
    );
    let fsck = zs.json(&["fsck"]);
    assert_eq!(fsck["errors"], serde_json::json!([]), "{point}: {fsck}");

    zs.ok(&["push", &layout.source("c1"), &dest]);
    assert_eq!(
        layout_debris(&out),
        Vec::<String>::new(),
        "{point}: the next push removed the debris"
    );
    let pulled = fresh.json(&["pull", &dest]);
    assert_eq!(pulled["config_digest"], c1["config_digest"], "{point}");
    assert_eq!(
        pulled["layers"][0]["reused_files"], 10,
        "{point}: files shared with the earlier image are reused"
    );
}

#[test]
fn push_killed_after_writing_a_layer_blob() {
    killed_push_at("push-blob-written");
}

#[test]
fn push_killed_before_writing_its_manifest() {
    killed_push_at("push-before-manifest");
}

/// Spawns `zs` with `args` and SIGKILLs it after `delay_ms` (if it is still running).
fn kill_after(zs: &Zs, args: &[&str], delay_ms: u64) {
    let mut child = zs
        .cmd()
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(delay_ms));
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn pushes_checkouts_and_gcs_killed_at_random_moments_leave_everything_consistent() {
    // Like the pull test above, a fixed sequence of delays spread over each operation.
    let (tmp, layout, zs) = images_and_store(2, 60, 40_000, Compression::Gzip);
    let c0 = zs.json(&["pull", &layout.source("c0")]);
    zs.ok(&["pull", &layout.source("c1")]);
    let reference = tmp.path().join("reference");
    zs.ok(&[
        "checkout",
        &layout.source("c0"),
        reference.to_str().unwrap(),
    ]);
    // The root directory is not in the image: its mtime is the checkout's.
    let tree = |dir: &std::path::Path| {
        let mut t = snapshot(dir).0;
        t.remove("");
        t
    };
    let want = tree(&reference);
    let out = tmp.path().join("out");
    let dest = format!("oci:{}:v", out.display());
    let dest_dir = tmp.path().join("co");
    let mut x: u64 = 0x2545f4914f6cdd1d;
    for round in 0..12 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let delay_ms = 2 + x % 80;
        let what = ["push", "checkout", "gc"][round % 3];
        match what {
            "push" => kill_after(
                &zs,
                &[
                    "push",
                    &layout.source("c0"),
                    &dest,
                    "--format",
                    "zstd:chunked",
                ],
                delay_ms,
            ),
            "checkout" => {
                let _ = std::fs::remove_dir_all(&dest_dir);
                kill_after(
                    &zs,
                    &[
                        "checkout",
                        &layout.source("c0"),
                        dest_dir.to_str().unwrap(),
                        "--mode",
                        "copy",
                    ],
                    delay_ms,
                );
                if dest_dir.exists() {
                    assert_eq!(
                        tree(&dest_dir),
                        want,
                        "round {round}: a checkout is complete or absent"
                    );
                }
            }
            _ => kill_after(&zs, &["gc"], delay_ms),
        }
        let fsck = zs.json(&["fsck"]);
        assert_eq!(
            fsck["errors"],
            serde_json::json!([]),
            "round {round} ({what} killed after {delay_ms} ms): {fsck}"
        );
        if out.join("index.json").exists() {
            let fresh = Zs::new(&tmp.path().join(format!("fresh-{round}")));
            let pulled = fresh.json(&["pull", &dest]);
            assert_eq!(
                pulled["config_digest"], c0["config_digest"],
                "round {round}: an indexed push is complete"
            );
        }
    }
    // Every operation completes afterwards, and nothing is left behind.
    zs.ok(&[
        "push",
        &layout.source("c0"),
        &dest,
        "--format",
        "zstd:chunked",
    ]);
    assert_eq!(layout_debris(&out), Vec::<String>::new());
    let _ = std::fs::remove_dir_all(&dest_dir);
    zs.ok(&["checkout", &layout.source("c0"), dest_dir.to_str().unwrap()]);
    assert_eq!(tree(&dest_dir), want);
    let leftovers = std::fs::read_dir(tmp.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains("zstore-checkout")
        })
        .count();
    assert_eq!(leftovers, 0, "the next checkout removed half-built trees");
    zs.ok(&["gc"]);
    assert_eq!(std::fs::read_dir(zs.root.join("tmp")).unwrap().count(), 0);
    let fsck = zs.json(&["fsck"]);
    assert_eq!(fsck["errors"], serde_json::json!([]), "{fsck}");
    assert_eq!(
        zs.json(&["images"]).as_array().unwrap().len(),
        2,
        "gc kept both images"
    );
}
