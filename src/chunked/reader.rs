//! Reads zstd:chunked layers from any random-access source: fetches and authenticates the TOC
//! (and tar-split), then rebuilds the layer's tar stream from raw bytes, files already in the
//! store and decompressed ranges of the blob, so that the ordinary tar import verifies every
//! file against the TOC and the whole tar against the DiffID.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Cursor, Read};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};

use base64::Engine;

use crate::chunked::ChunkedError;
use crate::chunked::annotations::{ChunkedAnnotations, MAX_TAR_SPLIT_SIZE, MAX_TOC_SIZE};
use crate::chunked::frames::SKIPPABLE_HEADER;
use crate::chunked::tarsplit::{self, TsEntry};
use crate::chunked::toc::{Toc, TocEntry};
use crate::digest::Digest;
use crate::layer::entry::{Entry, EntryKind, normalize_path};
use crate::layer::skeleton::{Part, Skeleton};

/// Random access to a blob's bytes.
pub trait RangeSource: Sync {
    /// Reads exactly the bytes of `range`.
    fn read_range(&self, range: Range<u64>) -> io::Result<Vec<u8>>;
    /// Streams the bytes of `range`.
    fn open_range(&self, range: Range<u64>) -> io::Result<Box<dyn Read + Send + '_>>;
    /// Bytes read from the source so far.
    fn bytes_read(&self) -> u64;
}

/// A blob in a local file.
pub struct FileSource {
    file: File,
    read: AtomicU64,
}

impl FileSource {
    pub fn new(file: File) -> FileSource {
        FileSource {
            file,
            read: AtomicU64::new(0),
        }
    }
}

struct FileRange<'a> {
    src: &'a FileSource,
    pos: u64,
    end: u64,
}

impl Read for FileRange<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = buf.len().min((self.end - self.pos) as usize);
        if want == 0 {
            return Ok(0);
        }
        let n = self.src.file.read_at(&mut buf[..want], self.pos)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "blob ends inside a range",
            ));
        }
        self.pos += n as u64;
        self.src.read.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

impl RangeSource for FileSource {
    fn read_range(&self, range: Range<u64>) -> io::Result<Vec<u8>> {
        let mut buf = Vec::with_capacity((range.end - range.start) as usize);
        self.open_range(range)?.read_to_end(&mut buf)?;
        Ok(buf)
    }
    fn open_range(&self, range: Range<u64>) -> io::Result<Box<dyn Read + Send + '_>> {
        Ok(Box::new(FileRange {
            src: self,
            pos: range.start,
            end: range.end.max(range.start),
        }))
    }
    fn bytes_read(&self) -> u64 {
        self.read.load(Ordering::Relaxed)
    }
}

/// Decompresses a zstd stream, refusing more than `limit` bytes of output, and more than
/// `declared` (the size its annotation gives, when it gives one): a small frame that expands
/// past what it declared is refused at that point, not at the general limit.
fn decompress_limited(
    data: &[u8],
    declared: u64,
    limit: u64,
    what: &'static str,
) -> Result<Vec<u8>, ChunkedError> {
    if declared > 0 && declared <= limit {
        // One call into a buffer of the declared size, which zstd refuses to overrun.
        let capacity = usize::try_from(declared).unwrap_or(usize::MAX);
        return zstd::bulk::decompress(data, capacity).map_err(|e| {
            ChunkedError::Corrupt(format!(
                "decompressing the {what} (declared as {declared} bytes): {e}"
            ))
        });
    }
    let mut out = Vec::new();
    zstd::stream::read::Decoder::new(data)
        .and_then(|d| d.take(limit + 1).read_to_end(&mut out))
        .map_err(|e| ChunkedError::Corrupt(format!("decompressing the {what}: {e}")))?;
    if out.len() as u64 > limit {
        return Err(ChunkedError::TooLarge {
            what,
            size: out.len() as u64,
            max: limit,
        });
    }
    Ok(out)
}

