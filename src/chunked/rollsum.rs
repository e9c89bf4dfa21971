//! Content-defined chunking of regular files, as containers/storage's zstd:chunked writer does
//! it: runs of 1024+ zero bytes are holes (`zeros` chunks); elsewhere a bup-style rolling sum
//! over a 64-byte window cuts where its low 16 bits are all ones (about every 64 KiB).
//!
//! zstore adds one bound the Go writer lacks: a data chunk never exceeds [`MAX_CHUNK`] bytes,
//! so that memory stays bounded on pathological content. Readers do not depend on where chunks
//! are cut, only on the offsets written in the TOC.

const WINDOW: usize = 64;
const CHAR_OFFSET: u32 = 31;
const SPLIT_MASK: u32 = 0xFFFF;
/// Zero runs at least this long are holes.
pub const HOLE_THRESHOLD: u64 = 1024;
/// Longest data chunk zstore emits.
pub const MAX_CHUNK: u64 = 32 << 20;

/// What a chunk holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkKind {
    Data,
    Zeros,
}

/// A chunk of a file: its offset in the file, its length and kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chunk {
    pub offset: u64,
    pub len: u64,
    pub kind: ChunkKind,
}

/// The rolling sum.
#[derive(Clone)]
struct RollSum {
    s1: u32,
    s2: u32,
    window: [u8; WINDOW],
    pos: usize,
}

impl RollSum {
    fn new() -> RollSum {
        RollSum {
            s1: WINDOW as u32 * CHAR_OFFSET,
            s2: WINDOW as u32 * (WINDOW as u32 - 1) * CHAR_OFFSET,
            window: [0; WINDOW],
            pos: 0,
        }
    }

    #[inline]
    fn roll(&mut self, ch: u8) {
        let drop = u32::from(self.window[self.pos]);
        self.s1 = self.s1.wrapping_add(u32::from(ch)).wrapping_sub(drop);
        self.s2 = self
            .s2
            .wrapping_add(self.s1)
            .wrapping_sub((WINDOW as u32).wrapping_mul(drop + CHAR_OFFSET));
        self.window[self.pos] = ch;
        self.pos = (self.pos + 1) & (WINDOW - 1);
    }

    #[inline]
    fn on_split(&self) -> bool {
        self.s2 & SPLIT_MASK == SPLIT_MASK
    }
}

/// Streams a file's bytes and reports its chunks with their data. Memory is bounded by
/// [`MAX_CHUNK`]: zero runs are counted, not stored.
pub struct Chunker {
    /// Bytes of the current data chunk.
    buf: Vec<u8>,
    sum: RollSum,
    /// Position in the file of the next byte pushed.
    pos: u64,
    /// Start of the current data chunk.
    chunk_start: u64,
    /// Zeros seen but not yet classified (fewer than the hole threshold so far, or a hole).
    zero_run: u64,
}

impl Default for Chunker {
    fn default() -> Self {
        Self::new()
    }
}

impl Chunker {
    pub fn new() -> Chunker {
        Chunker {
            buf: Vec::new(),
            sum: RollSum::new(),
            pos: 0,
            chunk_start: 0,
            zero_run: 0,
        }
    }

    /// Current end of classified data (bytes before it belong to emitted or current chunks).
    fn data_end(&self) -> u64 {
        self.pos - self.zero_run
    }

    fn data_byte(&mut self, b: u8, out: &mut impl FnMut(Chunk, &[u8])) {
        self.sum.roll(b);
        self.buf.push(b);
        let end = self.data_end();
        if self.sum.on_split() || end - self.chunk_start >= MAX_CHUNK {
            self.emit_data(end, out);
        }
    }

    fn emit_data(&mut self, end: u64, out: &mut impl FnMut(Chunk, &[u8])) {
        out(
            Chunk {
                offset: self.chunk_start,
                len: end - self.chunk_start,
                kind: ChunkKind::Data,
            },
            &self.buf,
        );
        self.buf.clear();
        self.chunk_start = end;
    }

    /// The pending zero run ended (at a non-zero byte or EOF): classify it.
    fn settle_zeros(&mut self, out: &mut impl FnMut(Chunk, &[u8])) {
        let run = self.zero_run;
        if run == 0 {
            return;
        }
        let start = self.pos - run;
        if run >= HOLE_THRESHOLD {
            if start > self.chunk_start {
                self.emit_data(start, out);
            }
            for _ in 0..run {
                self.sum.roll(0);
            }
            out(
                Chunk {
                    offset: start,
                    len: run,
                    kind: ChunkKind::Zeros,
                },
                &[],
            );
            self.zero_run = 0;
            self.chunk_start = self.pos;
        } else {
            // Short runs are ordinary data, with split tests.
            self.zero_run = 0;
            let saved_pos = self.pos;
            self.pos = start;
            for _ in 0..run {
                self.pos += 1;
                self.data_byte(0, out);
            }
            self.pos = saved_pos;
        }
    }

