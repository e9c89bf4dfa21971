//! podman 4.3 (Debian 12) pulls what zstore pushes as zstd:chunked partially: the second of
//! two near-identical images transfers only what changed, and the tree podman mounts is the
//! tree zstore checks out. skopeo inspects it too.

mod common;

use common::registry::{self, AuthKind};
use common::*;
use zstore_fixtures::podman::Podman;

fn podman_tree(podman: &Podman, image: &str) -> std::collections::BTreeMap<String, Info> {
    let out = podman.root.join("tree.tar");
    podman
        .export_tree(image, &out)
        .unwrap_or_else(|e| panic!("podman image mount: {e}"));
    let dest = podman.root.join("tree");
    let _ = std::fs::remove_dir_all(&dest);
    std::fs::create_dir_all(&dest).unwrap();
    gnu_extract(&out, &dest);
    let (mut s, _) = snapshot(&dest);
    s.remove("");
    s
}

#[test]
fn podman_pulls_zstore_zstd_chunked_partially() {
    if !require(is_root(), "root (podman with an isolated graphroot)")
        || !require(have("podman"), "podman")
        || !require(have("skopeo"), "skopeo")
    {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let Some(reg) = registry::start(AuthKind::Anonymous, tmp.path()) else {
        return;
    };
    let mut src = Layout::new(&tmp.path().join("src"));
    near_identical_images(&mut src, 2, 80, 50_000, Compression::Gzip);
    let zs = Zs::new(&tmp.path().join("store"));
    for tag in ["c0", "c1"] {
        zs.ok(&["pull", &src.source(tag)]);
        zs.ok(&[
            "push",
            &src.source(tag),
            &format!("{}/zstore/by-zstore:{tag}", reg.host),
            "--format",
            "zstd:chunked",
        ]);
    }
    // skopeo reads the manifest and sees the chunked layer.
    let inspect = skopeo(
        tmp.path(),
        &[
            "inspect",
            "--tls-verify=false",
            "--raw",
            &format!("docker://{}/zstore/by-zstore:c1", reg.host),
        ],
    );
    let manifest: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    assert!(
        manifest["layers"][0]["annotations"]["io.containers.zstd-chunked.manifest-checksum"]
            .is_string(),
        "{manifest}"
    );

    let podman = Podman::new(tmp.path(), &reg.host, false).unwrap();
    let (ok, log) = podman.run(&[
        "--log-level=debug",
        "pull",
        &format!("{}/zstore/by-zstore:c0", reg.host),
    ]);
    assert!(ok, "podman pull c0: {log}");
    let before = reg.bytes_sent();
    let (ok, log) = podman.run(&[
        "--log-level=debug",
        "pull",
        &format!("{}/zstore/by-zstore:c1", reg.host),
    ]);
    assert!(ok, "podman pull c1: {log}");
    let c1_bytes = reg.bytes_sent() - before;
    assert!(
        log.contains("Retrieved partial blob"),
        "podman did not pull c1 partially:\n{}",
        log.lines()
            .filter(|l| l.contains("partial"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let missing = log
        .lines()
        .find(|l| l.contains("Missing") && l.contains("bytes out of"))
        .unwrap_or("")
        .to_string();
    assert!(!missing.is_empty(), "podman reports what it skipped");
    let blob_size = zs.json(&["inspect", &src.source("c1")])["layers"][0]["size"]
        .as_u64()
        .unwrap();
    assert!(
        c1_bytes * 4 < blob_size,
        "podman fetched {c1_bytes} bytes of a {blob_size}-byte layer ({missing})"
    );

    let expected = {
        let dest = tmp.path().join("co");
        zs.ok(&[
            "checkout",
            &src.source("c1"),
            dest.to_str().unwrap(),
            "--mode",
            "copy",
        ]);
        let (mut s, _) = snapshot(&dest);
        s.remove("");
        s
    };
    let mut actual = podman_tree(&podman, &format!("{}/zstore/by-zstore:c1", reg.host));
    // podman 4.3's partial pulls leave every mtime at the time of the pull, for skopeo's own
    // zstd:chunked images as well (checked when this test was written): compare the rest.
    let mut expected = expected;
    for info in expected.values_mut().chain(actual.values_mut()) {
        info.mtime = (0, 0);
    }
    assert_same_tree(
        &expected,
        &actual,
        "podman's tree of zstore's zstd:chunked image",
    );
}
