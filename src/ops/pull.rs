//! `pull`: fetches an image (manifest, config, layers), verifies every digest, imports new
//! layers file by file into the store and records the image under its name.
//!
//! Nothing becomes visible before it is verified: new objects stay in a staging area until the
//! whole image checked out, then they are published and the database commits.

use std::collections::HashMap;
use std::io;

use serde::Serialize;

use crate::chunked::ChunkedError;
use crate::chunked::annotations::ChunkedAnnotations;
use crate::db::{DbView, ImageLayer, ImageRecord, LayerRecord};
use crate::digest::Digest;
use crate::image::manifest::{self, Descriptor, LayerFormat, ManifestError, Parsed};
use crate::image::oci_layout::{LayoutError, OciLayout};
use crate::image::platform::Platform;
use crate::image::reference::{Location, ReferenceError};
use crate::layer::import::{ImportError, ImportedLayer};
use crate::ops::layer_import::{ChunkedPlan, Planned, import_blob, import_planned, plan_chunked};
use crate::ops::source::{ImageSource, LayoutSource, RegistryImage};
use crate::progress::{NoProgress, Progress};
use crate::registry::auth::{AuthFileError, lookup as lookup_credentials};
use crate::registry::client::{ClientOptions, Registry, RegistryError};
use crate::store::staging::Staging;
use crate::store::{IoContext, LockMode, Store, StoreError};

/// When zstd:chunked layers are read by ranges.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Partial {
    /// By ranges unless most of a remote layer is missing (then one whole-blob stream).
    #[default]
    Auto,
    /// Always by ranges.
    Always,
    /// Never: zstd:chunked layers are streamed whole like plain zstd.
    Never,
}

/// Options of a pull.
#[derive(Clone, Debug, Default)]
pub struct PullOptions {
    /// Platform to select from an index (default: the host's).
    pub platform: Option<Platform>,
    pub partial: Partial,
    /// How to reach a registry.
    pub client: ClientOptions,
    /// Auth file to read credentials from (else the usual places).
    pub authfile: Option<std::path::PathBuf>,
}

/// A remote zstd:chunked layer missing more than this fraction of its blob is downloaded
/// whole in one stream: faster than ranges, and the blob digest is then checked too.
pub const AUTO_WHOLE_FRACTION: f64 = 0.6;

/// Errors of a pull.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Db(#[from] crate::db::DbError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    AuthFile(#[from] AuthFileError),
    #[error(
        "{what} {digest}: expected {expected_size} bytes with that digest, got {actual_size} bytes hashing to {actual}"
    )]
    Digest {
        what: &'static str,
        digest: Digest,
        expected_size: u64,
        actual: Digest,
        actual_size: u64,
    },
    #[error(
        "layer {index} ({digest}): uncompressed content hashes to {actual}, but the image config says {expected}"
    )]
    DiffId {
        index: usize,
        digest: Digest,
        expected: Digest,
        actual: Digest,
    },
    #[error("layer {index} ({digest}) is declared {declared} but its data is {actual}")]
    FormatMismatch {
        index: usize,
        digest: Digest,
        declared: &'static str,
        actual: &'static str,
    },
    #[error("layer {index} ({digest}): {source}")]
    Import {
        index: usize,
        digest: Digest,
        source: ImportError,
    },
    #[error("layer {index} ({digest}): reading or decompressing: {}", crate::registry::client::error_chain(.source))]
    Read {
        index: usize,
        digest: Digest,
        source: io::Error,
    },
    #[error("layer {index} ({digest}): {source}")]
    Chunked {
        index: usize,
        digest: Digest,
        source: ChunkedError,
    },
    #[error("{0}")]
    Unsupported(String),
}

/// Per-layer outcome, as `pull --json` reports it.
#[derive(Clone, Debug, Serialize)]
pub struct LayerReport {
    pub digest: Digest,
    pub diff_id: Digest,
    pub media_type: String,
    pub format: &'static str,
    pub size: u64,
    /// Bytes read from the source for this layer.
    pub fetched_bytes: u64,
    /// Fetched by ranges (zstd:chunked partial pull).
    pub partial: bool,
    pub files: u64,
    /// Files whose content the store already had.
    pub reused_files: u64,
    /// Uncompressed bytes of those files.
    pub reused_bytes: u64,
    /// The DiffID was checked against the config (now or when the layer was first stored).
    pub diff_id_verified: bool,
}

