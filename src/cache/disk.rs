//! The on-disk store: content files plus a per-key manifest that is written last and is the commit point.
//!
//! # Layout
//!
//! ```text
//! <root>/genie-cache.json                          marker: {"format": 1, "kind": "genie-cache"}
//! <root>/objects/<ab>/<key>.<hash16>.<token>.png   content (<ab>: first two hex digits of the key)
//! <root>/manifests/<ab>/<key>.json                 manifest: its existence commits the entry
//! <root>/quarantine/<nanos>-<key>-<token>/         defective entries moved aside, with reason.txt
//! <root>/records/<ab>/<pair key>.json              side records (GeNIe-Ada choices), replaced whole
//! <root>/tmp/                                      temporary files of writes in progress
//! <root>/gc.lock                                   held exclusively while gc runs
//! ```
//!
//! Only hex digits reach file names: keys, content hashes and random tokens, never a class name,
//! prompt or path.
//!
//! # Commit protocol
//!
//! 1. The content goes into a unique temporary file in `tmp/`, is fsynced, and is renamed to a
//!    content name no other write uses (key, content hash prefix, random token). No manifest
//!    references it yet, so no reader can see it.
//! 2. The manifest goes into a temporary file, is fsynced, and is hard-linked to
//!    `manifests/<ab>/<key>.json`. `link(2)` refuses an existing name atomically (locally and on
//!    NFS), so exactly one writer commits: the first complete one. Losers delete their own
//!    content file, which nobody else can reference.
//! 3. Readers start from the manifest and verify the content's length and blake3, so they see a
//!    whole entry or none. Removal runs the protocol backwards: the manifest goes first.
//!
//! Writers need no lock. gc takes an exclusive lock on `gc.lock` so that two gcs do not race,
//! and otherwise relies on the same rules: it removes committed entries only (manifest first),
//! and temporary or unreferenced files only once they are older than a grace period.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::hash::BuildHasher;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use super::error::CacheError;
use super::key::CacheKey;
use super::manifest::{
    EntryMeta, Manifest, ManifestParseError, MANIFEST_FORMAT, MAX_MANIFEST_BYTES,
};
use super::record::MAX_RECORD_BYTES;
use super::store::{BadEntry, Defect, Lookup, ManifestScan, PutOutcome, Store, StoredEntry};
use super::{unix_nanos, unix_now};

/// Layout version written into the marker; a root with a newer one is refused.
pub const DISK_FORMAT: u32 = 1;

/// How long temporary and unreferenced content files are left alone by gc by default: far
/// longer than any write takes, so gc never deletes a file a live writer is about to commit.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(60 * 60);

/// How long gc waits for another holder of `gc.lock` before giving up. Not zero: a child
/// process forked by any thread of this process briefly shares the lock until it execs.
pub const GC_LOCK_WAIT: Duration = Duration::from_secs(2);

pub(super) const MARKER_FILE: &str = "genie-cache.json";
const MARKER_KIND: &str = "genie-cache";
pub(super) const OBJECTS_DIR: &str = "objects";
pub(super) const MANIFESTS_DIR: &str = "manifests";
pub(super) const QUARANTINE_DIR: &str = "quarantine";
const TMP_DIR: &str = "tmp";
/// Created on first use, so caches made before records existed open unchanged.
pub(super) const RECORDS_DIR: &str = "records";
const GC_LOCK_FILE: &str = "gc.lock";
/// The cache stores PNG bytes; the extension lets people open content files directly.
pub(super) const CONTENT_EXTENSION: &str = "png";
pub(super) const HASH_PREFIX_LEN: usize = 16;
const TOKEN_LEN: usize = 16;

/// A cache folder on a local or shared filesystem (see the module docs for layout and protocol).
///
/// The filesystem must support hard links and atomic renames within the folder (any local
/// Unix filesystem, NFS).
#[derive(Debug, Clone)]
pub struct DiskStore {
    /// Canonical: every path the store touches is checked to stay below it.
    root: PathBuf,
    objects: PathBuf,
    manifests: PathBuf,
    quarantine: PathBuf,
    tmp: PathBuf,
}

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

