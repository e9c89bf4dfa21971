//! Importing one layer into the staging area: by streaming the whole blob (any format), or
//! for zstd:chunked, by reading its TOC and only the ranges of files the store lacks.

use std::collections::{HashSet, VecDeque};
use std::io::{self, BufRead, BufReader, Read};

use crate::chunked::annotations::ChunkedAnnotations;
use crate::chunked::reader::{ChunkedLayer, Piece, TarStream, check_toc_matches};
use crate::db::DbView;
use crate::digest::{Digest, Hasher, HashingReader, Midstate};
use crate::image::manifest::{Descriptor, LayerFormat};
use crate::layer::entry::{Entry, normalize_path, shape_digest};
use crate::layer::import::{ImportError, ImportedLayer, ObjectSink, StoredFile, import_tar};
use crate::layer::skeleton::{Part, Skeleton};
use crate::ops::pull::PullError;
use crate::ops::read_ahead::read_ahead;
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
    blob: impl Read + Send,
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
        // Reading, hashing and decompressing the blob on one core, the tar and its files on
        // the other.
        let (result, produced) = read_ahead(
            |tar| {
                match actual {
                    "gzip" => io::copy(&mut flate2::read::MultiGzDecoder::new(&mut head), tar)?,
                    "zstd" => io::copy(
                        &mut zstd::stream::read::Decoder::with_buffer(&mut head)?,
                        tar,
                    )?,
                    _ => io::copy(&mut head, tar)?,
                };
                // Whatever follows the compressed stream still counts for the blob digest.
                io::copy(&mut head, &mut io::sink()).map(|_| ())
            },
            |tar| import_tar(tar, staging),
        );
        let layer = result.map_err(|source| match source {
            ImportError::Tar(crate::layer::tar::TarError::Io(e)) => read_err(e),
            source => PullError::Import {
                index,
                digest,
                source,
            },
        })?;
        produced.map_err(read_err)?;
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
    /// How the tar is rebuilt: from the layer's own description, or (when `None`) from the
    /// stored layer of the same shape in `borrowed` (a guess the DiffID confirms or refutes).
    pieces: Option<Vec<Piece>>,
    borrowed: Option<SameShape>,
}

/// A stored layer with the same entries (but other file contents) as the one being pulled.
struct SameShape {
    skeleton: Skeleton,
    entries: Vec<Entry>,
    /// Its DiffID hash states at each file (empty when unknown).
    states: Vec<Midstate>,
}

/// The outcome of [`plan_chunked`].
pub enum Planned<'a> {
    Ready(Box<ChunkedPlan<'a>>),
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
    // Decide on the TOC alone, before fetching anything else. Each content is looked up in
    // the store once, except those of a stored layer of the same shape: present already.
    let borrowed = same_shape_layer(store, &layer);
    let known: HashSet<Digest> = borrowed
        .iter()
        .flat_map(|s| s.entries.iter().filter_map(|e| e.digest))
        .collect();
    let mut missing: HashSet<Digest> = HashSet::new();
    let files = layer.toc.files(layer.data_end).map_err(chunked_err)?;
    let missing_files: Vec<std::ops::Range<u64>> = files
        .iter()
        .filter(|f| match f.digest {
            None => true,
            Some(d) if known.contains(&d) => false,
            Some(d) => missing.contains(&d) || (!store.has_object(&d) && missing.insert(d)),
        })
        .map(|f| f.offset as u64..f.end_offset as u64)
        .collect();
    let missing_bytes: u64 = missing_files.iter().map(|r| r.end - r.start).sum();
    if let Some(fraction) = whole_above
        && missing_bytes as f64 > fraction * desc.size as f64
    {
        return Ok(Planned::Whole {
            metadata_read: source.bytes_read(),
        });
    }
    // With a stored layer of the same shape, only the missing files are needed (its skeleton
    // supplies the rest); the pieces are only worked out if that guess fails.
    let (pieces, wanted) = match borrowed {
        Some(_) => (None, missing_files),
        None => {
            let pieces = layer.pieces(source.as_ref()).map_err(chunked_err)?;
            let wanted = missing_ranges(&pieces, |d| missing.contains(d));
            (Some(pieces), wanted)
        }
    };
    source.prefetch(&wanted).map_err(|e| PullError::Read {
        index,
        digest,
        source: e,
    })?;
    Ok(Planned::Ready(Box::new(ChunkedPlan {
        source,
        layer,
        pieces,
        borrowed,
    })))
}