/// Where a piece of the rebuilt tar comes from.
#[derive(Clone, Debug)]
pub enum Piece {
    /// Bytes from the tar-split.
    Raw(Vec<u8>),
    /// zstd frames holding tar bytes other than file content (legacy layers: headers and
    /// padding between files); decoded whole.
    Frames(Range<u64>),
    /// A file's content: from the store if present, else from these frames.
    File {
        digest: Digest,
        size: u64,
        range: Range<u64>,
    },
}

/// A zstd:chunked layer whose TOC has been fetched and authenticated.
#[derive(Debug)]
pub struct ChunkedLayer {
    pub toc: Toc,
    /// Where the annotations say the tar-split is (fetched only when needed).
    tar_split_at: Option<crate::chunked::annotations::Position>,
    blob_size: u64,
    /// End of the tar frames (start of the TOC's skippable frame).
    pub data_end: u64,
}

impl ChunkedLayer {
    /// Fetches the TOC (and tar-split) described by `ann`, verifying their digests.
    pub fn open(
        source: &dyn RangeSource,
        ann: &ChunkedAnnotations,
        blob_size: u64,
    ) -> Result<ChunkedLayer, ChunkedError> {
        let toc_range = ann.toc.range();
        if toc_range.start < SKIPPABLE_HEADER || toc_range.end > blob_size {
            return Err(ChunkedError::Corrupt(format!(
                "TOC range {toc_range:?} lies outside the {blob_size}-byte blob"
            )));
        }
        let io = |e: io::Error| ChunkedError::Corrupt(format!("reading the TOC: {e}"));
        let toc_z = source.read_range(toc_range.clone()).map_err(io)?;
        let actual = Digest::of(&toc_z);
        if actual != ann.toc_digest {
            return Err(ChunkedError::Corrupt(format!(
                "TOC hashes to {actual}, the annotation says {}",
                ann.toc_digest
            )));
        }
        let toc = Toc::parse(&decompress_limited(
            &toc_z,
            ann.toc.uncompressed_len,
            MAX_TOC_SIZE,
            "TOC",
        )?)?;
        if toc.tar_split_digest.is_some() && ann.tar_split.is_none() {
            return Err(ChunkedError::Corrupt(
                "the TOC names a tar-split but no annotation locates it".into(),
            ));
        }
        Ok(ChunkedLayer {
            toc,
            tar_split_at: ann.tar_split,
            blob_size,
            data_end: toc_range.start - SKIPPABLE_HEADER,
        })
    }

    /// Fetches and authenticates the tar-split, when the TOC names one (a tar-split the TOC
    /// does not authenticate is never used).
    pub fn tar_split(
        &self,
        source: &dyn RangeSource,
    ) -> Result<Option<Vec<TsEntry>>, ChunkedError> {
        let (Some(d), Some(pos)) = (&self.toc.tar_split_digest, &self.tar_split_at) else {
            return Ok(None);
        };
        let r = pos.range();
        if r.end > self.blob_size {
            return Err(ChunkedError::Corrupt(format!(
                "tar-split range {r:?} lies outside the blob"
            )));
        }
        let z = source
            .read_range(r)
            .map_err(|e| ChunkedError::Corrupt(format!("reading the tar-split: {e}")))?;
        let actual = Digest::of(&z);
        if actual != *d {
            return Err(ChunkedError::Corrupt(format!(
                "tar-split hashes to {actual}, the TOC says {d}"
            )));
        }
        Ok(Some(tarsplit::parse(&decompress_limited(
            &z,
            pos.uncompressed_len,
            MAX_TAR_SPLIT_SIZE,
            "tar-split",
        )?)?))
    }

    /// The TOC's entries (without `chunk` entries) as table-of-contents entries of the store.
    pub fn entries(&self) -> Result<Vec<Entry>, ChunkedError> {
        self.toc
            .entries
            .iter()
            .filter(|e| e.kind != "chunk")
            .map(toc_to_entry)
            .collect()
    }

