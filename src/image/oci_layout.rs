//! OCI image layout directories (`oci-layout`, `index.json`, `blobs/sha256/…`) as a source.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::digest::Digest;
use crate::image::manifest::{self, Descriptor, Index, ManifestError};

/// The annotation that names an image in an index.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Errors reading a layout.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{0} is not an OCI image layout (no oci-layout file with imageLayoutVersion)")]
    NotALayout(PathBuf),
    #[error("{path}: {source}")]
    Manifest {
        path: PathBuf,
        source: ManifestError,
    },
    #[error("{dir} has no image tagged {tag:?} (tags: {available})")]
    NoSuchTag {
        dir: PathBuf,
        tag: String,
        available: String,
    },
    #[error("{dir} holds {count} images; name one with oci:DIR:TAG (tags: {available})")]
    Ambiguous {
        dir: PathBuf,
        count: usize,
        available: String,
    },
    #[error("{dir} holds no image")]
    Empty { dir: PathBuf },
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LayoutFile {
    image_layout_version: String,
}

/// An opened layout.
pub struct OciLayout {
    dir: PathBuf,
    index: Index,
}

impl OciLayout {
    /// Opens a layout and reads its index.
    pub fn open(dir: &Path) -> Result<OciLayout, LayoutError> {
        let io_err = |path: PathBuf| move |source| LayoutError::Io { path, source };
        let marker = dir.join("oci-layout");
        let text =
            std::fs::read(&marker).map_err(|_| LayoutError::NotALayout(dir.to_path_buf()))?;
        let lf: LayoutFile = serde_json::from_slice(&text)
            .map_err(|_| LayoutError::NotALayout(dir.to_path_buf()))?;
        if lf.image_layout_version.is_empty() {
            return Err(LayoutError::NotALayout(dir.to_path_buf()));
        }
        let index_path = dir.join("index.json");
        let bytes = read_limited(&index_path, manifest::MAX_MANIFEST_SIZE)
            .map_err(io_err(index_path.clone()))?;
        let index = match manifest::parse(&bytes, Some(manifest::OCI_INDEX)).map_err(|source| {
            LayoutError::Manifest {
                path: index_path.clone(),
                source,
            }
        })? {
            manifest::Parsed::Index(i) => i,
            manifest::Parsed::Manifest(_) => unreachable!("parsed with the index media type"),
        };
        Ok(OciLayout {
            dir: dir.to_path_buf(),
            index,
        })
    }

    /// The descriptor named by `tag`, or the only one when no tag is given.
    pub fn select(&self, tag: Option<&str>) -> Result<&Descriptor, LayoutError> {
        let tags = || {
            self.index
                .manifests
                .iter()
                .filter_map(|d| d.annotations.get(REF_NAME).cloned())
                .collect::<Vec<_>>()
                .join(", ")
        };
        match tag {
            Some(t) => self
                .index
                .manifests
                .iter()
                .find(|d| d.annotations.get(REF_NAME).map(String::as_str) == Some(t))
                .ok_or_else(|| LayoutError::NoSuchTag {
                    dir: self.dir.clone(),
                    tag: t.to_string(),
                    available: tags(),
                }),
            None => match self.index.manifests.as_slice() {
                [one] => Ok(one),
                [] => Err(LayoutError::Empty {
                    dir: self.dir.clone(),
                }),
                many => Err(LayoutError::Ambiguous {
                    dir: self.dir.clone(),
                    count: many.len(),
                    available: tags(),
                }),
            },
        }
    }

    /// Path of a blob.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.dir.join("blobs").join("sha256").join(digest.hex())
    }

    /// Opens a blob for streaming (unverified: the caller verifies).
    pub fn open_blob(&self, digest: &Digest) -> Result<File, LayoutError> {
        let p = self.blob_path(digest);
        File::open(&p).map_err(|source| LayoutError::Io { path: p, source })
    }

    /// Reads a small blob whole, refusing more than `limit` bytes (unverified).
    pub fn read_blob(&self, digest: &Digest, limit: u64) -> Result<Vec<u8>, LayoutError> {
        let p = self.blob_path(digest);
        read_limited(&p, limit).map_err(|source| LayoutError::Io { path: p, source })
    }
}

fn read_limited(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let f = File::open(path)?;
    let mut buf = Vec::new();
    f.take(limit + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than the {limit}-byte limit"),
        ));
    }
    Ok(buf)
}
