//! The metadata database (redb): images, names, layers with their tables of contents and tar
//! skeletons, compressed-blob → layer mappings and checkouts.
//!
//! redb locks its file exclusively while open, so zstore opens the database only for short
//! transactions, serialised across processes by a lock file (`db.lock`). Long work (downloads,
//! checkouts) never holds it.

use std::collections::HashSet;
use std::fs::File;
use std::path::Path;

use redb::{ReadableDatabase, ReadableTable, TableDefinition, TableHandle};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::digest::Digest;
use crate::layer::entry::Entry;
use crate::layer::skeleton::{Part, Skeleton};

/// Version of the database schema; bumped on incompatible changes. Stores at versions 2 and 3
/// are migrated when opened (2 kept skeleton bytes inline, 2 and 3 kept one whole TOC and
/// skeleton per layer).
pub const SCHEMA_VERSION: u32 = 4;

type Tbl = TableDefinition<'static, &'static str, &'static [u8]>;
const META: Tbl = TableDefinition::new("meta");
const IMAGES: Tbl = TableDefinition::new("images");
const REFS: Tbl = TableDefinition::new("refs");
const LAYERS: Tbl = TableDefinition::new("layers");
const LAYER_TOCS: Tbl = TableDefinition::new("layer_tocs");
const LAYER_SKELETONS: Tbl = TableDefinition::new("layer_skeletons");
const BLOBS: Tbl = TableDefinition::new("blobs");
const CHECKOUTS: Tbl = TableDefinition::new("checkouts");
/// Shape digest of a layer's entries → DiffID (see [`crate::layer::entry::shape_digest`]).
const LAYER_SHAPES: Tbl = TableDefinition::new("layer_shapes");
/// DiffID → hash states at each file's content (see [`crate::digest::Midstate`]).
const LAYER_MIDSTATES: Tbl = TableDefinition::new("layer_midstates");
/// sha256 of a value → the value: layer metadata that layers share (see [`TocRecord`]).
const METADATA_BLOBS: Tbl = TableDefinition::new("metadata_blobs");
const ALL_TABLES: [Tbl; 11] = [
    METADATA_BLOBS,
    LAYER_MIDSTATES,
    META,
    IMAGES,
    REFS,
    LAYERS,
    LAYER_TOCS,
    LAYER_SKELETONS,
    BLOBS,
    CHECKOUTS,
    LAYER_SHAPES,
];

/// Database errors.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("metadata database: {0}")]
    Redb(#[from] redb::Error),
    #[error("metadata database lock: {0}")]
    Lock(#[source] std::io::Error),
    #[error("metadata database: record {key:?} in table {table} is unreadable: {reason}")]
    Decode {
        table: &'static str,
        key: String,
        reason: String,
    },
    #[error(
        "metadata database has schema version {found}; this zstore understands {SCHEMA_VERSION}"
    )]
    Schema { found: u32 },
}

fn redb_err(e: impl Into<redb::Error>) -> DbError {
    DbError::Redb(e.into())
}

/// One layer of an image, as its manifest lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageLayer {
    /// Digest of the blob as distributed (compressed).
    pub digest: Digest,
    pub media_type: String,
    /// Blob size in bytes.
    pub size: u64,
    /// Digest of the uncompressed tar, from the config.
    pub diff_id: Digest,
    /// Annotations of the layer descriptor, as (key, value) pairs.
    pub annotations: Vec<(String, String)>,
}

/// An image: its manifest, config and layers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    pub manifest_digest: Digest,
    pub manifest_media_type: String,
    /// The manifest exactly as fetched (its digest is `manifest_digest`).
    pub manifest: Vec<u8>,
    pub config_digest: Digest,
    /// The config exactly as fetched.
    pub config: Vec<u8>,
    pub layers: Vec<ImageLayer>,
    /// Where it was pulled from.
    pub source: String,
    /// Unix time of the pull.
    pub pulled_at: i64,
}

