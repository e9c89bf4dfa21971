//! Image references: `docker://HOST[:PORT]/REPO[:TAG|@DIGEST]` (or the same without the
//! transport, with docker's short-name rules) and `oci:DIR[:TAG]`.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::digest::Digest;

/// Registry used for names without a host, as docker does.
pub const DEFAULT_REGISTRY: &str = "docker.io";

/// Errors in references.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReferenceError {
    #[error("invalid image reference {reference:?}: {why}")]
    Invalid {
        reference: String,
        why: &'static str,
    },
}

/// A registry image reference, normalised.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    /// Registry host, with port if any (`docker.io`, `127.0.0.1:5000`).
    pub registry: String,
    /// Repository path (`library/alpine`).
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

fn valid_path_component(c: &str) -> bool {
    // [a-z0-9]+ separated by one '.', one or two '_', or any number of '-'
    if c.is_empty()
        || !c
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
    {
        return false;
    }
    let bytes = c.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    alnum(bytes[0]) && alnum(bytes[bytes.len() - 1]) && !c.contains("..") && !c.contains("___")
}

fn valid_tag(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 128
        && (t.as_bytes()[0].is_ascii_alphanumeric() || t.as_bytes()[0] == b'_')
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

fn valid_host(h: &str) -> bool {
    let (host, port) = match h.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(']') || h.starts_with('[') => (host, Some(port)),
        _ => (h, None),
    };
    let host_ok = if host.starts_with('[') && host.ends_with(']') {
        host[1..host.len() - 1]
            .bytes()
            .all(|b| b.is_ascii_hexdigit() || b == b':')
    } else {
        !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-".contains(&b))
    };
    host_ok
        && port
            .is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()))
}

impl Reference {
    /// Parses a reference, applying docker's defaults (`docker.io`, `library/`, `:latest`).
    pub fn parse(s: &str) -> Result<Reference, ReferenceError> {
        let invalid = |why| ReferenceError::Invalid {
            reference: s.to_string(),
            why,
        };
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => (
                r,
                Some(
                    d.parse::<Digest>()
                        .map_err(|_| invalid("bad digest after '@'"))?,
                ),
            ),
            None => (s, None),
        };
        let (name, tag) = match rest.rsplit_once(':') {
            Some((n, t)) if !t.contains('/') => (n, Some(t.to_string())),
            _ => (rest, None),
        };
        if let Some(t) = &tag
            && !valid_tag(t)
        {
            return Err(invalid("bad tag"));
        }
        let mut parts: Vec<&str> = name.split('/').collect();
        let registry = if parts.len() > 1
            && (parts[0].contains('.') || parts[0].contains(':') || parts[0] == "localhost")
        {
            let host = parts.remove(0);
            if !valid_host(host) {
                return Err(invalid("bad registry host"));
            }
            host.to_string()
        } else {
            DEFAULT_REGISTRY.to_string()
        };
        if parts.is_empty() || !parts.iter().all(|c| valid_path_component(c)) {
            return Err(invalid(
                "repository must be lowercase letters, digits and separators",
            ));
        }
        let mut repository = parts.join("/");
        if registry == DEFAULT_REGISTRY && parts.len() == 1 {
            repository = format!("library/{repository}");
        }
        if repository.len() > 255 {
            return Err(invalid("repository name too long"));
        }
        let tag = if tag.is_none() && digest.is_none() {
            Some("latest".to_string())
        } else {
            tag
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }
}

/// Where a pull or push reads or writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    Registry(Reference),
    /// An OCI image layout directory and an optional tag (`org.opencontainers.image.ref.name`).
    OciLayout {
        dir: PathBuf,
        tag: Option<String>,
    },
}

impl Location {
    /// Parses `docker://…`, `oci:DIR[:TAG]`, or a bare registry reference.
    pub fn parse(s: &str) -> Result<Location, ReferenceError> {
        if let Some(rest) = s.strip_prefix("oci:") {
            let (dir, tag) = match rest.split_once(':') {
                Some((d, t)) => (d, Some(t.to_string())),
                None => (rest, None),
            };
            if dir.is_empty() {
                return Err(ReferenceError::Invalid {
                    reference: s.to_string(),
                    why: "oci: needs a directory",
                });
            }
            if let Some(t) = &tag
                && t.is_empty()
            {
                return Err(ReferenceError::Invalid {
                    reference: s.to_string(),
                    why: "empty tag after the directory",
                });
            }
            return Ok(Location::OciLayout {
                dir: PathBuf::from(dir),
                tag,
            });
        }
        let rest = s.strip_prefix("docker://").unwrap_or(s);
        Ok(Location::Registry(Reference::parse(rest)?))
    }

    /// The local name an image pulled from here is stored under.
    pub fn local_name(&self) -> String {
        match self {
            Location::Registry(r) => r.to_string(),
            Location::OciLayout { dir, tag } => oci_name(dir, tag.as_deref()),
        }
    }
}

fn oci_name(dir: &Path, tag: Option<&str>) -> String {
    let abs = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    match tag {
        Some(t) => format!("oci:{}:{t}", abs.display()),
        None => format!("oci:{}", abs.display()),
    }
}

/// Normalised forms of a user's image name to try against stored names (`alpine` →
/// `docker.io/library/alpine:latest`, relative `oci:` directories made absolute).
pub fn local_name_candidates(query: &str) -> Vec<String> {
    match Location::parse(query) {
        Ok(l) => vec![l.local_name()],
        Err(_) => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(s: &str) -> String {
        Reference::parse(s).unwrap().to_string()
    }

    #[test]
    fn docker_normalisation() {
        assert_eq!(norm("alpine"), "docker.io/library/alpine:latest");
        assert_eq!(norm("user/app:v1"), "docker.io/user/app:v1");
        assert_eq!(
            norm("127.0.0.1:5000/zstore/fixture-zstd-chunked:c1"),
            "127.0.0.1:5000/zstore/fixture-zstd-chunked:c1"
        );
        assert_eq!(norm("localhost/a"), "localhost/a:latest");
        assert_eq!(norm("localhost:5000/a/b/c"), "localhost:5000/a/b/c:latest");
        let d = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert_eq!(
            norm(&format!("quay.io/a/b@{d}")),
            format!("quay.io/a/b@{d}")
        );
        assert_eq!(
            norm(&format!("quay.io/a/b:t@{d}")),
            format!("quay.io/a/b:t@{d}")
        );
    }

    #[test]
    fn bad_references() {
        for bad in [
            "",
            "UPPER",
            "a//b",
            "a:",
            "a:b:c",
            "-a",
            "a@sha256:12",
            "a/b:-t",
            "host:99999999/a",
            "a..b",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn locations() {
        assert_eq!(
            Location::parse("oci:/x/y:c1").unwrap(),
            Location::OciLayout {
                dir: "/x/y".into(),
                tag: Some("c1".into())
            }
        );
        assert_eq!(
            Location::parse("oci:/x/y").unwrap(),
            Location::OciLayout {
                dir: "/x/y".into(),
                tag: None
            }
        );
        assert!(Location::parse("oci:").is_err());
        assert!(Location::parse("oci:/x:").is_err());
        assert!(matches!(
            Location::parse("docker://alpine").unwrap(),
            Location::Registry(_)
        ));
        assert_eq!(
            Location::parse("oci:/x/y:c1").unwrap().local_name(),
            "oci:/x/y:c1"
        );
    }
}
