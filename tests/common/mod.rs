//! Shared test harness: runs the zstore binary, builds OCI layouts and tars, snapshots trees,
//! mounts loop filesystems, and decides whether a missing peer skips (locally) or fails (CI).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use zstore::digest::Digest;

/// True when running in CI, where a missing peer is a failure, not a skip.
pub fn in_ci() -> bool {
    std::env::var("CI")
        .map(|v| v == "true" || v == "1")
        .unwrap_or(false)
}

/// Skips (returns false, printing why) or, in CI, fails when a requirement is missing.
pub fn require(ok: bool, what: &str) -> bool {
    if ok {
        return true;
    }
    if in_ci() {
        panic!("required for this test in CI: {what}");
    }
    eprintln!("SKIPPED: {what} is missing");
    false
}

pub fn is_root() -> bool {
    zstore::sys::is_root()
}

/// Whether a command exists on PATH (or as an absolute path).
pub fn have(cmd: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {cmd}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// A zstore store in a temp directory, driven through the binary.
pub struct Zs {
    pub root: PathBuf,
}

impl Zs {
    pub fn new(root: &Path) -> Zs {
        Zs {
            root: root.to_path_buf(),
        }
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_zstore"));
        c.arg("--root").arg(&self.root);
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().expect("running zstore")
    }

    /// Runs and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "zstore {args:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs with `--json` appended, asserts success, parses stdout.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.push("--json");
        let out = self.ok(&a);
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("zstore {a:?} printed invalid JSON ({e}): {out}"))
    }

    /// Runs and asserts failure with exit status 1 and an `error:` line; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(
            out.status.code(),
            Some(1),
            "zstore {args:?} should fail with 1; stderr: {stderr}"
        );
        assert!(stderr.starts_with("error: "), "no error line: {stderr}");
        stderr
    }
}

/// How a layer blob is compressed in a test layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
    /// zstd written as several frames (plus an empty and a skippable frame), which a decoder
    /// must walk through entirely.
    ZstdMultiFrame,
}

pub fn compress(tar: &[u8], c: Compression) -> (Vec<u8>, &'static str) {
    match c {
        Compression::None => (tar.to_vec(), "application/vnd.oci.image.layer.v1.tar"),
        Compression::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(tar).unwrap();
            (
                e.finish().unwrap(),
                "application/vnd.oci.image.layer.v1.tar+gzip",
            )
        }
        Compression::Zstd => (
            zstd::bulk::compress(tar, 3).unwrap(),
            "application/vnd.oci.image.layer.v1.tar+zstd",
        ),
        Compression::ZstdMultiFrame => {
            let mut out = Vec::new();
            let third = tar.len() / 3;
            for (i, part) in [&tar[..third], &tar[third..2 * third], &tar[2 * third..]]
                .iter()
                .enumerate()
            {
                out.extend(zstd::bulk::compress(part, 3).unwrap());
                if i == 0 {
                    out.extend(zstd::bulk::compress(&[], 3).unwrap());
                    out.extend_from_slice(&[0x50, 0x2a, 0x4d, 0x18, 4, 0, 0, 0, 1, 2, 3, 4]);
                }
            }
            (out, "application/vnd.oci.image.layer.v1.tar+zstd")
        }
    }
}

/// Writes OCI image layouts.
pub struct Layout {
    pub dir: PathBuf,
    index: Vec<serde_json::Value>,
}

/// What [`Layout::add_image`] wrote.
pub struct Added {
    pub manifest_digest: Digest,
    pub diff_ids: Vec<Digest>,
    pub layer_digests: Vec<Digest>,
}

impl Layout {
    pub fn new(dir: &Path) -> Layout {
        std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        Layout {
            dir: dir.to_path_buf(),
            index: Vec::new(),
        }
    }

    pub fn put_blob(&self, data: &[u8]) -> Digest {
        let d = Digest::of(data);
        std::fs::write(self.dir.join("blobs/sha256").join(d.hex()), data).unwrap();
        d
    }

    /// Adds an image made of `layers` (uncompressed tars) under `tag`.
    pub fn add_image(&mut self, tag: &str, layers: &[(Vec<u8>, Compression)]) -> Added {
        self.add_image_with(tag, layers, |_| {})
    }

