//! fsck: re-hashes every object, checks every variant's metadata against its name, and checks
//! every database reference (names → images → layers → tables of contents → objects).
//! Each problem is reported with a kind; nothing is repaired.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use serde::Serialize;

use crate::db::DbView;
use crate::digest::{Digest, hash_reader};
use crate::progress::Progress;
use crate::store::metadata::ObjectMeta;
use crate::store::objects::{self, ObjectFile};
use crate::store::{IoContext, LockMode, Store, StoreError};

/// The kinds of problem fsck reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemKind {
    /// An object's content does not hash to its name.
    CorruptObject,
    /// A variant's mode, owner, mtime or xattrs differ from those its name records (e.g. a
    /// hardlinked checkout was modified).
    MetadataMismatch,
    /// A layer refers to an object variant that is not in the store.
    MissingObject,
    /// A database record refers to another that does not exist.
    DanglingReference,
    /// A database record cannot be decoded, or a layer's skeleton does not match its TOC.
    BadRecord,
    /// An object file cannot be read.
    UnreadableObject,
    /// A file under `objects/` that is not an object.
    StrayFile,
}

/// One problem.
#[derive(Clone, Debug, Serialize)]
pub struct Problem {
    pub kind: ProblemKind,
    /// The object, record or path concerned.
    pub object: String,
    pub detail: String,
}

/// What fsck found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct FsckReport {
    /// Object files (canonical and variants) checked.
    pub objects_checked: u64,
    /// Distinct inodes re-hashed.
    pub inodes_hashed: u64,
    /// Bytes re-hashed.
    pub bytes_checked: u64,
    pub images_checked: u64,
    pub layers_checked: u64,
    /// Variants no layer refers to (not an error: gc removes them).
    pub unreferenced_variants: u64,
    pub errors: Vec<Problem>,
}

fn problem(kind: ProblemKind, object: impl Into<String>, detail: impl Into<String>) -> Problem {
    Problem {
        kind,
        object: object.into(),
        detail: detail.into(),
    }
}

