//! Staging of new objects during a pull. New files are written under `tmp/stage-*`, hashed and
//! given their metadata there, and become visible in `objects/` only through
//! [`Staging::publish`], which the pull calls after every digest of the image (blob, DiffID)
//! checked out. A failed or killed pull leaves nothing in `objects/`; its staging directory is
//! removed on drop or by the next gc.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;

use crate::digest::{Digest, Hasher};
use crate::layer::entry::Entry;
use crate::layer::import::{ObjectSink, StoredFile};
use crate::store::metadata::{MetaKey, ObjectMeta};
use crate::store::objects::{object_name, variant_name};
use crate::store::{IoContext, Store, StoreError};
use crate::sys;

/// Files up to this size are hashed in memory and written only if the store lacks them.
const IN_MEMORY_LIMIT: u64 = 1 << 20;

/// A staging area for one pull.
pub struct Staging<'s> {
    store: &'s Store,
    path: PathBuf,
    dir: OwnedFd,
    next_name: u64,
    /// Variants this staging will publish, by (content, metadata).
    staged: HashMap<(Digest, MetaKey), String>,
    /// Some staged file for each new content (a source for further variants).
    staged_content: HashMap<Digest, String>,
}

/// What [`Staging::publish`] did.
#[derive(Clone, Copy, Debug, Default)]
pub struct PublishStats {
    /// Variants newly linked into `objects/`.
    pub new_variants: u64,
    /// Contents that had no canonical object before.
    pub new_objects: u64,
    /// Time spent making them durable (`syncfs`).
    pub sync_seconds: f64,
}

impl<'s> Staging<'s> {
    /// Creates an empty staging directory.
    pub fn new(store: &'s Store) -> Result<Staging<'s>, StoreError> {
        let base = store.tmp_dir();
        let mut n = 0u32;
        let path = loop {
            let p = base.join(format!("stage-{}-{}-{n}", std::process::id(), now_nanos()));
            match std::fs::create_dir(&p) {
                Ok(()) => break p,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && n < 100 => n += 1,
                Err(e) => {
                    return Err(e)
                        .ctx(|| format!("creating staging directory in {}", base.display()));
                }
            }
        };
        let dir = sys::open_dir(&path).ctx(|| format!("opening {}", path.display()))?;
        Ok(Staging {
            store,
            path,
            dir,
            next_name: 0,
            staged: HashMap::new(),
            staged_content: HashMap::new(),
        })
    }

    fn new_file(&mut self) -> io::Result<(String, File)> {
        self.next_name += 1;
        let name = format!("f{}", self.next_name);
        let f = sys::create_file_at(self.dir.as_fd(), name.as_bytes())?;
        Ok((name, f))
    }

    /// A new staged file sharing extents with a file that already holds `digest`'s content
    /// (staged or in the store), where the filesystem can reflink; `None` otherwise.
    fn try_reflink(&mut self, digest: &Digest) -> io::Result<Option<(String, File)>> {
        let source = match self.staged_content.get(digest) {
            Some(name) => sys::open_file_at(self.dir.as_fd(), name.as_bytes()).ok(),
            None => self.store.open_object(digest).ok(),
        };
        let Some(src) = source else { return Ok(None) };
        let (name, f) = self.new_file()?;
        match sys::ficlone(&f, &src) {
            Ok(()) => Ok(Some((name, f))),
            Err(e) if sys::is_reflink_unsupported(&e) => {
                drop(f);
                sys::unlink_at(self.dir.as_fd(), name.as_bytes())?;
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    fn finish_variant(
        &mut self,
        digest: Digest,
        key: MetaKey,
        meta: &ObjectMeta,
        name: String,
        file: File,
    ) -> io::Result<()> {
        meta.apply(&file, self.store.policy())?;
        self.staged_content
            .entry(digest)
            .or_insert_with(|| name.clone());
        self.staged.insert((digest, key), name);
        Ok(())
    }

    /// Links every staged variant into `objects/`, then makes the objects durable. Existing
    /// names (another pull was faster) are kept: their content is the same by construction.
    pub fn publish(self) -> Result<PublishStats, StoreError> {
        let mut stats = PublishStats::default();
        let objects = self.store.objects_fd();
        for ((digest, key), name) in &self.staged {
            match sys::link_at(
                self.dir.as_fd(),
                name.as_bytes(),
                objects,
                variant_name(digest, *key).as_bytes(),
            ) {
                Ok(()) => stats.new_variants += 1,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e).ctx(|| format!("publishing object {digest}")),
            }
            match sys::link_at(
                self.dir.as_fd(),
                name.as_bytes(),
                objects,
                object_name(digest).as_bytes(),
            ) {
                Ok(()) => stats.new_objects += 1,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e).ctx(|| format!("publishing object {digest}")),
            }
        }
        // Durable before the database records anything that refers to these objects.
        let start = std::time::Instant::now();
        sys::syncfs(objects).ctx(|| "syncing the store filesystem".to_string())?;
        stats.sync_seconds = start.elapsed().as_secs_f64();
        Ok(stats)
    }
}

impl Drop for Staging<'_> {
    fn drop(&mut self) {
        // Published files stay linked in objects/; the staging names are dropped either way.
        // A failure here leaves debris that gc removes.
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

impl ObjectSink for Staging<'_> {
    fn store_file(&mut self, entry: &Entry, content: &mut dyn Read) -> io::Result<StoredFile> {
        self.store_file_expecting(entry, content, None)
    }
}

fn mismatch(entry: &Entry, actual: &Digest, expected: &Digest) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "content hashes to {actual}, but the layer's table of contents says {expected} ({})",
            entry.display_path()
        ),
    )
}

