//! Writes zstd:chunked layers of the current generation (tar-split in the TOC, 64-byte footer)
//! from a tar stream: one zstd frame per file chunk, header bytes in frames between them, then
//! the TOC, the tar-split and the footer. Frames are independent, so batches of them are
//! compressed in parallel.

use std::collections::HashSet;
use std::io::{self, Read, Write};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use base64::Engine;

use crate::chunked::annotations::{ChunkedAnnotations, Generation, Position};
use crate::chunked::frames::{SKIPPABLE_HEADER, skippable_frame};
use crate::chunked::rollsum::{Chunk, ChunkKind, Chunker};
use crate::chunked::tarsplit::{self, Crc64, TsEntry};
use crate::chunked::toc::{Toc, TocEntry};
use crate::digest::{Digest, Hasher, HashingReader, HashingWriter};
use crate::layer::entry::normalize_path;
use crate::layer::tar::{TarError, TarReader};

/// Options of the writer.
#[derive(Clone, Copy, Debug)]
pub struct WriteOptions {
    /// zstd level (1–19).
    pub level: i32,
    /// Compression threads (0 = one per core).
    pub threads: usize,
}

impl Default for WriteOptions {
    fn default() -> Self {
        WriteOptions {
            level: 10,
            threads: 0,
        }
    }
}

/// Errors of the writer.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error(transparent)]
    Tar(#[from] TarError),
    #[error("writing the layer: {0}")]
    Io(#[from] io::Error),
    #[error("zstd:chunked cannot carry {0}")]
    Unsupported(String),
}

/// What was written.
#[derive(Clone, Debug)]
pub struct WrittenLayer {
    /// Digest and size of the blob.
    pub digest: Digest,
    pub size: u64,
    /// Digest and size of the uncompressed tar.
    pub diff_id: Digest,
    pub tar_size: u64,
    /// The descriptor annotations (both key sets).
    pub annotations: ChunkedAnnotations,
}

enum Job {
    Data(Vec<u8>),
    Zeros(u64),
}

/// Compresses frames in parallel batches and writes them in order.
struct Frames<W: Write> {
    out: HashingWriter<W>,
    level: i32,
    threads: usize,
    batch: Vec<Job>,
    batch_bytes: usize,
    /// (start, end) of every frame written or queued, by id.
    spans: Vec<(u64, u64)>,
    written: u64,
}

const BATCH_BYTES: usize = 16 << 20;

fn compress_job(job: &Job, level: i32) -> io::Result<Vec<u8>> {
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), level)?;
    enc.include_checksum(true)?;
    match job {
        Job::Data(d) => {
            enc.set_pledged_src_size(Some(d.len() as u64))?;
            enc.write_all(d)?;
        }
        Job::Zeros(n) => {
            enc.set_pledged_src_size(Some(*n))?;
            let zeros = vec![0u8; 64 << 10];
            let mut left = *n;
            while left > 0 {
                let k = left.min(zeros.len() as u64) as usize;
                enc.write_all(&zeros[..k])?;
                left -= k as u64;
            }
        }
    }
    enc.finish()
}

impl<W: Write> Frames<W> {
    fn push(&mut self, job: Job) -> io::Result<usize> {
        self.batch_bytes += match &job {
            Job::Data(d) => d.len(),
            Job::Zeros(_) => 4096,
        };
        self.batch.push(job);
        self.spans.push((0, 0));
        if self.batch_bytes >= BATCH_BYTES {
            self.flush()?;
        }
        Ok(self.spans.len() - 1)
    }

    fn flush(&mut self) -> io::Result<()> {
        let jobs = std::mem::take(&mut self.batch);
        self.batch_bytes = 0;
        let first_id = self.spans.len() - jobs.len();
        let results: Vec<Mutex<Option<io::Result<Vec<u8>>>>> =
            jobs.iter().map(|_| Mutex::new(None)).collect();
        let next = AtomicUsize::new(0);
        let level = self.level;
        std::thread::scope(|s| {
            for _ in 0..self.threads.max(1).min(jobs.len().max(1)) {
                s.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(job) = jobs.get(i) else { break };
                        let r = compress_job(job, level);
                        *results[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
                    }
                });
            }
        });
        for (i, slot) in results.into_iter().enumerate() {
            let bytes = slot
                .into_inner()
                .unwrap_or_else(|e| e.into_inner())
                .unwrap_or_else(|| Ok(Vec::new()))?;
            let start = self.written;
            self.out.write_all(&bytes)?;
            self.written += bytes.len() as u64;
            self.spans[first_id + i] = (start, self.written);
        }
        Ok(())
    }
}

