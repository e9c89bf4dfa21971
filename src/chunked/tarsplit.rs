//! tar-split: the JSON-lines description of a tar's non-file bytes (vbatts/tar-split, as
//! containers/storage embeds it in zstd:chunked layers). Each line is a segment of raw bytes or a
//! file reference (name, size, CRC-64 of the content); positions count from 0.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};

use crate::chunked::ChunkedError;

/// One tar-split record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TsEntry {
    /// Raw bytes of the tar (headers, padding, end-of-archive, trailing bytes).
    Segment(Vec<u8>),
    /// A tar entry; its content (if `size > 0`) comes from the file named `name`.
    File {
        name: Vec<u8>,
        size: u64,
        crc: Option<[u8; 8]>,
    },
}

#[derive(Serialize, Deserialize)]
struct Line {
    #[serde(rename = "type")]
    kind: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name_raw: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    size: Option<i64>,
    #[serde(default)]
    payload: Option<String>,
    position: i64,
}

/// Largest raw segment zstore writes after the end-of-archive (as tar-split does).
pub const MAX_SEGMENT: usize = 1 << 20;

/// Parses decompressed tar-split JSON lines.
pub fn parse(data: &[u8]) -> Result<Vec<TsEntry>, ChunkedError> {
    let mut out = Vec::new();
    for (i, line) in data.split(|&b| b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let bad = |why: String| ChunkedError::TarSplit(format!("line {}: {why}", i + 1));
        let l: Line = serde_json::from_slice(line).map_err(|e| bad(e.to_string()))?;
        if l.position != out.len() as i64 {
            return Err(bad(format!(
                "position {} where {} was expected",
                l.position,
                out.len()
            )));
        }
        let payload = l
            .payload
            .as_deref()
            .map(|p| B64.decode(p))
            .transpose()
            .map_err(|e| bad(e.to_string()))?;
        match l.kind {
            1 => {
                let name = match (l.name, l.name_raw) {
                    (_, Some(raw)) => B64.decode(raw).map_err(|e| bad(e.to_string()))?,
                    (Some(n), None) => n.into_bytes(),
                    (None, None) => Vec::new(),
                };
                let size =
                    u64::try_from(l.size.unwrap_or(0)).map_err(|_| bad("negative size".into()))?;
                let crc = match payload {
                    None => None,
                    Some(p) => Some(
                        <[u8; 8]>::try_from(p.as_slice())
                            .map_err(|_| bad("CRC is not 8 bytes".into()))?,
                    ),
                };
                if size > 0 && crc.is_none() {
                    return Err(bad("file with content but no CRC".into()));
                }
                out.push(TsEntry::File { name, size, crc });
            }
            2 => out.push(TsEntry::Segment(payload.unwrap_or_default())),
            other => return Err(bad(format!("unknown entry type {other}"))),
        }
    }
    Ok(out)
}

/// Encodes entries as JSON lines.
pub fn encode(entries: &[TsEntry]) -> Vec<u8> {
    let mut out = Vec::new();
    for (position, e) in entries.iter().enumerate() {
        let line = match e {
            TsEntry::Segment(b) => Line {
                kind: 2,
                name: None,
                name_raw: None,
                size: None,
                payload: Some(B64.encode(b)),
                position: position as i64,
            },
            TsEntry::File { name, size, crc } => {
                let (name, name_raw) = match std::str::from_utf8(name) {
                    Ok(s) if !s.is_empty() => (Some(s.to_string()), None),
                    Ok(_) => (None, None),
                    Err(_) => (None, Some(B64.encode(name))),
                };
                Line {
                    kind: 1,
                    name,
                    name_raw,
                    size: (*size > 0).then_some(*size as i64),
                    payload: crc.map(|c| B64.encode(c)),
                    position: position as i64,
                }
            }
        };
        serde_json::to_writer(&mut out, &line).expect("serialising a tar-split line cannot fail");
        out.push(b'\n');
    }
    out
}

/// Size of the tar the entries describe.
pub fn tar_size(entries: &[TsEntry]) -> u64 {
    entries
        .iter()
        .map(|e| match e {
            TsEntry::Segment(b) => b.len() as u64,
            TsEntry::File { size, .. } => *size,
        })
        .sum()
}

/// CRC-64 with Go's ISO table (CRC-64/GO-ISO): reflected polynomial 0xD800000000000000,
/// initial value and final xor all ones.
#[derive(Clone)]
pub struct Crc64(u64);

static TABLE: std::sync::LazyLock<[u64; 256]> = std::sync::LazyLock::new(|| {
    let mut t = [0u64; 256];
    for (i, slot) in t.iter_mut().enumerate() {
        let mut c = i as u64;
        for _ in 0..8 {
            c = if c & 1 == 1 {
                (c >> 1) ^ 0xD800_0000_0000_0000
            } else {
                c >> 1
            };
        }
        *slot = c;
    }
    t
});

impl Default for Crc64 {
    fn default() -> Self {
        Self::new()
    }
}

impl Crc64 {
    pub fn new() -> Crc64 {
        Crc64(!0)
    }
    pub fn update(&mut self, data: &[u8]) {
        let t = &*TABLE;
        let mut c = self.0;
        for &b in data {
            c = t[((c ^ u64::from(b)) & 0xff) as usize] ^ (c >> 8);
        }
        self.0 = c;
    }
    /// The checksum, big-endian, as tar-split stores it.
    pub fn finish(&self) -> [u8; 8] {
        (!self.0).to_be_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc64_go_iso_check_value() {
        let mut c = Crc64::new();
        c.update(b"123456789");
        assert_eq!(u64::from_be_bytes(c.finish()), 0xB909_56C7_75A4_1001);
    }

    #[test]
    fn round_trip() {
        let entries = vec![
            TsEntry::Segment(vec![1, 2, 3]),
            TsEntry::File {
                name: b"etc/a".to_vec(),
                size: 3,
                crc: Some([1, 2, 3, 4, 5, 6, 7, 8]),
            },
            TsEntry::File {
                name: b"etc/".to_vec(),
                size: 0,
                crc: None,
            },
            TsEntry::File {
                name: vec![0xff, b'x'],
                size: 0,
                crc: None,
            },
            TsEntry::Segment(vec![0; 1024]),
        ];
        let text = encode(&entries);
        assert_eq!(
            String::from_utf8_lossy(&text).lines().nth(1).unwrap(),
            r#"{"type":1,"name":"etc/a","size":3,"payload":"AQIDBAUGBwg=","position":1}"#
        );
        assert_eq!(
            String::from_utf8_lossy(&text).lines().nth(2).unwrap(),
            r#"{"type":1,"name":"etc/","payload":null,"position":2}"#
        );
        assert_eq!(parse(&text).unwrap(), entries);
        assert_eq!(tar_size(&entries), 3 + 3 + 1024);
    }

    #[test]
    fn hostile_tar_splits() {
        for bad in [
            &br#"{"type":2,"payload":"AA==","position":1}"#[..],
            br#"{"type":3,"position":0}"#,
            br#"{"type":1,"name":"a","size":3,"payload":null,"position":0}"#,
            br#"{"type":1,"name":"a","size":-3,"payload":"AQIDBAUGBwg=","position":0}"#,
            br#"{"type":1,"name":"a","size":3,"payload":"AQI=","position":0}"#,
            br#"{"type":2,"payload":"%%%","position":0}"#,
            b"not json",
        ] {
            assert!(parse(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }
}
