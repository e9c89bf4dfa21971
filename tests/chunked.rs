//! zstd:chunked written by zstore: the exact tar comes back out (`zstd -d`, export, the
//! containers org's `zstd-chunked` reader), pulls read only what the store lacks, round trips
//! keep trees and DiffIDs, and lying layers are refused without changing the store.

mod common;

use std::collections::BTreeMap;

use common::*;
use zstore::chunked::annotations::ChunkedAnnotations;
use zstore::chunked::frames::skippable_frame;

fn annotations_of(desc: &serde_json::Value) -> ChunkedAnnotations {
    let map: BTreeMap<String, String> =
        serde_json::from_value(desc["annotations"].clone()).unwrap();
    ChunkedAnnotations::parse(&map).unwrap().unwrap()
}

fn two_layer_image(layout: &mut Layout) {
    let mut t = TarBuilder::new();
    let m = Meta::default();
    t.dir("etc", &m)
        .file("etc/small", b"hello\n", &m)
        .file("etc/empty", b"", &m)
        .file(
            "etc/holes",
            &[
                pseudo_random(3000, 1),
                vec![0; 200_000],
                pseudo_random(500_000, 2),
                vec![0; 5000],
            ]
            .concat(),
            &m,
        )
        .symlink("etc/link", "small", &m)
        .hardlink("etc/hard", "etc/small", &m)
        .file(
            "etc/xattr",
            b"x",
            &Meta {
                xattrs: vec![("user.k".into(), vec![0, 1, 255])],
                mtime_nanos: Some(7),
                ..m.clone()
            },
        )
        .special("etc/fifo", tar::EntryType::Fifo, 0, 0, &m);
    let l0 = t.finish();
    layout.add_image(
        "v1",
        &[
            (l0, Compression::Gzip),
            (near_identical_tar(1, 20, 70_000), Compression::Zstd),
        ],
    );
}