    /// Pieces that rebuild the tar from a stored layer's skeleton, for a layer whose entries
    /// have the same shape (same paths and metadata, other file contents). Whether the guess is
    /// right is decided by the DiffID of the result.
    pub fn borrowed_pieces(
        &self,
        skeleton: &Skeleton,
        stored: &[Entry],
    ) -> Result<Vec<Piece>, ChunkedError> {
        let files = self.toc.files(self.data_end)?;
        let mut next = files.iter();
        let damaged = || ChunkedError::Corrupt("stored skeleton is damaged".into());
        let mut out = Vec::with_capacity(skeleton.segments().len());
        for part in skeleton.parts() {
            match part.map_err(|_| damaged())? {
                Part::Raw(b) => out.push(Piece::Raw(b)),
                Part::Payload(i) => {
                    let e = stored.get(i as usize).ok_or_else(|| {
                        ChunkedError::Corrupt("stored skeleton is damaged".into())
                    })?;
                    let f = next.next().ok_or_else(|| {
                        ChunkedError::Corrupt("stored skeleton has more files".into())
                    })?;
                    if f.size as u64 != e.size {
                        return Err(ChunkedError::Corrupt(
                            "stored skeleton differs in file sizes".into(),
                        ));
                    }
                    out.push(file_piece(f));
                }
            }
        }
        if next.next().is_some() {
            return Err(ChunkedError::Corrupt(
                "stored skeleton has fewer files".into(),
            ));
        }
        Ok(out)
    }

    /// The pieces that rebuild the tar from the layer itself: the tar-split (fetched here) or,
    /// without one, the header frames between files.
    pub fn pieces(&self, source: &dyn RangeSource) -> Result<Vec<Piece>, ChunkedError> {
        let files = self.toc.files(self.data_end)?;
        let mut out = Vec::new();
        match &self.tar_split(source)? {
            Some(split) => {
                // With a tar-split, TOC names must be unique (it refers to files by name).
                let mut names = std::collections::HashSet::new();
                for e in self.toc.entries.iter().filter(|e| e.kind != "chunk") {
                    if !names.insert(e.name.as_str()) {
                        return Err(ChunkedError::Corrupt(format!(
                            "the TOC lists {:?} twice",
                            e.name
                        )));
                    }
                }
                let mut by_name: HashMap<&str, &TocEntry> = HashMap::new();
                for f in &files {
                    if by_name.insert(f.name.as_str(), f).is_some() {
                        return Err(ChunkedError::Corrupt(format!(
                            "the TOC lists {:?} twice",
                            f.name
                        )));
                    }
                }
                let mut used = 0usize;
                for e in split {
                    match e {
                        TsEntry::Segment(b) => out.push(Piece::Raw(b.clone())),
                        TsEntry::File { size: 0, .. } => {}
                        TsEntry::File { name, size, .. } => {
                            let name = String::from_utf8_lossy(name);
                            let f = by_name.get(name.as_ref()).ok_or_else(|| {
                                ChunkedError::Corrupt(format!(
                                    "tar-split file {name:?} is not in the TOC"
                                ))
                            })?;
                            if f.size as u64 != *size {
                                return Err(ChunkedError::Corrupt(format!(
                                    "tar-split and TOC disagree on the size of {name:?}"
                                )));
                            }
                            used += 1;
                            out.push(file_piece(f));
                        }
                    }
                }
                if used != files.len() {
                    return Err(ChunkedError::Corrupt(
                        "the TOC lists files the tar-split does not have".into(),
                    ));
                }
            }
            None => {
                let mut pos = 0u64;
                for f in &files {
                    out.push(Piece::Frames(pos..f.offset as u64));
                    out.push(file_piece(f));
                    pos = f.end_offset as u64;
                }
                out.push(Piece::Frames(pos..self.data_end));
            }
        }
        Ok(out)
    }
}