/// A stored layer (keyed by DiffID).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRecord {
    pub diff_id: Digest,
    /// Size of the uncompressed tar.
    pub tar_size: u64,
    /// Entries in the table of contents.
    pub entries: u64,
    /// Regular files with content.
    pub files: u64,
    /// Sum of regular file sizes.
    pub logical_bytes: u64,
}

/// A checkout zstore made.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckoutRecord {
    pub path: String,
    pub manifest_digest: Digest,
    pub mode: String,
    pub created_at: i64,
}

/// The file whose lock serialises database access across processes.
fn open_lock_file(lock_path: &Path) -> Result<File, DbError> {
    File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(lock_path)
        .map_err(DbError::Lock)
}

/// An open database, holding the cross-process lock until dropped.
pub struct Db {
    db: redb::Database,
    _lock: File,
}

impl Db {
    /// Opens (creating if needed) the database at `path`, first taking the exclusive `lock_path`
    /// file lock, waiting for other processes' short transactions.
    pub fn open(path: &Path, lock_path: &Path) -> Result<Db, DbError> {
        let lock = open_lock_file(lock_path)?;
        lock.lock().map_err(DbError::Lock)?;
        let db = redb::Database::create(path).map_err(redb_err)?;
        let this = Db { db, _lock: lock };
        this.init()?;
        Ok(this)
    }

    fn init(&self) -> Result<(), DbError> {
        let mut migrate = None;
        {
            let r = self.db.begin_read().map_err(redb_err)?;
            let complete = ALL_TABLES.iter().all(|t| r.open_table(*t).is_ok());
            if let Ok(meta) = r.open_table(META)
                && let Some(v) = meta.get("schema").map_err(redb_err)?
            {
                let found = u32::from_le_bytes(v.value().try_into().unwrap_or([0xff; 4]));
                let tables_of_3 = ALL_TABLES
                    .iter()
                    .filter(|t| t.name() != METADATA_BLOBS.name())
                    .all(|t| r.open_table(*t).is_ok());
                if (found == 2 || found == 3) && tables_of_3 {
                    migrate = Some(found);
                } else if found != SCHEMA_VERSION {
                    return Err(DbError::Schema { found });
                } else if complete {
                    return Ok(());
                }
            }
        }
        let w = self.db.begin_write().map_err(redb_err)?;
        for t in ALL_TABLES {
            w.open_table(t).map_err(redb_err)?;
        }
        if migrate.is_none() {
            w.open_table(META)
                .map_err(redb_err)?
                .insert("schema", &SCHEMA_VERSION.to_le_bytes()[..])
                .map_err(redb_err)?;
        }
        w.commit().map_err(redb_err)?;
        match migrate {
            Some(from) => self.migrate(from),
            None => Ok(()),
        }
    }

    /// Rewrites every layer's TOC and skeleton in the current form, in one transaction (a
    /// crash leaves the database as it was).
    fn migrate(&self, from: u32) -> Result<(), DbError> {
        let w = DbWrite(self.db.begin_write().map_err(redb_err)?);
        let keys: Vec<String> = w.all_raw(LAYER_TOCS)?.into_iter().map(|(k, _)| k).collect();
        for key in keys {
            let raw = |table: Tbl, name: &'static str| -> Result<Vec<u8>, DbError> {
                w.get_raw(table, &key)?.ok_or_else(|| DbError::Decode {
                    table: name,
                    key: key.clone(),
                    reason: "missing while migrating".into(),
                })
            };
            let toc: Vec<Entry> =
                decode_compressed("layer_tocs", &key, &raw(LAYER_TOCS, "layer_tocs")?)?;
            let bytes = raw(LAYER_SKELETONS, "layer_skeletons")?;
            let skeleton = if from == 2 {
                let v2: v2::Skeleton = decode_compressed("layer_skeletons", &key, &bytes)?;
                Skeleton::from_parts(v2.segments.into_iter().map(|s| match s {
                    v2::Segment::Raw(b) => Part::Raw(b),
                    v2::Segment::Payload(i) => Part::Payload(i),
                }))
                .map_err(|e| DbError::Decode {
                    table: "layer_skeletons",
                    key: key.clone(),
                    reason: e.to_string(),
                })?
            } else {
                decode("layer_skeletons", &key, &bytes)?
            };
            w.put_toc(&key, &toc)?;
            w.put_skeleton(&key, &skeleton)?;
        }
        w.put(META, "schema", &SCHEMA_VERSION.to_le_bytes())?;
        w.commit()
    }

    /// Starts a read transaction.
    pub fn read(&self) -> Result<DbRead, DbError> {
        Ok(DbRead(self.db.begin_read().map_err(redb_err)?))
    }

    /// Starts a write transaction; nothing is visible until [`DbWrite::commit`].
    pub fn write(&self) -> Result<DbWrite, DbError> {
        Ok(DbWrite(self.db.begin_write().map_err(redb_err)?))
    }
}

