//! df: what the store holds and what it costs on disk.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt;

use serde::Serialize;

use crate::db::DbView;
use crate::digest::Digest;
use crate::progress::Progress;
use crate::store::objects::{self, ObjectFile};
use crate::store::{IoContext, LockMode, Store, StoreError};

/// Space accounting of a store.
#[derive(Clone, Debug, Default, Serialize)]
pub struct DfReport {
    pub images: u64,
    pub layers: u64,
    /// Distinct file contents stored.
    pub objects: u64,
    /// Object variant files (one per distinct content and metadata).
    pub variants: u64,
    /// Sum of regular file sizes over all stored layers (what the layers would occupy unpacked).
    pub logical_bytes: u64,
    /// Disk space the objects occupy: allocated blocks of each distinct inode, where extents
    /// that a variant shares (by reflink) with its content's first inode are counted once.
    pub stored_bytes: u64,
    /// Size of the metadata database file.
    pub metadata_bytes: u64,
    pub checkouts: u64,
}

/// Computes the report.
pub fn df(store: &Store, progress: &dyn Progress) -> Result<DfReport, StoreError> {
    let _lock = store.lock(LockMode::Shared, progress)?;
    let mut report = DfReport::default();
    {
        let db = store.db_reader()?;
        let r = db.read()?;
        report.images = r.images()?.len() as u64;
        let layers = r.layers()?;
        report.layers = layers.len() as u64;
        report.logical_bytes = layers.iter().map(|l| l.logical_bytes).sum();
        report.checkouts = r.checkouts()?.len() as u64;
    }
    report.metadata_bytes = std::fs::metadata(store.root().join("db.redb"))
        .map(|m| m.len())
        .unwrap_or(0);

    let objects_dir = store.objects_dir();
    let listed =
        objects::list(&objects_dir).ctx(|| format!("listing {}", objects_dir.display()))?;
    let mut seen_inodes: HashSet<(u64, u64)> = HashSet::new();
    let mut first_inode_of: HashMap<Digest, (u64, u64)> = HashMap::new();
    // Canonical names first, so each content's first inode is the canonical one.
    let mut ordered: Vec<&objects::Listed> = listed.iter().filter(|l| l.object.is_some()).collect();
    ordered.sort_by_key(|l| !matches!(l.object, Some(ObjectFile::Canonical(_))));
    for l in ordered {
        let Some(obj) = l.object else { continue };
        match obj {
            ObjectFile::Canonical(_) => report.objects += 1,
            ObjectFile::Variant(..) => report.variants += 1,
        }
        let path = objects_dir.join(&l.name);
        let md =
            std::fs::symlink_metadata(&path).ctx(|| format!("examining {}", path.display()))?;
        let inode = (md.dev(), md.ino());
        if !seen_inodes.insert(inode) {
            continue;
        }
        let allocated = md.blocks() * 512;
        match first_inode_of.get(obj.digest()) {
            None => {
                first_inode_of.insert(*obj.digest(), inode);
                report.stored_bytes += allocated;
            }
            // Another inode with the same content: a variant copy, free where reflinked.
            Some(_) => {
                report.stored_bytes += crate::store::gc::allocated_exclusive(&path, allocated)
            }
        }
    }
    Ok(report)
}
