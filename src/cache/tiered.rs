//! [`Cache`], the facade generators use: a memory tier of decoded images in front of a verified
//! store, PNG-encoding what it stores and counting every path taken.

use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};

use image::RgbImage;

use super::open::open_store;
use super::{
    AdaChoiceRecord, CacheError, CacheKey, Defect, DiskStore, EntryMeta, Lookup, MemoryTier,
    PutOutcome, Store, StoredEntry,
};
use crate::image_io;

/// How often each path through the cache was taken, since it was created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct CacheCounters {
    /// Served from the memory tier: no I/O, no decode.
    pub memory_hits: u64,
    /// Served from the store (the disk, for a [`DiskStore`]): read, verified, decoded.
    pub store_hits: u64,
    /// Answered `None` (including corrupt entries).
    pub misses: u64,
    /// Entries found corrupt (by the store's verification or by decoding) and quarantined.
    pub corrupt: u64,
    /// Writes that stored a new entry.
    pub puts_stored: u64,
    /// Writes that found the entry already committed.
    pub puts_already_present: u64,
}

/// The memory tier's occupancy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct MemoryUsage {
    /// Decoded images held.
    pub entries: usize,
    /// Their bytes.
    pub used_bytes: usize,
    /// The tier's limit.
    pub budget_bytes: usize,
}

crate::counters::live_counters! {
    struct AtomicCounters => CacheCounters {
        memory_hits, store_hits, misses, corrupt, puts_stored, puts_already_present,
    }
}

fn bump(counter: &AtomicU64) {
    crate::counters::add(counter, 1);
}

/// Generated images by key: a memory tier of decoded images in front of a verified store.
///
/// Shared by threads (`Send + Sync`); share the same store between processes through a
/// [`DiskStore`] folder.
pub struct Cache {
    store: Arc<dyn Store>,
    memory: Mutex<MemoryTier>,
    counters: AtomicCounters,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("counters", &self.counters())
            .finish_non_exhaustive()
    }
}

impl Cache {
    /// A cache over `store` with a memory tier of `memory_budget_bytes` (0 disables it).
    pub fn new(store: Arc<dyn Store>, memory_budget_bytes: usize) -> Self {
        Cache {
            store,
            memory: Mutex::new(MemoryTier::new(memory_budget_bytes)),
            counters: AtomicCounters::default(),
        }
    }

    /// A cache over the store at `location` ([`open_store`], created if missing).
    pub fn open(location: &str, memory_budget_bytes: usize) -> Result<Self, CacheError> {
        Ok(Self::new(open_store(location, true)?, memory_budget_bytes))
    }

    /// A cache over a [`DiskStore`] at `path` (created if missing).
    pub fn open_dir(
        path: impl AsRef<Path>,
        memory_budget_bytes: usize,
    ) -> Result<Self, CacheError> {
        Ok(Self::new(
            Arc::new(DiskStore::open(path)?),
            memory_budget_bytes,
        ))
    }

    /// The store behind the memory tier.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The image of `key`: from memory if held there, else read from the store, verified and
    /// decoded. A corrupt entry (including one whose verified bytes do not decode to the
    /// promised image) is quarantined and answered `None`, so the caller regenerates it.
    pub fn get_image(&self, key: &CacheKey) -> Result<Option<Arc<RgbImage>>, CacheError> {
        if let Some(image) = self.memory().get(key) {
            bump(&self.counters.memory_hits);
            return Ok(Some(image));
        }
        let entry = match self.store.get(key)? {
            Lookup::Hit(entry) => entry,
            Lookup::Miss => {
                bump(&self.counters.misses);
                return Ok(None);
            }
            Lookup::Corrupt(_) => {
                bump(&self.counters.corrupt);
                bump(&self.counters.misses);
                return Ok(None);
            }
        };
        let image = match decode_entry(&entry) {
            Ok(image) => Arc::new(image),
            Err(defect) => {
                if let Err(e) = self.store.quarantine(&entry.manifest, &defect) {
                    tracing::warn!(%key, %defect, error = %e, "could not quarantine an undecodable entry");
                }
                bump(&self.counters.corrupt);
                bump(&self.counters.misses);
                return Ok(None);
            }
        };
        self.memory().insert(*key, Arc::clone(&image));
        bump(&self.counters.store_hits);
        Ok(Some(image))
    }

