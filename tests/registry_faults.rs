//! Fault injection: an in-process registry (serving an OCI layout) that ignores Range, refuses
//! multi-range requests, fails with 503, truncates or corrupts bodies, stalls, or sends a broken
//! multipart body. Each pull ends correctly or with a clear error, and fsck passes after it.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use common::*;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Fault {
    None,
    IgnoreRange,
    RejectMultiRange,
    ServerErrors(usize),
    TruncateBlob,
    CorruptBlob,
    Stall,
    BadBoundary,
    /// 206 with a Content-Range other than the one asked for.
    WrongContentRange,
    /// The first N requests (after `/v2/`) are reset before any answer.
    ResetBeforeAnswer(usize),
    /// The first N bodies over 4 KiB (blobs, ranges) break off halfway with a reset.
    ResetMidBody(usize),
    /// The first N requests get 429 with `Retry-After: 1`.
    TooManyRequests(usize),
    /// Every body arrives in 4 KiB pieces, 1 ms apart.
    SlowDrip,
}

/// Makes the closing of a connection a TCP reset (SO_LINGER 0), as a crashed proxy's would be.
fn reset(s: &TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket descriptor and a correctly sized option value.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "setting SO_LINGER");
}

struct Fake {
    host: String,
    fault: Arc<Mutex<Fault>>,
    faults_served: Arc<AtomicUsize>,
}

struct Content {
    manifests: HashMap<String, Vec<u8>>,
    blobs: HashMap<String, Vec<u8>>,
}

fn load_layout(dir: &std::path::Path) -> Content {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    let mut blobs = HashMap::new();
    for e in std::fs::read_dir(dir.join("blobs/sha256")).unwrap() {
        let e = e.unwrap();
        blobs.insert(
            format!("sha256:{}", e.file_name().to_string_lossy()),
            std::fs::read(e.path()).unwrap(),
        );
    }
    let mut manifests = HashMap::new();
    for m in index["manifests"].as_array().unwrap() {
        let d = m["digest"].as_str().unwrap().to_string();
        let bytes = blobs[&d].clone();
        manifests.insert(d, bytes.clone());
        if let Some(tag) = m["annotations"]["org.opencontainers.image.ref.name"].as_str() {
            manifests.insert(tag.to_string(), bytes);
        }
    }
    Content { manifests, blobs }
}

