//! `push`: writes a stored image to an OCI image layout, re-compressing every layer from its
//! exact tar (DiffIDs unchanged) as zstd:chunked, zstd or gzip.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::chunked::writer::{WriteError, WriteOptions, write_chunked};
use crate::db::DbView;
use crate::digest::{Digest, HashingReader, HashingWriter};
use crate::image::manifest::{OCI_INDEX, OCI_MANIFEST};
use crate::image::oci_layout::REF_NAME;
use crate::image::reference::{Location, Reference, ReferenceError};
use crate::ops::export::open_entry;
use crate::progress::Progress;
use crate::registry::client::{ClientOptions, Registry, RegistryError};
use crate::store::{LockMode, Store, StoreError};
use crate::sys;

/// Layer encodings `push` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PushFormat {
    ZstdChunked,
    Zstd,
    Gzip,
}

impl PushFormat {
    pub fn name(self) -> &'static str {
        match self {
            PushFormat::ZstdChunked => "zstd:chunked",
            PushFormat::Zstd => "zstd",
            PushFormat::Gzip => "gzip",
        }
    }
    fn media_type(self) -> &'static str {
        match self {
            PushFormat::ZstdChunked | PushFormat::Zstd => {
                "application/vnd.oci.image.layer.v1.tar+zstd"
            }
            PushFormat::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
        }
    }
    /// The default compression level.
    pub fn default_level(self) -> i32 {
        match self {
            PushFormat::ZstdChunked => 10,
            PushFormat::Zstd => 3,
            PushFormat::Gzip => 6,
        }
    }
}

/// Options of a push.
#[derive(Clone, Debug)]
pub struct PushOptions {
    pub format: PushFormat,
    /// Compression level (default: the format's).
    pub level: Option<i32>,
    /// How to reach a registry.
    pub client: ClientOptions,
    /// Auth file to read credentials from (else the usual places).
    pub authfile: Option<PathBuf>,
}

/// Errors of a push.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Db(#[from] crate::db::DbError),
    #[error("layer {index}: {source}")]
    Chunked { index: usize, source: WriteError },
    #[error(
        "layer {index}: the store rebuilt a tar hashing to {actual}, not the DiffID {expected} (run `zstore fsck`)"
    )]
    DiffId {
        index: usize,
        expected: Digest,
        actual: Digest,
    },
    #[error("{context}: {source}")]
    Io { context: String, source: io::Error },
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    AuthFile(#[from] crate::registry::auth::AuthFileError),
    #[error("{0}")]
    Unsupported(String),
}

fn io_ctx(context: impl Into<String>) -> impl FnOnce(io::Error) -> PushError {
    let context = context.into();
    move |source| PushError::Io { context, source }
}

/// One written layer.
#[derive(Clone, Debug, Serialize)]
pub struct PushedLayer {
    pub digest: Digest,
    pub diff_id: Digest,
    pub media_type: String,
    pub format: &'static str,
    pub size: u64,
    pub annotations: BTreeMap<String, String>,
}

/// What a push wrote.
#[derive(Clone, Debug, Serialize)]
pub struct PushReport {
    pub destination: String,
    pub manifest_digest: Digest,
    pub config_digest: Digest,
    pub layers: Vec<PushedLayer>,
    /// Bytes written (blobs, config, manifest).
    pub pushed_bytes: u64,
}

