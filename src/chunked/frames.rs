//! zstd skippable frames (RFC 8878 §3.1.2), which carry zstd:chunked's TOC, tar-split and footer.

/// The magic zstd:chunked writers use (`50 2A 4D 18`), the first of the skippable range.
pub const SKIPPABLE_MAGIC: u32 = 0x184D_2A50;
/// Size of a skippable frame header (magic + payload length).
pub const SKIPPABLE_HEADER: u64 = 8;

/// Wraps a payload in a skippable frame.
pub fn skippable_frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 8);
    out.extend_from_slice(&SKIPPABLE_MAGIC.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// Whether 8 bytes are a skippable frame header with exactly this payload length.
pub fn is_skippable_header(header: &[u8], payload_len: u64) -> bool {
    header.len() == 8
        && u32::from_le_bytes([header[0], header[1], header[2], header[3]]) & 0xFFFF_FFF0
            == SKIPPABLE_MAGIC
        && u64::from(u32::from_le_bytes([
            header[4], header[5], header[6], header[7],
        ])) == payload_len
}