/// What `verify` found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Entries whose manifest and content were read.
    pub checked: u64,
    /// Entries that verified.
    pub ok: u64,
    /// Entries that did not, with why.
    pub bad: Vec<BadEntry>,
    /// Bad entries moved into `quarantine/` (only with `repair`).
    pub quarantined: u64,
    /// Manifests from a newer genie, neither judged nor touched.
    pub newer_format: u64,
}

/// Outcome of reading a file the cache owns, without following symlinks.
enum FileRead {
    Absent,
    Bytes(Vec<u8>),
    TooLong { len: u64 },
    Defective(Defect),
}

/// Outcome of reading a manifest file.
enum ManifestRead {
    Absent,
    Bytes(Vec<u8>),
    Defective(Defect),
}

/// Outcome of reading the content of a manifest that parsed.
enum ContentCheck {
    Valid(Vec<u8>),
    /// The content vanished together with its manifest (gc or quarantine ran meanwhile).
    Raced,
    Defective(Defect),
}

/// Outcome of checking one entry.
enum Checked {
    Valid(StoredEntry),
    Absent,
    Defective {
        /// The manifest bytes judged, so that removal can make sure it removes those.
        raw_manifest: Option<Vec<u8>>,
        manifest: Option<Manifest>,
        defect: Defect,
    },
}