#[test]
fn pushed_zstd_chunked_decompresses_to_the_exact_tar_and_round_trips() {
    let tmp = tempfile::tempdir().unwrap();
    let mut src = Layout::new(&tmp.path().join("src"));
    two_layer_image(&mut src);
    let zs = Zs::new(&tmp.path().join("store"));
    let original = zs.json(&["pull", &src.source("v1")]);
    let out_dir = tmp.path().join("out");
    let dest = format!("oci:{}:v1", out_dir.display());
    let pushed = zs.json(&["push", &src.source("v1"), &dest, "--format", "zstd:chunked"]);
    let layers = layout_layers(&out_dir, "v1");
    assert_eq!(layers.len(), 2);
    for (i, (blob, desc)) in layers.iter().enumerate() {
        let diff_id = original["layers"][i]["diff_id"].as_str().unwrap();
        assert_eq!(pushed["layers"][i]["diff_id"], diff_id);
        // A stock zstd decoder gives the exact tar.
        let tar = zstd::stream::decode_all(&blob[..]).unwrap();
        assert_eq!(
            Digest::of(&tar).to_string(),
            diff_id,
            "layer {i}: zstd -d gives the DiffID"
        );
        let exported = zs.ok(&["export", &src.source("v1"), "--layer", &i.to_string()]);
        let _ = exported;
        // Both annotation key sets, agreeing.
        let ann = desc["annotations"].as_object().unwrap();
        for k in [
            "io.github.containers.zstd-chunked.manifest-checksum",
            "io.github.containers.zstd-chunked.manifest-position",
            "io.github.containers.zstd-chunked.tarsplit-position",
            "io.containers.zstd-chunked.manifest-checksum",
            "io.containers.zstd-chunked.manifest-position",
        ] {
            assert!(ann.contains_key(k), "layer {i} lacks {k}");
        }
        assert_eq!(
            desc["mediaType"],
            "application/vnd.oci.image.layer.v1.tar+zstd"
        );
        // The footer describes the same positions.
        let a = annotations_of(desc);
        let footer = zstore::chunked::footer::parse(&blob[blob.len() - 72..]).unwrap();
        assert_eq!(footer.toc, a.toc);
        assert_eq!(footer.tar_split, a.tar_split);

        // The containers org's Rust reader rebuilds the tar from TOC, tar-split and ranges.
        let get = |k: &str| ann.get(k).and_then(|v| v.as_str()).map(str::to_string);
        let owned: BTreeMap<String, String> = ann
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
            .collect();
        let refs = zstd_chunked::MetadataReferences::from_oci(|k| owned.get(k))
            .expect("zstd-chunked understands the annotations");
        assert_eq!(
            refs.manifest.digest,
            get("io.github.containers.zstd-chunked.manifest-checksum")
        );
        let toc = &blob[refs.manifest.range.start as usize..refs.manifest.range.end as usize];
        let split = &blob[refs.tarsplit.range.start as usize..refs.tarsplit.range.end as usize];
        let stream = zstd_chunked::Stream::new_from_frames(toc, split).unwrap();
        let mut rebuilt = Vec::new();
        stream
            .write_to(&mut rebuilt, |r| {
                let data =
                    zstd::stream::decode_all(&blob[r.range.start as usize..r.range.end as usize])?;
                assert_eq!(
                    format!("sha256:{}", Digest::of(&data[..r.size as usize]).hex()),
                    r.digest
                );
                Ok(data[..r.size as usize].to_vec())
            })
            .unwrap();
        assert!(
            rebuilt == tar,
            "layer {i}: zstd-chunked rebuilds the same tar"
        );
    }

    // Pull the pushed image into a fresh store: partial reads, same DiffIDs, same tree.
    let zs2 = Zs::new(&tmp.path().join("store2"));
    let again = zs2.json(&["pull", &dest]);
    for i in 0..2 {
        assert_eq!(
            again["layers"][i]["diff_id"],
            original["layers"][i]["diff_id"]
        );
        assert_eq!(again["layers"][i]["format"], "zstd:chunked");
        assert_eq!(again["layers"][i]["partial"], true);
        assert_eq!(again["layers"][i]["diff_id_verified"], true);
    }
    let a = tmp.path().join("co-original");
    let b = tmp.path().join("co-roundtrip");
    zs.ok(&[
        "checkout",
        &src.source("v1"),
        a.to_str().unwrap(),
        "--mode",
        "copy",
    ]);
    zs2.ok(&["checkout", &dest, b.to_str().unwrap(), "--mode", "copy"]);
    let (mut sa, _) = snapshot(&a);
    let (mut sb, _) = snapshot(&b);
    sa.remove("");
    sb.remove("");
    assert_same_tree(&sa, &sb, "round trip through zstd:chunked");
    for i in 0..2 {
        let x = zs.ok(&["export", &src.source("v1"), "--layer", &i.to_string()]);
        let y = zs2.ok(&["export", &dest, "--layer", &i.to_string()]);
        assert!(x == y, "layer {i} exports identically");
    }
    assert_eq!(zs2.json(&["fsck"])["errors"], serde_json::json!([]));
}

#[test]
fn pushing_zstd_and_gzip_keeps_diff_ids() {
    let tmp = tempfile::tempdir().unwrap();
    let mut src = Layout::new(&tmp.path().join("src"));
    two_layer_image(&mut src);
    let zs = Zs::new(&tmp.path().join("store"));
    let original = zs.json(&["pull", &src.source("v1")]);
    for format in ["zstd", "gzip"] {
        let dest = format!("oci:{}:{format}", tmp.path().join("out").display());
        let pushed = zs.json(&["push", &src.source("v1"), &dest, "--format", format]);
        let fresh = Zs::new(&tmp.path().join(format!("store-{format}")));
        let pulled = fresh.json(&["pull", &dest]);
        for i in 0..2 {
            assert_eq!(
                pulled["layers"][i]["diff_id"], original["layers"][i]["diff_id"],
                "{format}"
            );
            assert_eq!(pulled["layers"][i]["format"], format);
            assert_eq!(pushed["layers"][i]["digest"], pulled["layers"][i]["digest"]);
        }
    }
    // Two tags in one layout.
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tmp.path().join("out/index.json")).unwrap()).unwrap();
    assert_eq!(index["manifests"].as_array().unwrap().len(), 2);
}

