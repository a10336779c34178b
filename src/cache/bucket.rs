//! The object-storage store (feature `s3`): the disk store's layout and commit rules in a bucket,
//! through the `object_store` crate (S3 and S3-compatible servers, or its in-memory store).
//!
//! # Layout (keys below the prefix, as on disk)
//!
//! ```text
//! <prefix>/genie-cache.json                          marker
//! <prefix>/objects/<ab>/<key>.<hash16>.<token>.png   content
//! <prefix>/manifests/<ab>/<key>.json                 manifest: its existence commits the entry
//! <prefix>/quarantine/<nanos>-<key>-<token>/…        defective entries moved aside, with reason.txt
//! <prefix>/records/<ab>/<pair key>.json              side records (GeNIe-Ada choices)
//! ```
//!
//! # Commit protocol
//!
//! 1. The content goes to a name no other write uses (key, content hash prefix, random token).
//!    Object writes are atomic, and no manifest references the object yet.
//! 2. The manifest is written with `PutMode::Create` (`If-None-Match: *` on S3), which the
//!    server refuses when the name exists: exactly one writer commits, the first complete one.
//!    A loser deletes its own content object.
//! 3. Readers start from the manifest and verify the content's length and blake3.
//!
//! Object stores have no conditional delete, so quarantine re-reads a manifest and removes it
//! only if it is still the one judged defective; a writer committing in the instant between can
//! lose its entry, which then misses and is regenerated. No reader is ever served bad content.
//!
//! Calls block on an internal tokio runtime: use the store from ordinary threads, not from
//! inside an async runtime.

use std::sync::Arc;

use futures_util::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

use super::clock::unique_token;
use super::disk::layout::{
    judge_marker, marker_json, shard_dir_name, MANIFESTS_DIR, MARKER_FILE, OBJECTS_DIR,
    QUARANTINE_DIR, RECORDS_DIR,
};
use super::disk::verify::{judge_manifest, scan_manifest, Judged};
use super::error::CacheError;
use super::key::CacheKey;
use super::manifest::{Manifest, MANIFEST_FORMAT, MAX_CONTENT_BYTES, MAX_MANIFEST_BYTES};
use super::record::MAX_RECORD_BYTES;
use super::store::{BadEntry, Defect, Lookup, ManifestScan, PutOutcome, Store, StoredEntry};
use super::unix_nanos;

/// A cache in an object store, below a prefix.
pub struct BucketStore {
    store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    /// For messages: `s3://bucket/prefix`, or `memory://` for the in-memory store.
    location: String,
    runtime: tokio::runtime::Runtime,
}

impl std::fmt::Debug for BucketStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BucketStore")
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

/// What a read of one object found.
enum Fetched {
    Absent,
    Bytes(Vec<u8>),
    TooLong(u64),
}

impl BucketStore {
    /// A cache in `store` below `prefix`, creating its marker if `create` and none is there
    /// (else an absent marker is [`CacheError::NotACache`]). `location` names it in messages.
    pub fn new(
        store: Arc<dyn ObjectStore>,
        prefix: &str,
        location: impl Into<String>,
        create: bool,
    ) -> Result<Self, CacheError> {
        let location = location.into();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("genie-object-store")
            .enable_all()
            .build()
            .map_err(|e| CacheError::Remote {
                action: "start the I/O runtime for",
                location: location.clone(),
                message: e.to_string(),
            })?;
        let bucket = BucketStore {
            store,
            prefix: ObjectPath::from(prefix.trim_matches('/')),
            location,
            runtime,
        };
        bucket.check_or_write_marker(create)?;
        Ok(bucket)
    }

    /// A cache in `object_store`'s in-memory store (tests, and the same code path as S3).
    pub fn in_memory() -> Self {
        let store = Arc::new(object_store::memory::InMemory::new());
        // The in-memory store cannot fail to take a marker.
        match Self::new(store, "", "memory://", true) {
            Ok(bucket) => bucket,
            Err(e) => unreachable!("the in-memory object store refused its marker: {e}"),
        }
    }

