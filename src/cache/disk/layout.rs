//! Where everything lives in a cache folder: the marker, the shard folders and the file names
//! (shared with the bucket store), and the checks that keep every path inside the root.

use std::fs::{self};
use std::io;
use std::path::{Path, PathBuf};

use super::files::{ensure_dir, read_dir, write_fully};
use super::{DiskStore, DISK_FORMAT};
use crate::cache::clock::TOKEN_LEN;
use crate::cache::error::CacheError;
use crate::cache::key::CacheKey;
use crate::cache::manifest::{CONTENT_EXTENSION, HASH_PREFIX_LEN, MAX_MANIFEST_BYTES};
use crate::cache::store::Defect;

pub(in crate::cache) const MARKER_FILE: &str = "genie-cache.json";

pub(super) const MARKER_KIND: &str = "genie-cache";

pub(in crate::cache) const OBJECTS_DIR: &str = "objects";

pub(in crate::cache) const MANIFESTS_DIR: &str = "manifests";

pub(in crate::cache) const QUARANTINE_DIR: &str = "quarantine";

pub(super) const TMP_DIR: &str = "tmp";

/// Created on first use, so caches made before records existed open unchanged.
pub(in crate::cache) const RECORDS_DIR: &str = "records";

/// The key of a content file name `<key>.<hash16>.<token16>.png`, or `None` for any other name.
pub(super) fn parse_content_name(name: &str) -> Option<CacheKey> {
    let rest = name.strip_suffix(CONTENT_EXTENSION)?.strip_suffix('.')?;
    let mut parts = rest.split('.');
    let key = CacheKey::from_hex(parts.next()?).ok()?;
    let is_lower_hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
    };
    let hash = parts.next()?;
    let token = parts.next()?;
    (is_lower_hex(hash, HASH_PREFIX_LEN)
        && is_lower_hex(token, TOKEN_LEN)
        && parts.next().is_none())
    .then_some(key)
}

pub(in crate::cache) fn shard_dir_name(key: &CacheKey) -> String {
    key.to_hex()[..2].to_string()
}

/// Reads the marker if there is one: `Ok(false)` when absent, an error when it is not ours
/// or from a newer genie.
/// A folder without a marker becomes a cache only if it holds nothing but what a cache being
/// created leaves (a creation interrupted before its marker): `--cache` pointed at a folder of
/// images or a home folder by mistake is an error, not a cache that adopts and later gc's it.
pub(super) fn refuse_foreign_content(root: &Path) -> Result<(), CacheError> {
    // The marker is listed too: another process creating the same cache may have written it
    // since `check_marker` looked (two `genie warm run` shards starting together), and
    // `write_marker` then finds it and checks it is ours.
    let ours = [
        TMP_DIR,
        OBJECTS_DIR,
        MANIFESTS_DIR,
        QUARANTINE_DIR,
        GC_LOCK_FILE,
        MARKER_FILE,
    ];
    let entries = fs::read_dir(root).map_err(CacheError::io_at("list", root))?;
    for entry in entries {
        let entry = entry.map_err(CacheError::io_at("list", root))?;
        let name = entry.file_name();
        if !ours.iter().any(|n| name == *n) {
            return Err(CacheError::NotEmpty {
                path: root.to_path_buf(),
                example: name.to_string_lossy().into_owned(),
            });
        }
    }
    Ok(())
}

pub(super) fn check_marker(root: &Path) -> Result<bool, CacheError> {
    let path = root.join(MARKER_FILE);
    let bad = |detail: String| CacheError::BadMarker {
        path: path.clone(),
        detail,
    };
    let meta = match fs::symlink_metadata(&path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(CacheError::io("inspect", &path, e)),
    };
    if !meta.is_file() {
        return Err(bad("not a regular file".into()));
    }
    if meta.len() > MAX_MANIFEST_BYTES {
        return Err(bad(format!("{} bytes long", meta.len())));
    }
    let bytes = crate::safe_open::read(&path).map_err(CacheError::io_at("read", &path))?;
    judge_marker(&path, &bytes)?;
    Ok(true)
}

/// Checks marker bytes: ours, and not from a newer genie.
pub(in crate::cache) fn judge_marker(path: &Path, bytes: &[u8]) -> Result<(), CacheError> {
    let bad = |detail: String| CacheError::BadMarker {
        path: path.to_path_buf(),
        detail,
    };
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| bad(format!("not JSON: {e}")))?;
    let format = value
        .get("format")
        .and_then(serde_json::Value::as_u64)
        .ok_or_else(|| bad("no format number".into()))?;
    if format > u64::from(DISK_FORMAT) {
        return Err(CacheError::FutureFormat {
            path: path.to_path_buf(),
            found: u32::try_from(format).unwrap_or(u32::MAX),
            supported: DISK_FORMAT,
        });
    }
    if value.get("kind").and_then(serde_json::Value::as_str) != Some(MARKER_KIND) || format == 0 {
        return Err(bad(format!(
            "expected kind {MARKER_KIND:?} and a format of 1..={DISK_FORMAT}"
        )));
    }
    Ok(())
}

/// The marker's bytes as this build writes them.
pub(in crate::cache) fn marker_json() -> String {
    serde_json::json!({ "format": DISK_FORMAT, "kind": MARKER_KIND }).to_string()
}

