//! Opening a store by location: a folder path, or `s3://bucket/prefix` with the `s3` feature.

use std::sync::Arc;

#[cfg(feature = "s3")]
use super::BucketStore;
use super::{CacheError, DiskStore, Store};

/// Opens the cache at `location`: `s3://bucket/prefix` (with the `s3` feature) or a folder.
/// With `create`, a missing cache is started there; without, it must already be a genie cache.
pub fn open_store(location: &str, create: bool) -> Result<Arc<dyn Store>, CacheError> {
    match location.split_once("://") {
        None => Ok(Arc::new(if create {
            DiskStore::open(location)?
        } else {
            DiskStore::open_existing(location)?
        })),
        Some(("s3", _)) => open_s3(location, create),
        Some((scheme, _)) => Err(CacheError::UnsupportedLocation {
            location: location.to_string(),
            why: format!(
                "{scheme}:// is not a cache genie knows (use a folder or s3://bucket/prefix)"
            ),
        }),
    }
}

#[cfg(feature = "s3")]
fn open_s3(location: &str, create: bool) -> Result<Arc<dyn Store>, CacheError> {
    Ok(Arc::new(BucketStore::open_s3(location, create)?))
}

#[cfg(not(feature = "s3"))]
fn open_s3(location: &str, _create: bool) -> Result<Arc<dyn Store>, CacheError> {
    Err(CacheError::UnsupportedLocation {
        location: location.to_string(),
        why: "this genie was built without object storage: rebuild with `--features s3`".into(),
    })
}