fn respond(mut s: TcpStream, content: &Content, fault: Fault, faults_served: &AtomicUsize) {
    let mut reader = BufReader::new(s.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let mut parts = line.split_whitespace();
    let (method, path) = (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or("").to_string(),
    );
    let send = |s: &mut TcpStream, status: &str, extra: &str, body: &[u8]| {
        let _ = write!(
            s,
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n",
            body.len()
        );
        if method == "HEAD" {
            return;
        }
        if let Fault::ResetMidBody(n) = fault
            && body.len() > 4096
            && faults_served.fetch_add(1, Ordering::SeqCst) < n
        {
            let _ = s.write_all(&body[..body.len() / 2]);
            let _ = s.flush();
            return reset(s);
        }
        if fault == Fault::SlowDrip {
            for piece in body.chunks(4096) {
                if s.write_all(piece).is_err() {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        } else {
            let _ = s.write_all(body);
        }
    };
    if path == "/v2/" {
        return send(&mut s, "200 OK", "", b"{}");
    }
    if let Fault::ResetBeforeAnswer(n) = fault
        && faults_served.fetch_add(1, Ordering::SeqCst) < n
    {
        return reset(&s);
    }
    if let Fault::TooManyRequests(n) = fault
        && faults_served.fetch_add(1, Ordering::SeqCst) < n
    {
        return send(
            &mut s,
            "429 Too Many Requests",
            "Retry-After: 1\r\n",
            b"slow down",
        );
    }
    if let Fault::ServerErrors(n) = fault
        && faults_served.fetch_add(1, Ordering::SeqCst) < n
    {
        return send(
            &mut s,
            "503 Service Unavailable",
            "Retry-After: 0\r\n",
            b"busy",
        );
    }
    if let Some(reference) = path.split("/manifests/").nth(1) {
        return match content.manifests.get(reference) {
            Some(m) => send(
                &mut s,
                "200 OK",
                "Content-Type: application/vnd.oci.image.manifest.v1+json\r\n",
                m,
            ),
            None => send(&mut s, "404 Not Found", "", b"{}"),
        };
    }
    let Some(digest) = path.split("/blobs/").nth(1) else {
        return send(&mut s, "404 Not Found", "", b"");
    };
    let Some(blob) = content.blobs.get(digest) else {
        return send(&mut s, "404 Not Found", "", b"");
    };
    let range = headers.get("range").filter(|_| fault != Fault::IgnoreRange);
    let Some(range) = range else {
        let mut body = blob.clone();
        match fault {
            Fault::TruncateBlob => {
                let _ = write!(
                    s,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = s.write_all(&body[..body.len() / 2]);
                return;
            }
            Fault::CorruptBlob => {
                let n = body.len();
                body[n / 2] ^= 0xff;
            }
            Fault::Stall => {
                let _ = write!(
                    s,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = s.write_all(&body[..body.len() / 4]);
                std::thread::sleep(std::time::Duration::from_secs(20));
                return;
            }
            _ => {}
        }
        return send(&mut s, "200 OK", "", &body);
    };
    let spans: Vec<(usize, usize)> = range
        .trim_start_matches("bytes=")
        .split(',')
        .filter_map(|r| {
            let (a, b) = r.split_once('-')?;
            let a: usize = a.parse().ok()?;
            // `bytes=N-`: to the end.
            let b: usize = if b.is_empty() {
                blob.len() - 1
            } else {
                b.parse::<usize>().ok()?.min(blob.len() - 1)
            };
            Some((a, b))
        })
        .collect();
    if spans.len() > 1 && fault == Fault::RejectMultiRange {
        return send(&mut s, "416 Range Not Satisfiable", "", b"");
    }
    if fault == Fault::WrongContentRange {
        let (a, b) = spans[0];
        let (a, b) = (a + 1, (b + 1).min(blob.len() - 1));
        return send(
            &mut s,
            "206 Partial Content",
            &format!("Content-Range: bytes {a}-{b}/{}\r\n", blob.len()),
            &blob[a..=b],
        );
    }
    if spans.len() == 1 && fault != Fault::BadBoundary {
        let (a, b) = spans[0];
        return send(
            &mut s,
            "206 Partial Content",
            &format!("Content-Range: bytes {a}-{b}/{}\r\n", blob.len()),
            &blob[a..=b],
        );
    }
    let boundary = "zstoreboundary";
    let mut body = Vec::new();
    for (a, b) in spans {
        write!(body, "--{boundary}\r\nContent-Type: application/octet-stream\r\nContent-Range: bytes {a}-{b}/{}\r\n\r\n", blob.len()).unwrap();
        body.extend_from_slice(&blob[a..=b]);
        body.extend_from_slice(b"\r\n");
    }
    write!(body, "--{boundary}--\r\n").unwrap();
    let announced = if fault == Fault::BadBoundary {
        "otherboundary"
    } else {
        boundary
    };
    send(
        &mut s,
        "206 Partial Content",
        &format!("Content-Type: multipart/byteranges; boundary={announced}\r\n"),
        &body,
    );
}

fn start_fake(layout: &std::path::Path) -> Fake {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let host = listener.local_addr().unwrap().to_string();
    let content = Arc::new(load_layout(layout));
    let fault = Arc::new(Mutex::new(Fault::None));
    let faults_served = Arc::new(AtomicUsize::new(0));
    let (f, c, n) = (fault.clone(), content.clone(), faults_served.clone());
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let (c, f, n) = (c.clone(), *f.lock().unwrap(), n.clone());
            std::thread::spawn(move || respond(stream, &c, f, &n));
        }
    });
    Fake {
        host,
        fault,
        faults_served,
    }
}

struct Setup {
    _tmp: tempfile::TempDir,
    fake: Fake,
    tmp_path: std::path::PathBuf,
}

fn setup(format: &str) -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let mut src = Layout::new(&tmp.path().join("src"));
    near_identical_images(&mut src, 2, 40, 30_000, Compression::Gzip);
    // Every other file: a store holding it lacks non-adjacent ranges of c1 (multi-range requests).
    src.add_image(
        "half",
        &[(
            near_identical_tar_with(9, 40, 30_000, |f| f % 2 == 0),
            Compression::Gzip,
        )],
    );
    let pusher = Zs::new(&tmp.path().join("pusher"));
    let out = tmp.path().join("served");
    for tag in ["c0", "c1", "half"] {
        pusher.ok(&["pull", &src.source(tag)]);
        pusher.ok(&[
            "push",
            &src.source(tag),
            &format!("oci:{}:{tag}", out.display()),
            "--format",
            format,
        ]);
    }
    let fake = start_fake(&out);
    let tmp_path = tmp.path().to_path_buf();
    Setup {
        _tmp: tmp,
        fake,
        tmp_path,
    }
}

impl Setup {
    fn store(&self, name: &str) -> Zs {
        Zs::new(&self.tmp_path.join(name))
    }
    fn image(&self, tag: &str) -> String {
        format!("{}/test/image:{tag}", self.fake.host)
    }
    fn set(&self, f: Fault) {
        *self.fake.fault.lock().unwrap() = f;
        self.fake.faults_served.store(0, Ordering::SeqCst);
    }
}

fn assert_succeeded(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn assert_consistent(zs: &Zs) {
    let fsck = zs.json(&["fsck"]);
    assert_eq!(fsck["errors"], serde_json::json!([]), "{fsck}");
}

/// Seeds a store with half of c1's files, then pulls c1 (partially: non-adjacent ranges)
/// under `fault`.
fn partial_pull_under(fault: Fault) -> (Setup, Zs, std::process::Output) {
    let s = setup("zstd:chunked");
    let zs = s.store(&format!("store-{fault:?}"));
    zs.ok(&["pull", &s.image("half"), "--retries", "0"]);
    s.set(fault);
    let out = zs.run(&[
        "pull",
        &s.image("c1"),
        "--partial",
        "always",
        "--json",
        "--timeout",
        "2",
        "--retries",
        "2",
    ]);
    (s, zs, out)
}

#[test]
fn server_ignoring_range_still_gives_a_correct_pull() {
    let (_s, zs, out) = partial_pull_under(Fault::IgnoreRange);
    assert_succeeded(&out);
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["layers"][0]["diff_id_verified"], true);
    assert_consistent(&zs);
}

#[test]
fn multi_range_refused_with_416_is_split() {
    let (_s, zs, out) = partial_pull_under(Fault::RejectMultiRange);
    assert_succeeded(&out);
    assert_consistent(&zs);
}

#[test]
fn transient_503s_are_retried() {
    let (_s, zs, out) = partial_pull_under(Fault::ServerErrors(2));
    assert_succeeded(&out);
    assert_consistent(&zs);
}

#[test]
fn broken_multipart_body_is_a_clear_error() {
    let (_s, zs, out) = partial_pull_under(Fault::BadBoundary);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("multipart"), "{err}");
    assert_consistent(&zs);
    assert_eq!(
        zs.json(&["images"]).as_array().unwrap().len(),
        1,
        "c1 not recorded"
    );
}

