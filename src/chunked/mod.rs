//! zstd:chunked: the layer format that lets a reader fetch single files by HTTP range.
//!
//! A zstd:chunked layer is an ordinary `tar+zstd` blob cut into one zstd frame per file chunk,
//! followed by skippable frames holding a table of contents (TOC, JSON: every entry's metadata,
//! digest and compressed offsets), a tar-split (JSON lines: the non-file bytes of the tar) and a
//! footer. See `docs` in the repository for the byte-level facts; this module reads and writes
//! both generations (current: `io.github.containers.*`, 64-byte footer, tar-split; legacy:
//! `io.containers.*`, 40-byte footer, no tar-split).

pub mod annotations;
pub mod footer;
pub mod frames;
pub mod reader;
pub mod rollsum;
pub mod tarsplit;
pub mod time;
pub mod toc;
pub mod writer;

/// Errors of zstd:chunked metadata and layers.
#[derive(Debug, thiserror::Error)]
pub enum ChunkedError {
    #[error("zstd:chunked annotation: {0}")]
    Annotation(String),
    #[error("zstd:chunked footer: {0}")]
    Footer(String),
    #[error("zstd:chunked layer is inconsistent: {0}")]
    Corrupt(String),
    #[error("zstd:chunked tar-split: {0}")]
    TarSplit(String),
    #[error("zstd:chunked TOC: {0}")]
    Toc(String),
    #[error("zstd:chunked {what} is {size} bytes, over the {max}-byte limit")]
    TooLarge {
        what: &'static str,
        size: u64,
        max: u64,
    },
}
