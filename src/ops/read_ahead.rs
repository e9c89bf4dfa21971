//! Two cores on one stream: a producer thread (network, blob hashing, decompression) writes
//! into a bounded channel that the calling thread (tar parsing, file hashing, writing) reads.

use std::io::{self, Read, Write};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

/// Bytes per message: large enough that channel overhead vanishes next to hashing.
const CHUNK: usize = 256 << 10;
/// Messages in flight: bounds the memory between the two threads to about 2 MiB.
const DEPTH: usize = 8;

/// Runs `produce` on another thread, writing into a pipe that `consume` reads here. Returns
/// what `consume` returned and how `produce` ended. An error of `produce` reaches `consume` as
/// a read error at the point where it happened; a `consume` that stops early makes the
/// producer's next write fail (broken pipe), which ends it.
pub fn read_ahead<T>(
    produce: impl FnOnce(&mut dyn Write) -> io::Result<()> + Send,
    consume: impl FnOnce(&mut dyn Read) -> T,
) -> (T, io::Result<()>) {
    let (tx, rx) = sync_channel(DEPTH);
    std::thread::scope(|scope| {
        let producer = scope.spawn(move || {
            let mut pipe = PipeWriter {
                tx,
                buf: Vec::with_capacity(CHUNK),
            };
            let produced = produce(&mut pipe);
            let flushed = pipe.flush();
            let result = produced.and(flushed);
            if let Err(e) = &result {
                // The reader sees the failure where the stream stops (it may be gone already).
                let _ = pipe.tx.send(Err(io::Error::new(e.kind(), e.to_string())));
            }
            result
        });
        let mut reader = PipeReader {
            rx,
            chunk: Vec::new(),
            pos: 0,
        };
        let out = consume(&mut reader);
        drop(reader);
        let produced = producer
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the reading thread panicked")));
        (out, produced)
    })
}

struct PipeWriter {
    tx: SyncSender<io::Result<Vec<u8>>>,
    buf: Vec<u8>,
}

impl Write for PipeWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == CHUNK {
            self.flush()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let full = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        self.tx
            .send(Ok(full))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the reader stopped"))
    }
}

struct PipeReader {
    rx: Receiver<io::Result<Vec<u8>>>,
    chunk: Vec<u8>,
    pos: usize,
}

impl Read for PipeReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.chunk.len() {
            match self.rx.recv() {
                Ok(Ok(chunk)) => {
                    self.chunk = chunk;
                    self.pos = 0;
                }
                Ok(Err(e)) => return Err(e),
                // The producer is done (or failed, which `read_ahead` reports).
                Err(_) => return Ok(0),
            }
        }
        let n = out.len().min(self.chunk.len() - self.pos);
        out[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_every_byte_in_order() {
        let data: Vec<u8> = (0..3 * CHUNK + 123).map(|i| (i * 7 % 251) as u8).collect();
        let (got, produced) = read_ahead(
            |out| io::copy(&mut &data[..], out).map(|_| ()),
            |r| {
                let mut v = Vec::new();
                r.read_to_end(&mut v).map(|_| v)
            },
        );
        assert!(produced.is_ok());
        assert_eq!(got.unwrap(), data);
    }

    #[test]
    fn a_producer_error_reaches_the_reader_after_the_bytes_before_it() {
        let (got, produced) = read_ahead(
            |out| {
                out.write_all(b"abc")?;
                Err(io::Error::new(io::ErrorKind::ConnectionReset, "reset"))
            },
            |r| {
                let mut v = Vec::new();
                let e = r.read_to_end(&mut v).unwrap_err();
                (v, e.kind())
            },
        );
        assert_eq!(got, (b"abc".to_vec(), io::ErrorKind::ConnectionReset));
        assert_eq!(produced.unwrap_err().kind(), io::ErrorKind::ConnectionReset);
    }

    #[test]
    fn a_reader_that_stops_early_ends_the_producer() {
        let (got, produced) = read_ahead(
            |out| loop {
                out.write_all(&[0; 4096])?;
            },
            |r| {
                let mut first = [0u8; 10];
                r.read_exact(&mut first).map(|_| first.len())
            },
        );
        assert_eq!(got.unwrap(), 10);
        assert_eq!(produced.unwrap_err().kind(), io::ErrorKind::BrokenPipe);
    }
}
