//! The commit protocol: content first, then the manifest that commits it (the `Store`
//! implementation), and entries removed by running it backwards.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::files::{ensure_dir, remove_if_present, same_file, sync_dir, write_fully};
use super::verify::{Checked, Expect, FileRead, ManifestRead};
use super::DiskStore;
use super::{scan_manifest, RECORDS_DIR};
use crate::cache::clock::unique_token;
use crate::cache::error::CacheError;
use crate::cache::key::CacheKey;
use crate::cache::manifest::Manifest;
use crate::cache::record::MAX_RECORD_BYTES;
use crate::cache::store::{BadEntry, Defect, Lookup, ManifestScan, PutOutcome, Store};

impl Store for DiskStore {
    fn get(&self, key: &CacheKey) -> Result<Lookup, CacheError> {
        match self.check_entry(key)? {
            Checked::Valid(entry) => Ok(Lookup::Hit(Box::new(entry))),
            Checked::Absent => Ok(Lookup::Miss),
            Checked::Defective {
                raw_manifest,
                manifest,
                defect,
            } => {
                // A cache on a read-only mount cannot quarantine; the answer is a miss anyway.
                if let Err(e) =
                    self.quarantine_entry(key, raw_manifest.as_deref(), manifest.as_ref(), &defect)
                {
                    tracing::warn!(%key, %defect, error = %e, "corrupt cache entry could not be quarantined");
                }
                Ok(Lookup::Corrupt(BadEntry {
                    key: Some(*key),
                    location: self.manifest_path(key).display().to_string(),
                    defect,
                }))
            }
        }
    }

    fn commit(&self, manifest: Manifest, content: &[u8]) -> Result<PutOutcome, CacheError> {
        let key = &manifest.key;
        let manifest_path = self.manifest_path(key);
        let manifest_shard = self.ensure_shard(&self.manifests, key)?;
        let objects_shard = self.ensure_shard(&self.objects, key)?;
        let content_path = objects_shard.join(&manifest.content_file);

        let tmp_content = self.write_temp("content-", content, true)?;
        tmp_content
            .persist(&content_path)
            .map_err(|e| CacheError::io("move finished content to", &content_path, e.error))?;
        // Until the manifest commits, the content file is this write's alone: removed on any
        // failure and when another writer wins.
        let mut content_guard = RemoveOnDrop(Some(content_path));
        // The content's name must be durable before a manifest can point at it.
        sync_dir(&objects_shard);

        let json = manifest.encode()?;
        let tmp_manifest = self.write_temp("manifest-", &json, true)?;
        let outcome = match fs::hard_link(tmp_manifest.path(), &manifest_path) {
            Ok(()) => PutOutcome::Stored,
            // On NFS a retransmitted link can report EEXIST although it was ours that landed.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                if same_file(tmp_manifest.path(), &manifest_path) {
                    PutOutcome::Stored
                } else {
                    PutOutcome::AlreadyPresent
                }
            }
            Err(e) => return Err(CacheError::io("commit the manifest", &manifest_path, e)),
        };
        if outcome == PutOutcome::Stored {
            content_guard.0 = None;
            sync_dir(&manifest_shard);
        }
        drop(tmp_manifest);
        Ok(outcome)
    }

    fn contains(&self, key: &CacheKey) -> Result<bool, CacheError> {
        let path = self.manifest_path(key);
        self.check_shard(&path)?;
        match fs::symlink_metadata(&path) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(CacheError::io("inspect", &path, e)),
        }
    }

    fn manifests(&self) -> Result<ManifestScan, CacheError> {
        let mut scan = ManifestScan::default();
        for (key, path) in self.manifest_files()? {
            let location = path.display().to_string();
            let raw = match self.read_manifest(&path)? {
                ManifestRead::Absent => continue,
                ManifestRead::Defective(defect) => {
                    scan.bad.push(BadEntry {
                        key: Some(key),
                        location,
                        defect,
                    });
                    continue;
                }
                ManifestRead::Bytes(raw) => raw,
            };
            scan_manifest(&mut scan, key, location, &raw);
        }
        Ok(scan)
    }

    fn quarantine(&self, manifest: &Manifest, defect: &Defect) -> Result<bool, CacheError> {
        let path = self.manifest_path(&manifest.key);
        self.check_shard(&path)?;
        match self.read_manifest(&path)? {
            ManifestRead::Bytes(raw) if Manifest::parse(&raw).as_ref() == Ok(manifest) => {
                self.quarantine_entry(&manifest.key, Some(&raw), Some(manifest), defect)
            }
            _ => Ok(false),
        }
    }

    fn put_record(&self, key: &CacheKey, record: &[u8]) -> Result<(), CacheError> {
        let records = ensure_dir(&self.root, &self.root.join(RECORDS_DIR))?;
        self.ensure_shard(&records, key)?;
        let path = self.record_path(key);
        // A rename replaces the old record whole: readers see the old one or the new one. No
        // fsync: records are advisory and rewritten at every model version, so the selector
        // thread should not wait on the disk for them.
        self.write_temp("record-", record, false)?
            .persist(&path)
            .map_err(|e| CacheError::io("move a finished record to", &path, e.error))?;
        Ok(())
    }

    fn get_record(&self, key: &CacheKey) -> Result<Option<Vec<u8>>, CacheError> {
        let path = self.record_path(key);
        self.check_shard(&path)?;
        match self.read_owned_file(&path, MAX_RECORD_BYTES)? {
            FileRead::Bytes(bytes) => Ok(Some(bytes)),
            FileRead::Absent => Ok(None),
            FileRead::TooLong { len } => {
                tracing::warn!(path = %path.display(), len, "ignoring an oversized side record");
                Ok(None)
            }
            FileRead::Defective(defect) => {
                tracing::warn!(path = %path.display(), %defect, "ignoring a defective side record");
                Ok(None)
            }
        }
    }
}

