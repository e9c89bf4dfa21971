//! The fuzz targets' bodies: each feeds arbitrary bytes to one parser of outside data, which
//! may refuse them but must not panic, hang or allocate without bound. `fuzz_targets/` wraps
//! each for libFuzzer; the main workspace's `tests/fuzz_corpus.rs` replays the committed
//! corpora through the same functions on every test run.

use std::io::Read;

/// The TOC parser and its validation.
pub fn toc(data: &[u8]) {
    if let Ok(toc) = zstore::chunked::toc::Toc::parse(data) {
        let _ = toc.files(u64::MAX / 2);
        let _ = toc.to_json();
    }
}

/// The zstd:chunked footer (both sizes).
pub fn footer(data: &[u8]) {
    let _ = zstore::chunked::footer::parse(data);
}

/// The tar-split (JSON lines).
pub fn tarsplit(data: &[u8]) {
    let _ = zstore::chunked::tarsplit::parse(data);
}

/// Manifests, indexes and image configs.
pub fn manifest(data: &[u8]) {
    let _ = zstore::image::manifest::parse(data, None);
    let _ = zstore::image::manifest::parse_config(data, 1);
}

/// Short strings from outside: image references, Content-Range, WWW-Authenticate, RFC 3339
/// times, chunked annotations.
pub fn strings(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let _ = zstore::image::reference::Location::parse(s);
    let _ = zstore::registry::ranges::parse_content_range(s);
    let _ = zstore::registry::auth::parse_challenge(s);
    let _ = zstore::chunked::time::parse(s);
    let mut annotations = std::collections::BTreeMap::new();
    for line in s.lines() {
        if let Some((k, v)) = line.split_once('=') {
            annotations.insert(k.to_string(), v.to_string());
        }
    }
    let _ = zstore::chunked::annotations::ChunkedAnnotations::parse(&annotations);
}

/// multipart/byteranges bodies (boundary "B").
pub fn multipart(data: &[u8]) {
    let _ = zstore::registry::ranges::parse_multipart(data, "B");
}

/// The streaming tar reader, alone and through the layer import.
pub fn tar(data: &[u8]) {
    let mut tar = zstore::layer::tar::TarReader::new(data);
    let mut buf = [0u8; 4096];
    while let Ok(Some(_)) = tar.next_header() {
        while let Ok(n) = tar.read_payload(&mut buf) {
            if n == 0 {
                break;
            }
        }
    }
    let _ = zstore::layer::import::import_tar(data, &mut HashingSink);
}

/// Hashes file content without storing it.
struct HashingSink;

impl zstore::layer::import::ObjectSink for HashingSink {
    fn store_file(
        &mut self,
        entry: &zstore::layer::entry::Entry,
        content: &mut dyn Read,
    ) -> std::io::Result<zstore::layer::import::StoredFile> {
        let (digest, _) = zstore::digest::hash_reader(content.take(entry.size))?;
        Ok(zstore::layer::import::StoredFile {
            digest,
            reused: false,
        })
    }
}

/// A fuzz target's body.
pub type Target = fn(&[u8]);

/// Every target by name (the corpus directory names).
pub const TARGETS: [(&str, Target); 7] = [
    ("toc", toc),
    ("footer", footer),
    ("tarsplit", tarsplit),
    ("manifest", manifest),
    ("strings", strings),
    ("multipart", multipart),
    ("tar", tar),
];
