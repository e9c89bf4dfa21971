//! The command-line contract: exit codes, `--json` documents, names and digests, platforms.

mod common;

use common::*;

#[test]
fn usage_errors_exit_2_and_help_explains() {
    let tmp = tempfile::tempdir().unwrap();
    let zs = Zs::new(tmp.path());
    assert_eq!(zs.run(&["no-such-command"]).status.code(), Some(2));
    assert_eq!(zs.run(&["pull"]).status.code(), Some(2));
    assert_eq!(
        zs.run(&["checkout", "x", "y", "--mode", "sideways"])
            .status
            .code(),
        Some(2)
    );
    let help = zs.ok(&["--help"]);
    for cmd in [
        "pull", "images", "inspect", "checkout", "export", "rm", "gc", "fsck", "df",
    ] {
        assert!(help.contains(cmd), "help lists {cmd}");
    }
    let help = zs.ok(&["checkout", "--help"]);
    assert!(help.contains("reflink") && help.contains("hardlink") && help.contains("copy"));
}

#[test]
fn names_digests_prefixes_and_rm() {
    let tmp = tempfile::tempdir().unwrap();
    let mut layout = Layout::new(&tmp.path().join("layout"));
    let a = layout.add_image(
        "one",
        &[(near_identical_tar(0, 3, 2000), Compression::Gzip)],
    );
    layout.tag(&a.manifest_digest, "two");
    let zs = Zs::new(&tmp.path().join("store"));
    let out = zs.run(&["pull", &layout.source("one")]);
    assert!(out.status.success());
    assert!(
        out.stderr.is_empty(),
        "no progress output when stderr is not a terminal"
    );
    zs.ok(&["pull", &layout.source("two")]);

    let images = zs.json(&["images"]);
    let list = images.as_array().unwrap();
    assert_eq!(list.len(), 1, "{images}");
    assert_eq!(list[0]["names"].as_array().unwrap().len(), 2);
    assert_eq!(list[0]["manifest_digest"], a.manifest_digest.to_string());
    assert_eq!(list[0]["layers"], 1);
    assert!(list[0]["size"].as_u64().unwrap() > 6000);

    let full = a.manifest_digest.to_string();
    let prefix = &a.manifest_digest.hex()[..12];
    for q in [full.as_str(), prefix, &format!("sha256:{prefix}")] {
        let i = zs.json(&["inspect", q]);
        assert_eq!(i["manifest_digest"], full, "{q}");
    }
    let err = zs.fails(&["inspect", &a.manifest_digest.hex()[..8]]);
    assert!(
        err.contains("no image"),
        "short prefixes are not accepted: {err}"
    );

    // Removing one name keeps the image; removing the last name removes it.
    let r = zs.json(&["rm", &layout.source("one")]);
    assert_eq!(r["removed"], serde_json::json!([]), "{r}");
    assert_eq!(zs.json(&["images"]).as_array().unwrap().len(), 1);
    let r = zs.json(&["rm", &layout.source("two")]);
    assert_eq!(r["removed"], serde_json::json!([full]), "{r}");
    assert_eq!(zs.json(&["images"]), serde_json::json!([]));
    let err = zs.fails(&["rm", "nothing-here"]);
    assert!(err.contains("no image"), "{err}");
}

