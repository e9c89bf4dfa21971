//! Layers built to exhaust memory: a million files, TOCs over the size limit or decompressing
//! past what they declare, zstd frames that ask for a huge window. Each ends in a correct
//! result or a clear error, with peak memory measured (printed, and held to a generous
//! ceiling that only an unbounded buffer would break).

mod common;

use common::*;

const MIB: u64 = 1 << 20;
const GZIP_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const ZSTD_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

/// A layout in `tmp` holding one single-layer image `tag` made of a ready blob, and an empty
/// store next to it.
fn one_layer_image(
    tmp: &std::path::Path,
    tag: &str,
    blob: Vec<u8>,
    media_type: &str,
    annotations: serde_json::Value,
    diff_id: Digest,
) -> (Layout, Zs) {
    let mut layout = Layout::new(&tmp.join("layout"));
    layout.add_image_blobs(tag, &[(blob, media_type.to_string(), annotations, diff_id)]);
    (layout, Zs::new(&tmp.join("store")))
}

#[test]
fn a_million_file_layer_pulls_with_bounded_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let files = 1_000_000;
    let (blob, diff_id) = many_files_layer(files, 4096);
    let (layout, zs) = one_layer_image(
        tmp.path(),
        "many",
        blob,
        GZIP_LAYER,
        serde_json::Value::Null,
        diff_id,
    );
    let (code, out, err, rss) = zs.run_measured(&["pull", &layout.source("many"), "--json"]);
    assert_eq!(code, Some(0), "{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["layers"][0]["files"], files as u64, "{report}");
    assert_eq!(report["layers"][0]["diff_id_verified"], true);
    eprintln!("pull of {files} files: peak RSS {} MiB", rss / MIB);
    assert!(
        rss < 1024 * MIB,
        "peak RSS {} MiB for {files} files",
        rss / MIB
    );
    let df = zs.json(&["df"]);
    assert_eq!(df["objects"], 4096, "each distinct content stored once");
    let (code, out, err, rss) = zs.run_measured(&["fsck", "--json"]);
    assert_eq!(code, Some(0), "{err}");
    let fsck: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(fsck["errors"], serde_json::json!([]));
    eprintln!("fsck: peak RSS {} MiB", rss / MIB);
}

/// A zstd:chunked blob holding only a TOC frame (`toc_z`, declared as `declared` bytes
/// uncompressed) and the footer, with its annotations.
fn toc_only_layer(toc_z: &[u8], declared: u64) -> (Vec<u8>, serde_json::Value) {
    use zstore::chunked::annotations::{ChunkedAnnotations, Generation, Position};
    let mut blob = zstore::chunked::frames::skippable_frame(toc_z);
    let toc = Position {
        offset: 8,
        compressed_len: toc_z.len() as u64,
        uncompressed_len: declared,
    };
    let empty = Position {
        offset: blob.len() as u64,
        compressed_len: 0,
        uncompressed_len: 0,
    };
    blob.extend(zstore::chunked::footer::write(toc, empty));
    let ann = ChunkedAnnotations {
        generation: Generation::Current,
        toc_digest: zstore::digest::Digest::of(toc_z),
        toc,
        tar_split: None,
    };
    (blob, serde_json::to_value(ann.to_map()).unwrap())
}

/// Pulls one crafted layer with `--partial always` into a fresh store, expecting a clear
/// error that contains `expect`, an unchanged (empty) store, and bounded memory.
fn refused_with_bounded_memory(
    name: &str,
    blob: Vec<u8>,
    media_type: &str,
    ann: serde_json::Value,
    expect: &str,
) {
    let tmp = tempfile::tempdir().unwrap();
    let (layout, zs) = one_layer_image(
        tmp.path(),
        name,
        blob,
        media_type,
        ann,
        Digest::of(b"unused"),
    );
    let (code, _, err, rss) =
        zs.run_measured(&["pull", &layout.source(name), "--partial", "always"]);
    eprintln!("{name}: peak RSS {} MiB: {}", rss / MIB, err.trim());
    assert_eq!(code, Some(1), "{name}: {err}");
    assert!(
        err.starts_with("error: ") && err.contains(expect),
        "{name}: {err}"
    );
    assert!(rss < 64 * MIB, "{name}: peak RSS {} MiB", rss / MIB);
    assert_eq!(zs.json(&["df"])["objects"], 0, "{name}");
    assert_eq!(zs.json(&["images"]), serde_json::json!([]), "{name}");
}

#[test]
fn a_toc_declared_over_the_limit_is_never_read_the_layer_is_pulled_whole() {
    // Like containers/storage: a TOC over 150 MiB means a plain (verified) full pull.
    let mut t = TarBuilder::new();
    t.file("a", b"content", &Meta::default());
    let tar = t.finish();
    let diff_id = Digest::of(&tar);
    let blob = zstd::bulk::compress(&tar, 3).unwrap();
    let (_, ann) = toc_only_layer(b"never read", 151 * MIB);
    let tmp = tempfile::tempdir().unwrap();
    let (layout, zs) = one_layer_image(tmp.path(), "declared", blob, ZSTD_LAYER, ann, diff_id);
    let (code, out, err, rss) = zs.run_measured(&[
        "pull",
        &layout.source("declared"),
        "--partial",
        "always",
        "--json",
    ]);
    assert_eq!(code, Some(0), "{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["layers"][0]["partial"], false, "{report}");
    assert_eq!(report["layers"][0]["diff_id_verified"], true, "{report}");
    assert!(rss < 64 * MIB, "peak RSS {} MiB", rss / MIB);
}

#[test]
fn a_toc_that_decompresses_past_its_declared_size_is_refused() {
    // 200 MiB of JSON whitespace compresses to a few kilobytes.
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 19).unwrap();
    let spaces = vec![b' '; 1 << 20];
    std::io::Write::write_all(&mut enc, b"{\"version\":1,\"entries\":[]}").unwrap();
    for _ in 0..200 {
        std::io::Write::write_all(&mut enc, &spaces).unwrap();
    }
    let toc_z = enc.finish().unwrap();
    assert!(toc_z.len() < 1 << 20);
    let (blob, ann) = toc_only_layer(&toc_z, 4096);
    refused_with_bounded_memory("bomb", blob, ZSTD_LAYER, ann, "declared as 4096 bytes");
}