/// Pushes image `query` to `dest` (`oci:DIR[:TAG]` or a registry reference).
pub fn push(
    store: &Store,
    query: &str,
    dest: &str,
    opts: &PushOptions,
    progress: &dyn Progress,
) -> Result<PushReport, PushError> {
    let location = Location::parse(dest)?;
    let destination_name = location.local_name();
    let out: Box<dyn BlobDest> = match location {
        Location::OciLayout { dir, tag } => Box::new(LayoutWriter::create(&dir, tag)?),
        Location::Registry(reference) => {
            let mut client = opts.client.clone();
            if client.credentials.is_none() {
                client.credentials =
                    crate::registry::auth::lookup(&reference.registry, opts.authfile.as_deref())?;
            }
            let registry = Registry::new(&reference.registry, &client)?;
            Box::new(RegistryDest {
                registry,
                reference,
                tmp: store.tmp_dir(),
            })
        }
    };
    let _lock = store.lock(LockMode::Shared, progress)?;
    let (image, layers) = {
        let db = store.db_reader()?;
        let r = db.read()?;
        let image = store.find_image(&r, query)?;
        let mut layers = Vec::new();
        for l in &image.layers {
            let missing =
                |what: &str| StoreError::Inconsistent(format!("layer {} has no {what}", l.diff_id));
            let toc = r
                .toc(&l.diff_id)?
                .ok_or_else(|| missing("table of contents"))?;
            let skeleton = r
                .skeleton(&l.diff_id)?
                .ok_or_else(|| missing("tar skeleton"))?;
            layers.push((l.diff_id, toc, skeleton));
        }
        (image, layers)
    };
    let level = opts.level.unwrap_or(opts.format.default_level());
    let mut pushed = Vec::new();
    let mut pushed_bytes = 0u64;
    let total = layers.len();
    for (index, (diff_id, toc, skeleton)) in layers.iter().enumerate() {
        progress.layer_started(index, total, &diff_id.to_string(), 0);
        let (tmp, file) = out.temp_blob()?;
        let written = write_layer(store, toc, skeleton, file, opts.format, level, index);
        let (digest, size, actual_diff, annotations) = match written {
            Ok(w) => w,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
        };
        if actual_diff != *diff_id {
            let _ = std::fs::remove_file(&tmp);
            return Err(PushError::DiffId {
                index,
                expected: *diff_id,
                actual: actual_diff,
            });
        }
        crate::testhook::pause("push-blob-written");
        pushed_bytes += out.commit_blob(&tmp, &digest, size)?;
        progress.layer_finished(index, size, 0, size);
        pushed.push(PushedLayer {
            digest,
            diff_id: *diff_id,
            media_type: opts.format.media_type().to_string(),
            format: opts.format.name(),
            size,
            annotations,
        });
    }
    let (config_digest, n) = out.put_blob(&image.config)?;
    pushed_bytes += n;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest.to_string(),
            "size": image.config.len(),
        },
        "layers": pushed.iter().map(|l| {
            let mut d = serde_json::json!({"mediaType": l.media_type, "digest": l.digest.to_string(), "size": l.size});
            if !l.annotations.is_empty() {
                d["annotations"] = serde_json::json!(l.annotations);
            }
            d
        }).collect::<Vec<_>>(),
    });
    let manifest_bytes = serde_json::to_vec(&manifest).expect("serialising a manifest cannot fail");
    let manifest_digest = Digest::of(&manifest_bytes);
    crate::testhook::pause("push-before-manifest");
    out.put_manifest(&manifest_bytes, manifest_digest)?;
    pushed_bytes += manifest_bytes.len() as u64;
    Ok(PushReport {
        destination: destination_name,
        manifest_digest,
        config_digest,
        layers: pushed,
        pushed_bytes,
    })
}

/// Copies a tar through a compressing encoder that writes into a [`HashingWriter`]: (blob
/// digest, blob size, DiffID of the tar, no annotations).
fn compress_stream<R: Read, E: Write, W: Write>(
    tar: R,
    mut encoder: E,
    finish: impl FnOnce(E) -> io::Result<HashingWriter<W>>,
) -> Result<(Digest, u64, Digest, BTreeMap<String, String>), PushError> {
    let mut tar = HashingReader::new(tar);
    io::copy(&mut tar, &mut encoder).map_err(io_ctx("compressing the layer"))?;
    let (digest, size, mut inner) = finish(encoder)
        .map_err(io_ctx("compressing the layer"))?
        .finish();
    inner.flush().map_err(io_ctx("writing the layer"))?;
    Ok((digest, size, tar.finish().0, BTreeMap::new()))
}

