//! Importing one layer into the staging area: by streaming the whole blob (any format), or
//! for zstd:chunked, by reading its TOC and only the ranges of files the store lacks.

use std::collections::VecDeque;
use std::io::{self, BufRead, BufReader, Read};

use crate::chunked::annotations::ChunkedAnnotations;
use crate::chunked::reader::{ChunkedLayer, Piece, TarStream, check_toc_matches};
use crate::db::DbView;
use crate::digest::{Digest, HashingReader};
use crate::image::manifest::{Descriptor, LayerFormat};
use crate::layer::entry::{Entry, normalize_path, shape_digest};
use crate::layer::import::{ImportError, ImportedLayer, ObjectSink, StoredFile, import_tar};
use crate::ops::pull::PullError;
use crate::ops::source::PrefetchSource;
use crate::progress::Progress;
use crate::store::Store;
use crate::store::staging::Staging;

/// Counts bytes read into the progress reporter.
struct Counting<'p, R> {
    inner: R,
    index: usize,
    progress: &'p dyn Progress,
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.layer_advanced(self.index, n as u64);
        Ok(n)
    }
}

/// What the first bytes of a blob say it is.
fn sniff(head: &[u8]) -> &'static str {
    match head {
        [0x1f, 0x8b, ..] => "gzip",
        [0x28, 0xb5, 0x2f, 0xfd, ..] => "zstd",
        [b, 0x2a, 0x4d, 0x18, ..] if b & 0xf0 == 0x50 => "zstd",
        _ => "tar",
    }
}

/// Streams one layer blob: verifies its size and digest, decompresses, imports every file,
/// and checks the DiffID. Returns the layer and the number of blob bytes read.
pub fn import_blob(
    staging: &mut Staging<'_>,
    blob: impl Read,
    index: usize,
    desc: &Descriptor,
    format: LayerFormat,
    expected_diff_id: &Digest,
    progress: &dyn Progress,
) -> Result<(ImportedLayer, u64), PullError> {
    let digest = desc.digest;
    let read_err = |source| PullError::Read {
        index,
        digest,
        source,
    };
    let mut hashing = HashingReader::new(Counting {
        inner: blob,
        index,
        progress,
    });
    let layer = {
        let mut head = BufReader::with_capacity(1 << 16, &mut hashing);
        let actual = sniff(head.fill_buf().map_err(read_err)?);
        let declared = match format {
            LayerFormat::Tar => "tar",
            LayerFormat::Gzip | LayerFormat::Estargz => "gzip",
            LayerFormat::Zstd | LayerFormat::ZstdChunked => "zstd",
        };
        if actual != declared {
            return Err(PullError::FormatMismatch {
                index,
                digest,
                declared: format.name(),
                actual,
            });
        }
        let result = match actual {
            "gzip" => import_tar(flate2::read::MultiGzDecoder::new(&mut head), staging),
            "zstd" => import_tar(
                zstd::stream::read::Decoder::with_buffer(&mut head).map_err(read_err)?,
                staging,
            ),
            _ => import_tar(&mut head, staging),
        };
        let layer = result.map_err(|source| match source {
            ImportError::Tar(crate::layer::tar::TarError::Io(e)) => read_err(e),
            source => PullError::Import {
                index,
                digest,
                source,
            },
        })?;
        // Whatever follows the compressed stream still counts for the blob digest.
        io::copy(&mut head, &mut io::sink()).map_err(read_err)?;
        layer
    };
    let (actual, size, _) = hashing.finish();
    if actual != digest || size != desc.size {
        return Err(PullError::Digest {
            what: "layer",
            digest,
            expected_size: desc.size,
            actual,
            actual_size: size,
        });
    }
    if layer.diff_id != *expected_diff_id {
        return Err(PullError::DiffId {
            index,
            digest,
            expected: *expected_diff_id,
            actual: layer.diff_id,
        });
    }
    Ok((layer, size))
}

/// Passes files to the staging area with the digest the TOC gives for each, in order.
struct ExpectingSink<'a, 's> {
    staging: &'a mut Staging<'s>,
    expected: VecDeque<(Vec<u8>, Digest)>,
}

impl ObjectSink for ExpectingSink<'_, '_> {
    fn store_file(&mut self, entry: &Entry, content: &mut dyn Read) -> io::Result<StoredFile> {
        let (path, digest) = self.expected.pop_front().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{} is not in the layer's table of contents",
                    entry.display_path()
                ),
            )
        })?;
        if path != entry.path {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "the tar has {} where the table of contents lists /{}",
                    entry.display_path(),
                    String::from_utf8_lossy(&path)
                ),
            ));
        }
        self.staging
            .store_file_expecting(entry, content, Some(digest))
    }
}

/// A zstd:chunked layer ready to import: its authenticated TOC, the pieces chosen to rebuild
/// its tar, and the source (whose missing ranges are already prefetched).
pub struct ChunkedPlan<'a> {
    pub source: Box<dyn PrefetchSource + Send + 'a>,
    layer: ChunkedLayer,
    pieces: Vec<Piece>,
    /// The pieces borrow a stored layer's skeleton (a guess the DiffID confirms or refutes).
    borrowed: bool,
}

/// The outcome of [`plan_chunked`].
pub enum Planned<'a> {
    Ready(ChunkedPlan<'a>),
    /// More than `whole_above` of the blob is missing: download it whole instead (the TOC
    /// already cost `metadata_read` bytes).
    Whole {
        metadata_read: u64,
    },
}