/// Runs fsck with `threads` hashing threads (0 = one per core).
pub fn fsck(
    store: &Store,
    threads: usize,
    progress: &dyn Progress,
) -> Result<FsckReport, StoreError> {
    let _lock = store.lock(LockMode::Shared, progress)?;
    let mut report = FsckReport::default();

    // Database references.
    let referenced = {
        let db = store.db_reader()?;
        let r = db.read()?;
        let images = r.images()?;
        report.images_checked = images.len() as u64;
        let image_digests: HashSet<Digest> = images.iter().map(|i| i.manifest_digest).collect();
        for (name, d) in r.names()? {
            if !image_digests.contains(&d) {
                report.errors.push(problem(
                    ProblemKind::DanglingReference,
                    name,
                    format!("name points at missing image {d}"),
                ));
            }
        }
        let mut layer_ids: HashSet<Digest> = HashSet::new();
        for layer in r.layers()? {
            layer_ids.insert(layer.diff_id);
        }
        for image in &images {
            for l in &image.layers {
                if !layer_ids.contains(&l.diff_id) {
                    report.errors.push(problem(
                        ProblemKind::DanglingReference,
                        image.manifest_digest.to_string(),
                        format!("image uses layer {} which is not stored", l.diff_id),
                    ));
                }
            }
        }
        for (blob, diff_id) in r.blobs()? {
            if !layer_ids.contains(&diff_id) {
                report.errors.push(problem(
                    ProblemKind::DanglingReference,
                    blob,
                    format!("blob maps to missing layer {diff_id}"),
                ));
            }
        }
        // Layers whose TOC reads back: the objects they use are checked below.
        let mut readable: Vec<Digest> = Vec::new();
        for diff_id in &layer_ids {
            report.layers_checked += 1;
            let toc = r.toc(diff_id);
            if let Ok(Some(_)) = toc {
                readable.push(*diff_id);
            }
            match (toc, r.skeleton(diff_id)) {
                (Ok(Some(toc)), Ok(Some(skeleton))) => {
                    if let Err(e) = skeleton.validate(&toc) {
                        report.errors.push(problem(
                            ProblemKind::BadRecord,
                            diff_id.to_string(),
                            e.to_string(),
                        ));
                    }
                }
                (Ok(None), _) => report.errors.push(problem(
                    ProblemKind::DanglingReference,
                    diff_id.to_string(),
                    "layer has no table of contents",
                )),
                (_, Ok(None)) => report.errors.push(problem(
                    ProblemKind::DanglingReference,
                    diff_id.to_string(),
                    "layer has no tar skeleton",
                )),
                (Err(e), _) | (_, Err(e)) => report.errors.push(problem(
                    ProblemKind::BadRecord,
                    diff_id.to_string(),
                    e.to_string(),
                )),
            }
        }
        for key in r.damaged_metadata_blobs()? {
            report.errors.push(problem(
                ProblemKind::BadRecord,
                key,
                "layer metadata record does not hash to its key",
            ));
        }
        objects::referenced_variants(&r, readable.iter(), store.policy())?
    };

    // Objects on disk.
    let objects_dir = store.objects_dir();
    let listed =
        objects::list(&objects_dir).ctx(|| format!("listing {}", objects_dir.display()))?;
    let mut present: HashSet<(Digest, crate::store::MetaKey)> = HashSet::new();
    // One hash per inode: a canonical name and its variant share content.
    let mut inodes: HashMap<(u64, u64), (String, Digest)> = HashMap::new();
    let mut meta_checks: Vec<(String, crate::store::MetaKey)> = Vec::new();
    for l in &listed {
        report.objects_checked += 1;
        let Some(obj) = l.object else {
            report.errors.push(problem(
                ProblemKind::StrayFile,
                &l.name,
                "not an object name",
            ));
            continue;
        };
        let path = objects_dir.join(&l.name);
        let md = match std::fs::symlink_metadata(&path) {
            Ok(md) if md.is_file() => md,
            Ok(_) => {
                report.errors.push(problem(
                    ProblemKind::StrayFile,
                    &l.name,
                    "not a regular file",
                ));
                continue;
            }
            Err(e) => {
                report.errors.push(problem(
                    ProblemKind::UnreadableObject,
                    &l.name,
                    e.to_string(),
                ));
                continue;
            }
        };
        inodes
            .entry((md.dev(), md.ino()))
            .or_insert_with(|| (l.name.clone(), *obj.digest()));
        if let ObjectFile::Variant(d, k) = obj {
            present.insert((d, k));
            if !referenced.contains_key(&(d, k)) {
                report.unreferenced_variants += 1;
            }
            meta_checks.push((l.name.clone(), k));
        }
    }
    for (name, key) in meta_checks {
        let path = objects_dir.join(&name);
        match std::fs::File::open(&path).and_then(|f| ObjectMeta::read(&f, store.policy())) {
            Ok(meta) if meta.key() == key => {}
            Ok(meta) => report.errors.push(problem(
                ProblemKind::MetadataMismatch,
                &name,
                format!(
                    "mode {:o} uid {} gid {} mtime {}.{:09} do not match the variant's recorded metadata (was a hardlinked checkout modified?)",
                    meta.mode, meta.uid, meta.gid, meta.mtime.secs, meta.mtime.nanos
                ),
            )),
            Err(e) => report.errors.push(problem(ProblemKind::UnreadableObject, &name, e.to_string())),
        }
    }
    for ((d, k), users) in &referenced {
        if !present.contains(&(*d, *k)) {
            let (layer, path) = users.first().cloned().unwrap_or((*d, String::new()));
            report.errors.push(problem(
                ProblemKind::MissingObject,
                objects::variant_name(d, *k),
                format!("needed by {path} in layer {layer}"),
            ));
        }
    }

    // Re-hash every distinct inode, in parallel.
    let work: Vec<(String, Digest)> = inodes.into_values().collect();
    report.inodes_hashed = work.len() as u64;
    progress.phase_started("fsck", work.len() as u64);
    let threads = if threads == 0 {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    } else {
        threads
    };
    let next = AtomicUsize::new(0);
    let bytes = AtomicU64::new(0);
    let found = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some((name, expected)) = work.get(i) else {
                        break;
                    };
                    let path = objects_dir.join(name);
                    let outcome = std::fs::File::open(&path).and_then(hash_reader);
                    let p = match outcome {
                        Ok((actual, n)) => {
                            bytes.fetch_add(n, Ordering::Relaxed);
                            (actual != *expected).then(|| {
                                problem(
                                    ProblemKind::CorruptObject,
                                    name,
                                    format!("content hashes to {actual}"),
                                )
                            })
                        }
                        Err(e) => Some(problem(ProblemKind::UnreadableObject, name, e.to_string())),
                    };
                    if let Some(p) = p {
                        found.lock().unwrap_or_else(|e| e.into_inner()).push(p);
                    }
                    progress.phase_advanced(1);
                }
            });
        }
    });
    progress.phase_finished();
    report.bytes_checked = bytes.into_inner();
    report
        .errors
        .extend(found.into_inner().unwrap_or_else(|e| e.into_inner()));
    report
        .errors
        .sort_by(|a, b| (a.kind as u8, &a.object).cmp(&(b.kind as u8, &b.object)));
    Ok(report)
}
