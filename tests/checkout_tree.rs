//! Checkout reproduces every entry kind exactly as GNU tar extracts the same layers, in each
//! mode; whiteouts and opaque directories are applied.

mod common;

use common::*;

fn m(mode: u32) -> Meta {
    Meta {
        mode,
        ..Meta::default()
    }
}

/// Two layers that hold every entry kind zstore reproduces, in tree order (as `tar --sort=name`
/// writes them: GNU tar restores a directory's mtime when it leaves it, so an unsorted tar would
/// make the reference itself inexact).
fn layers() -> (Vec<u8>, Vec<u8>) {
    let mut t = TarBuilder::new();
    t.symlink("bin", "usr/bin", &m(0o777))
        .dir("dev", &m(0o755))
        .special("dev/loop9", tar::EntryType::Block, 7, 9, &m(0o660))
        .special("dev/null", tar::EntryType::Char, 1, 3, &m(0o666))
        .dir("etc", &m(0o755))
        .symlink(
            "etc/abs",
            "/etc/hostname",
            &Meta {
                mtime: 1_600_000_000,
                ..m(0o777)
            },
        )
        .file("etc/copy-a", b"same content\n", &m(0o644))
        .file("etc/copy-b", b"same content\n", &m(0o600))
        .file("etc/dup1", b"duplicate\n", &m(0o644))
        .file("etc/dup2", b"duplicate\n", &m(0o644))
        .file("etc/empty", b"", &m(0o600))
        .file("etc/hostname", b"zstore-test\n", &m(0o644))
        .file(
            "etc/nanos",
            b"nanoseconds\n",
            &Meta {
                mtime_nanos: Some(123_456_789),
                ..Meta::default()
            },
        )
        .dir("run", &m(0o755))
        .special("run/fifo", tar::EntryType::Fifo, 0, 0, &m(0o620))
        .dir(
            "srv",
            &Meta {
                mode: 0o2775,
                uid: 1000,
                gid: 1000,
                ..Meta::default()
            },
        )
        .file(
            "srv/data",
            b"private\n",
            &Meta {
                mode: 0o600,
                uid: 1000,
                gid: 1000,
                xattrs: vec![
                    ("user.comment".into(), b"hello".to_vec()),
                    ("trusted.zstore".into(), vec![0, 1, 2, 255]),
                ],
                ..Meta::default()
            },
        )
        .dir("tmp", &m(0o1777))
        .dir("usr", &m(0o755))
        .dir("usr/bin", &m(0o755))
        .file("usr/bin/su", &pseudo_random(70_000, 1), &m(0o4755))
        .hardlink("usr/bin/su-link", "usr/bin/su", &m(0o4755))
        .file(
            "usr/bin/wall",
            &pseudo_random(5_000, 2),
            &Meta {
                mode: 0o2755,
                gid: 5,
                ..Meta::default()
            },
        )
        .dir("usr/lib", &m(0o755))
        .file("usr/lib/big.bin", &pseudo_random(3 << 20, 3), &m(0o644));
    let l0 = t.finish();
    let mut t = TarBuilder::new();
    t.dir(
        "etc",
        &Meta {
            mtime: 1_700_000_600,
            ..m(0o755)
        },
    )
    .hardlink("etc/hl-to-lower", "etc/dup1", &m(0o644))
    .file(
        "etc/hostname",
        b"changed in layer 1\n",
        &Meta {
            mtime: 1_700_000_500,
            ..m(0o640)
        },
    )
    .dir(
        "srv",
        &Meta {
            mode: 0o700,
            uid: 1000,
            gid: 1000,
            ..Meta::default()
        },
    )
    .dir("usr", &m(0o755))
    .dir("usr/bin", &m(0o755))
    .file("usr/bin/new", &pseudo_random(10_000, 4), &m(0o755));
    (l0, t.finish())
}

