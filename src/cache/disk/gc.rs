//! Garbage collection: entries beyond the policy's age or size, stale temporary files and
//! orphaned content, under an exclusive lock so that two gcs do not race.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::path::Path;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use super::files::read_dir;
use super::layout::{parse_content_name, GC_LOCK_FILE};
use super::DiskStore;
use crate::cache::error::CacheError;
use crate::cache::key::CacheKey;
use crate::cache::store::Store;
use crate::cache::unix_now;

/// How long temporary and unreferenced content files are left alone by gc by default: far
/// longer than any write takes, so gc never deletes a file a live writer is about to commit.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(60 * 60);

/// How long gc waits for another holder of `gc.lock` before giving up. Not zero: a child
/// process forked by any thread of this process briefly shares the lock until it execs.
pub const GC_LOCK_WAIT: Duration = Duration::from_secs(2);

/// Which entries gc removes. The default removes none (only stale temporary and orphaned files).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcPolicy {
    /// Remove oldest entries (by creation) until the content bytes are at most this.
    pub max_bytes: Option<u64>,
    /// Remove entries created longer ago than this.
    pub max_age: Option<Duration>,
}

/// What gc did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct GcReport {
    /// Entries removed.
    pub removed_entries: u64,
    /// Their content bytes.
    pub removed_bytes: u64,
    /// Entries left.
    pub remaining_entries: u64,
    /// Their content bytes.
    pub remaining_bytes: u64,
    /// Abandoned temporary files removed (from writers that died).
    pub removed_temp_files: u64,
    /// Content files no manifest references (left by writers that lost a race or were killed).
    pub removed_orphan_files: u64,
    /// Defective or newer-format manifests gc left alone (see `verify`).
    pub skipped_manifests: u64,
}

/// Takes an exclusive lock on `lock`, waiting at most [`GC_LOCK_WAIT`].
pub(super) fn lock_exclusively(lock: &File, path: &Path) -> Result<(), CacheError> {
    match crate::sync::lock_file_within(lock, GC_LOCK_WAIT) {
        Ok(true) => Ok(()),
        Ok(false) => Err(CacheError::GcBusy {
            path: path.to_path_buf(),
        }),
        Err(e) => Err(CacheError::io("lock", path, e)),
    }
}

/// Whether `path` is a plain file (or a stray symlink) last modified longer than `grace` ago.
/// A modification time in the future (clock skew on a shared filesystem) is never stale.
pub(super) fn is_stale_file(path: &Path, grace: Duration) -> bool {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return false;
    };
    let age = meta
        .modified()
        .ok()
        .and_then(|modified| SystemTime::now().duration_since(modified).ok());
    !meta.is_dir() && age.is_some_and(|age| age > grace)
}

impl DiskStore {
    /// Removes entries by age and then, oldest first, by total size; then temporary and
    /// unreferenced content files older than [`DEFAULT_GRACE`].
    ///
    /// Runs under an exclusive lock on `gc.lock`; if another gc holds it for longer than
    /// [`GC_LOCK_WAIT`], fails with [`CacheError::GcBusy`] rather than queue up behind it.
    /// Writers and readers do not take the lock and are never blocked.
    pub fn gc(&self, policy: &GcPolicy) -> Result<GcReport, CacheError> {
        self.gc_with_grace(policy, DEFAULT_GRACE)
    }

    /// [`DiskStore::gc`] with another grace period for temporary and unreferenced files. Files
    /// younger than `grace` may belong to a write in progress; a grace shorter than the
    /// longest write may delete a file a live writer is about to commit (its entry is then
    /// found corrupt and regenerated, never served wrong).
    pub fn gc_with_grace(
        &self,
        policy: &GcPolicy,
        grace: Duration,
    ) -> Result<GcReport, CacheError> {
        let lock_path = self.root.join(GC_LOCK_FILE);
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(CacheError::io_at("open the gc lock", &lock_path))?;
        lock_exclusively(&lock, &lock_path)?;

        let scan = self.manifests()?;
        let mut report = GcReport {
            skipped_manifests: (scan.bad.len() + scan.newer_format.len()) as u64,
            ..GcReport::default()
        };
        let mut entries = scan.manifests;
        entries.sort_by_key(|m| (m.created_unix, m.key));
        let now = unix_now();
        let mut total_bytes: u64 = entries.iter().map(|m| m.content_len).sum();
        let mut kept: HashMap<CacheKey, String> = HashMap::new();
        for manifest in entries {
            let age = Duration::from_secs(now.saturating_sub(manifest.created_unix));
            let too_old = policy.max_age.is_some_and(|max| age > max);
            let over_budget = policy.max_bytes.is_some_and(|max| total_bytes > max);
            if (too_old || over_budget) && self.uncommit(&manifest)? {
                total_bytes -= manifest.content_len;
                report.removed_entries += 1;
                report.removed_bytes += manifest.content_len;
            } else {
                kept.insert(manifest.key, manifest.content_file.clone());
            }
        }
        report.remaining_entries = kept.len() as u64;
        report.remaining_bytes = total_bytes;

        report.removed_temp_files = self.sweep_temp_files(grace)?;
        report.removed_orphan_files = self.sweep_orphans(&kept, grace)?;
        drop(lock);
        Ok(report)
    }

    /// Removes files in `tmp/` older than `grace`.
    pub(super) fn sweep_temp_files(&self, grace: Duration) -> Result<u64, CacheError> {
        let mut removed = 0;
        for entry in read_dir(&self.tmp)? {
            let path = entry.path();
            let is_ours = !entry.file_name().to_string_lossy().starts_with(".nfs");
            if is_ours && is_stale_file(&path, grace) && fs::remove_file(&path).is_ok() {
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Removes content files older than `grace` that no committed manifest references. Keys
    /// whose manifest gc could not read (defective, newer format) keep all their files.
    pub(super) fn sweep_orphans(
        &self,
        kept: &HashMap<CacheKey, String>,
        grace: Duration,
    ) -> Result<u64, CacheError> {
        let with_manifest: HashSet<CacheKey> = self
            .manifest_files()?
            .into_iter()
            .map(|(key, _)| key)
            .collect();
        let mut removed = 0;
        for shard in self.shard_dirs(&self.objects)? {
            for entry in read_dir(&shard)? {
                let name = entry.file_name();
                let Some(name) = name.to_str() else { continue };
                let Some(key) = parse_content_name(name) else {
                    continue;
                };
                let referenced = match kept.get(&key) {
                    Some(content_file) => content_file == name,
                    None => with_manifest.contains(&key),
                };
                let path = entry.path();
                if !referenced && is_stale_file(&path, grace) && fs::remove_file(&path).is_ok() {
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }
}
