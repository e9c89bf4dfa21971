//! Micro-benchmarks of the format code, each against a baseline measured in the same run:
//! TOC parsing and chunking against SHA-256 of the same bytes, range planning against sorting
//! the same ranges. Run with `cargo bench --bench formats`.

mod common;

use common::best_of;

use std::time::Duration;

use zstore::chunked::rollsum::Chunker;
use zstore::chunked::toc::{Toc, TocEntry};
use zstore::digest::Digest;
use zstore::registry::ranges::coalesce;

fn report(what: &str, bytes: usize, t: Duration, base: Duration) {
    println!(
        "{what:<28} {:8.1} MB/s   {:5.2}x the baseline's time",
        bytes as f64 / 1e6 / t.as_secs_f64(),
        t.as_secs_f64() / base.as_secs_f64()
    );
}

fn main() {
    // A TOC like the 100 MiB fixtures' (about 8000 entries).
    let d = Digest::of(b"x");
    let toc = Toc {
        version: 1,
        entries: (0..8000)
            .map(|i| TocEntry {
                kind: "reg".into(),
                name: format!("usr/lib/python3.11/site-packages/module{i}/file{i}.py"),
                mode: 0o644,
                size: 10_000,
                modtime: Some(zstore::layer::tar::Timestamp {
                    secs: 1_700_000_000,
                    nanos: 0,
                }),
                digest: Some(d),
                offset: 1000 + i * 20_000,
                end_offset: 1000 + i * 20_000 + 5_000,
                ..Default::default()
            })
            .collect(),
        tar_split_digest: Some(d),
    };
    let json = toc.to_json();
    let base = best_of(5, || {
        std::hint::black_box(Digest::of(&json));
    });
    let t = best_of(5, || {
        std::hint::black_box(Toc::parse(&json).expect("parse"));
    });
    report("TOC parse (vs sha256)", json.len(), t, base);

    let data: Vec<u8> = (0..32u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let base = best_of(3, || {
        std::hint::black_box(Digest::of(&data));
    });
    let t = best_of(3, || {
        let mut c = Chunker::new();
        let mut n = 0usize;
        c.push(&data, &mut |_, _| n += 1);
        c.finish(&mut |_, _| n += 1);
        std::hint::black_box(n);
    });
    report("chunking (vs sha256)", data.len(), t, base);

    let ranges: Vec<std::ops::Range<u64>> = (0..200_000u64)
        .rev()
        .map(|i| i * 3000..i * 3000 + 1500 + (i % 7) * 100)
        .collect();
    let base = best_of(5, || {
        let mut v = ranges.clone();
        v.sort_by_key(|r| r.start);
        std::hint::black_box(v);
    });
    let t = best_of(5, || {
        std::hint::black_box(coalesce(&ranges, 1024));
    });
    println!(
        "{:<28} {:8.2} ms        {:5.2}x the time of sorting them",
        "range planning (200k)",
        t.as_secs_f64() * 1e3,
        t.as_secs_f64() / base.as_secs_f64()
    );
}
