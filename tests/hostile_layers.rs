//! Hostile layers: path traversal, absolute paths, symlink and hardlink escapes. Each gives a
//! clear error (or, across layers, a safe result), the store is unchanged, and nothing is ever
//! written outside the checkout destination.

mod common;

use common::*;

struct Case {
    name: &'static str,
    tar: Vec<u8>,
    error: &'static str,
}

fn single_layer_cases(outside: &str) -> Vec<Case> {
    let m = Meta::default();
    let mut cases = Vec::new();
    let mut t = TarBuilder::new();
    t.raw_entry(b"../escape", tar::EntryType::Regular, b"", b"evil");
    cases.push(Case {
        name: "dot-dot path",
        tar: t.finish(),
        error: "\"..\"",
    });

    let mut t = TarBuilder::new();
    t.raw_entry(b"a/../../escape", tar::EntryType::Regular, b"", b"evil");
    cases.push(Case {
        name: "dot-dot in the middle",
        tar: t.finish(),
        error: "\"..\"",
    });

    let mut t = TarBuilder::new();
    let abs = format!("{outside}/absolute");
    t.raw_entry(abs.as_bytes(), tar::EntryType::Regular, b"", b"evil");
    cases.push(Case {
        name: "absolute path",
        tar: t.finish(),
        error: "absolute",
    });

    let mut t = TarBuilder::new();
    t.symlink("link", outside, &m);
    t.raw_entry(
        b"link/through-symlink",
        tar::EntryType::Regular,
        b"",
        b"evil",
    );
    cases.push(Case {
        name: "file written through a symlink",
        tar: t.finish(),
        error: "through symlink",
    });

    let mut t = TarBuilder::new();
    t.raw_entry(b"hl", tar::EntryType::Link, b"../../etc/passwd", b"");
    cases.push(Case {
        name: "hardlink to outside (relative)",
        tar: t.finish(),
        error: "\"..\"",
    });

    let mut t = TarBuilder::new();
    t.raw_entry(b"hl", tar::EntryType::Link, b"/etc/passwd", b"");
    cases.push(Case {
        name: "hardlink to outside (absolute)",
        tar: t.finish(),
        error: "absolute",
    });

    let mut t = TarBuilder::new();
    t.raw_entry(b"sparse", tar::EntryType::GNUSparse, b"", b"");
    cases.push(Case {
        name: "GNU sparse entry",
        tar: t.finish(),
        error: "unsupported tar entry type",
    });
    cases
}

#[test]
fn hostile_single_layers_are_refused_and_change_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let outside = tmp.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let zs = Zs::new(&tmp.path().join("store"));
    // A valid image first, so "unchanged" is checked against a non-empty store.
    let mut layout = Layout::new(&tmp.path().join("layout"));
    layout.add_image(
        "good",
        &[(near_identical_tar(0, 3, 1000), Compression::Gzip)],
    );
    zs.ok(&["pull", &layout.source("good")]);
    let before = zs.json(&["df"]);

    for (i, case) in single_layer_cases(outside.to_str().unwrap())
        .into_iter()
        .enumerate()
    {
        let tag = format!("bad{i}");
        layout.add_image(&tag, &[(case.tar, Compression::Gzip)]);
        let err = zs.fails(&["pull", &layout.source(&tag)]);
        assert!(
            err.contains(case.error),
            "{}: error should mention {:?}: {err}",
            case.name,
            case.error
        );
        assert_eq!(
            zs.json(&["df"]),
            before,
            "{}: the store is unchanged",
            case.name
        );
        assert_eq!(
            std::fs::read_dir(zs.root.join("tmp")).unwrap().count(),
            0,
            "{}: no staging left",
            case.name
        );
    }
    assert_eq!(
        std::fs::read_dir(&outside).unwrap().count(),
        0,
        "nothing written outside"
    );
    assert!(!tmp.path().join("escape").exists());
    let fsck = zs.json(&["fsck"]);
    assert_eq!(fsck["errors"], serde_json::json!([]), "{fsck}");
}

