//! The on-disk store: content files plus a per-key manifest that is written last and is the commit point.
//!
//! # Layout
//!
//! ```text
//! <root>/genie-cache.json                          marker: {"format": 1, "kind": "genie-cache"}
//! <root>/objects/<ab>/<key>.<hash16>.<token>.png   content (<ab>: first two hex digits of the key)
//! <root>/manifests/<ab>/<key>.json                 manifest: its existence commits the entry
//! <root>/quarantine/<nanos>-<key>-<token>/         defective entries moved aside, with reason.txt
//! <root>/records/<ab>/<pair key>.json              side records (GeNIe-Ada choices), replaced whole
//! <root>/tmp/                                      temporary files of writes in progress
//! <root>/gc.lock                                   held exclusively while gc runs
//! ```
//!
//! Only hex digits reach file names: keys, content hashes and random tokens, never a class name,
//! prompt or path.
//!
//! # Commit protocol
//!
//! 1. The content goes into a unique temporary file in `tmp/`, is fsynced, and is renamed to a
//!    content name no other write uses (key, content hash prefix, random token). No manifest
//!    references it yet, so no reader can see it.
//! 2. The manifest goes into a temporary file, is fsynced, and is hard-linked to
//!    `manifests/<ab>/<key>.json`. `link(2)` refuses an existing name atomically (locally and on
//!    NFS), so exactly one writer commits: the first complete one. Losers delete their own
//!    content file, which nobody else can reference.
//! 3. Readers start from the manifest and verify the content's length and blake3, so they see a
//!    whole entry or none. Removal runs the protocol backwards: the manifest goes first.
//!
//! Writers need no lock. gc takes an exclusive lock on `gc.lock` so that two gcs do not race,
//! and otherwise relies on the same rules: it removes committed entries only (manifest first),
//! and temporary or unreferenced files only once they are older than a grace period.

mod commit;
mod files;
mod gc;
pub(super) mod layout;
#[cfg(test)]
mod tests;
pub(super) mod verify;

use std::fs::{self};
use std::io::{self};
use std::path::{Path, PathBuf};

use crate::cache::error::CacheError;
use files::ensure_dir;
use layout::{check_marker, refuse_foreign_content, write_marker, TMP_DIR};

pub use gc::{GcPolicy, GcReport, DEFAULT_GRACE, GC_LOCK_WAIT};
pub use verify::VerifyReport;
// The bucket store shares the folder store's names, marker and manifest judging.
pub(super) use layout::{MANIFESTS_DIR, OBJECTS_DIR, QUARANTINE_DIR, RECORDS_DIR};
pub(super) use verify::scan_manifest;

/// Layout version written into the marker; a root with a newer one is refused.
pub const DISK_FORMAT: u32 = 1;

/// A cache folder on a local or shared filesystem (see the module docs for layout and protocol).
///
/// The filesystem must support hard links and atomic renames within the folder (any local
/// Unix filesystem, NFS).
#[derive(Debug, Clone)]
pub struct DiskStore {
    /// Canonical: every path the store touches is checked to stay below it.
    root: PathBuf,
    objects: PathBuf,
    manifests: PathBuf,
    quarantine: PathBuf,
    tmp: PathBuf,
}

impl DiskStore {
    /// Opens the cache at `root`, creating it if needed.
    ///
    /// Refuses a root that is a file, a root whose marker is from a newer genie or is not a
    /// genie marker, and cache folders that are symlinks. The root itself may be a symlink
    /// (to put the cache on another disk).
    pub fn open(root: impl AsRef<Path>) -> Result<Self, CacheError> {
        let given = root.as_ref();
        if !is_folder(given)? {
            fs::create_dir_all(given)
                .map_err(CacheError::io_at("create the cache folder", given))?;
        }
        let root = fs::canonicalize(given)
            .map_err(CacheError::io_at("resolve the cache folder", given))?;
        let marker_present = check_marker(&root)?;
        if !marker_present {
            refuse_foreign_content(&root)?;
        }
        let tmp = ensure_dir(&root, &root.join(TMP_DIR))?;
        if !marker_present {
            write_marker(&root, &tmp)?;
        }
        Ok(DiskStore {
            objects: ensure_dir(&root, &root.join(OBJECTS_DIR))?,
            manifests: ensure_dir(&root, &root.join(MANIFESTS_DIR))?,
            quarantine: ensure_dir(&root, &root.join(QUARANTINE_DIR))?,
            tmp,
            root,
        })
    }

    /// Opens an existing cache, refusing to create one: for maintenance commands, where a
    /// mistyped path should be an error rather than a new empty cache.
    pub fn open_existing(root: impl AsRef<Path>) -> Result<Self, CacheError> {
        let given = root.as_ref();
        if !is_folder(given)? || !check_marker(given)? {
            return Err(CacheError::NotACache {
                path: given.to_path_buf(),
            });
        }
        Self::open(given)
    }

    /// The canonical cache folder.
    pub fn root(&self) -> &Path {
        &self.root
    }
}

/// Whether `path` is a folder (`false`: nothing is there); a file there is refused.
fn is_folder(path: &Path) -> Result<bool, CacheError> {
    match fs::metadata(path) {
        Ok(meta) if meta.is_dir() => Ok(true),
        Ok(_) => Err(CacheError::NotADirectory {
            path: path.to_path_buf(),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(CacheError::io("inspect the cache folder", path, e)),
    }
}
