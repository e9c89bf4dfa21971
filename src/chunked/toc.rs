//! The TOC ("manifest") of a zstd:chunked layer: JSON with one entry per tar entry (plus
//! `chunk` entries), read as tolerantly as containers/storage reads it (keys matched without
//! regard to case, unknown keys skipped, nothing after the document) and written as it writes
//! it (Go field order, empty fields omitted).

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use crate::chunked::ChunkedError;
use crate::chunked::time;
use crate::digest::Digest;
use crate::layer::tar::Timestamp;

/// One TOC entry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TocEntry {
    /// `reg`, `dir`, `symlink`, `hardlink`, `char`, `block`, `fifo` or `chunk`.
    pub kind: String,
    /// The raw tar name.
    pub name: String,
    pub link_name: String,
    /// The raw header mode (may carry file-type bits).
    pub mode: i64,
    pub size: i64,
    pub uid: i64,
    pub gid: i64,
    pub modtime: Option<Timestamp>,
    pub accesstime: Option<Timestamp>,
    pub changetime: Option<Timestamp>,
    pub dev_major: i64,
    pub dev_minor: i64,
    /// xattr name → base64 of the value.
    pub xattrs: BTreeMap<String, String>,
    pub digest: Option<Digest>,
    pub offset: i64,
    pub end_offset: i64,
    pub chunk_size: i64,
    pub chunk_offset: i64,
    pub chunk_digest: Option<Digest>,
    pub chunk_type: String,
}

/// A whole TOC.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Toc {
    pub version: i64,
    pub entries: Vec<TocEntry>,
    /// sha256 of the compressed tar-split (current generation only).
    pub tar_split_digest: Option<Digest>,
}

/// The TOC entry keys zstore reads (matched case-insensitively, as Go's encoding/json does),
/// decoded without allocating.
#[derive(Clone, Copy)]
enum Field {
    Type,
    Name,
    LinkName,
    Mode,
    Size,
    Uid,
    Gid,
    ModTime,
    AccessTime,
    ChangeTime,
    DevMajor,
    DevMinor,
    Xattrs,
    Digest,
    Offset,
    EndOffset,
    ChunkSize,
    ChunkOffset,
    ChunkDigest,
    ChunkType,
    Other,
}

const FIELDS: [(&str, Field); 20] = [
    ("type", Field::Type),
    ("name", Field::Name),
    ("linkname", Field::LinkName),
    ("mode", Field::Mode),
    ("size", Field::Size),
    ("uid", Field::Uid),
    ("gid", Field::Gid),
    ("modtime", Field::ModTime),
    ("accesstime", Field::AccessTime),
    ("changetime", Field::ChangeTime),
    ("devmajor", Field::DevMajor),
    ("devminor", Field::DevMinor),
    ("xattrs", Field::Xattrs),
    ("digest", Field::Digest),
    ("offset", Field::Offset),
    ("endoffset", Field::EndOffset),
    ("chunksize", Field::ChunkSize),
    ("chunkoffset", Field::ChunkOffset),
    ("chunkdigest", Field::ChunkDigest),
    ("chunktype", Field::ChunkType),
];

impl<'de> Deserialize<'de> for Field {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Field;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a TOC entry key")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Field, E> {
                Ok(FIELDS
                    .iter()
                    .find(|(name, _)| name.eq_ignore_ascii_case(v))
                    .map_or(Field::Other, |(_, f)| *f))
            }
        }
        d.deserialize_str(V)
    }
}

/// An optional string value parsed in place (`null` and `""` are absent): digests and times,
/// without an intermediate `String`.
struct Parsed<T>(Option<T>);

/// How a [`Parsed`] value is read from its text.
trait ParseField: Sized {
    const WHAT: &'static str;
    fn parse_field(v: &str) -> Option<Self>;
}

impl ParseField for Digest {
    const WHAT: &'static str = "a sha256 digest";
    fn parse_field(v: &str) -> Option<Self> {
        v.parse().ok()
    }
}

impl ParseField for Timestamp {
    const WHAT: &'static str = "an RFC 3339 time";
    fn parse_field(v: &str) -> Option<Self> {
        time::parse(v)
    }
}