/// What a pull did, as `pull --json` reports it.
#[derive(Clone, Debug, Serialize)]
pub struct PullReport {
    pub image: String,
    pub manifest_digest: Digest,
    pub config_digest: Digest,
    /// Body bytes read from the source (manifests, config and layers).
    pub fetched_bytes: u64,
    /// Uncompressed bytes of files taken from the store.
    pub reused_bytes: u64,
    pub layers: Vec<LayerReport>,
    /// Time spent making the pull durable: syncing the new objects, then committing the
    /// database (its fsyncs). Reported so that their cost can be measured.
    pub sync_seconds: f64,
}

fn verify(what: &'static str, desc: &Descriptor, bytes: &[u8]) -> Result<(), PullError> {
    let actual = Digest::of(bytes);
    if actual != desc.digest || bytes.len() as u64 != desc.size {
        return Err(PullError::Digest {
            what,
            digest: desc.digest,
            expected_size: desc.size,
            actual,
            actual_size: bytes.len() as u64,
        });
    }
    Ok(())
}

/// Pulls `source` into the store.
pub fn pull(
    store: &Store,
    source: &str,
    opts: &PullOptions,
    progress: &dyn Progress,
) -> Result<PullReport, PullError> {
    let location = Location::parse(source)?;
    let name = location.local_name();
    match location {
        Location::OciLayout { dir, tag } => {
            let src = LayoutSource {
                layout: OciLayout::open(&dir)?,
                tag,
            };
            pull_from(store, &src, &name, source, opts, progress)
        }
        Location::Registry(reference) => {
            let mut client = opts.client.clone();
            if client.credentials.is_none() {
                client.credentials =
                    lookup_credentials(&reference.registry, opts.authfile.as_deref())?;
            }
            let registry = Registry::new(&reference.registry, &client)?;
            let src = RegistryImage {
                registry,
                reference,
            };
            pull_from(store, &src, &name, source, opts, progress)
        }
    }
}

