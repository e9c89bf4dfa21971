//! `export` rebuilds each layer's uncompressed tar byte for byte (its sha256 is the DiffID),
//! whatever tool wrote it: GNU tar in gnu/posix/ustar formats with record padding, long names,
//! hardlinks and sparse-free content, or tars with trailing bytes after the end marker.

mod common;

use std::path::Path;

use common::*;

fn staged_tree(dir: &Path) {
    std::fs::create_dir_all(dir.join(
        "a/very/deep/directory/structure/that/makes/names/longer/than/one/hundred/bytes/for/sure",
    ))
    .unwrap();
    std::fs::write(
        dir.join("a/very/deep/directory/structure/that/makes/names/longer/than/one/hundred/bytes/for/sure/file-with-a-long-name.txt"),
        b"long",
    )
    .unwrap();
    std::fs::write(dir.join("a/big"), pseudo_random(200_000, 5)).unwrap();
    std::fs::write(dir.join("a/empty"), b"").unwrap();
    std::fs::hard_link(dir.join("a/big"), dir.join("a/big-link")).unwrap();
    std::os::unix::fs::symlink("big", dir.join("a/sym")).unwrap();
    let long_target = "x".repeat(150);
    std::os::unix::fs::symlink(&long_target, dir.join("a/long-symlink")).unwrap();
}

fn gnu_tar_bytes(tmp: &Path, format: &str, extra: &[&str]) -> Vec<u8> {
    let src = tmp.join(format!("src-{format}"));
    if !src.exists() {
        staged_tree(&src);
    }
    let out = tmp.join(format!("{format}.tar"));
    let mut args = vec![
        "--format",
        format,
        "-C",
        src.to_str().unwrap(),
        "-cf",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    args.push(".");
    gnu_tar(&args);
    std::fs::read(out).unwrap()
}

#[test]
fn export_reproduces_every_layer_byte_for_byte() {
    if !require(have("tar"), "GNU tar") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut cases: Vec<(&str, Vec<u8>, Compression)> = vec![
        (
            "gnu format, 10 KiB records",
            gnu_tar_bytes(tmp.path(), "gnu", &[]),
            Compression::Gzip,
        ),
        (
            "posix format",
            gnu_tar_bytes(tmp.path(), "posix", &[]),
            Compression::Zstd,
        ),
        (
            "posix, 512-byte records",
            gnu_tar_bytes(tmp.path(), "posix", &["--blocking-factor=1"]),
            Compression::ZstdMultiFrame,
        ),
        (
            "builder tar",
            near_identical_tar(3, 5, 3000),
            Compression::None,
        ),
    ];
    let mut junk = near_identical_tar(4, 2, 700);
    junk.extend_from_slice(b"trailing bytes after the end-of-archive marker");
    cases.push(("trailing junk", junk, Compression::Gzip));
    let mut layout = Layout::new(&tmp.path().join("layout"));
    let layers: Vec<(Vec<u8>, Compression)> =
        cases.iter().map(|(_, t, c)| (t.clone(), *c)).collect();
    let added = layout.add_image("multi", &layers);
    let zs = Zs::new(&tmp.path().join("store"));
    let pulled = zs.json(&["pull", &layout.source("multi")]);
    for (i, (what, tar, _)) in cases.iter().enumerate() {
        assert_eq!(pulled["layers"][i]["diff_id_verified"], true, "{what}");
        let out = tmp.path().join(format!("export-{i}.tar"));
        zs.ok(&[
            "export",
            &layout.source("multi"),
            "--layer",
            &i.to_string(),
            "-o",
            out.to_str().unwrap(),
        ]);
        let exported = std::fs::read(&out).unwrap();
        assert_eq!(exported.len(), tar.len(), "{what}: length");
        assert!(exported == *tar, "{what}: bytes differ");
        assert_eq!(Digest::of(&exported), added.diff_ids[i], "{what}: DiffID");
    }
    // To stdout as well.
    let out = zs
        .cmd()
        .args(["export", &layout.source("multi"), "--layer", "0"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(out.stdout == cases[0].1);
    // A layer index past the end is a clear error and writes no file.
    let target = tmp.path().join("none.tar");
    let err = zs.fails(&[
        "export",
        &layout.source("multi"),
        "--layer",
        "9",
        "-o",
        target.to_str().unwrap(),
    ]);
    assert!(err.contains("layer 9 does not exist"), "{err}");
    assert!(!target.exists());
}

#[test]
fn export_refuses_a_damaged_store() {
    let tmp = tempfile::tempdir().unwrap();
    let mut layout = Layout::new(&tmp.path().join("layout"));
    layout.add_image("x", &[(near_identical_tar(0, 2, 4000), Compression::Gzip)]);
    let zs = Zs::new(&tmp.path().join("store"));
    zs.ok(&["pull", &layout.source("x")]);
    // Corrupt every object's content (same sizes). Canonical names share the variants' inodes,
    // so only variants are touched.
    for d in std::fs::read_dir(zs.root.join("objects")).unwrap() {
        for f in std::fs::read_dir(d.unwrap().path()).unwrap() {
            let p = f.unwrap().path();
            if !p.file_name().unwrap().to_string_lossy().contains('.') {
                continue;
            }
            let mut b = std::fs::read(&p).unwrap();
            b[0] ^= 1;
            std::fs::write(&p, b).unwrap();
        }
    }
    let target = tmp.path().join("x.tar");
    let err = zs.fails(&[
        "export",
        &layout.source("x"),
        "--layer",
        "0",
        "-o",
        target.to_str().unwrap(),
    ]);
    assert!(err.contains("rebuilt tar has digest"), "{err}");
    assert!(!target.exists(), "no unverified output is left");
}
