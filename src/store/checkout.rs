//! Checkout: materialises an image's flattened tree at a destination by hardlink, reflink or
//! copy, with exact metadata.
//!
//! The tree is built in a hidden sibling directory and renamed to the destination only when
//! complete, so a failed checkout leaves nothing behind. Every file is created relative to an
//! open directory descriptor with `O_NOFOLLOW`/`*at` calls: no path from a layer is ever
//! resolved through a symlink, so nothing can be written outside the destination.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::db::{CheckoutRecord, DbView};
use crate::layer::entry::{Entry, EntryKind};
use crate::layer::flatten::{Node, Tree, flatten};
use crate::progress::Progress;
use crate::store::metadata::ObjectMeta;
use crate::store::objects::variant_name;
use crate::store::{IoContext, LockMode, Store, StoreError};
use crate::sys;

/// How regular files are materialised.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckoutMode {
    /// Reflink where the filesystem can, else hardlink, else copy.
    Auto,
    /// Hardlink to an object variant with exactly the entry's metadata.
    Hardlink,
    /// Clone extents of the object (FICLONE); fails where the filesystem cannot.
    Reflink,
    /// Real, unshared copies of the data.
    Copy,
}

impl CheckoutMode {
    pub fn name(self) -> &'static str {
        match self {
            CheckoutMode::Auto => "auto",
            CheckoutMode::Hardlink => "hardlink",
            CheckoutMode::Reflink => "reflink",
            CheckoutMode::Copy => "copy",
        }
    }
}

/// How one regular file was materialised.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileOutcome {
    Hardlinked,
    Reflinked,
    Copied,
    /// Empty files are created, never linked.
    CreatedEmpty,
    /// A hardlink to another path of the same checkout (a link group).
    LinkedInTree,
}

/// What a checkout did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CheckoutReport {
    pub path: String,
    pub image: String,
    /// Regular files (each path counted once).
    pub files: u64,
    pub hardlinked: u64,
    pub reflinked: u64,
    pub copied: u64,
    /// Bytes of regular file content in the tree.
    pub bytes: u64,
    pub directories: u64,
    pub symlinks: u64,
    /// Device nodes and FIFOs created.
    pub special_files: u64,
    /// Things that could not be reproduced under this user (e.g. device nodes as non-root).
    pub warnings: Vec<String>,
}

/// Current strategy for regular files, which `auto` degrades on the first refusal.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Strategy {
    Hardlink,
    Reflink,
    Copy,
}

struct Ctx<'a> {
    store: &'a Store,
    requested: CheckoutMode,
    strategy: Strategy,
    dest: &'a Path,
    /// Path (relative to the checkout root) of the first materialised member of each link group.
    groups: HashMap<u32, Vec<u8>>,
    report: CheckoutReport,
    progress: &'a dyn Progress,
}

