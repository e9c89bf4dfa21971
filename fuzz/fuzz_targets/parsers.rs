//! Every parser of outside data on arbitrary bytes: none may panic, hang or allocate without
//! bound. The first byte picks the parser.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    match which % 8 {
        0 => {
            let mut tar = zstore::layer::tar::TarReader::new(rest);
            let mut buf = [0u8; 4096];
            while let Ok(Some(_)) = tar.next_header() {
                while let Ok(n) = tar.read_payload(&mut buf) {
                    if n == 0 {
                        break;
                    }
                }
            }
        }
        1 => {
            if let Ok(toc) = zstore::chunked::toc::Toc::parse(rest) {
                let _ = toc.files(u64::MAX / 2);
            }
        }
        2 => {
            let _ = zstore::chunked::tarsplit::parse(rest);
        }
        3 => {
            let _ = zstore::chunked::footer::parse(rest);
        }
        4 => {
            let _ = zstore::image::manifest::parse(rest, None);
            let _ = zstore::image::manifest::parse_config(rest, 1);
        }
        5 => {
            if let Ok(s) = std::str::from_utf8(rest) {
                let _ = zstore::image::reference::Location::parse(s);
                let _ = zstore::registry::ranges::parse_content_range(s);
                let _ = zstore::registry::auth::parse_challenge(s);
                let _ = zstore::chunked::time::parse(s);
            }
        }
        6 => {
            let _ = zstore::registry::ranges::parse_multipart(rest, "B");
        }
        _ => {
            let _ = zstore::layer::import::import_tar(rest, &mut Sink);
        }
    }
});

/// Hashes file content without storing it.
struct Sink;

impl zstore::layer::import::ObjectSink for Sink {
    fn store_file(
        &mut self,
        entry: &zstore::layer::entry::Entry,
        content: &mut dyn std::io::Read,
    ) -> std::io::Result<zstore::layer::import::StoredFile> {
        let (digest, _) = zstore::digest::hash_reader(std::io::Read::take(content, entry.size))?;
        Ok(zstore::layer::import::StoredFile {
            digest,
            reused: false,
        })
    }
}