#[test]
fn a_zstd_frame_asking_for_a_2_gib_window_is_refused() {
    // Frame header: no checksum or content size, window descriptor exponent 21 (2^31 bytes),
    // then one raw last block holding an empty tar.
    let tar = vec![0u8; 1024];
    let mut blob = vec![0x28, 0xb5, 0x2f, 0xfd, 0x00, 21 << 3];
    let block = ((tar.len() as u32) << 3) | 1;
    blob.extend_from_slice(&block.to_le_bytes()[..3]);
    blob.extend_from_slice(&tar);
    refused_with_bounded_memory(
        "window",
        blob,
        ZSTD_LAYER,
        serde_json::Value::Null,
        "layer 0",
    );
}

#[test]
fn data_on_a_non_file_entry_past_the_limit_is_refused() {
    // A symlink header claiming 1 GiB of data: gzip of zeros, about a megabyte.
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_path("link").unwrap();
    h.set_link_name("target").unwrap();
    h.set_size(1 << 30);
    h.set_mode(0o777);
    h.set_cksum();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, h.as_bytes()).unwrap();
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..1024 {
        std::io::Write::write_all(&mut gz, &zeros).unwrap();
    }
    let blob = gz.finish().unwrap();
    refused_with_bounded_memory(
        "symlink-data",
        blob,
        GZIP_LAYER,
        serde_json::Value::Null,
        "carries 1073741824 bytes",
    );
}

#[test]
fn a_highly_compressed_large_file_is_stored_with_bounded_memory() {
    // 256 MiB of zeros in one file: a gzip blob of about 250 KiB. A legitimate layer: stored.
    let size: u64 = 256 * MIB;
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_path("zeros").unwrap();
    h.set_size(size);
    h.set_mode(0o644);
    h.set_cksum();
    let mut tar_hash = sha2::Sha256::default();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let mut put = |b: &[u8]| {
        sha2::Digest::update(&mut tar_hash, b);
        std::io::Write::write_all(&mut gz, b).unwrap();
    };
    put(h.as_bytes());
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..size / MIB {
        put(&zeros);
    }
    put(&[0u8; 1024]);
    let diff_id = Digest::from_hex(&hex::encode(sha2::Digest::finalize(tar_hash)));
    let blob = gz.finish().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (layout, zs) = one_layer_image(
        tmp.path(),
        "zeros",
        blob,
        GZIP_LAYER,
        serde_json::Value::Null,
        diff_id,
    );
    let (code, out, err, rss) = zs.run_measured(&["pull", &layout.source("zeros"), "--json"]);
    assert_eq!(code, Some(0), "{err}");
    eprintln!("256 MiB file from a small blob: peak RSS {} MiB", rss / MIB);
    assert!(rss < 64 * MIB, "peak RSS {} MiB", rss / MIB);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["layers"][0]["diff_id_verified"], true);
    assert_eq!(
        zs.json(&["df"])["logical_bytes"],
        size,
        "{}",
        zs.json(&["df"])
    );
}

#[test]
fn a_toc_just_under_the_limit_is_parsed_with_bounded_memory() {
    // 1.4 million directory entries: about 140 MiB of JSON, valid but describing no tar.
    let mut json = String::from("{\"version\":1,\"entries\":[");
    for i in 0..1_400_000u32 {
        if i > 0 {
            json.push(',');
        }
        json.push_str(&format!(
            "{{\"type\":\"dir\",\"name\":\"d{:03}/e{i:07}\",\"mode\":493,\"modtime\":\"2023-11-14T22:13:20Z\"}}",
            i / 10_000
        ));
    }
    json.push_str("]}");
    let declared = json.len() as u64;
    assert!(declared > 100 * MIB && declared < 150 * MIB, "{declared}");
    let toc_z = zstd::bulk::compress(json.as_bytes(), 3).unwrap();
    drop(json);
    let (blob, ann) = toc_only_layer(&toc_z, declared);
    let tmp = tempfile::tempdir().unwrap();
    let (layout, zs) = one_layer_image(
        tmp.path(),
        "big",
        blob,
        ZSTD_LAYER,
        ann,
        Digest::of(b"unused"),
    );
    let (code, _, err, rss) =
        zs.run_measured(&["pull", &layout.source("big"), "--partial", "always"]);
    eprintln!(
        "{declared}-byte TOC: peak RSS {} MiB: {}",
        rss / MIB,
        err.trim()
    );
    assert_eq!(code, Some(1), "a TOC without a tar is refused: {err}");
    assert!(err.starts_with("error: "), "{err}");
    assert!(rss < 1024 * MIB, "peak RSS {} MiB", rss / MIB);
    assert_eq!(zs.json(&["df"])["objects"], 0);
}
