//! Micro-benchmark: streaming a layer tar through the tar reader and hashing every file,
//! against plain SHA-256 of the same bytes (the floor). Reported as a ratio measured in the
//! same run; run with `cargo bench --bench import`.

mod common;

use common::best_of;

use std::io::Read;

use zstore::digest::{Digest, hash_reader};
use zstore::layer::entry::Entry;
use zstore::layer::import::{ObjectSink, StoredFile, import_tar};

/// Hashes file content and stores nothing: isolates parsing and hashing.
struct HashOnly;

impl ObjectSink for HashOnly {
    fn store_file(&mut self, entry: &Entry, content: &mut dyn Read) -> std::io::Result<StoredFile> {
        let (digest, n) = hash_reader(content.take(entry.size))?;
        assert_eq!(n, entry.size);
        Ok(StoredFile {
            digest,
            reused: false,
        })
    }
}

fn main() {
    let files = 2000;
    let size = 32 * 1024;
    let tar = zstore_fixtures::near_identical_tar(0, files, size);
    let mb = tar.len() as f64 / 1e6;
    let base = best_of(5, || {
        std::hint::black_box(Digest::of(&tar));
    });
    let import = best_of(5, || {
        let layer = import_tar(&tar[..], &mut HashOnly).expect("import");
        std::hint::black_box(layer.diff_id);
    });
    println!("tar of {files} files, {mb:.1} MB");
    println!(
        "sha256 of the tar:       {:8.1} MB/s",
        mb / base.as_secs_f64()
    );
    println!(
        "import (parse + hash x2): {:8.1} MB/s",
        mb / import.as_secs_f64()
    );
    println!(
        "ratio import/sha256 time: {:.2}",
        import.as_secs_f64() / base.as_secs_f64()
    );
}