impl Staging<'_> {
    /// Stores a file whose digest the caller knows in advance (from a zstd:chunked TOC). New
    /// content is verified against it; content of a variant the store already has is read but
    /// neither written nor hashed again: callers must verify the layer's DiffID.
    pub fn store_file_expecting(
        &mut self,
        entry: &Entry,
        content: &mut dyn Read,
        expected: Option<Digest>,
    ) -> io::Result<StoredFile> {
        let meta = ObjectMeta::for_entry(entry, self.store.policy());
        let key = meta.key();
        if let Some(d) = expected
            && self.store.has_variant(&d, key)
        {
            // The chunked reader feeds this content from the store's own object (verified when
            // it was stored); the layer's DiffID, which the caller always checks, covers it end
            // to end, so it is read without hashing it a second time.
            let n = io::copy(&mut content.take(entry.size), &mut io::sink())?;
            if n != entry.size {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "file content ends early",
                ));
            }
            return Ok(StoredFile {
                digest: d,
                reused: true,
            });
        }
        if let Some(d) = expected
            && self.staged.contains_key(&(d, key))
        {
            let (actual, n) = crate::digest::hash_reader(content.take(entry.size))?;
            if n != entry.size {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "file content ends early",
                ));
            }
            if actual != d {
                return Err(mismatch(entry, &actual, &d));
            }
            return Ok(StoredFile {
                digest: d,
                reused: true,
            });
        }
        if entry.size <= IN_MEMORY_LIMIT {
            let mut buf = Vec::with_capacity(entry.size as usize);
            content.take(entry.size).read_to_end(&mut buf)?;
            if buf.len() as u64 != entry.size {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "file content ends early",
                ));
            }
            let digest = Digest::of(&buf);
            if let Some(e) = expected
                && e != digest
            {
                return Err(mismatch(entry, &digest, &e));
            }
            let reused =
                self.staged_content.contains_key(&digest) || self.store.has_object(&digest);
            if !self.staged.contains_key(&(digest, key)) && !self.store.has_variant(&digest, key) {
                let (name, file) = match self.try_reflink(&digest)? {
                    Some(reflinked) => reflinked,
                    None => {
                        let (name, mut f) = self.new_file()?;
                        f.write_all(&buf)?;
                        (name, f)
                    }
                };
                self.finish_variant(digest, key, &meta, name, file)?;
            }
            return Ok(StoredFile { digest, reused });
        }
        // Large file: stream to a staged file while hashing, decide afterwards.
        let (name, mut file) = self.new_file()?;
        let mut hasher = Hasher::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut left = entry.size;
        while left > 0 {
            let want = buf.len().min(left as usize);
            let n = content.read(&mut buf[..want])?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "file content ends early",
                ));
            }
            hasher.update(&buf[..n]);
            file.write_all(&buf[..n])?;
            left -= n as u64;
        }
        let digest = hasher.finish();
        if let Some(e) = expected
            && e != digest
        {
            return Err(mismatch(entry, &digest, &e));
        }
        let reused = self.staged_content.contains_key(&digest) || self.store.has_object(&digest);
        if self.staged.contains_key(&(digest, key)) || self.store.has_variant(&digest, key) {
            drop(file);
            sys::unlink_at(self.dir.as_fd(), name.as_bytes())?;
            return Ok(StoredFile { digest, reused });
        }
        // Prefer sharing extents with an existing copy over keeping a second one.
        let (name, file) = match self.try_reflink(&digest)? {
            Some(reflinked) => {
                drop(file);
                sys::unlink_at(self.dir.as_fd(), name.as_bytes())?;
                reflinked
            }
            None => (name, file),
        };
        self.finish_variant(digest, key, &meta, name, file)?;
        Ok(StoredFile { digest, reused })
    }
}

fn now_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}
