//! Pause points for tests of concurrency and crash safety, and a peak-memory report for tests
//! of hostile input.
//!
//! When `ZSTORE_TEST_HOOK_DIR` is set and the point is listed in `ZSTORE_TEST_HOOK_POINTS`
//! (comma-separated), reaching it creates `<dir>/<point>.reached` and waits until
//! `<dir>/<point>.continue` exists (or `<dir>/<point>.abort`, which ends the process at once,
//! as a crash would). Without the variables this is a single env lookup.

use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Longest a process waits at a point before going on by itself.
const MAX_WAIT: Duration = Duration::from_secs(120);

/// Marks `point` as reached and waits for the test to release it.
pub fn pause(point: &str) {
    let Some(dir) = std::env::var_os("ZSTORE_TEST_HOOK_DIR").map(PathBuf::from) else {
        return;
    };
    let armed = std::env::var("ZSTORE_TEST_HOOK_POINTS").unwrap_or_default();
    if !armed.split(',').any(|p| p == point) {
        return;
    }
    let _ = std::fs::write(
        dir.join(format!("{point}.reached")),
        std::process::id().to_string(),
    );
    let start = Instant::now();
    while start.elapsed() < MAX_WAIT {
        if dir.join(format!("{point}.continue")).exists() {
            return;
        }
        if dir.join(format!("{point}.abort")).exists() {
            // Simulates a crash: no destructors, no cleanup.
            std::process::abort();
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// When `ZSTORE_TEST_PEAK_RSS_FILE` is set, writes this process's peak resident memory in bytes
/// (`VmHWM`) there. A parent's `wait4` cannot tell it: the kernel counts the parent's memory at
/// fork time into the child's peak.
pub fn record_peak_memory() {
    let Some(path) = std::env::var_os("ZSTORE_TEST_PEAK_RSS_FILE") else {
        return;
    };
    let peak_kib = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        });
    if let Some(kib) = peak_kib {
        let _ = std::fs::write(path, (kib * 1024).to_string());
    }
}