/// The database opened for reading only: no write and no sync on open or close (a read-write
/// open costs several fdatasyncs), under a shared lock, so readers do not wait for each other.
pub enum DbReader {
    ReadOnly {
        db: redb::ReadOnlyDatabase,
        _lock: File,
    },
    /// A database that needs a writer first (new, at an older schema version, or left
    /// unclean by a killed process, which a read-write open repairs).
    ReadWrite(Db),
}

impl DbReader {
    /// Opens the database at `path` for reading (see [`Db::open`] for `lock_path`).
    pub fn open(path: &Path, lock_path: &Path) -> Result<DbReader, DbError> {
        if let Some(reader) = Self::open_read_only(path, lock_path)? {
            return Ok(reader);
        }
        Ok(DbReader::ReadWrite(Db::open(path, lock_path)?))
    }

    fn open_read_only(path: &Path, lock_path: &Path) -> Result<Option<DbReader>, DbError> {
        if !path.exists() {
            return Ok(None);
        }
        let lock = open_lock_file(lock_path)?;
        lock.lock_shared().map_err(DbError::Lock)?;
        let Ok(db) = redb::ReadOnlyDatabase::open(path) else {
            return Ok(None);
        };
        let current = {
            let r = db.begin_read().map_err(redb_err)?;
            let complete = ALL_TABLES.iter().all(|t| r.open_table(*t).is_ok());
            let version = match r.open_table(META) {
                Ok(meta) => meta
                    .get("schema")
                    .map_err(redb_err)?
                    .and_then(|v| v.value().try_into().ok().map(u32::from_le_bytes)),
                Err(_) => None,
            };
            complete && version == Some(SCHEMA_VERSION)
        };
        Ok(current.then_some(DbReader::ReadOnly { db, _lock: lock }))
    }

    /// Starts a read transaction.
    pub fn read(&self) -> Result<DbRead, DbError> {
        match self {
            DbReader::ReadOnly { db, .. } => Ok(DbRead(db.begin_read().map_err(redb_err)?)),
            DbReader::ReadWrite(db) => db.read(),
        }
    }
}

/// File digests per metadata blob: a new version of a layer (same shape, a few files changed)
/// shares every chunk but those holding the changed files' digests.
const DIGEST_CHUNK: usize = 128;

/// How a layer's table of contents is stored: its entries without file digests (the shape,
/// which layers of the same shape share), then the digests in chunks, each a metadata blob.
#[derive(Serialize, Deserialize)]
struct TocRecord {
    shape: Digest,
    digest_chunks: Vec<Digest>,
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    postcard::to_allocvec(v).expect("postcard serialisation of in-memory records cannot fail")
}

fn encode_compressed<T: Serialize>(v: &T) -> Vec<u8> {
    let raw = encode(v);
    zstd::bulk::compress(&raw, 3).expect("zstd compression of an in-memory buffer cannot fail")
}

fn decode<T: DeserializeOwned>(table: &'static str, key: &str, bytes: &[u8]) -> Result<T, DbError> {
    postcard::from_bytes(bytes).map_err(|e| DbError::Decode {
        table,
        key: key.to_string(),
        reason: e.to_string(),
    })
}

/// Skeletons as schema version 2 stored them (raw bytes inline), read when migrating.
mod v2 {
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize)]
    pub enum Segment {
        Raw(#[serde(with = "serde_bytes")] Vec<u8>),
        Payload(u32),
    }

    #[derive(Serialize, Deserialize)]
    pub struct Skeleton {
        pub segments: Vec<Segment>,
    }
}

