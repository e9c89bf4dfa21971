//! On real loop-mounted xfs (reflink=1) and btrfs: reflink checkouts share extents with their
//! objects (FIEMAP shared flag), hardlink checkouts share inodes, copy checkouts share nothing.
//! On ext4, reflink mode fails clearly and auto falls back to hardlinks.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use common::*;

fn image(layout_dir: &Path) -> (Layout, String) {
    let mut t = TarBuilder::new();
    let meta = Meta::default();
    t.dir("data", &meta);
    for i in 0..8u8 {
        // 256 KiB files: whole extents, so sharing is visible in FIEMAP.
        let content: Vec<u8> = (0..256 * 1024u32)
            .map(|j| (j as u8).wrapping_mul(i + 3) ^ i)
            .collect();
        t.file(
            &format!("data/f{i}"),
            &content,
            &Meta {
                mode: 0o644,
                ..Meta::default()
            },
        );
    }
    t.file("data/empty", b"", &meta);
    let mut layout = Layout::new(layout_dir);
    layout.add_image("fs", &[(t.finish(), Compression::Gzip)]);
    let src = layout.source("fs");
    (layout, src)
}

fn usage(path: &Path) -> zstore::sys::ExtentUsage {
    zstore::sys::fiemap_usage(&std::fs::File::open(path).unwrap()).unwrap()
}

fn data_files(dest: &Path) -> Vec<std::path::PathBuf> {
    (0..8).map(|i| dest.join(format!("data/f{i}"))).collect()
}

fn check_reflink_fs(kind: &str) {
    let base = tempfile::tempdir().unwrap();
    let Some(fs) = loop_fs(kind, 512, base.path()) else {
        return;
    };
    let (_layout, src) = image(&base.path().join("layout"));
    let zs = Zs::new(&fs.mount.join("store"));
    zs.ok(&["pull", &src]);

    // reflink: every file shares all its extents, and is its own inode.
    let dest = fs.mount.join("co-reflink");
    let r = zs.json(&[
        "checkout",
        &src,
        dest.to_str().unwrap(),
        "--mode",
        "reflink",
    ]);
    assert_eq!(r["reflinked"], 8, "{kind}: {r}");
    for f in data_files(&dest) {
        let u = usage(&f);
        assert!(
            u.total > 0 && u.shared == u.total,
            "{kind}: {} not fully shared: {u:?}",
            f.display()
        );
        assert_eq!(std::fs::metadata(&f).unwrap().nlink(), 1);
    }
    // auto picks reflink here.
    let auto = fs.mount.join("co-auto");
    let r = zs.json(&["checkout", &src, auto.to_str().unwrap(), "--mode", "auto"]);
    assert_eq!(r["reflinked"], 8, "{kind} auto: {r}");

    // hardlink: same inode as the store's variant.
    let hard = fs.mount.join("co-hard");
    let r = zs.json(&[
        "checkout",
        &src,
        hard.to_str().unwrap(),
        "--mode",
        "hardlink",
    ]);
    assert_eq!(r["hardlinked"], 8, "{kind}: {r}");
    let reflinked_ino = std::fs::metadata(dest.join("data/f0")).unwrap().ino();
    for f in data_files(&hard) {
        let md = std::fs::metadata(&f).unwrap();
        assert!(
            md.nlink() >= 3,
            "{kind}: {} has {} links (store variant, canonical, checkout)",
            f.display(),
            md.nlink()
        );
        assert_ne!(md.ino(), reflinked_ino);
    }
    assert_eq!(
        std::fs::metadata(hard.join("data/empty")).unwrap().nlink(),
        1,
        "empty files are never linked"
    );

    // copy: nothing shared. Sync first so delayed allocation does not hide extents.
    let copy = fs.mount.join("co-copy");
    let r = zs.json(&["checkout", &src, copy.to_str().unwrap(), "--mode", "copy"]);
    assert_eq!(r["copied"], 8, "{kind}: {r}");
    zstore::sys::syncfs(std::fs::File::open(&fs.mount).unwrap()).unwrap();
    for f in data_files(&copy) {
        let u = usage(&f);
        assert!(
            u.total > 0 && u.shared == 0,
            "{kind}: copy {} shares extents: {u:?}",
            f.display()
        );
        assert_eq!(std::fs::metadata(&f).unwrap().nlink(), 1);
    }
    let fsck = zs.json(&["fsck"]);
    assert_eq!(fsck["errors"], serde_json::json!([]), "{fsck}");
}

