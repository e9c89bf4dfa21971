//! A streaming tar reader that keeps every byte it does not hand out as file content.
//!
//! zstore must rebuild each layer's tar byte for byte (`export`, DiffID checks, push), so the
//! reader returns, besides each parsed header, the raw bytes that preceded the entry's payload:
//! the previous entry's padding, extension headers (PAX `x`/`g`, GNU `L`/`K`) and the header
//! itself. Regular file payloads are the only bytes not kept raw; they go to the object store.
//!
//! It understands V7, ustar, PAX and GNU headers, base-256 numbers, and rejects what zstore
//! cannot reproduce or apply (sparse files, multi-volume archives) with a clear error.

use std::io::{self, Read};

/// Size of a tar block.
pub const BLOCK: usize = 512;
/// Upper bound for one PAX or GNU long-name extension payload; bounds memory on hostile input.
pub const MAX_EXTENSION_SIZE: u64 = 1 << 20;
/// Upper bound for bytes after the end-of-archive marker (kept raw for byte-exact export).
pub const MAX_TRAILER_SIZE: u64 = 64 << 20;
/// Upper bound for data carried by an entry that is not a regular file (kept raw).
pub const MAX_RAW_PAYLOAD: u64 = 64 << 20;

/// Errors in a tar stream. Offsets are in the uncompressed tar.
#[derive(Debug, thiserror::Error)]
pub enum TarError {
    #[error("reading the tar stream: {0}")]
    Io(#[from] io::Error),
    #[error("tar stream ends inside a header at offset {0}")]
    TruncatedHeader(u64),
    #[error("tar stream ends inside the content of {name:?} (offset {offset})")]
    TruncatedPayload { name: String, offset: u64 },
    #[error("bad tar header checksum at offset {0}")]
    Checksum(u64),
    #[error("bad numeric field {field} in the tar header at offset {offset}")]
    Number { field: &'static str, offset: u64 },
    #[error("malformed PAX extended header at offset {0}")]
    Pax(u64),
    #[error("tar extension header at offset {offset} is {size} bytes, over the {max}-byte limit")]
    ExtensionTooLarge { offset: u64, size: u64, max: u64 },
    #[error(
        "unsupported tar entry type {typeflag:?} for {name:?} (sparse and multi-volume entries cannot be stored)"
    )]
    UnsupportedType { typeflag: char, name: String },
    #[error("more than {0} bytes follow the end-of-archive marker")]
    TrailerTooLarge(u64),
    #[error(
        "entry at tar offset {offset} is not a regular file but carries {size} bytes of data (at most {max} are kept)"
    )]
    RawPayloadTooLarge { offset: u64, size: u64, max: u64 },
}

/// A modification time with nanoseconds.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    serde::Serialize,
    serde::Deserialize,
)]
pub struct Timestamp {
    pub secs: i64,
    pub nanos: u32,
}

/// One tar entry's header after PAX and GNU extensions are applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TarHeader {
    /// Offset of the header block (after any extension headers) in the tar stream.
    pub offset: u64,
    /// The raw entry name (PAX `path` or GNU long name when present).
    pub name: Vec<u8>,
    /// Link target for symlinks and hardlinks.
    pub link_name: Vec<u8>,
    /// The header's type flag, with `'\0'` and `'7'` normalised to `'0'`.
    pub typeflag: u8,
    /// The raw header mode field (producers may include file-type bits; mask with `0o7777`).
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    /// Payload size in the archive.
    pub size: u64,
    pub mtime: Timestamp,
    /// Access and change times, from PAX records or GNU header fields, when present.
    pub atime: Option<Timestamp>,
    pub ctime: Option<Timestamp>,
    pub dev_major: u32,
    pub dev_minor: u32,
    /// Extended attributes from `SCHILY.xattr.*` PAX records, in archive order.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl TarHeader {
    /// The name for messages.
    pub fn display_name(&self) -> String {
        String::from_utf8_lossy(&self.name).into_owned()
    }
}

/// Pending values from PAX/GNU extension headers for the next real header.
#[derive(Default)]
struct Extensions {
    path: Option<Vec<u8>>,
    link_path: Option<Vec<u8>>,
    size: Option<u64>,
    uid: Option<u64>,
    gid: Option<u64>,
    mtime: Option<Timestamp>,
    atime: Option<Timestamp>,
    ctime: Option<Timestamp>,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    sparse: bool,
}

