//! The storage interface behind the cache, so a disk, memory or object-storage backend is interchangeable.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;

use super::error::CacheError;
use super::key::CacheKey;
use super::manifest::{EntryMeta, Manifest};

/// A verified entry: its manifest and content bytes, whose length and blake3 match the manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredEntry {
    /// What the entry is (key, size, hash, image metadata).
    pub manifest: Manifest,
    /// The encoded image.
    pub content: Vec<u8>,
}

/// What a lookup found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// A verified entry (boxed: it is far larger than the other answers).
    Hit(Box<StoredEntry>),
    /// No committed entry (or one that vanished while being read, e.g. to gc).
    Miss,
    /// There was an entry but it failed verification; it has been moved out of the way
    /// (quarantined) and the caller should treat this as a miss and regenerate.
    Corrupt(BadEntry),
}

impl Lookup {
    /// The entry of a hit; `None` for a miss or a corrupt entry.
    pub fn into_entry(self) -> Option<StoredEntry> {
        match self {
            Lookup::Hit(entry) => Some(*entry),
            Lookup::Miss | Lookup::Corrupt(_) => None,
        }
    }

    /// Whether the lookup found a verified entry.
    pub fn is_hit(&self) -> bool {
        matches!(self, Lookup::Hit(_))
    }
}

/// Result of a create-if-absent write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum PutOutcome {
    /// This call committed the entry.
    Stored,
    /// An entry for the key was already committed (by anyone); it was left as it is.
    AlreadyPresent,
}

/// What is wrong with a stored entry.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Defect {
    /// The manifest is not a manifest (garbage, truncated, wrong fields).
    #[error("manifest is unreadable: {0}")]
    BadManifest(String),
    /// The manifest is stored under a key it does not name.
    #[error("manifest is filed under another key (it names {found})")]
    WrongKey {
        /// The key it names.
        found: CacheKey,
    },
    /// The manifest names a content file outside the cache's naming scheme.
    #[error("manifest names content file {0:?}, which is not a name this cache writes")]
    BadContentName(String),
    /// The content file is gone.
    #[error("content file {path} is missing")]
    ContentMissing {
        /// Where it should be.
        path: PathBuf,
    },
    /// A file of the entry is a folder, a device or a pipe.
    #[error("{path} is not a regular file")]
    NotAFile {
        /// The file.
        path: PathBuf,
    },
    /// A file of the entry cannot be read.
    #[error("{path} cannot be read ({why})")]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        why: String,
    },
    /// A file of the entry is a symlink (never followed).
    #[error("{path} is a symlink to {target}{}; the cache never writes symlinks and does not follow them", outside_note(.outside_root))]
    Symlink {
        /// The link.
        path: PathBuf,
        /// Where it points.
        target: PathBuf,
        /// Whether that is outside the cache's root.
        outside_root: bool,
    },
    /// The content's length is not the manifest's.
    #[error("content is {found} bytes long, the manifest says {expected}")]
    LengthMismatch {
        /// The manifest's.
        expected: u64,
        /// The file's.
        found: u64,
    },
    /// The content's blake3 is not the manifest's.
    #[error("content blake3 is {found}, the manifest says {expected}")]
    HashMismatch {
        /// The manifest's, hex.
        expected: String,
        /// The content's, hex.
        found: String,
    },
    /// The content verifies but does not decode as an image.
    #[error("content is not a decodable image: {0}")]
    Undecodable(String),
    /// The image decodes at another size than the manifest's.
    #[error("image is {found_width}x{found_height}, the manifest says {width}x{height}")]
    WrongDimensions {
        /// The manifest's width.
        width: u32,
        /// The manifest's height.
        height: u32,
        /// The image's width.
        found_width: u32,
        /// The image's height.
        found_height: u32,
    },
}

/// thiserror hands format helpers references to fields.
fn outside_note(outside_root: &bool) -> &'static str {
    if *outside_root {
        " outside the cache root"
    } else {
        ""
    }
}

/// One defective entry, as found by a lookup, a scan or `verify`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadEntry {
    /// The key, when it could be told (from the manifest's file name for the disk store).
    pub key: Option<CacheKey>,
    /// Where the entry lives, for people: a path for the disk store.
    pub location: String,
    /// What is wrong.
    pub defect: Defect,
}

/// Every committed manifest a store holds, with the ones it could not use reported apart.
#[derive(Clone, Debug, Default)]
pub struct ManifestScan {
    /// The usable manifests.
    pub manifests: Vec<Manifest>,
    /// Manifests that are garbage, misfiled or name an impossible content file.
    pub bad: Vec<BadEntry>,
    /// Manifests written by a newer genie (locations); left alone, counted in no statistic.
    pub newer_format: Vec<String>,
}