#[test]
fn second_image_reads_only_what_the_store_lacks() {
    let tmp = tempfile::tempdir().unwrap();
    let mut src = Layout::new(&tmp.path().join("src"));
    near_identical_images(&mut src, 2, 30, 100_000, Compression::Gzip);
    let zs = Zs::new(&tmp.path().join("pusher"));
    let out = tmp.path().join("chunked");
    for tag in ["c0", "c1"] {
        zs.ok(&["pull", &src.source(tag)]);
        zs.ok(&[
            "push",
            &src.source(tag),
            &format!("oci:{}:{tag}", out.display()),
        ]);
    }
    let c1_blob = layout_layers(&out, "c1")[0].0.len() as u64;
    let node = Zs::new(&tmp.path().join("node"));
    let first = node.json(&["pull", &format!("oci:{}:c0", out.display())]);
    let second = node.json(&["pull", &format!("oci:{}:c1", out.display())]);
    let layer = &second["layers"][0];
    assert_eq!(layer["partial"], true);
    assert_eq!(layer["reused_files"], 30, "{second}");
    assert_eq!(layer["files"], 31);
    let fetched = layer["fetched_bytes"].as_u64().unwrap();
    assert!(
        fetched * 20 < c1_blob,
        "c1 read {fetched} of {c1_blob} bytes: only the TOC, tar-split and one small file"
    );
    assert!(first["layers"][0]["fetched_bytes"].as_u64().unwrap() > fetched * 10);
    let dest = tmp.path().join("co");
    node.ok(&[
        "checkout",
        &format!("oci:{}:c1", out.display()),
        dest.to_str().unwrap(),
        "--mode",
        "copy",
    ]);
    assert!(
        std::fs::read_to_string(dest.join("var/www/html/index.html"))
            .unwrap()
            .contains("Container #1")
    );
    // The layer recorded for c1 (skeleton of c0, c1's files) rebuilds c1's exact tar.
    let exported = tmp.path().join("c1.tar");
    node.ok(&[
        "export",
        &format!("oci:{}:c1", out.display()),
        "--layer",
        "0",
        "-o",
        exported.to_str().unwrap(),
    ]);
    assert_eq!(
        format!(
            "sha256:{}",
            Digest::of(&std::fs::read(&exported).unwrap()).hex()
        ),
        second["layers"][0]["diff_id"].as_str().unwrap()
    );
    assert_eq!(node.json(&["fsck"])["errors"], serde_json::json!([]));
}

#[test]
fn duplicate_paths_cannot_be_written_as_zstd_chunked() {
    let tmp = tempfile::tempdir().unwrap();
    let mut t = TarBuilder::new();
    t.file("a", b"one", &Meta::default())
        .file("a", b"two", &Meta::default());
    let mut src = Layout::new(&tmp.path().join("src"));
    src.add_image("dup", &[(t.finish(), Compression::None)]);
    let zs = Zs::new(&tmp.path().join("store"));
    zs.ok(&["pull", &src.source("dup")]);
    let dest = tmp.path().join("out");
    let err = zs.fails(&[
        "push",
        &src.source("dup"),
        &format!("oci:{}:dup", dest.display()),
    ]);
    assert!(err.contains("cannot carry duplicate path"), "{err}");
    // Nothing half-written is left as a blob.
    let blobs: Vec<_> = std::fs::read_dir(dest.join("blobs/sha256"))
        .unwrap()
        .collect();
    assert!(blobs.is_empty(), "{blobs:?}");
    // Other formats can carry it.
    zs.ok(&[
        "push",
        &src.source("dup"),
        &format!("oci:{}:dup", dest.display()),
        "--format",
        "gzip",
    ]);
}

