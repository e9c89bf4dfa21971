//! The footer at the end of a zstd:chunked blob: 64 bytes "GNUlInUx" (current) or 40 bytes
//! "GnUlInUx" (legacy), each in a skippable frame. Readers rely on annotations; the footer lets
//! a blob describe itself.

use crate::chunked::ChunkedError;
use crate::chunked::annotations::{Generation, Position};
use crate::chunked::frames::{is_skippable_header, skippable_frame};

pub const MAGIC: &[u8; 8] = b"GNUlInUx";
pub const LEGACY_MAGIC: &[u8; 8] = b"GnUlInUx";
/// Bytes at the end of the blob that hold the current footer with its frame header.
pub const FOOTER_FRAME_LEN: usize = 72;
/// Bytes at the end of the blob that hold the legacy footer with its frame header.
pub const LEGACY_FOOTER_FRAME_LEN: usize = 48;

/// What a footer says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Footer {
    pub generation: Generation,
    pub toc: Position,
    pub tar_split: Option<Position>,
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Parses the footer from the last bytes of a blob (at least 72, or 48 for a legacy blob).
pub fn parse(tail: &[u8]) -> Result<Footer, ChunkedError> {
    let bad = |why: &str| ChunkedError::Footer(why.to_string());
    if tail.len() < LEGACY_FOOTER_FRAME_LEN {
        return Err(bad("blob too short for a footer"));
    }
    let magic = &tail[tail.len() - 8..];
    let (payload_len, generation) = if magic == MAGIC {
        (64usize, Generation::Current)
    } else if magic == LEGACY_MAGIC {
        (40usize, Generation::Legacy)
    } else {
        return Err(bad("no zstd:chunked footer magic at the end of the blob"));
    };
    if tail.len() < payload_len + 8 {
        return Err(bad("blob too short for its footer"));
    }
    let frame = &tail[tail.len() - payload_len - 8..];
    if !is_skippable_header(&frame[..8], payload_len as u64) {
        return Err(bad(
            "footer is not inside a skippable frame of the right size",
        ));
    }
    let p = &frame[8..];
    if u64_at(p, 24) != 1 {
        return Err(bad("footer manifest type is not 1 (CRFS)"));
    }
    let toc = Position {
        offset: u64_at(p, 0),
        compressed_len: u64_at(p, 8),
        uncompressed_len: u64_at(p, 16),
    };
    let tar_split = (generation == Generation::Current && u64_at(p, 32) > 0).then(|| Position {
        offset: u64_at(p, 32),
        compressed_len: u64_at(p, 40),
        uncompressed_len: u64_at(p, 48),
    });
    Ok(Footer {
        generation,
        toc,
        tar_split,
    })
}

/// The current 64-byte footer in its skippable frame (72 bytes).
pub fn write(toc: Position, tar_split: Position) -> Vec<u8> {
    let mut p = Vec::with_capacity(64);
    for v in [
        toc.offset,
        toc.compressed_len,
        toc.uncompressed_len,
        1,
        tar_split.offset,
        tar_split.compressed_len,
        tar_split.uncompressed_len,
    ] {
        p.extend_from_slice(&v.to_le_bytes());
    }
    p.extend_from_slice(MAGIC);
    skippable_frame(&p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn current_round_trip() {
        let toc = Position {
            offset: 100,
            compressed_len: 20,
            uncompressed_len: 50,
        };
        let ts = Position {
            offset: 128,
            compressed_len: 7,
            uncompressed_len: 9,
        };
        let mut blob = vec![0u8; 135];
        blob.extend(write(toc, ts));
        let f = parse(&blob).unwrap();
        assert_eq!(
            f,
            Footer {
                generation: Generation::Current,
                toc,
                tar_split: Some(ts)
            }
        );
    }

    #[test]
    fn legacy_footer() {
        // 48-byte trailer as Debian 12's skopeo writes it.
        let mut p = Vec::new();
        for v in [38359642u64, 399688, 2214361, 1] {
            p.extend_from_slice(&v.to_le_bytes());
        }
        p.extend_from_slice(LEGACY_MAGIC);
        let frame = skippable_frame(&p);
        assert_eq!(&frame[..8], &[0x50, 0x2a, 0x4d, 0x18, 0x28, 0, 0, 0]);
        let f = parse(&frame).unwrap();
        assert_eq!(f.generation, Generation::Legacy);
        assert_eq!(f.toc.offset, 38359642);
        assert_eq!(f.tar_split, None);
    }

    #[test]
    fn hostile_footers() {
        let good = write(
            Position {
                offset: 1,
                compressed_len: 2,
                uncompressed_len: 3,
            },
            Position {
                offset: 4,
                compressed_len: 5,
                uncompressed_len: 6,
            },
        );
        assert!(parse(&good[1..]).is_err(), "too short");
        let mut wrong_len = good.clone();
        wrong_len[4] = 63;
        assert!(parse(&wrong_len).is_err());
        let mut wrong_type = good.clone();
        wrong_type[8 + 24] = 2;
        assert!(parse(&wrong_type).is_err());
        assert!(parse(&[0u8; 100]).is_err());
    }
}
