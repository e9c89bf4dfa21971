//! The bytes of a layer's tar that are not file content ("tar-split", in containers/storage
//! terms): headers, extension headers, padding and the end-of-archive trailer, interleaved with
//! references to entries whose content lives in the object store. With the objects it rebuilds
//! the uncompressed tar byte for byte.

use std::io::{self, BufReader, Read, Write};

use serde::{Deserialize, Serialize};

use crate::layer::entry::Entry;

/// One piece of the tar stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Segment {
    /// This many bytes, kept verbatim (the next ones of the skeleton's raw stream).
    Raw(u32),
    /// The content of entry number `.0` of the layer's table of contents (a regular file whose
    /// content is an object).
    Payload(u32),
}

/// The non-content bytes of a tar stream, in order. The raw bytes (mostly 512-byte headers and
/// padding) are kept as one zstd stream: a million-file layer has a gigabyte of them, which
/// compresses about twentyfold, and they are only ever read in order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skeleton {
    segments: Vec<Segment>,
    /// zstd frame holding the raw segments' bytes, concatenated.
    #[serde(with = "serde_bytes")]
    raw: Vec<u8>,
}

/// A piece of a skeleton with its bytes, as [`Skeleton::parts`] yields them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Part {
    Raw(Vec<u8>),
    Payload(u32),
}

/// Builds a [`Skeleton`], compressing raw bytes as they come.
pub struct SkeletonBuilder {
    segments: Vec<Segment>,
    raw: zstd::stream::write::Encoder<'static, Vec<u8>>,
}

/// zstd level for skeleton bytes: fast, and headers compress well at any level.
const RAW_LEVEL: i32 = 3;

impl SkeletonBuilder {
    pub fn new() -> io::Result<SkeletonBuilder> {
        Ok(SkeletonBuilder {
            segments: Vec::new(),
            raw: zstd::stream::write::Encoder::new(Vec::new(), RAW_LEVEL)?,
        })
    }

    /// Appends raw bytes, merging with a preceding raw segment.
    pub fn push_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.raw.write_all(bytes)?;
        for piece in bytes.chunks(u32::MAX as usize) {
            let n = piece.len() as u32;
            match self.segments.last_mut() {
                Some(Segment::Raw(prev)) if prev.checked_add(n).is_some() => *prev += n,
                _ => self.segments.push(Segment::Raw(n)),
            }
        }
        Ok(())
    }

    /// Appends a reference to an entry's content.
    pub fn push_payload(&mut self, entry: u32) {
        self.segments.push(Segment::Payload(entry));
    }

    pub fn finish(self) -> io::Result<Skeleton> {
        Ok(Skeleton {
            segments: self.segments,
            raw: self.raw.finish()?,
        })
    }
}

impl Skeleton {
    /// Builds a skeleton from its parts (tests, and rebuilding one in another form).
    pub fn from_parts(parts: impl IntoIterator<Item = Part>) -> io::Result<Skeleton> {
        let mut b = SkeletonBuilder::new()?;
        for p in parts {
            match p {
                Part::Raw(bytes) => b.push_raw(&bytes)?,
                Part::Payload(i) => b.push_payload(i),
            }
        }
        b.finish()
    }