/// Rebuilds a pushed zstd:chunked blob with an edited TOC (and optionally tar-split), returning
/// the blob and its annotations.
fn rebuild(
    blob: &[u8],
    ann: &ChunkedAnnotations,
    edit_toc: impl FnOnce(&mut serde_json::Value),
    split_override: Option<Vec<u8>>,
) -> (Vec<u8>, serde_json::Value) {
    let ts = ann.tar_split.unwrap();
    let data = &blob[..(ann.toc.offset - 8) as usize];
    let mut toc: serde_json::Value = serde_json::from_slice(
        &zstd::stream::decode_all(
            &blob[ann.toc.range().start as usize..ann.toc.range().end as usize],
        )
        .unwrap(),
    )
    .unwrap();
    let split_z = split_override
        .unwrap_or_else(|| blob[ts.range().start as usize..ts.range().end as usize].to_vec());
    edit_toc(&mut toc);
    let toc_json = serde_json::to_vec(&toc).unwrap();
    let toc_z = zstd::bulk::compress(&toc_json, 3).unwrap();
    let mut out = data.to_vec();
    let toc_pos = zstore::chunked::annotations::Position {
        offset: out.len() as u64 + 8,
        compressed_len: toc_z.len() as u64,
        uncompressed_len: toc_json.len() as u64,
    };
    out.extend(skippable_frame(&toc_z));
    let ts_pos = zstore::chunked::annotations::Position {
        offset: out.len() as u64 + 8,
        compressed_len: split_z.len() as u64,
        uncompressed_len: ts.uncompressed_len,
    };
    out.extend(skippable_frame(&split_z));
    out.extend(zstore::chunked::footer::write(toc_pos, ts_pos));
    let new_ann = ChunkedAnnotations {
        generation: zstore::chunked::annotations::Generation::Current,
        toc_digest: zstore::digest::Digest::of(&toc_z),
        toc: toc_pos,
        tar_split: Some(ts_pos),
    };
    (out, serde_json::to_value(new_ann.to_map()).unwrap())
}

#[test]
fn lying_zstd_chunked_layers_are_refused_and_change_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let mut src = Layout::new(&tmp.path().join("src"));
    near_identical_images(&mut src, 1, 5, 20_000, Compression::Gzip);
    let zs = Zs::new(&tmp.path().join("pusher"));
    zs.ok(&["pull", &src.source("c0")]);
    let out = tmp.path().join("chunked");
    zs.ok(&[
        "push",
        &src.source("c0"),
        &format!("oci:{}:c0", out.display()),
    ]);
    let (blob, desc) = layout_layers(&out, "c0").remove(0);
    let ann = annotations_of(&desc);
    let diff_id = Digest::of(&zstd::stream::decode_all(&blob[..]).unwrap());
    let mt = "application/vnd.oci.image.layer.v1.tar+zstd".to_string();

    let first_file = |toc: &mut serde_json::Value| -> usize {
        toc["entries"]
            .as_array()
            .unwrap()
            .iter()
            .position(|e| e["type"] == "reg" && e.get("digest").is_some())
            .unwrap()
    };
    let mut cases: Vec<(&str, Vec<u8>, serde_json::Value, &str)> = Vec::new();
    let (b, a) = rebuild(
        &blob,
        &ann,
        |t| {
            let i = first_file(t);
            t["entries"][i]["digest"] =
                serde_json::json!(zstore::digest::Digest::of(b"lie").to_string());
        },
        None,
    );
    cases.push(("file digest lies", b, a, "table of contents says"));
    let (b, a) = rebuild(
        &blob,
        &ann,
        |t| {
            let i = first_file(t);
            t["entries"][i]["endOffset"] = serde_json::json!(10_000_000);
        },
        None,
    );
    cases.push(("offset past the blob", b, a, "outside the blob"));
    let (b, a) = rebuild(
        &blob,
        &ann,
        |t| {
            let i = first_file(t);
            let prev_end = t["entries"][i]["endOffset"].clone();
            let j = i
                + 1
                + t["entries"].as_array().unwrap()[i + 1..]
                    .iter()
                    .position(|e| e["type"] == "reg")
                    .unwrap();
            t["entries"][j]["offset"] = serde_json::json!(prev_end.as_i64().unwrap() - 1);
        },
        None,
    );
    cases.push(("overlapping offsets", b, a, "overlaps"));
    let (b, a) = rebuild(
        &blob,
        &ann,
        |t| {
            let i = first_file(t);
            t["entries"][i]["mode"] = serde_json::json!(0o4777);
        },
        None,
    );
    cases.push((
        "TOC metadata differs from the tar",
        b,
        a,
        "disagrees with the tar",
    ));
    let (b, a) = rebuild(
        &blob,
        &ann,
        |_| {},
        Some(
            zstd::bulk::compress(b"{\"type\":2,\"payload\":\"AA==\",\"position\":0}\n", 3).unwrap(),
        ),
    );
    cases.push((
        "tar-split does not match its digest",
        b,
        a,
        "tar-split hashes to",
    ));
    let mut wrong_toc = desc["annotations"].clone();
    wrong_toc["io.github.containers.zstd-chunked.manifest-checksum"] =
        serde_json::json!(zstore::digest::Digest::of(b"x").to_string());
    wrong_toc["io.containers.zstd-chunked.manifest-checksum"] =
        wrong_toc["io.github.containers.zstd-chunked.manifest-checksum"].clone();
    cases.push(("TOC digest lies", blob.clone(), wrong_toc, "TOC hashes to"));

    let node = Zs::new(&tmp.path().join("node"));
    let mut bad = Layout::new(&tmp.path().join("bad"));
    for (i, (what, b, a, msg)) in cases.into_iter().enumerate() {
        let tag = format!("bad{i}");
        bad.add_image_blobs(&tag, &[(b, mt.clone(), a, diff_id.clone())]);
        let err = node.fails(&["pull", &bad.source(&tag)]);
        assert!(err.contains(msg), "{what}: expected {msg:?} in {err}");
        let df = node.json(&["df"]);
        assert_eq!(
            (df["images"].as_u64(), df["objects"].as_u64()),
            (Some(0), Some(0)),
            "{what}: store unchanged"
        );
    }
    // The untouched layer pulls fine.
    bad.add_image_blobs("good", &[(blob, mt, desc["annotations"].clone(), diff_id)]);
    node.ok(&["pull", &bad.source("good")]);
}

