//! Ten near-identical images cost about one image of disk: `df` reports it, truthfully.

mod common;

use common::*;

#[test]
fn ten_near_identical_images_store_about_one() {
    let tmp = tempfile::tempdir().unwrap();
    let mut layout = Layout::new(&tmp.path().join("layout"));
    let (files, size) = (40, 64 * 1024);
    near_identical_images(&mut layout, 10, files, size, Compression::Gzip);
    let zs = Zs::new(&tmp.path().join("store"));
    let mut fetched_total = 0;
    for i in 0..10 {
        let r = zs.json(&["pull", &layout.source(&format!("c{i}"))]);
        fetched_total += r["fetched_bytes"].as_u64().unwrap();
        if i > 0 {
            // gzip layers are read whole, but every shared file is recognised.
            assert_eq!(r["layers"][0]["reused_files"], files as u64, "c{i}: {r}");
            assert_eq!(r["layers"][0]["files"], files as u64 + 1, "c{i}: {r}");
        }
    }
    assert!(
        fetched_total > 9 * (files * size) as u64,
        "gzip images are downloaded whole"
    );
    let df = zs.json(&["df"]);
    let one_image = (files * size) as u64;
    let logical = df["logical_bytes"].as_u64().unwrap();
    let stored = df["stored_bytes"].as_u64().unwrap();
    assert_eq!(df["images"], 10, "{df}");
    assert_eq!(df["layers"], 10, "{df}");
    assert_eq!(df["objects"], files as u64 + 10, "{df}");
    assert!(logical >= 10 * one_image, "{df}");
    assert!(
        stored >= one_image,
        "stored bytes cannot be below the data itself: {df}"
    );
    assert!(
        stored < one_image * 12 / 10,
        "about one image's worth, not ten: {df}"
    );

    // The figure is true: it matches what the objects directory really allocates.
    let du = std::process::Command::new("du")
        .args(["-s", "--block-size=1"])
        .arg(zs.root.join("objects"))
        .output()
        .unwrap();
    let du: u64 = String::from_utf8_lossy(&du.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    // du also counts the 256 fan-out directories.
    assert!(
        du >= stored && du - stored <= 256 * 4096 + 64 * 1024,
        "du {du} vs df {stored}"
    );
}