fn pull_from(
    store: &Store,
    src: &dyn ImageSource,
    name: &str,
    source: &str,
    opts: &PullOptions,
    progress: &dyn Progress,
) -> Result<PullReport, PullError> {
    let mut fetched = 0u64;
    let platform = opts.platform.clone().unwrap_or_else(Platform::host);
    progress.message(&format!("resolving {source}"));
    let (mut bytes, mut desc) = src.root()?;
    let (manifest_bytes, manifest) = {
        let mut depth = 0;
        loop {
            fetched += bytes.len() as u64;
            verify("manifest", &desc, &bytes)?;
            match manifest::parse(&bytes, Some(&desc.media_type))? {
                Parsed::Manifest(m) => break (bytes, m),
                Parsed::Index(i) if depth == 0 => {
                    desc = manifest::select_platform(&i, &platform)?.clone();
                    bytes = src.manifest(&desc)?;
                    depth += 1;
                }
                Parsed::Index(_) => {
                    return Err(PullError::Unsupported(
                        "nested image indexes are not supported".into(),
                    ));
                }
            }
        }
    };
    let manifest_media_type = manifest.media_type.clone().unwrap_or_else(|| {
        if desc.media_type.is_empty() {
            manifest::OCI_MANIFEST.to_string()
        } else {
            desc.media_type.clone()
        }
    });
    let config_bytes = src.blob_bytes(&manifest.config, manifest::MAX_CONFIG_SIZE)?;
    fetched += config_bytes.len() as u64;
    verify("config", &manifest.config, &config_bytes)?;
    let config = manifest::parse_config(&config_bytes, manifest.layers.len())?;

    let _lock = store.lock(LockMode::Shared, progress)?;
    let stored: HashMap<Digest, LayerRecord> = {
        let db = store.db_reader()?;
        let r = db.read()?;
        let mut m = HashMap::new();
        for diff_id in &config.rootfs.diff_ids {
            if let Some(rec) = r.layer(diff_id)? {
                m.insert(*diff_id, rec);
            }
        }
        m
    };

    // Fetch phase: layers that must be read are fetched concurrently (a few at a time); the
    // import that follows is sequential, in layer order.
    let layers: Vec<(usize, &Descriptor, &Digest)> = manifest
        .layers
        .iter()
        .zip(&config.rootfs.diff_ids)
        .enumerate()
        .map(|(i, (d, id))| (i, d, id))
        .collect();
    let mut first_of: HashMap<Digest, usize> = HashMap::new();
    let mut work: Vec<(usize, &Descriptor, &Digest)> = Vec::new();
    for &(index, ldesc, diff_id) in &layers {
        if !stored.contains_key(diff_id) && !first_of.contains_key(diff_id) {
            first_of.insert(*diff_id, index);
            work.push((index, ldesc, diff_id));
        }
    }
    let total = layers.len();
    for &(index, ldesc, _) in &layers {
        progress.layer_started(index, total, &ldesc.digest.to_string(), ldesc.size);
    }
    let fetched_layers = fetch_layers(store, src, &work, opts)?;

    let mut staging = Staging::new(store)?;
    let mut imported: HashMap<Digest, ImportedLayer> = HashMap::new();
    let mut reports = Vec::with_capacity(total);
    let mut fetched_layers: HashMap<usize, Fetched> = fetched_layers.into_iter().collect();
    for (index, ldesc, diff_id) in layers {
        let format = LayerFormat::of(ldesc)?;
        let mut report = LayerReport {
            digest: ldesc.digest,
            diff_id: *diff_id,
            media_type: ldesc.media_type.clone(),
            format: format.name(),
            size: ldesc.size,
            fetched_bytes: 0,
            partial: false,
            files: 0,
            reused_files: 0,
            reused_bytes: 0,
            diff_id_verified: true,
        };
        if let Some(rec) = stored.get(diff_id) {
            // Same uncompressed content already stored and verified: nothing to fetch.
            report.files = rec.files;
            report.reused_files = rec.files;
            report.reused_bytes = rec.logical_bytes;
        } else if let Some(layer) = imported.get(diff_id) {
            report.files = layer.files;
            report.reused_files = layer.files;
            report.reused_bytes = layer.logical_bytes;
        } else {
            let prepared = fetched_layers
                .remove(&index)
                .unwrap_or(Fetched::Stream { metadata_read: 0 });
            let (layer, read) = match prepared {
                Fetched::Chunked(plan) => {
                    report.partial = true;
                    import_planned(&mut staging, store, plan, index, ldesc, diff_id)?
                }
                Fetched::Whole { file, read } => {
                    let (l, _) = import_blob(
                        &mut staging,
                        file,
                        index,
                        ldesc,
                        format,
                        diff_id,
                        &NoProgress,
                    )?;
                    (l, read)
                }
                Fetched::Stream { metadata_read } => {
                    let stream = src.blob_stream(ldesc)?;
                    let (l, n) = import_blob(
                        &mut staging,
                        stream,
                        index,
                        ldesc,
                        format,
                        diff_id,
                        progress,
                    )?;
                    (l, n + metadata_read)
                }
            };
            report.fetched_bytes = read;
            fetched += read;
            report.files = layer.files;
            report.reused_files = layer.reused_files;
            report.reused_bytes = layer.reused_bytes;
            imported.insert(*diff_id, layer);
        }
        let skipped = if report.fetched_bytes == 0 {
            report.size
        } else if report.partial {
            report.size.saturating_sub(report.fetched_bytes)
        } else {
            0
        };
        progress.layer_finished(index, report.fetched_bytes, skipped, report.size);
        reports.push(report);
    }

    crate::testhook::pause("pull-before-publish");
    let published = staging.publish()?;
    crate::testhook::pause("pull-before-commit");
    let image = ImageRecord {
        manifest_digest: desc.digest,
        manifest_media_type,
        manifest: manifest_bytes,
        config_digest: manifest.config.digest,
        config: config_bytes,
        layers: manifest
            .layers
            .iter()
            .zip(&config.rootfs.diff_ids)
            .map(|(d, diff_id)| ImageLayer {
                digest: d.digest,
                media_type: d.media_type.clone(),
                size: d.size,
                diff_id: *diff_id,
                annotations: d
                    .annotations
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            })
            .collect(),
        source: source.to_string(),
        pulled_at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0),
    };
    let commit_start;
    {
        let db = store.db()?;
        let w = db.write()?;
        for (diff_id, layer) in &imported {
            let record = LayerRecord {
                diff_id: *diff_id,
                tar_size: layer.tar_size,
                entries: layer.entries.len() as u64,
                files: layer.files,
                logical_bytes: layer.logical_bytes,
            };
            w.put_layer(
                &record,
                &layer.entries,
                &layer.skeleton,
                &layer.payload_states,
            )?;
        }
        for l in &image.layers {
            w.put_blob(&l.digest, &l.diff_id)?;
        }
        w.put_image(&image)?;
        w.set_name(name, &image.manifest_digest)?;
        commit_start = std::time::Instant::now();
        w.commit()?;
    }
    // The commit's and the database close's syncs.
    let commit_seconds = commit_start.elapsed().as_secs_f64();
    let reused_bytes = reports.iter().map(|l| l.reused_bytes).sum();
    Ok(PullReport {
        image: name.to_string(),
        manifest_digest: image.manifest_digest,
        config_digest: image.config_digest,
        fetched_bytes: fetched,
        reused_bytes,
        layers: reports,
        sync_seconds: published.sync_seconds + commit_seconds,
    })
}