#[test]
fn symlink_in_a_lower_layer_cannot_redirect_an_upper_layer() {
    let tmp = tempfile::tempdir().unwrap();
    let outside = tmp.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let m = Meta::default();
    let mut l0 = TarBuilder::new();
    l0.symlink("link", outside.to_str().unwrap(), &m);
    l0.symlink("passwd", "/etc/passwd", &m);
    l0.hardlink("passwd-hl", "passwd", &m);
    let mut l1 = TarBuilder::new();
    l1.file("link/evil", b"evil", &m);
    let mut layout = Layout::new(&tmp.path().join("layout"));
    layout.add_image(
        "x",
        &[
            (l0.finish(), Compression::None),
            (l1.finish(), Compression::Gzip),
        ],
    );
    let zs = Zs::new(&tmp.path().join("store"));
    zs.ok(&["pull", &layout.source("x")]);
    for mode in ["copy", "hardlink"] {
        let dest = tmp.path().join(format!("co-{mode}"));
        zs.ok(&[
            "checkout",
            &layout.source("x"),
            dest.to_str().unwrap(),
            "--mode",
            mode,
        ]);
        // As an overlay upper layer does: the directory replaces the symlink.
        assert!(
            std::fs::symlink_metadata(dest.join("link"))
                .unwrap()
                .is_dir(),
            "{mode}"
        );
        assert_eq!(std::fs::read(dest.join("link/evil")).unwrap(), b"evil");
        // A hardlink to a symlink links the symlink itself, never its target.
        let hl = std::fs::symlink_metadata(dest.join("passwd-hl")).unwrap();
        assert!(hl.file_type().is_symlink(), "{mode}");
        assert_eq!(
            std::fs::read_link(dest.join("passwd-hl")).unwrap().to_str(),
            Some("/etc/passwd")
        );
    }
    assert_eq!(
        std::fs::read_dir(&outside).unwrap().count(),
        0,
        "nothing written outside"
    );
}

#[test]
fn truncated_and_corrupt_tars_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let good = near_identical_tar(0, 2, 5000);
    let mut bad_checksum = good.clone();
    bad_checksum[150] ^= 1; // inside the first header's checksum field
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("truncated inside a file", good[..1500].to_vec(), "ends"),
        (
            "truncated inside a header",
            good[..3000 + 100].to_vec(),
            "ends",
        ),
        ("bad header checksum", bad_checksum, "checksum"),
    ];
    let mut layout = Layout::new(&tmp.path().join("layout"));
    let zs = Zs::new(&tmp.path().join("store"));
    for (i, (what, tar, msg)) in cases.into_iter().enumerate() {
        let tag = format!("t{i}");
        layout.add_image(&tag, &[(tar, Compression::Zstd)]);
        let err = zs.fails(&["pull", &layout.source(&tag)]);
        assert!(err.contains(msg), "{what}: {err}");
    }
    assert_eq!(zs.json(&["images"]), serde_json::json!([]));
}

#[test]
fn lying_digests_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let tar = near_identical_tar(0, 2, 5000);
    let mut layout = Layout::new(&tmp.path().join("layout"));
    // The config claims another DiffID.
    layout.add_image_with("wrong-diffid", &[(tar, Compression::Gzip)], |c| {
        c["rootfs"]["diff_ids"][0] =
            serde_json::json!(zstore::digest::Digest::of(b"other").to_string());
    });
    // A layer blob whose bytes no longer match its descriptor.
    let added = layout.add_image(
        "bad-blob",
        &[(near_identical_tar(1, 2, 5000), Compression::None)],
    );
    let blob = layout
        .dir
        .join("blobs/sha256")
        .join(added.layer_digests[0].hex());
    let mut bytes = std::fs::read(&blob).unwrap();
    bytes[2000] ^= 1; // inside the first file's content: the tar still parses
    std::fs::write(&blob, bytes).unwrap();
    let zs = Zs::new(&tmp.path().join("store"));
    let err = zs.fails(&["pull", &layout.source("wrong-diffid")]);
    assert!(err.contains("config says"), "{err}");
    let err = zs.fails(&["pull", &layout.source("bad-blob")]);
    assert!(err.contains("layer") && err.contains("hashing to"), "{err}");
    assert_eq!(
        zs.json(&["df"])["objects"],
        0,
        "nothing published from refused pulls"
    );
}
