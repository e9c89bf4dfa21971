//! The store on disk: content objects, the metadata database, the store lock and the
//! operations on them (checkout, gc, fsck, df).
//!
//! Layout under the root:
//! ```text
//! zstore-store              format marker ("zstore store format N")
//! lock                      store lock (shared: pull/checkout/fsck; exclusive: gc)
//! db.redb, db.lock          metadata database and its cross-process lock
//! objects/ab/<hex>          canonical object: the content whose SHA-256 is <hex>
//! objects/ab/<hex>.<key>    variant: same content with the metadata whose key is <key>;
//!                           the canonical name is a hardlink to one of the variants
//! tmp/                      staging of running pulls, temp files (gc empties it)
//! ```

pub mod checkout;
pub mod df;
pub mod fsck;
pub mod gc;
pub mod lock;
pub mod metadata;
pub mod objects;
pub mod staging;

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::db::{Db, DbError, DbReader, DbView, ImageRecord};
use crate::digest::Digest;
use crate::layer::flatten::FlattenError;
use crate::layer::import::ImportError;
use crate::layer::skeleton::SkeletonError;
use crate::progress::Progress;
use crate::sys;

pub use lock::{LockMode, StoreLock};
pub use metadata::{MetaKey, ObjectMeta, Policy};

/// Version of the on-disk layout.
pub const FORMAT_VERSION: u32 = 1;
const MARKER: &str = "zstore-store";

/// Errors of store operations.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{context}: {source}")]
    Io { context: String, source: io::Error },
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("{path} is not a zstore store (no {MARKER} marker, and the directory is not empty)")]
    NotAStore { path: PathBuf },
    #[error("store {path} has format {found:?}; this zstore understands format {FORMAT_VERSION}")]
    Format { path: PathBuf, found: String },
    #[error("no image {0:?} in the store (see `zstore images`)")]
    ImageNotFound(String),
    #[error("{query:?} matches several images: {matches:?}")]
    AmbiguousImage { query: String, matches: Vec<String> },
    #[error(transparent)]
    Import(#[from] ImportError),
    #[error(transparent)]
    Flatten(#[from] FlattenError),
    #[error(transparent)]
    Skeleton(#[from] SkeletonError),
    #[error("the store is inconsistent: {0} (run `zstore fsck`)")]
    Inconsistent(String),
    #[error("checkout destination {0} exists and is not an empty directory")]
    DestinationNotEmpty(PathBuf),
    #[error(
        "reflink checkout impossible: the filesystem of {dest} cannot clone files from the store at {store} ({source}); use --mode hardlink or --mode copy"
    )]
    ReflinkUnsupported {
        dest: PathBuf,
        store: PathBuf,
        source: io::Error,
    },
    #[error(
        "hardlink checkout impossible: {dest} and the store at {store} are on different filesystems ({source}); use --mode copy"
    )]
    HardlinkUnsupported {
        dest: PathBuf,
        store: PathBuf,
        source: io::Error,
    },
    #[error("layer {diff_id}: rebuilt tar has digest {actual}, expected {diff_id}")]
    ExportDigest { diff_id: Digest, actual: Digest },
}

/// Adds a description of what was being done to an I/O error.
pub trait IoContext<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T, StoreError>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T, StoreError> {
        self.map_err(|source| StoreError::Io {
            context: context(),
            source,
        })
    }
}

/// An open store.
pub struct Store {
    root: PathBuf,
    objects: OwnedFd,
    policy: Policy,
}