impl<'de, T: ParseField> Deserialize<'de> for Parsed<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: ParseField> Visitor<'de> for V<T> {
            type Value = Parsed<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(T::WHAT)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Parsed<T>, E> {
                if v.is_empty() {
                    return Ok(Parsed(None));
                }
                T::parse_field(v)
                    .map(|t| Parsed(Some(t)))
                    .ok_or_else(|| E::custom(format!("{v:?} is not {}", T::WHAT)))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Parsed<T>, E> {
                Ok(Parsed(None))
            }
            fn visit_none<E: de::Error>(self) -> Result<Parsed<T>, E> {
                Ok(Parsed(None))
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Parsed<T>, D::Error> {
                d.deserialize_any(self)
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

impl<'de> Deserialize<'de> for TocEntry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = TocEntry;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a TOC entry object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<TocEntry, A::Error> {
                let mut e = TocEntry::default();
                while let Some(key) = m.next_key::<Field>()? {
                    let int =
                        |m: &mut A| m.next_value::<Option<i64>>().map(Option::unwrap_or_default);
                    let string = |m: &mut A| {
                        m.next_value::<Option<String>>()
                            .map(Option::unwrap_or_default)
                    };
                    let digest = |m: &mut A| m.next_value::<Parsed<Digest>>().map(|p| p.0);
                    let time = |m: &mut A| m.next_value::<Parsed<Timestamp>>().map(|p| p.0);
                    match key {
                        Field::Type => e.kind = string(&mut m)?,
                        Field::Name => e.name = string(&mut m)?,
                        Field::LinkName => e.link_name = string(&mut m)?,
                        Field::Mode => e.mode = int(&mut m)?,
                        Field::Size => e.size = int(&mut m)?,
                        Field::Uid => e.uid = int(&mut m)?,
                        Field::Gid => e.gid = int(&mut m)?,
                        Field::ModTime => e.modtime = time(&mut m)?,
                        Field::AccessTime => e.accesstime = time(&mut m)?,
                        Field::ChangeTime => e.changetime = time(&mut m)?,
                        Field::DevMajor => e.dev_major = int(&mut m)?,
                        Field::DevMinor => e.dev_minor = int(&mut m)?,
                        Field::Xattrs => {
                            e.xattrs = m
                                .next_value::<Option<BTreeMap<String, String>>>()?
                                .unwrap_or_default()
                        }
                        Field::Digest => e.digest = digest(&mut m)?,
                        Field::Offset => e.offset = int(&mut m)?,
                        Field::EndOffset => e.end_offset = int(&mut m)?,
                        Field::ChunkSize => e.chunk_size = int(&mut m)?,
                        Field::ChunkOffset => e.chunk_offset = int(&mut m)?,
                        Field::ChunkDigest => e.chunk_digest = digest(&mut m)?,
                        Field::ChunkType => e.chunk_type = string(&mut m)?,
                        Field::Other => {
                            m.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(e)
            }
        }
        d.deserialize_map(V)
    }
}

impl<'de> Deserialize<'de> for Toc {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        struct Entries(Vec<TocEntry>);
        impl<'de> Deserialize<'de> for Entries {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct S;
                impl<'de> Visitor<'de> for S {
                    type Value = Entries;
                    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                        f.write_str("an array of TOC entries")
                    }
                    fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<Entries, A::Error> {
                        let mut v = Vec::new();
                        while let Some(e) = s.next_element::<TocEntry>()? {
                            v.push(e);
                        }
                        Ok(Entries(v))
                    }
                    fn visit_unit<E: de::Error>(self) -> Result<Entries, E> {
                        Ok(Entries(Vec::new()))
                    }
                }
                d.deserialize_any(S)
            }
        }
        impl<'de> Visitor<'de> for V {
            type Value = Toc;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a TOC object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Toc, A::Error> {
                let mut t = Toc::default();
                while let Some(key) = m.next_key::<String>()? {
                    match key.to_ascii_lowercase().as_str() {
                        "version" => t.version = m.next_value::<Option<i64>>()?.unwrap_or_default(),
                        "entries" => t.entries = m.next_value::<Entries>()?.0,
                        "tarsplitdigest" => {
                            t.tar_split_digest = m.next_value::<Parsed<Digest>>()?.0
                        }
                        _ => {
                            m.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(t)
            }
        }
        d.deserialize_map(V)
    }
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

#[derive(Serialize)]
struct EntryOut<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    name: &'a str,
    #[serde(rename = "linkName", skip_serializing_if = "str::is_empty")]
    link_name: &'a str,
    #[serde(skip_serializing_if = "is_zero")]
    mode: i64,
    #[serde(skip_serializing_if = "is_zero")]
    size: i64,
    #[serde(skip_serializing_if = "is_zero")]
    uid: i64,
    #[serde(skip_serializing_if = "is_zero")]
    gid: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    modtime: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    accesstime: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    changetime: Option<String>,
    #[serde(rename = "devMajor", skip_serializing_if = "is_zero")]
    dev_major: i64,
    #[serde(rename = "devMinor", skip_serializing_if = "is_zero")]
    dev_minor: i64,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    xattrs: &'a BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    digest: Option<String>,
    #[serde(skip_serializing_if = "is_zero")]
    offset: i64,
    #[serde(rename = "endOffset", skip_serializing_if = "is_zero")]
    end_offset: i64,
    #[serde(rename = "chunkSize", skip_serializing_if = "is_zero")]
    chunk_size: i64,
    #[serde(rename = "chunkOffset", skip_serializing_if = "is_zero")]
    chunk_offset: i64,
    #[serde(rename = "chunkDigest", skip_serializing_if = "Option::is_none")]
    chunk_digest: Option<String>,
    #[serde(rename = "chunkType", skip_serializing_if = "str::is_empty")]
    chunk_type: &'a str,
}

#[derive(Serialize)]
struct TocOut<'a> {
    version: i64,
    entries: Vec<EntryOut<'a>>,
    #[serde(rename = "tarSplitDigest", skip_serializing_if = "Option::is_none")]
    tar_split_digest: Option<String>,
}

/// A time worth writing: Go omits its zero time.
fn time_out(t: Option<Timestamp>) -> Option<String> {
    t.filter(|t| t.secs != time::GO_ZERO_SECS || t.nanos != 0)
        .map(time::format)
}

impl Toc {
    /// Parses decompressed TOC JSON.
    pub fn parse(json: &[u8]) -> Result<Toc, ChunkedError> {
        serde_json::from_slice(json).map_err(|e| ChunkedError::Toc(e.to_string()))
    }

    /// Serialises as containers/storage does (compact, Go field order, empty fields omitted).
    pub fn to_json(&self) -> Vec<u8> {
        let out = TocOut {
            version: self.version,
            entries: self
                .entries
                .iter()
                .map(|e| EntryOut {
                    kind: &e.kind,
                    name: &e.name,
                    link_name: &e.link_name,
                    mode: e.mode,
                    size: e.size,
                    uid: e.uid,
                    gid: e.gid,
                    modtime: time_out(e.modtime),
                    accesstime: time_out(e.accesstime),
                    changetime: time_out(e.changetime),
                    dev_major: e.dev_major,
                    dev_minor: e.dev_minor,
                    xattrs: &e.xattrs,
                    digest: e.digest.map(|d| d.to_string()),
                    offset: e.offset,
                    end_offset: e.end_offset,
                    chunk_size: e.chunk_size,
                    chunk_offset: e.chunk_offset,
                    chunk_digest: e.chunk_digest.map(|d| d.to_string()),
                    chunk_type: &e.chunk_type,
                })
                .collect(),
            tar_split_digest: self.tar_split_digest.map(|d| d.to_string()),
        };
        serde_json::to_vec(&out).expect("serialising a TOC cannot fail")
    }

    /// The regular files with content, in TOC order, after checking that their byte ranges
    /// are sane: inside `[1, data_end]`, non-empty and in increasing, non-overlapping order.
    pub fn files(&self, data_end: u64) -> Result<Vec<&TocEntry>, ChunkedError> {
        let mut out = Vec::new();
        let mut last_end = 0i64;
        let mut prev_kind = "";
        for (i, e) in self.entries.iter().enumerate() {
            let bad = |why: &str| ChunkedError::Toc(format!("entry {i} ({:?}): {why}", e.name));
            match e.kind.as_str() {
                "reg" => {
                    if e.size < 0 {
                        return Err(bad("negative size"));
                    }
                    if e.size > 0 {
                        if e.digest.is_none() {
                            return Err(bad("regular file without a digest"));
                        }
                        if e.offset <= 0
                            || e.end_offset <= e.offset
                            || e.end_offset as u64 > data_end
                        {
                            return Err(bad("file data range is empty or outside the blob"));
                        }
                        if e.offset < last_end {
                            return Err(bad(
                                "file data overlaps the previous file or goes backwards",
                            ));
                        }
                        last_end = e.end_offset;
                        out.push(e);
                    }
                }
                "chunk" => {
                    if prev_kind != "reg" && prev_kind != "chunk" {
                        return Err(bad("chunk entry without a preceding regular file"));
                    }
                }
                "dir" | "symlink" | "hardlink" | "char" | "block" | "fifo" => {}
                other => return Err(bad(&format!("unknown entry type {other:?}"))),
            }
            if e.uid < 0
                || e.uid > i64::from(u32::MAX)
                || e.gid < 0
                || e.gid > i64::from(u32::MAX)
                || e.mode < 0
            {
                return Err(bad("uid, gid or mode out of range"));
            }
            prev_kind = e.kind.as_str();
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn reads_go_output_and_tolerates_case_and_unknown_keys() {
        let json = format!(
            r#"{{"version":1,"entries":[{{"type":"dir","name":"etc/","mode":493,"modtime":"2023-11-14T22:13:20Z","accesstime":"0001-01-01T00:00:00Z"}},
            {{"TYPE":"reg","Name":"etc/a","size":3,"digest":"{D}","offset":10,"endOffset":20,"userName":"x","innerOffset":5,"xattrs":{{"user.k":"dg=="}}}},
            {{"type":"chunk","name":"etc/a","offset":15,"chunkSize":1,"chunkOffset":2,"chunkDigest":"{D}","chunkType":"zeros"}}],"extra":[1,2]}}  "#
        );
        let t = Toc::parse(json.as_bytes()).unwrap();
        assert_eq!(t.entries.len(), 3);
        assert_eq!(t.entries[1].kind, "reg");
        assert_eq!(t.entries[1].xattrs["user.k"], "dg==");
        assert_eq!(
            t.entries[0].modtime,
            Some(Timestamp {
                secs: 1_700_000_000,
                nanos: 0
            })
        );
        assert_eq!(t.files(20).unwrap().len(), 1);
    }

    #[test]
    fn writes_like_go_and_reads_back() {
        let t = Toc {
            version: 1,
            entries: vec![TocEntry {
                kind: "reg".into(),
                name: "a".into(),
                mode: 420,
                size: 5,
                modtime: Some(Timestamp {
                    secs: 1_700_000_000,
                    nanos: 5,
                }),
                accesstime: Some(Timestamp {
                    secs: time::GO_ZERO_SECS,
                    nanos: 0,
                }),
                digest: Some(D.parse().unwrap()),
                offset: 1,
                end_offset: 9,
                ..Default::default()
            }],
            tar_split_digest: Some(D.parse().unwrap()),
        };
        let json = String::from_utf8(t.to_json()).unwrap();
        assert_eq!(
            json,
            format!(
                r#"{{"version":1,"entries":[{{"type":"reg","name":"a","mode":420,"size":5,"modtime":"2023-11-14T22:13:20.000000005Z","digest":"{D}","offset":1,"endOffset":9}}],"tarSplitDigest":"{D}"}}"#
            )
        );
        let mut back = Toc::parse(json.as_bytes()).unwrap();
        back.entries[0].accesstime = t.entries[0].accesstime;
        assert_eq!(back, t);
    }

    #[test]
    fn hostile_tocs() {
        for bad in [
            "".to_string(),
            "{".to_string(),
            r#"{"version":1,"entries":[]} x"#.to_string(),
            r#"{"entries":[{"type":"reg","size":1.5}]}"#.to_string(),
            r#"{"entries":[{"type":"reg","digest":"sha256:00"}]}"#.to_string(),
            r#"{"entries":[{"type":"reg","modtime":"yesterday"}]}"#.to_string(),
            r#"{"entries":{"type":"reg"}}"#.to_string(),
            r#"{"tarSplitDigest":"md5:00"}"#.to_string(),
        ] {
            assert!(Toc::parse(bad.as_bytes()).is_err(), "{bad}");
        }
        let file = |offset, end| TocEntry {
            kind: "reg".into(),
            name: "f".into(),
            size: 1,
            digest: Some(D.parse().unwrap()),
            offset,
            end_offset: end,
            ..Default::default()
        };
        for (entries, why) in [
            (vec![file(0, 5)], "offset 0"),
            (vec![file(5, 5)], "empty range"),
            (vec![file(5, 200)], "past the data"),
            (vec![file(5, 10), file(8, 12)], "overlap"),
            (
                vec![TocEntry {
                    kind: "chunk".into(),
                    ..Default::default()
                }],
                "orphan chunk",
            ),
            (
                vec![TocEntry {
                    kind: "socket".into(),
                    ..Default::default()
                }],
                "unknown type",
            ),
            (
                vec![TocEntry {
                    kind: "reg".into(),
                    size: 4,
                    ..Default::default()
                }],
                "no digest",
            ),
            (
                vec![TocEntry {
                    kind: "dir".into(),
                    uid: -1,
                    ..Default::default()
                }],
                "negative uid",
            ),
        ] {
            let t = Toc {
                version: 1,
                entries,
                tar_split_digest: None,
            };
            assert!(t.files(100).is_err(), "{why}");
        }
    }
}
