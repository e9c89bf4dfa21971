//! Registry authentication: `WWW-Authenticate` challenges and credentials from the places
//! podman and docker keep them.

use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;

/// A user name and password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub pass: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}:***)", self.user)
    }
}

impl Credentials {
    /// Parses `USER[:PASS]`.
    pub fn parse(s: &str) -> Credentials {
        match s.split_once(':') {
            Some((u, p)) => Credentials {
                user: u.to_string(),
                pass: p.to_string(),
            },
            None => Credentials {
                user: s.to_string(),
                pass: String::new(),
            },
        }
    }

    /// The `Authorization: Basic …` value.
    pub fn basic(&self) -> String {
        format!(
            "Basic {}",
            B64.encode(format!("{}:{}", self.user, self.pass))
        )
    }
}

/// What a registry asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

/// Parses a `WWW-Authenticate` header value.
pub fn parse_challenge(v: &str) -> Option<Challenge> {
    let v = v.trim();
    let (scheme, rest) = v.split_once(' ').unwrap_or((v, ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let mut realm = None;
    let mut service = None;
    let mut scope = None;
    // key="value" pairs; values may contain commas inside quotes.
    let mut rest = rest.trim();
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        let key = key
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let after = after.trim_start();
        let (value, next) = if let Some(q) = after.strip_prefix('"') {
            let end = q.find('"')?;
            (q[..end].to_string(), &q[end + 1..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_string(), &after[end..])
        };
        match key.as_str() {
            "realm" => realm = Some(value),
            "service" => service = Some(value),
            "scope" => scope = Some(value),
            _ => {}
        }
        rest = next.trim_start().trim_start_matches(',').trim_start();
    }
    Some(Challenge::Bearer {
        realm: realm?,
        service,
        scope,
    })
}

/// Errors reading an auth file.
#[derive(Debug, thiserror::Error)]
pub enum AuthFileError {
    #[error("reading auth file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("auth file {path} is not valid: {why}")]
    Invalid { path: PathBuf, why: String },
}

/// The auth files to consult, most specific first: `--authfile`, `$REGISTRY_AUTH_FILE`,
/// `$XDG_RUNTIME_DIR/containers/auth.json`, `~/.docker/config.json`.
pub fn auth_files(explicit: Option<&Path>) -> Vec<PathBuf> {
    if let Some(p) = explicit {
        return vec![p.to_path_buf()];
    }
    let mut v = Vec::new();
    if let Some(p) = std::env::var_os("REGISTRY_AUTH_FILE").filter(|p| !p.is_empty()) {
        v.push(PathBuf::from(p));
    }
    if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR").filter(|p| !p.is_empty()) {
        v.push(PathBuf::from(d).join("containers/auth.json"));
    }
    if let Some(h) = std::env::var_os("HOME").filter(|p| !p.is_empty()) {
        v.push(PathBuf::from(h).join(".docker/config.json"));
    }
    v
}

/// Finds credentials for `registry` (host[:port]) in auth files. An explicitly given file must
/// exist; the default locations are skipped when absent.
pub fn lookup(
    registry: &str,
    explicit: Option<&Path>,
) -> Result<Option<Credentials>, AuthFileError> {
    for path in auth_files(explicit) {
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && explicit.is_none() => continue,
            Err(source) => return Err(AuthFileError::Io { path, source }),
        };
        let invalid = |why: String| AuthFileError::Invalid {
            path: path.clone(),
            why,
        };
        let json: serde_json::Value =
            serde_json::from_slice(&text).map_err(|e| invalid(e.to_string()))?;
        let Some(auths) = json.get("auths").and_then(|a| a.as_object()) else {
            continue;
        };
        let keys = [
            registry.to_string(),
            format!("https://{registry}"),
            format!("http://{registry}"),
            format!("https://{registry}/v1/"),
            format!("https://{registry}/v2/"),
        ];
        let docker_hub = registry == "docker.io" || registry == "registry-1.docker.io";
        let entry = keys.iter().find_map(|k| auths.get(k)).or_else(|| {
            docker_hub
                .then(|| auths.get("https://index.docker.io/v1/"))
                .flatten()
        });
        if let Some(auth) = entry.and_then(|e| e.get("auth")).and_then(|a| a.as_str()) {
            let decoded = B64
                .decode(auth)
                .map_err(|e| invalid(format!("auth for {registry}: {e}")))?;
            let s = String::from_utf8(decoded)
                .map_err(|_| invalid(format!("auth for {registry} is not UTF-8")))?;
            return Ok(Some(Credentials::parse(&s)));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        assert_eq!(
            parse_challenge(r#"Basic realm="zstore-test""#),
            Some(Challenge::Basic)
        );
        assert_eq!(
            parse_challenge(
                r#"Bearer realm="http://127.0.0.1:5003/token",service="zstore-test-registry",scope="repository:a/b:pull,push""#
            ),
            Some(Challenge::Bearer {
                realm: "http://127.0.0.1:5003/token".into(),
                service: Some("zstore-test-registry".into()),
                scope: Some("repository:a/b:pull,push".into()),
            })
        );
        assert_eq!(parse_challenge("Bearer service=x"), None);
        assert_eq!(parse_challenge("Negotiate abc"), None);
        assert_eq!(parse_challenge(r#"Bearer realm="unterminated"#), None);
    }

    #[test]
    fn auth_file_lookup() {
        let dir = std::env::temp_dir().join(format!("zstore-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("auth.json");
        std::fs::write(
            &f,
            format!(
                r#"{{"auths":{{"127.0.0.1:5001":{{"auth":"{}"}}}}}}"#,
                B64.encode("zstore:pw:with:colons")
            ),
        )
        .unwrap();
        let c = lookup("127.0.0.1:5001", Some(&f)).unwrap().unwrap();
        assert_eq!(
            (c.user.as_str(), c.pass.as_str()),
            ("zstore", "pw:with:colons")
        );
        assert_eq!(lookup("127.0.0.1:5002", Some(&f)).unwrap(), None);
        std::fs::write(&f, "{").unwrap();
        assert!(lookup("x", Some(&f)).is_err());
        assert!(lookup("x", Some(&dir.join("missing.json"))).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