/// Checks out the image `query` at `dest`, which must not exist or be an empty directory.
pub fn checkout(
    store: &Store,
    query: &str,
    dest: &Path,
    mode: CheckoutMode,
    progress: &dyn Progress,
) -> Result<CheckoutReport, StoreError> {
    let _lock = store.lock(LockMode::Shared, progress)?;
    let (image, tocs) = {
        let db = store.db_reader()?;
        let r = db.read()?;
        let image = store.find_image(&r, query)?;
        let mut tocs = Vec::with_capacity(image.layers.len());
        for l in &image.layers {
            tocs.push(r.toc(&l.diff_id)?.ok_or_else(|| {
                StoreError::Inconsistent(format!(
                    "layer {} of image {} has no table of contents",
                    l.diff_id, image.manifest_digest
                ))
            })?);
        }
        (image, tocs)
    };
    let tree = flatten(tocs.iter().map(|t| t.as_slice()))?;

    let dest = absolute(dest)?;
    let existing_empty_dir = match std::fs::symlink_metadata(&dest) {
        Ok(md) if md.is_dir() => {
            if std::fs::read_dir(&dest)
                .ctx(|| format!("reading {}", dest.display()))?
                .next()
                .is_some()
            {
                return Err(StoreError::DestinationNotEmpty(dest));
            }
            true
        }
        Ok(_) => return Err(StoreError::DestinationNotEmpty(dest)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => false,
        Err(e) => return Err(e).ctx(|| format!("checking {}", dest.display())),
    };
    let parent = dest
        .parent()
        .ok_or_else(|| StoreError::DestinationNotEmpty(dest.clone()))?;
    let name = dest
        .file_name()
        .ok_or_else(|| StoreError::DestinationNotEmpty(dest.clone()))?;
    let prefix = format!(".{}.zstore-checkout-", name.to_string_lossy());
    remove_stale_staging(parent, &prefix);
    let staging = parent.join(format!("{prefix}{}", std::process::id()));
    std::fs::create_dir(&staging).ctx(|| format!("creating {}", staging.display()))?;

    let mut ctx = Ctx {
        store,
        requested: mode,
        strategy: match mode {
            CheckoutMode::Auto | CheckoutMode::Reflink => Strategy::Reflink,
            CheckoutMode::Hardlink => Strategy::Hardlink,
            CheckoutMode::Copy => Strategy::Copy,
        },
        dest: &dest,
        groups: HashMap::new(),
        report: CheckoutReport {
            path: dest.display().to_string(),
            image: image.manifest_digest.to_string(),
            ..Default::default()
        },
        progress,
    };
    progress.phase_started("checkout", tree.len() as u64);
    let result = materialize_root(&mut ctx, &staging, &tree).and_then(|()| {
        crate::testhook::pause("checkout-before-rename");
        if existing_empty_dir {
            std::fs::remove_dir(&dest)
                .ctx(|| format!("replacing empty directory {}", dest.display()))?;
        }
        std::fs::rename(&staging, &dest)
            .ctx(|| format!("moving the checkout into place at {}", dest.display()))
    });
    progress.phase_finished();
    if let Err(e) = result {
        let _ = remove_tree(&staging);
        return Err(e);
    }
    let record = CheckoutRecord {
        path: dest.display().to_string(),
        manifest_digest: image.manifest_digest,
        mode: mode.name().to_string(),
        created_at: unix_now(),
    };
    let db = store.db()?;
    let w = db.write()?;
    w.put_checkout(&record)?;
    w.commit()?;
    Ok(ctx.report)
}

/// Removes the half-built trees of earlier checkouts to the same destination whose process is
/// gone (killed before it could clean up).
fn remove_stale_staging(parent: &Path, prefix: &str) {
    let Ok(rd) = std::fs::read_dir(parent) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(prefix)
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !crate::sys::process_exists(pid) {
            let _ = remove_tree(&e.path());
        }
    }
}

/// Removes a directory tree, first making directories writable (checkouts may contain
/// read-only directories, which non-root callers could not empty otherwise).
fn remove_tree(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fn make_writable(p: &Path) {
        if let Ok(md) = std::fs::symlink_metadata(p)
            && md.is_dir()
        {
            let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o700));
            if let Ok(rd) = std::fs::read_dir(p) {
                for e in rd.flatten() {
                    make_writable(&e.path());
                }
            }
        }
    }
    make_writable(path);
    std::fs::remove_dir_all(path)
}

fn absolute(p: &Path) -> Result<PathBuf, StoreError> {
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .ctx(|| "reading the current directory".to_string())?
            .join(p)
    };
    // Resolve the parent (which must exist) but not the last component.
    let name = abs.file_name().map(|n| n.to_os_string());
    let parent = abs
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("/"));
    let parent = parent
        .canonicalize()
        .ctx(|| format!("resolving {}", parent.display()))?;
    Ok(match name {
        Some(n) => parent.join(n),
        None => parent,
    })
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn materialize_root(ctx: &mut Ctx<'_>, staging: &Path, tree: &Tree) -> Result<(), StoreError> {
    let root = sys::open_dir(staging).ctx(|| format!("opening {}", staging.display()))?;
    materialize_children(ctx, root.as_fd(), root.as_fd(), &tree.root, &mut Vec::new())?;
    // Without a "./" entry in any layer the destination keeps the mode it was created with.
    if tree.root.implicit {
        return Ok(());
    }
    apply_dir_meta(ctx, root, &tree.root.entry)
}

