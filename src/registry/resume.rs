//! A blob download that survives a dropped connection: when the body ends early or fails, it
//! asks again from the byte where it stopped (`Range: bytes=N-`), a few times. The caller
//! verifies the digest of what it read, as for any download.

use std::io::{self, Read};
use std::time::Duration;

use reqwest::blocking::Response;

use crate::digest::Digest;
use crate::registry::client::{Registry, RegistryError, error_chain};

/// Reads one blob of known size from a registry, resuming after connection failures.
pub struct ResumingBlob<'r> {
    registry: &'r Registry,
    repository: String,
    digest: Digest,
    size: u64,
    position: u64,
    body: Option<Response>,
    resumes_left: u32,
    resumes: u32,
}

impl<'r> ResumingBlob<'r> {
    /// Starts the download (errors such as 404 surface here, not on the first read).
    pub fn open(
        registry: &'r Registry,
        repository: &str,
        digest: Digest,
        size: u64,
    ) -> Result<ResumingBlob<'r>, RegistryError> {
        let body = registry.get_blob(repository, &digest)?;
        Ok(ResumingBlob {
            registry,
            repository: repository.to_string(),
            digest,
            size,
            position: 0,
            body: Some(body),
            resumes_left: registry.retries(),
            resumes: 0,
        })
    }

    /// Asks for the rest of the blob from the current position.
    fn reopen(&mut self) -> io::Result<()> {
        let (mut body, start) = self
            .registry
            .get_blob_from(&self.repository, &self.digest, self.position)
            .map_err(|e| io::Error::other(error_chain(&e)))?;
        // A server that ignores Range sends everything again: skip what was already read.
        let skip = self.position - start;
        let skipped = io::copy(&mut (&mut body).take(skip), &mut io::sink())?;
        if skipped != skip {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the blob ended before the point where the download stopped",
            ));
        }
        self.body = Some(body);
        Ok(())
    }
}

impl Read for ResumingBlob<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.body.is_none() {
                self.reopen()?;
            }
            let Some(body) = self.body.as_mut() else {
                continue;
            };
            let failure = match body.read(buf) {
                Ok(0) if self.position < self.size && !buf.is_empty() => {
                    io::Error::new(io::ErrorKind::UnexpectedEof, "the connection closed early")
                }
                Ok(n) => {
                    self.position += n as u64;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => e,
            };
            if self.resumes_left == 0 {
                let resumed = match self.resumes {
                    0 => String::new(),
                    n => format!(", after resuming {n} times"),
                };
                return Err(io::Error::new(
                    failure.kind(),
                    format!(
                        "blob {}: {} at byte {} of {}{resumed}",
                        self.digest,
                        error_chain(&failure),
                        self.position,
                        self.size
                    ),
                ));
            }
            self.resumes_left -= 1;
            self.resumes += 1;
            self.body = None;
            std::thread::sleep(Duration::from_millis(100 << self.resumes.min(6)));
        }
    }
}
