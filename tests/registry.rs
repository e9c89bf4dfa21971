//! Pulls from and pushes to the real CNCF distribution registry on loopback: zstd:chunked
//! partial pulls (bytes checked against the registry's access log), gzip pulls with
//! deduplication, basic and bearer-token authentication, and zstore's own pushes.

mod common;

use common::registry::{self, AuthKind, PASS, TestRegistry, USER};
use common::*;

const FILES: usize = 120;
const SIZE: usize = 60_000;

/// Builds c0 and c1 (near-identical) and pushes them with skopeo in `format`.
fn push_fixtures(
    tmp: &std::path::Path,
    reg: &TestRegistry,
    format: &str,
    extra: &[&str],
) -> Layout {
    let mut src = Layout::new(&tmp.join(format!("src-{}", format.replace(':', "-"))));
    near_identical_images(&mut src, 2, FILES, SIZE, Compression::None);
    for tag in ["c0", "c1"] {
        let dest = format!(
            "docker://{}/zstore/fixture-{}:{tag}",
            reg.host,
            format.replace(':', "-")
        );
        let mut args = vec![
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
            "--dest-compress-format",
            format,
        ];
        args.extend_from_slice(extra);
        let source = src.source(tag);
        args.push(&source);
        args.push(&dest);
        skopeo(tmp, &args);
    }
    src
}

fn tree_of(
    zs: &Zs,
    image: &str,
    dest: &std::path::Path,
) -> std::collections::BTreeMap<String, Info> {
    zs.ok(&["checkout", image, dest.to_str().unwrap(), "--mode", "copy"]);
    let (mut s, _) = snapshot(dest);
    s.remove("");
    s
}

#[test]
fn zstd_chunked_second_image_fetches_only_the_toc_and_the_changed_file() {
    if !require(have("skopeo"), "skopeo") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let Some(reg) = registry::start(AuthKind::Anonymous, tmp.path()) else {
        return;
    };
    let src = push_fixtures(tmp.path(), &reg, "zstd:chunked", &[]);
    let zs = Zs::new(&tmp.path().join("store"));
    let c0 = zs.json(&[
        "pull",
        &format!("{}/zstore/fixture-zstd-chunked:c0", reg.host),
    ]);
    assert_eq!(c0["layers"][0]["format"], "zstd:chunked");
    assert_eq!(c0["layers"][0]["diff_id_verified"], true);

    let before = reg.bytes_sent();
    let image = format!("docker://{}/zstore/fixture-zstd-chunked:c1", reg.host);
    let c1 = zs.json(&["pull", &image]);
    let sent = reg.bytes_sent() - before;
    let layer = &c1["layers"][0];
    assert_eq!(layer["partial"], true, "{c1}");
    assert_eq!(layer["diff_id_verified"], true, "{c1}");
    assert_eq!(layer["reused_files"], FILES as u64, "{c1}");
    // TOC + the changed file's frames + manifest + config, and nothing else.
    let toc_len: u64 = {
        zstore::registry::client::install_crypto_provider();
        let m: serde_json::Value = serde_json::from_slice(
            &reqwest::blocking::Client::new()
                .get(format!(
                    "http://{}/v2/zstore/fixture-zstd-chunked/manifests/c1",
                    reg.host
                ))
                .header("Accept", "application/vnd.oci.image.manifest.v1+json")
                .send()
                .unwrap()
                .bytes()
                .unwrap(),
        )
        .unwrap();
        let pos = m["layers"][0]["annotations"]["io.containers.zstd-chunked.manifest-position"]
            .as_str()
            .unwrap()
            .to_string();
        pos.split(':').nth(1).unwrap().parse().unwrap()
    };
    let fetched = c1["fetched_bytes"].as_u64().unwrap();
    assert!(
        fetched <= toc_len + 4096,
        "c1 fetched {fetched} bytes; the TOC is {toc_len}"
    );
    assert!(
        sent <= fetched + 2048,
        "the registry sent {sent} bytes, zstore counted {fetched}"
    );
    assert!(c0["fetched_bytes"].as_u64().unwrap() > 20 * fetched);

    // The tree is the source tree.
    let reference = Zs::new(&tmp.path().join("reference"));
    reference.ok(&["pull", &src.source("c1")]);
    let expected = tree_of(&reference, &src.source("c1"), &tmp.path().join("co-ref"));
    let actual = tree_of(&zs, &image, &tmp.path().join("co-c1"));
    assert_same_tree(&expected, &actual, "c1 pulled partially");
    assert_eq!(zs.json(&["fsck"])["errors"], serde_json::json!([]));
}

