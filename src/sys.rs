//! Every system call zstore makes beyond plain `std::fs`, in one place.
//!
//! Checkout creates everything relative to directory file descriptors with `*at` calls and
//! `O_NOFOLLOW`, so that no path a layer supplies is ever resolved through a symlink.

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{Mode, SFlag};
use nix::sys::time::TimeSpec;

fn errno_to_io(e: Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

fn cstr(name: &[u8]) -> io::Result<CString> {
    CString::new(name).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "name contains NUL"))
}

/// True when this process runs with root privileges (ownership and device nodes can be set).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Opens a directory without following a symlink at its last component.
pub fn open_dir_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<OwnedFd> {
    let name = cstr(name)?;
    nix::fcntl::openat(
        dir,
        name.as_c_str(),
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(errno_to_io)
}

/// Opens a directory by path (following symlinks: used for the store and DEST's parent).
pub fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(path)?;
    Ok(OwnedFd::from(file))
}

/// Creates a directory (mode 0700 until its real metadata is applied after its children).
pub fn mkdir_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
    let name = cstr(name)?;
    nix::sys::stat::mkdirat(dir, name.as_c_str(), Mode::from_bits_truncate(0o700))
        .map_err(errno_to_io)
}

/// Creates a new regular file for writing; fails if anything exists under that name.
pub fn create_file_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<File> {
    let name = cstr(name)?;
    let fd = nix::fcntl::openat(
        dir,
        name.as_c_str(),
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o600),
    )
    .map_err(errno_to_io)?;
    Ok(File::from(fd))
}

/// Opens an existing regular file for reading, refusing symlinks.
pub fn open_file_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<File> {
    let name = cstr(name)?;
    let fd = nix::fcntl::openat(
        dir,
        name.as_c_str(),
        OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(errno_to_io)?;
    Ok(File::from(fd))
}

/// `linkat(2)` without following symlinks.
pub fn link_at(
    old_dir: BorrowedFd<'_>,
    old_name: &[u8],
    new_dir: BorrowedFd<'_>,
    new_name: &[u8],
) -> io::Result<()> {
    let old = cstr(old_name)?;
    let new = cstr(new_name)?;
    nix::unistd::linkat(
        old_dir,
        old.as_c_str(),
        new_dir,
        new.as_c_str(),
        AtFlags::empty(),
    )
    .map_err(errno_to_io)
}

/// `symlinkat(2)`.
pub fn symlink_at(target: &[u8], dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
    let target = cstr(target)?;
    let name = cstr(name)?;
    nix::unistd::symlinkat(target.as_c_str(), dir, name.as_c_str()).map_err(errno_to_io)
}

/// The kind of special file [`mknod_at`] creates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeKind {
    Char,
    Block,
    Fifo,
}

/// `mknodat(2)` for device nodes and FIFOs.
pub fn mknod_at(
    dir: BorrowedFd<'_>,
    name: &[u8],
    kind: NodeKind,
    major: u32,
    minor: u32,
) -> io::Result<()> {
    let name = cstr(name)?;
    let flag = match kind {
        NodeKind::Char => SFlag::S_IFCHR,
        NodeKind::Block => SFlag::S_IFBLK,
        NodeKind::Fifo => SFlag::S_IFIFO,
    };
    let dev = libc::makedev(major, minor);
    nix::sys::stat::mknodat(
        dir,
        name.as_c_str(),
        flag,
        Mode::from_bits_truncate(0o600),
        dev,
    )
    .map_err(errno_to_io)
}

/// `unlinkat(2)` of a file (not a directory).
pub fn unlink_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
    let name = cstr(name)?;
    nix::unistd::unlinkat(
        dir,
        name.as_c_str(),
        nix::unistd::UnlinkatFlags::NoRemoveDir,
    )
    .map_err(errno_to_io)
}

