//! OCI and Docker schema 2 manifests, indexes and image configs: only the fields zstore uses,
//! parsed tolerantly (unknown fields ignored) but strictly where it matters (digests, sizes).

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::digest::Digest;
use crate::image::platform::Platform;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// Largest manifest or index accepted (the limit containers/image uses).
pub const MAX_MANIFEST_SIZE: u64 = 4 << 20;
/// Largest image config accepted.
pub const MAX_CONFIG_SIZE: u64 = 64 << 20;

/// Annotation keys of zstd:chunked layers (current and legacy generation).
pub const ZSTD_CHUNKED_CHECKSUM_KEYS: [&str; 2] = [
    "io.github.containers.zstd-chunked.manifest-checksum",
    "io.containers.zstd-chunked.manifest-checksum",
];
/// Annotation key of eStargz layers.
pub const ESTARGZ_TOC_KEY: &str = "containerd.io/snapshot/stargz/toc.digest";

/// Errors in manifests, indexes and configs.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{what} is not valid JSON of the expected shape: {source}")]
    Json {
        what: &'static str,
        source: serde_json::Error,
    },
    #[error("unsupported manifest media type {0:?}")]
    MediaType(String),
    #[error("unsupported schemaVersion {0} (only 2 is supported)")]
    SchemaVersion(u32),
    #[error("image config lists {diff_ids} DiffIDs for {layers} layers")]
    LayerCount { layers: usize, diff_ids: usize },
    #[error("no manifest in the index matches platform {wanted} (available: {available})")]
    NoPlatform { wanted: String, available: String },
    #[error("unsupported layer media type {0:?}")]
    LayerMediaType(String),
}

/// A content descriptor.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    #[serde(default)]
    pub platform: Option<Platform>,
}

/// An image manifest (OCI or Docker schema 2).
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    #[serde(default)]
    pub media_type: Option<String>,
    pub config: Descriptor,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
}

/// An image index (OCI) or manifest list (Docker).
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    pub schema_version: u32,
    #[serde(default)]
    pub media_type: Option<String>,
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
}

/// The parts of an image config zstore reads.
#[derive(Clone, Debug, Deserialize)]
pub struct ImageConfig {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    pub rootfs: RootFs,
}

#[derive(Clone, Debug, Deserialize)]
pub struct RootFs {
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub diff_ids: Vec<Digest>,
}

