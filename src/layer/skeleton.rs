//! The bytes of a layer's tar that are not file content ("tar-split", in containers/storage
//! terms): headers, extension headers, padding and the end-of-archive trailer, interleaved with
//! references to entries whose content lives in the object store. With the objects it rebuilds
//! the uncompressed tar byte for byte.

use std::io::{self, Read};

use serde::{Deserialize, Serialize};

use crate::layer::entry::Entry;

/// One piece of the tar stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Segment {
    /// Bytes kept verbatim.
    Raw(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The content of entry number `.0` of the layer's table of contents (a regular file whose
    /// content is an object).
    Payload(u32),
}

/// The non-content bytes of a tar stream, in order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skeleton {
    pub segments: Vec<Segment>,
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
    #[error("rebuilding the tar: {0}")]
    Io(#[from] io::Error),
}

impl Skeleton {
    /// Appends raw bytes, merging with a preceding raw segment.
    pub fn push_raw(&mut self, bytes: Vec<u8>) {
        if bytes.is_empty() {
            return;
        }
        if let Some(Segment::Raw(prev)) = self.segments.last_mut() {
            prev.extend_from_slice(&bytes);
        } else {
            self.segments.push(Segment::Raw(bytes));
        }
    }

    /// Appends a reference to an entry's content.
    pub fn push_payload(&mut self, entry: u32) {
        self.segments.push(Segment::Payload(entry));
    }

    /// Size of the tar this skeleton rebuilds.
    pub fn tar_size(&self, entries: &[Entry]) -> Result<u64, SkeletonError> {
        let mut total = 0u64;
        for seg in &self.segments {
            total += match seg {
                Segment::Raw(b) => b.len() as u64,
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

    /// Checks that every payload reference names an entry with content.
    pub fn validate(&self, entries: &[Entry]) -> Result<(), SkeletonError> {
        for seg in &self.segments {
            if let Segment::Payload(i) = seg {
                let e = entries
                    .get(*i as usize)
                    .ok_or(SkeletonError::BadEntry(*i))?;
                if !e.has_object() {
                    return Err(SkeletonError::BadEntry(*i));
                }
            }
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
            entries,
            open,
            current: Current::None,
        }
    }
}

enum Current<'a, R> {
    None,
    Raw(&'a [u8]),
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
    entries: &'a [Entry],
    open: F,
    current: Current<'a, R>,
}

impl<R: Read, F: FnMut(&Entry) -> io::Result<R>> Read for SkeletonReader<'_, R, F> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            match &mut self.current {
                Current::Raw(rest) if !rest.is_empty() => {
                    let n = rest.len().min(buf.len());
                    buf[..n].copy_from_slice(&rest[..n]);
                    *rest = &rest[n..];
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
                Some(Segment::Raw(b)) => Current::Raw(b),
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
    fn merges_raw_and_skips_empty() {
        let mut s = Skeleton::default();
        s.push_raw(vec![1]);
        s.push_raw(vec![]);
        s.push_raw(vec![2]);
        s.push_payload(0);
        s.push_raw(vec![3]);
        assert_eq!(
            s.segments,
            vec![
                Segment::Raw(vec![1, 2]),
                Segment::Payload(0),
                Segment::Raw(vec![3])
            ]
        );
    }

    #[test]
    fn bad_reference_is_an_error() {
        let mut s = Skeleton::default();
        s.push_payload(7);
        assert!(matches!(s.tar_size(&[]), Err(SkeletonError::BadEntry(7))));
        assert!(s.validate(&[]).is_err());
        let mut out = Vec::new();
        assert!(
            s.reader(&[], |_| Ok(io::empty()))
                .read_to_end(&mut out)
                .is_err()
        );
    }
}