    /// Installs ring as rustls's process-wide crypto provider, unless the program already
    /// installed one. Call it before building an `object_store` S3 client of your own for
    /// [`BucketStore::new`]; [`BucketStore::open_s3`] calls it itself.
    ///
    /// genie builds reqwest's TLS without a provider of its own (one crypto library in the
    /// build, not two: Cargo.toml), and reqwest panics when a client is built with none
    /// installed. A provider installed first is kept (`install_default` never replaces one).
    pub fn install_tls_provider() {
        if rustls::crypto::CryptoProvider::get_default().is_none() {
            // Another thread may install one between the check and here; theirs is as good.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
    }

    /// A cache at `s3://bucket/prefix`. Credentials, region and endpoint come from the usual
    /// `AWS_*` variables (`AWS_ENDPOINT_URL` and `AWS_ALLOW_HTTP=true` for a local S3-compatible
    /// server). With `create`, a missing cache is started there.
    pub fn open_s3(url: &str, create: bool) -> Result<Self, CacheError> {
        let bad = |why: String| CacheError::UnsupportedLocation {
            location: url.to_string(),
            why,
        };
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| bad("not an s3:// URL".into()))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(bad("no bucket name (expected s3://bucket/prefix)".into()));
        }
        Self::install_tls_provider();
        let store = object_store::aws::AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .build()
            .map_err(|e| bad(e.to_string()))?;
        Self::new(Arc::new(store), prefix, url, create)
    }

    /// The underlying object store (for tools and tests that look at the raw objects).
    pub fn object_store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// Where the manifest of `key` lives.
    pub fn manifest_path(&self, key: &CacheKey) -> ObjectPath {
        self.path(&[MANIFESTS_DIR, &shard_dir_name(key), &format!("{key}.json")])
    }

    /// Where a content object of `key` named `content_file` lives.
    pub fn content_path(&self, key: &CacheKey, content_file: &str) -> ObjectPath {
        self.path(&[OBJECTS_DIR, &shard_dir_name(key), content_file])
    }

    fn record_path(&self, key: &CacheKey) -> ObjectPath {
        self.path(&[RECORDS_DIR, &shard_dir_name(key), &format!("{key}.json")])
    }

    fn path(&self, parts: &[&str]) -> ObjectPath {
        parts
            .iter()
            .fold(self.prefix.clone(), |p, part| p.join(*part))
    }

    fn remote(
        &self,
        action: &'static str,
        path: &ObjectPath,
        e: object_store::Error,
    ) -> CacheError {
        CacheError::Remote {
            action,
            location: format!(
                "{}/{}",
                self.location.trim_end_matches('/'),
                path_below(&self.prefix, path)
            ),
            message: e.to_string(),
        }
    }

    fn block_on<T>(&self, f: impl std::future::Future<Output = T>) -> T {
        self.runtime.block_on(f)
    }

    /// Reads an object of at most `limit` bytes.
    fn fetch(&self, path: &ObjectPath, limit: u64) -> Result<Fetched, CacheError> {
        self.block_on(async {
            let result = match self.store.get(path).await {
                Ok(result) => result,
                Err(object_store::Error::NotFound { .. }) => return Ok(Fetched::Absent),
                Err(e) => return Err(self.remote("read", path, e)),
            };
            if result.meta.size > limit {
                return Ok(Fetched::TooLong(result.meta.size));
            }
            match result.bytes().await {
                Ok(bytes) => Ok(Fetched::Bytes(bytes.to_vec())),
                Err(object_store::Error::NotFound { .. }) => Ok(Fetched::Absent),
                Err(e) => Err(self.remote("read", path, e)),
            }
        })
    }

    fn write(&self, path: &ObjectPath, bytes: &[u8], mode: PutMode) -> Result<bool, CacheError> {
        let options = PutOptions {
            mode,
            ..PutOptions::default()
        };
        let payload = PutPayload::from(bytes.to_vec());
        self.block_on(async {
            match self.store.put_opts(path, payload, options).await {
                Ok(_) => Ok(true),
                Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
                Err(e) => Err(self.remote("write", path, e)),
            }
        })
    }

    fn delete(&self, path: &ObjectPath) -> Result<(), CacheError> {
        self.block_on(async {
            match self.store.delete(path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(self.remote("delete", path, e)),
            }
        })
    }

    fn check_or_write_marker(&self, create: bool) -> Result<(), CacheError> {
        let path = self.path(&[MARKER_FILE]);
        let shown = std::path::PathBuf::from(format!(
            "{}/{MARKER_FILE}",
            self.location.trim_end_matches('/')
        ));
        for _ in 0..2 {
            match self.fetch(&path, MAX_MANIFEST_BYTES)? {
                Fetched::Bytes(bytes) => return judge_marker(&shown, &bytes),
                Fetched::TooLong(len) => {
                    return Err(CacheError::BadMarker {
                        path: shown,
                        detail: format!("{len} bytes long"),
                    })
                }
                Fetched::Absent if !create => {
                    return Err(CacheError::NotACache {
                        path: self.location.clone().into(),
                    })
                }
                // Create-if-absent: a concurrent opener's marker wins and is checked next turn.
                Fetched::Absent => {
                    if self.write(&path, marker_json().as_bytes(), PutMode::Create)? {
                        return Ok(());
                    }
                }
            }
        }
        Ok(())
    }

    /// Reads and verifies the content a parsed manifest names.
    fn check_content(
        &self,
        manifest: &Manifest,
    ) -> Result<Result<Vec<u8>, Option<Defect>>, CacheError> {
        let path = self.content_path(&manifest.key, &manifest.content_file);
        let content = match self.fetch(&path, MAX_CONTENT_BYTES)? {
            Fetched::Bytes(bytes) => bytes,
            Fetched::TooLong(len) => {
                return Ok(Err(Some(Defect::LengthMismatch {
                    expected: manifest.content_len,
                    found: len,
                })))
            }
            Fetched::Absent => {
                // Gone with its manifest (a quarantine raced us) is a miss; gone alone is a defect.
                let still = self.contains(&manifest.key)?;
                return Ok(Err(still.then(|| Defect::ContentMissing {
                    path: path.to_string().into(),
                })));
            }
        };
        if content.len() as u64 != manifest.content_len {
            return Ok(Err(Some(Defect::LengthMismatch {
                expected: manifest.content_len,
                found: content.len() as u64,
            })));
        }
        let found = blake3::hash(&content);
        if manifest.content_hash() != Some(found) {
            return Ok(Err(Some(Defect::HashMismatch {
                expected: manifest.content_blake3.clone(),
                found: found.to_hex().to_string(),
            })));
        }
        Ok(Ok(content))
    }

    /// Moves a defective entry into `quarantine/` if its manifest still holds `raw`.
    fn quarantine_entry(
        &self,
        key: &CacheKey,
        raw: Option<&[u8]>,
        manifest: Option<&Manifest>,
        defect: &Defect,
    ) -> Result<bool, CacheError> {
        let manifest_path = self.manifest_path(key);
        let now = self.fetch(&manifest_path, MAX_MANIFEST_BYTES)?;
        let still = match (&now, raw) {
            (Fetched::Bytes(bytes), Some(raw)) => bytes.as_slice() == raw,
            (Fetched::TooLong(_), None) => true,
            _ => false,
        };
        if !still {
            return Ok(false);
        }
        let dir = format!("{}-{key}-{}", unix_nanos(), unique_token());
        let q = |name: &str| self.path(&[QUARANTINE_DIR, &dir, name]);
        self.write(
            &q("reason.txt"),
            format!("{defect}\n").as_bytes(),
            PutMode::Overwrite,
        )?;
        if let Some(raw) = raw {
            self.write(&q("manifest.json"), raw, PutMode::Overwrite)?;
        }
        self.delete(&manifest_path)?;
        if let Some(m) = manifest {
            let content = self.content_path(key, &m.content_file);
            let moved = self.block_on(self.store.copy(&content, &q(&m.content_file)));
            if moved.is_ok() {
                self.delete(&content)?;
            }
        }
        tracing::warn!(%key, %defect, location = %self.location, "quarantined a defective cache entry");
        Ok(true)
    }

    fn manifest_keys(&self) -> Result<Vec<(CacheKey, ObjectPath)>, CacheError> {
        let base = self.path(&[MANIFESTS_DIR]);
        let listed: Vec<object_store::ObjectMeta> = self
            .block_on(self.store.list(Some(&base)).try_collect())
            .map_err(|e| self.remote("list", &base, e))?;
        let mut keys: Vec<(CacheKey, ObjectPath)> = listed
            .into_iter()
            .filter_map(|meta| {
                let name = meta.location.filename()?.strip_suffix(".json")?;
                Some((CacheKey::from_hex(name).ok()?, meta.location))
            })
            .collect();
        keys.sort_by_key(|(k, _)| *k);
        Ok(keys)
    }
}