#[test]
fn multi_range_requests_are_used() {
    let (_s, zs, out) = partial_pull_under(Fault::None);
    assert_succeeded(&out);
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["layers"][0]["reused_files"], 20, "{r}");
    assert!(
        r["layers"][0]["fetched_bytes"].as_u64().unwrap()
            < r["layers"][0]["size"].as_u64().unwrap()
    );
    assert_consistent(&zs);
}

fn whole_pull_under(fault: Fault) -> (Setup, Zs, std::process::Output) {
    whole_pull_with_retries(fault, 0)
}

fn whole_pull_with_retries(fault: Fault, retries: u32) -> (Setup, Zs, std::process::Output) {
    let s = setup("gzip");
    let zs = s.store(&format!("store-{fault:?}"));
    s.set(fault);
    let out = zs.run(&[
        "pull",
        &s.image("c0"),
        "--json",
        "--timeout",
        "2",
        "--retries",
        &retries.to_string(),
    ]);
    (s, zs, out)
}

/// The pull succeeded, verified its layers, stored every file, and the store is consistent.
fn assert_complete_pull(zs: &Zs, out: &std::process::Output) {
    assert_succeeded(out);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for layer in report["layers"].as_array().unwrap() {
        assert_eq!(layer["diff_id_verified"], true, "{report}");
    }
    assert_consistent(zs);
}

