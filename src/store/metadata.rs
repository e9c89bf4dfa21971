//! The metadata an object variant carries (mode, owner, mtime, xattrs), its key in object
//! names, and applying it to files.
//!
//! A hardlinked checkout shares inodes with the store, so every object variant has exactly the
//! metadata of the entries that link to it: one variant per distinct [`ObjectMeta`].

use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;

use crate::digest::Digest;
use crate::layer::entry::Entry;
use crate::layer::tar::Timestamp;
use crate::sys;

/// What metadata this process can apply, decided once per store handle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Ownership is applied (root); otherwise files belong to the caller and uid/gid are ignored.
    pub preserve_ownership: bool,
    /// All xattr namespaces are applied (root); otherwise only `user.*`.
    pub all_xattrs: bool,
    /// Device nodes can be created (root).
    pub device_nodes: bool,
}

impl Policy {
    /// Whether an xattr of this name is applied under this policy.
    pub fn applies_xattr(&self, name: &[u8]) -> bool {
        self.all_xattrs || name.starts_with(b"user.")
    }
}

/// The metadata of one object variant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectMeta {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: Timestamp,
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// A short hash of an [`ObjectMeta`], used in variant file names.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MetaKey(pub [u8; 16]);

impl fmt::Display for MetaKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for MetaKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl MetaKey {
    /// Parses the 32 hex digits of a variant name.
    pub fn from_hex(s: &str) -> Option<MetaKey> {
        if s.len() != 32
            || !s
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return None;
        }
        let mut k = [0u8; 16];
        hex::decode_to_slice(s, &mut k).ok()?;
        Some(MetaKey(k))
    }
}

impl ObjectMeta {
    /// The metadata an entry's object variant gets under `policy`.
    pub fn for_entry(e: &Entry, policy: Policy) -> ObjectMeta {
        let (uid, gid) = if policy.preserve_ownership {
            (e.uid, e.gid)
        } else {
            (0, 0)
        };
        ObjectMeta {
            mode: e.mode & 0o7777,
            uid,
            gid,
            mtime: e.mtime,
            xattrs: e
                .xattrs
                .iter()
                .filter(|(k, _)| policy.applies_xattr(k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }
    }

    /// The variant key: a hash of a canonical encoding of every field.
    pub fn key(&self) -> MetaKey {
        let mut buf = Vec::with_capacity(64);
        buf.extend_from_slice(b"zstore-meta-v1\0");
        buf.extend_from_slice(&self.mode.to_le_bytes());
        buf.extend_from_slice(&self.uid.to_le_bytes());
        buf.extend_from_slice(&self.gid.to_le_bytes());
        buf.extend_from_slice(&self.mtime.secs.to_le_bytes());
        buf.extend_from_slice(&self.mtime.nanos.to_le_bytes());
        for (k, v) in &self.xattrs {
            buf.extend_from_slice(&(k.len() as u64).to_le_bytes());
            buf.extend_from_slice(k);
            buf.extend_from_slice(&(v.len() as u64).to_le_bytes());
            buf.extend_from_slice(v);
        }
        let d = Digest::of(&buf);
        let mut k = [0u8; 16];
        k.copy_from_slice(&d.as_bytes()[..16]);
        MetaKey(k)
    }

    /// Applies ownership, mode, xattrs and mtime to an open file, in that order: chown clears
    /// setuid bits and capabilities, and only the mtime must survive everything else.
    pub fn apply(&self, file: &File, policy: Policy) -> io::Result<()> {
        let fd = file.as_fd();
        if policy.preserve_ownership {
            sys::fchown(fd, self.uid, self.gid)?;
        }
        sys::fchmod(fd, self.mode)?;
        for (k, v) in &self.xattrs {
            sys::fsetxattr(fd, k, v).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("setting xattr {}: {e}", String::from_utf8_lossy(k)),
                )
            })?;
        }
        sys::futimens(fd, self.mtime.secs, self.mtime.nanos)
    }

    /// Reads the metadata a file actually has, as `policy` sees it (for fsck).
    pub fn read(file: &File, policy: Policy) -> io::Result<ObjectMeta> {
        let md = file.metadata()?;
        let (uid, gid) = if policy.preserve_ownership {
            (md.uid(), md.gid())
        } else {
            (0, 0)
        };
        let xattrs = sys::fget_xattrs(file)?
            .into_iter()
            .filter(|(k, _)| policy.applies_xattr(k))
            .collect();
        Ok(ObjectMeta {
            mode: md.mode() & 0o7777,
            uid,
            gid,
            mtime: Timestamp {
                secs: md.mtime(),
                nanos: md.mtime_nsec() as u32,
            },
            xattrs,
        })
    }
}