/// `path` relative to `prefix`, for messages.
fn path_below(prefix: &ObjectPath, path: &ObjectPath) -> String {
    match path.prefix_match(prefix) {
        Some(parts) => parts
            .map(|p| p.as_ref().to_string())
            .collect::<Vec<_>>()
            .join("/"),
        None => path.to_string(),
    }
}

impl Store for BucketStore {
    fn get(&self, key: &CacheKey) -> Result<Lookup, CacheError> {
        let manifest_path = self.manifest_path(key);
        let location = || {
            format!(
                "{}/{}",
                self.location.trim_end_matches('/'),
                path_below(&self.prefix, &manifest_path)
            )
        };
        let (raw, judged) = match self.fetch(&manifest_path, MAX_MANIFEST_BYTES)? {
            Fetched::Absent => return Ok(Lookup::Miss),
            Fetched::TooLong(len) => (
                None,
                Err(Judged::Defective(Defect::BadManifest(format!(
                    "{len} bytes, larger than any manifest"
                )))),
            ),
            Fetched::Bytes(raw) => {
                let judged = judge_manifest(key, &raw);
                (Some(raw), judged)
            }
        };
        let (manifest, defect) = match judged {
            Ok(manifest) => match self.check_content(&manifest)? {
                Ok(content) => {
                    return Ok(Lookup::Hit(Box::new(StoredEntry { manifest, content })));
                }
                Err(None) => return Ok(Lookup::Miss),
                Err(Some(defect)) => (Some(manifest), defect),
            },
            Err(Judged::Future { found }) => {
                return Err(CacheError::FutureFormat {
                    path: location().into(),
                    found,
                    supported: MANIFEST_FORMAT,
                })
            }
            Err(Judged::Defective(defect)) => (None, defect),
        };
        if let Err(e) = self.quarantine_entry(key, raw.as_deref(), manifest.as_ref(), &defect) {
            tracing::warn!(%key, %defect, error = %e, "corrupt cache entry could not be quarantined");
        }
        Ok(Lookup::Corrupt(BadEntry {
            key: Some(*key),
            location: location(),
            defect,
        }))
    }