#[test]
fn every_entry_kind_matches_gnu_tar_in_each_mode() {
    if !require(
        is_root(),
        "root (device nodes, ownership, trusted.* xattrs)",
    ) || !require(have("tar"), "GNU tar")
    {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (l0, l1) = layers();
    let mut layout = Layout::new(&tmp.path().join("layout"));
    layout.add_image(
        "v1",
        &[
            (l0.clone(), Compression::Gzip),
            (l1.clone(), Compression::Zstd),
        ],
    );

    // Reference: GNU tar extracts both layers in order.
    let reference = tmp.path().join("reference");
    std::fs::create_dir(&reference).unwrap();
    for (i, l) in [&l0, &l1].iter().enumerate() {
        let p = tmp.path().join(format!("l{i}.tar"));
        std::fs::write(&p, l).unwrap();
        gnu_extract(&p, &reference);
    }
    let (mut expected, ref_inodes) = snapshot(&reference);
    expected.remove("");
    let ref_groups = link_groups(&ref_inodes);
    assert!(
        ref_groups
            .iter()
            .any(|g| g.contains(&"usr/bin/su-link".to_string())),
        "reference has the hardlink"
    );

    let zs = Zs::new(&tmp.path().join("store"));
    zs.ok(&["pull", &layout.source("v1")]);
    for mode in ["hardlink", "copy", "auto"] {
        let dest = tmp.path().join(format!("co-{mode}"));
        let report = zs.json(&[
            "checkout",
            &layout.source("v1"),
            dest.to_str().unwrap(),
            "--mode",
            mode,
        ]);
        let (mut actual, inodes) = snapshot(&dest);
        actual.remove("");
        assert_same_tree(&expected, &actual, &format!("checkout --mode {mode}"));
        let groups = link_groups(&inodes);
        match mode {
            "copy" => {
                assert_eq!(groups, ref_groups, "copy: hardlink groups as in the layers");
                assert_eq!(
                    report["copied"],
                    report["files"].as_u64().unwrap() - 3,
                    "{report}"
                ); // 2 in-tree links, 1 empty
            }
            _ => {
                for g in &ref_groups {
                    assert!(
                        groups.iter().any(|h| g.iter().all(|p| h.contains(p))),
                        "{mode}: group {g:?} kept"
                    );
                }
                // Files with the same content and metadata share one variant; different
                // metadata means different inodes.
                assert!(
                    groups
                        .iter()
                        .any(|g| g.contains(&"etc/dup1".into()) && g.contains(&"etc/dup2".into()))
                );
                assert_ne!(inodes["etc/copy-a"], inodes["etc/copy-b"]);
                assert!(report["hardlinked"].as_u64().unwrap() > 0, "{report}");
            }
        }
        // The empty file is never linked to anything.
        assert!(!groups.iter().any(|g| g.contains(&"etc/empty".into())));
    }
    let fsck = zs.json(&["fsck"]);
    assert_eq!(fsck["errors"], serde_json::json!([]), "{fsck}");
}

#[test]
fn whiteouts_and_opaque_directories() {
    let tmp = tempfile::tempdir().unwrap();
    let mut t = TarBuilder::new();
    t.dir("a", &m(0o755))
        .file("a/gone", b"1", &m(0o644))
        .file("a/kept", b"2", &m(0o644))
        .dir("b", &m(0o755))
        .file("b/hidden", b"3", &m(0o644))
        .dir("b/sub", &m(0o755))
        .file("b/sub/deep", b"4", &m(0o644))
        .file("c", b"5", &m(0o644));
    let l0 = t.finish();
    let mut t = TarBuilder::new();
    t.file("a/.wh.gone", b"", &m(0o644))
        .dir("b", &m(0o755))
        .file("b/.wh..wh..opq", b"", &m(0o644))
        .file("b/new", b"6", &m(0o644))
        .file(".wh.c", b"", &m(0o644))
        .file("c2", b"7", &m(0o644));
    let l1 = t.finish();
    let mut layout = Layout::new(&tmp.path().join("layout"));
    layout.add_image(
        "w",
        &[(l0, Compression::None), (l1, Compression::ZstdMultiFrame)],
    );
    let zs = Zs::new(&tmp.path().join("store"));
    zs.ok(&["pull", &layout.source("w")]);
    let dest = tmp.path().join("co");
    zs.ok(&[
        "checkout",
        &layout.source("w"),
        dest.to_str().unwrap(),
        "--mode",
        "copy",
    ]);
    let (snap, _) = snapshot(&dest);
    let paths: Vec<&str> = snap.keys().map(String::as_str).collect();
    assert_eq!(paths, vec!["", "a", "a/kept", "b", "b/new", "c2"]);
}

#[test]
fn destination_must_be_new_or_empty_and_failures_leave_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let mut t = TarBuilder::new();
    t.file("f", b"x", &m(0o644));
    let mut layout = Layout::new(&tmp.path().join("layout"));
    layout.add_image("x", &[(t.finish(), Compression::None)]);
    let zs = Zs::new(&tmp.path().join("store"));
    zs.ok(&["pull", &layout.source("x")]);

    let full = tmp.path().join("full");
    std::fs::create_dir(&full).unwrap();
    std::fs::write(full.join("keep"), b"mine").unwrap();
    let err = zs.fails(&["checkout", &layout.source("x"), full.to_str().unwrap()]);
    assert!(err.contains("not an empty directory"), "{err}");
    assert_eq!(std::fs::read(full.join("keep")).unwrap(), b"mine");

    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    zs.ok(&[
        "checkout",
        &layout.source("x"),
        empty.to_str().unwrap(),
        "--mode",
        "copy",
    ]);
    assert_eq!(std::fs::read(empty.join("f")).unwrap(), b"x");

    let err = zs.fails(&[
        "checkout",
        "no-such-image",
        tmp.path().join("n").to_str().unwrap(),
    ]);
    assert!(err.contains("no image"), "{err}");
    assert!(!tmp.path().join("n").exists());
    // No hidden staging directories are left next to the destinations.
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("zstore-checkout"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
