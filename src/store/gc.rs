//! Garbage collection: removes images' leftovers that nothing references (layers, blob
//! mappings, object variants, objects) and debris of interrupted work under `tmp/`.
//!
//! gc holds the store lock exclusively, so it waits for running pulls and checkouts and they
//! wait for it: a pull's new objects are never collected before the pull has recorded them.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt;

use serde::Serialize;

use crate::db::DbView;
use crate::digest::Digest;
use crate::progress::Progress;
use crate::store::objects::{self, ObjectFile};
use crate::store::{IoContext, LockMode, Store, StoreError};
use crate::sys;

/// What gc removed (or, with `dry_run`, would remove).
#[derive(Clone, Debug, Default, Serialize)]
pub struct GcReport {
    pub dry_run: bool,
    /// Content objects (distinct digests) removed entirely.
    pub removed_objects: u64,
    /// Variant files removed (including those of removed objects).
    pub removed_variants: u64,
    /// Bytes of disk space freed.
    pub removed_bytes: u64,
    /// Layers removed from the database.
    pub removed_layers: u64,
    /// Entries removed from `tmp/` (staging of interrupted pulls, temp files).
    pub removed_temp: u64,
    /// Layer metadata records (shapes, digest chunks, skeletons) no layer uses any more.
    pub removed_metadata: u64,
}

/// The canonical name (if any) of one content and its variants, each with "keep".
type DigestFiles = (Option<String>, Vec<(String, bool)>);

/// Runs gc.
pub fn gc(store: &Store, dry_run: bool, progress: &dyn Progress) -> Result<GcReport, StoreError> {
    let _lock = store.lock(LockMode::Exclusive, progress)?;
    crate::testhook::pause("gc-locked");
    let mut report = GcReport {
        dry_run,
        ..Default::default()
    };

    // 1. Layers no image uses, and blob mappings to layers that are gone.
    let referenced = {
        let db = store.db()?;
        let w = db.write()?;
        let used: HashSet<Digest> = w
            .images()?
            .iter()
            .flat_map(|i| i.layers.iter().map(|l| l.diff_id))
            .collect();
        let mut removed = HashSet::new();
        for layer in w.layers()? {
            if !used.contains(&layer.diff_id) {
                removed.insert(layer.diff_id);
                if !dry_run {
                    w.remove_layer(&layer.diff_id)?;
                }
            }
        }
        report.removed_layers = removed.len() as u64;
        report.removed_metadata = w.remove_unreferenced_metadata(dry_run)?;
        for (blob, diff_id) in w.blobs()? {
            if (removed.contains(&diff_id) || w.layer(&diff_id)?.is_none()) && !dry_run {
                w.remove_blob(&blob)?;
            }
        }
        let referenced = objects::referenced_variants(&w, used.iter(), store.policy())?;
        if !dry_run {
            w.commit()?;
        }
        referenced
    };

    // 2. Object files: variants nobody references, canonical names whose content no kept
    //    variant has.
    let objects_dir = store.objects_dir();
    let listed =
        objects::list(&objects_dir).ctx(|| format!("listing {}", objects_dir.display()))?;
    progress.phase_started("gc", listed.len() as u64);
    let mut by_digest: HashMap<Digest, DigestFiles> = HashMap::new();
    for l in &listed {
        match l.object {
            Some(ObjectFile::Canonical(d)) => {
                by_digest.entry(d).or_default().0 = Some(l.name.clone())
            }
            Some(ObjectFile::Variant(d, k)) => by_digest
                .entry(d)
                .or_default()
                .1
                .push((l.name.clone(), referenced.contains_key(&(d, k)))),
            None => {}
        }
    }
    // Names to remove, with per-inode counts so that freed space is counted once, and only
    // when the last link goes (a hardlinked checkout keeps its data alive).
    let mut removals: Vec<String> = Vec::new();
    let mut relinks: Vec<(String, String)> = Vec::new();
    for (_, (canonical, variants)) in by_digest {
        let kept: Vec<&String> = variants
            .iter()
            .filter(|(_, keep)| *keep)
            .map(|(n, _)| n)
            .collect();
        for (name, keep) in &variants {
            if !keep {
                removals.push(name.clone());
                report.removed_variants += 1;
            }
        }
        match (canonical, kept.first()) {
            (Some(c), None) => {
                removals.push(c);
                report.removed_objects += 1;
            }
            (Some(c), Some(first)) => {
                let ino = |n: &str| {
                    std::fs::symlink_metadata(objects_dir.join(n))
                        .map(|m| m.ino())
                        .ok()
                };
                let c_ino = ino(&c);
                if !kept.iter().any(|k| ino(k) == c_ino) {
                    // The canonical name pins data no kept variant has: point it at a kept one.
                    relinks.push(((*first).clone(), c));
                }
            }
            (None, Some(first)) => relinks.push(((*first).clone(), objects::canonical_of(first))),
            (None, None) => {}
        }
    }
    // Examine every name before removing any: an inode's space is freed only if all its links
    // are among the removals (a hardlinked checkout keeps its data alive).
    let mut pending: HashMap<(u64, u64), (u64, u64, u64)> = HashMap::new(); // inode -> (names, nlink, bytes)
    for name in &removals {
        let path = objects_dir.join(name);
        let md =
            std::fs::symlink_metadata(&path).ctx(|| format!("examining {}", path.display()))?;
        let slot = pending
            .entry((md.dev(), md.ino()))
            .or_insert_with(|| (0, md.nlink(), allocated_exclusive(&path, md.blocks() * 512)));
        slot.0 += 1;
    }
    if !dry_run {
        for name in &removals {
            let path = objects_dir.join(name);
            std::fs::remove_file(&path).ctx(|| format!("removing {}", path.display()))?;
            progress.phase_advanced(1);
        }
    }
    report.removed_bytes = pending
        .values()
        .filter(|(names, nlink, _)| names == nlink)
        .map(|(_, _, b)| b)
        .sum();
    if !dry_run {
        for (from, canonical) in &relinks {
            let tmp = store
                .tmp_dir()
                .join(format!("relink-{}", std::process::id()));
            let _ = std::fs::remove_file(&tmp);
            std::fs::hard_link(objects_dir.join(from), &tmp)
                .ctx(|| format!("relinking {canonical}"))?;
            std::fs::rename(&tmp, objects_dir.join(canonical))
                .ctx(|| format!("relinking {canonical}"))?;
        }
    }
    progress.phase_finished();

    // 3. tmp/: staging of interrupted pulls and temp files. Nothing else runs (exclusive lock).
    let tmp = store.tmp_dir();
    for ent in std::fs::read_dir(&tmp).ctx(|| format!("listing {}", tmp.display()))? {
        let ent = ent.ctx(|| format!("listing {}", tmp.display()))?;
        report.removed_temp += 1;
        if !dry_run {
            let p = ent.path();
            let res = if ent.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
            res.ctx(|| format!("removing {}", p.display()))?;
        }
    }
    if !dry_run {
        sys::syncfs(store.objects_fd()).ctx(|| "syncing the store filesystem".to_string())?;
    }
    Ok(report)
}

/// Bytes a file's removal frees: its allocation minus extents shared with other files
/// (reflinks), where the filesystem reports extents.
pub(crate) fn allocated_exclusive(path: &std::path::Path, allocated: u64) -> u64 {
    match std::fs::File::open(path).and_then(|f| sys::fiemap_usage(&f)) {
        // No extents (data inline in the inode): the allocation is all there is.
        Ok(u) if u.total == 0 => allocated,
        Ok(u) => allocated.min(u.total.saturating_sub(u.shared)),
        Err(_) => allocated,
    }
}
