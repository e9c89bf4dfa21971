//! SHA-256 digests in the OCI `sha256:<hex>` form, and hashing helpers.

use std::fmt;
use std::io::{self, Read, Write};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The digest of an empty byte string, which every empty file has.
pub const EMPTY_SHA256_HEX: &str =
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// A SHA-256 digest. The only algorithm zstore accepts: OCI registries and layouts use it almost
/// exclusively, and one algorithm keeps object names unambiguous.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest([u8; 32]);

/// Why a string is not a valid digest.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DigestParseError {
    #[error("digest {0:?} does not start with \"sha256:\"")]
    Algorithm(String),
    #[error("digest {0:?} is not 64 lowercase hex digits")]
    Hex(String),
}

impl Digest {
    /// Wraps raw digest bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Digest(bytes)
    }

    /// Hashes a byte slice.
    pub fn of(data: &[u8]) -> Self {
        let mut h = Hasher::new();
        h.update(data);
        h.finish()
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The 64 lowercase hex digits, without the algorithm prefix.
    pub fn hex(&self) -> String {
        // Called for every object name: a table lookup, not a per-char iterator.
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut out = Vec::with_capacity(64);
        for b in self.0 {
            out.push(DIGITS[usize::from(b >> 4)]);
            out.push(DIGITS[usize::from(b & 0x0f)]);
        }
        String::from_utf8(out).unwrap_or_default()
    }

    /// Parses the hex part alone (64 lowercase hex digits).
    pub fn from_hex(hex_digits: &str) -> Result<Self, DigestParseError> {
        fn nibble(c: u8) -> Option<u8> {
            match c {
                b'0'..=b'9' => Some(c - b'0'),
                b'a'..=b'f' => Some(c - b'a' + 10),
                _ => None,
            }
        }
        let bad = || DigestParseError::Hex(hex_digits.to_string());
        let digits = hex_digits.as_bytes();
        if digits.len() != 64 {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
            *byte = (nibble(pair[0]).ok_or_else(bad)? << 4) | nibble(pair[1]).ok_or_else(bad)?;
        }
        Ok(Digest(out))
    }

    /// True for the digest of the empty string.
    pub fn is_empty_content(&self) -> bool {
        self.hex() == EMPTY_SHA256_HEX
    }
}

impl FromStr for Digest {
    type Err = DigestParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let hex_digits = s
            .strip_prefix("sha256:")
            .ok_or_else(|| DigestParseError::Algorithm(s.to_string()))?;
        Digest::from_hex(hex_digits)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.collect_str(self)
        } else {
            self.0.serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let s = String::deserialize(d)?;
            s.parse().map_err(serde::de::Error::custom)
        } else {
            Ok(Digest(<[u8; 32]>::deserialize(d)?))
        }
    }
}

const SHA256_IV: [u32; 8] = [
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
];

/// The state of a SHA-256 computation at a 64-byte boundary: hashing can resume from it. A
/// layer keeps one per file it holds, so that a near-identical layer's DiffID can be checked by
/// hashing only from its first changed file on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Midstate {
    pub state: [u32; 8],
    /// Bytes hashed so far (a multiple of 64).
    pub len: u64,
}

/// An incremental SHA-256 (sha2's compression function, with SHA-NI where the CPU has it) that
/// can report and resume from its state at block boundaries.
#[derive(Clone)]
pub struct Hasher {
    state: [u32; 8],
    buf: [u8; 64],
    buf_len: usize,
    len: u64,
}

impl Default for Hasher {
    fn default() -> Self {
        Self::new()
    }
}

impl Hasher {
    pub fn new() -> Self {
        Hasher {
            state: SHA256_IV,
            buf: [0; 64],
            buf_len: 0,
            len: 0,
        }
    }

    /// Continues a computation from a recorded state.
    pub fn resume(m: &Midstate) -> Self {
        Hasher {
            state: m.state,
            buf: [0; 64],
            buf_len: 0,
            len: m.len,
        }
    }

    /// The state, if the bytes hashed so far end on a 64-byte boundary.
    pub fn midstate(&self) -> Option<Midstate> {
        (self.buf_len == 0).then_some(Midstate {
            state: self.state,
            len: self.len,
        })
    }