    /// Stores `image` (as PNG) under `key` unless an entry is already committed; the first
    /// complete writer wins. `meta.width` and `meta.height` are set from the image.
    ///
    /// Only a `Stored` image enters the memory tier: after `AlreadyPresent`, the committed
    /// entry may hold another writer's pixels, and memory must agree with the store.
    pub fn put_image(
        &self,
        key: &CacheKey,
        image: &RgbImage,
        mut meta: EntryMeta,
    ) -> Result<PutOutcome, CacheError> {
        (meta.width, meta.height) = image.dimensions();
        let png = image_io::encode_png(image)?;
        let outcome = self.store.put(key, &png, &meta)?;
        match outcome {
            PutOutcome::Stored => {
                bump(&self.counters.puts_stored);
                self.memory().insert(*key, Arc::new(image.clone()));
            }
            PutOutcome::AlreadyPresent => bump(&self.counters.puts_already_present),
        }
        Ok(outcome)
    }

    /// Files GeNIe-Ada's choice for the pair `pair` ([`CacheKey::pair`]), replacing any earlier one.
    pub fn put_ada_choice(
        &self,
        pair: &CacheKey,
        record: &AdaChoiceRecord,
    ) -> Result<(), CacheError> {
        let json = serde_json::to_vec(record)
            .map_err(|source| CacheError::ManifestEncode { key: *pair, source })?;
        self.store.put_record(pair, &json)
    }

    /// GeNIe-Ada's latest recorded choice for the pair `pair`; an unreadable record is `None`.
    pub fn ada_choice(&self, pair: &CacheKey) -> Result<Option<AdaChoiceRecord>, CacheError> {
        let Some(bytes) = self.store.get_record(pair)? else {
            return Ok(None);
        };
        match AdaChoiceRecord::parse(&bytes) {
            Ok(record) => Ok(Some(record)),
            Err(why) => {
                tracing::warn!(%pair, %why, "ignoring an unreadable GeNIe-Ada record");
                Ok(None)
            }
        }
    }

    /// Whether `key` is in memory or committed in the store (not verified).
    pub fn contains(&self, key: &CacheKey) -> Result<bool, CacheError> {
        if self.memory().contains(key) {
            return Ok(true);
        }
        self.store.contains(key)
    }

    /// A snapshot of the counters.
    pub fn counters(&self) -> CacheCounters {
        self.counters.snapshot_into(CacheCounters::default())
    }

    /// What the memory tier holds now.
    pub fn memory_usage(&self) -> MemoryUsage {
        let memory = self.memory();
        MemoryUsage {
            entries: memory.len(),
            used_bytes: memory.used_bytes(),
            budget_bytes: memory.budget_bytes(),
        }
    }

    fn memory(&self) -> MutexGuard<'_, MemoryTier> {
        crate::sync::lock(&self.memory)
    }
}

/// Whether an entry's content is an image of the size its manifest promises (for
/// [`DiskStore::verify_with`]).
pub fn check_image(entry: &StoredEntry) -> Result<(), Defect> {
    decode_entry(entry).map(|_| ())
}

/// Decodes an entry's PNG and checks it has the size its manifest promises.
fn decode_entry(entry: &StoredEntry) -> Result<RgbImage, Defect> {
    let image =
        image_io::decode_rgb(&entry.content).map_err(|e| Defect::Undecodable(e.to_string()))?;
    let meta = &entry.manifest.meta;
    if image.dimensions() != (meta.width, meta.height) {
        return Err(Defect::WrongDimensions {
            width: meta.width,
            height: meta.height,
            found_width: image.width(),
            found_height: image.height(),
        });
    }
    Ok(image)
}
