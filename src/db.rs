//! The metadata database (redb): images, names, layers with their tables of contents and tar
//! skeletons, compressed-blob → layer mappings and checkouts.
//!
//! redb locks its file exclusively while open, so zstore opens the database only for short
//! transactions, serialised across processes by a lock file (`db.lock`). Long work (downloads,
//! checkouts) never holds it.

use std::fs::File;
use std::path::Path;

use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::digest::Digest;
use crate::layer::entry::Entry;
use crate::layer::skeleton::{Part, Skeleton};

/// Version of the database schema; bumped on incompatible changes. Version 2 stores are
/// migrated when opened (their skeletons kept raw bytes inline).
pub const SCHEMA_VERSION: u32 = 3;

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
const ALL_TABLES: [Tbl; 10] = [
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

/// An open database, holding the cross-process lock until dropped.
pub struct Db {
    db: redb::Database,
    _lock: File,
}

impl Db {
    /// Opens (creating if needed) the database at `path`, first taking the exclusive `lock_path`
    /// file lock, waiting for other processes' short transactions.
    pub fn open(path: &Path, lock_path: &Path) -> Result<Db, DbError> {
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(lock_path)
            .map_err(DbError::Lock)?;
        lock.lock().map_err(DbError::Lock)?;
        let db = redb::Database::create(path).map_err(redb_err)?;
        let this = Db { db, _lock: lock };
        this.init()?;
        Ok(this)
    }

    fn init(&self) -> Result<(), DbError> {
        let mut migrate = false;
        {
            let r = self.db.begin_read().map_err(redb_err)?;
            let complete = ALL_TABLES.iter().all(|t| r.open_table(*t).is_ok());
            if let Ok(meta) = r.open_table(META)
                && let Some(v) = meta.get("schema").map_err(redb_err)?
            {
                let found = u32::from_le_bytes(v.value().try_into().unwrap_or([0xff; 4]));
                if found == 2 && complete {
                    migrate = true;
                } else if found != SCHEMA_VERSION {
                    return Err(DbError::Schema { found });
                } else if complete {
                    return Ok(());
                }
            }
        }
        if migrate {
            return self.migrate_from_v2();
        }
        let w = self.db.begin_write().map_err(redb_err)?;
        for t in ALL_TABLES {
            w.open_table(t).map_err(redb_err)?;
        }
        w.open_table(META)
            .map_err(redb_err)?
            .insert("schema", &SCHEMA_VERSION.to_le_bytes()[..])
            .map_err(redb_err)?;
        w.commit().map_err(redb_err)?;
        Ok(())
    }

    /// Rewrites every skeleton in the current form, in one transaction (a crash leaves the
    /// version 2 database as it was).
    fn migrate_from_v2(&self) -> Result<(), DbError> {
        let w = self.db.begin_write().map_err(redb_err)?;
        {
            let mut table = w.open_table(LAYER_SKELETONS).map_err(redb_err)?;
            let mut old = Vec::new();
            for item in table.iter().map_err(redb_err)? {
                let (k, v) = item.map_err(redb_err)?;
                old.push((k.value().to_string(), v.value().to_vec()));
            }
            for (key, bytes) in old {
                let v2: v2::Skeleton = decode_compressed("layer_skeletons", &key, &bytes)?;
                let skeleton = Skeleton::from_parts(v2.segments.into_iter().map(|s| match s {
                    v2::Segment::Raw(b) => Part::Raw(b),
                    v2::Segment::Payload(i) => Part::Payload(i),
                }))
                .map_err(|e| DbError::Decode {
                    table: "layer_skeletons",
                    key: key.clone(),
                    reason: e.to_string(),
                })?;
                table
                    .insert(key.as_str(), encode(&skeleton).as_slice())
                    .map_err(redb_err)?;
            }
        }
        w.open_table(META)
            .map_err(redb_err)?
            .insert("schema", &SCHEMA_VERSION.to_le_bytes()[..])
            .map_err(redb_err)?;
        w.commit().map_err(redb_err)?;
        Ok(())
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
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(lock_path)
            .map_err(DbError::Lock)?;
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
        self.get_raw(LAYER_TOCS, &key)?
            .map(|b| decode_compressed("layer_tocs", &key, &b))
            .transpose()
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
        self.get_raw(LAYER_SKELETONS, &key)?
            .map(|b| decode("layer_skeletons", &key, &b))
            .transpose()
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
    /// Stores a layer with its table of contents and skeleton.
    /// Stores the DiffID hash states at each file of a layer.
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
        self.put(LAYER_TOCS, &key, &encode_compressed(&toc))?;
        // The skeleton's bytes are compressed already.
        self.put(LAYER_SKELETONS, &key, &encode(skeleton))?;
        if states.is_empty() {
            self.del(LAYER_MIDSTATES, &key)?;
        } else {
            self.put(LAYER_MIDSTATES, &key, &encode_compressed(&states))?;
        }
        self.put(LAYERS, &key, &encode(record))
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

    #[test]
    fn version_2_skeletons_are_migrated_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let (path, lock) = (dir.path().join("db.redb"), dir.path().join("db.lock"));
        let diff_id = Digest::of(b"layer");
        {
            let db = redb::Database::create(&path).unwrap();
            let w = db.begin_write().unwrap();
            for t in ALL_TABLES {
                w.open_table(t).unwrap();
            }
            w.open_table(META)
                .unwrap()
                .insert("schema", &2u32.to_le_bytes()[..])
                .unwrap();
            let old = v2::Skeleton {
                segments: vec![
                    v2::Segment::Raw(vec![1, 2, 3]),
                    v2::Segment::Payload(0),
                    v2::Segment::Raw(vec![4]),
                ],
            };
            w.open_table(LAYER_SKELETONS)
                .unwrap()
                .insert(
                    diff_id.to_string().as_str(),
                    encode_compressed(&old).as_slice(),
                )
                .unwrap();
            w.commit().unwrap();
        }
        let db = Db::open(&path, &lock).unwrap();
        let skeleton = db.read().unwrap().skeleton(&diff_id).unwrap().unwrap();
        let parts: Vec<Part> = skeleton.parts().collect::<std::io::Result<_>>().unwrap();
        assert_eq!(
            parts,
            vec![
                Part::Raw(vec![1, 2, 3]),
                Part::Payload(0),
                Part::Raw(vec![4])
            ]
        );
        drop(db);
        // Opening again finds the current version.
        let db = Db::open(&path, &lock).unwrap();
        assert!(db.read().unwrap().skeleton(&diff_id).unwrap().is_some());
    }
}