#[test]
fn a_borrowed_skeleton_that_is_wrong_falls_back_to_the_layers_own() {
    // Same paths and metadata as far as zstore records them, but another owner name in every
    // header: the stored layer's skeleton does not fit, which only the DiffID can tell.
    let tmp = tempfile::tempdir().unwrap();
    let build = |user: &str, i: usize| {
        let m = Meta {
            user_name: Some(user.to_string()),
            ..Meta::default()
        };
        let mut t = TarBuilder::new();
        t.dir("d", &m);
        for f in 0..20 {
            t.file(&format!("d/f{f:02}"), &pseudo_random(20_000, f), &m);
        }
        t.file("d/zz-changed", format!("version {i}").as_bytes(), &m);
        t.finish()
    };
    let mut src = Layout::new(&tmp.path().join("src"));
    src.add_image("a", &[(build("alice", 0), Compression::Gzip)]);
    src.add_image("b", &[(build("bob", 1), Compression::Gzip)]);
    src.add_image("c", &[(build("bob", 2), Compression::Gzip)]);
    let pusher = Zs::new(&tmp.path().join("pusher"));
    let out = tmp.path().join("chunked");
    for tag in ["a", "b", "c"] {
        pusher.ok(&["pull", &src.source(tag)]);
        pusher.ok(&[
            "push",
            &src.source(tag),
            &format!("oci:{}:{tag}", out.display()),
        ]);
    }
    let node = Zs::new(&tmp.path().join("node"));
    for tag in ["a", "b", "c"] {
        let r = node.json(&["pull", &format!("oci:{}:{tag}", out.display())]);
        assert_eq!(r["layers"][0]["diff_id_verified"], true, "{tag}: {r}");
        // The stored skeleton rebuilds exactly this layer's tar.
        let exported = tmp.path().join(format!("{tag}.tar"));
        node.ok(&[
            "export",
            &format!("oci:{}:{tag}", out.display()),
            "--layer",
            "0",
            "-o",
            exported.to_str().unwrap(),
        ]);
        assert_eq!(
            format!(
                "sha256:{}",
                Digest::of(&std::fs::read(&exported).unwrap()).hex()
            ),
            r["layers"][0]["diff_id"].as_str().unwrap(),
            "{tag}"
        );
    }
    assert_eq!(node.json(&["fsck"])["errors"], serde_json::json!([]));
}