/// Ranges of the blob the pieces need that the store cannot supply.
fn missing_ranges(
    pieces: &[Piece],
    is_missing: impl Fn(&Digest) -> bool,
) -> Vec<std::ops::Range<u64>> {
    pieces
        .iter()
        .filter_map(|p| match p {
            Piece::Frames(r) => Some(r.clone()),
            Piece::File { digest, range, .. } if is_missing(digest) => Some(range.clone()),
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
    plan: Box<ChunkedPlan<'_>>,
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
    let ChunkedPlan {
        source,
        layer,
        pieces,
        borrowed,
    } = *plan;
    let source = source.as_ref();
    let attempt =
        |staging: &mut Staging<'_>, pieces: Vec<Piece>| -> Result<ImportedLayer, PullError> {
            let expected = layer
                .toc
                .files(layer.data_end)
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
            check_toc_matches(&layer.toc, &imported.entries).map_err(chunked_err)?;
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
    // The layer's own pieces, with whatever they need that is not fetched yet.
    let own_pieces = || -> Result<Vec<Piece>, PullError> {
        let pieces = layer.pieces(source).map_err(chunked_err)?;
        source
            .prefetch(&missing_ranges(&pieces, |d| !store.has_object(d)))
            .map_err(|e| PullError::Read {
                index,
                digest,
                source: e,
            })?;
        Ok(pieces)
    };
    let imported = match (pieces, &borrowed) {
        (Some(pieces), _) => attempt(staging, pieces)?,
        (None, Some(same)) => {
            // Fast path: hash from the first changed file on, resuming from the stored
            // layer's state; then the stored skeleton as a whole; then the layer's own.
            if let Some(l) = resume(staging, store, &layer, source, same, expected_diff_id) {
                return Ok((l, source.bytes_read()));
            }
            match layer.borrowed_pieces(&same.skeleton, &same.entries) {
                Ok(pieces) => match attempt(staging, pieces) {
                    Ok(l) => l,
                    Err(_) => attempt(staging, own_pieces()?)?,
                },
                Err(_) => attempt(staging, own_pieces()?)?,
            }
        }
        (None, None) => attempt(staging, own_pieces()?)?,
    };
    Ok((imported, source.bytes_read()))
}

/// A stored layer with the same shape as `layer`, if any.
fn same_shape_layer(store: &Store, layer: &ChunkedLayer) -> Option<SameShape> {
    let entries = layer.entries().ok()?;
    let shape = shape_digest(&entries);
    let db = store.db_reader().ok()?;
    let r = db.read().ok()?;
    let diff_id = r.layer_by_shape(&shape).ok()??;
    Some(SameShape {
        skeleton: r.skeleton(&diff_id).ok()??,
        entries: r.toc(&diff_id).ok()??,
        states: r.midstates(&diff_id).ok().flatten().unwrap_or_default(),
    })
}

/// Hashes everything read through it.
struct Tee<'h, R> {
    inner: R,
    hasher: &'h mut Hasher,
}

impl<R: Read> Read for Tee<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// The fast path for a layer of the same shape as a stored one: the tar is the stored
/// skeleton with this layer's files, identical up to the first file whose digest differs, so
/// the DiffID hash resumes from the stored layer's state there and only the rest is hashed (and
/// its new files staged). `None` when it does not apply or the DiffID disagrees: the caller
/// then rebuilds and checks the whole tar.
fn resume(
    staging: &mut Staging<'_>,
    store: &Store,
    layer: &ChunkedLayer,
    source: &dyn PrefetchSource,
    same: &SameShape,
    expected_diff_id: &Digest,
) -> Option<ImportedLayer> {
    let files = layer.toc.files(layer.data_end).ok()?;
    let payloads: Vec<usize> = same.skeleton.payloads().map(|i| i as usize).collect();
    if payloads.len() != files.len() || same.states.len() != files.len() {
        return None;
    }
    let first_changed = (0..files.len())
        .find(|&p| same.entries.get(payloads[p]).map(|e| e.digest) != Some(files[p].digest))?;
    let mut hasher = Hasher::resume(&same.states[first_changed]);
    let mut states = same.states[..first_changed].to_vec();
    let mut entries = same.entries.clone();
    let (mut reused_files, mut reused_bytes, mut logical_bytes) = (0u64, 0u64, 0u64);
    let mut p = 0usize;
    for part in same.skeleton.parts() {
        match part.ok()? {
            Part::Raw(b) => {
                if p > first_changed {
                    hasher.update(&b);
                }
            }
            Part::Payload(i) => {
                let f = files[p];
                let digest = f.digest?;
                let entry = entries.get_mut(i as usize)?;
                entry.digest = Some(digest);
                logical_bytes += entry.size;
                // Files before the first change are the stored layer's own.
                let present = p < first_changed || store.has_object(&digest);
                if present {
                    reused_files += 1;
                    reused_bytes += entry.size;
                }
                if p >= first_changed {
                    states.push(hasher.midstate()?);
                    let local = if present {
                        store.open_object(&digest).ok()
                    } else {
                        None
                    };
                    let content: Box<dyn Read + Send + '_> = match local {
                        Some(file) => Box::new(file),
                        None => Box::new(
                            zstd::stream::read::Decoder::new(
                                source
                                    .open_range(f.offset as u64..f.end_offset as u64)
                                    .ok()?,
                            )
                            .ok()?,
                        ),
                    };
                    let mut tee = Tee {
                        inner: content.take(entry.size),
                        hasher: &mut hasher,
                    };
                    let entry = entry.clone();
                    staging
                        .store_file_expecting(&entry, &mut tee, Some(digest))
                        .ok()?;
                    if tee.inner.limit() != 0 {
                        return None;
                    }
                }
                p += 1;
            }
        }
    }
    if hasher.finish() != *expected_diff_id {
        return None;
    }
    let tar_size = same.skeleton.tar_size(&entries).ok()?;
    Some(ImportedLayer {
        entries,
        skeleton: same.skeleton.clone(),
        diff_id: *expected_diff_id,
        tar_size,
        files: files.len() as u64,
        reused_files,
        logical_bytes,
        reused_bytes,
        payload_states: states,
    })
}