/// What the fetch phase prepared for one layer.
enum Fetched<'a> {
    /// zstd:chunked, with its missing ranges prefetched.
    Chunked(Box<ChunkedPlan<'a>>),
    /// The whole blob, spooled to a temp file (unverified; the import checks it).
    Whole { file: std::fs::File, read: u64 },
    /// To be streamed during the import (`metadata_read`: TOC bytes already read).
    Stream { metadata_read: u64 },
}

/// The chunked annotations of a layer, when it is to be read by ranges.
fn chunked_annotations(
    ldesc: &Descriptor,
    index: usize,
    opts: &PullOptions,
) -> Result<Option<ChunkedAnnotations>, PullError> {
    if opts.partial == Partial::Never || LayerFormat::of(ldesc)? != LayerFormat::ZstdChunked {
        return Ok(None);
    }
    match ChunkedAnnotations::parse(&ldesc.annotations) {
        Ok(a) => Ok(a),
        // Like containers/storage: an oversized TOC means a plain full pull.
        Err(ChunkedError::TooLarge { .. }) => Ok(None),
        Err(source) => Err(PullError::Chunked {
            index,
            digest: ldesc.digest,
            source,
        }),
    }
}

/// Prepares one layer: plans a chunked layer (prefetching its ranges), or, when `spool_whole`,
/// downloads a whole blob to a temp file.
fn fetch_one<'a>(
    store: &Store,
    src: &'a dyn ImageSource,
    index: usize,
    ldesc: &Descriptor,
    opts: &PullOptions,
    spool_whole: bool,
) -> Result<Fetched<'a>, PullError> {
    let mut metadata_read = 0;
    // An empty store has nothing to skip: no TOC round trip, one stream.
    let nothing_stored = opts.partial == Partial::Auto && src.is_remote() && store_is_empty(store);
    if let Some(ann) = chunked_annotations(ldesc, index, opts)?.filter(|_| !nothing_stored) {
        let spool = crate::sys::anonymous_temp_file(&store.tmp_dir())
            .ctx(|| "creating a spool file".to_string())?;
        let ranges = src.ranges(ldesc, spool)?;
        let whole_above =
            (opts.partial == Partial::Auto && src.is_remote()).then_some(AUTO_WHOLE_FRACTION);
        match plan_chunked(store, ranges, index, ldesc, &ann, whole_above)? {
            Planned::Ready(plan) => return Ok(Fetched::Chunked(plan)),
            Planned::Whole { metadata_read: n } => metadata_read = n,
        }
    }
    if !spool_whole {
        return Ok(Fetched::Stream { metadata_read });
    }
    let mut file = crate::sys::anonymous_temp_file(&store.tmp_dir())
        .ctx(|| "creating a spool file".to_string())?;
    let mut stream = src.blob_stream(ldesc)?;
    let n = io::copy(&mut stream, &mut file).map_err(|source| PullError::Read {
        index,
        digest: ldesc.digest,
        source,
    })?;
    io::Seek::seek(&mut file, io::SeekFrom::Start(0))
        .ctx(|| "rewinding a spool file".to_string())?;
    Ok(Fetched::Whole {
        file,
        read: n + metadata_read,
    })
}

/// Fetches the layers that need it, a few at a time. With one layer to fetch, a whole blob is
/// streamed straight into the import instead of through a temp file.
fn fetch_layers<'a>(
    store: &Store,
    src: &'a dyn ImageSource,
    work: &[(usize, &Descriptor, &Digest)],
    opts: &PullOptions,
) -> Result<Vec<(usize, Fetched<'a>)>, PullError> {
    const PARALLEL_LAYERS: usize = 3;
    let spool_whole = work.len() > 1 && src.is_remote();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results: std::sync::Mutex<Vec<(usize, Result<Fetched<'a>, PullError>)>> =
        std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..PARALLEL_LAYERS.min(work.len()) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(&(index, ldesc, _)) = work.get(i) else {
                        break;
                    };
                    let r = fetch_one(store, src, index, ldesc, opts, spool_whole);
                    let failed = r.is_err();
                    results
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push((index, r));
                    if failed {
                        break;
                    }
                }
            });
        }
    });
    let mut out = Vec::new();
    let mut results = results.into_inner().unwrap_or_else(|e| e.into_inner());
    results.sort_by_key(|(i, _)| *i);
    for (index, r) in results {
        out.push((index, r?));
    }
    Ok(out)
}

/// Whether the store holds no layer at all.
fn store_is_empty(store: &Store) -> bool {
    store
        .db_reader()
        .ok()
        .and_then(|db| db.read().ok())
        .and_then(|r| r.layers().ok())
        .is_some_and(|l| l.is_empty())
}