    fn commit(&self, manifest: Manifest, content: &[u8]) -> Result<PutOutcome, CacheError> {
        let key = &manifest.key;
        let content_path = self.content_path(key, &manifest.content_file);
        self.write(&content_path, content, PutMode::Overwrite)?;
        let committed = manifest
            .encode()
            .and_then(|json| self.write(&self.manifest_path(key), &json, PutMode::Create));
        match committed {
            Ok(true) => Ok(PutOutcome::Stored),
            Ok(false) => {
                self.delete(&content_path)?;
                Ok(PutOutcome::AlreadyPresent)
            }
            Err(e) => {
                // The content is ours alone until a manifest names it.
                let _ = self.delete(&content_path);
                Err(e)
            }
        }
    }

    fn contains(&self, key: &CacheKey) -> Result<bool, CacheError> {
        let path = self.manifest_path(key);
        self.block_on(async {
            match self.store.head(&path).await {
                Ok(_) => Ok(true),
                Err(object_store::Error::NotFound { .. }) => Ok(false),
                Err(e) => Err(self.remote("look up", &path, e)),
            }
        })
    }

    fn manifests(&self) -> Result<ManifestScan, CacheError> {
        let mut scan = ManifestScan::default();
        for (key, path) in self.manifest_keys()? {
            let location = format!(
                "{}/{}",
                self.location.trim_end_matches('/'),
                path_below(&self.prefix, &path)
            );
            let raw = match self.fetch(&path, MAX_MANIFEST_BYTES)? {
                Fetched::Absent => continue,
                Fetched::TooLong(len) => {
                    scan.bad.push(BadEntry {
                        key: Some(key),
                        location,
                        defect: Defect::BadManifest(format!(
                            "{len} bytes, larger than any manifest"
                        )),
                    });
                    continue;
                }
                Fetched::Bytes(raw) => raw,
            };
            scan_manifest(&mut scan, key, location, &raw);
        }
        Ok(scan)
    }

    fn quarantine(&self, manifest: &Manifest, defect: &Defect) -> Result<bool, CacheError> {
        match self.fetch(&self.manifest_path(&manifest.key), MAX_MANIFEST_BYTES)? {
            Fetched::Bytes(raw) if Manifest::parse(&raw).as_ref() == Ok(manifest) => {
                self.quarantine_entry(&manifest.key, Some(&raw), Some(manifest), defect)
            }
            _ => Ok(false),
        }
    }

    fn put_record(&self, key: &CacheKey, record: &[u8]) -> Result<(), CacheError> {
        self.write(&self.record_path(key), record, PutMode::Overwrite)
            .map(|_| ())
    }

    fn get_record(&self, key: &CacheKey) -> Result<Option<Vec<u8>>, CacheError> {
        match self.fetch(&self.record_path(key), MAX_RECORD_BYTES)? {
            Fetched::Bytes(bytes) => Ok(Some(bytes)),
            Fetched::Absent => Ok(None),
            Fetched::TooLong(len) => {
                tracing::warn!(%key, len, "ignoring an oversized side record");
                Ok(None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_https_s3_client_builds_once_the_provider_is_installed() {
        BucketStore::install_tls_provider();
        assert!(rustls::crypto::CryptoProvider::get_default().is_some());
        // reqwest builds its TLS configuration here, and would panic without a provider.
        let s3 = object_store::aws::AmazonS3Builder::new()
            .with_endpoint("https://127.0.0.1:9")
            .with_bucket_name("genie-test")
            .with_region("us-east-1")
            .with_access_key_id("test")
            .with_secret_access_key("test")
            .build();
        assert!(s3.is_ok(), "{:?}", s3.err());
    }
}
