//! The layer-descriptor annotations of zstd:chunked, both generations: where the TOC (and the
//! tar-split) sit in the blob and the TOC's digest.

use std::collections::BTreeMap;

use crate::chunked::ChunkedError;
use crate::digest::Digest;

pub const TOC_CHECKSUM: &str = "io.github.containers.zstd-chunked.manifest-checksum";
pub const TOC_POSITION: &str = "io.github.containers.zstd-chunked.manifest-position";
pub const TAR_SPLIT_POSITION: &str = "io.github.containers.zstd-chunked.tarsplit-position";
pub const LEGACY_TOC_CHECKSUM: &str = "io.containers.zstd-chunked.manifest-checksum";
pub const LEGACY_TOC_POSITION: &str = "io.containers.zstd-chunked.manifest-position";
/// eStargz's TOC annotation; a layer must not carry both kinds.
pub const ESTARGZ_TOC_DIGEST: &str = "containerd.io/snapshot/stargz/toc.digest";

/// Largest TOC (compressed or not) accepted, as containers/storage (`maxTocSize`).
pub const MAX_TOC_SIZE: u64 = 150 << 20;
/// Largest tar-split (compressed or not) accepted. containers/storage leaves the compressed size
/// unbounded; zstore bounds both to keep memory bounded on hostile input.
pub const MAX_TAR_SPLIT_SIZE: u64 = 1 << 30;

/// A region of the blob: payload offset (past the skippable header) and lengths.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    pub offset: u64,
    pub compressed_len: u64,
    pub uncompressed_len: u64,
}

impl Position {
    /// The compressed byte range.
    pub fn range(&self) -> std::ops::Range<u64> {
        self.offset..self.offset + self.compressed_len
    }
}

/// Which generation of the format a layer's annotations describe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Generation {
    /// `io.github.containers.zstd-chunked.*`, 64-byte footer, tar-split.
    Current,
    /// `io.containers.zstd-chunked.*` (Debian 12's skopeo/podman), 40-byte footer, no tar-split.
    Legacy,
}

/// Parsed zstd:chunked annotations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkedAnnotations {
    pub generation: Generation,
    /// sha256 of the compressed TOC bytes.
    pub toc_digest: Digest,
    pub toc: Position,
    pub tar_split: Option<Position>,
}

fn parse_numbers(what: &str, value: &str, count: usize) -> Result<Vec<u64>, ChunkedError> {
    let bad = || {
        ChunkedError::Annotation(format!(
            "{what} {value:?} is not {count} colon-separated numbers"
        ))
    };
    let parts: Vec<&str> = value.split(':').collect();
    if parts.len() != count {
        return Err(bad());
    }
    parts
        .iter()
        .map(|p| {
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            p.parse::<u64>().map_err(|_| bad())
        })
        .collect()
}

fn parse_toc_position(value: &str) -> Result<Position, ChunkedError> {
    let n = parse_numbers("manifest-position", value, 4)?;
    if n[3] != 1 {
        return Err(ChunkedError::Annotation(format!(
            "manifest-position type {} is not 1 (CRFS)",
            n[3]
        )));
    }
    let p = Position {
        offset: n[0],
        compressed_len: n[1],
        uncompressed_len: n[2],
    };
    check_position("TOC", p, MAX_TOC_SIZE)?;
    Ok(p)
}

fn check_position(what: &'static str, p: Position, max: u64) -> Result<(), ChunkedError> {
    if p.compressed_len > max || p.uncompressed_len > max {
        return Err(ChunkedError::TooLarge {
            what,
            size: p.compressed_len.max(p.uncompressed_len),
            max,
        });
    }
    if p.offset.checked_add(p.compressed_len).is_none() || p.compressed_len == 0 {
        return Err(ChunkedError::Annotation(format!(
            "{what} position {p:?} is impossible"
        )));
    }
    Ok(())
}

impl ChunkedAnnotations {
    /// Parses a descriptor's annotations. `Ok(None)`: not a zstd:chunked layer.
    pub fn parse(
        annotations: &BTreeMap<String, String>,
    ) -> Result<Option<ChunkedAnnotations>, ChunkedError> {
        let get = |k: &str| annotations.get(k).map(String::as_str);
        let (generation, checksum, position) = match (get(TOC_CHECKSUM), get(LEGACY_TOC_CHECKSUM)) {
            (Some(c), _) => (Generation::Current, c, get(TOC_POSITION)),
            (None, Some(c)) => (Generation::Legacy, c, get(LEGACY_TOC_POSITION)),
            (None, None) => return Ok(None),
        };
        if get(ESTARGZ_TOC_DIGEST).is_some() {
            return Err(ChunkedError::Annotation(
                "both zstd:chunked and eStargz TOC annotations".into(),
            ));
        }
        let toc_digest: Digest = checksum
            .parse()
            .map_err(|e| ChunkedError::Annotation(format!("manifest-checksum: {e}")))?;
        let position = position
            .ok_or_else(|| ChunkedError::Annotation("manifest-position is missing".into()))?;
        let toc = parse_toc_position(position)?;
        // Both key sets present (zstore writes both): they must agree.
        if generation == Generation::Current
            && let (Some(c), Some(p)) = (get(LEGACY_TOC_CHECKSUM), get(LEGACY_TOC_POSITION))
            && (c.parse::<Digest>().ok() != Some(toc_digest)
                || parse_toc_position(p).ok() != Some(toc))
        {
            return Err(ChunkedError::Annotation(
                "the current and legacy zstd:chunked annotations disagree".into(),
            ));
        }
        let tar_split = match (generation, get(TAR_SPLIT_POSITION)) {
            (Generation::Current, Some(v)) => {
                let n = parse_numbers("tarsplit-position", v, 3)?;
                let p = Position {
                    offset: n[0],
                    compressed_len: n[1],
                    uncompressed_len: n[2],
                };
                check_position("tar-split", p, MAX_TAR_SPLIT_SIZE)?;
                Some(p)
            }
            _ => None,
        };
        Ok(Some(ChunkedAnnotations {
            generation,
            toc_digest,
            toc,
            tar_split,
        }))
    }