#[test]
fn xfs_reflink_hardlink_copy() {
    check_reflink_fs("xfs");
}

#[test]
fn btrfs_reflink_hardlink_copy() {
    check_reflink_fs("btrfs");
}

#[test]
fn ext4_reflink_fails_clearly_and_auto_falls_back() {
    let base = tempfile::tempdir().unwrap();
    let Some(fs) = loop_fs("ext4", 128, base.path()) else {
        return;
    };
    let (_layout, src) = image(&base.path().join("layout"));
    let zs = Zs::new(&fs.mount.join("store"));
    zs.ok(&["pull", &src]);
    let dest = fs.mount.join("co-reflink");
    let err = zs.fails(&[
        "checkout",
        &src,
        dest.to_str().unwrap(),
        "--mode",
        "reflink",
    ]);
    assert!(err.contains("reflink checkout impossible"), "{err}");
    assert!(
        err.contains("--mode hardlink"),
        "the error suggests what to do: {err}"
    );
    assert!(!dest.exists(), "a failed checkout leaves nothing");
    let auto = fs.mount.join("co-auto");
    let r = zs.json(&["checkout", &src, auto.to_str().unwrap(), "--mode", "auto"]);
    assert_eq!(r["hardlinked"], 8, "{r}");
    assert_eq!(r["reflinked"], 0, "{r}");
}

#[test]
fn hardlink_across_filesystems_fails_clearly_and_auto_copies() {
    let base = tempfile::tempdir().unwrap();
    let Some(fs) = loop_fs("ext4", 64, base.path()) else {
        return;
    };
    let (_layout, src) = image(&base.path().join("layout"));
    // Store on the loop filesystem, checkouts on the temp directory's filesystem.
    let zs = Zs::new(&fs.mount.join("store"));
    zs.ok(&["pull", &src]);
    let dest = base.path().join("co-hard");
    let err = zs.fails(&[
        "checkout",
        &src,
        dest.to_str().unwrap(),
        "--mode",
        "hardlink",
    ]);
    assert!(err.contains("different filesystems"), "{err}");
    assert!(!dest.exists());
    let auto = base.path().join("co-auto");
    let r = zs.json(&["checkout", &src, auto.to_str().unwrap()]);
    assert_eq!(r["copied"], 8, "{r}");
}

#[test]
fn hardlink_checkout_survives_the_link_limit() {
    // ext4 allows 65000 links per inode: 65100 files with the same content and metadata
    // exhaust one variant; the rest get their own copies instead of failing.
    let base = tempfile::tempdir().unwrap();
    let Some(fs) = loop_fs("ext4", 256, base.path()) else {
        return;
    };
    let mut t = TarBuilder::new();
    let meta = Meta::default();
    t.dir("d", &meta);
    for i in 0..65_100 {
        t.file(&format!("d/{i}"), b"same", &meta);
    }
    let mut layout = Layout::new(&base.path().join("layout"));
    layout.add_image("many", &[(t.finish(), Compression::Zstd)]);
    let zs = Zs::new(&fs.mount.join("store"));
    zs.ok(&["pull", &layout.source("many")]);
    let dest = fs.mount.join("co");
    let r = zs.json(&[
        "checkout",
        &layout.source("many"),
        dest.to_str().unwrap(),
        "--mode",
        "hardlink",
    ]);
    assert_eq!(r["files"], 65_100, "{r}");
    let linked = r["hardlinked"].as_u64().unwrap();
    let copied = r["copied"].as_u64().unwrap();
    assert_eq!(linked + copied, 65_100, "{r}");
    assert!(copied >= 100, "the link limit was reached and handled: {r}");
    assert_eq!(std::fs::read(dest.join("d/65099")).unwrap(), b"same");
}