#[test]
fn connections_reset_before_answering_are_retried() {
    let (_s, zs, out) = whole_pull_with_retries(Fault::ResetBeforeAnswer(2), 3);
    assert_complete_pull(&zs, &out);
}

#[test]
fn blob_reset_halfway_is_resumed() {
    let (s, zs, out) = whole_pull_with_retries(Fault::ResetMidBody(1), 2);
    assert_complete_pull(&zs, &out);
    s.set(Fault::None);
    let clean = s.store("clean");
    clean.ok(&["pull", &s.image("c0")]);
    assert_eq!(
        zs.json(&["df"])["objects"],
        clean.json(&["df"])["objects"],
        "every file of c0 stored"
    );
}

#[test]
fn blob_reset_halfway_without_retries_is_a_clear_error() {
    let (_s, zs, out) = whole_pull_under(Fault::ResetMidBody(1));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("error: ") && err.contains(" at byte "),
        "{err}"
    );
    assert_consistent(&zs);
    assert_eq!(zs.json(&["df"])["objects"], 0, "nothing unverified stored");
}

#[test]
fn range_replies_reset_halfway_are_asked_again() {
    let (_s, zs, out) = partial_pull_under(Fault::ResetMidBody(1));
    assert_complete_pull(&zs, &out);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["layers"][0]["partial"], true, "{report}");
}

#[test]
fn too_many_requests_waits_for_retry_after() {
    let (_s, zs, out) = whole_pull_with_retries(Fault::TooManyRequests(2), 3);
    assert_complete_pull(&zs, &out);
}

#[test]
fn slow_drip_completes_within_the_idle_timeout() {
    let (_s, zs, out) = whole_pull_under(Fault::SlowDrip);
    assert_complete_pull(&zs, &out);
    let (_s, zs, out) = partial_pull_under(Fault::SlowDrip);
    assert_complete_pull(&zs, &out);
}

#[test]
fn truncated_blob_is_a_clear_error() {
    let (_s, zs, out) = whole_pull_under(Fault::TruncateBlob);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("error: "), "{err}");
    assert_consistent(&zs);
    assert_eq!(
        zs.json(&["df"])["objects"],
        0,
        "nothing from a failed pull is visible"
    );
}

#[test]
fn corrupted_blob_is_refused() {
    let (_s, zs, out) = whole_pull_under(Fault::CorruptBlob);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("hash") || err.contains("corrupt") || err.contains("invalid"),
        "{err}"
    );
    assert_consistent(&zs);
    assert_eq!(zs.json(&["df"])["objects"], 0);
}

#[test]
fn stalled_connection_times_out() {
    let (_s, zs, out) = whole_pull_under(Fault::Stall);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.to_lowercase().contains("timed out") || err.contains("timeout"),
        "{err}"
    );
    assert_consistent(&zs);
}

#[test]
fn faults_heal_and_the_same_store_pulls_again() {
    let (s, zs, out) = whole_pull_under(Fault::CorruptBlob);
    assert!(!out.status.success());
    s.set(Fault::None);
    zs.ok(&["pull", &s.image("c0")]);
    zs.ok(&["pull", &s.image("c1")]);
    assert_consistent(&zs);
}

#[test]
fn wrong_content_range_is_a_clear_error() {
    let (_s, zs, out) = partial_pull_under(Fault::WrongContentRange);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not requested") || err.contains("which were not requested"),
        "{err}"
    );
    assert_consistent(&zs);
    assert_eq!(
        zs.json(&["images"]).as_array().unwrap().len(),
        1,
        "c1 not recorded"
    );
}
