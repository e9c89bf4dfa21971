//! HTTP range planning and `multipart/byteranges` parsing (pure; no I/O).

use std::ops::Range;

/// Errors in range responses.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RangeError {
    #[error("malformed Content-Range {0:?}")]
    ContentRange(String),
    #[error("multipart/byteranges response without a boundary")]
    NoBoundary,
    #[error("malformed multipart/byteranges body: {0}")]
    Multipart(String),
    #[error("the server sent bytes {got:?}, which were not requested")]
    Unrequested { got: Range<u64> },
}

/// Merges ranges that overlap or lie within `gap` bytes of each other (bridging a small gap
/// costs less than another part header), sorted by start.
pub fn coalesce(ranges: &[Range<u64>], gap: u64) -> Vec<Range<u64>> {
    let mut v: Vec<Range<u64>> = ranges.iter().filter(|r| r.start < r.end).cloned().collect();
    v.sort_by_key(|r| r.start);
    let mut out: Vec<Range<u64>> = Vec::with_capacity(v.len());
    for r in v {
        match out.last_mut() {
            Some(last) if r.start <= last.end.saturating_add(gap) => last.end = last.end.max(r.end),
            _ => out.push(r),
        }
    }
    out
}

/// The `Range` header value for a set of ranges (inclusive ends).
pub fn header(ranges: &[Range<u64>]) -> String {
    let parts: Vec<String> = ranges
        .iter()
        .map(|r| format!("{}-{}", r.start, r.end - 1))
        .collect();
    format!("bytes={}", parts.join(","))
}

/// Parses `Content-Range: bytes a-b/size` (size may be `*`).
pub fn parse_content_range(v: &str) -> Result<Range<u64>, RangeError> {
    let bad = || RangeError::ContentRange(v.to_string());
    let rest = v.trim().strip_prefix("bytes ").ok_or_else(bad)?;
    let (span, _total) = rest.split_once('/').ok_or_else(bad)?;
    let (a, b) = span.split_once('-').ok_or_else(bad)?;
    let a: u64 = a.trim().parse().map_err(|_| bad())?;
    let b: u64 = b.trim().parse().map_err(|_| bad())?;
    if b < a || b == u64::MAX {
        return Err(bad());
    }
    Ok(a..b + 1)
}

/// The boundary parameter of a `multipart/byteranges` content type.
pub fn boundary(content_type: &str) -> Option<String> {
    let (mime, params) = content_type.split_once(';')?;
    if !mime.trim().eq_ignore_ascii_case("multipart/byteranges") {
        return None;
    }
    params.split(';').find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("boundary")
            .then(|| v.trim().trim_matches('"').to_string())
    })
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if needle.is_empty() || from > hay.len() {
        return None;
    }
    hay[from..]
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|i| i + from)
}

/// One part of a multipart body: its range and bytes.
pub type Part<'a> = (Range<u64>, &'a [u8]);

/// Splits a `multipart/byteranges` body into (range, bytes) parts, checking each part's
/// length against its Content-Range.
pub fn parse_multipart<'a>(body: &'a [u8], boundary: &str) -> Result<Vec<Part<'a>>, RangeError> {
    let bad = |why: &str| RangeError::Multipart(why.to_string());
    let delim = format!("--{boundary}");
    let mut parts = Vec::new();
    let mut pos = find(body, delim.as_bytes(), 0).ok_or_else(|| bad("no boundary in the body"))?;
    loop {
        pos += delim.len();
        if body[pos..].starts_with(b"--") {
            return Ok(parts);
        }
        // Headers end at an empty line.
        let headers_end =
            find(body, b"\r\n\r\n", pos).ok_or_else(|| bad("part without a header end"))?;
        let headers = std::str::from_utf8(&body[pos..headers_end])
            .map_err(|_| bad("non-UTF-8 part headers"))?;
        let range = headers
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case("content-range")
                    .then(|| v.trim().to_string())
            })
            .ok_or_else(|| bad("part without Content-Range"))?;
        let range = parse_content_range(&range)?;
        let start = headers_end + 4;
        let len = usize::try_from(range.end - range.start).map_err(|_| bad("part too large"))?;
        let end = start
            .checked_add(len)
            .filter(|&e| e <= body.len())
            .ok_or_else(|| bad("part shorter than its Content-Range"))?;
        parts.push((range, &body[start..end]));
        let next = end + 2;
        if body.get(end..next) != Some(b"\r\n") || !body[next..].starts_with(delim.as_bytes()) {
            return Err(bad(
                "part longer than its Content-Range or boundary missing",
            ));
        }
        pos = next;
    }
}

/// Checks that a served range lies within what was requested.
pub fn check_requested(requested: &[Range<u64>], got: &Range<u64>) -> Result<(), RangeError> {
    if requested
        .iter()
        .any(|r| r.start <= got.start && got.end <= r.end)
    {
        Ok(())
    } else {
        Err(RangeError::Unrequested { got: got.clone() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coalescing() {
        assert_eq!(
            coalesce(&[10..20, 0..5, 21..30, 100..101, 5..5], 1),
            vec![0..5, 10..30, 100..101]
        );
        assert_eq!(coalesce(&[0..10, 2..3], 0), vec![0..10]);
        assert_eq!(coalesce(&[0..10, 1034..1040], 1024), vec![0..1040]);
        assert_eq!(header(&[0..10, 20..21]), "bytes=0-9,20-20");
    }

    #[test]
    fn content_ranges() {
        assert_eq!(parse_content_range("bytes 0-99/38759378").unwrap(), 0..100);
        assert_eq!(parse_content_range("bytes 5-5/*").unwrap(), 5..6);
        for bad in [
            "bytes 9-5/10",
            "bytes a-5/10",
            "0-5/10",
            "bytes 0-5",
            "bytes 0-18446744073709551615/1",
        ] {
            assert!(parse_content_range(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn multipart_as_distribution_sends_it() {
        let body = b"--3d6b6a416f9b5\r\nContent-Type: application/octet-stream\r\nContent-Range: bytes 0-9/100\r\n\r\n0123456789\r\n--3d6b6a416f9b5\r\nContent-Type: application/octet-stream\r\nContent-Range: bytes 20-22/100\r\n\r\nabc\r\n--3d6b6a416f9b5--\r\n";
        assert_eq!(
            boundary("multipart/byteranges; boundary=3d6b6a416f9b5").as_deref(),
            Some("3d6b6a416f9b5")
        );
        let parts = parse_multipart(body, "3d6b6a416f9b5").unwrap();
        assert_eq!(
            parts,
            vec![(0..10, &b"0123456789"[..]), (20..23, &b"abc"[..])]
        );
        check_requested(&[0..10, 20..30], &parts[1].0).unwrap();
        assert!(check_requested(&[0..10, 20..21], &(5..11)).is_err());
    }

    #[test]
    fn hostile_multipart() {
        let b = "B";
        for bad in [
            &b""[..],
            b"--B\r\nContent-Range: bytes 0-9/100\r\n\r\n0123\r\n--B--",
            b"--B\r\nContent-Range: bytes 0-1/100\r\n\r\n0123\r\n--B--",
            b"--B\r\n\r\n01\r\n--B--",
            b"--B\r\nContent-Range: bytes 0-1/100\r\n01\r\n--B--",
            b"--X\r\nContent-Range: bytes 0-1/100\r\n\r\n01\r\n--X--",
            b"--B\r\nContent-Range: bytes 0-1/100\r\n\r\n01",
        ] {
            assert!(
                parse_multipart(bad, b).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(boundary("application/octet-stream"), None);
    }
}