/// Upper bound on a decompressed TOC or skeleton record (guards against a corrupted database).
const MAX_RECORD: usize = 4 << 30;

fn decode_compressed<T: DeserializeOwned>(
    table: &'static str,
    key: &str,
    bytes: &[u8],
) -> Result<T, DbError> {
    let mut raw = Vec::new();
    zstd::stream::copy_decode(bytes, &mut raw).map_err(|e| DbError::Decode {
        table,
        key: key.to_string(),
        reason: e.to_string(),
    })?;
    if raw.len() > MAX_RECORD {
        return Err(DbError::Decode {
            table,
            key: key.to_string(),
            reason: "record too large".into(),
        });
    }
    decode(table, key, &raw)
}

/// Read access shared by read and write transactions.
pub trait DbView {
    #[doc(hidden)]
    fn get_raw(&self, table: Tbl, key: &str) -> Result<Option<Vec<u8>>, DbError>;
    #[doc(hidden)]
    fn all_raw(&self, table: Tbl) -> Result<Vec<(String, Vec<u8>)>, DbError>;

    fn image(&self, manifest: &Digest) -> Result<Option<ImageRecord>, DbError> {
        let key = manifest.to_string();
        self.get_raw(IMAGES, &key)?
            .map(|b| decode("images", &key, &b))
            .transpose()
    }
    fn images(&self) -> Result<Vec<ImageRecord>, DbError> {
        self.all_raw(IMAGES)?
            .into_iter()
            .map(|(k, v)| decode("images", &k, &v))
            .collect()
    }
    /// The image a name points at.
    fn resolve_name(&self, name: &str) -> Result<Option<Digest>, DbError> {
        match self.get_raw(REFS, name)? {
            None => Ok(None),
            Some(v) => std::str::from_utf8(&v)
                .ok()
                .and_then(|s| s.parse().ok())
                .map(Some)
                .ok_or_else(|| DbError::Decode {
                    table: "refs",
                    key: name.to_string(),
                    reason: "bad digest".into(),
                }),
        }
    }
    /// All names with the image each points at.
    fn names(&self) -> Result<Vec<(String, Digest)>, DbError> {
        self.all_raw(REFS)?
            .into_iter()
            .map(|(k, v)| {
                let d = std::str::from_utf8(&v)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| DbError::Decode {
                        table: "refs",
                        key: k.clone(),
                        reason: "bad digest".into(),
                    })?;
                Ok((k, d))
            })
            .collect()
    }
    fn layer(&self, diff_id: &Digest) -> Result<Option<LayerRecord>, DbError> {
        let key = diff_id.to_string();
        self.get_raw(LAYERS, &key)?
            .map(|b| decode("layers", &key, &b))
            .transpose()
    }
    fn layers(&self) -> Result<Vec<LayerRecord>, DbError> {
        self.all_raw(LAYERS)?
            .into_iter()
            .map(|(k, v)| decode("layers", &k, &v))
            .collect()
    }
    fn toc(&self, diff_id: &Digest) -> Result<Option<Vec<Entry>>, DbError> {
        let key = diff_id.to_string();
        let Some(raw) = self.get_raw(LAYER_TOCS, &key)? else {
            return Ok(None);
        };
        let record: TocRecord = decode("layer_tocs", &key, &raw)?;
        let shape = self.metadata_blob(&record.shape, &key)?;
        let mut entries: Vec<Entry> =
            decode_compressed("metadata_blobs", &record.shape.to_string(), &shape)?;
        let mut next = entries.iter_mut();
        for chunk in &record.digest_chunks {
            let digests: Vec<Option<Digest>> = decode(
                "metadata_blobs",
                &chunk.to_string(),
                &self.metadata_blob(chunk, &key)?,
            )?;
            for d in digests {
                let entry = next.next().ok_or_else(|| DbError::Decode {
                    table: "layer_tocs",
                    key: key.clone(),
                    reason: "more file digests than entries".into(),
                })?;
                entry.digest = d;
            }
        }
        if next.next().is_some() {
            return Err(DbError::Decode {
                table: "layer_tocs",
                key,
                reason: "fewer file digests than entries".into(),
            });
        }
        Ok(Some(entries))
    }
    /// A metadata blob that layer `owner` refers to.
    #[doc(hidden)]
    fn metadata_blob(&self, digest: &Digest, owner: &str) -> Result<Vec<u8>, DbError> {
        self.get_raw(METADATA_BLOBS, &digest.to_string())?
            .ok_or_else(|| DbError::Decode {
                table: "metadata_blobs",
                key: digest.to_string(),
                reason: format!("missing, but layer {owner} refers to it"),
            })
    }
    /// Metadata blobs whose content does not hash to their key (for fsck).
    fn damaged_metadata_blobs(&self) -> Result<Vec<String>, DbError> {
        Ok(self
            .all_raw(METADATA_BLOBS)?
            .into_iter()
            .filter(|(k, v)| Digest::of(v).to_string() != *k)
            .map(|(k, _)| k)
            .collect())
    }
    /// DiffIDs of every stored table of contents (for fsck).
    fn toc_keys(&self) -> Result<Vec<String>, DbError> {
        Ok(self
            .all_raw(LAYER_TOCS)?
            .into_iter()
            .map(|(k, _)| k)
            .collect())
    }
    fn skeleton(&self, diff_id: &Digest) -> Result<Option<Skeleton>, DbError> {
        let key = diff_id.to_string();
        let Some(raw) = self.get_raw(LAYER_SKELETONS, &key)? else {
            return Ok(None);
        };
        let blob: Digest = decode("layer_skeletons", &key, &raw)?;
        decode(
            "metadata_blobs",
            &blob.to_string(),
            &self.metadata_blob(&blob, &key)?,
        )
        .map(Some)
    }
    /// The DiffID of a compressed blob zstore has imported.
    fn blob_diff_id(&self, blob: &Digest) -> Result<Option<Digest>, DbError> {
        let key = blob.to_string();
        self.get_raw(BLOBS, &key)?
            .map(|b| decode("blobs", &key, &b))
            .transpose()
    }
    fn blobs(&self) -> Result<Vec<(String, Digest)>, DbError> {
        self.all_raw(BLOBS)?
            .into_iter()
            .map(|(k, v)| Ok((k.clone(), decode("blobs", &k, &v)?)))
            .collect()
    }
    /// The DiffID hash states at each file of a stored layer.
    fn midstates(&self, diff_id: &Digest) -> Result<Option<Vec<crate::digest::Midstate>>, DbError> {
        let key = diff_id.to_string();
        self.get_raw(LAYER_MIDSTATES, &key)?
            .map(|b| decode_compressed("layer_midstates", &key, &b))
            .transpose()
    }
    /// A stored layer with entries of this shape.
    fn layer_by_shape(&self, shape: &Digest) -> Result<Option<Digest>, DbError> {
        self.layer_by_shape_key(&shape.to_string())
    }
    #[doc(hidden)]
    fn layer_by_shape_key(&self, key: &str) -> Result<Option<Digest>, DbError> {
        self.get_raw(LAYER_SHAPES, key)?
            .map(|b| decode("layer_shapes", key, &b))
            .transpose()
    }
    fn checkouts(&self) -> Result<Vec<CheckoutRecord>, DbError> {
        self.all_raw(CHECKOUTS)?
            .into_iter()
            .map(|(k, v)| decode("checkouts", &k, &v))
            .collect()
    }
}