/// Reads a tar stream entry by entry.
pub struct TarReader<R> {
    inner: R,
    /// Bytes consumed from `inner` so far.
    pos: u64,
    /// Raw bytes not yet claimed by [`TarReader::take_raw`].
    raw: Vec<u8>,
    /// Payload bytes of the current entry not yet read.
    payload_left: u64,
    /// Padding after the current payload.
    pad_after_payload: u64,
    finished: bool,
}

impl<R: Read> TarReader<R> {
    pub fn new(inner: R) -> Self {
        TarReader {
            inner,
            pos: 0,
            raw: Vec::new(),
            payload_left: 0,
            pad_after_payload: 0,
            finished: false,
        }
    }

    /// Bytes of the tar stream consumed so far.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// Takes the raw bytes accumulated since the last call.
    pub fn take_raw(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.raw)
    }

    /// The inner reader.
    pub fn inner(&self) -> &R {
        &self.inner
    }

    /// Returns the inner reader (for draining or checking what follows).
    pub fn into_inner(self) -> R {
        self.inner
    }

    fn read_exact_or_eof(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut filled = 0;
        while filled < buf.len() {
            match self.inner.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.pos += filled as u64;
        Ok(filled)
    }

    /// Moves `n` bytes of the stream into the raw buffer.
    fn read_raw(&mut self, n: u64, err: impl Fn(u64) -> TarError) -> Result<(), TarError> {
        let start = self.raw.len();
        let want = usize::try_from(n).map_err(|_| err(self.pos))?;
        self.raw.resize(start + want, 0);
        let mut filled = 0;
        while filled < want {
            match self.inner.read(&mut self.raw[start + filled..]) {
                Ok(0) => {
                    self.raw.truncate(start + filled);
                    self.pos += filled as u64;
                    return Err(err(self.pos));
                }
                Ok(k) => filled += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.pos += filled as u64;
        Ok(())
    }

    /// Reads payload bytes of the current entry (never more than remain).
    pub fn read_payload(&mut self, buf: &mut [u8]) -> Result<usize, TarError> {
        if self.payload_left == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.payload_left).unwrap_or(usize::MAX));
        let n = loop {
            match self.inner.read(&mut buf[..want]) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        };
        if n == 0 {
            return Err(TarError::TruncatedPayload {
                name: String::new(),
                offset: self.pos,
            });
        }
        self.pos += n as u64;
        self.payload_left -= n as u64;
        Ok(n)
    }

    /// Moves the rest of the current payload into the raw buffer (for entries whose content is
    /// not a file of the store, e.g. a hardlink header that carries data).
    pub fn payload_to_raw(&mut self) -> Result<(), TarError> {
        let left = self.payload_left;
        if left > MAX_RAW_PAYLOAD {
            return Err(TarError::RawPayloadTooLarge {
                offset: self.pos,
                size: left,
                max: MAX_RAW_PAYLOAD,
            });
        }
        self.payload_left = 0;
        let pos = self.pos;
        self.read_raw(left, |_| TarError::TruncatedPayload {
            name: String::new(),
            offset: pos,
        })
    }

    /// Advances to the next entry. Returns `None` at the end of the archive, after which the raw
    /// buffer holds the end-of-archive blocks and anything after them.
    pub fn next_header(&mut self) -> Result<Option<TarHeader>, TarError> {
        if self.finished {
            return Ok(None);
        }
        if self.payload_left > 0 {
            // The caller skipped the payload: keep it raw so nothing is lost.
            self.payload_to_raw()?;
        }
        let pad = self.pad_after_payload;
        self.pad_after_payload = 0;
        let pos = self.pos;
        self.read_raw(pad, |_| TarError::TruncatedHeader(pos))?;

        let mut ext = Extensions::default();
        loop {
            let offset = self.pos;
            let mut block = [0u8; BLOCK];
            let n = self.read_exact_or_eof(&mut block)?;
            if n == 0 && ext.path.is_none() && ext.xattrs.is_empty() {
                // A clean end without end-of-archive blocks: accepted, as GNU tar does.
                self.finished = true;
                return Ok(None);
            }
            self.raw.extend_from_slice(&block[..n]);
            if n < BLOCK {
                return Err(TarError::TruncatedHeader(offset));
            }
            if block.iter().all(|&b| b == 0) {
                self.finish_trailer()?;
                return Ok(None);
            }
            verify_checksum(&block, offset)?;
            let typeflag = block[156];
            let size = parse_number(&block[124..136]).ok_or(TarError::Number {
                field: "size",
                offset,
            })?;
            match typeflag {
                b'x' | b'g' | b'L' | b'K' => {
                    if size > MAX_EXTENSION_SIZE {
                        return Err(TarError::ExtensionTooLarge {
                            offset,
                            size,
                            max: MAX_EXTENSION_SIZE,
                        });
                    }
                    let start = self.raw.len();
                    let padded = round_up(size);
                    self.read_raw(padded, |_| TarError::TruncatedHeader(offset))?;
                    let data = self.raw[start..start + size as usize].to_vec();
                    match typeflag {
                        b'x' => parse_pax(&data, &mut ext, offset)?,
                        // Global PAX headers are kept raw but not applied, like Go's archive/tar.
                        b'g' => {}
                        b'L' => ext.path = Some(trim_nul(&data).to_vec()),
                        _ => ext.link_path = Some(trim_nul(&data).to_vec()),
                    }
                    continue;
                }
                _ => {}
            }
            let header = self.finish_header(&block, offset, ext)?;
            self.payload_left = header.size;
            self.pad_after_payload = round_up(header.size) - header.size;
            return Ok(Some(header));
        }
    }

    fn finish_header(
        &mut self,
        block: &[u8; BLOCK],
        offset: u64,
        ext: Extensions,
    ) -> Result<TarHeader, TarError> {
        let num = |range: std::ops::Range<usize>, field: &'static str| {
            parse_number(&block[range]).ok_or(TarError::Number { field, offset })
        };
        let is_ustar = &block[257..263] == b"ustar\0";
        let is_gnu = &block[257..265] == b"ustar  \0";
        // GNU headers keep atime and ctime where ustar has its prefix.
        let gnu_time = |range: std::ops::Range<usize>| {
            if !is_gnu {
                return None;
            }
            parse_signed(&block[range])
                .filter(|&t| t != 0)
                .map(|secs| Timestamp { secs, nanos: 0 })
        };
        let mut name = trim_nul(&block[0..100]).to_vec();
        if is_ustar {
            let prefix = trim_nul(&block[345..500]);
            if !prefix.is_empty() {
                let mut full = prefix.to_vec();
                full.push(b'/');
                full.extend_from_slice(&name);
                name = full;
            }
        }
        if let Some(p) = ext.path {
            name = p;
        }
        let link_name = ext
            .link_path
            .unwrap_or_else(|| trim_nul(&block[157..257]).to_vec());
        let mut typeflag = block[156];
        if typeflag == 0 || typeflag == b'7' {
            typeflag = b'0';
        }
        if typeflag == b'0' && name.ends_with(b"/") {
            typeflag = b'5';
        }
        let display = String::from_utf8_lossy(&name).into_owned();
        if ext.sparse || !matches!(typeflag, b'0' | b'1' | b'2' | b'3' | b'4' | b'5' | b'6') {
            return Err(TarError::UnsupportedType {
                typeflag: typeflag as char,
                name: display,
            });
        }
        let mode = num(100..108, "mode")?;
        let dev = |range, field| -> Result<u32, TarError> {
            // V7 headers have no device fields; treat garbage there as zero only for non-devices.
            match num(range, field) {
                Ok(v) => u32::try_from(v).map_err(|_| TarError::Number { field, offset }),
                Err(e) if matches!(typeflag, b'3' | b'4') => Err(e),
                Err(_) => Ok(0),
            }
        };
        Ok(TarHeader {
            offset,
            name,
            link_name,
            typeflag,
            mode: u32::try_from(mode).map_err(|_| TarError::Number {
                field: "mode",
                offset,
            })?,
            uid: match ext.uid {
                Some(v) => v,
                None => num(108..116, "uid")?,
            },
            gid: match ext.gid {
                Some(v) => v,
                None => num(116..124, "gid")?,
            },
            size: match ext.size {
                Some(v) => v,
                None => num(124..136, "size")?,
            },
            mtime: match ext.mtime {
                Some(t) => t,
                None => Timestamp {
                    secs: parse_signed(&block[136..148]).ok_or(TarError::Number {
                        field: "mtime",
                        offset,
                    })?,
                    nanos: 0,
                },
            },
            atime: ext.atime.or_else(|| gnu_time(345..357)),
            ctime: ext.ctime.or_else(|| gnu_time(357..369)),
            dev_major: dev(329..337, "devmajor")?,
            dev_minor: dev(337..345, "devminor")?,
            xattrs: ext.xattrs,
        })
    }

    /// After the first zero block: everything up to EOF is trailer, kept raw (bounded).
    fn finish_trailer(&mut self) -> Result<(), TarError> {
        self.finished = true;
        let mut buf = [0u8; 8192];
        let mut total = 0u64;
        loop {
            let n = self.read_exact_or_eof(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            total += n as u64;
            if total > MAX_TRAILER_SIZE {
                return Err(TarError::TrailerTooLarge(MAX_TRAILER_SIZE));
            }
            self.raw.extend_from_slice(&buf[..n]);
        }
    }
}

