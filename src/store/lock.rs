//! The store lock: shared for pulls, checkouts and fsck, exclusive for gc. It waits (and says
//! so through [`Progress::waiting`]) instead of failing when another process holds it.

use std::fs::{File, TryLockError};
use std::io;
use std::path::Path;

use crate::progress::Progress;

/// How the lock is held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockMode {
    Shared,
    Exclusive,
}

/// A held store lock; released on drop.
#[derive(Debug)]
pub struct StoreLock {
    _file: File,
    pub mode: LockMode,
}

/// Takes the lock on `path`, waiting if another process holds it in a conflicting mode.
pub fn acquire(path: &Path, mode: LockMode, progress: &dyn Progress) -> io::Result<StoreLock> {
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)?;
    let attempt = match mode {
        LockMode::Shared => file.try_lock_shared(),
        LockMode::Exclusive => file.try_lock(),
    };
    match attempt {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            progress.waiting(match mode {
                LockMode::Shared => "waiting for the store lock: a gc is running",
                LockMode::Exclusive => {
                    "waiting for the store lock: pulls, checkouts or fsck are running"
                }
            });
            match mode {
                LockMode::Shared => file.lock_shared()?,
                LockMode::Exclusive => file.lock()?,
            }
        }
        Err(TryLockError::Error(e)) => return Err(e),
    }
    Ok(StoreLock { _file: file, mode })
}
