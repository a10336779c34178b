//! An in-process [`Store`] (a map behind a mutex): for tests, and proof that callers need no disk.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use super::error::CacheError;
use super::key::CacheKey;
use super::manifest::Manifest;
use super::store::{BadEntry, Defect, Lookup, ManifestScan, PutOutcome, Store, StoredEntry};

/// Entries held in memory, lost when dropped.
#[derive(Debug, Default)]
pub struct MemoryStore {
    entries: Mutex<HashMap<CacheKey, StoredEntry>>,
    records: Mutex<HashMap<CacheKey, Vec<u8>>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<CacheKey, StoredEntry>> {
        crate::sync::lock(&self.entries)
    }
}

impl Store for MemoryStore {
    fn get(&self, key: &CacheKey) -> Result<Lookup, CacheError> {
        let mut entries = self.lock();
        let Some(entry) = entries.get(key) else {
            return Ok(Lookup::Miss);
        };
        // Verified like any other store, so tests of callers see the same contract.
        let found = blake3::hash(&entry.content).to_hex().to_string();
        if found != entry.manifest.content_blake3 {
            let bad = BadEntry {
                key: Some(*key),
                location: format!("memory:{key}"),
                defect: Defect::HashMismatch {
                    expected: entry.manifest.content_blake3.clone(),
                    found,
                },
            };
            entries.remove(key);
            return Ok(Lookup::Corrupt(bad));
        }
        Ok(Lookup::Hit(Box::new(entry.clone())))
    }

    fn commit(&self, manifest: Manifest, content: &[u8]) -> Result<PutOutcome, CacheError> {
        let mut entries = self.lock();
        if entries.contains_key(&manifest.key) {
            return Ok(PutOutcome::AlreadyPresent);
        }
        entries.insert(
            manifest.key,
            StoredEntry {
                manifest,
                content: content.to_vec(),
            },
        );
        Ok(PutOutcome::Stored)
    }

    fn contains(&self, key: &CacheKey) -> Result<bool, CacheError> {
        Ok(self.lock().contains_key(key))
    }

    fn manifests(&self) -> Result<ManifestScan, CacheError> {
        let mut manifests: Vec<Manifest> = self
            .lock()
            .values()
            .map(|entry| entry.manifest.clone())
            .collect();
        manifests.sort_by_key(|m| m.key);
        Ok(ManifestScan {
            manifests,
            ..ManifestScan::default()
        })
    }

    fn quarantine(&self, manifest: &Manifest, _defect: &Defect) -> Result<bool, CacheError> {
        let mut entries = self.lock();
        let same = entries
            .get(&manifest.key)
            .is_some_and(|entry| entry.manifest == *manifest);
        if same {
            entries.remove(&manifest.key);
        }
        Ok(same)
    }

    fn put_record(&self, key: &CacheKey, record: &[u8]) -> Result<(), CacheError> {
        let mut records = crate::sync::lock(&self.records);
        records.insert(*key, record.to_vec());
        Ok(())
    }

    fn get_record(&self, key: &CacheKey) -> Result<Option<Vec<u8>>, CacheError> {
        let records = crate::sync::lock(&self.records);
        Ok(records.get(key).cloned())
    }
}