    /// Like `add_image`, letting the caller alter the config JSON first.
    pub fn add_image_with(
        &mut self,
        tag: &str,
        layers: &[(Vec<u8>, Compression)],
        edit_config: impl FnOnce(&mut serde_json::Value),
    ) -> Added {
        let mut descs = Vec::new();
        let mut diff_ids = Vec::new();
        let mut layer_digests = Vec::new();
        for (tar, c) in layers {
            let (blob, mt) = compress(tar, *c);
            let d = self.put_blob(&blob);
            diff_ids.push(Digest::of(tar));
            layer_digests.push(d);
            descs.push(
                serde_json::json!({"mediaType": mt, "digest": d.to_string(), "size": blob.len()}),
            );
        }
        let mut config = serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "config": {"Labels": {"tag": tag}},
            "rootfs": {"type": "layers", "diff_ids": diff_ids.iter().map(|d| d.to_string()).collect::<Vec<_>>()}
        });
        edit_config(&mut config);
        let config = serde_json::to_vec(&config).unwrap();
        let cd = self.put_blob(&config);
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd.to_string(), "size": config.len()},
            "layers": descs,
        }))
        .unwrap();
        let md = self.put_blob(&manifest);
        self.index.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": md.to_string(), "size": manifest.len(),
            "annotations": {"org.opencontainers.image.ref.name": tag}
        }));
        std::fs::write(
            self.dir.join("index.json"),
            serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "manifests": self.index}))
                .unwrap(),
        )
        .unwrap();
        Added {
            manifest_digest: md,
            diff_ids,
            layer_digests,
        }
    }

    /// Gives an image already in the layout another tag.
    pub fn tag(&mut self, manifest: &Digest, tag: &str) {
        let mut entry = self
            .index
            .iter()
            .find(|e| e["digest"] == manifest.to_string())
            .expect("manifest in the index")
            .clone();
        entry["annotations"]["org.opencontainers.image.ref.name"] = serde_json::json!(tag);
        self.index.push(entry);
        std::fs::write(
            self.dir.join("index.json"),
            serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "manifests": self.index}))
                .unwrap(),
        )
        .unwrap();
    }

    /// `oci:DIR:TAG`
    pub fn source(&self, tag: &str) -> String {
        format!("oci:{}:{tag}", self.dir.display())
    }
}

/// Builds tars entry by entry with exact headers (PAX for xattrs and nanosecond mtimes).
pub struct TarBuilder {
    b: tar::Builder<Vec<u8>>,
}

impl Default for TarBuilder {
    fn default() -> Self {
        Self::new()
    }
}

#[derive(Clone, Debug)]
pub struct Meta {
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
    pub mtime_nanos: Option<u32>,
    pub xattrs: Vec<(String, Vec<u8>)>,
}

impl Default for Meta {
    fn default() -> Self {
        Meta {
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: 1_700_000_000,
            mtime_nanos: None,
            xattrs: Vec::new(),
        }
    }
}

impl TarBuilder {
    pub fn new() -> TarBuilder {
        let mut b = tar::Builder::new(Vec::new());
        b.mode(tar::HeaderMode::Complete);
        TarBuilder { b }
    }

    fn pax(&mut self, m: &Meta) {
        let mut recs: Vec<(String, Vec<u8>)> = Vec::new();
        if let Some(ns) = m.mtime_nanos {
            recs.push((
                "mtime".into(),
                format!("{}.{:09}", m.mtime, ns).into_bytes(),
            ));
        }
        for (k, v) in &m.xattrs {
            recs.push((format!("SCHILY.xattr.{k}"), v.clone()));
        }
        if !recs.is_empty() {
            self.b
                .append_pax_extensions(recs.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
                .unwrap();
        }
    }

    fn header(kind: tar::EntryType, m: &Meta, size: u64) -> tar::Header {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_mode(m.mode);
        h.set_uid(m.uid);
        h.set_gid(m.gid);
        h.set_mtime(m.mtime);
        h.set_size(size);
        h
    }

    pub fn file(&mut self, path: &str, content: &[u8], m: &Meta) -> &mut Self {
        self.pax(m);
        let mut h = Self::header(tar::EntryType::Regular, m, content.len() as u64);
        self.b.append_data(&mut h, path, content).unwrap();
        self
    }

    pub fn dir(&mut self, path: &str, m: &Meta) -> &mut Self {
        self.pax(m);
        let mut h = Self::header(tar::EntryType::Directory, m, 0);
        self.b.append_data(&mut h, path, std::io::empty()).unwrap();
        self
    }

    pub fn symlink(&mut self, path: &str, target: &str, m: &Meta) -> &mut Self {
        self.pax(m);
        let mut h = Self::header(tar::EntryType::Symlink, m, 0);
        self.b.append_link(&mut h, path, target).unwrap();
        self
    }

    pub fn hardlink(&mut self, path: &str, target: &str, m: &Meta) -> &mut Self {
        let mut h = Self::header(tar::EntryType::Link, m, 0);
        self.b.append_link(&mut h, path, target).unwrap();
        self
    }

    pub fn special(
        &mut self,
        path: &str,
        kind: tar::EntryType,
        major: u32,
        minor: u32,
        m: &Meta,
    ) -> &mut Self {
        self.pax(m);
        let mut h = Self::header(kind, m, 0);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        self.b.append_data(&mut h, path, std::io::empty()).unwrap();
        self
    }

    /// Appends a header with a raw name (no validation), for hostile layers.
    pub fn raw_entry(
        &mut self,
        name: &[u8],
        kind: tar::EntryType,
        link: &[u8],
        content: &[u8],
    ) -> &mut Self {
        let mut h = Self::header(kind, &Meta::default(), content.len() as u64);
        {
            let old = h.as_old_mut();
            old.name = [0; 100];
            old.name[..name.len()].copy_from_slice(name);
            old.linkname = [0; 100];
            old.linkname[..link.len()].copy_from_slice(link);
        }
        h.set_cksum();
        self.b.append(&h, content).unwrap();
        self
    }

    pub fn finish(self) -> Vec<u8> {
        self.b.into_inner().unwrap()
    }
}

/// What a test compares for one path of a tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Info {
    pub kind: &'static str,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub digest: Option<Digest>,
    pub link: Option<String>,
    pub mtime: (i64, i64),
    pub rdev: u64,
    pub xattrs: Vec<(String, Vec<u8>)>,
}

