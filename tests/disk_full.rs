//! A pull onto a filesystem that fills up fails with a clear error (ENOSPC) and leaves a store
//! that fsck passes; once space is freed, gc cleans up and the pull completes.

mod common;

use common::*;

#[test]
fn pull_onto_a_full_filesystem_fails_cleanly() {
    let base = tempfile::tempdir().unwrap();
    let Some(fs) = loop_fs("ext4", 24, base.path()) else {
        return;
    };
    let mut layout = Layout::new(&base.path().join("layout"));
    // About 40 MB of incompressible files: more than the filesystem holds.
    layout.add_image(
        "big",
        &[(near_identical_tar(0, 40, 1 << 20), Compression::Gzip)],
    );
    layout.add_image(
        "small",
        &[(near_identical_tar(1, 3, 100_000), Compression::Gzip)],
    );
    let zs = Zs::new(&fs.mount.join("store"));
    zs.ok(&["pull", &layout.source("small")]);
    let err = zs.fails(&["pull", &layout.source("big")]);
    assert!(err.contains("No space left on device"), "{err}");
    let fsck = zs.json(&["fsck"]);
    assert_eq!(fsck["errors"], serde_json::json!([]), "{fsck}");
    assert_eq!(
        zs.json(&["images"]).as_array().unwrap().len(),
        1,
        "only the small image"
    );
    // Nothing of the failed pull is left once gc ran; the small image is intact.
    let gc = zs.json(&["gc"]);
    assert_eq!(
        gc["removed_objects"], 0,
        "the failed pull published nothing: {gc}"
    );
    assert_eq!(std::fs::read_dir(zs.root.join("tmp")).unwrap().count(), 0);
    let dest = fs.mount.join("co");
    zs.ok(&[
        "checkout",
        &layout.source("small"),
        dest.to_str().unwrap(),
        "--mode",
        "hardlink",
    ]);
    assert!(
        std::fs::read_to_string(dest.join("var/www/html/index.html"))
            .unwrap()
            .contains("Container #1")
    );
}