#[test]
fn gzip_pair_is_downloaded_whole_but_stored_once() {
    if !require(have("skopeo"), "skopeo") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let Some(reg) = registry::start(AuthKind::Anonymous, tmp.path()) else {
        return;
    };
    push_fixtures(tmp.path(), &reg, "gzip", &[]);
    let zs = Zs::new(&tmp.path().join("store"));
    zs.json(&["pull", &format!("{}/zstore/fixture-gzip:c0", reg.host)]);
    let before = reg.bytes_sent();
    let c1 = zs.json(&["pull", &format!("{}/zstore/fixture-gzip:c1", reg.host)]);
    let layer = &c1["layers"][0];
    assert_eq!(layer["partial"], false);
    assert_eq!(layer["fetched_bytes"], layer["size"], "{c1}");
    assert_eq!(layer["reused_files"], FILES as u64);
    assert!(reg.bytes_sent() - before >= layer["size"].as_u64().unwrap());
    let df = zs.json(&["df"]);
    assert_eq!(
        df["objects"],
        FILES as u64 + 2,
        "shared files stored once: {df}"
    );
}

fn auth_round_trip(kind: AuthKind) {
    if !require(have("skopeo"), "skopeo") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let Some(reg) = registry::start(kind, tmp.path()) else {
        return;
    };
    let creds = format!("{USER}:{PASS}");
    let mut src = Layout::new(&tmp.path().join("src"));
    near_identical_images(&mut src, 1, 5, 10_000, Compression::Gzip);
    let zs = Zs::new(&tmp.path().join("store"));
    zs.ok(&["pull", &src.source("c0")]);
    let image = format!("{}/zstore/private:c0", reg.host);

    // Push and pull with --creds.
    let err = zs.fails(&["push", &src.source("c0"), &image]);
    assert!(
        err.contains("authentication failed") || err.contains("requires credentials"),
        "{err}"
    );
    zs.ok(&["push", &src.source("c0"), &image, "--creds", &creds]);
    let fresh = Zs::new(&tmp.path().join("fresh"));
    let err = fresh.fails(&["pull", &image]);
    assert!(
        err.contains("authentication failed") || err.contains("requires credentials"),
        "{err}"
    );
    let err = fresh.fails(&["pull", &image, "--creds", &format!("{USER}:wrong")]);
    assert!(err.contains("authentication failed"), "{err}");
    fresh.ok(&["pull", &image, "--creds", &creds]);

    // And with an auth file, given explicitly or through $REGISTRY_AUTH_FILE.
    let authfile = tmp.path().join("auth.json");
    let encoded = base64_encode(format!("{USER}:{PASS}").as_bytes());
    std::fs::write(
        &authfile,
        format!(r#"{{"auths":{{"{}":{{"auth":"{encoded}"}}}}}}"#, reg.host),
    )
    .unwrap();
    let other = Zs::new(&tmp.path().join("other"));
    other.ok(&["pull", &image, "--authfile", authfile.to_str().unwrap()]);
    let out = other
        .cmd()
        .args(["pull", &image, "--json"])
        .env("REGISTRY_AUTH_FILE", &authfile)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let again: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(again["layers"][0]["fetched_bytes"], 0, "already stored");
}

fn base64_encode(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(b)
}

#[test]
fn basic_auth() {
    auth_round_trip(AuthKind::Basic);
}

#[test]
fn bearer_token_auth() {
    auth_round_trip(AuthKind::Token);
}

#[test]
fn push_zstd_chunked_then_pull_and_push_again() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(reg) = registry::start(AuthKind::Anonymous, tmp.path()) else {
        return;
    };
    let mut src = Layout::new(&tmp.path().join("src"));
    near_identical_images(&mut src, 2, 30, 40_000, Compression::Gzip);
    let zs = Zs::new(&tmp.path().join("store"));
    for tag in ["c0", "c1"] {
        zs.ok(&["pull", &src.source(tag)]);
    }
    let c0 = format!("{}/zstore/pushed:c0", reg.host);
    let first = zs.json(&["push", &src.source("c0"), &c0]);
    assert!(first["pushed_bytes"].as_u64().unwrap() > 30 * 10_000);
    let again = zs.json(&["push", &src.source("c0"), &c0]);
    assert!(
        again["pushed_bytes"].as_u64().unwrap() < 4096,
        "blobs the registry has are skipped: {again}"
    );
    zs.ok(&[
        "push",
        &src.source("c1"),
        &format!("{}/zstore/pushed:c1", reg.host),
    ]);

    let node = Zs::new(&tmp.path().join("node"));
    node.json(&["pull", &c0]);
    let c1 = node.json(&["pull", &format!("{}/zstore/pushed:c1", reg.host)]);
    assert_eq!(c1["layers"][0]["partial"], true, "{c1}");
    assert_eq!(c1["layers"][0]["reused_files"], 30, "{c1}");
    assert!(c1["fetched_bytes"].as_u64().unwrap() < 40_000, "{c1}");
    let a = tree_of(&zs, &src.source("c1"), &tmp.path().join("a"));
    let b = tree_of(
        &node,
        &format!("{}/zstore/pushed:c1", reg.host),
        &tmp.path().join("b"),
    );
    assert_same_tree(&a, &b, "pushed and pulled back");
}