/// Walks a tree (not following symlinks), recording every path's metadata and content digest.
/// Returns the infos and the inode of each path.
pub fn snapshot(root: &Path) -> (BTreeMap<String, Info>, BTreeMap<String, u64>) {
    let mut out = BTreeMap::new();
    let mut inodes = BTreeMap::new();
    walk(root, "", &mut out, &mut inodes);
    (out, inodes)
}

fn walk(
    root: &Path,
    rel: &str,
    out: &mut BTreeMap<String, Info>,
    inodes: &mut BTreeMap<String, u64>,
) {
    let path = if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(rel)
    };
    let md = std::fs::symlink_metadata(&path).unwrap();
    let ft = md.file_type();
    let kind = if ft.is_dir() {
        "dir"
    } else if ft.is_symlink() {
        "symlink"
    } else if ft.is_file() {
        "reg"
    } else if ft.is_char_device() {
        "char"
    } else if ft.is_block_device() {
        "block"
    } else if ft.is_fifo() {
        "fifo"
    } else {
        "other"
    };
    let digest = ft.is_file().then(|| {
        let mut f = std::fs::File::open(&path).unwrap();
        let mut buf = Vec::new();
        f.read_to_end(&mut buf).unwrap();
        Digest::of(&buf)
    });
    let link = ft
        .is_symlink()
        .then(|| std::fs::read_link(&path).unwrap().display().to_string());
    let mut xattrs: Vec<(String, Vec<u8>)> = if ft.is_symlink() {
        Vec::new()
    } else {
        xattr::list(&path)
            .unwrap()
            .map(|k| {
                let v = xattr::get(&path, &k).unwrap().unwrap_or_default();
                (k.to_string_lossy().into_owned(), v)
            })
            .filter(|(k, _)| !k.starts_with("security.selinux"))
            .collect()
    };
    xattrs.sort();
    out.insert(
        rel.to_string(),
        Info {
            kind,
            mode: md.mode() & 0o7777,
            uid: md.uid(),
            gid: md.gid(),
            size: if ft.is_file() { md.len() } else { 0 },
            digest,
            link,
            mtime: (md.mtime(), md.mtime_nsec()),
            rdev: if ft.is_char_device() || ft.is_block_device() {
                md.rdev()
            } else {
                0
            },
            xattrs,
        },
    );
    inodes.insert(rel.to_string(), md.ino());
    if ft.is_dir() {
        let mut names: Vec<String> = std::fs::read_dir(&path)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        for n in names {
            let child = if rel.is_empty() {
                n
            } else {
                format!("{rel}/{n}")
            };
            walk(root, &child, out, inodes);
        }
    }
}

/// Groups of paths sharing an inode (only groups of two or more), as sorted lists.
pub fn link_groups(inodes: &BTreeMap<String, u64>) -> Vec<Vec<String>> {
    let mut by: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for (p, i) in inodes {
        by.entry(*i).or_default().push(p.clone());
    }
    let mut groups: Vec<Vec<String>> = by.into_values().filter(|g| g.len() > 1).collect();
    groups.sort();
    groups
}