/// A TOC entry whose offsets are still frame ids.
struct Pending {
    toc: TocEntry,
    frames: Option<(usize, usize)>,
    /// (frame id, offset in file, size, digest, kind) of each chunk.
    chunks: Vec<(usize, u64, u64, Digest, ChunkKind)>,
}

fn type_name(flag: u8) -> &'static str {
    match flag {
        b'0' => "reg",
        b'1' => "hardlink",
        b'2' => "symlink",
        b'3' => "char",
        b'4' => "block",
        b'5' => "dir",
        _ => "fifo",
    }
}

fn utf8(what: &str, b: &[u8]) -> Result<String, WriteError> {
    String::from_utf8(b.to_vec()).map_err(|_| {
        WriteError::Unsupported(format!(
            "the non-UTF-8 {what} {:?}",
            String::from_utf8_lossy(b)
        ))
    })
}

/// Writes a zstd:chunked blob for the tar read from `tar` into `out`.
pub fn write_chunked(
    tar: impl Read,
    out: impl Write,
    opts: WriteOptions,
) -> Result<WrittenLayer, WriteError> {
    let threads = if opts.threads == 0 {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    } else {
        opts.threads
    };
    let mut frames = Frames {
        out: HashingWriter::new(out),
        level: opts.level,
        threads,
        batch: Vec::new(),
        batch_bytes: 0,
        spans: Vec::new(),
        written: 0,
    };
    let mut reader = TarReader::new(HashingReader::new(tar));
    let mut header_frame: Vec<u8> = Vec::new();
    let mut split: Vec<TsEntry> = Vec::new();
    let mut pending: Vec<Pending> = Vec::new();
    let mut seen: HashSet<Vec<u8>> = HashSet::new();
    let mut buf = vec![0u8; 128 << 10];

    while let Some(h) = reader.next_header()? {
        let raw = reader.take_raw();
        header_frame.extend_from_slice(&raw);
        split.push(TsEntry::Segment(raw));
        let key = normalize_path(&h.name).unwrap_or_else(|_| h.name.clone());
        if !seen.insert(key) {
            return Err(WriteError::Unsupported(format!(
                "duplicate path {:?} in one layer",
                h.display_name()
            )));
        }
        if h.size > 0 && h.typeflag != b'0' {
            return Err(WriteError::Unsupported(format!(
                "content on the non-regular entry {:?}",
                h.display_name()
            )));
        }
        let mut toc = TocEntry {
            kind: type_name(h.typeflag).to_string(),
            name: utf8("path", &h.name)?,
            link_name: utf8("link target", &h.link_name)?,
            mode: i64::from(h.mode),
            size: h.size as i64,
            uid: h.uid as i64,
            gid: h.gid as i64,
            modtime: Some(h.mtime),
            accesstime: h.atime,
            changetime: h.ctime,
            dev_major: i64::from(h.dev_major),
            dev_minor: i64::from(h.dev_minor),
            ..Default::default()
        };
        for (k, v) in &h.xattrs {
            toc.xattrs.insert(
                utf8("xattr name", k)?,
                base64::engine::general_purpose::STANDARD.encode(v),
            );
        }
        let mut p = Pending {
            toc,
            frames: None,
            chunks: Vec::new(),
        };
        if h.size > 0 {
            // Header bytes never share a frame with file data.
            frames.push(Job::Data(std::mem::take(&mut header_frame)))?;
            let mut file_hash = Hasher::new();
            let mut crc = Crc64::new();
            let mut chunker = Chunker::new();
            let mut emitted: Vec<(Chunk, Vec<u8>)> = Vec::new();
            loop {
                let n = reader.read_payload(&mut buf)?;
                if n == 0 {
                    break;
                }
                file_hash.update(&buf[..n]);
                crc.update(&buf[..n]);
                chunker.push(&buf[..n], &mut |c, b| emitted.push((c, b.to_vec())));
                emit_chunks(&mut frames, &mut emitted, &mut p)?;
            }
            chunker.finish(&mut |c, b| emitted.push((c, b.to_vec())));
            emit_chunks(&mut frames, &mut emitted, &mut p)?;
            let first = p.chunks.first().map(|c| c.0).unwrap_or(0);
            let last = p.chunks.last().map(|c| c.0).unwrap_or(0);
            p.frames = Some((first, last));
            p.toc.digest = Some(file_hash.finish());
            split.push(TsEntry::File {
                name: h.name.clone(),
                size: h.size,
                crc: Some(crc.finish()),
            });
        } else {
            split.push(TsEntry::File {
                name: h.name.clone(),
                size: 0,
                crc: None,
            });
        }
        pending.push(p);
    }
    // End of archive: the last padding, the end blocks and anything after them.
    let tail = reader.take_raw();
    header_frame.extend_from_slice(&tail);
    let eof_len = leading_eof_len(&tail);
    split.push(TsEntry::Segment(tail[..eof_len].to_vec()));
    for piece in tail[eof_len..].chunks(tarsplit::MAX_SEGMENT) {
        split.push(TsEntry::Segment(piece.to_vec()));
    }
    if !header_frame.is_empty() {
        frames.push(Job::Data(header_frame))?;
    }
    frames.flush()?;
    let (diff_id, tar_size, _) = reader.into_inner().finish();

    // Offsets are known now.
    let mut toc = Toc {
        version: 1,
        entries: Vec::with_capacity(pending.len()),
        tar_split_digest: None,
    };
    for p in pending {
        let mut e = p.toc;
        if let Some((first, last)) = p.frames {
            e.offset = frames.spans[first].0 as i64;
            e.end_offset = frames.spans[last].1 as i64;
        }
        if p.chunks.len() >= 2 {
            let name = e.name.clone();
            let (_, _, size0, digest0, kind0) = p.chunks[0];
            e.chunk_size = size0 as i64;
            e.chunk_digest = Some(digest0);
            e.chunk_type = chunk_type(kind0);
            toc.entries.push(e);
            for &(id, off, size, digest, kind) in &p.chunks[1..] {
                toc.entries.push(TocEntry {
                    kind: "chunk".into(),
                    name: name.clone(),
                    offset: frames.spans[id].0 as i64,
                    chunk_size: size as i64,
                    chunk_offset: off as i64,
                    chunk_digest: Some(digest),
                    chunk_type: chunk_type(kind),
                    ..Default::default()
                });
            }
        } else {
            toc.entries.push(e);
        }
    }
    let split_json = tarsplit::encode(&split);
    let split_z = zstd::bulk::compress(&split_json, opts.level)?;
    toc.tar_split_digest = Some(Digest::of(&split_z));
    let toc_json = toc.to_json();
    let toc_z = zstd::bulk::compress(&toc_json, opts.level)?;

    let data_end = frames.written;
    let toc_pos = Position {
        offset: data_end + SKIPPABLE_HEADER,
        compressed_len: toc_z.len() as u64,
        uncompressed_len: toc_json.len() as u64,
    };
    let ts_pos = Position {
        offset: toc_pos.offset + toc_pos.compressed_len + SKIPPABLE_HEADER,
        compressed_len: split_z.len() as u64,
        uncompressed_len: split_json.len() as u64,
    };
    let mut trailer = skippable_frame(&toc_z);
    trailer.extend(skippable_frame(&split_z));
    trailer.extend(crate::chunked::footer::write(toc_pos, ts_pos));
    frames.out.write_all(&trailer)?;
    frames.out.flush()?;
    let (digest, size, _) = frames.out.finish();
    Ok(WrittenLayer {
        digest,
        size,
        diff_id,
        tar_size,
        annotations: ChunkedAnnotations {
            generation: Generation::Current,
            toc_digest: Digest::of(&toc_z),
            toc: toc_pos,
            tar_split: Some(ts_pos),
        },
    })
}