#[test]
fn layers_of_one_image_are_fetched_together() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(reg) = registry::start(AuthKind::Anonymous, tmp.path()) else {
        return;
    };
    let mut src = Layout::new(&tmp.path().join("src"));
    let layers: Vec<(Vec<u8>, Compression)> = (0..4)
        .map(|i| {
            let mut t = TarBuilder::new();
            t.file(
                &format!("layer{i}/data"),
                &pseudo_random(200_000, 100 + i),
                &Meta::default(),
            );
            (t.finish(), Compression::Gzip)
        })
        .collect();
    src.add_image("multi", &layers);
    let zs = Zs::new(&tmp.path().join("store"));
    zs.ok(&["pull", &src.source("multi")]);
    for format in ["gzip", "zstd:chunked"] {
        let image = format!("{}/zstore/multi:{}", reg.host, format.replace(':', "-"));
        zs.ok(&["push", &src.source("multi"), &image, "--format", format]);
        let node = Zs::new(
            &tmp.path()
                .join(format!("node-{}", format.replace(':', "-"))),
        );
        let r = node.json(&["pull", &image]);
        assert_eq!(r["layers"].as_array().unwrap().len(), 4);
        for l in r["layers"].as_array().unwrap() {
            assert!(
                l["fetched_bytes"].as_u64().unwrap() >= 200_000,
                "{format}: {r}"
            );
            assert_eq!(l["diff_id_verified"], true);
        }
        let dest = tmp.path().join(format!("co-{}", format.replace(':', "-")));
        node.ok(&["checkout", &image, dest.to_str().unwrap(), "--mode", "copy"]);
        for i in 0..4u64 {
            assert_eq!(
                std::fs::read(dest.join(format!("layer{i}/data"))).unwrap(),
                pseudo_random(200_000, 100 + i)
            );
        }
        assert_eq!(node.json(&["fsck"])["errors"], serde_json::json!([]));
        assert_eq!(
            std::fs::read_dir(node.root.join("tmp")).unwrap().count(),
            0,
            "no spool files left"
        );
    }
}