    /// The segments, without their bytes.
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// The entries whose contents the tar holds, in tar order.
    pub fn payloads(&self) -> impl Iterator<Item = u32> + '_ {
        self.segments.iter().filter_map(|s| match s {
            Segment::Payload(i) => Some(*i),
            Segment::Raw(_) => None,
        })
    }

    /// The segments with their bytes, decompressed one at a time.
    pub fn parts(&self) -> Parts<'_> {
        Parts {
            segments: self.segments.iter(),
            raw: RawStream::new(&self.raw),
        }
    }

    /// Size of the tar this skeleton rebuilds.
    pub fn tar_size(&self, entries: &[Entry]) -> Result<u64, SkeletonError> {
        let mut total = 0u64;
        for seg in &self.segments {
            total += match seg {
                Segment::Raw(n) => u64::from(*n),
                Segment::Payload(i) => {
                    entries
                        .get(*i as usize)
                        .ok_or(SkeletonError::BadEntry(*i))?
                        .size
                }
            };
        }
        Ok(total)
    }

    /// Checks that every payload reference names an entry with content, and that the raw
    /// stream holds exactly the raw segments' bytes.
    pub fn validate(&self, entries: &[Entry]) -> Result<(), SkeletonError> {
        let mut raw_len = 0u64;
        for seg in &self.segments {
            match seg {
                Segment::Payload(i) => {
                    let e = entries
                        .get(*i as usize)
                        .ok_or(SkeletonError::BadEntry(*i))?;
                    if !e.has_object() {
                        return Err(SkeletonError::BadEntry(*i));
                    }
                }
                Segment::Raw(n) => raw_len += u64::from(*n),
            }
        }
        let actual = io::copy(&mut RawStream::new(&self.raw), &mut io::sink())?;
        if actual != raw_len {
            return Err(SkeletonError::RawLength {
                expected: raw_len,
                actual,
            });
        }
        Ok(())
    }

    /// Streams the tar: raw segments as they are, payloads from `open` (which opens the object
    /// holding an entry's content). Each object must hold exactly the entry's size.
    pub fn reader<'a, R: Read + 'a>(
        &'a self,
        entries: &'a [Entry],
        open: impl FnMut(&Entry) -> io::Result<R> + 'a,
    ) -> SkeletonReader<'a, R, impl FnMut(&Entry) -> io::Result<R> + 'a> {
        SkeletonReader {
            segments: self.segments.iter(),
            raw: RawStream::new(&self.raw),
            entries,
            open,
            current: Current::None,
        }
    }
}

/// The decompressed raw bytes of a skeleton (an empty stream for a skeleton without any).
struct RawStream<'a>(Option<zstd::stream::read::Decoder<'a, BufReader<&'a [u8]>>>);

impl<'a> RawStream<'a> {
    fn new(raw: &'a [u8]) -> RawStream<'a> {
        // A decoder that cannot start (no memory) reads as empty: the length checks then fail.
        RawStream(zstd::stream::read::Decoder::new(raw).ok())
    }

    /// Exactly `n` bytes.
    fn take_exact(&mut self, n: u32) -> io::Result<Vec<u8>> {
        let mut v = vec![0; n as usize];
        self.read_exact(&mut v).map_err(truncated)?;
        Ok(v)
    }
}

impl Read for RawStream<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &mut self.0 {
            Some(d) => d.read(buf),
            None => Ok(0),
        }
    }
}

fn truncated(e: io::Error) -> io::Error {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "the layer's stored tar headers end early",
        )
    } else {
        e
    }
}

/// Iterator over a skeleton's [`Part`]s.
pub struct Parts<'a> {
    segments: std::slice::Iter<'a, Segment>,
    raw: RawStream<'a>,
}

impl Iterator for Parts<'_> {
    type Item = io::Result<Part>;
    fn next(&mut self) -> Option<io::Result<Part>> {
        Some(match self.segments.next()? {
            Segment::Raw(n) => self.raw.take_exact(*n).map(Part::Raw),
            Segment::Payload(i) => Ok(Part::Payload(*i)),
        })
    }
}

/// Why a skeleton cannot be turned back into a tar.
#[derive(Debug, thiserror::Error)]
pub enum SkeletonError {
    #[error("tar rebuild refers to entry {0}, which the layer does not have")]
    BadEntry(u32),
    #[error("object for {path} holds {actual} bytes where the layer says {expected}")]
    SizeMismatch {
        path: String,
        expected: u64,
        actual: u64,
    },
    #[error("the layer's stored tar headers hold {actual} bytes where its segments say {expected}")]
    RawLength { expected: u64, actual: u64 },
    #[error("rebuilding the tar: {0}")]
    Io(#[from] io::Error),
}

enum Current<R> {
    None,
    /// Bytes of a raw segment still to come from the raw stream.
    Raw(u64),
    Payload {
        reader: R,
        left: u64,
        path: String,
        size: u64,
    },
}

/// The tar of a skeleton, as a reader (see [`Skeleton::reader`]).
pub struct SkeletonReader<'a, R, F> {
    segments: std::slice::Iter<'a, Segment>,
    raw: RawStream<'a>,
    entries: &'a [Entry],
    open: F,
    current: Current<R>,
}