/// What a manifest must still be for a removal to go ahead.
enum Expect<'a> {
    /// Whatever is there (a symlink or a folder where a manifest should be).
    Anything,
    Bytes(&'a [u8]),
    Manifest(&'a Manifest),
}

impl DiskStore {
    /// Opens the cache at `root`, creating it if needed.
    ///
    /// Refuses a root that is a file, a root whose marker is from a newer genie or is not a
    /// genie marker, and cache folders that are symlinks. The root itself may be a symlink
    /// (to put the cache on another disk).
    pub fn open(root: impl AsRef<Path>) -> Result<Self, CacheError> {
        let given = root.as_ref();
        match fs::metadata(given) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(CacheError::NotADirectory {
                    path: given.to_path_buf(),
                })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir_all(given)
                    .map_err(CacheError::io_at("create the cache folder", given))?;
            }
            Err(e) => return Err(CacheError::io("inspect the cache folder", given, e)),
        }
        let root = fs::canonicalize(given)
            .map_err(CacheError::io_at("resolve the cache folder", given))?;
        let marker_present = check_marker(&root)?;
        if !marker_present {
            refuse_foreign_content(&root)?;
        }
        let tmp = ensure_dir(&root, &root.join(TMP_DIR))?;
        if !marker_present {
            write_marker(&root, &tmp)?;
        }
        Ok(DiskStore {
            objects: ensure_dir(&root, &root.join(OBJECTS_DIR))?,
            manifests: ensure_dir(&root, &root.join(MANIFESTS_DIR))?,
            quarantine: ensure_dir(&root, &root.join(QUARANTINE_DIR))?,
            tmp,
            root,
        })
    }

    /// Opens an existing cache, refusing to create one: for maintenance commands, where a
    /// mistyped path should be an error rather than a new empty cache.
    pub fn open_existing(root: impl AsRef<Path>) -> Result<Self, CacheError> {
        let given = root.as_ref();
        match fs::metadata(given) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(CacheError::NotADirectory {
                    path: given.to_path_buf(),
                })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(CacheError::NotACache {
                    path: given.to_path_buf(),
                })
            }
            Err(e) => return Err(CacheError::io("inspect the cache folder", given, e)),
        }
        if !check_marker(given)? {
            return Err(CacheError::NotACache {
                path: given.to_path_buf(),
            });
        }
        Self::open(given)
    }

    /// The canonical cache folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

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

    /// Checks every committed entry (manifest and content). With `repair`, moves each bad one
    /// into `quarantine/`. Manifests from a newer genie are counted and left alone.
    pub fn verify(&self, repair: bool) -> Result<VerifyReport, CacheError> {
        self.verify_with(repair, |_| Ok(()))
    }

    /// [`verify`](Self::verify), and every entry whose bytes are intact must also pass
    /// `content_check` (e.g. [`check_image`](super::check_image): a PNG of the manifest's size);
    /// one that fails is a bad entry like any other. The store itself knows only bytes.
    pub fn verify_with(
        &self,
        repair: bool,
        content_check: impl Fn(&StoredEntry) -> Result<(), Defect>,
    ) -> Result<VerifyReport, CacheError> {
        let mut report = VerifyReport::default();
        for (key, path) in self.manifest_files()? {
            match self.check_entry(&key) {
                Ok(Checked::Valid(entry)) => {
                    report.checked += 1;
                    match content_check(&entry) {
                        Ok(()) => report.ok += 1,
                        Err(defect) => {
                            if repair && Store::quarantine(self, &entry.manifest, &defect)? {
                                report.quarantined += 1;
                            }
                            report.bad.push(BadEntry {
                                key: Some(key),
                                location: path.display().to_string(),
                                defect,
                            });
                        }
                    }
                }
                // Removed (by gc or a reader) while we listed: nothing to judge.
                Ok(Checked::Absent) => {}
                Ok(Checked::Defective {
                    raw_manifest,
                    manifest,
                    defect,
                }) => {
                    report.checked += 1;
                    if repair
                        && self.quarantine_entry(
                            &key,
                            raw_manifest.as_deref(),
                            manifest.as_ref(),
                            &defect,
                        )?
                    {
                        report.quarantined += 1;
                    }
                    report.bad.push(BadEntry {
                        key: Some(key),
                        location: path.display().to_string(),
                        defect,
                    });
                }
                Err(CacheError::FutureFormat { .. }) => report.newer_format += 1,
                Err(e) => return Err(e),
            }
        }
        Ok(report)
    }

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

    /// Reads and verifies one entry, judging without changing anything.
    fn check_entry(&self, key: &CacheKey) -> Result<Checked, CacheError> {
        let manifest_path = self.manifest_path(key);
        self.check_shard(&manifest_path)?;
        let raw = match self.read_manifest(&manifest_path)? {
            ManifestRead::Absent => return Ok(Checked::Absent),
            ManifestRead::Defective(defect) => {
                return Ok(Checked::Defective {
                    raw_manifest: None,
                    manifest: None,
                    defect,
                })
            }
            ManifestRead::Bytes(raw) => raw,
        };
        let manifest = match judge_manifest(key, &raw) {
            Ok(manifest) => manifest,
            Err(Judged::Future { found }) => {
                return Err(CacheError::FutureFormat {
                    path: manifest_path,
                    found,
                    supported: MANIFEST_FORMAT,
                })
            }
            Err(Judged::Defective(defect)) => {
                return Ok(Checked::Defective {
                    raw_manifest: Some(raw),
                    manifest: None,
                    defect,
                })
            }
        };
        Ok(
            match self.check_content(key, &manifest, &manifest_path, &raw)? {
                ContentCheck::Valid(content) => Checked::Valid(StoredEntry { manifest, content }),
                ContentCheck::Raced => Checked::Absent,
                ContentCheck::Defective(defect) => Checked::Defective {
                    raw_manifest: Some(raw),
                    manifest: Some(manifest),
                    defect,
                },
            },
        )
    }

    /// Reads the content `manifest` describes and verifies its length and blake3.
    fn check_content(
        &self,
        key: &CacheKey,
        manifest: &Manifest,
        manifest_path: &Path,
        raw_manifest: &[u8],
    ) -> Result<ContentCheck, CacheError> {
        let content_path = self.content_path(key, &manifest.content_file);
        self.check_shard(&content_path)?;
        let content = match self.read_owned_file(&content_path, manifest.content_len)? {
            FileRead::Bytes(content) => content,
            FileRead::Absent => {
                // gc and quarantine uncommit the manifest before removing content: if the
                // manifest is gone or different now, we raced with them; that is no damage.
                if !self.still_committed(manifest_path, raw_manifest)? {
                    return Ok(ContentCheck::Raced);
                }
                return Ok(ContentCheck::Defective(Defect::ContentMissing {
                    path: content_path,
                }));
            }
            FileRead::TooLong { len } => {
                return Ok(ContentCheck::Defective(Defect::LengthMismatch {
                    expected: manifest.content_len,
                    found: len,
                }))
            }
            FileRead::Defective(defect) => return Ok(ContentCheck::Defective(defect)),
        };
        let found_len = content.len() as u64;
        if found_len != manifest.content_len {
            return Ok(ContentCheck::Defective(Defect::LengthMismatch {
                expected: manifest.content_len,
                found: found_len,
            }));
        }
        let found = blake3::hash(&content);
        if manifest.content_hash() != Some(found) {
            return Ok(ContentCheck::Defective(Defect::HashMismatch {
                expected: manifest.content_blake3.clone(),
                found: found.to_hex().to_string(),
            }));
        }
        Ok(ContentCheck::Valid(content))
    }

    /// Reads a file the cache owns: no symlinks, no folders, at most `limit` bytes (a longer
    /// file is reported by its length, unread).
    fn read_owned_file(&self, path: &Path, limit: u64) -> Result<FileRead, CacheError> {
        let meta = match fs::symlink_metadata(path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(FileRead::Absent),
            Err(e) => return Err(CacheError::io("inspect", path, e)),
        };
        if meta.file_type().is_symlink() {
            return Ok(FileRead::Defective(self.symlink_defect(path)));
        }
        if !meta.is_file() {
            return Ok(FileRead::Defective(Defect::NotAFile {
                path: path.to_path_buf(),
            }));
        }
        if meta.len() > limit {
            return Ok(FileRead::TooLong { len: meta.len() });
        }
        // One file this process may not read (mode 000, another user's) is a defect of its entry,
        // reported and quarantined like any other, not an error that stops every command on
        // the whole cache.
        let unreadable = |e: io::Error| {
            FileRead::Defective(Defect::Unreadable {
                path: path.to_path_buf(),
                why: e.to_string(),
            })
        };
        let file = match crate::safe_open::open_regular(path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(FileRead::Absent),
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => return Ok(unreadable(e)),
            Err(e) => return Err(CacheError::io("open", path, e)),
        };
        let mut bytes = Vec::with_capacity(meta.len() as usize);
        match file.take(limit.saturating_add(1)).read_to_end(&mut bytes) {
            Ok(_) => Ok(FileRead::Bytes(bytes)),
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => Ok(unreadable(e)),
            Err(e) => Err(CacheError::io("read", path, e)),
        }
    }

    /// Reads a manifest file; one too long to be a manifest is defective.
    fn read_manifest(&self, path: &Path) -> Result<ManifestRead, CacheError> {
        Ok(match self.read_owned_file(path, MAX_MANIFEST_BYTES)? {
            FileRead::Absent => ManifestRead::Absent,
            FileRead::Bytes(raw) => ManifestRead::Bytes(raw),
            FileRead::TooLong { len } => ManifestRead::Defective(Defect::BadManifest(format!(
                "{len} bytes, larger than any manifest"
            ))),
            FileRead::Defective(defect) => ManifestRead::Defective(defect),
        })
    }

    /// Whether the manifest at `path` still holds exactly `raw`.
    fn still_committed(&self, path: &Path, raw: &[u8]) -> Result<bool, CacheError> {
        Ok(matches!(
            self.read_manifest(path)?,
            ManifestRead::Bytes(now) if now == raw
        ))
    }

    fn symlink_defect(&self, path: &Path) -> Defect {
        let target = fs::read_link(path).unwrap_or_default();
        Defect::Symlink {
            path: path.to_path_buf(),
            outside_root: !self.resolves_inside_root(path, &target),
            target,
        }
    }

    /// Whether the symlink at `link` (pointing at `target`) ends inside the root. A dangling
    /// link is judged by its text.
    fn resolves_inside_root(&self, link: &Path, target: &Path) -> bool {
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
    fn check_shard(&self, path: &Path) -> Result<(), CacheError> {
        match path.parent() {
            Some(shard) => self.check_shard_dir(shard),
            None => Ok(()),
        }
    }

    fn check_shard_dir(&self, shard: &Path) -> Result<(), CacheError> {
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
    fn ensure_shard(&self, base: &Path, key: &CacheKey) -> Result<PathBuf, CacheError> {
        ensure_dir(&self.root, &base.join(shard_dir_name(key)))
    }

    /// Writes `bytes` into a new temporary file, fsynced when `durable`; dropping the result
    /// removes it.
    fn write_temp(
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
    fn take_manifest(
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

    /// Moves a defective entry into a new folder under `quarantine/`; returns whether it did
    /// (false when the entry had already gone or been replaced).
    fn quarantine_entry(
        &self,
        key: &CacheKey,
        raw_manifest: Option<&[u8]>,
        manifest: Option<&Manifest>,
        defect: &Defect,
    ) -> Result<bool, CacheError> {
        let token = unique_token();
        let folder = self
            .quarantine
            .join(format!("{}-{key}-{}", unix_nanos(), &token[..8]));
        fs::create_dir(&folder).map_err(CacheError::io_at("create", &folder))?;
        let manifest_path = self.manifest_path(key);
        let expect = raw_manifest.map_or(Expect::Anything, Expect::Bytes);
        if !self.take_manifest(&manifest_path, &folder.join("manifest.json"), expect)? {
            let _ = fs::remove_dir_all(&folder);
            return Ok(false);
        }
        if let Some(manifest) = manifest {
            // The content name is unique to the write that made this manifest, so no other
            // entry can be using it.
            let content_path = self.content_path(key, &manifest.content_file);
            if self.check_shard(&content_path).is_ok() {
                match fs::rename(&content_path, folder.join(&manifest.content_file)) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => {
                        tracing::warn!(path = %content_path.display(), error = %e, "could not quarantine content")
                    }
                }
            }
        }
        // Best effort: the reason is for people inspecting the quarantine.
        let _ = fs::write(folder.join("reason.txt"), format!("{defect}\n"));
        if let Some(shard) = manifest_path.parent() {
            sync_dir(shard);
        }
        tracing::warn!(%key, %defect, quarantine = %folder.display(), "corrupt cache entry quarantined");
        Ok(true)
    }

    /// Removes a committed entry, manifest first, if it is still `manifest`.
    fn uncommit(&self, manifest: &Manifest) -> Result<bool, CacheError> {
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

    /// Every `manifests/<ab>/<key>.json` file, sorted by key. Files with other names (editor
    /// backups, NFS `.nfs*` placeholders) are not ours and are skipped.
    fn manifest_files(&self) -> Result<Vec<(CacheKey, PathBuf)>, CacheError> {
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
    fn shard_dirs(&self, base: &Path) -> Result<Vec<PathBuf>, CacheError> {
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

    /// Removes files in `tmp/` older than `grace`.
    fn sweep_temp_files(&self, grace: Duration) -> Result<u64, CacheError> {
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
    fn sweep_orphans(
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

    fn put(
        &self,
        key: &CacheKey,
        content: &[u8],
        meta: &EntryMeta,
    ) -> Result<PutOutcome, CacheError> {
        CacheError::check_content_len(key, content)?;
        let manifest_path = self.manifest_path(key);
        let manifest_shard = self.ensure_shard(&self.manifests, key)?;
        if self.contains(key)? {
            return Ok(PutOutcome::AlreadyPresent);
        }
        let content_hash = blake3::hash(content).to_hex();
        let content_file = format!(
            "{key}.{}.{}.{CONTENT_EXTENSION}",
            &content_hash[..HASH_PREFIX_LEN],
            unique_token()
        );
        let objects_shard = self.ensure_shard(&self.objects, key)?;
        let content_path = objects_shard.join(&content_file);

        let tmp_content = self.write_temp("content-", content, true)?;
        tmp_content
            .persist(&content_path)
            .map_err(|e| CacheError::io("move finished content to", &content_path, e.error))?;
        // Until the manifest commits, the content file is this write's alone: removed on any
        // failure and when another writer wins.
        let mut content_guard = RemoveOnDrop(Some(content_path));
        // The content's name must be durable before a manifest can point at it.
        sync_dir(&objects_shard);

        let manifest = Manifest {
            format: MANIFEST_FORMAT,
            key: *key,
            content_file,
            content_blake3: content_hash.to_string(),
            content_len: content.len() as u64,
            created_unix: unix_now(),
            meta: meta.clone(),
        };
        let json = manifest
            .to_json()
            .map_err(|source| CacheError::ManifestEncode { key: *key, source })?;
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

/// Why manifest bytes were not accepted for a key.
pub(super) enum Judged {
    Future { found: u32 },
    Defective(Defect),
}

/// Files the manifest bytes `raw` of `key` (found at `location`) into `scan`: usable, defective
/// or from a newer genie.
pub(super) fn scan_manifest(scan: &mut ManifestScan, key: CacheKey, location: String, raw: &[u8]) {
    match judge_manifest(&key, raw) {
        Ok(manifest) => scan.manifests.push(manifest),
        Err(Judged::Future { .. }) => scan.newer_format.push(location),
        Err(Judged::Defective(defect)) => scan.bad.push(BadEntry {
            key: Some(key),
            location,
            defect,
        }),
    }
}

/// Parses `raw` as the manifest of `key` and checks it names a content file of that key.
pub(super) fn judge_manifest(key: &CacheKey, raw: &[u8]) -> Result<Manifest, Judged> {
    let manifest = Manifest::parse(raw).map_err(|e| match e {
        ManifestParseError::Future { found } => Judged::Future { found },
        ManifestParseError::Invalid(why) => Judged::Defective(Defect::BadManifest(why)),
    })?;
    if manifest.key != *key {
        return Err(Judged::Defective(Defect::WrongKey {
            found: manifest.key,
        }));
    }
    // Also what keeps a hostile manifest from naming `../../etc/passwd`.
    if parse_content_name(&manifest.content_file) != Some(*key) {
        return Err(Judged::Defective(Defect::BadContentName(
            manifest.content_file.clone(),
        )));
    }
    Ok(manifest)
}

/// The key of a content file name `<key>.<hash16>.<token16>.png`, or `None` for any other name.
fn parse_content_name(name: &str) -> Option<CacheKey> {
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

pub(super) fn shard_dir_name(key: &CacheKey) -> String {
    key.to_hex()[..2].to_string()
}

/// 16 hex digits no other write (in any process, on any machine) will pick.
pub(super) fn unique_token() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = blake3::Hasher::new();
    hasher.update(&std::process::id().to_le_bytes());
    hasher.update(&unix_nanos().to_le_bytes());
    hasher.update(&COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    hasher.update(format!("{:?}", std::thread::current().id()).as_bytes());
    // RandomState is seeded from the OS's randomness: it separates machines on a shared
    // filesystem whose pids and clocks happen to agree.
    let random = std::collections::hash_map::RandomState::new().hash_one(0u8);
    hasher.update(&random.to_le_bytes());
    hasher.finalize().to_hex()[..TOKEN_LEN].to_string()
}

/// Creates `path` if missing; refuses a symlink or a non-folder there.
fn ensure_dir(root: &Path, path: &Path) -> Result<PathBuf, CacheError> {
    for _ in 0..2 {
        match fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_symlink() => {
                let target = fs::read_link(path).unwrap_or_default();
                let outside_root = !fs::canonicalize(path).is_ok_and(|p| p.starts_with(root));
                return Err(CacheError::Symlink {
                    path: path.to_path_buf(),
                    target,
                    outside_root,
                });
            }
            Ok(meta) if meta.is_dir() => return Ok(path.to_path_buf()),
            Ok(_) => {
                return Err(CacheError::NotADirectory {
                    path: path.to_path_buf(),
                })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => match fs::create_dir(path) {
                Ok(()) => return Ok(path.to_path_buf()),
                // Another process created it meanwhile: check what it is.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(CacheError::io("create", path, e)),
            },
            Err(e) => return Err(CacheError::io("inspect", path, e)),
        }
    }
    Err(CacheError::io(
        "create",
        path,
        io::Error::other("it keeps appearing and disappearing"),
    ))
}

/// Reads the marker if there is one: `Ok(false)` when absent, an error when it is not ours
/// or from a newer genie.
/// A folder without a marker becomes a cache only if it holds nothing but what a cache being
/// created leaves (a creation interrupted before its marker): `--cache` pointed at a folder of
/// images or a home folder by mistake is an error, not a cache that adopts and later gc's it.
fn refuse_foreign_content(root: &Path) -> Result<(), CacheError> {
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

fn check_marker(root: &Path) -> Result<bool, CacheError> {
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
pub(super) fn judge_marker(path: &Path, bytes: &[u8]) -> Result<(), CacheError> {
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
pub(super) fn marker_json() -> String {
    serde_json::json!({ "format": DISK_FORMAT, "kind": MARKER_KIND }).to_string()
}

/// Creates the marker if absent (create-if-absent, so concurrent openers agree), then checks it.
fn write_marker(root: &Path, tmp_dir: &Path) -> Result<(), CacheError> {
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

/// Takes an exclusive lock on `lock`, waiting at most [`GC_LOCK_WAIT`].
fn lock_exclusively(lock: &File, path: &Path) -> Result<(), CacheError> {
    match crate::sync::lock_file_within(lock, GC_LOCK_WAIT) {
        Ok(true) => Ok(()),
        Ok(false) => Err(CacheError::GcBusy {
            path: path.to_path_buf(),
        }),
        Err(e) => Err(CacheError::io("lock", path, e)),
    }
}

fn read_dir(dir: &Path) -> Result<Vec<fs::DirEntry>, CacheError> {
    fs::read_dir(dir)
        .and_then(|entries| entries.collect::<io::Result<Vec<_>>>())
        .map_err(CacheError::io_at("list", dir))
}

/// Whether `path` is a plain file (or a stray symlink) last modified longer than `grace` ago.
/// A modification time in the future (clock skew on a shared filesystem) is never stale.
fn is_stale_file(path: &Path, grace: Duration) -> bool {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return false;
    };
    let age = meta
        .modified()
        .ok()
        .and_then(|modified| SystemTime::now().duration_since(modified).ok());
    !meta.is_dir() && age.is_some_and(|age| age > grace)
}

fn remove_if_present(path: &Path) {
    if let Err(e) = fs::remove_file(path) {
        if e.kind() != io::ErrorKind::NotFound {
            tracing::debug!(path = %path.display(), error = %e, "could not remove a cache file");
        }
    }
}

/// Whether two paths name the same file (same device and inode).
fn same_file(a: &Path, b: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        match (fs::metadata(a), fs::metadata(b)) {
            (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
            _ => false,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (a, b);
        false
    }
}

/// fsyncs a folder so that names created in it survive a crash. Best effort: some filesystems
/// refuse to fsync folders, and then only crash durability (never consistency) is weaker.
fn sync_dir(dir: &Path) {
    #[cfg(unix)]
    if let Err(e) = File::open(dir).and_then(|d| d.sync_all()) {
        tracing::debug!(path = %dir.display(), error = %e, "could not fsync a cache folder");
    }
    #[cfg(not(unix))]
    let _ = dir;
}

/// Removes a file when dropped, unless disarmed by taking the path out.
struct RemoveOnDrop(Option<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            remove_if_present(&path);
        }
    }
}

fn write_fully(file: &mut File, bytes: &[u8]) -> io::Result<()> {
    #[cfg(test)]
    faults::before_write()?;
    file.write_all(bytes)
}

/// Test-only fault injection: makes the n-th write on this thread fail, as a full disk would.
#[cfg(test)]
mod faults {
    use std::cell::Cell;
    use std::io;

    thread_local! {
        static FAIL_AFTER: Cell<Option<(u32, io::ErrorKind)>> = const { Cell::new(None) };
    }

    /// Lets `writes_before` writes succeed, then fails the next one with `kind`.
    pub fn fail_write_after(writes_before: u32, kind: io::ErrorKind) {
        FAIL_AFTER.with(|f| f.set(Some((writes_before, kind))));
    }

    pub fn before_write() -> io::Result<()> {
        FAIL_AFTER.with(|f| match f.get() {
            Some((0, kind)) => {
                f.set(None);
                Err(io::Error::from(kind))
            }
            Some((n, kind)) => {
                f.set(Some((n - 1, kind)));
                Ok(())
            }
            None => Ok(()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{EngineFingerprint, NoiseLevel};

    /// Two processes creating one cache: the marker the other wrote after this one looked is not
    /// foreign content; anything else still is.
    #[test]
    fn a_marker_written_meanwhile_is_not_foreign_content() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join(TMP_DIR)).unwrap();
        fs::write(dir.path().join(MARKER_FILE), marker_json()).unwrap();
        refuse_foreign_content(dir.path()).unwrap();
        fs::write(dir.path().join("holiday.jpg"), b"x").unwrap();
        assert!(matches!(
            refuse_foreign_content(dir.path()),
            Err(CacheError::NotEmpty { .. })
        ));
    }

    fn meta() -> EntryMeta {
        EntryMeta {
            target: "cat".into(),
            prompt: "a photo of a cat.".into(),
            level: NoiseLevel::GENIE_DEFAULT,
            seed: 1,
            source: None,
            fingerprint: EngineFingerprint {
                model: "m".into(),
                scheduler: "ddim".into(),
                steps: 10,
                guidance: "7.5".into(),
                resolution: 64,
                dtype: "f32".into(),
                algorithm_version: 1,
            },
            width: 64,
            height: 64,
        }
    }

    fn files_under(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for entry in fs::read_dir(dir).expect("list") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                out.extend(files_under(&path));
            } else {
                out.push(path);
            }
        }
        out
    }

    #[test]
    fn a_full_disk_while_writing_content_or_manifest_leaves_nothing_behind() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = DiskStore::open(dir.path()).expect("open");
        let key = CacheKey::from_bytes([1; 32]);
        // Write 0 is the content, write 1 the manifest.
        for writes_before in [0, 1] {
            faults::fail_write_after(writes_before, io::ErrorKind::StorageFull);
            let err = store
                .put(&key, b"some content", &meta())
                .expect_err("the write must fail");
            assert!(matches!(err, CacheError::DiskFull { .. }), "{err:?}");
            assert!(
                err.to_string().contains(&*store.tmp.to_string_lossy()),
                "{err}"
            );
            assert_eq!(store.get(&key).expect("get"), Lookup::Miss);
            assert!(files_under(&store.tmp).is_empty(), "temporary files left");
            assert!(files_under(&store.objects).is_empty(), "content left");
            assert!(files_under(&store.manifests).is_empty(), "manifest left");
        }
        assert_eq!(
            store.put(&key, b"some content", &meta()).expect("put"),
            PutOutcome::Stored
        );
    }

    #[test]
    fn content_names_are_recognised_exactly() {
        let key = CacheKey::from_bytes([0xab; 32]);
        let good = format!("{key}.0123456789abcdef.fedcba9876543210.png");
        assert_eq!(parse_content_name(&good), Some(key));
        for bad in [
            format!("{key}.0123456789abcdef.png"),
            format!("{key}.0123456789ABCDEF.fedcba9876543210.png"),
            format!("{key}.0123456789abcdef.fedcba9876543210.png.tmp"),
            format!("{key}.0123456789abcdef.fedcba9876543210.x.png"),
            format!("../{key}.0123456789abcdef.fedcba9876543210.png"),
            "../../etc/passwd".to_string(),
        ] {
            assert_eq!(parse_content_name(&bad), None, "{bad}");
        }
    }

    #[test]
    fn tokens_are_unique() {
        let tokens: HashSet<String> = (0..1000).map(|_| unique_token()).collect();
        assert_eq!(tokens.len(), 1000);
    }
}