/// A storage backend: verified reads, create-if-absent writes, and a listing.
///
/// Implementations must be safe to share between threads, must never return content that does
/// not match its manifest, and must let the first complete writer of a key win.
pub trait Store: Send + Sync {
    /// The verified entry of `key`. A corrupt entry is quarantined and reported as
    /// [`Lookup::Corrupt`], never returned; errors are for conditions a person must fix
    /// (permissions, a manifest from a newer genie).
    fn get(&self, key: &CacheKey) -> Result<Lookup, CacheError>;

    /// Stores `content` under `key` unless an entry is already committed (first complete
    /// writer wins). `meta` goes into the manifest as it is.
    ///
    /// Every store starts the same way (the size checked, a committed key answered at once,
    /// the manifest made); what differs is [`Store::commit`].
    fn put(
        &self,
        key: &CacheKey,
        content: &[u8],
        meta: &EntryMeta,
    ) -> Result<PutOutcome, CacheError> {
        CacheError::check_content_len(key, content)?;
        if self.contains(key)? {
            return Ok(PutOutcome::AlreadyPresent);
        }
        self.commit(Manifest::for_new_content(key, content, meta), content)
    }

    /// Writes `content` to `manifest.content_file` and commits `manifest`, unless another
    /// writer committed `manifest.key` first ([`PutOutcome::AlreadyPresent`]; nothing of this
    /// write is then left behind). Called by [`Store::put`], which has checked the content.
    fn commit(&self, manifest: Manifest, content: &[u8]) -> Result<PutOutcome, CacheError>;

    /// Whether an entry is committed for `key` (not verified: a following `get` may still find
    /// it corrupt).
    fn contains(&self, key: &CacheKey) -> Result<bool, CacheError>;

    /// Every committed manifest, for statistics, verification, gc and reports.
    fn manifests(&self) -> Result<ManifestScan, CacheError>;

    /// Moves the entry described by `manifest` out of the way because a caller found it
    /// defective (e.g. its content verified but does not decode). Does nothing, and returns
    /// `false`, when the committed entry is no longer that one.
    fn quarantine(&self, manifest: &Manifest, defect: &Defect) -> Result<bool, CacheError>;

    /// Stores a side record (see the `record` module) under `key`, replacing any earlier one.
    fn put_record(&self, key: &CacheKey, record: &[u8]) -> Result<(), CacheError>;

    /// The side record under `key`, if any (unverified bytes: records are advisory).
    fn get_record(&self, key: &CacheKey) -> Result<Option<Vec<u8>>, CacheError>;

    /// Totals over every committed manifest.
    fn stats(&self) -> Result<CacheStats, CacheError> {
        let scan = self.manifests()?;
        Ok(CacheStats {
            unusable_manifests: scan.bad.len() as u64,
            newer_format_manifests: scan.newer_format.len() as u64,
            ..CacheStats::from_manifests(&scan.manifests)
        })
    }
}

/// Count and size of a group of entries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct GroupStats {
    /// Entries.
    pub entries: u64,
    /// Content bytes.
    pub bytes: u64,
}

/// What a cache holds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CacheStats {
    /// Committed, usable entries.
    pub entries: u64,
    /// Content bytes (manifests, about a kilobyte each, are not counted).
    pub bytes: u64,
    /// Per target class label.
    pub by_target: BTreeMap<String, GroupStats>,
    /// Entry count per noise level in thousandths.
    pub by_level: BTreeMap<u16, u64>,
    /// Manifests that could not be used (garbage, misfiled, unreadable): counted in nothing
    /// above; `genie cache verify` lists them and `--repair` quarantines them.
    pub unusable_manifests: u64,
    /// Manifests written by a newer genie, left alone and counted in nothing above.
    pub newer_format_manifests: u64,
}

impl CacheStats {
    /// Totals over `manifests` (the two unusable counts stay 0).
    pub fn from_manifests(manifests: &[Manifest]) -> Self {
        let mut stats = CacheStats::default();
        for manifest in manifests {
            stats.entries += 1;
            stats.bytes += manifest.content_len;
            let target = stats
                .by_target
                .entry(manifest.meta.target.clone())
                .or_default();
            target.entries += 1;
            target.bytes += manifest.content_len;
            *stats
                .by_level
                .entry(manifest.meta.level.thousandths())
                .or_default() += 1;
        }
        stats
    }
}