fn materialize_children(
    ctx: &mut Ctx<'_>,
    root: BorrowedFd<'_>,
    dir: BorrowedFd<'_>,
    node: &Node,
    rel: &mut Vec<u8>,
) -> Result<(), StoreError> {
    for (name, child) in &node.children {
        let base_len = rel.len();
        if !rel.is_empty() {
            rel.push(b'/');
        }
        rel.extend_from_slice(name);
        materialize_node(ctx, root, dir, name, child, rel)?;
        rel.truncate(base_len);
        ctx.progress.phase_advanced(1);
    }
    Ok(())
}

fn shown(ctx: &Ctx<'_>, rel: &[u8]) -> String {
    format!("{}/{}", ctx.dest.display(), String::from_utf8_lossy(rel))
}

fn materialize_node(
    ctx: &mut Ctx<'_>,
    root: BorrowedFd<'_>,
    dir: BorrowedFd<'_>,
    name: &[u8],
    node: &Node,
    rel: &mut Vec<u8>,
) -> Result<(), StoreError> {
    let e = &node.entry;
    if let Some(group) = node.link_group {
        if let Some(first) = ctx.groups.get(&group) {
            sys::link_at(root, first, dir, name)
                .ctx(|| format!("hardlinking {}", shown(ctx, rel)))?;
            if e.kind == EntryKind::Regular {
                ctx.report.files += 1;
                ctx.report.bytes += e.size;
            }
            return Ok(());
        }
        ctx.groups.insert(group, rel.clone());
    }
    match e.kind {
        EntryKind::Directory => {
            sys::mkdir_at(dir, name).ctx(|| format!("creating directory {}", shown(ctx, rel)))?;
            let fd = sys::open_dir_at(dir, name)
                .ctx(|| format!("opening directory {}", shown(ctx, rel)))?;
            materialize_children(ctx, root, fd.as_fd(), node, rel)?;
            apply_dir_meta(ctx, fd, e).map_err(|err| add_path(err, &shown(ctx, rel)))?;
            ctx.report.directories += 1;
        }
        EntryKind::Regular => {
            let outcome =
                regular_file(ctx, dir, name, e).map_err(|err| add_path(err, &shown(ctx, rel)))?;
            ctx.report.files += 1;
            ctx.report.bytes += e.size;
            match outcome {
                FileOutcome::Hardlinked => ctx.report.hardlinked += 1,
                FileOutcome::Reflinked => ctx.report.reflinked += 1,
                FileOutcome::Copied => ctx.report.copied += 1,
                FileOutcome::CreatedEmpty | FileOutcome::LinkedInTree => {}
            }
        }
        EntryKind::Symlink => {
            sys::symlink_at(&e.link_target, dir, name)
                .ctx(|| format!("creating symlink {}", shown(ctx, rel)))?;
            apply_link_meta(ctx, dir, name, e).map_err(|err| add_path(err, &shown(ctx, rel)))?;
            ctx.report.symlinks += 1;
        }
        EntryKind::CharDevice | EntryKind::BlockDevice | EntryKind::Fifo => {
            let kind = match e.kind {
                EntryKind::CharDevice => sys::NodeKind::Char,
                EntryKind::BlockDevice => sys::NodeKind::Block,
                _ => sys::NodeKind::Fifo,
            };
            if kind != sys::NodeKind::Fifo && !ctx.store.policy().device_nodes {
                ctx.report.warnings.push(format!(
                    "skipped device node {} (needs root)",
                    shown(ctx, rel)
                ));
                ctx.groups.retain(|_, p| p != rel);
                return Ok(());
            }
            sys::mknod_at(dir, name, kind, e.dev_major, e.dev_minor)
                .ctx(|| format!("creating special file {}", shown(ctx, rel)))?;
            sys::fchmod_at(dir, name, e.mode)
                .ctx(|| format!("setting mode of {}", shown(ctx, rel)))?;
            apply_link_meta(ctx, dir, name, e).map_err(|err| add_path(err, &shown(ctx, rel)))?;
            ctx.report.special_files += 1;
        }
        EntryKind::Hardlink => {
            return Err(StoreError::Inconsistent(format!(
                "unresolved hardlink {}",
                shown(ctx, rel)
            )));
        }
    }
    Ok(())
}

