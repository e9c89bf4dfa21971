//! A blocking registry client (reqwest on tokio, rustls with the ring provider): the
//! distribution API calls zstore needs, authentication (anonymous and credentialed bearer
//! tokens, basic), and retries with backoff on connection errors, 5xx and 429.

use std::collections::HashMap;
use std::io::Read;
use std::ops::Range;
use std::sync::Mutex;
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::blocking::{Client, RequestBuilder, Response};
use reqwest::header::{
    ACCEPT, AUTHORIZATION, CONTENT_RANGE, CONTENT_TYPE, HeaderMap, LOCATION, RANGE,
    WWW_AUTHENTICATE,
};

use crate::digest::Digest;
use crate::image::manifest::{
    DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, MAX_MANIFEST_SIZE, OCI_INDEX, OCI_MANIFEST,
};
use crate::registry::auth::{Challenge, Credentials, parse_challenge};
use crate::registry::ranges::{self, RangeError};

/// Errors talking to a registry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{url}: {}", error_chain(.source))]
    Http { url: String, source: reqwest::Error },
    #[error("{url}: {status}{}", if .body.is_empty() { String::new() } else { format!(": {}", .body) })]
    Status {
        url: String,
        status: StatusCode,
        body: String,
    },
    #[error("{registry}: authentication failed ({why}); check --creds or the auth file")]
    Auth { registry: String, why: String },
    #[error("{url}: {source}")]
    Range { url: String, source: RangeError },
    #[error("{url}: {what}")]
    Protocol { url: String, what: String },
    #[error("TLS setup: {0}")]
    Tls(String),
    /// The response began but its body broke off (reset, timeout, early close): worth another
    /// try.
    #[error("{url}: reading the response: {}", error_chain(.source))]
    Body { url: String, source: std::io::Error },
}

impl RegistryError {
    /// Whether the failure was in the transfer of a body, not in what the server said.
    pub fn is_body_failure(&self) -> bool {
        matches!(self, RegistryError::Body { .. })
    }