impl<R: Read, F: FnMut(&Entry) -> io::Result<R>> Read for SkeletonReader<'_, R, F> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            match &mut self.current {
                Current::Raw(left) if *left > 0 => {
                    let want = buf.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                    let n = self.raw.read(&mut buf[..want])?;
                    if n == 0 {
                        return Err(truncated(io::ErrorKind::UnexpectedEof.into()));
                    }
                    *left -= n as u64;
                    return Ok(n);
                }
                Current::Payload {
                    reader,
                    left,
                    path,
                    size,
                } if *left > 0 => {
                    let want = buf.len().min(*left as usize);
                    let n = reader.read(&mut buf[..want])?;
                    if n == 0 {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            SkeletonError::SizeMismatch {
                                path: path.clone(),
                                expected: *size,
                                actual: *size - *left,
                            }
                            .to_string(),
                        ));
                    }
                    *left -= n as u64;
                    return Ok(n);
                }
                Current::Payload {
                    reader, path, size, ..
                } => {
                    // The object must end where the entry does.
                    let mut probe = [0u8; 1];
                    if reader.read(&mut probe)? != 0 {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!(
                                "object for {path} holds more than the {size} bytes the layer says"
                            ),
                        ));
                    }
                }
                _ => {}
            }
            self.current = match self.segments.next() {
                None => return Ok(0),
                Some(Segment::Raw(n)) => Current::Raw(u64::from(*n)),
                Some(Segment::Payload(i)) => {
                    let e = self.entries.get(*i as usize).ok_or_else(|| {
                        io::Error::new(
                            io::ErrorKind::InvalidData,
                            SkeletonError::BadEntry(*i).to_string(),
                        )
                    })?;
                    Current::Payload {
                        reader: (self.open)(e)?,
                        left: e.size,
                        path: e.display_path(),
                        size: e.size,
                    }
                }
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_raw_skips_empty_and_gives_the_bytes_back() {
        let s = Skeleton::from_parts([
            Part::Raw(vec![1]),
            Part::Raw(vec![]),
            Part::Raw(vec![2]),
            Part::Payload(0),
            Part::Raw(vec![3]),
        ])
        .unwrap();
        assert_eq!(
            s.segments(),
            &[Segment::Raw(2), Segment::Payload(0), Segment::Raw(1)]
        );
        let parts: Vec<Part> = s.parts().collect::<io::Result<_>>().unwrap();
        assert_eq!(
            parts,
            vec![Part::Raw(vec![1, 2]), Part::Payload(0), Part::Raw(vec![3])]
        );
        assert_eq!(s.payloads().collect::<Vec<_>>(), vec![0]);
    }

    #[test]
    fn bad_reference_is_an_error() {
        let s = Skeleton::from_parts([Part::Payload(7)]).unwrap();
        assert!(matches!(s.tar_size(&[]), Err(SkeletonError::BadEntry(7))));
        assert!(s.validate(&[]).is_err());
        let mut out = Vec::new();
        assert!(
            s.reader(&[], |_| Ok(io::empty()))
                .read_to_end(&mut out)
                .is_err()
        );
    }

    #[test]
    fn raw_stream_shorter_than_its_segments_is_an_error() {
        let mut s = Skeleton::from_parts([Part::Raw(vec![5; 100])]).unwrap();
        s.segments = vec![Segment::Raw(101)];
        assert!(matches!(
            s.validate(&[]),
            Err(SkeletonError::RawLength {
                expected: 101,
                actual: 100
            })
        ));
        let mut out = Vec::new();
        let err = s
            .reader(&[], |_| Ok(io::empty()))
            .read_to_end(&mut out)
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        assert!(s.parts().any(|p| p.is_err()));
    }
}