/// Reads a zstd:chunked layer's TOC and chooses how to rebuild its tar: in order of
/// preference from a stored layer of the same shape (same paths and metadata: typical of a new
/// version of an image; nothing beyond the missing files is fetched, and the DiffID proves the
/// guess), from the layer's tar-split, or (legacy layers) from the header frames between its
/// files. Then prefetches every missing range.
pub fn plan_chunked<'a>(
    store: &Store,
    source: Box<dyn PrefetchSource + Send + 'a>,
    index: usize,
    desc: &Descriptor,
    ann: &ChunkedAnnotations,
    whole_above: Option<f64>,
) -> Result<Planned<'a>, PullError> {
    let digest = desc.digest;
    let chunked_err = |source| PullError::Chunked {
        index,
        digest,
        source,
    };
    let layer = ChunkedLayer::open(source.as_ref(), ann, desc.size).map_err(chunked_err)?;
    // Decide on the TOC alone, before fetching anything else.
    let missing_files: u64 = layer
        .toc
        .files(layer.data_end)
        .map_err(chunked_err)?
        .iter()
        .filter(|f| f.digest.is_none_or(|d| store.open_object(&d).is_err()))
        .map(|f| (f.end_offset - f.offset) as u64)
        .sum();
    if let Some(fraction) = whole_above
        && missing_files as f64 > fraction * desc.size as f64
    {
        return Ok(Planned::Whole {
            metadata_read: source.bytes_read(),
        });
    }
    let borrowed = same_shape_layer(store, &layer)
        .and_then(|(skeleton, stored)| layer.borrowed_pieces(&skeleton, &stored).ok());
    let (pieces, borrowed) = match borrowed {
        Some(p) => (p, true),
        None => (layer.pieces(source.as_ref()).map_err(chunked_err)?, false),
    };
    let wanted = missing_ranges(store, &pieces);
    source.prefetch(&wanted).map_err(|e| PullError::Read {
        index,
        digest,
        source: e,
    })?;
    Ok(Planned::Ready(ChunkedPlan {
        source,
        layer,
        pieces,
        borrowed,
    }))
}

/// Ranges of the blob the pieces need that the store cannot supply.
fn missing_ranges(store: &Store, pieces: &[Piece]) -> Vec<std::ops::Range<u64>> {
    pieces
        .iter()
        .filter_map(|p| match p {
            Piece::Frames(r) => Some(r.clone()),
            Piece::File { digest, range, .. } if store.open_object(digest).is_err() => {
                Some(range.clone())
            }
            _ => None,
        })
        .collect()
}

/// Imports a planned zstd:chunked layer, verifying every file against the TOC, the TOC against
/// the tar's headers and the tar against the DiffID. A borrowed skeleton that turns out wrong
/// falls back to the layer's own description.
pub fn import_planned(
    staging: &mut Staging<'_>,
    store: &Store,
    plan: ChunkedPlan<'_>,
    index: usize,
    desc: &Descriptor,
    expected_diff_id: &Digest,
) -> Result<(ImportedLayer, u64), PullError> {
    let digest = desc.digest;
    let chunked_err = |source| PullError::Chunked {
        index,
        digest,
        source,
    };
    let source = plan.source.as_ref();
    let attempt =
        |staging: &mut Staging<'_>, pieces: Vec<Piece>| -> Result<ImportedLayer, PullError> {
            let expected = plan
                .layer
                .toc
                .files(plan.layer.data_end)
                .map_err(chunked_err)?
                .into_iter()
                .map(|f| {
                    let path = normalize_path(f.name.as_bytes())
                        .unwrap_or_else(|_| f.name.as_bytes().to_vec());
                    (path, f.digest.expect("checked by Toc::files"))
                })
                .collect();
            let stream = TarStream::new(pieces, source, |d| store.open_object(d).ok());
            let mut sink = ExpectingSink { staging, expected };
            let imported = import_tar(stream, &mut sink).map_err(|source| PullError::Import {
                index,
                digest,
                source,
            })?;
            check_toc_matches(&plan.layer.toc, &imported.entries).map_err(chunked_err)?;
            if imported.diff_id != *expected_diff_id {
                return Err(PullError::DiffId {
                    index,
                    digest,
                    expected: *expected_diff_id,
                    actual: imported.diff_id,
                });
            }
            Ok(imported)
        };
    let imported = match attempt(staging, plan.pieces.clone()) {
        Ok(l) => l,
        Err(_) if plan.borrowed => {
            let pieces = plan.layer.pieces(source).map_err(chunked_err)?;
            source
                .prefetch(&missing_ranges(store, &pieces))
                .map_err(|e| PullError::Read {
                    index,
                    digest,
                    source: e,
                })?;
            attempt(staging, pieces)?
        }
        Err(e) => return Err(e),
    };
    Ok((imported, source.bytes_read()))
}

/// The skeleton and entries of a stored layer with the same shape as `layer`, if any.
fn same_shape_layer(
    store: &Store,
    layer: &ChunkedLayer,
) -> Option<(crate::layer::skeleton::Skeleton, Vec<Entry>)> {
    let entries = layer.entries().ok()?;
    let shape = shape_digest(&entries);
    let db = store.db().ok()?;
    let r = db.read().ok()?;
    let diff_id = r.layer_by_shape(&shape).ok()??;
    Some((r.skeleton(&diff_id).ok()??, r.toc(&diff_id).ok()??))
}