#[test]
fn pull_json_has_the_contract_fields() {
    let tmp = tempfile::tempdir().unwrap();
    let mut layout = Layout::new(&tmp.path().join("layout"));
    layout.add_image(
        "x",
        &[
            (near_identical_tar(0, 3, 2000), Compression::Zstd),
            (near_identical_tar(0, 1, 2000), Compression::None),
        ],
    );
    let zs = Zs::new(&tmp.path().join("store"));
    let r = zs.json(&["pull", &layout.source("x")]);
    for k in [
        "image",
        "manifest_digest",
        "config_digest",
        "fetched_bytes",
        "reused_bytes",
        "layers",
    ] {
        assert!(r.get(k).is_some(), "pull --json lacks {k}: {r}");
    }
    for k in [
        "digest",
        "diff_id",
        "media_type",
        "format",
        "size",
        "fetched_bytes",
        "partial",
        "files",
        "reused_files",
        "diff_id_verified",
    ] {
        assert!(r["layers"][0].get(k).is_some(), "layer lacks {k}: {r}");
    }
    assert_eq!(r["layers"][0]["format"], "zstd");
    assert_eq!(r["layers"][1]["format"], "tar");
    assert_eq!(r["image"], layout.source("x"));
    // The second layer's files are all in the first one.
    assert_eq!(r["layers"][1]["reused_files"], 2, "{r}");
    assert_eq!(r["layers"][1]["files"], 2, "{r}");
    // Pulling again reads no layer.
    let again = zs.json(&["pull", &layout.source("x")]);
    assert_eq!(again["layers"][0]["fetched_bytes"], 0, "{again}");
    assert_eq!(again["layers"][1]["fetched_bytes"], 0, "{again}");
    for cmd in [&["df"][..], &["gc"], &["fsck"], &["images"]] {
        zs.json(cmd);
    }
    let c = zs.json(&[
        "checkout",
        &layout.source("x"),
        tmp.path().join("co").to_str().unwrap(),
    ]);
    for k in ["files", "hardlinked", "reflinked", "copied", "bytes"] {
        assert!(c.get(k).is_some(), "checkout --json lacks {k}: {c}");
    }
}

#[test]
fn index_selects_the_platform() {
    let tmp = tempfile::tempdir().unwrap();
    let mut layout = Layout::new(&tmp.path().join("layout"));
    let amd = layout.add_image("amd", &[(near_identical_tar(1, 1, 100), Compression::None)]);
    let arm = layout.add_image("arm", &[(near_identical_tar(2, 1, 100), Compression::None)]);
    let manifest_size = |d: &Digest| {
        std::fs::metadata(layout.dir.join("blobs/sha256").join(d.hex()))
            .unwrap()
            .len()
    };
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": arm.manifest_digest.to_string(),
             "size": manifest_size(&arm.manifest_digest), "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": amd.manifest_digest.to_string(),
             "size": manifest_size(&amd.manifest_digest), "platform": {"os": "linux", "architecture": "amd64"}}
        ]
    });
    let index_bytes = serde_json::to_vec(&index).unwrap();
    let idx = layout.put_blob(&index_bytes);
    std::fs::write(
        layout.dir.join("index.json"),
        serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.index.v1+json", "digest": idx.to_string(), "size": index_bytes.len(),
            "annotations": {"org.opencontainers.image.ref.name": "multi"}}]}))
        .unwrap(),
    )
    .unwrap();
    let zs = Zs::new(&tmp.path().join("store"));
    let host = zstore::image::platform::Platform::host();
    if host.architecture == "amd64" {
        let r = zs.json(&["pull", &layout.source("multi")]);
        assert_eq!(r["manifest_digest"], amd.manifest_digest.to_string());
    }
    let r = zs.json(&["pull", &layout.source("multi"), "--platform", "linux/arm64"]);
    assert_eq!(r["manifest_digest"], arm.manifest_digest.to_string());
    let err = zs.fails(&["pull", &layout.source("multi"), "--platform", "linux/s390x"]);
    assert!(
        err.contains("linux/s390x") && err.contains("linux/arm64/v8"),
        "{err}"
    );
    assert_eq!(
        zs.run(&["pull", &layout.source("multi"), "--platform", "nonsense"])
            .status
            .code(),
        Some(2)
    );
    // A layout holding one image can be pulled without a tag.
    zs.ok(&[
        "pull",
        &format!("oci:{}", layout.dir.display()),
        "--platform",
        "linux/arm64",
    ]);
}

#[test]
fn root_from_environment() {
    let tmp = tempfile::tempdir().unwrap();
    let mut layout = Layout::new(&tmp.path().join("layout"));
    layout.add_image("x", &[(near_identical_tar(0, 1, 100), Compression::None)]);
    let root = tmp.path().join("env-root");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_zstore"))
        .env("ZSTORE_ROOT", &root)
        .args(["pull", &layout.source("x")])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(root.join("zstore-store").exists());
}
