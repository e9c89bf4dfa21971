//! `export`: rebuilds a layer's uncompressed tar from its skeleton and the objects, byte for
//! byte, and checks it against the DiffID.

use std::io::Write;

use serde::Serialize;

use crate::db::DbView;
use crate::digest::{Digest, HashingWriter};
use crate::progress::Progress;
use crate::store::{IoContext, LockMode, Store, StoreError};

/// What an export wrote.
#[derive(Clone, Debug, Serialize)]
pub struct ExportReport {
    pub diff_id: Digest,
    pub bytes: u64,
}

/// Errors specific to export.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("image has {layers} layers; layer {index} does not exist (0 is the base layer)")]
    NoSuchLayer { index: usize, layers: usize },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Opens the object holding an entry's content.
pub fn open_entry(store: &Store, e: &crate::layer::entry::Entry) -> std::io::Result<std::fs::File> {
    let d = e
        .digest
        .ok_or_else(|| std::io::Error::other(format!("{} has no digest", e.display_path())))?;
    store.open_object(&d).map_err(|err| {
        std::io::Error::new(
            err.kind(),
            format!("object {d} for {}: {err}", e.display_path()),
        )
    })
}

/// Writes layer `index` of image `query` to `out`. Fails (after writing) if the rebuilt tar
/// does not hash to the DiffID; callers writing to a file write to a temp file first.
pub fn export_layer(
    store: &Store,
    query: &str,
    index: usize,
    out: &mut dyn Write,
    progress: &dyn Progress,
) -> Result<ExportReport, ExportError> {
    let _lock = store.lock(LockMode::Shared, progress)?;
    let (diff_id, toc, skeleton) = {
        let db = store.db_reader()?;
        let r = db.read().map_err(StoreError::from)?;
        let image = store.find_image(&r, query)?;
        let layer = image.layers.get(index).ok_or(ExportError::NoSuchLayer {
            index,
            layers: image.layers.len(),
        })?;
        let missing =
            |what: &str| StoreError::Inconsistent(format!("layer {} has no {what}", layer.diff_id));
        let toc = r
            .toc(&layer.diff_id)
            .map_err(StoreError::from)?
            .ok_or_else(|| missing("table of contents"))?;
        let skeleton = r
            .skeleton(&layer.diff_id)
            .map_err(StoreError::from)?
            .ok_or_else(|| missing("tar skeleton"))?;
        (layer.diff_id, toc, skeleton)
    };
    let mut hashing = HashingWriter::new(out);
    let mut tar = skeleton.reader(&toc, |e| open_entry(store, e));
    let bytes = std::io::copy(&mut tar, &mut hashing).ctx(|| "rebuilding the tar".to_string())?;
    hashing.flush().ctx(|| "writing the tar".to_string())?;
    let (actual, _, _) = hashing.finish();
    if actual != diff_id {
        return Err(StoreError::ExportDigest { diff_id, actual }.into());
    }
    Ok(ExportReport { diff_id, bytes })
}
