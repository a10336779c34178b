//! The hard-negative cache: generated images by key, in memory and in a store (disk), verified on every read.
//!
//! - [`CacheKey`]: the hash of everything that changes an image's pixels ([`key`]);
//! - [`Store`]: verified, create-if-absent storage of bytes, with [`DiskStore`] (many processes
//!   and machines may share one folder), [`MemoryStore`], and with the `s3` feature
//!   `BucketStore` (S3-compatible object storage, same rules); [`open_store`] picks one from a
//!   folder path or an `s3://` URL;
//! - [`MemoryTier`]: decoded images under a byte budget;
//! - [`Cache`]: the facade generators use, PNG-encoding images into a store behind a memory tier;
//! - [`AdaChoiceRecord`]: side records of GeNIe-Ada's choices, filed under a pair's key.
//!
//! The cache knows keys, bytes and images, and nothing of candle or burn.

#[cfg(feature = "s3")]
mod bucket;
mod clock;
mod disk;
mod error;
mod gc_loop;
pub mod key;
mod manifest;
mod memory;
mod memory_store;
mod open;
mod record;
mod store;
mod tiered;

#[cfg(feature = "s3")]
pub use bucket::BucketStore;
pub use disk::{
    DiskStore, GcPolicy, GcReport, VerifyReport, DEFAULT_GRACE, DISK_FORMAT, GC_LOCK_WAIT,
};
pub use error::CacheError;
pub use gc_loop::GcLoop;
pub use key::{source_hash, CacheKey, KeyInputs, KeyParseError, KEY_ENCODING_VERSION};
pub use manifest::{EntryMeta, Manifest, MANIFEST_FORMAT, MAX_CONTENT_BYTES};
pub use memory::{MemoryTier, ENTRY_OVERHEAD_BYTES};
pub use memory_store::MemoryStore;
pub use open::open_store;
pub use record::{AdaChoiceRecord, RECORD_FORMAT};
pub use store::{
    BadEntry, CacheStats, Defect, GroupStats, Lookup, ManifestScan, PutOutcome, Store, StoredEntry,
};
pub use tiered::{check_image, Cache, CacheCounters, MemoryUsage};

pub(crate) use clock::{unix_nanos, unix_now};

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn cache_and_stores_are_send_and_sync() {
        assert_send_sync::<Cache>();
        assert_send_sync::<DiskStore>();
        assert_send_sync::<MemoryStore>();
        assert_send_sync::<Arc<dyn Store>>();
    }
}
