//! A registry blob as a [`RangeSource`]: ranges are prefetched with coalesced multi-range
//! requests (bounded parts per request, several requests at once) into a spool file, then
//! served from there; anything not prefetched is fetched on demand.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::chunked::reader::RangeSource;
use crate::digest::Digest;
use crate::registry::client::{RangeReply, Registry, RegistryError};
use crate::registry::ranges;

/// Parts per request: distribution accepts 2000, containers/storage sends at most 1024.
pub const MAX_PARTS: usize = 1000;
/// Gaps up to this size between wanted ranges are fetched too (cheaper than a part header).
pub const BRIDGE_GAP: u64 = 1024;
/// Concurrent range requests.
pub const CONCURRENCY: usize = 4;

struct Spool {
    file: File,
    len: u64,
    /// start → (end, offset in the spool file)
    index: BTreeMap<u64, (u64, u64)>,
    /// The whole blob is in the spool at offset 0 (the server ignored Range).
    whole: bool,
}

/// A blob of a registry repository.
pub struct RegistrySource<'a> {
    registry: &'a Registry,
    repo: String,
    digest: Digest,
    size: u64,
    spool: Mutex<Spool>,
    read: AtomicU64,
}

impl<'a> RegistrySource<'a> {
    /// `spool` is an empty temporary file (deleted by the caller).
    pub fn new(
        registry: &'a Registry,
        repo: &str,
        digest: Digest,
        size: u64,
        spool: File,
    ) -> RegistrySource<'a> {
        RegistrySource {
            registry,
            repo: repo.to_string(),
            digest,
            size,
            spool: Mutex::new(Spool {
                file: spool,
                len: 0,
                index: BTreeMap::new(),
                whole: false,
            }),
            read: AtomicU64::new(0),
        }
    }

    fn store_part(&self, r: Range<u64>, bytes: &[u8]) -> io::Result<()> {
        let mut s = self.spool.lock().unwrap_or_else(|e| e.into_inner());
        let off = s.len;
        s.file.write_all_at(bytes, off)?;
        s.len += bytes.len() as u64;
        s.index.insert(r.start, (r.end, off));
        Ok(())
    }

    /// Where a range is in the spool, if all of it is there.
    fn lookup(&self, r: &Range<u64>) -> Option<u64> {
        let s = self.spool.lock().unwrap_or_else(|e| e.into_inner());
        if s.whole {
            return Some(r.start);
        }
        let (start, (end, off)) = s.index.range(..=r.start).next_back()?;
        (r.end <= *end).then(|| off + (r.start - start))
    }

    /// Fetches one batch of ranges; on 400/416 splits it in halves (servers with range limits).
    fn fetch_batch(&self, batch: &[Range<u64>]) -> Result<(), RegistryError> {
        match self.registry.get_ranges(&self.repo, &self.digest, batch) {
            Ok(RangeReply::Parts(parts, body_bytes)) => {
                self.read.fetch_add(body_bytes, Ordering::Relaxed);
                for (r, b) in parts {
                    self.store_part(r, &b)
                        .map_err(|e| spool_err(&self.digest, e))?;
                }
                // A server may serve fewer parts than asked: fetch what is missing one by one.
                for r in batch {
                    if self.lookup(r).is_none() {
                        self.fetch_single(r)?;
                    }
                }
                Ok(())
            }
            Ok(RangeReply::Whole(mut resp)) => {
                // The server ignored Range: keep the body instead of downloading twice.
                let mut s = self.spool.lock().unwrap_or_else(|e| e.into_inner());
                if !s.whole {
                    let mut buf = vec![0u8; 1 << 20];
                    let mut off = 0u64;
                    loop {
                        let n = resp.read(&mut buf).map_err(|source| RegistryError::Body {
                            url: format!("blob {}", self.digest),
                            source,
                        })?;
                        if n == 0 {
                            break;
                        }
                        s.file
                            .write_all_at(&buf[..n], off)
                            .map_err(|e| spool_err(&self.digest, e))?;
                        off += n as u64;
                        self.read.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    if off != self.size {
                        return Err(RegistryError::Protocol {
                            url: format!("blob {}", self.digest),
                            what: format!(
                                "whole-blob reply of {off} bytes, expected {}",
                                self.size
                            ),
                        });
                    }
                    s.whole = true;
                    s.len = off;
                }
                Ok(())
            }
            Err(e)
                if matches!(e.status().map(|s| s.as_u16()), Some(400) | Some(416))
                    && batch.len() > 1 =>
            {
                let (a, b) = batch.split_at(batch.len() / 2);
                self.fetch_batch(a)?;
                self.fetch_batch(b)
            }
            Err(e) => Err(e),
        }
    }

    fn fetch_single(&self, r: &Range<u64>) -> Result<(), RegistryError> {
        match self
            .registry
            .get_ranges(&self.repo, &self.digest, std::slice::from_ref(r))?
        {
            RangeReply::Parts(parts, n) => {
                self.read.fetch_add(n, Ordering::Relaxed);
                for (got, b) in parts {
                    self.store_part(got, &b)
                        .map_err(|e| spool_err(&self.digest, e))?;
                }
                if self.lookup(r).is_none() {
                    return Err(RegistryError::Protocol {
                        url: format!("blob {}", self.digest),
                        what: format!("range {r:?} not served"),
                    });
                }
                Ok(())
            }
            whole @ RangeReply::Whole(_) => {
                drop(whole);
                self.fetch_batch(std::slice::from_ref(r))
            }
        }
    }

    /// Fetches all `wanted` ranges (coalesced, batched, concurrently) into the spool.
    pub fn prefetch(&self, wanted: &[Range<u64>]) -> Result<(), RegistryError> {
        let merged = ranges::coalesce(wanted, BRIDGE_GAP);
        let batches: Vec<&[Range<u64>]> = merged.chunks(MAX_PARTS).collect();
        let next = std::sync::atomic::AtomicUsize::new(0);
        let errors: Mutex<Vec<RegistryError>> = Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for _ in 0..CONCURRENCY.min(batches.len()) {
                s.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(batch) = batches.get(i) else { break };
                        if self.spool.lock().unwrap_or_else(|e| e.into_inner()).whole {
                            break;
                        }
                        // A broken transfer is asked again for the ranges still missing.
                        let result = self.registry.retrying_body(|| {
                            let missing: Vec<Range<u64>> = batch
                                .iter()
                                .filter(|r| self.lookup(r).is_none())
                                .cloned()
                                .collect();
                            if missing.is_empty() {
                                return Ok(());
                            }
                            self.fetch_batch(&missing)
                        });
                        if let Err(e) = result {
                            errors.lock().unwrap_or_else(|e| e.into_inner()).push(e);
                            break;
                        }
                    }
                });
            }
        });
        match errors
            .into_inner()
            .unwrap_or_else(|e| e.into_inner())
            .into_iter()
            .next()
        {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

fn spool_err(digest: &Digest, e: io::Error) -> RegistryError {
    RegistryError::Protocol {
        url: format!("blob {digest}"),
        what: format!("spooling ranges: {e}"),
    }
}

fn to_io(e: RegistryError) -> io::Error {
    io::Error::other(e.to_string())
}

impl RangeSource for RegistrySource<'_> {
    fn read_range(&self, range: Range<u64>) -> io::Result<Vec<u8>> {
        let mut v = Vec::with_capacity((range.end - range.start) as usize);
        self.open_range(range)?.read_to_end(&mut v)?;
        Ok(v)
    }

    fn open_range(&self, range: Range<u64>) -> io::Result<Box<dyn Read + Send + '_>> {
        if range.end > self.size {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("range {range:?} past the {}-byte blob", self.size),
            ));
        }
        if range.start >= range.end {
            return Ok(Box::new(io::empty()));
        }
        if self.lookup(&range).is_none() {
            self.registry
                .retrying_body(|| self.fetch_single(&range))
                .map_err(to_io)?;
        }
        let off = self
            .lookup(&range)
            .ok_or_else(|| io::Error::other("range missing after fetch"))?;
        let file = {
            let s = self.spool.lock().unwrap_or_else(|e| e.into_inner());
            s.file.try_clone()?
        };
        let len = range.end - range.start;
        Ok(Box::new(SpoolReader {
            file,
            pos: off,
            end: off + len,
        }))
    }

    fn bytes_read(&self) -> u64 {
        self.read.load(Ordering::Relaxed)
    }
}

/// Reads a range of the spool file.
struct SpoolReader {
    file: File,
    pos: u64,
    end: u64,
}

impl Read for SpoolReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = buf.len().min((self.end - self.pos) as usize);
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "spool ends early",
            ));
        }
        self.pos += n as u64;
        Ok(n)
    }
}