    /// The HTTP status, when the registry answered with an error status.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            RegistryError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// How to reach a registry.
#[derive(Clone, Debug, Default)]
pub struct ClientOptions {
    /// `Some(false)` allows plain HTTP and unverified TLS for any host; loopback hosts always
    /// use plain HTTP.
    pub tls_verify: Option<bool>,
    pub credentials: Option<Credentials>,
    /// Idle timeout of a request (no bytes for this long fails it).
    pub timeout: Option<Duration>,
    /// Retries after the first attempt on connection errors, 5xx and 429.
    pub retries: u32,
}

/// An authorization header for some scope.
#[derive(Clone)]
enum Auth {
    Basic(String),
    Bearer(String),
}

/// A client for one registry host.
pub struct Registry {
    http: Client,
    /// `http(s)://host[:port]`
    base: String,
    host: String,
    creds: Option<Credentials>,
    auth: Mutex<HashMap<String, Auth>>,
    retries: u32,
}

/// Whether a registry host is on this machine (plain HTTP is allowed there).
pub fn is_loopback(host: &str) -> bool {
    let without_port = match host.rsplit_once(':') {
        Some((h, p))
            if !h.is_empty()
                && p.bytes().all(|b| b.is_ascii_digit())
                && (h.starts_with('[') || !h.contains(':')) =>
        {
            h
        }
        _ => host,
    };
    let h = without_port.trim_start_matches('[').trim_end_matches(']');
    h == "localhost"
        || h.parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Installs rustls's ring provider for every HTTP client of the process (idempotent).
// ring is deprecated in rustls only for lacking post-quantum key exchange; zstore uses it to keep
// cold builds short (aws-lc-rs takes about a minute longer on two cores).
#[allow(deprecated)]
pub fn install_crypto_provider() {
    // Several calls race harmlessly: only the first installation wins.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Percent-encodes a query value (everything but RFC 3986 unreserved characters).
fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Registry {
    /// A client for `host` (as in a reference: `docker.io`, `127.0.0.1:5000`).
    pub fn new(host: &str, opts: &ClientOptions) -> Result<Registry, RegistryError> {
        install_crypto_provider();
        let insecure = opts.tls_verify == Some(false);
        let scheme = if is_loopback(host) || insecure {
            "http"
        } else {
            "https"
        };
        let endpoint = if host == "docker.io" {
            "registry-1.docker.io"
        } else {
            host
        };
        let mut builder = Client::builder()
            .connect_timeout(Duration::from_secs(15))
            .timeout(opts.timeout.unwrap_or(Duration::from_secs(60)))
            .tls_danger_accept_invalid_certs(insecure)
            .user_agent(concat!("zstore/", env!("CARGO_PKG_VERSION")));
        if is_loopback(host) {
            // Spoken to in plain HTTP: loading the system's trust store (a tenth of a small
            // pull's time) is skipped, so HTTPS redirects from a loopback registry are refused.
            builder = builder.tls_certs_only([]);
        }
        let http = builder
            .build()
            .map_err(|e| RegistryError::Tls(e.to_string()))?;
        Ok(Registry {
            http,
            base: format!("{scheme}://{endpoint}"),
            host: host.to_string(),
            creds: opts.credentials.clone(),
            auth: Mutex::new(HashMap::new()),
            retries: opts.retries,
        })
    }

    /// The registry host this client talks to.
    pub fn host(&self) -> &str {
        &self.host
    }

    fn url(&self, path: &str) -> String {
        if path.starts_with("http://") || path.starts_with("https://") {
            path.to_string()
        } else {
            format!("{}{path}", self.base)
        }
    }

    fn authorize(&self, rb: RequestBuilder, scope: &str) -> RequestBuilder {
        match self
            .auth
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(scope)
        {
            Some(Auth::Basic(v)) | Some(Auth::Bearer(v)) => rb.header(AUTHORIZATION, v),
            None => rb,
        }
    }

    /// Answers a 401 challenge for `scope`; the caller retries the request.
    fn authenticate(&self, challenge: Option<&str>, scope: &str) -> Result<(), RegistryError> {
        let fail = |why: String| RegistryError::Auth {
            registry: self.host.clone(),
            why,
        };
        let challenge = challenge
            .and_then(parse_challenge)
            .ok_or_else(|| fail("unsupported or missing WWW-Authenticate challenge".into()))?;
        let auth = match challenge {
            Challenge::Basic => {
                let c = self
                    .creds
                    .as_ref()
                    .ok_or_else(|| fail("the registry requires credentials".into()))?;
                Auth::Basic(c.basic())
            }
            Challenge::Bearer { realm, service, .. } => {
                let mut url = format!(
                    "{realm}{}scope={}",
                    if realm.contains('?') { '&' } else { '?' },
                    url_encode(scope)
                );
                if let Some(s) = service {
                    url.push_str(&format!("&service={}", url_encode(&s)));
                }
                let mut rb = self.http.get(&url);
                if let Some(c) = &self.creds {
                    rb = rb.header(AUTHORIZATION, c.basic());
                }
                let resp = rb.send().map_err(|e| RegistryError::Http {
                    url: realm.clone(),
                    source: e,
                })?;
                if !resp.status().is_success() {
                    return Err(fail(format!(
                        "token server {realm} answered {}",
                        resp.status()
                    )));
                }
                let body: serde_json::Value = resp
                    .json_limited(1 << 20)
                    .map_err(|e| fail(format!("token response: {e}")))?;
                let token = body
                    .get("token")
                    .or_else(|| body.get("access_token"))
                    .and_then(|t| t.as_str())
                    .ok_or_else(|| fail("token response without a token".into()))?;
                Auth::Bearer(format!("Bearer {token}"))
            }
        };
        self.auth
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(scope.to_string(), auth);
        Ok(())
    }

    /// Sends a request built by `build`, authenticating on 401 (once) and retrying transient
    /// failures with exponential backoff. Error statuses other than those retried are returned
    /// as [`RegistryError::Status`].
    fn send(
        &self,
        scope: &str,
        path: &str,
        build: impl Fn(&Client, &str) -> RequestBuilder,
    ) -> Result<Response, RegistryError> {
        let url = self.url(path);
        let mut authenticated = false;
        let mut attempt = 0u32;
        loop {
            let rb = self.authorize(build(&self.http, &url), scope);
            let result = rb.send();
            let retry_after = match result {
                Ok(resp) if resp.status() == StatusCode::UNAUTHORIZED && !authenticated => {
                    let challenge = resp
                        .headers()
                        .get(WWW_AUTHENTICATE)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string);
                    self.authenticate(challenge.as_deref(), scope)?;
                    authenticated = true;
                    continue;
                }
                Ok(resp) if resp.status() == StatusCode::UNAUTHORIZED => {
                    return Err(RegistryError::Auth {
                        registry: self.host.clone(),
                        why: "credentials rejected".into(),
                    });
                }
                Ok(resp)
                    if resp.status().is_server_error()
                        || resp.status() == StatusCode::TOO_MANY_REQUESTS =>
                {
                    if attempt >= self.retries {
                        return Err(status_error(resp));
                    }
                    resp.headers()
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .map(|s| Duration::from_secs(s.min(10)))
                }
                Ok(resp) => return Ok(resp),
                Err(e)
                    if (e.is_connect() || e.is_timeout() || e.is_request())
                        && attempt < self.retries =>
                {
                    None
                }
                Err(e) => return Err(RegistryError::Http { url, source: e }),
            };
            attempt += 1;
            std::thread::sleep(retry_after.unwrap_or(Duration::from_millis(200 << attempt.min(6))));
        }
    }

    /// Fetches a manifest or index by tag or digest, verifying its digest when the reference
    /// or the registry names one. Returns (bytes, media type, digest).
    pub fn get_manifest(
        &self,
        repo: &str,
        reference: &str,
    ) -> Result<(Vec<u8>, String, Digest), RegistryError> {
        self.retrying_body(|| self.get_manifest_once(repo, reference))
    }

    fn get_manifest_once(
        &self,
        repo: &str,
        reference: &str,
    ) -> Result<(Vec<u8>, String, Digest), RegistryError> {
        let scope = pull_scope(repo);
        let path = format!("/v2/{repo}/manifests/{reference}");
        let resp = self.send(&scope, &path, |c, u| {
            c.get(u).header(
                ACCEPT,
                format!("{OCI_MANIFEST}, {OCI_INDEX}, {DOCKER_MANIFEST}, {DOCKER_MANIFEST_LIST}"),
            )
        })?;
        let url = resp.url().to_string();
        let resp = ok_or_status(resp)?;
        let media_type = header_str(resp.headers(), CONTENT_TYPE).unwrap_or_default();
        let claimed = header_str(resp.headers(), "docker-content-digest");
        let bytes = read_body(resp, MAX_MANIFEST_SIZE)?;
        let digest = Digest::of(&bytes);
        let expected = reference
            .parse::<Digest>()
            .ok()
            .or_else(|| claimed.and_then(|c| c.parse().ok()));
        if let Some(e) = expected
            && e != digest
        {
            return Err(RegistryError::Protocol {
                url,
                what: format!("manifest hashes to {digest}, expected {e}"),
            });
        }
        Ok((bytes, media_type, digest))
    }

    /// Fetches a small blob whole (config), verifying size and digest.
    pub fn get_small_blob(
        &self,
        repo: &str,
        digest: &Digest,
        size: u64,
        limit: u64,
    ) -> Result<Vec<u8>, RegistryError> {
        self.retrying_body(|| self.get_small_blob_once(repo, digest, size, limit))
    }

    fn get_small_blob_once(
        &self,
        repo: &str,
        digest: &Digest,
        size: u64,
        limit: u64,
    ) -> Result<Vec<u8>, RegistryError> {
        let url = self.url(&format!("/v2/{repo}/blobs/{digest}"));
        if size > limit {
            return Err(RegistryError::Protocol {
                url,
                what: format!("blob of {size} bytes is over the {limit}-byte limit"),
            });
        }
        let resp = ok_or_status(self.get_blob(repo, digest)?)?;
        let bytes = read_body(resp, limit)?;
        let actual = Digest::of(&bytes);
        if actual != *digest || bytes.len() as u64 != size {
            return Err(RegistryError::Protocol {
                url,
                what: format!(
                    "blob hashes to {actual} ({} bytes), expected {digest} ({size} bytes)",
                    bytes.len()
                ),
            });
        }
        Ok(bytes)
    }

    /// Starts streaming a blob (the caller verifies it).
    pub fn get_blob(&self, repo: &str, digest: &Digest) -> Result<Response, RegistryError> {
        let resp = self.send(
            &pull_scope(repo),
            &format!("/v2/{repo}/blobs/{digest}"),
            |c, u| c.get(u),
        )?;
        ok_or_status(resp)
    }

    /// Streams a blob from byte `offset` on. Returns the response and the offset its body
    /// starts at: `offset`, or 0 when the registry ignored the range.
    pub fn get_blob_from(
        &self,
        repo: &str,
        digest: &Digest,
        offset: u64,
    ) -> Result<(Response, u64), RegistryError> {
        if offset == 0 {
            return Ok((self.get_blob(repo, digest)?, 0));
        }
        let resp = self.send(
            &pull_scope(repo),
            &format!("/v2/{repo}/blobs/{digest}"),
            |c, u| c.get(u).header(RANGE, format!("bytes={offset}-")),
        )?;
        match resp.status() {
            StatusCode::OK => Ok((resp, 0)),
            StatusCode::PARTIAL_CONTENT => {
                let url = resp.url().to_string();
                let cr = header_str(resp.headers(), CONTENT_RANGE).unwrap_or_default();
                let r =
                    ranges::parse_content_range(&cr).map_err(|source| RegistryError::Range {
                        url: url.clone(),
                        source,
                    })?;
                if r.start != offset {
                    return Err(RegistryError::Protocol {
                        url,
                        what: format!("asked for bytes from {offset}, got {cr:?}"),
                    });
                }
                Ok((resp, offset))
            }
            _ => Err(status_error(resp)),
        }
    }

    /// Runs a request and the reading of its body again (up to the retry count, with backoff)
    /// when the body broke off.
    pub fn retrying_body<T>(
        &self,
        mut request: impl FnMut() -> Result<T, RegistryError>,
    ) -> Result<T, RegistryError> {
        let mut attempt = 0u32;
        loop {
            match request() {
                Err(e) if e.is_body_failure() && attempt < self.retries => {
                    attempt += 1;
                    std::thread::sleep(Duration::from_millis(100 << attempt.min(6)));
                }
                result => return result,
            }
        }
    }

    /// How many times a failed request is tried again.
    pub fn retries(&self) -> u32 {
        self.retries
    }

    /// Requests byte ranges of a blob. See [`RangeReply`].
    pub fn get_ranges(
        &self,
        repo: &str,
        digest: &Digest,
        wanted: &[Range<u64>],
    ) -> Result<RangeReply, RegistryError> {
        let header = ranges::header(wanted);
        let resp = self.send(
            &pull_scope(repo),
            &format!("/v2/{repo}/blobs/{digest}"),
            |c, u| c.get(u).header(RANGE, &header),
        )?;
        let url = resp.url().to_string();
        match resp.status() {
            StatusCode::OK => Ok(RangeReply::Whole(resp)),
            StatusCode::PARTIAL_CONTENT => {
                let content_type = header_str(resp.headers(), CONTENT_TYPE).unwrap_or_default();
                let range_err = |source| RegistryError::Range {
                    url: url.clone(),
                    source,
                };
                if let Some(boundary) = ranges::boundary(&content_type) {
                    let limit = wanted.iter().map(|r| r.end - r.start).sum::<u64>()
                        + 1024 * wanted.len() as u64
                        + 4096;
                    let body = read_body(resp, limit)?;
                    let parts = ranges::parse_multipart(&body, &boundary).map_err(range_err)?;
                    let mut out = Vec::with_capacity(parts.len());
                    for (r, b) in parts {
                        ranges::check_requested(wanted, &r).map_err(range_err)?;
                        out.push((r, b.to_vec()));
                    }
                    Ok(RangeReply::Parts(out, body.len() as u64))
                } else {
                    let cr = header_str(resp.headers(), CONTENT_RANGE).ok_or_else(|| {
                        RegistryError::Protocol {
                            url: url.clone(),
                            what: "206 without Content-Range".into(),
                        }
                    })?;
                    let r = ranges::parse_content_range(&cr).map_err(range_err)?;
                    ranges::check_requested(wanted, &r).map_err(range_err)?;
                    let body = read_body(resp, r.end - r.start)?;
                    if body.len() as u64 != r.end - r.start {
                        return Err(RegistryError::Body {
                            url,
                            source: std::io::Error::new(
                                std::io::ErrorKind::UnexpectedEof,
                                format!("206 body of {} bytes for range {r:?}", body.len()),
                            ),
                        });
                    }
                    let n = body.len() as u64;
                    Ok(RangeReply::Parts(vec![(r, body)], n))
                }
            }
            _ => Err(status_error(resp)),
        }
    }

    /// Whether the registry has a blob (HEAD).
    pub fn has_blob(&self, repo: &str, digest: &Digest) -> Result<bool, RegistryError> {
        let resp = self.send(
            &push_scope(repo),
            &format!("/v2/{repo}/blobs/{digest}"),
            |c, u| c.head(u),
        )?;
        match resp.status() {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(status_error(resp)),
        }
    }

    /// Uploads a blob monolithically (POST, then PUT with the data).
    pub fn upload_blob(
        &self,
        repo: &str,
        digest: &Digest,
        data: impl Fn() -> std::io::Result<std::fs::File>,
        size: u64,
    ) -> Result<(), RegistryError> {
        let scope = push_scope(repo);
        let resp = ok_or_status(self.send(
            &scope,
            &format!("/v2/{repo}/blobs/uploads/"),
            |c, u| c.post(u),
        )?)?;
        let url = resp.url().to_string();
        let location =
            header_str(resp.headers(), LOCATION).ok_or_else(|| RegistryError::Protocol {
                url: url.clone(),
                what: "upload without a Location".into(),
            })?;
        let location = if location.starts_with('/') {
            self.url(&location)
        } else {
            location
        };
        let sep = if location.contains('?') { '&' } else { '?' };
        let put_url = format!("{location}{sep}digest={digest}");
        let resp = self.send(&scope, &put_url, |c, u| {
            let body = match data() {
                Ok(f) => reqwest::blocking::Body::sized(f, size),
                Err(_) => reqwest::blocking::Body::from(Vec::new()),
            };
            c.put(u)
                .header(CONTENT_TYPE, "application/octet-stream")
                .body(body)
        })?;
        ok_or_status(resp).map(|_| ())
    }

    /// Uploads a manifest under a tag (or digest).
    pub fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<(), RegistryError> {
        let resp = self.send(
            &push_scope(repo),
            &format!("/v2/{repo}/manifests/{reference}"),
            |c, u| {
                c.put(u)
                    .header(CONTENT_TYPE, media_type)
                    .body(bytes.to_vec())
            },
        )?;
        ok_or_status(resp).map(|_| ())
    }
}

/// What a range request returned.
pub enum RangeReply {
    /// The server ignored the ranges and is sending the whole blob (stream it).
    Whole(Response),
    /// The requested parts, and the body bytes received.
    Parts(Vec<(Range<u64>, Vec<u8>)>, u64),
}

fn pull_scope(repo: &str) -> String {
    format!("repository:{repo}:pull")
}

fn push_scope(repo: &str) -> String {
    format!("repository:{repo}:pull,push")
}

fn header_str(h: &HeaderMap, name: impl reqwest::header::AsHeaderName) -> Option<String> {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

fn status_error(resp: Response) -> RegistryError {
    let url = resp.url().to_string();
    let status = resp.status();
    let body = read_limited(resp, 4096)
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    RegistryError::Status {
        url,
        status,
        body: body.chars().take(300).collect(),
    }
}

fn ok_or_status(resp: Response) -> Result<Response, RegistryError> {
    if resp.status().is_success() {
        Ok(resp)
    } else {
        Err(status_error(resp))
    }
}

/// An error and its sources, joined ("error decoding response body: operation timed out").
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

/// Reads a response body of at most `limit` bytes; a broken transfer is a
/// [`RegistryError::Body`], a larger body a protocol error.
fn read_body(resp: Response, limit: u64) -> Result<Vec<u8>, RegistryError> {
    let url = resp.url().to_string();
    let mut buf = Vec::new();
    if let Err(source) = resp.take(limit + 1).read_to_end(&mut buf) {
        return Err(RegistryError::Body { url, source });
    }
    if buf.len() as u64 > limit {
        return Err(RegistryError::Protocol {
            url,
            what: format!("response larger than the {limit}-byte limit"),
        });
    }
    Ok(buf)
}

/// Reads a response body, refusing more than `limit` bytes.
fn read_limited(resp: Response, limit: u64) -> Result<Vec<u8>, String> {
    let mut buf = Vec::new();
    resp.take(limit + 1)
        .read_to_end(&mut buf)
        .map_err(|e| format!("reading the response: {}", error_chain(&e)))?;
    if buf.len() as u64 > limit {
        return Err(format!("response larger than the {limit}-byte limit"));
    }
    Ok(buf)
}

trait JsonLimited {
    fn json_limited(self, limit: u64) -> Result<serde_json::Value, String>;
}

impl JsonLimited for Response {
    fn json_limited(self, limit: u64) -> Result<serde_json::Value, String> {
        let body = read_limited(self, limit)?;
        serde_json::from_slice(&body).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_detection() {
        for h in [
            "127.0.0.1:5000",
            "localhost",
            "localhost:5000",
            "[::1]:5000",
            "127.1.2.3",
        ] {
            assert!(is_loopback(h), "{h}");
        }
        for h in [
            "docker.io",
            "10.0.0.1:5000",
            "quay.io",
            "127.example.com",
            "127.0.0.1.nip.io:5000",
        ] {
            assert!(!is_loopback(h), "{h}");
        }
    }
}