/// Compresses one layer's tar into `file`: (blob digest, size, DiffID of the tar read,
/// descriptor annotations).
fn write_layer(
    store: &Store,
    toc: &[crate::layer::entry::Entry],
    skeleton: &crate::layer::skeleton::Skeleton,
    file: File,
    format: PushFormat,
    level: i32,
    index: usize,
) -> Result<(Digest, u64, Digest, BTreeMap<String, String>), PushError> {
    let tar = skeleton.reader(toc, |e| open_entry(store, e));
    let out = BufWriter::with_capacity(1 << 20, file);
    Ok(match format {
        PushFormat::ZstdChunked => {
            let w = write_chunked(tar, out, WriteOptions { level, threads: 0 })
                .map_err(|source| PushError::Chunked { index, source })?;
            (w.digest, w.size, w.diff_id, w.annotations.to_map())
        }
        PushFormat::Zstd => {
            let mut enc = zstd::stream::write::Encoder::new(HashingWriter::new(out), level)
                .map_err(io_ctx("zstd"))?;
            enc.include_checksum(true).map_err(io_ctx("zstd"))?;
            let threads = std::thread::available_parallelism()
                .map(|n| n.get() as u32)
                .unwrap_or(1);
            if threads > 1 {
                enc.multithread(threads).map_err(io_ctx("zstd"))?;
            }
            compress_stream(tar, enc, |e| e.finish())?
        }
        PushFormat::Gzip => {
            let level = flate2::Compression::new(level.clamp(0, 9) as u32);
            compress_stream(
                tar,
                flate2::write::GzEncoder::new(HashingWriter::new(out), level),
                |e| e.finish(),
            )?
        }
    })
}

/// Where pushed blobs and the manifest go.
trait BlobDest {
    /// A new temporary file for a blob being written.
    fn temp_blob(&self) -> Result<(PathBuf, File), PushError>;
    /// Makes a finished temp blob available under its digest; returns bytes transferred.
    fn commit_blob(&self, tmp: &Path, digest: &Digest, size: u64) -> Result<u64, PushError>;
    /// Stores a small blob; returns its digest and bytes transferred.
    fn put_blob(&self, bytes: &[u8]) -> Result<(Digest, u64), PushError> {
        let digest = Digest::of(bytes);
        let (tmp, mut f) = self.temp_blob()?;
        f.write_all(bytes).map_err(io_ctx("writing a blob"))?;
        drop(f);
        let n = self.commit_blob(&tmp, &digest, bytes.len() as u64)?;
        Ok((digest, n))
    }
    /// Stores the manifest and names it.
    fn put_manifest(&self, bytes: &[u8], digest: Digest) -> Result<(), PushError>;
}

/// Writes blobs and the index of an OCI layout, creating it if needed.
struct LayoutWriter {
    dir: PathBuf,
    tag: Option<String>,
}

/// Uploads blobs (those the registry lacks) and the manifest to a registry.
struct RegistryDest {
    registry: Registry,
    reference: Reference,
    tmp: PathBuf,
}

impl BlobDest for RegistryDest {
    fn temp_blob(&self) -> Result<(PathBuf, File), PushError> {
        temp_file_in(&self.tmp)
    }
    fn commit_blob(&self, tmp: &Path, digest: &Digest, size: u64) -> Result<u64, PushError> {
        let repo = &self.reference.repository;
        let result = (|| {
            if self.registry.has_blob(repo, digest)? {
                return Ok(0);
            }
            self.registry
                .upload_blob(repo, digest, || File::open(tmp), size)?;
            Ok(size)
        })();
        let _ = std::fs::remove_file(tmp);
        result
    }
    fn put_manifest(&self, bytes: &[u8], digest: Digest) -> Result<(), PushError> {
        let reference = match (&self.reference.tag, &self.reference.digest) {
            (Some(t), _) => t.clone(),
            (None, _) => digest.to_string(),
        };
        Ok(self.registry.put_manifest(
            &self.reference.repository,
            &reference,
            OCI_MANIFEST,
            bytes,
        )?)
    }
}

fn temp_file_in(dir: &Path) -> Result<(PathBuf, File), PushError> {
    crate::sys::create_temp_file(dir, "tmp-push")
        .map_err(io_ctx(format!("creating a temp file in {}", dir.display())))
}

