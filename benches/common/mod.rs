//! Shared by the micro-benchmarks.

use std::time::{Duration, Instant};

/// The fastest of `runs` timings of `f` (the least disturbed by the rest of the machine).
pub fn best_of<F: FnMut()>(runs: usize, mut f: F) -> Duration {
    (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .min()
        .unwrap_or_default()
}
