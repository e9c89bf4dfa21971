//! `images`, `inspect` and `rm`: listing, describing and forgetting stored images.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::db::{DbView, ImageRecord};
use crate::digest::Digest;
use crate::image::manifest::LayerFormat;
use crate::progress::Progress;
use crate::store::{LockMode, Store, StoreError};

/// One line of `images`.
#[derive(Clone, Debug, Serialize)]
pub struct ImageSummary {
    pub names: Vec<String>,
    pub manifest_digest: Digest,
    /// Number of layers.
    pub layers: usize,
    /// Sum of the layers' uncompressed tar sizes.
    pub size: u64,
}

/// Lists stored images, sorted by first name.
pub fn list(store: &Store) -> Result<Vec<ImageSummary>, StoreError> {
    let db = store.db_reader()?;
    let r = db.read()?;
    let mut names: BTreeMap<Digest, Vec<String>> = BTreeMap::new();
    for (name, d) in r.names()? {
        names.entry(d).or_default().push(name);
    }
    let mut out = Vec::new();
    for image in r.images()? {
        let mut size = 0;
        for l in &image.layers {
            size += r.layer(&l.diff_id)?.map(|rec| rec.tar_size).unwrap_or(0);
        }
        out.push(ImageSummary {
            names: names.remove(&image.manifest_digest).unwrap_or_default(),
            manifest_digest: image.manifest_digest,
            layers: image.layers.len(),
            size,
        });
    }
    out.sort_by(|a, b| {
        a.names
            .first()
            .cmp(&b.names.first())
            .then(a.manifest_digest.cmp(&b.manifest_digest))
    });
    Ok(out)
}

/// A layer as `inspect` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct LayerDetail {
    pub digest: Digest,
    pub diff_id: Digest,
    pub media_type: String,
    pub format: String,
    pub size: u64,
    pub tar_size: u64,
    pub entries: u64,
    pub files: u64,
    pub logical_bytes: u64,
}

/// What `inspect` shows.
#[derive(Clone, Debug, Serialize)]
pub struct ImageDetail {
    pub names: Vec<String>,
    pub manifest_digest: Digest,
    pub manifest_media_type: String,
    pub config_digest: Digest,
    pub source: String,
    pub pulled_at: i64,
    pub layers: Vec<LayerDetail>,
    /// The image config as stored.
    pub config: serde_json::Value,
}

/// Describes one image.
pub fn inspect(store: &Store, query: &str) -> Result<ImageDetail, StoreError> {
    let db = store.db_reader()?;
    let r = db.read()?;
    let image = store.find_image(&r, query)?;
    let names = r
        .names()?
        .into_iter()
        .filter(|(_, d)| *d == image.manifest_digest)
        .map(|(n, _)| n)
        .collect();
    let mut layers = Vec::new();
    for l in &image.layers {
        let rec = r.layer(&l.diff_id)?;
        let desc = crate::image::manifest::Descriptor {
            media_type: l.media_type.clone(),
            digest: l.digest,
            size: l.size,
            annotations: l.annotations.iter().cloned().collect(),
            platform: None,
        };
        layers.push(LayerDetail {
            digest: l.digest,
            diff_id: l.diff_id,
            media_type: l.media_type.clone(),
            format: LayerFormat::of(&desc)
                .map(|f| f.name().to_string())
                .unwrap_or_else(|_| "unknown".into()),
            size: l.size,
            tar_size: rec.as_ref().map_or(0, |r| r.tar_size),
            entries: rec.as_ref().map_or(0, |r| r.entries),
            files: rec.as_ref().map_or(0, |r| r.files),
            logical_bytes: rec.as_ref().map_or(0, |r| r.logical_bytes),
        });
    }
    Ok(ImageDetail {
        names,
        manifest_digest: image.manifest_digest,
        manifest_media_type: image.manifest_media_type.clone(),
        config_digest: image.config_digest,
        source: image.source.clone(),
        pulled_at: image.pulled_at,
        layers,
        config: serde_json::from_slice(&image.config).unwrap_or(serde_json::Value::Null),
    })
}

/// What `rm` removed.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RmReport {
    /// Names removed.
    pub untagged: Vec<String>,
    /// Images removed (their last name went, or they were named by digest).
    pub removed: Vec<Digest>,
}

/// Removes names, and images left without names. A digest removes the image and all its
/// names. Data is freed by the next `gc`.
pub fn rm(
    store: &Store,
    queries: &[String],
    progress: &dyn Progress,
) -> Result<RmReport, StoreError> {
    let _lock = store.lock(LockMode::Shared, progress)?;
    let db = store.db()?;
    let w = db.write()?;
    let mut report = RmReport::default();
    for q in queries {
        let image: ImageRecord = store.find_image(&w, q)?;
        let names: Vec<String> = w
            .names()?
            .into_iter()
            .filter(|(_, d)| *d == image.manifest_digest)
            .map(|(n, _)| n)
            .collect();
        let by_name = names
            .iter()
            .find(|n| *n == q || crate::image::reference::local_name_candidates(q).contains(n));
        let remove: Vec<String> = match by_name {
            Some(n) => vec![n.clone()],
            None => names.clone(),
        };
        for n in &remove {
            w.remove_name(n)?;
            report.untagged.push(n.clone());
        }
        if remove.len() == names.len() {
            w.remove_image(&image.manifest_digest)?;
            report.removed.push(image.manifest_digest);
        }
    }
    w.commit()?;
    Ok(report)
}
