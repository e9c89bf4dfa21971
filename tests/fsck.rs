//! fsck finds each kind of damage, one corruption per case (table-driven), and exits 1.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::*;
use zstore::db::DbView;

struct Fixture {
    _tmp: tempfile::TempDir,
    zs: Zs,
    layout: Layout,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let mut layout = Layout::new(&tmp.path().join("layout"));
    near_identical_images(&mut layout, 2, 4, 20_000, Compression::Gzip);
    let zs = Zs::new(&tmp.path().join("store"));
    zs.ok(&["pull", &layout.source("c0")]);
    zs.ok(&["pull", &layout.source("c1")]);
    Fixture {
        _tmp: tmp,
        zs,
        layout,
    }
}

/// Every object variant file of the store.
fn variants(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for d in std::fs::read_dir(root.join("objects")).unwrap() {
        for f in std::fs::read_dir(d.unwrap().path()).unwrap() {
            let p = f.unwrap().path();
            if p.file_name().unwrap().to_string_lossy().contains('.') {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn corrupt_object(f: &Fixture) {
    use std::io::{Read, Seek, Write};
    let v = &variants(&f.zs.root)[0];
    // Flip one byte in place (same inode), as bit rot or a write through a hardlinked checkout
    // would, and put the mtime back so that only the content is wrong.
    let mtime = std::fs::metadata(v).unwrap().modified().unwrap();
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(v)
        .unwrap();
    let mut first = [0u8; 1];
    file.read_exact(&mut first).unwrap();
    file.seek(std::io::SeekFrom::Start(0)).unwrap();
    file.write_all(&[first[0] ^ 0xff]).unwrap();
    file.set_modified(mtime).unwrap();
}

fn missing_object(f: &Fixture) {
    let v = variants(&f.zs.root)[0].clone();
    std::fs::remove_file(&v).unwrap();
    let name = v.file_name().unwrap().to_string_lossy().into_owned();
    let canonical = v.with_file_name(name.split('.').next().unwrap());
    std::fs::remove_file(canonical).unwrap();
}

fn dangling_reference(f: &Fixture) {
    let store = zstore::store::Store::open(&f.zs.root).unwrap();
    let db = store.db().unwrap();
    let w = db.write().unwrap();
    let image = store.find_image(&w, &f.layout.source("c0")).unwrap();
    w.remove_layer(&image.layers[0].diff_id).unwrap();
    w.commit().unwrap();
}

fn metadata_changed_through_checkout(f: &Fixture) {
    let dest = f._tmp.path().join("co");
    f.zs.ok(&[
        "checkout",
        &f.layout.source("c0"),
        dest.to_str().unwrap(),
        "--mode",
        "hardlink",
    ]);
    std::fs::set_permissions(
        dest.join("usr/lib/file000.bin"),
        std::fs::Permissions::from_mode(0o777),
    )
    .unwrap();
}

fn damaged_layer_metadata(f: &Fixture) {
    use redb::{ReadableTable, TableDefinition};
    let table = TableDefinition::<&str, &[u8]>::new("metadata_blobs");
    let db = redb::Database::open(f.zs.root.join("db.redb")).unwrap();
    let w = db.begin_write().unwrap();
    {
        let mut t = w.open_table(table).unwrap();
        let (key, mut value) = {
            let (k, v) = t.first().unwrap().unwrap();
            (k.value().to_string(), v.value().to_vec())
        };
        // Cut short: the record no longer decodes, nor hashes to its key.
        value.pop();
        t.insert(key.as_str(), value.as_slice()).unwrap();
    }
    w.commit().unwrap();
}

fn stray_file(f: &Fixture) {
    std::fs::write(f.zs.root.join("objects/00/not-an-object"), b"?").unwrap();
}

/// (what, how to damage the store, the problem kind fsck must report)
type Case = (&'static str, fn(&Fixture), &'static str);

#[test]
fn fsck_finds_each_kind_of_damage() {
    let cases: [Case; 6] = [
        ("corrupted object", corrupt_object, "corrupt_object"),
        ("missing object", missing_object, "missing_object"),
        (
            "dangling reference",
            dangling_reference,
            "dangling_reference",
        ),
        (
            "metadata changed through a hardlinked checkout",
            metadata_changed_through_checkout,
            "metadata_mismatch",
        ),
        ("stray file", stray_file, "stray_file"),
        (
            "damaged layer metadata record",
            damaged_layer_metadata,
            "bad_record",
        ),
    ];
    for (what, damage, kind) in cases {
        let f = fixture();
        let clean = f.zs.json(&["fsck"]);
        assert_eq!(
            clean["errors"],
            serde_json::json!([]),
            "{what}: clean before: {clean}"
        );
        assert!(clean["objects_checked"].as_u64().unwrap() > 0);
        damage(&f);
        let out = f.zs.run(&["fsck", "--json"]);
        assert_eq!(out.status.code(), Some(1), "{what}: fsck exits 1");
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let kinds: Vec<&str> = report["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["kind"].as_str().unwrap())
            .collect();
        assert!(
            kinds.contains(&kind),
            "{what}: expected {kind}, got {report}"
        );
        assert!(
            kinds.iter().all(|k| *k == kind),
            "{what}: only {kind} expected, got {report}"
        );
        // Human output names the problem too.
        let human = f.zs.run(&["fsck"]);
        assert_eq!(human.status.code(), Some(1));
        assert!(
            String::from_utf8_lossy(&human.stdout).contains(kind),
            "{what}"
        );
    }
}

#[test]
fn dangling_reference_check_uses_the_database_api() {
    // The dangling-reference case above edits the database through the library: make sure the
    // edit really removed what fsck then reports.
    let f = fixture();
    dangling_reference(&f);
    let store = zstore::store::Store::open(&f.zs.root).unwrap();
    let db = store.db().unwrap();
    let r = db.read().unwrap();
    let image = store.find_image(&r, &f.layout.source("c0")).unwrap();
    assert!(r.layer(&image.layers[0].diff_id).unwrap().is_none());
}