/// Converts a TOC entry to the store's form.
fn toc_to_entry(t: &TocEntry) -> Result<Entry, ChunkedError> {
    let bad = |why: &str| ChunkedError::Corrupt(format!("TOC entry {:?}: {why}", t.name));
    let kind = match t.kind.as_str() {
        "reg" => EntryKind::Regular,
        "dir" => EntryKind::Directory,
        "symlink" => EntryKind::Symlink,
        "hardlink" => EntryKind::Hardlink,
        "char" => EntryKind::CharDevice,
        "block" => EntryKind::BlockDevice,
        "fifo" => EntryKind::Fifo,
        _ => return Err(bad("unknown type")),
    };
    let path = normalize_path(t.name.as_bytes()).map_err(|e| bad(&e.to_string()))?;
    let link_target = match kind {
        EntryKind::Hardlink => {
            normalize_path(t.link_name.as_bytes()).map_err(|e| bad(&e.to_string()))?
        }
        EntryKind::Symlink => t.link_name.as_bytes().to_vec(),
        _ => Vec::new(),
    };
    let mut xattrs = std::collections::BTreeMap::new();
    for (k, v) in &t.xattrs {
        let value = base64::engine::general_purpose::STANDARD
            .decode(v)
            .map_err(|_| bad("xattr value is not base64"))?;
        xattrs.insert(k.as_bytes().to_vec(), value);
    }
    let id = |v: i64| u32::try_from(v).map_err(|_| bad("id out of range"));
    Ok(Entry {
        path,
        kind,
        mode: (t.mode & 0o7777) as u32,
        uid: id(t.uid)?,
        gid: id(t.gid)?,
        mtime: t.modtime.unwrap_or_default(),
        size: if kind == EntryKind::Regular {
            u64::try_from(t.size).map_err(|_| bad("negative size"))?
        } else {
            0
        },
        link_target,
        dev_major: id(t.dev_major)?,
        dev_minor: id(t.dev_minor)?,
        xattrs,
        digest: t.digest,
    })
}

fn file_piece(f: &TocEntry) -> Piece {
    Piece::File {
        digest: f
            .digest
            .expect("TOC files with content have digests (checked by Toc::files)"),
        size: f.size as u64,
        range: f.offset as u64..f.end_offset as u64,
    }
}

/// Opens a file's content from the store, if it has it.
type LocalFiles<'a> = Box<dyn Fn(&Digest) -> Option<File> + 'a>;

/// Streams the tar rebuilt from pieces. `local` opens a file's content when the store has it.
pub struct TarStream<'a> {
    pieces: std::vec::IntoIter<Piece>,
    current: Option<Box<dyn Read + Send + 'a>>,
    source: &'a dyn RangeSource,
    local: LocalFiles<'a>,
}

impl<'a> TarStream<'a> {
    pub fn new(
        pieces: Vec<Piece>,
        source: &'a dyn RangeSource,
        local: impl Fn(&Digest) -> Option<File> + 'a,
    ) -> TarStream<'a> {
        TarStream {
            pieces: pieces.into_iter(),
            current: None,
            source,
            local: Box::new(local),
        }
    }

    fn open(&self, piece: Piece) -> io::Result<Box<dyn Read + Send + 'a>> {
        Ok(match piece {
            Piece::Raw(b) => Box::new(Cursor::new(b)),
            Piece::Frames(r) if r.start >= r.end => Box::new(io::empty()),
            Piece::Frames(r) => Box::new(zstd::stream::read::Decoder::new(
                self.source.open_range(r)?,
            )?),
            Piece::File {
                digest,
                size,
                range,
            } => {
                let inner: Box<dyn Read + Send + 'a> = match (self.local)(&digest) {
                    Some(f) => Box::new(f),
                    None => Box::new(zstd::stream::read::Decoder::new(
                        self.source.open_range(range)?,
                    )?),
                };
                Box::new(Exact {
                    inner,
                    left: size,
                    digest,
                })
            }
        })
    }
}

