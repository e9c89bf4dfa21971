//! A layer's table of contents: one [`Entry`] per tar entry, with the metadata a checkout
//! applies and the digest of each regular file's content.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::layer::tar::Timestamp;

/// What kind of filesystem object an entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EntryKind {
    Regular,
    Directory,
    Symlink,
    /// A hardlink to an earlier entry of the same layer (or a lower one); `link_target` names it.
    Hardlink,
    CharDevice,
    BlockDevice,
    Fifo,
}

impl EntryKind {
    /// The short name used in JSON output and messages.
    pub fn name(self) -> &'static str {
        match self {
            EntryKind::Regular => "reg",
            EntryKind::Directory => "dir",
            EntryKind::Symlink => "symlink",
            EntryKind::Hardlink => "hardlink",
            EntryKind::CharDevice => "char",
            EntryKind::BlockDevice => "block",
            EntryKind::Fifo => "fifo",
        }
    }
}

/// One entry of a layer, in tar order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Normalised path relative to the image root: components joined by `/`, no `.`, `..`,
    /// empty components or leading `/`. The empty path is the root directory itself.
    #[serde(with = "serde_bytes")]
    pub path: Vec<u8>,
    pub kind: EntryKind,
    /// Permission bits including setuid, setgid and sticky (`& 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: Timestamp,
    /// Content size for regular files; 0 for everything else.
    pub size: u64,
    /// Symlink target (raw, as in the layer) or hardlink target (a normalised path).
    #[serde(with = "serde_bytes")]
    pub link_target: Vec<u8>,
    pub dev_major: u32,
    pub dev_minor: u32,
    /// Extended attributes, sorted by name.
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// SHA-256 of the content, for regular files with `size > 0`.
    pub digest: Option<Digest>,
}

impl Entry {
    /// The path for messages and JSON (lossy for non-UTF-8 names).
    pub fn display_path(&self) -> String {
        if self.path.is_empty() {
            "/".to_string()
        } else {
            format!("/{}", String::from_utf8_lossy(&self.path))
        }
    }

    /// True when the entry's content lives in the object store.
    pub fn has_object(&self) -> bool {
        self.kind == EntryKind::Regular && self.size > 0 && self.digest.is_some()
    }
}

/// A digest of a layer's entries with their contents left out: layers of the same shape have the
/// same paths, types and metadata, so one may share another's tar skeleton (header bytes).
pub fn shape_digest(entries: &[Entry]) -> Digest {
    let mut h = crate::digest::Hasher::new();
    let mut field = |b: &[u8]| {
        h.update(&(b.len() as u64).to_le_bytes());
        h.update(b);
    };
    for e in entries {
        field(&e.path);
        field(e.kind.name().as_bytes());
        let mut fixed = [0u8; 44];
        fixed[..4].copy_from_slice(&e.mode.to_le_bytes());
        fixed[4..8].copy_from_slice(&e.uid.to_le_bytes());
        fixed[8..12].copy_from_slice(&e.gid.to_le_bytes());
        fixed[12..20].copy_from_slice(&e.mtime.secs.to_le_bytes());
        fixed[20..24].copy_from_slice(&e.mtime.nanos.to_le_bytes());
        fixed[24..32].copy_from_slice(&e.size.to_le_bytes());
        fixed[32..36].copy_from_slice(&e.dev_major.to_le_bytes());
        fixed[36..40].copy_from_slice(&e.dev_minor.to_le_bytes());
        fixed[40..44].copy_from_slice(&(e.xattrs.len() as u32).to_le_bytes());
        field(&fixed);
        field(&e.link_target);
        for (k, v) in &e.xattrs {
            field(k);
            field(v);
        }
    }
    h.finish()
}

/// Why a path from a layer is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PathError {
    #[error("path {0:?} is absolute; layer paths must be relative to the image root")]
    Absolute(String),
    #[error("path {0:?} contains \"..\" and could escape the image root")]
    DotDot(String),
    #[error("path {0:?} contains a NUL byte")]
    Nul(String),
}

/// Normalises a path from a layer: strips `./` and trailing `/`, drops empty and `.`
/// components, and refuses absolute paths and `..` components.
pub fn normalize_path(raw: &[u8]) -> Result<Vec<u8>, PathError> {
    let shown = || String::from_utf8_lossy(raw).into_owned();
    if raw.contains(&0) {
        return Err(PathError::Nul(shown()));
    }
    if raw.first() == Some(&b'/') {
        return Err(PathError::Absolute(shown()));
    }
    let mut out: Vec<u8> = Vec::with_capacity(raw.len());
    for comp in raw.split(|&b| b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => return Err(PathError::DotDot(shown())),
            c => {
                if !out.is_empty() {
                    out.push(b'/');
                }
                out.extend_from_slice(c);
            }
        }
    }
    Ok(out)
}

/// Splits a normalised path into its parent and last component.
pub fn split_parent(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (&[], path),
    }
}

/// Every proper ancestor of a normalised path, nearest last (`a/b/c` gives `a`, `a/b`).
pub fn ancestors(path: &[u8]) -> impl Iterator<Item = &[u8]> {
    path.iter()
        .enumerate()
        .filter(|(_, b)| **b == b'/')
        .map(move |(i, _)| &path[..i])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes() {
        assert_eq!(normalize_path(b"./a/b/").unwrap(), b"a/b");
        assert_eq!(normalize_path(b"a//./b").unwrap(), b"a/b");
        assert_eq!(normalize_path(b"./").unwrap(), b"");
        assert_eq!(
            normalize_path(b"a/.wh..wh..opq").unwrap(),
            b"a/.wh..wh..opq"
        );
        assert_eq!(normalize_path(b"a/..b").unwrap(), b"a/..b");
    }

    #[test]
    fn refuses_escapes() {
        assert!(matches!(
            normalize_path(b"/etc/passwd"),
            Err(PathError::Absolute(_))
        ));
        assert!(matches!(normalize_path(b"../x"), Err(PathError::DotDot(_))));
        assert!(matches!(
            normalize_path(b"a/../../x"),
            Err(PathError::DotDot(_))
        ));
        assert!(matches!(normalize_path(b"a/.."), Err(PathError::DotDot(_))));
        assert!(matches!(normalize_path(b"a\0b"), Err(PathError::Nul(_))));
    }

    #[test]
    fn parents() {
        assert_eq!(split_parent(b"a/b/c"), (&b"a/b"[..], &b"c"[..]));
        assert_eq!(split_parent(b"c"), (&b""[..], &b"c"[..]));
        let a: Vec<&[u8]> = ancestors(b"a/b/c").collect();
        assert_eq!(a, vec![&b"a"[..], &b"a/b"[..]]);
    }
}