    /// The annotations zstore writes: the current keys plus the legacy checksum and position,
    /// so that old (Debian 12) and new readers alike pull partially.
    pub fn to_map(&self) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        let pos = format!(
            "{}:{}:{}:1",
            self.toc.offset, self.toc.compressed_len, self.toc.uncompressed_len
        );
        m.insert(TOC_CHECKSUM.to_string(), self.toc_digest.to_string());
        m.insert(TOC_POSITION.to_string(), pos.clone());
        m.insert(LEGACY_TOC_CHECKSUM.to_string(), self.toc_digest.to_string());
        m.insert(LEGACY_TOC_POSITION.to_string(), pos);
        if let Some(ts) = &self.tar_split {
            m.insert(
                TAR_SPLIT_POSITION.to_string(),
                format!(
                    "{}:{}:{}",
                    ts.offset, ts.compressed_len, ts.uncompressed_len
                ),
            );
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:080747df04a4bf330d2e150552acba57bd5e0eae6dd9a8c4f25bfcd1f58befe5";

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn legacy_from_debian_skopeo() {
        let a = ChunkedAnnotations::parse(&map(&[
            (LEGACY_TOC_CHECKSUM, D),
            (LEGACY_TOC_POSITION, "38359642:399688:2214361:1"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(a.generation, Generation::Legacy);
        assert_eq!(
            a.toc,
            Position {
                offset: 38359642,
                compressed_len: 399688,
                uncompressed_len: 2214361
            }
        );
        assert_eq!(a.tar_split, None);
    }

    #[test]
    fn current_round_trips_with_both_key_sets() {
        let a = ChunkedAnnotations {
            generation: Generation::Current,
            toc_digest: D.parse().unwrap(),
            toc: Position {
                offset: 107123052,
                compressed_len: 1009822,
                uncompressed_len: 5525223,
            },
            tar_split: Some(Position {
                offset: 108132882,
                compressed_len: 612322,
                uncompressed_len: 15402870,
            }),
        };
        let m = a.to_map();
        assert_eq!(m.len(), 5);
        assert_eq!(ChunkedAnnotations::parse(&m).unwrap().unwrap(), a);
        // Only the legacy keys: still readable, as the legacy generation without tar-split.
        let legacy: BTreeMap<String, String> = m
            .into_iter()
            .filter(|(k, _)| k.starts_with("io.containers"))
            .collect();
        assert_eq!(
            ChunkedAnnotations::parse(&legacy)
                .unwrap()
                .unwrap()
                .generation,
            Generation::Legacy
        );
    }

    #[test]
    fn hostile_annotations() {
        assert_eq!(ChunkedAnnotations::parse(&map(&[])).unwrap(), None);
        for bad in [
            vec![(TOC_CHECKSUM, D)],
            vec![(TOC_CHECKSUM, "sha256:zz"), (TOC_POSITION, "1:2:3:1")],
            vec![(TOC_CHECKSUM, D), (TOC_POSITION, "1:2:3:2")],
            vec![(TOC_CHECKSUM, D), (TOC_POSITION, "1:2:3")],
            vec![(TOC_CHECKSUM, D), (TOC_POSITION, "1:-2:3:1")],
            vec![(TOC_CHECKSUM, D), (TOC_POSITION, " 1:2:3:1")],
            vec![
                (TOC_CHECKSUM, D),
                (TOC_POSITION, "18446744073709551615:2:3:1"),
            ],
            vec![(TOC_CHECKSUM, D), (TOC_POSITION, "1:0:3:1")],
            vec![(TOC_CHECKSUM, D), (TOC_POSITION, "1:999999999999:3:1")],
            vec![
                (TOC_CHECKSUM, D),
                (TOC_POSITION, "1:2:3:1"),
                (TAR_SPLIT_POSITION, "1:2"),
            ],
            vec![
                (TOC_CHECKSUM, D),
                (TOC_POSITION, "1:2:3:1"),
                (ESTARGZ_TOC_DIGEST, D),
            ],
            vec![
                (TOC_CHECKSUM, D),
                (TOC_POSITION, "1:2:3:1"),
                (LEGACY_TOC_CHECKSUM, D),
                (LEGACY_TOC_POSITION, "9:2:3:1"),
            ],
        ] {
            assert!(ChunkedAnnotations::parse(&map(&bad)).is_err(), "{bad:?}");
        }
    }
}
