//! Errors of the cache: every message names the path involved and what to do about it.

use std::io;
use std::path::{Path, PathBuf};

use crate::image_io::ImageError;

use super::key::CacheKey;
use super::manifest::MAX_CONTENT_BYTES;

/// Why a cache operation failed.
///
/// A corrupt entry is *not* an error: it is quarantined and reported as a miss (see
/// [`super::Lookup::Corrupt`]). Errors are the conditions a caller or a person must act on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CacheError {
    /// A file operation failed.
    #[error("cache I/O error: cannot {action} {path}: {source}")]
    Io {
        /// What was being done ("write", "rename", …).
        action: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The disk holding the cache is full; nothing half-written was kept.
    #[error(
        "no space left on the device holding {path} (while trying to {action}); \
         free some space or shrink the cache with gc: {source}"
    )]
    DiskFull {
        /// What was being done.
        action: &'static str,
        /// The file being written.
        path: PathBuf,
        /// The I/O error (`ENOSPC`).
        #[source]
        source: io::Error,
    },
    /// Opening (not creating) a folder that is not a cache.
    #[error("{path} is not a genie cache (no such folder, or no genie-cache.json marker in it)")]
    NotACache {
        /// The folder.
        path: PathBuf,
    },
    /// Creating a cache in a folder that already holds other files.
    #[error("{path} is not a genie cache (no genie-cache.json) and is not empty (it holds {example:?}): give a new or empty folder for a new cache")]
    NotEmpty {
        /// The folder.
        path: PathBuf,
        /// One of the names in it.
        example: String,
    },
    /// The cache's root is a file.
    #[error("cache folder {path} exists but is not a directory")]
    NotADirectory {
        /// The path.
        path: PathBuf,
    },
    /// One of the cache's own folders is a symlink (refused: writes could land elsewhere).
    #[error("{path} is a symlink to {target}{}; the cache's own folders must be real folders inside its root", outside_note(.outside_root))]
    Symlink {
        /// The link.
        path: PathBuf,
        /// Where it points.
        target: PathBuf,
        /// Whether that is outside the cache's root.
        outside_root: bool,
    },
    /// The cache was written by a newer genie whose format this build cannot read.
    #[error(
        "{path} was written by a newer genie (format {found}; this build reads up to {supported}): \
         upgrade genie or use another cache folder"
    )]
    FutureFormat {
        /// The marker file.
        path: PathBuf,
        /// Its format version.
        found: u32,
        /// The newest this build reads.
        supported: u32,
    },
    /// The marker file exists but is not genie's.
    #[error("{path} is not a genie cache marker ({detail}); is this folder really a genie cache?")]
    BadMarker {
        /// The marker file.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
    /// Another process is collecting garbage in this cache.
    #[error(
        "another gc is running on this cache (it holds {path}); try again when it has finished"
    )]
    GcBusy {
        /// The lock file it holds.
        path: PathBuf,
    },
    /// An entry's content is larger than a cache entry may be.
    #[error("cache entry {key} would hold {len} bytes, more than the limit of {max}")]
    ContentTooLarge {
        /// The entry.
        key: CacheKey,
        /// Its size.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// An entry's manifest or side record cannot be serialised.
    #[error("cannot encode the manifest or side record of {key}: {source}")]
    ManifestEncode {
        /// The entry.
        key: CacheKey,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// An object-store operation failed (`s3://` caches).
    #[error("object storage error: cannot {action} {location}: {message}")]
    Remote {
        /// What was being done.
        action: &'static str,
        /// The object.
        location: String,
        /// The store's account.
        message: String,
    },
    /// A cache location this build cannot open (e.g. `s3://` without the `s3` feature).
    #[error("cannot open cache {location}: {why}")]
    UnsupportedLocation {
        /// The location as given.
        location: String,
        /// Why.
        why: String,
    },
    /// An image cannot be encoded into the cache.
    #[error("cannot encode an image for the cache: {0}")]
    Image(#[from] ImageError),
}

/// thiserror hands format helpers references to fields.
fn outside_note(outside_root: &bool) -> &'static str {
    if *outside_root {
        " (outside the cache root)"
    } else {
        ""
    }
}

impl CacheError {
    /// Wraps an I/O error with what was being done and where; a full disk or an exhausted quota
    /// gets its own variant because the remedy (free space) differs from other I/O failures.
    pub(crate) fn io(action: &'static str, path: &Path, source: io::Error) -> Self {
        let path = path.to_path_buf();
        match source.kind() {
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => CacheError::DiskFull {
                action,
                path,
                source,
            },
            _ => CacheError::Io {
                action,
                path,
                source,
            },
        }
    }

    /// Refuses content no reader would accept.
    pub(crate) fn check_content_len(key: &CacheKey, content: &[u8]) -> Result<(), CacheError> {
        let len = content.len() as u64;
        if len > MAX_CONTENT_BYTES {
            return Err(CacheError::ContentTooLarge {
                key: *key,
                len,
                max: MAX_CONTENT_BYTES,
            });
        }
        Ok(())
    }

    /// An `io` constructor bound to an action and a path, for `map_err`.
    pub(crate) fn io_at<'a>(
        action: &'static str,
        path: &'a Path,
    ) -> impl FnOnce(io::Error) -> CacheError + 'a {
        move |source| CacheError::io(action, path, source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_is_its_own_error_and_names_the_path() {
        let err = CacheError::io(
            "write a temporary file",
            Path::new("/cache/tmp/x"),
            io::Error::from(io::ErrorKind::StorageFull),
        );
        assert!(matches!(err, CacheError::DiskFull { .. }), "{err:?}");
        let message = err.to_string();
        assert!(message.contains("/cache/tmp/x"), "{message}");
        assert!(message.contains("no space left"), "{message}");
    }

    #[test]
    fn symlink_message_says_when_it_leaves_the_root() {
        let err = CacheError::Symlink {
            path: "/cache/objects".into(),
            target: "/etc".into(),
            outside_root: true,
        };
        assert!(err.to_string().contains("outside the cache root"), "{err}");
    }
}