/// Rounds a size up to the next block boundary.
pub fn round_up(size: u64) -> u64 {
    size.div_ceil(BLOCK as u64) * BLOCK as u64
}

fn trim_nul(field: &[u8]) -> &[u8] {
    match field.iter().position(|&b| b == 0) {
        Some(i) => &field[..i],
        None => field,
    }
}

fn verify_checksum(block: &[u8; BLOCK], offset: u64) -> Result<(), TarError> {
    let stored = parse_number(&block[148..156]).ok_or(TarError::Checksum(offset))?;
    let mut unsigned: u64 = 0;
    let mut signed: i64 = 0;
    for (i, &b) in block.iter().enumerate() {
        let b = if (148..156).contains(&i) { b' ' } else { b };
        unsigned += u64::from(b);
        signed += i64::from(b as i8);
    }
    if stored == unsigned || i64::try_from(stored).ok() == Some(signed) {
        Ok(())
    } else {
        Err(TarError::Checksum(offset))
    }
}

/// Parses an octal (NUL/space padded) or base-256 numeric field.
pub fn parse_number(field: &[u8]) -> Option<u64> {
    if field.first().is_some_and(|&b| b & 0x80 != 0) {
        if field[0] == 0xff {
            return None; // negative
        }
        let mut v: u64 = u64::from(field[0] & 0x7f);
        for &b in &field[1..] {
            v = v.checked_mul(256)?.checked_add(u64::from(b))?;
        }
        return Some(v);
    }
    let s = trim_nul(field);
    let s: Vec<u8> = s
        .iter()
        .copied()
        .skip_while(|&b| b == b' ')
        .take_while(|&b| b != b' ')
        .collect();
    if s.is_empty() {
        return Some(0);
    }
    let mut v: u64 = 0;
    for b in s {
        if !(b'0'..=b'7').contains(&b) {
            return None;
        }
        v = v.checked_mul(8)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(v)
}

/// Parses a numeric field that may be negative (base-256 two's complement), e.g. mtime.
fn parse_signed(field: &[u8]) -> Option<i64> {
    if field.first() == Some(&0xff) {
        let mut v: i64 = -1;
        for &b in &field[1..] {
            v = v.checked_mul(256)?.checked_add(i64::from(b))?;
        }
        // Two's complement: all 0xff bytes is -1; the loop above builds it from the top.
        return Some(v);
    }
    parse_number(field).and_then(|v| i64::try_from(v).ok())
}

/// Parses a PAX time value: `[-]secs[.fraction]`.
pub fn parse_pax_time(s: &[u8]) -> Option<Timestamp> {
    let s = std::str::from_utf8(s).ok()?;
    let (neg, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (whole, frac) = match s.split_once('.') {
        Some((w, f)) => (w, f),
        None => (s, ""),
    };
    if whole.is_empty()
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let secs: i64 = whole.parse().ok()?;
    let mut nanos: u32 = 0;
    for (i, b) in frac.bytes().take(9).enumerate() {
        nanos += u32::from(b - b'0') * 10u32.pow(8 - i as u32);
    }
    if neg {
        if nanos == 0 {
            Some(Timestamp {
                secs: -secs,
                nanos: 0,
            })
        } else {
            Some(Timestamp {
                secs: -secs - 1,
                nanos: 1_000_000_000 - nanos,
            })
        }
    } else {
        Some(Timestamp { secs, nanos })
    }
}

fn parse_pax(data: &[u8], ext: &mut Extensions, offset: u64) -> Result<(), TarError> {
    let mut rest = data;
    while !rest.is_empty() {
        if rest.iter().all(|&b| b == 0) {
            break;
        }
        let space = rest
            .iter()
            .position(|&b| b == b' ')
            .ok_or(TarError::Pax(offset))?;
        let len: usize = std::str::from_utf8(&rest[..space])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or(TarError::Pax(offset))?;
        if len <= space + 1 || len > rest.len() || rest[len - 1] != b'\n' {
            return Err(TarError::Pax(offset));
        }
        let record = &rest[space + 1..len - 1];
        let eq = record
            .iter()
            .position(|&b| b == b'=')
            .ok_or(TarError::Pax(offset))?;
        let (key, value) = (&record[..eq], &record[eq + 1..]);
        let number = |v: &[u8]| -> Result<u64, TarError> {
            std::str::from_utf8(v)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or(TarError::Pax(offset))
        };
        match key {
            b"path" => ext.path = Some(value.to_vec()),
            b"linkpath" => ext.link_path = Some(value.to_vec()),
            b"size" => ext.size = Some(number(value)?),
            b"uid" => ext.uid = Some(number(value)?),
            b"gid" => ext.gid = Some(number(value)?),
            b"mtime" => ext.mtime = Some(parse_pax_time(value).ok_or(TarError::Pax(offset))?),
            b"atime" => ext.atime = Some(parse_pax_time(value).ok_or(TarError::Pax(offset))?),
            b"ctime" => ext.ctime = Some(parse_pax_time(value).ok_or(TarError::Pax(offset))?),
            k if k.starts_with(b"SCHILY.xattr.") => {
                let name = k[b"SCHILY.xattr.".len()..].to_vec();
                ext.xattrs.retain(|(n, _)| *n != name);
                ext.xattrs.push((name, value.to_vec()));
            }
            k if k.starts_with(b"GNU.sparse.") => ext.sparse = true,
            _ => {}
        }
        rest = &rest[len..];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn octal_and_base256() {
        assert_eq!(parse_number(b"0000644\0"), Some(0o644));
        assert_eq!(parse_number(b"  644 \0"), Some(0o644));
        assert_eq!(parse_number(b"\0\0\0\0"), Some(0));
        assert_eq!(
            parse_number(&[0x80, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0]),
            Some(65536)
        );
        assert_eq!(parse_number(b"0009"), None);
        assert_eq!(parse_number(&[0xff; 12]), None);
        assert_eq!(parse_signed(&[0xff; 12]), Some(-1));
        // overflow is refused, not wrapped
        assert_eq!(
            parse_number(&[
                0x80, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff
            ]),
            None
        );
    }

    #[test]
    fn pax_times() {
        assert_eq!(
            parse_pax_time(b"1700000000.5"),
            Some(Timestamp {
                secs: 1700000000,
                nanos: 500_000_000
            })
        );
        assert_eq!(
            parse_pax_time(b"12"),
            Some(Timestamp { secs: 12, nanos: 0 })
        );
        assert_eq!(
            parse_pax_time(b"-1.25"),
            Some(Timestamp {
                secs: -2,
                nanos: 750_000_000
            })
        );
        assert_eq!(
            parse_pax_time(b"1.1234567891"),
            Some(Timestamp {
                secs: 1,
                nanos: 123_456_789
            })
        );
        assert_eq!(parse_pax_time(b"x"), None);
        assert_eq!(parse_pax_time(b".5"), None);
        assert_eq!(parse_pax_time(b"1e9"), None);
    }

    #[test]
    fn pax_records() {
        let mut ext = Extensions::default();
        parse_pax(b"16 path=a/b/c/d\n25 SCHILY.xattr.user.k=v\n", &mut ext, 0).unwrap();
        assert_eq!(ext.path.as_deref(), Some(&b"a/b/c/d"[..]));
        assert_eq!(ext.xattrs, vec![(b"user.k".to_vec(), b"v".to_vec())]);
        for bad in [
            &b"99 path=x\n"[..],
            b"5 path=x\n",
            b"x path=x\n",
            b"11 pathx=y\0",
            b"9 noeq\n",
        ] {
            assert!(
                parse_pax(bad, &mut Extensions::default(), 0).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
