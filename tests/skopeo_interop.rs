//! Interop with the real skopeo (Debian 12's 1.9): zstore reads the zstd:chunked skopeo writes
//! (the legacy generation), and skopeo reads what zstore writes.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

/// The layer descriptors of a tagged image in a layout.
fn pushed_manifest_layers(layout: &Path, tag: &str) -> Vec<serde_json::Value> {
    layout_layers(layout, tag)
        .into_iter()
        .map(|(_, d)| d)
        .collect()
}

fn tree(dest: &Path) -> std::collections::BTreeMap<String, Info> {
    let (mut s, _) = snapshot(dest);
    s.remove("");
    s
}

#[test]
fn zstore_reads_skopeo_zstd_chunked() {
    if !require(have("skopeo"), "skopeo") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut src = Layout::new(&tmp.path().join("src"));
    near_identical_images(&mut src, 2, 25, 90_000, Compression::None);
    let chunked = tmp.path().join("chunked");
    let gzip = tmp.path().join("gzip");
    for tag in ["c0", "c1"] {
        skopeo(
            tmp.path(),
            &[
                "copy",
                "--quiet",
                "--dest-compress-format",
                "zstd:chunked",
                &src.source(tag),
                &format!("oci:{}:{tag}", chunked.display()),
            ],
        );
        skopeo(
            tmp.path(),
            &[
                "copy",
                "--quiet",
                "--dest-compress-format",
                "gzip",
                &src.source(tag),
                &format!("oci:{}:{tag}", gzip.display()),
            ],
        );
    }
    let zs = Zs::new(&tmp.path().join("store"));
    let c0 = zs.json(&["pull", &format!("oci:{}:c0", chunked.display())]);
    let layer = &c0["layers"][0];
    assert_eq!(
        layer["format"], "zstd:chunked",
        "skopeo wrote zstd:chunked: {c0}"
    );
    assert_eq!(layer["partial"], true);
    assert_eq!(
        layer["diff_id_verified"], true,
        "the legacy layer's tar is rebuilt and checked"
    );
    let c1 = zs.json(&["pull", &format!("oci:{}:c1", chunked.display())]);
    assert_eq!(c1["layers"][0]["reused_files"], 25, "{c1}");
    let blob_size = c1["layers"][0]["size"].as_u64().unwrap();
    let fetched = c1["layers"][0]["fetched_bytes"].as_u64().unwrap();
    assert!(
        fetched * 2 < blob_size,
        "c1 after c0 reads {fetched} of {blob_size} bytes"
    );

    let gz = Zs::new(&tmp.path().join("store-gzip"));
    gz.ok(&["pull", &format!("oci:{}:c1", gzip.display())]);
    let a = tmp.path().join("co-chunked");
    let b = tmp.path().join("co-gzip");
    zs.ok(&[
        "checkout",
        &format!("oci:{}:c1", chunked.display()),
        a.to_str().unwrap(),
        "--mode",
        "copy",
    ]);
    gz.ok(&[
        "checkout",
        &format!("oci:{}:c1", gzip.display()),
        b.to_str().unwrap(),
        "--mode",
        "copy",
    ]);
    assert_same_tree(&tree(&b), &tree(&a), "skopeo zstd:chunked vs gzip");
    assert_eq!(zs.json(&["fsck"])["errors"], serde_json::json!([]));
}

