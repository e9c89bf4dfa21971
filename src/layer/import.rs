//! Streams one uncompressed layer tar: every regular file goes to an [`ObjectSink`] (which
//! hashes and stores it once), every other byte to the layer's [`Skeleton`], every header to its
//! table of contents. The tar is hashed on the way for the DiffID.

use std::collections::{BTreeMap, HashSet};
use std::io::{self, Read};

use crate::digest::{Digest, HashingReader, Midstate};
use crate::layer::entry::{Entry, EntryKind, PathError, ancestors, normalize_path};
use crate::layer::skeleton::{Skeleton, SkeletonBuilder};
use crate::layer::tar::{TarError, TarHeader, TarReader};

/// What an [`ObjectSink`] did with one file's content.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoredFile {
    pub digest: Digest,
    /// The content was already stored (before this pull, or earlier in it): not written again.
    pub reused: bool,
}

/// Receives regular file content during an import.
pub trait ObjectSink {
    /// Stores exactly `entry.size` bytes read from `content` as the object for `entry` (whose
    /// metadata selects the object variant). `entry.digest` is `None`: the sink computes it.
    fn store_file(&mut self, entry: &Entry, content: &mut dyn Read) -> io::Result<StoredFile>;
}

/// Errors while importing a layer tar.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error(transparent)]
    Tar(#[from] TarError),
    #[error("layer entry at tar offset {offset}: {source}")]
    Path { offset: u64, source: PathError },
    #[error(
        "layer entry {path:?} goes through symlink {symlink:?} of the same layer; refusing to write through a symlink"
    )]
    ThroughSymlink { path: String, symlink: String },
    #[error("layer entry {path:?}: {what} {value} does not fit in 32 bits")]
    IdTooLarge {
        path: String,
        what: &'static str,
        value: u64,
    },
    #[error("storing {path:?}: {source}")]
    Store { path: String, source: io::Error },
    #[error("keeping the layer's tar headers: {0}")]
    Skeleton(io::Error),
}

/// The result of importing one layer.
#[derive(Debug)]
pub struct ImportedLayer {
    pub entries: Vec<Entry>,
    pub skeleton: Skeleton,
    /// SHA-256 of the uncompressed tar.
    pub diff_id: Digest,
    /// Size of the uncompressed tar.
    pub tar_size: u64,
    /// Regular files with content.
    pub files: u64,
    /// Those whose content the store already had.
    pub reused_files: u64,
    /// Sum of regular file sizes.
    pub logical_bytes: u64,
    /// Sum of sizes of reused files.
    pub reused_bytes: u64,
    /// The DiffID's hash state where each file's content starts, in skeleton payload order
    /// (empty if a payload did not start on a hash block boundary, which tar never does).
    pub payload_states: Vec<Midstate>,
}

/// Reads the current tar payload through the tar reader, exactly `entry.size` bytes.
struct Payload<'a, R> {
    tar: &'a mut TarReader<R>,
}

impl<R: Read> Read for Payload<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.tar.read_payload(buf).map_err(|e| match e {
            TarError::Io(e) => e,
            other => io::Error::new(io::ErrorKind::UnexpectedEof, other.to_string()),
        })
    }
}