/// Yields exactly `left` bytes, failing if the inner reader has fewer.
struct Exact<R> {
    inner: R,
    left: u64,
    digest: Digest,
}

impl<R: Read> Read for Exact<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let want = buf.len().min(self.left as usize);
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "the data of file {} ends {} bytes short of its TOC size",
                    self.digest, self.left
                ),
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

impl Read for TarStream<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if let Some(cur) = &mut self.current {
                let n = cur.read(buf)?;
                if n > 0 || buf.is_empty() {
                    return Ok(n);
                }
                self.current = None;
            }
            match self.pieces.next() {
                None => return Ok(0),
                Some(p) => self.current = Some(self.open(p)?),
            }
        }
    }
}

/// Checks that the entries read from the rebuilt tar are the ones the TOC describes (in order:
/// names, types, sizes, modes, owners, link targets, mtimes, digests). A reader that trusted the
/// TOC for metadata would otherwise check out something other than the tar.
pub fn check_toc_matches(toc: &Toc, entries: &[Entry]) -> Result<(), ChunkedError> {
    let toc_entries: Vec<&TocEntry> = toc.entries.iter().filter(|e| e.kind != "chunk").collect();
    if toc_entries.len() != entries.len() {
        return Err(ChunkedError::Corrupt(format!(
            "the TOC lists {} entries, the layer's tar has {}",
            toc_entries.len(),
            entries.len()
        )));
    }
    for (i, (t, e)) in toc_entries.iter().zip(entries).enumerate() {
        let bad = |field: &str| {
            ChunkedError::Corrupt(format!(
                "TOC entry {i} ({:?}) disagrees with the tar on {field}",
                t.name
            ))
        };
        if normalize_path(t.name.as_bytes()).ok().as_deref() != Some(&e.path[..]) {
            return Err(bad("the path"));
        }

        if t.kind != e.kind.name() {
            return Err(bad("the type"));
        }
        if (t.mode & 0o7777) as u32 != e.mode
            || t.uid != i64::from(e.uid)
            || t.gid != i64::from(e.gid)
        {
            return Err(bad("mode or ownership"));
        }
        if e.kind == EntryKind::Regular
            && (t.size as u64 != e.size || (e.size > 0 && t.digest != e.digest))
        {
            return Err(bad("the size or digest"));
        }
        let link_ok = match e.kind {
            EntryKind::Symlink => t.link_name.as_bytes() == e.link_target.as_slice(),
            EntryKind::Hardlink => {
                normalize_path(t.link_name.as_bytes()).ok().as_deref() == Some(&e.link_target[..])
            }
            _ => true,
        };
        if !link_ok {
            return Err(bad("the link target"));
        }
        if matches!(e.kind, EntryKind::CharDevice | EntryKind::BlockDevice)
            && (t.dev_major != i64::from(e.dev_major) || t.dev_minor != i64::from(e.dev_minor))
        {
            return Err(bad("the device numbers"));
        }
        let xattrs_match = t.xattrs.len() == e.xattrs.len()
            && t.xattrs.iter().all(|(k, v)| {
                let value = base64::engine::general_purpose::STANDARD.decode(v).ok();
                e.xattrs.get(k.as_bytes()).map(Vec::as_slice) == value.as_deref()
            });
        if !xattrs_match {
            return Err(bad("the xattrs"));
        }
        if let Some(m) = t.modtime
            && m.secs != 0
            && m.secs != crate::chunked::time::GO_ZERO_SECS
            && (m.secs, m.nanos) != (e.mtime.secs, e.mtime.nanos)
        {
            return Err(bad("the modification time"));
        }
    }
    Ok(())
}
