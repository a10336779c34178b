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
    #[error("cache I/O error: cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "no space left on the device holding {path} (while trying to {action}); \
         free some space or shrink the cache with gc: {source}"
    )]
    DiskFull {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is not a genie cache (no such folder, or no genie-cache.json marker in it)")]
    NotACache { path: PathBuf },
    #[error("{path} is not a genie cache (no genie-cache.json) and is not empty (it holds {example:?}): give a new or empty folder for a new cache")]
    NotEmpty { path: PathBuf, example: String },
    #[error("cache folder {path} exists but is not a directory")]
    NotADirectory { path: PathBuf },
    #[error("{path} is a symlink to {target}{}; the cache's own folders must be real folders inside its root", outside_note(.outside_root))]
    Symlink {
        path: PathBuf,
        target: PathBuf,
        outside_root: bool,
    },
    #[error(
        "{path} was written by a newer genie (format {found}; this build reads up to {supported}): \
         upgrade genie or use another cache folder"
    )]
    FutureFormat {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    #[error("{path} is not a genie cache marker ({detail}); is this folder really a genie cache?")]
    BadMarker { path: PathBuf, detail: String },
    #[error(
        "another gc is running on this cache (it holds {path}); try again when it has finished"
    )]
    GcBusy { path: PathBuf },
    #[error("cache entry {key} would hold {len} bytes, more than the limit of {max}")]
    ContentTooLarge { key: CacheKey, len: u64, max: u64 },
    #[error("cannot encode the manifest or side record of {key}: {source}")]
    ManifestEncode {
        key: CacheKey,
        #[source]
        source: serde_json::Error,
    },
    #[error("object storage error: cannot {action} {location}: {message}")]
    Remote {
        action: &'static str,
        location: String,
        message: String,
    },
    #[error("cannot open cache {location}: {why}")]
    UnsupportedLocation { location: String, why: String },
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
