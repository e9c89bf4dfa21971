//! Object names: `ab/<hex>` for the canonical object of a content digest, `ab/<hex>.<key>` for
//! its variant with the metadata whose key is `<key>`.

use crate::digest::Digest;
use crate::store::metadata::MetaKey;

/// Path of the canonical object, relative to `objects/`.
pub fn object_name(d: &Digest) -> String {
    let hex = d.hex();
    format!("{}/{}", &hex[..2], hex)
}

/// Path of a variant, relative to `objects/`.
pub fn variant_name(d: &Digest, key: MetaKey) -> String {
    let hex = d.hex();
    format!("{}/{}.{}", &hex[..2], hex, key)
}

/// A file name found in an `objects/ab/` directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ObjectFile {
    Canonical(Digest),
    Variant(Digest, MetaKey),
}

impl ObjectFile {
    pub fn digest(&self) -> &Digest {
        match self {
            ObjectFile::Canonical(d) | ObjectFile::Variant(d, _) => d,
        }
    }
}

/// Parses a file name inside `objects/<dir>/`; `None` for anything that is not an object name
/// (or sits in the wrong fan-out directory).
pub fn parse_object_file(dir: &str, name: &str) -> Option<ObjectFile> {
    let (hex, key) = match name.split_once('.') {
        Some((h, k)) => (h, Some(k)),
        None => (name, None),
    };
    let d = Digest::from_hex(hex).ok()?;
    if &hex[..2] != dir {
        return None;
    }
    match key {
        None => Some(ObjectFile::Canonical(d)),
        Some(k) => Some(ObjectFile::Variant(d, MetaKey::from_hex(k)?)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let d = Digest::of(b"x");
        let k = MetaKey([7; 16]);
        let v = variant_name(&d, k);
        let (dir, name) = v.split_once('/').unwrap();
        assert_eq!(
            parse_object_file(dir, name),
            Some(ObjectFile::Variant(d, k))
        );
        let c = object_name(&d);
        let (dir, name) = c.split_once('/').unwrap();
        assert_eq!(parse_object_file(dir, name), Some(ObjectFile::Canonical(d)));
        assert_eq!(parse_object_file("00", name), None);
        assert_eq!(parse_object_file(dir, "junk"), None);
        assert_eq!(parse_object_file(dir, &format!("{name}.short")), None);
    }
}

/// One file found under `objects/`.
#[derive(Clone, Debug)]
pub struct Listed {
    /// Path relative to `objects/`.
    pub name: String,
    /// `None` for a file that is not an object name.
    pub object: Option<ObjectFile>,
}

/// Lists every file under `objects/??/`.
pub fn list(objects_dir: &std::path::Path) -> std::io::Result<Vec<Listed>> {
    let mut out = Vec::new();
    for i in 0..=255u8 {
        let dir = format!("{i:02x}");
        let rd = match std::fs::read_dir(objects_dir.join(&dir)) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for ent in rd {
            let ent = ent?;
            let name = ent.file_name().to_string_lossy().into_owned();
            out.push(Listed {
                object: parse_object_file(&dir, &name),
                name: format!("{dir}/{name}"),
            });
        }
    }
    Ok(out)
}

/// Where a referenced variant is used: (layer DiffID, path in the layer).
pub type Users = Vec<(Digest, String)>;

/// Every object variant the given layers refer to, with (at most a few of) its users. Layers
/// without a stored table of contents are skipped (fsck reports them).
pub fn referenced_variants<'a>(
    view: &impl crate::db::DbView,
    layers: impl IntoIterator<Item = &'a Digest>,
    policy: crate::store::Policy,
) -> Result<std::collections::HashMap<(Digest, MetaKey), Users>, crate::db::DbError> {
    let mut out: std::collections::HashMap<(Digest, MetaKey), Users> =
        std::collections::HashMap::new();
    for diff_id in layers {
        let Some(toc) = view.toc(diff_id)? else {
            continue;
        };
        for e in toc.iter().filter(|e| e.has_object()) {
            let Some(d) = e.digest else { continue };
            let key = crate::store::ObjectMeta::for_entry(e, policy).key();
            let users = out.entry((d, key)).or_default();
            if users.len() < 3 {
                users.push((*diff_id, e.display_path()));
            }
        }
    }
    Ok(out)
}

/// The canonical name for a variant name (`ab/<hex>.<key>` → `ab/<hex>`).
pub fn canonical_of(variant: &str) -> String {
    variant
        .split_once('.')
        .map(|(c, _)| c.to_string())
        .unwrap_or_else(|| variant.to_string())
}
