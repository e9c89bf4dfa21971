//! Shared test harness: runs the zstore binary, builds OCI layouts and tars, snapshots trees,
//! mounts loop filesystems, and decides whether a missing peer skips (locally) or fails (CI).

#![allow(dead_code)]

pub mod registry;

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub use zstore_fixtures::*;

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
    zstore_fixtures::tools::have(cmd)
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

    /// Runs and returns (exit code, stdout, stderr, peak resident memory of the zstore
    /// process in bytes, as it reports it through a test hook).
    pub fn run_measured(&self, args: &[&str]) -> (Option<i32>, String, String, u64) {
        let dir = tempfile::tempdir().unwrap();
        let peak = dir.path().join("peak");
        let out = self
            .cmd()
            .args(args)
            .env("ZSTORE_TEST_PEAK_RSS_FILE", &peak)
            .output()
            .expect("running zstore");
        let rss = std::fs::read_to_string(&peak)
            .expect("zstore reports its peak memory")
            .parse()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
            rss,
        )
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

pub use zstore_fixtures::fs::LoopFs;

/// A loop-mounted filesystem of a given type, or None (after `require`) without root or mkfs.
pub fn loop_fs(kind: &str, size_mib: u64, base: &Path) -> Option<LoopFs> {
    let mkfs = format!("mkfs.{kind}");
    if !require(is_root(), &format!("root (to loop-mount {kind})")) || !require(have(&mkfs), &mkfs)
    {
        return None;
    }
    Some(
        LoopFs::create(kind, size_mib, base)
            .unwrap_or_else(|e| panic!("creating a {kind} loop filesystem: {e}")),
    )
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

/// Runs skopeo with a private, empty blob-info cache (as root, in a private mount namespace),
/// so that it cannot reuse a blob it converted for another test or run.
pub fn skopeo(tmp: &Path, args: &[&str]) -> String {
    zstore_fixtures::tools::skopeo(&tmp.join("blob-info-cache"), args)
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Extracts a tar as root would keep it (owners, modes, xattrs), with GNU tar.
pub fn gnu_extract(tar: &Path, dest: &Path) {
    gnu_tar(&[
        "--xattrs",
        "--xattrs-include=*",
        "--same-owner",
        "--same-permissions",
        "--numeric-owner",
        "-xf",
        tar.to_str().unwrap(),
        "-C",
        dest.to_str().unwrap(),
    ]);
}

/// The layers of a tagged image in an OCI layout: (blob, descriptor) each.
pub fn layout_layers(layout: &Path, tag: &str) -> Vec<(Vec<u8>, serde_json::Value)> {
    let read = |p: &Path| std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let blob = |d: &serde_json::Value| {
        let hex = d
            .as_str()
            .unwrap()
            .strip_prefix("sha256:")
            .unwrap()
            .to_string();
        read(&layout.join("blobs/sha256").join(hex))
    };
    let index: serde_json::Value =
        serde_json::from_slice(&read(&layout.join("index.json"))).unwrap();
    let entry = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap_or_else(|| panic!("no image tagged {tag} in {}", layout.display()))
        .clone();
    let manifest: serde_json::Value = serde_json::from_slice(&blob(&entry["digest"])).unwrap();
    manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (blob(&l["digest"]), l.clone()))
        .collect()
}