#[test]
fn skopeo_reads_zstore_zstd_chunked() {
    if !require(have("skopeo"), "skopeo") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut src = Layout::new(&tmp.path().join("src"));
    near_identical_images(&mut src, 1, 10, 50_000, Compression::Gzip);
    let zs = Zs::new(&tmp.path().join("store"));
    zs.ok(&["pull", &src.source("c0")]);
    let out = tmp.path().join("out");
    let pushed = zs.json(&[
        "push",
        &src.source("c0"),
        &format!("oci:{}:c0", out.display()),
    ]);
    let inspect = skopeo(
        tmp.path(),
        &["inspect", &format!("oci:{}:c0", out.display())],
    );
    let inspect: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    assert_eq!(
        inspect["Layers"][0], pushed["layers"][0]["digest"],
        "{inspect}"
    );

    // skopeo decompresses zstore's layer and recompresses it as gzip: same tar inside.
    let plain = tmp.path().join("plain");
    skopeo(
        tmp.path(),
        &[
            "copy",
            "--quiet",
            "--dest-compress-format",
            "gzip",
            &format!("oci:{}:c0", out.display()),
            &format!("oci:{}:c0", plain.display()),
        ],
    );
    let plain_layers = pushed_manifest_layers(&plain, "c0");
    assert_eq!(
        plain_layers[0]["mediaType"], "application/vnd.oci.image.layer.v1.tar+gzip",
        "{plain_layers:?}"
    );
    let blob = std::fs::read(
        plain.join("blobs/sha256").join(
            plain_layers[0]["digest"]
                .as_str()
                .unwrap()
                .strip_prefix("sha256:")
                .unwrap(),
        ),
    )
    .unwrap();
    let mut tar = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&blob[..]), &mut tar).unwrap();
    assert_eq!(
        format!("sha256:{}", Digest::of(&tar).hex()),
        pushed["layers"][0]["diff_id"].as_str().unwrap()
    );
    let fresh = Zs::new(&tmp.path().join("store2"));
    fresh.ok(&["pull", &format!("oci:{}:c0", plain.display())]);
    let a = tmp.path().join("co-a");
    let b = tmp.path().join("co-b");
    zs.ok(&[
        "checkout",
        &src.source("c0"),
        a.to_str().unwrap(),
        "--mode",
        "copy",
    ]);
    fresh.ok(&[
        "checkout",
        &format!("oci:{}:c0", plain.display()),
        b.to_str().unwrap(),
        "--mode",
        "copy",
    ]);
    assert_same_tree(&tree(&a), &tree(&b), "zstore zstd:chunked through skopeo");
}

#[test]
fn zstd_cli_decompresses_zstore_output() {
    if !require(have("zstd"), "zstd") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut src = Layout::new(&tmp.path().join("src"));
    near_identical_images(&mut src, 1, 6, 40_000, Compression::Gzip);
    let zs = Zs::new(&tmp.path().join("store"));
    zs.ok(&["pull", &src.source("c0")]);
    let out = tmp.path().join("out");
    let pushed = zs.json(&[
        "push",
        &src.source("c0"),
        &format!("oci:{}:c0", out.display()),
    ]);
    let digest = pushed["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .strip_prefix("sha256:")
        .unwrap()
        .to_string();
    let decoded = Command::new("zstd")
        .args(["-d", "-c", "-q"])
        .arg(out.join("blobs/sha256").join(digest))
        .output()
        .unwrap();
    assert!(
        decoded.status.success(),
        "{}",
        String::from_utf8_lossy(&decoded.stderr)
    );
    assert_eq!(
        format!("sha256:{}", Digest::of(&decoded.stdout).hex()),
        pushed["layers"][0]["diff_id"].as_str().unwrap()
    );
}

#[test]
fn skopeo_layer_that_dropped_tar_padding_is_refused() {
    // skopeo 1.9's zstd:chunked compressor drops GNU tar's record padding, so the layer no
    // longer matches its DiffID (podman 4.3 does not notice). zstore must.
    if !require(have("skopeo"), "skopeo") || !require(have("tar"), "GNU tar") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let stage = tmp.path().join("stage");
    std::fs::create_dir_all(stage.join("d")).unwrap();
    std::fs::write(stage.join("d/f"), pseudo_random(3000, 9)).unwrap();
    let tar_path = tmp.path().join("padded.tar");
    gnu_tar(&[
        "-C",
        stage.to_str().unwrap(),
        "-cf",
        tar_path.to_str().unwrap(),
        "d",
    ]);
    let tar = std::fs::read(&tar_path).unwrap();
    assert_eq!(tar.len() % 10240, 0, "GNU tar pads to 10 KiB records");
    let mut src = Layout::new(&tmp.path().join("src"));
    src.add_image("padded", &[(tar, Compression::None)]);
    let chunked = tmp.path().join("chunked");
    skopeo(
        tmp.path(),
        &[
            "copy",
            "--quiet",
            "--dest-compress-format",
            "zstd:chunked",
            &src.source("padded"),
            &format!("oci:{}:padded", chunked.display()),
        ],
    );
    let zs = Zs::new(&tmp.path().join("store"));
    let err = zs.fails(&["pull", &format!("oci:{}:padded", chunked.display())]);
    assert!(err.contains("config says"), "{err}");
    assert_eq!(zs.json(&["df"])["objects"], 0);
}
