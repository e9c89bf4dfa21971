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

/// What [`import_chunked`] did.
pub enum ChunkedOutcome {
    Imported(ImportedLayer),
    /// More than the given fraction of the blob is missing: the caller downloads it whole.
    MostlyMissing,
}

/// Imports a zstd:chunked layer from a random-access source: reads and authenticates the TOC,
/// fetches the ranges of files the store lacks, rebuilds the tar and verifies every file, the
/// TOC/tar agreement and the DiffID.
///
/// The non-file bytes of the tar come, in order of preference, from a stored layer of the same
/// shape (same paths and metadata: typical of a new version of an image; nothing more is
/// fetched, and the DiffID proves the guess), from the layer's tar-split, or (legacy layers)
/// from the header frames between its files.
#[allow(clippy::too_many_arguments)]
pub fn import_chunked(
    staging: &mut Staging<'_>,
    store: &Store,
    source: &dyn PrefetchSource,
    index: usize,
    desc: &Descriptor,
    ann: &ChunkedAnnotations,
    expected_diff_id: &Digest,
    whole_above: Option<f64>,
) -> Result<ChunkedOutcome, PullError> {
    let digest = desc.digest;
    let chunked_err = |source| PullError::Chunked {
        index,
        digest,
        source,
    };
    let layer = ChunkedLayer::open(source, ann, desc.size).map_err(chunked_err)?;
    let ctx = Attempt {
        store,
        source,
        index,
        desc,
        layer: &layer,
        expected_diff_id,
        whole_above,
    };
    if let Some((skeleton, stored)) = same_shape_layer(store, &layer).map_err(chunked_err)?
        && let Ok(pieces) = layer.borrowed_pieces(&skeleton, &stored)
    {
        // A wrong guess (or any failure) falls back to the layer's own description.
        if let Ok(outcome) = ctx.run(staging, pieces) {
            return Ok(outcome);
        }
    }
    let pieces = layer.pieces(source).map_err(chunked_err)?;
    ctx.run(staging, pieces)
}

/// The skeleton and entries of a stored layer with the same shape as `layer`, if any.
fn same_shape_layer(
    store: &Store,
    layer: &ChunkedLayer,
) -> Result<Option<(crate::layer::skeleton::Skeleton, Vec<Entry>)>, crate::chunked::ChunkedError> {
    let Ok(entries) = layer.entries() else {
        return Ok(None);
    };
    let shape = shape_digest(&entries);
    let found = (|| -> Result<_, crate::store::StoreError> {
        let db = store.db()?;
        let r = db.read()?;
        let Some(diff_id) = r.layer_by_shape(&shape)? else {
            return Ok(None);
        };
        match (r.skeleton(&diff_id)?, r.toc(&diff_id)?) {
            (Some(s), Some(t)) => Ok(Some((s, t))),
            _ => Ok(None),
        }
    })();
    Ok(found.unwrap_or(None))
}

/// One way of rebuilding a chunked layer's tar.
struct Attempt<'a> {
    store: &'a Store,
    source: &'a dyn PrefetchSource,
    index: usize,
    desc: &'a Descriptor,
    layer: &'a ChunkedLayer,
    expected_diff_id: &'a Digest,
    whole_above: Option<f64>,
}

impl Attempt<'_> {
    fn run(
        &self,
        staging: &mut Staging<'_>,
        pieces: Vec<Piece>,
    ) -> Result<ChunkedOutcome, PullError> {
        let (index, digest) = (self.index, self.desc.digest);
        let chunked_err = |source| PullError::Chunked {
            index,
            digest,
            source,
        };
        let wanted: Vec<std::ops::Range<u64>> = pieces
            .iter()
            .filter_map(|p| match p {
                Piece::Frames(r) => Some(r.clone()),
                Piece::File { digest, range, .. } if self.store.open_object(digest).is_err() => {
                    Some(range.clone())
                }
                _ => None,
            })
            .collect();
        let missing: u64 = wanted.iter().map(|r| r.end - r.start).sum();
        if let Some(fraction) = self.whole_above
            && missing as f64 > fraction * self.desc.size as f64
        {
            return Ok(ChunkedOutcome::MostlyMissing);
        }
        self.source.prefetch(&wanted).map_err(|e| PullError::Read {
            index,
            digest,
            source: e,
        })?;
        let expected = self
            .layer
            .toc
            .files(self.layer.data_end)
            .map_err(chunked_err)?
            .into_iter()
            .map(|f| {
                let path = normalize_path(f.name.as_bytes())
                    .unwrap_or_else(|_| f.name.as_bytes().to_vec());
                (path, f.digest.expect("checked by Toc::files"))
            })
            .collect();
        let stream = TarStream::new(pieces, self.source, |d| self.store.open_object(d).ok());
        let mut sink = ExpectingSink { staging, expected };
        let imported = import_tar(stream, &mut sink).map_err(|source| PullError::Import {
            index,
            digest,
            source,
        })?;
        check_toc_matches(&self.layer.toc, &imported.entries).map_err(chunked_err)?;
        if imported.diff_id != *self.expected_diff_id {
            return Err(PullError::DiffId {
                index,
                digest,
                expected: *self.expected_diff_id,
                actual: imported.diff_id,
            });
        }
        Ok(ChunkedOutcome::Imported(imported))
    }
}