fn add_path(err: StoreError, path: &str) -> StoreError {
    match err {
        StoreError::Io { context, source } if context.is_empty() => StoreError::Io {
            context: path.to_string(),
            source,
        },
        other => other,
    }
}

fn apply_dir_meta(ctx: &Ctx<'_>, fd: OwnedFd, e: &Entry) -> Result<(), StoreError> {
    let meta = ObjectMeta::for_entry(e, ctx.store.policy());
    meta.apply(&File::from(fd), ctx.store.policy())
        .ctx(String::new)
}

/// Metadata of symlinks and special files, by name (they cannot be opened safely).
fn apply_link_meta(
    ctx: &mut Ctx<'_>,
    dir: BorrowedFd<'_>,
    name: &[u8],
    e: &Entry,
) -> Result<(), StoreError> {
    let policy = ctx.store.policy();
    if policy.preserve_ownership {
        sys::lchown_at(dir, name, e.uid, e.gid).ctx(String::new)?;
    }
    for (k, v) in e.xattrs.iter().filter(|(k, _)| policy.applies_xattr(k)) {
        if let Err(err) = sys::lsetxattr_at(dir, name, k, v) {
            // Linux refuses user.* xattrs on symlinks; that is a limit, not a failure.
            if e.kind == EntryKind::Symlink
                && matches!(
                    err.raw_os_error(),
                    Some(libc::EPERM) | Some(libc::EOPNOTSUPP)
                )
            {
                ctx.report.warnings.push(format!(
                    "xattr {} not set on symlink {}: {err}",
                    String::from_utf8_lossy(k),
                    String::from_utf8_lossy(&e.path)
                ));
                continue;
            }
            return Err(err).ctx(|| format!("setting xattr {}", String::from_utf8_lossy(k)));
        }
    }
    sys::lutimens_at(dir, name, e.mtime.secs, e.mtime.nanos).ctx(String::new)
}

fn regular_file(
    ctx: &mut Ctx<'_>,
    dir: BorrowedFd<'_>,
    name: &[u8],
    e: &Entry,
) -> Result<FileOutcome, StoreError> {
    let policy = ctx.store.policy();
    let meta = ObjectMeta::for_entry(e, policy);
    let digest = match (&e.digest, e.size) {
        (_, 0) | (None, _) => {
            let f = sys::create_file_at(dir, name).ctx(String::new)?;
            meta.apply(&f, policy).ctx(String::new)?;
            return Ok(FileOutcome::CreatedEmpty);
        }
        (Some(d), _) => *d,
    };
    let variant = variant_name(&digest, meta.key());
    let objects = ctx.store.objects_fd();
    if ctx.strategy == Strategy::Hardlink {
        match sys::link_at(objects, variant.as_bytes(), dir, name) {
            Ok(()) => return Ok(FileOutcome::Hardlinked),
            Err(err) if err.raw_os_error() == Some(libc::EMLINK) => {
                // Too many links to this variant: this file gets its own copy.
                return data_copy(ctx, dir, name, &meta, &variant, true);
            }
            Err(err)
                if err.raw_os_error() == Some(libc::EXDEV)
                    && ctx.requested == CheckoutMode::Auto =>
            {
                ctx.strategy = Strategy::Copy;
            }
            Err(err) if err.raw_os_error() == Some(libc::EXDEV) => {
                return Err(StoreError::HardlinkUnsupported {
                    dest: ctx.dest.to_path_buf(),
                    store: ctx.store.root().to_path_buf(),
                    source: err,
                });
            }
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::Inconsistent(format!(
                    "object {variant} is missing"
                )));
            }
            Err(err) => return Err(err).ctx(|| format!("hardlinking object {variant}")),
        }
    }
    data_copy(ctx, dir, name, &meta, &variant, false)
}