/// Imports a layer from its uncompressed tar stream.
pub fn import_tar(
    reader: impl Read,
    sink: &mut dyn ObjectSink,
) -> Result<ImportedLayer, ImportError> {
    let mut tar = TarReader::new(HashingReader::new(reader));
    let mut entries: Vec<Entry> = Vec::new();
    let mut skeleton = SkeletonBuilder::new().map_err(ImportError::Skeleton)?;
    let mut symlinks: HashSet<Vec<u8>> = HashSet::new();
    let (mut files, mut reused_files, mut logical_bytes, mut reused_bytes) =
        (0u64, 0u64, 0u64, 0u64);
    let mut payload_states = Vec::new();
    let mut states_ok = true;

    while let Some(header) = tar.next_header()? {
        skeleton
            .push_raw(&tar.take_raw())
            .map_err(ImportError::Skeleton)?;
        let mut entry = entry_from_header(&header)?;
        if let Some(link) = ancestors(&entry.path).find(|a| symlinks.contains(*a)) {
            return Err(ImportError::ThroughSymlink {
                path: entry.display_path(),
                symlink: String::from_utf8_lossy(link).into_owned(),
            });
        }
        match entry.kind {
            EntryKind::Symlink => {
                symlinks.insert(entry.path.clone());
            }
            _ => {
                symlinks.remove(&entry.path);
            }
        }
        let index = u32::try_from(entries.len()).map_err(|_| ImportError::IdTooLarge {
            path: entry.display_path(),
            what: "entry count",
            value: entries.len() as u64,
        })?;
        if entry.kind == EntryKind::Regular && entry.size > 0 {
            match tar.inner().midstate() {
                Some(m) if states_ok => payload_states.push(m),
                _ => states_ok = false,
            }
            let stored = {
                let mut payload = Payload { tar: &mut tar };
                let stored =
                    sink.store_file(&entry, &mut payload)
                        .map_err(|source| ImportError::Store {
                            path: entry.display_path(),
                            source,
                        })?;
                // A sink that stopped early must not desynchronise the tar stream.
                let rest = io::copy(&mut payload, &mut io::sink()).map_err(|source| {
                    ImportError::Store {
                        path: entry.display_path(),
                        source,
                    }
                })?;
                if rest != 0 {
                    return Err(ImportError::Store {
                        path: entry.display_path(),
                        source: io::Error::other("object sink did not consume the whole file"),
                    });
                }
                stored
            };
            entry.digest = Some(stored.digest);
            skeleton.push_payload(index);
            files += 1;
            logical_bytes += entry.size;
            if stored.reused {
                reused_files += 1;
                reused_bytes += entry.size;
            }
        } else if header.size > 0 {
            // Content that is not a file of the image (e.g. data on a hardlink header) stays raw.
            tar.payload_to_raw()?;
        }
        entries.push(entry);
    }
    skeleton
        .push_raw(&tar.take_raw())
        .map_err(ImportError::Skeleton)?;
    let skeleton = skeleton.finish().map_err(ImportError::Skeleton)?;
    let (diff_id, tar_size, _) = tar.into_inner().finish();
    if !states_ok {
        payload_states.clear();
    }
    Ok(ImportedLayer {
        entries,
        skeleton,
        diff_id,
        tar_size,
        files,
        reused_files,
        logical_bytes,
        reused_bytes,
        payload_states,
    })
}

/// Builds a TOC entry from a parsed tar header, normalising and checking paths.
pub fn entry_from_header(h: &TarHeader) -> Result<Entry, ImportError> {
    let path = normalize_path(&h.name).map_err(|source| ImportError::Path {
        offset: h.offset,
        source,
    })?;
    let kind = match h.typeflag {
        b'0' => EntryKind::Regular,
        b'1' => EntryKind::Hardlink,
        b'2' => EntryKind::Symlink,
        b'3' => EntryKind::CharDevice,
        b'4' => EntryKind::BlockDevice,
        b'5' => EntryKind::Directory,
        _ => EntryKind::Fifo,
    };
    let shown = || String::from_utf8_lossy(&path).into_owned();
    let id = |what: &'static str, value: u64| {
        u32::try_from(value).map_err(|_| ImportError::IdTooLarge {
            path: shown(),
            what,
            value,
        })
    };
    let link_target = match kind {
        EntryKind::Hardlink => {
            normalize_path(&h.link_name).map_err(|source| ImportError::Path {
                offset: h.offset,
                source,
            })?
        }
        EntryKind::Symlink => h.link_name.clone(),
        _ => Vec::new(),
    };
    Ok(Entry {
        kind,
        mode: h.mode & 0o7777,
        uid: id("uid", h.uid)?,
        gid: id("gid", h.gid)?,
        mtime: h.mtime,
        size: if kind == EntryKind::Regular {
            h.size
        } else {
            0
        },
        link_target,
        dev_major: h.dev_major,
        dev_minor: h.dev_minor,
        xattrs: h.xattrs.iter().cloned().collect::<BTreeMap<_, _>>(),
        digest: None,
        path,
    })
}