/// Queues a frame for each chunk the chunker reported.
fn emit_chunks<W: Write>(
    frames: &mut Frames<W>,
    emitted: &mut Vec<(Chunk, Vec<u8>)>,
    p: &mut Pending,
) -> io::Result<()> {
    for (c, bytes) in emitted.drain(..) {
        let (id, digest) = match c.kind {
            ChunkKind::Data => {
                let d = Digest::of(&bytes);
                (frames.push(Job::Data(bytes))?, d)
            }
            ChunkKind::Zeros => (frames.push(Job::Zeros(c.len))?, zeros_digest(c.len)),
        };
        p.chunks.push((id, c.offset, c.len, digest, c.kind));
    }
    Ok(())
}

/// Length of the first tar-split segment at EOF: the last padding plus the end-of-archive
/// blocks (up to two zero blocks); anything after goes into further segments.
fn leading_eof_len(tail: &[u8]) -> usize {
    // The tail starts with the previous entry's padding (< 512 bytes, all zeros) and then the
    // zero blocks; take everything up to 1024 bytes past the padding, within the zero prefix.
    let zeros = tail.iter().take_while(|&&b| b == 0).count();
    let pad = zeros % 512;
    zeros.min(pad + 1024)
}

fn chunk_type(kind: ChunkKind) -> String {
    match kind {
        ChunkKind::Data => String::new(),
        ChunkKind::Zeros => "zeros".into(),
    }
}

fn zeros_digest(len: u64) -> Digest {
    let zeros = vec![0u8; 64 << 10];
    let mut h = Hasher::new();
    let mut left = len;
    while left > 0 {
        let k = left.min(zeros.len() as u64) as usize;
        h.update(&zeros[..k]);
        left -= k as u64;
    }
    h.finish()
}