/// Materialises a file from an object by reflink or by copying bytes, as the strategy says.
fn data_copy(
    ctx: &mut Ctx<'_>,
    dir: BorrowedFd<'_>,
    name: &[u8],
    meta: &ObjectMeta,
    variant: &str,
    emlink_fallback: bool,
) -> Result<FileOutcome, StoreError> {
    let policy = ctx.store.policy();
    let src = sys::open_file_at(ctx.store.objects_fd(), variant.as_bytes()).map_err(|err| {
        if err.kind() == io::ErrorKind::NotFound {
            StoreError::Inconsistent(format!("object {variant} is missing"))
        } else {
            StoreError::Io {
                context: format!("opening object {variant}"),
                source: err,
            }
        }
    })?;
    let mut dest = sys::create_file_at(dir, name).ctx(String::new)?;
    let try_reflink = ctx.strategy == Strategy::Reflink
        || (emlink_fallback && ctx.requested != CheckoutMode::Copy);
    let mut outcome = FileOutcome::Copied;
    if try_reflink {
        match sys::ficlone(&dest, &src) {
            Ok(()) => outcome = FileOutcome::Reflinked,
            Err(err) if sys::is_reflink_unsupported(&err) => {
                if ctx.requested == CheckoutMode::Reflink {
                    return Err(StoreError::ReflinkUnsupported {
                        dest: ctx.dest.to_path_buf(),
                        store: ctx.store.root().to_path_buf(),
                        source: err,
                    });
                }
                if ctx.requested == CheckoutMode::Auto && !emlink_fallback {
                    // No reflinks here: try hardlinks for the rest (and this file).
                    ctx.strategy = Strategy::Hardlink;
                    drop(dest);
                    sys::unlink_at(dir, name).ctx(String::new)?;
                    return regular_file_after_fallback(ctx, dir, name, meta, variant);
                }
            }
            Err(err) => return Err(err).ctx(|| "cloning object data".to_string()),
        }
    }
    if outcome == FileOutcome::Copied {
        copy_bytes(&src, &mut dest).ctx(|| format!("copying object {variant}"))?;
    }
    meta.apply(&dest, policy).ctx(String::new)?;
    Ok(outcome)
}

/// `auto` found no reflink support: hardlink this file, or copy if that fails too.
fn regular_file_after_fallback(
    ctx: &mut Ctx<'_>,
    dir: BorrowedFd<'_>,
    name: &[u8],
    meta: &ObjectMeta,
    variant: &str,
) -> Result<FileOutcome, StoreError> {
    match sys::link_at(ctx.store.objects_fd(), variant.as_bytes(), dir, name) {
        Ok(()) => Ok(FileOutcome::Hardlinked),
        Err(err) if err.raw_os_error() == Some(libc::EMLINK) => {
            data_copy(ctx, dir, name, meta, variant, true)
        }
        Err(err) if err.raw_os_error() == Some(libc::EXDEV) => {
            ctx.strategy = Strategy::Copy;
            data_copy(ctx, dir, name, meta, variant, false)
        }
        Err(err) => Err(err).ctx(|| format!("hardlinking object {variant}")),
    }
}

/// Copies with read and write, never `copy_file_range`, which shares extents on xfs and btrfs:
/// a copy checkout must really own its data.
fn copy_bytes(mut src: &File, dest: &mut File) -> io::Result<u64> {
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        dest.write_all(&buf[..n])?;
        total += n as u64;
    }
    Ok(total)
}