/// Changes ownership of `name` in `dir` without following a symlink.
pub fn lchown_at(dir: BorrowedFd<'_>, name: &[u8], uid: u32, gid: u32) -> io::Result<()> {
    let name = cstr(name)?;
    nix::unistd::fchownat(
        dir,
        name.as_c_str(),
        Some(nix::unistd::Uid::from_raw(uid)),
        Some(nix::unistd::Gid::from_raw(gid)),
        AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(errno_to_io)
}

/// `fchown(2)`.
pub fn fchown(fd: BorrowedFd<'_>, uid: u32, gid: u32) -> io::Result<()> {
    nix::unistd::fchown(
        fd,
        Some(nix::unistd::Uid::from_raw(uid)),
        Some(nix::unistd::Gid::from_raw(gid)),
    )
    .map_err(errno_to_io)
}

/// `fchmod(2)` with the full 12 permission bits (setuid, setgid, sticky included).
pub fn fchmod(fd: BorrowedFd<'_>, mode: u32) -> io::Result<()> {
    nix::sys::stat::fchmod(fd, Mode::from_bits_truncate(mode & 0o7777)).map_err(errno_to_io)
}

/// Sets atime and mtime of an open file to the same instant.
pub fn futimens(fd: BorrowedFd<'_>, secs: i64, nanos: u32) -> io::Result<()> {
    let ts = TimeSpec::new(secs, nanos as _);
    nix::sys::stat::futimens(fd, &ts, &ts).map_err(errno_to_io)
}

/// Sets atime and mtime of `name` in `dir` without following a symlink.
pub fn lutimens_at(dir: BorrowedFd<'_>, name: &[u8], secs: i64, nanos: u32) -> io::Result<()> {
    let name = cstr(name)?;
    let ts = TimeSpec::new(secs, nanos as _);
    nix::sys::stat::utimensat(
        dir,
        name.as_c_str(),
        &ts,
        &ts,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .map_err(errno_to_io)
}

/// Sets an extended attribute on an open file.
pub fn fsetxattr(fd: BorrowedFd<'_>, key: &[u8], value: &[u8]) -> io::Result<()> {
    let key = cstr(key)?;
    // SAFETY: key is NUL-terminated, value points at value.len() readable bytes.
    let r = unsafe {
        libc::fsetxattr(
            fd.as_raw_fd(),
            key.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Sets an extended attribute on a symlink itself, through `/proc/self/fd` so that the path is
/// resolved relative to an already-open directory.
pub fn lsetxattr_at(dir: BorrowedFd<'_>, name: &[u8], key: &[u8], value: &[u8]) -> io::Result<()> {
    let mut path = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
    path.extend_from_slice(name);
    xattr::set(OsStr::from_bytes(&path), OsStr::from_bytes(key), value)
}

/// All extended attributes of an open file, sorted by name.
pub fn fget_xattrs(file: &File) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    use xattr::FileExt;
    let mut out = Vec::new();
    for key in file.list_xattr()? {
        if let Some(value) = file.get_xattr(&key)? {
            out.push((key.as_bytes().to_vec(), value));
        }
    }
    out.sort();
    Ok(out)
}

/// Clones all of `src`'s data into `dest` (FICLONE), sharing extents copy-on-write. Fails with
/// `EOPNOTSUPP`/`EXDEV`/`EINVAL` where the filesystem or the pair of files cannot.
pub fn ficlone(dest: &File, src: &File) -> io::Result<()> {
    // FICLONE = _IOW(0x94, 9, int)
    const FICLONE: libc::c_ulong = 0x4004_9409;
    // SAFETY: both descriptors are open for the duration of the call; FICLONE takes an fd.
    let r = unsafe { libc::ioctl(dest.as_raw_fd(), FICLONE as _, src.as_raw_fd()) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// True for the errors by which FICLONE says "this filesystem (or pair of files) cannot reflink".
pub fn is_reflink_unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EOPNOTSUPP)
            | Some(libc::EXDEV)
            | Some(libc::EINVAL)
            | Some(libc::ENOTTY)
            | Some(libc::ENOSYS)
    )
}

/// Extent sharing of a file, from FIEMAP.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExtentUsage {
    /// Bytes covered by all extents (holes excluded).
    pub total: u64,
    /// Bytes in extents the filesystem marks shared (reflinked or snapshotted).
    pub shared: u64,
}

/// Reads the extent map of a file (FS_IOC_FIEMAP) and sums shared and total extent bytes.
pub fn fiemap_usage(file: &File) -> io::Result<ExtentUsage> {
    const FS_IOC_FIEMAP: libc::c_ulong = 0xC020_660B;
    const FIEMAP_FLAG_SYNC: u32 = 0x1;
    const FIEMAP_EXTENT_LAST: u32 = 0x1;
    const FIEMAP_EXTENT_SHARED: u32 = 0x2000;
    const BATCH: usize = 64;

    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Extent {
        logical: u64,
        physical: u64,
        length: u64,
        reserved64: [u64; 2],
        flags: u32,
        reserved: [u32; 3],
    }
    #[repr(C)]
    struct Request {
        start: u64,
        length: u64,
        flags: u32,
        mapped_extents: u32,
        extent_count: u32,
        reserved: u32,
        extents: [Extent; BATCH],
    }

    let mut usage = ExtentUsage::default();
    let mut start = 0u64;
    loop {
        let mut req = Request {
            start,
            length: u64::MAX - start,
            flags: FIEMAP_FLAG_SYNC,
            mapped_extents: 0,
            extent_count: BATCH as u32,
            reserved: 0,
            extents: [Extent::default(); BATCH],
        };
        // SAFETY: req is a properly laid out fiemap request with room for BATCH extents.
        let r = unsafe {
            libc::ioctl(
                file.as_raw_fd(),
                FS_IOC_FIEMAP as _,
                &mut req as *mut Request,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = req.mapped_extents as usize;
        if n == 0 {
            return Ok(usage);
        }
        let mut last = false;
        for ext in &req.extents[..n.min(BATCH)] {
            usage.total += ext.length;
            if ext.flags & FIEMAP_EXTENT_SHARED != 0 {
                usage.shared += ext.length;
            }
            start = ext.logical + ext.length;
            last |= ext.flags & FIEMAP_EXTENT_LAST != 0;
        }
        if last {
            return Ok(usage);
        }
    }
}

/// Flushes every dirty page and inode of the filesystem holding `fd` (`syncfs(2)`): one call
/// makes a whole batch of new objects durable before their metadata commits.
pub fn syncfs(fd: impl AsFd) -> io::Result<()> {
    nix::unistd::syncfs(fd).map_err(errno_to_io)
}

/// `fchmodat(2)` for a special file just created in `dir` (special files cannot be opened
/// without side effects, so their mode is set by name).
pub fn fchmod_at(dir: BorrowedFd<'_>, name: &[u8], mode: u32) -> io::Result<()> {
    let name = cstr(name)?;
    nix::sys::stat::fchmodat(
        dir,
        name.as_c_str(),
        Mode::from_bits_truncate(mode & 0o7777),
        nix::sys::stat::FchmodatFlags::FollowSymlink,
    )
    .map_err(errno_to_io)
}

/// Whether process `pid` still runs (temp files and half-built trees carry the pid of their
/// writer, so that leftovers of killed processes can be told from work in progress).
pub fn process_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// `fsync(2)` on a directory, making the names just created or renamed in it durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates a new, uniquely named file in `dir` (`.{prefix}-{pid}-{n}`); the caller renames or
/// removes it.
pub fn create_temp_file(dir: &Path, prefix: &str) -> io::Result<(std::path::PathBuf, File)> {
    for n in 0..1000u32 {
        let p = dir.join(format!(".{prefix}-{}-{n}", std::process::id()));
        match File::create_new(&p) {
            Ok(f) => return Ok((p, f)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        format!("no free temp file name in {}", dir.display()),
    ))
}

/// An anonymous file in `dir` (O_TMPFILE): it has no name and vanishes with its last descriptor,
/// even if the process is killed.
pub fn anonymous_temp_file(dir: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_TMPFILE)
        .mode(0o600)
        .open(dir)
}

/// Whether `name` exists in `dir` (one `fstatat`, no descriptor; symlinks not followed).
pub fn exists_at(dir: BorrowedFd<'_>, name: &[u8]) -> bool {
    let Ok(name) = cstr(name) else { return false };
    nix::sys::stat::fstatat(dir, name.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW).is_ok()
}
