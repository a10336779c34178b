//! File-system steps every part of the store takes: folders made inside the root, whole writes
//! (with a test-only fault injection), folder syncs, same-file checks, listings and removals
//! that tolerate a file already gone.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::cache::error::CacheError;

/// Creates `path` if missing; refuses a symlink or a non-folder there.
pub(super) fn ensure_dir(root: &Path, path: &Path) -> Result<PathBuf, CacheError> {
    for _ in 0..2 {
        match fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_symlink() => {
                let target = fs::read_link(path).unwrap_or_default();
                let outside_root = !fs::canonicalize(path).is_ok_and(|p| p.starts_with(root));
                return Err(CacheError::Symlink {
                    path: path.to_path_buf(),
                    target,
                    outside_root,
                });
            }
            Ok(meta) if meta.is_dir() => return Ok(path.to_path_buf()),
            Ok(_) => {
                return Err(CacheError::NotADirectory {
                    path: path.to_path_buf(),
                })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => match fs::create_dir(path) {
                Ok(()) => return Ok(path.to_path_buf()),
                // Another process created it meanwhile: check what it is.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(CacheError::io("create", path, e)),
            },
            Err(e) => return Err(CacheError::io("inspect", path, e)),
        }
    }
    Err(CacheError::io(
        "create",
        path,
        io::Error::other("it keeps appearing and disappearing"),
    ))
}

pub(super) fn read_dir(dir: &Path) -> Result<Vec<fs::DirEntry>, CacheError> {
    fs::read_dir(dir)
        .and_then(|entries| entries.collect::<io::Result<Vec<_>>>())
        .map_err(CacheError::io_at("list", dir))
}

pub(super) fn remove_if_present(path: &Path) {
    if let Err(e) = fs::remove_file(path) {
        if e.kind() != io::ErrorKind::NotFound {
            tracing::debug!(path = %path.display(), error = %e, "could not remove a cache file");
        }
    }
}

/// Whether two paths name the same file (same device and inode).
pub(super) fn same_file(a: &Path, b: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        match (fs::metadata(a), fs::metadata(b)) {
            (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
            _ => false,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (a, b);
        false
    }
}

/// fsyncs a folder so that names created in it survive a crash. Best effort: some filesystems
/// refuse to fsync folders, and then only crash durability (never consistency) is weaker.
pub(super) fn sync_dir(dir: &Path) {
    #[cfg(unix)]
    if let Err(e) = File::open(dir).and_then(|d| d.sync_all()) {
        tracing::debug!(path = %dir.display(), error = %e, "could not fsync a cache folder");
    }
    #[cfg(not(unix))]
    let _ = dir;
}

pub(super) fn write_fully(file: &mut File, bytes: &[u8]) -> io::Result<()> {
    #[cfg(test)]
    faults::before_write()?;
    file.write_all(bytes)
}

/// Test-only fault injection: makes the n-th write on this thread fail, as a full disk would.
#[cfg(test)]
pub(super) mod faults {
    use std::cell::Cell;
    use std::io;

    thread_local! {
        static FAIL_AFTER: Cell<Option<(u32, io::ErrorKind)>> = const { Cell::new(None) };
    }

    /// Lets `writes_before` writes succeed, then fails the next one with `kind`.
    pub fn fail_write_after(writes_before: u32, kind: io::ErrorKind) {
        FAIL_AFTER.with(|f| f.set(Some((writes_before, kind))));
    }

    pub fn before_write() -> io::Result<()> {
        FAIL_AFTER.with(|f| match f.get() {
            Some((0, kind)) => {
                f.set(None);
                Err(io::Error::from(kind))
            }
            Some((n, kind)) => {
                f.set(Some((n - 1, kind)));
                Ok(())
            }
            None => Ok(()),
        })
    }
}