/// A parsed manifest-like document.
#[derive(Clone, Debug)]
pub enum Parsed {
    Manifest(Manifest),
    Index(Index),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Probe {
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<serde_json::Value>,
    #[serde(default)]
    config: Option<serde_json::Value>,
}

/// Parses a manifest or index. `hint` is the media type the transport reported (the
/// Content-Type header or the referring descriptor), which wins over the document's own field.
pub fn parse(bytes: &[u8], hint: Option<&str>) -> Result<Parsed, ManifestError> {
    let probe: Probe = serde_json::from_slice(bytes).map_err(|source| ManifestError::Json {
        what: "manifest",
        source,
    })?;
    let media_type = hint
        .filter(|h| !h.is_empty() && *h != "application/json" && *h != "text/plain")
        .map(str::to_string)
        .or(probe.media_type.clone());
    let is_index = match media_type.as_deref() {
        Some(OCI_INDEX) | Some(DOCKER_MANIFEST_LIST) => true,
        Some(OCI_MANIFEST) | Some(DOCKER_MANIFEST) => false,
        Some(other) => return Err(ManifestError::MediaType(other.to_string())),
        // OCI allows omitting mediaType: decide by shape.
        None => probe.manifests.is_some() && probe.config.is_none(),
    };
    if is_index {
        let idx: Index = serde_json::from_slice(bytes).map_err(|source| ManifestError::Json {
            what: "index",
            source,
        })?;
        if idx.schema_version != 2 {
            return Err(ManifestError::SchemaVersion(idx.schema_version));
        }
        Ok(Parsed::Index(idx))
    } else {
        let m: Manifest = serde_json::from_slice(bytes).map_err(|source| ManifestError::Json {
            what: "manifest",
            source,
        })?;
        if m.schema_version != 2 {
            return Err(ManifestError::SchemaVersion(m.schema_version));
        }
        Ok(Parsed::Manifest(m))
    }
}

/// Parses an image config and checks it has one DiffID per manifest layer.
pub fn parse_config(bytes: &[u8], layers: usize) -> Result<ImageConfig, ManifestError> {
    let c: ImageConfig = serde_json::from_slice(bytes).map_err(|source| ManifestError::Json {
        what: "image config",
        source,
    })?;
    if c.rootfs.diff_ids.len() != layers {
        return Err(ManifestError::LayerCount {
            layers,
            diff_ids: c.rootfs.diff_ids.len(),
        });
    }
    Ok(c)
}

/// Picks the manifest for `wanted` from an index.
pub fn select_platform<'a>(
    index: &'a Index,
    wanted: &Platform,
) -> Result<&'a Descriptor, ManifestError> {
    index
        .manifests
        .iter()
        .filter(|d| matches!(d.media_type.as_str(), OCI_MANIFEST | DOCKER_MANIFEST | ""))
        .find(|d| d.platform.as_ref().is_some_and(|p| p.matches(wanted)))
        .ok_or_else(|| ManifestError::NoPlatform {
            wanted: wanted.to_string(),
            available: index
                .manifests
                .iter()
                .filter_map(|d| d.platform.as_ref().map(|p| p.to_string()))
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// How a layer blob is encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerFormat {
    Tar,
    Gzip,
    Zstd,
    ZstdChunked,
    Estargz,
}

impl LayerFormat {
    /// The name used in `--json` output.
    pub fn name(self) -> &'static str {
        match self {
            LayerFormat::Tar => "tar",
            LayerFormat::Gzip => "gzip",
            LayerFormat::Zstd => "zstd",
            LayerFormat::ZstdChunked => "zstd:chunked",
            LayerFormat::Estargz => "estargz",
        }
    }

    /// The format a layer descriptor declares.
    pub fn of(desc: &Descriptor) -> Result<LayerFormat, ManifestError> {
        let mt = desc.media_type.as_str();
        let base = if mt.ends_with("+gzip") || mt.ends_with(".tar.gzip") || mt.ends_with(".tar.gz")
        {
            LayerFormat::Gzip
        } else if mt.ends_with("+zstd") || mt.ends_with(".tar.zstd") {
            LayerFormat::Zstd
        } else if mt.ends_with(".tar") || mt == "application/vnd.docker.image.rootfs.diff.tar" {
            LayerFormat::Tar
        } else {
            return Err(ManifestError::LayerMediaType(mt.to_string()));
        };
        Ok(match base {
            LayerFormat::Zstd
                if ZSTD_CHUNKED_CHECKSUM_KEYS
                    .iter()
                    .any(|k| desc.annotations.contains_key(*k)) =>
            {
                LayerFormat::ZstdChunked
            }
            LayerFormat::Gzip if desc.annotations.contains_key(ESTARGZ_TOC_KEY) => {
                LayerFormat::Estargz
            }
            other => other,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn manifest_and_index() {
        let m = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"x","digest":"{D}","size":2}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+zstd","digest":"{D}","size":3,"annotations":{{"io.containers.zstd-chunked.manifest-checksum":"{D}"}}}}],"extra":1}}"#
        );
        let Parsed::Manifest(m) = parse(m.as_bytes(), None).unwrap() else {
            panic!("not a manifest")
        };
        assert_eq!(
            LayerFormat::of(&m.layers[0]).unwrap(),
            LayerFormat::ZstdChunked
        );
        let i = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{D}","size":1,"platform":{{"os":"linux","architecture":"arm64","variant":"v8"}}}},{{"mediaType":"{OCI_MANIFEST}","digest":"{D}","size":2,"platform":{{"os":"linux","architecture":"amd64"}}}}]}}"#
        );
        let Parsed::Index(i) = parse(i.as_bytes(), None).unwrap() else {
            panic!("not an index")
        };
        let amd = select_platform(&i, &"linux/amd64".parse().unwrap()).unwrap();
        assert_eq!(amd.size, 2);
        assert!(select_platform(&i, &"linux/s390x".parse().unwrap()).is_err());
    }

    #[test]
    fn hostile_documents() {
        for bad in [
            "",
            "[]",
            "{",
            r#"{"schemaVersion":2,"config":{"digest":"sha256:00","size":1}}"#,
            r#"{"schemaVersion":1,"config":{"digest":"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","size":1}}"#,
            r#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v1+json"}"#,
            r#"{"schemaVersion":2,"config":{"digest":"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","size":-1}}"#,
        ] {
            assert!(parse(bad.as_bytes(), None).is_err(), "{bad}");
        }
        assert!(parse_config(br#"{"rootfs":{"type":"layers","diff_ids":[]}}"#, 1).is_err());
        assert!(parse_config(br#"{"rootfs":{"type":"layers","diff_ids":["nope"]}}"#, 1).is_err());
    }
}