impl Store {
    /// Opens the store at `root`, creating it if the directory is missing or empty.
    pub fn open(root: &Path) -> Result<Store, StoreError> {
        let marker = root.join(MARKER);
        let text = match std::fs::read_to_string(&marker) {
            Ok(s) => s,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Self::create(root)?;
                std::fs::read_to_string(&marker).ctx(|| format!("reading {}", marker.display()))?
            }
            Err(e) => return Err(e).ctx(|| format!("reading {}", marker.display())),
        };
        let mut lines = text.lines();
        let expected = format!("zstore store format {FORMAT_VERSION}");
        let first = lines.next().unwrap_or("").trim();
        if first != expected {
            return Err(StoreError::Format {
                path: root.to_path_buf(),
                found: first.to_string(),
            });
        }
        // Object variant keys depend on whether ownership is kept, so that choice belongs to the
        // store (made at creation), not to whoever runs a command on it.
        let preserve = match lines.next().map(str::trim) {
            Some("ownership preserve") => true,
            Some("ownership ignore") => false,
            other => {
                return Err(StoreError::Format {
                    path: root.to_path_buf(),
                    found: format!("{first} / {}", other.unwrap_or("(no ownership line)")),
                });
            }
        };
        let root = root
            .canonicalize()
            .ctx(|| format!("resolving {}", root.display()))?;
        let objects = sys::open_dir(&root.join("objects"))
            .ctx(|| format!("opening {}/objects", root.display()))?;
        let policy = Policy {
            preserve_ownership: preserve,
            all_xattrs: preserve,
            device_nodes: sys::is_root(),
        };
        Ok(Store {
            root,
            objects,
            policy,
        })
    }

    fn create(root: &Path) -> Result<(), StoreError> {
        let ctx = || format!("creating store at {}", root.display());
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(root)
            .ctx(ctx)?;
        // Concurrent first uses serialise on a lock of the directory itself; the loser finds
        // the marker afterwards.
        let dir = File::open(root).ctx(ctx)?;
        dir.lock().ctx(ctx)?;
        if root.join(MARKER).exists() {
            return Ok(());
        }
        // Only what an interrupted creation leaves may be there already.
        const OURS: [&str; 5] = ["objects", "tmp", "lock", "db.lock", "db.redb"];
        for ent in std::fs::read_dir(root).ctx(ctx)? {
            let name = ent.ctx(ctx)?.file_name();
            if !OURS.iter().any(|o| name.as_os_str() == *o) {
                return Err(StoreError::NotAStore {
                    path: root.to_path_buf(),
                });
            }
        }
        // The store holds setuid binaries and private files of images: only its owner may look.
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o700)).ctx(ctx)?;
        for i in 0..=255u8 {
            std::fs::DirBuilder::new()
                .recursive(true)
                .create(root.join("objects").join(format!("{i:02x}")))
                .ctx(ctx)?;
        }
        std::fs::create_dir_all(root.join("tmp")).ctx(ctx)?;
        // The marker goes last, atomically: a half-created store has none and is completed.
        let tmp = root.join("tmp").join(MARKER);
        let ownership = if sys::is_root() { "preserve" } else { "ignore" };
        std::fs::write(
            &tmp,
            format!("zstore store format {FORMAT_VERSION}\nownership {ownership}\n"),
        )
        .ctx(ctx)?;
        std::fs::rename(&tmp, root.join(MARKER)).ctx(ctx)?;
        sys::syncfs(&dir).ctx(ctx)?;
        Ok(())
    }

    /// The store's root directory (absolute).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// What metadata this process applies.
    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// The objects directory.
    pub fn objects_dir(&self) -> PathBuf {
        self.root.join("objects")
    }

    pub(crate) fn objects_fd(&self) -> BorrowedFd<'_> {
        self.objects.as_fd()
    }

    /// The directory for temporary files and staging.
    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// Takes the store lock (see [`lock`]).
    pub fn lock(&self, mode: LockMode, progress: &dyn Progress) -> Result<StoreLock, StoreError> {
        lock::acquire(&self.root.join("lock"), mode, progress)
            .ctx(|| "taking the store lock".to_string())
    }

    /// Opens the metadata database for reading only (cheaper than [`Store::db`]).
    pub fn db_reader(&self) -> Result<DbReader, StoreError> {
        Ok(DbReader::open(
            &self.root.join("db.redb"),
            &self.root.join("db.lock"),
        )?)
    }

    /// Opens the metadata database for a short read-write transaction.
    pub fn db(&self) -> Result<Db, StoreError> {
        Ok(Db::open(
            &self.root.join("db.redb"),
            &self.root.join("db.lock"),
        )?)
    }

    /// Opens the canonical object of a content digest.
    pub fn open_object(&self, digest: &Digest) -> io::Result<File> {
        sys::open_file_at(self.objects_fd(), objects::object_name(digest).as_bytes())
    }

    /// Whether an object variant exists.
    pub fn has_variant(&self, digest: &Digest, key: MetaKey) -> bool {
        sys::exists_at(
            self.objects_fd(),
            objects::variant_name(digest, key).as_bytes(),
        )
    }

    /// Whether the store holds content with this digest.
    pub fn has_object(&self, digest: &Digest) -> bool {
        sys::exists_at(self.objects_fd(), objects::object_name(digest).as_bytes())
    }

    /// Finds a stored image by name, digest or unique digest prefix (12+ hex digits).
    pub fn find_image(&self, db: &impl DbView, query: &str) -> Result<ImageRecord, StoreError> {
        if let Some(d) = db.resolve_name(query)? {
            return db.image(&d)?.ok_or_else(|| {
                StoreError::Inconsistent(format!("name {query} points at missing image {d}"))
            });
        }
        for candidate in crate::image::reference::local_name_candidates(query) {
            if let Some(d) = db.resolve_name(&candidate)? {
                return db.image(&d)?.ok_or_else(|| {
                    StoreError::Inconsistent(format!(
                        "name {candidate} points at missing image {d}"
                    ))
                });
            }
        }
        let hex = query.strip_prefix("sha256:").unwrap_or(query);
        if hex.len() >= 12 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            let hex = hex.to_ascii_lowercase();
            let matches: Vec<ImageRecord> = db
                .images()?
                .into_iter()
                .filter(|i| i.manifest_digest.hex().starts_with(&hex))
                .collect();
            return match matches.len() {
                1 => Ok(matches.into_iter().next().expect("one match")),
                0 => Err(StoreError::ImageNotFound(query.to_string())),
                _ => Err(StoreError::AmbiguousImage {
                    query: query.to_string(),
                    matches: matches
                        .iter()
                        .map(|i| i.manifest_digest.to_string())
                        .collect(),
                }),
            };
        }
        Err(StoreError::ImageNotFound(query.to_string()))
    }
}