    /// Feeds bytes; completed chunks are reported through `out`.
    pub fn push(&mut self, data: &[u8], out: &mut impl FnMut(Chunk, &[u8])) {
        for &b in data {
            if b == 0 {
                self.zero_run += 1;
                self.pos += 1;
                continue;
            }
            if self.zero_run > 0 {
                self.settle_zeros(out);
            }
            self.pos += 1;
            self.data_byte(b, out);
        }
    }

    /// Ends the file: reports the last chunk(s).
    pub fn finish(mut self, out: &mut impl FnMut(Chunk, &[u8])) {
        self.settle_zeros(out);
        if self.pos > self.chunk_start {
            self.emit_data(self.pos, out);
        }
    }
}

/// Chunks a whole buffer, checking the bytes reported for each chunk.
#[cfg(test)]
fn chunks_of(data: &[u8]) -> Vec<Chunk> {
    let mut v = Vec::new();
    let mut c = Chunker::new();
    let mut check = |ch: Chunk, bytes: &[u8]| {
        match ch.kind {
            ChunkKind::Data => assert_eq!(
                bytes,
                &data[ch.offset as usize..(ch.offset + ch.len) as usize]
            ),
            ChunkKind::Zeros => assert!(bytes.is_empty()),
        }
        v.push(ch)
    };
    c.push(data, &mut check);
    c.finish(&mut check);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The generator of the format notes' test vectors.
    fn g(n: usize, seed: u32) -> Vec<u8> {
        let mut x = seed;
        (0..n)
            .map(|_| {
                x = x.wrapping_mul(1103515245).wrapping_add(12345);
                ((x >> 16) & 0xff) as u8
            })
            .collect()
    }

    fn fmt(chunks: &[Chunk]) -> String {
        chunks
            .iter()
            .map(|c| {
                format!(
                    "{}:{}:{}",
                    c.offset,
                    c.len,
                    if c.kind == ChunkKind::Data { "d" } else { "z" }
                )
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn zeros(n: usize) -> Vec<u8> {
        vec![0; n]
    }

    #[test]
    fn vector_1_random_megabyte() {
        assert_eq!(
            fmt(&chunks_of(&g(1048576, 1))),
            "0:49253:d 49253:65256:d 114509:41131:d 155640:11963:d 167603:77785:d 245388:18138:d \
             263526:75174:d 338700:35905:d 374605:75148:d 449753:960:d 450713:64746:d 515459:40577:d \
             556036:30940:d 586976:124411:d 711387:938:d 712325:10543:d 722868:6814:d 729682:8069:d \
             737751:73791:d 811542:29359:d 840901:5230:d 846131:27531:d 873662:44764:d 918426:130150:d"
        );
    }

    /// Data with holes of 5000 and 3000 zero bytes and a run of 1023 (below the threshold).
    fn vector_2_data() -> Vec<u8> {
        [
            g(100000, 2),
            zeros(5000),
            g(200000, 3),
            zeros(1023),
            g(50000, 4),
            zeros(3000),
        ]
        .concat()
    }

    #[test]
    fn vector_2_holes_and_short_zero_runs() {
        let data = vector_2_data();
        assert_eq!(
            fmt(&chunks_of(&data)),
            "0:100000:d 100000:5000:z 105000:25472:d 130472:13729:d 144201:90340:d 234541:23632:d \
             258173:34500:d 292673:24197:d 316870:11120:d 327990:28033:d 356023:3000:z"
        );
    }

    #[test]
    fn vector_3_leading_hole() {
        let data = [zeros(2000), g(70000, 5)].concat();
        assert_eq!(
            fmt(&chunks_of(&data)),
            "0:2000:z 2000:43101:d 45101:960:d 46061:25939:d"
        );
    }

    #[test]
    fn vector_4_only_zeros() {
        assert_eq!(fmt(&chunks_of(&zeros(4096))), "0:4096:z");
    }

    #[test]
    fn vector_5_trailing_hole_of_exactly_the_threshold() {
        let data = [g(10, 6), zeros(1024)].concat();
        assert_eq!(fmt(&chunks_of(&data)), "0:10:d 10:1024:z");
    }

    #[test]
    fn feeding_in_pieces_changes_nothing() {
        let data = vector_2_data();
        let whole = chunks_of(&data);
        for piece in [1usize, 7, 4096, 65537] {
            let mut v = Vec::new();
            let mut c = Chunker::new();
            for part in data.chunks(piece) {
                c.push(part, &mut |ch, _| v.push(ch));
            }
            c.finish(&mut |ch, _| v.push(ch));
            assert_eq!(v, whole, "piece size {piece}");
        }
    }

    #[test]
    fn chunks_are_bounded() {
        // Constant non-zero bytes may never trigger a split.
        let data = vec![0xffu8; (MAX_CHUNK * 2 + 5) as usize];
        let c = chunks_of(&data);
        assert!(c.iter().all(|ch| ch.len <= MAX_CHUNK));
        assert_eq!(c.iter().map(|ch| ch.len).sum::<u64>(), data.len() as u64);
    }
}