/// Removes a file when dropped, unless disarmed by taking the path out.
pub(super) struct RemoveOnDrop(Option<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            remove_if_present(&path);
        }
    }
}

impl DiskStore {
    /// Whether the manifest at `path` still holds exactly `raw`.
    pub(super) fn still_committed(&self, path: &Path, raw: &[u8]) -> Result<bool, CacheError> {
        Ok(matches!(
            self.read_manifest(path)?,
            ManifestRead::Bytes(now) if now == raw
        ))
    }

    /// Writes `bytes` into a new temporary file, fsynced when `durable`; dropping the result
    /// removes it.
    pub(super) fn write_temp(
        &self,
        prefix: &str,
        bytes: &[u8],
        durable: bool,
    ) -> Result<tempfile::NamedTempFile, CacheError> {
        let mut tmp = tempfile::Builder::new()
            .prefix(prefix)
            .suffix(".tmp")
            .tempfile_in(&self.tmp)
            .map_err(CacheError::io_at("create a temporary file in", &self.tmp))?;
        let path = tmp.path().to_path_buf();
        write_fully(tmp.as_file_mut(), bytes).map_err(CacheError::io_at("write", &path))?;
        #[cfg(unix)]
        {
            // tempfile creates 0600; cache files are ordinary files other users may read.
            use std::os::unix::fs::PermissionsExt;
            tmp.as_file()
                .set_permissions(fs::Permissions::from_mode(0o644))
                .map_err(CacheError::io_at("set permissions of", &path))?;
        }
        if durable {
            tmp.as_file()
                .sync_all()
                .map_err(CacheError::io_at("fsync", &path))?;
        }
        Ok(tmp)
    }

    /// Moves the manifest at `from` to `to` if it is still what `expect` says; returns whether
    /// it did. Moving first and checking after closes the window in which a writer could
    /// commit a new entry between our check and our removal: if the moved file is not the one
    /// we judged, it is linked back.
    pub(super) fn take_manifest(
        &self,
        from: &Path,
        to: &Path,
        expect: Expect<'_>,
    ) -> Result<bool, CacheError> {
        match fs::rename(from, to) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(CacheError::io("move", from, e)),
        }
        let matches = match expect {
            Expect::Anything => true,
            Expect::Bytes(raw) => matches!(
                self.read_manifest(to)?,
                ManifestRead::Bytes(now) if now == raw
            ),
            Expect::Manifest(manifest) => matches!(
                self.read_manifest(to)?,
                ManifestRead::Bytes(now) if Manifest::parse(&now).as_ref() == Ok(manifest)
            ),
        };
        if !matches {
            match fs::hard_link(to, from) {
                // AlreadyExists: yet another writer committed meanwhile; theirs stands.
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => {
                    // Leave it where it is rather than delete a good entry; at worst it is
                    // regenerated.
                    tracing::warn!(from = %to.display(), to = %from.display(), error = %e, "could not put back a manifest");
                    return Ok(false);
                }
            }
            remove_if_present(to);
        }
        Ok(matches)
    }

    /// Removes a committed entry, manifest first, if it is still `manifest`.
    pub(super) fn uncommit(&self, manifest: &Manifest) -> Result<bool, CacheError> {
        let manifest_path = self.manifest_path(&manifest.key);
        self.check_shard(&manifest_path)?;
        let parked = self.tmp.join(format!("gc-{}.json", unique_token()));
        if !self.take_manifest(&manifest_path, &parked, Expect::Manifest(manifest))? {
            return Ok(false);
        }
        remove_if_present(&parked);
        let content_path = self.content_path(&manifest.key, &manifest.content_file);
        self.check_shard(&content_path)?;
        match fs::remove_file(&content_path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(CacheError::io("remove", &content_path, e)),
        }
        Ok(true)
    }
}