/// Compares two snapshots entry by entry, with a readable report of every difference.
pub fn assert_same_tree(
    expected: &BTreeMap<String, Info>,
    actual: &BTreeMap<String, Info>,
    what: &str,
) {
    let mut diffs = Vec::new();
    for (p, e) in expected {
        match actual.get(p) {
            None => diffs.push(format!("missing: {p}")),
            Some(a) if a != e => diffs.push(format!(
                "differs: {p}\n   expected {e:?}\n   actual   {a:?}"
            )),
            _ => {}
        }
    }
    for p in actual.keys() {
        if !expected.contains_key(p) {
            diffs.push(format!("unexpected: {p}"));
        }
    }
    assert!(
        diffs.is_empty(),
        "{what}: {} differences:\n{}",
        diffs.len(),
        diffs.join("\n")
    );
}

/// A loop-mounted filesystem of a given type, unmounted and deleted on drop. Needs root and
/// the mkfs tool.
pub struct LoopFs {
    pub mount: PathBuf,
    image: PathBuf,
}

impl LoopFs {
    /// Creates and mounts a filesystem, or returns None (after `require`) when impossible.
    pub fn new(kind: &str, size_mib: u64, base: &Path) -> Option<LoopFs> {
        let mkfs = format!("mkfs.{kind}");
        if !require(is_root(), &format!("root (to loop-mount {kind})"))
            || !require(have(&mkfs), &mkfs)
        {
            return None;
        }
        let image = base.join(format!("{kind}.img"));
        let mount = base.join(format!("{kind}-mnt"));
        std::fs::create_dir_all(&mount).unwrap();
        let f = std::fs::File::create(&image).unwrap();
        f.set_len(size_mib << 20).unwrap();
        drop(f);
        let mut mk = Command::new(&mkfs);
        match kind {
            "xfs" => mk.args(["-q", "-f", "-m", "reflink=1"]),
            "btrfs" => mk.args(["-q", "-f"]),
            _ => mk.args(["-q", "-F"]),
        };
        let out = mk.arg(&image).output().unwrap();
        assert!(
            out.status.success(),
            "{mkfs} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = Command::new("mount")
            .args(["-o", "loop"])
            .arg(&image)
            .arg(&mount)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mount {kind} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Some(LoopFs { mount, image })
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mount).status();
        let _ = std::fs::remove_file(&self.image);
    }
}

/// Runs GNU tar, asserting success.
pub fn gnu_tar(args: &[&str]) {
    let out = Command::new("tar")
        .args(args)
        .output()
        .expect("running tar");
    assert!(
        out.status.success(),
        "tar {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Deterministic pseudo-random bytes (xorshift), so fixtures do not compress to nothing.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407)
        | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// The layer tar of near-identical image number `i`: `files` files of `size` bytes shared by
/// all images, plus `var/www/html/index.html` saying "Container #i" (like the peers' fixtures).
pub fn near_identical_tar(i: usize, files: usize, size: usize) -> Vec<u8> {
    let mut t = TarBuilder::new();
    let meta = Meta::default();
    t.dir("usr", &meta).dir("usr/lib", &meta);
    for f in 0..files {
        t.file(
            &format!("usr/lib/file{f:03}.bin"),
            &pseudo_random(size, f as u64 + 1),
            &meta,
        );
    }
    t.dir("var", &meta)
        .dir("var/www", &meta)
        .dir("var/www/html", &meta);
    t.file(
        "var/www/html/index.html",
        format!("<!DOCTYPE html>\n<html><body><h1>Container #{i}</h1></body></html>\n").as_bytes(),
        &meta,
    );
    t.finish()
}

/// Adds `count` near-identical single-layer images tagged c0… to a layout.
pub fn near_identical_images(
    layout: &mut Layout,
    count: usize,
    files: usize,
    size: usize,
    c: Compression,
) {
    for i in 0..count {
        layout.add_image(&format!("c{i}"), &[(near_identical_tar(i, files, size), c)]);
    }
}

/// Waits (bounded) until a hook point is reached by a zstore process.
pub fn wait_for_hook(dir: &Path, point: &str) {
    let f = dir.join(format!("{point}.reached"));
    for _ in 0..60_000 {
        if f.exists() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    panic!("hook point {point} never reached");
}

/// Releases a hook point.
pub fn release_hook(dir: &Path, point: &str) {
    std::fs::write(dir.join(format!("{point}.continue")), b"").unwrap();
}