    pub fn update(&mut self, mut data: &[u8]) {
        self.len += data.len() as u64;
        if self.buf_len > 0 {
            let take = (64 - self.buf_len).min(data.len());
            self.buf[self.buf_len..self.buf_len + take].copy_from_slice(&data[..take]);
            self.buf_len += take;
            data = &data[take..];
            if self.buf_len < 64 {
                return;
            }
            sha2::block_api::compress256(&mut self.state, &[self.buf]);
            self.buf_len = 0;
        }
        let (blocks, rest) = data.as_chunks::<64>();
        if !blocks.is_empty() {
            sha2::block_api::compress256(&mut self.state, blocks);
        }
        self.buf[..rest.len()].copy_from_slice(rest);
        self.buf_len = rest.len();
    }

    pub fn finish(mut self) -> Digest {
        let bits = self.len.wrapping_mul(8);
        let mut tail = [0u8; 128];
        tail[..self.buf_len].copy_from_slice(&self.buf[..self.buf_len]);
        tail[self.buf_len] = 0x80;
        let total = if self.buf_len < 56 { 64 } else { 128 };
        tail[total - 8..total].copy_from_slice(&bits.to_be_bytes());
        let (blocks, _) = tail[..total].as_chunks::<64>();
        sha2::block_api::compress256(&mut self.state, blocks);
        let mut out = [0u8; 32];
        for (i, w) in self.state.iter().enumerate() {
            out[i * 4..i * 4 + 4].copy_from_slice(&w.to_be_bytes());
        }
        Digest(out)
    }
}

/// A reader that hashes and counts everything read through it.
pub struct HashingReader<R> {
    inner: R,
    hasher: Hasher,
    count: u64,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Hasher::new(),
            count: 0,
        }
    }
    /// Bytes read so far.
    pub fn count(&self) -> u64 {
        self.count
    }
    /// The hash state, if the bytes read so far end on a 64-byte boundary.
    pub fn midstate(&self) -> Option<Midstate> {
        self.hasher.midstate()
    }
    /// The digest of everything read, and the inner reader.
    pub fn finish(self) -> (Digest, u64, R) {
        (self.hasher.finish(), self.count, self.inner)
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

/// A writer that hashes and counts everything written through it.
pub struct HashingWriter<W> {
    inner: W,
    hasher: Hasher,
    count: u64,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Hasher::new(),
            count: 0,
        }
    }
    pub fn finish(self) -> (Digest, u64, W) {
        (self.hasher.finish(), self.count, self.inner)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Hashes everything a reader yields, with a large buffer.
pub fn hash_reader(mut r: impl Read) -> io::Result<(Digest, u64)> {
    let mut h = Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        h.update(&buf[..n]);
        total += n as u64;
    }
    Ok((h.finish(), total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        let d: Digest = format!("sha256:{EMPTY_SHA256_HEX}").parse().unwrap();
        assert!(d.is_empty_content());
        assert_eq!(d, Digest::of(b""));
        assert_eq!(d.to_string(), format!("sha256:{EMPTY_SHA256_HEX}"));
    }

    #[test]
    fn rejects_bad_digests() {
        for bad in [
            "",
            "sha256:",
            "sha512:00",
            "sha256:ABCDEF0000000000000000000000000000000000000000000000000000000000",
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b85",
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b8555",
            "sha256:../../../../etc/passwd000000000000000000000000000000000000000000",
        ] {
            assert!(bad.parse::<Digest>().is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn hasher_matches_sha2_and_resumes() {
        use sha2::Digest as _;
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 + i / 13) as u8).collect();
        for len in [0usize, 1, 55, 56, 63, 64, 65, 119, 120, 128, 1000, 100_000] {
            let expected = sha2::Sha256::digest(&data[..len]);
            let mut h = Hasher::new();
            for piece in data[..len].chunks(37) {
                h.update(piece);
            }
            assert_eq!(h.finish().as_bytes()[..], expected[..], "length {len}");
        }
        let mut h = Hasher::new();
        h.update(&data[..512]);
        let m = h.midstate().expect("block boundary");
        let mut resumed = Hasher::resume(&m);
        resumed.update(&data[512..]);
        assert_eq!(resumed.finish(), Digest::of(&data));
        h.update(&data[512..513]);
        assert!(h.midstate().is_none());
    }

    #[test]
    fn json_round_trip() {
        let d = Digest::of(b"abc");
        let s = serde_json::to_string(&d).unwrap();
        assert_eq!(s, format!("\"{d}\""));
        assert_eq!(serde_json::from_str::<Digest>(&s).unwrap(), d);
        let b = postcard::to_allocvec(&d).unwrap();
        assert_eq!(postcard::from_bytes::<Digest>(&b).unwrap(), d);
    }
}