fn get_from(
    t: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> Result<Option<Vec<u8>>, DbError> {
    Ok(t.get(key).map_err(redb_err)?.map(|g| g.value().to_vec()))
}

fn all_from(
    t: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<Vec<(String, Vec<u8>)>, DbError> {
    let mut out = Vec::new();
    for item in t.iter().map_err(redb_err)? {
        let (k, v) = item.map_err(redb_err)?;
        out.push((k.value().to_string(), v.value().to_vec()));
    }
    Ok(out)
}

/// A read transaction.
pub struct DbRead(redb::ReadTransaction);

impl DbView for DbRead {
    fn get_raw(&self, table: Tbl, key: &str) -> Result<Option<Vec<u8>>, DbError> {
        get_from(&self.0.open_table(table).map_err(redb_err)?, key)
    }
    fn all_raw(&self, table: Tbl) -> Result<Vec<(String, Vec<u8>)>, DbError> {
        all_from(&self.0.open_table(table).map_err(redb_err)?)
    }
}

/// A write transaction.
pub struct DbWrite(redb::WriteTransaction);

impl DbView for DbWrite {
    fn get_raw(&self, table: Tbl, key: &str) -> Result<Option<Vec<u8>>, DbError> {
        get_from(&self.0.open_table(table).map_err(redb_err)?, key)
    }
    fn all_raw(&self, table: Tbl) -> Result<Vec<(String, Vec<u8>)>, DbError> {
        all_from(&self.0.open_table(table).map_err(redb_err)?)
    }
}

impl DbWrite {
    fn put(&self, table: Tbl, key: &str, value: &[u8]) -> Result<(), DbError> {
        self.0
            .open_table(table)
            .map_err(redb_err)?
            .insert(key, value)
            .map_err(redb_err)?;
        Ok(())
    }
    fn del(&self, table: Tbl, key: &str) -> Result<bool, DbError> {
        Ok(self
            .0
            .open_table(table)
            .map_err(redb_err)?
            .remove(key)
            .map_err(redb_err)?
            .is_some())
    }

    pub fn put_image(&self, image: &ImageRecord) -> Result<(), DbError> {
        self.put(IMAGES, &image.manifest_digest.to_string(), &encode(image))
    }
    pub fn remove_image(&self, manifest: &Digest) -> Result<bool, DbError> {
        self.del(IMAGES, &manifest.to_string())
    }
    pub fn set_name(&self, name: &str, manifest: &Digest) -> Result<(), DbError> {
        self.put(REFS, name, manifest.to_string().as_bytes())
    }
    pub fn remove_name(&self, name: &str) -> Result<bool, DbError> {
        self.del(REFS, name)
    }
    /// Records a layer: its TOC, skeleton and DiffID hash states (which only the newest layer
    /// of each shape keeps: it is the one a later pull of that shape resumes from).
    pub fn put_layer(
        &self,
        record: &LayerRecord,
        toc: &[Entry],
        skeleton: &Skeleton,
        states: &[crate::digest::Midstate],
    ) -> Result<(), DbError> {
        let key = record.diff_id.to_string();
        let shape = crate::layer::entry::shape_digest(toc).to_string();
        if let Some(previous) = self.layer_by_shape_key(&shape)?
            && previous != record.diff_id
        {
            self.del(LAYER_MIDSTATES, &previous.to_string())?;
        }
        self.put(LAYER_SHAPES, &shape, &encode(&record.diff_id))?;
        self.put_toc(&key, toc)?;
        self.put_skeleton(&key, skeleton)?;
        if states.is_empty() {
            self.del(LAYER_MIDSTATES, &key)?;
        } else {
            self.put(LAYER_MIDSTATES, &key, &encode_compressed(&states))?;
        }
        self.put(LAYERS, &key, &encode(record))
    }
    /// Stores a value as a metadata blob (once, however many layers refer to it).
    fn put_metadata_blob(&self, bytes: &[u8]) -> Result<Digest, DbError> {
        let digest = Digest::of(bytes);
        let key = digest.to_string();
        if self.get_raw(METADATA_BLOBS, &key)?.is_none() {
            self.put(METADATA_BLOBS, &key, bytes)?;
        }
        Ok(digest)
    }
    fn put_toc(&self, key: &str, toc: &[Entry]) -> Result<(), DbError> {
        let shape: Vec<Entry> = toc
            .iter()
            .map(|e| Entry {
                digest: None,
                ..e.clone()
            })
            .collect();
        let shape = self.put_metadata_blob(&encode_compressed(&shape))?;
        let digests: Vec<Option<Digest>> = toc.iter().map(|e| e.digest).collect();
        let digest_chunks = digests
            .chunks(DIGEST_CHUNK)
            .map(|c| self.put_metadata_blob(&encode(&c)))
            .collect::<Result<Vec<_>, _>>()?;
        self.put(
            LAYER_TOCS,
            key,
            &encode(&TocRecord {
                shape,
                digest_chunks,
            }),
        )
    }
    fn put_skeleton(&self, key: &str, skeleton: &Skeleton) -> Result<(), DbError> {
        // The skeleton's bytes are compressed already.
        let blob = self.put_metadata_blob(&encode(skeleton))?;
        self.put(LAYER_SKELETONS, key, &encode(&blob))
    }
    /// Removes the metadata blobs no layer refers to any more; returns how many.
    pub fn remove_unreferenced_metadata(&self, dry_run: bool) -> Result<u64, DbError> {
        let mut used: HashSet<String> = HashSet::new();
        for (key, raw) in self.all_raw(LAYER_TOCS)? {
            let record: TocRecord = decode("layer_tocs", &key, &raw)?;
            used.insert(record.shape.to_string());
            used.extend(record.digest_chunks.iter().map(Digest::to_string));
        }
        for (key, raw) in self.all_raw(LAYER_SKELETONS)? {
            let blob: Digest = decode("layer_skeletons", &key, &raw)?;
            used.insert(blob.to_string());
        }
        let mut removed = 0;
        for (key, _) in self.all_raw(METADATA_BLOBS)? {
            if !used.contains(&key) {
                removed += 1;
                if !dry_run {
                    self.del(METADATA_BLOBS, &key)?;
                }
            }
        }
        Ok(removed)
    }
    pub fn remove_layer(&self, diff_id: &Digest) -> Result<bool, DbError> {
        let key = diff_id.to_string();
        if let Some(toc) = self.toc(diff_id)? {
            let shape = crate::layer::entry::shape_digest(&toc).to_string();
            if self.layer_by_shape_key(&shape)? == Some(*diff_id) {
                self.del(LAYER_SHAPES, &shape)?;
            }
        }
        self.del(LAYER_TOCS, &key)?;
        self.del(LAYER_SKELETONS, &key)?;
        self.del(LAYER_MIDSTATES, &key)?;
        self.del(LAYERS, &key)
    }
    pub fn put_blob(&self, blob: &Digest, diff_id: &Digest) -> Result<(), DbError> {
        self.put(BLOBS, &blob.to_string(), &encode(diff_id))
    }
    pub fn remove_blob(&self, blob_key: &str) -> Result<bool, DbError> {
        self.del(BLOBS, blob_key)
    }
    pub fn put_checkout(&self, c: &CheckoutRecord) -> Result<(), DbError> {
        self.put(CHECKOUTS, &c.path, &encode(c))
    }
    pub fn remove_checkout(&self, path: &str) -> Result<bool, DbError> {
        self.del(CHECKOUTS, path)
    }
    /// Test and repair hook: deletes a table-of-contents record only.
    #[doc(hidden)]
    pub fn remove_toc_only(&self, diff_id: &Digest) -> Result<bool, DbError> {
        self.del(LAYER_TOCS, &diff_id.to_string())
    }
    /// Makes every change of this transaction durable and visible.
    pub fn commit(self) -> Result<(), DbError> {
        self.0.commit().map_err(redb_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::entry::EntryKind;

    fn entries() -> Vec<Entry> {
        let file = |name: &str, content: &[u8]| Entry {
            path: name.as_bytes().to_vec(),
            kind: EntryKind::Regular,
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: crate::layer::tar::Timestamp {
                secs: 1_700_000_000,
                nanos: 0,
            },
            size: content.len() as u64,
            link_target: Vec::new(),
            dev_major: 0,
            dev_minor: 0,
            xattrs: Default::default(),
            digest: Some(Digest::of(content)),
        };
        vec![file("a", b"one"), file("b", b"two")]
    }

    /// A database at `version` holding one layer in that version's form.
    fn old_database(path: &Path, version: u32, diff_id: &Digest) {
        let db = redb::Database::create(path).unwrap();
        let w = db.begin_write().unwrap();
        for t in ALL_TABLES
            .iter()
            .filter(|t| t.name() != METADATA_BLOBS.name())
        {
            w.open_table(*t).unwrap();
        }
        w.open_table(META)
            .unwrap()
            .insert("schema", &version.to_le_bytes()[..])
            .unwrap();
        let key = diff_id.to_string();
        let skeleton = if version == 2 {
            encode_compressed(&v2::Skeleton {
                segments: vec![
                    v2::Segment::Raw(vec![1, 2, 3]),
                    v2::Segment::Payload(0),
                    v2::Segment::Raw(vec![4]),
                    v2::Segment::Payload(1),
                ],
            })
        } else {
            encode(&new_skeleton())
        };
        w.open_table(LAYER_SKELETONS)
            .unwrap()
            .insert(key.as_str(), skeleton.as_slice())
            .unwrap();
        w.open_table(LAYER_TOCS)
            .unwrap()
            .insert(key.as_str(), encode_compressed(&entries()).as_slice())
            .unwrap();
        w.commit().unwrap();
    }

    fn new_skeleton() -> Skeleton {
        Skeleton::from_parts([
            Part::Raw(vec![1, 2, 3]),
            Part::Payload(0),
            Part::Raw(vec![4]),
            Part::Payload(1),
        ])
        .unwrap()
    }

    #[test]
    fn older_databases_are_migrated_on_open() {
        for version in [2, 3] {
            let dir = tempfile::tempdir().unwrap();
            let (path, lock) = (dir.path().join("db.redb"), dir.path().join("db.lock"));
            let diff_id = Digest::of(b"layer");
            old_database(&path, version, &diff_id);
            let db = Db::open(&path, &lock).unwrap();
            let r = db.read().unwrap();
            assert_eq!(r.toc(&diff_id).unwrap().unwrap(), entries(), "{version}");
            assert_eq!(
                r.skeleton(&diff_id).unwrap().unwrap(),
                new_skeleton(),
                "{version}"
            );
            drop(r);
            drop(db);
            // Opened again (read-only this time), it is at the current version.
            let reader = DbReader::open(&path, &lock).unwrap();
            assert!(matches!(reader, DbReader::ReadOnly { .. }), "{version}");
            assert_eq!(
                reader.read().unwrap().toc(&diff_id).unwrap().unwrap(),
                entries()
            );
        }
    }

    #[test]
    fn layers_of_one_shape_share_their_metadata_and_gc_keeps_what_is_used() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("db.redb"), &dir.path().join("db.lock")).unwrap();
        let mut second = entries();
        second[1].digest = Some(Digest::of(b"changed"));
        let record = |toc: &[Entry]| LayerRecord {
            diff_id: Digest::of(&encode(&toc.to_vec())),
            tar_size: 0,
            entries: toc.len() as u64,
            files: 2,
            logical_bytes: 6,
        };
        let (r1, r2) = (record(&entries()), record(&second));
        let w = db.write().unwrap();
        w.put_layer(&r1, &entries(), &new_skeleton(), &[]).unwrap();
        let after_one = w.all_raw(METADATA_BLOBS).unwrap().len();
        w.put_layer(&r2, &second, &new_skeleton(), &[]).unwrap();
        // Shape and skeleton are shared; only the digest chunk differs.
        assert_eq!(w.all_raw(METADATA_BLOBS).unwrap().len(), after_one + 1);
        assert_eq!(w.toc(&r2.diff_id).unwrap().unwrap(), second);
        assert_eq!(w.remove_unreferenced_metadata(false).unwrap(), 0);
        w.remove_layer(&r1.diff_id).unwrap();
        assert_eq!(w.remove_unreferenced_metadata(false).unwrap(), 1);
        assert_eq!(w.toc(&r2.diff_id).unwrap().unwrap(), second);
        assert_eq!(w.skeleton(&r2.diff_id).unwrap().unwrap(), new_skeleton());
        assert!(w.damaged_metadata_blobs().unwrap().is_empty());
        w.commit().unwrap();
    }
}