/// Creates the marker if absent (create-if-absent, so concurrent openers agree), then checks it.
pub(super) fn write_marker(root: &Path, tmp_dir: &Path) -> Result<(), CacheError> {
    let path = root.join(MARKER_FILE);
    let json = marker_json();
    let mut tmp = tempfile::Builder::new()
        .prefix("marker-")
        .tempfile_in(tmp_dir)
        .map_err(CacheError::io_at("create a temporary file in", tmp_dir))?;
    write_fully(tmp.as_file_mut(), json.as_bytes())
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(CacheError::io_at("write", tmp.path()))?;
    match fs::hard_link(tmp.path(), &path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(CacheError::io("create", &path, e)),
    }
    check_marker(root).map(|_| ())
}

impl DiskStore {
    /// Where the manifest of `key` lives (whether or not it exists).
    pub fn manifest_path(&self, key: &CacheKey) -> PathBuf {
        self.manifests
            .join(shard_dir_name(key))
            .join(format!("{key}.json"))
    }

    /// Where a content file of `key` named `content_file` lives.
    pub fn content_path(&self, key: &CacheKey, content_file: &str) -> PathBuf {
        self.objects.join(shard_dir_name(key)).join(content_file)
    }

    /// Where the side record of `key` lives (whether or not it exists).
    pub fn record_path(&self, key: &CacheKey) -> PathBuf {
        self.root
            .join(RECORDS_DIR)
            .join(shard_dir_name(key))
            .join(format!("{key}.json"))
    }

    /// The folder defective entries are moved into.
    pub fn quarantine_dir(&self) -> &Path {
        &self.quarantine
    }

    /// The folder of temporary files.
    pub fn tmp_dir(&self) -> &Path {
        &self.tmp
    }

    pub(super) fn symlink_defect(&self, path: &Path) -> Defect {
        let target = fs::read_link(path).unwrap_or_default();
        Defect::Symlink {
            path: path.to_path_buf(),
            outside_root: !self.resolves_inside_root(path, &target),
            target,
        }
    }

    /// Whether the symlink at `link` (pointing at `target`) ends inside the root. A dangling
    /// link is judged by its text.
    pub(super) fn resolves_inside_root(&self, link: &Path, target: &Path) -> bool {
        match fs::canonicalize(link) {
            Ok(resolved) => resolved.starts_with(&self.root),
            Err(_) => {
                let joined = link.parent().unwrap_or(Path::new("/")).join(target);
                !joined
                    .components()
                    .any(|c| matches!(c, std::path::Component::ParentDir))
                    && joined.starts_with(&self.root)
            }
        }
    }

    /// The shard folder holding `path` must be a real folder (or not exist yet): following a
    /// symlink there could read, move or delete files outside the root.
    pub(super) fn check_shard(&self, path: &Path) -> Result<(), CacheError> {
        match path.parent() {
            Some(shard) => self.check_shard_dir(shard),
            None => Ok(()),
        }
    }

    pub(super) fn check_shard_dir(&self, shard: &Path) -> Result<(), CacheError> {
        match fs::symlink_metadata(shard) {
            Ok(meta) if meta.file_type().is_symlink() => {
                let target = fs::read_link(shard).unwrap_or_default();
                Err(CacheError::Symlink {
                    path: shard.to_path_buf(),
                    outside_root: !self.resolves_inside_root(shard, &target),
                    target,
                })
            }
            Ok(meta) if !meta.is_dir() => Err(CacheError::NotADirectory {
                path: shard.to_path_buf(),
            }),
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(CacheError::io("inspect", shard, e)),
        }
    }

    /// Creates (if needed) and checks the shard folder of `key` under `base`.
    pub(super) fn ensure_shard(&self, base: &Path, key: &CacheKey) -> Result<PathBuf, CacheError> {
        ensure_dir(&self.root, &base.join(shard_dir_name(key)))
    }

    /// Every `manifests/<ab>/<key>.json` file, sorted by key. Files with other names (editor
    /// backups, NFS `.nfs*` placeholders) are not ours and are skipped.
    pub(super) fn manifest_files(&self) -> Result<Vec<(CacheKey, PathBuf)>, CacheError> {
        let mut files = Vec::new();
        for shard in self.shard_dirs(&self.manifests)? {
            for entry in read_dir(&shard)? {
                let name = entry.file_name();
                let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".json")) else {
                    continue;
                };
                let Ok(key) = CacheKey::from_hex(stem) else {
                    continue;
                };
                if shard.file_name() == Some(shard_dir_name(&key).as_ref()) {
                    files.push((key, entry.path()));
                }
            }
        }
        files.sort();
        Ok(files)
    }

    /// The shard folders below `base` (two lowercase hex digits); a symlinked one is an error.
    pub(super) fn shard_dirs(&self, base: &Path) -> Result<Vec<PathBuf>, CacheError> {
        let mut shards = Vec::new();
        for entry in read_dir(base)? {
            let is_shard_name = entry.file_name().to_str().is_some_and(|n| {
                n.len() == 2
                    && n.bytes()
                        .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
            });
            if !is_shard_name {
                continue;
            }
            let path = entry.path();
            self.check_shard_dir(&path)?;
            shards.push(path);
        }
        shards.sort();
        Ok(shards)
    }
}

pub(super) const GC_LOCK_FILE: &str = "gc.lock";