impl BlobDest for LayoutWriter {
    fn temp_blob(&self) -> Result<(PathBuf, File), PushError> {
        temp_file_in(&self.dir.join("blobs").join("sha256"))
    }
    fn commit_blob(&self, tmp: &Path, digest: &Digest, size: u64) -> Result<u64, PushError> {
        let f = File::open(tmp).map_err(io_ctx("syncing a blob"))?;
        f.sync_all().map_err(io_ctx("syncing a blob"))?;
        let dest = self.dir.join("blobs").join("sha256").join(digest.hex());
        std::fs::rename(tmp, &dest).map_err(io_ctx(format!("writing {}", dest.display())))?;
        Ok(size)
    }
    fn put_manifest(&self, bytes: &[u8], digest: Digest) -> Result<(), PushError> {
        self.put_blob(bytes)?;
        // Every blob's name must be durable before the index that refers to them.
        let blobs = self.dir.join("blobs").join("sha256");
        sys::sync_dir(&blobs).map_err(io_ctx(format!("syncing {}", blobs.display())))?;
        self.add_to_index(digest, bytes.len() as u64, self.tag.as_deref())
    }
}

/// Temp blobs (`.tmp-push-PID-N`) and index files (`.index.json.tmp-PID`) start with these.
const LAYOUT_TEMP_PREFIXES: [&str; 2] = [".tmp-push-", ".index.json.tmp-"];

/// Removes the temp files that pushes killed before they finished left in `dir`.
fn remove_stale_temp_files(dir: &Path) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let pid = LAYOUT_TEMP_PREFIXES.iter().find_map(|p| {
            let rest = name.strip_prefix(p)?;
            rest.split('-').next()?.parse::<u32>().ok()
        });
        if let Some(pid) = pid
            && !sys::process_exists(pid)
        {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

impl LayoutWriter {
    fn create(dir: &Path, tag: Option<String>) -> Result<LayoutWriter, PushError> {
        let blobs = dir.join("blobs").join("sha256");
        std::fs::create_dir_all(&blobs).map_err(io_ctx(format!("creating {}", blobs.display())))?;
        let marker = dir.join("oci-layout");
        if !marker.exists() {
            std::fs::write(&marker, br#"{"imageLayoutVersion":"1.0.0"}"#)
                .map_err(io_ctx(format!("writing {}", marker.display())))?;
        }
        remove_stale_temp_files(dir);
        remove_stale_temp_files(&blobs);
        Ok(LayoutWriter {
            dir: dir.to_path_buf(),
            tag,
        })
    }

    /// Adds the manifest to `index.json`, replacing an entry with the same tag.
    fn add_to_index(&self, digest: Digest, size: u64, tag: Option<&str>) -> Result<(), PushError> {
        let path = self.dir.join("index.json");
        let mut index: serde_json::Value = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| {
                PushError::Unsupported(format!("{} is not valid JSON: {e}", path.display()))
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                serde_json::json!({"schemaVersion": 2, "manifests": []})
            }
            Err(e) => return Err(io_ctx(format!("reading {}", path.display()))(e)),
        };
        index["mediaType"] = serde_json::json!(OCI_INDEX);
        let manifests = index["manifests"].as_array_mut().ok_or_else(|| {
            PushError::Unsupported(format!("{} has no manifests array", path.display()))
        })?;
        if let Some(t) = tag {
            manifests.retain(|m| m["annotations"][REF_NAME].as_str() != Some(t));
        }
        let mut entry = serde_json::json!({"mediaType": OCI_MANIFEST, "digest": digest.to_string(), "size": size});
        if let Some(t) = tag {
            entry["annotations"] = serde_json::json!({ REF_NAME: t });
        }
        manifests.push(entry);
        let tmp = self
            .dir
            .join(format!(".index.json.tmp-{}", std::process::id()));
        let write = || -> io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(&serde_json::to_vec(&index).expect("serialising an index cannot fail"))?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            sys::sync_dir(&self.dir)
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            io_ctx(format!("writing {}", path.display()))(e)
        })
    }
}
