//! Reading entries back (never following a symlink), checking them against their manifests
//! (`genie cache verify`), and moving defective ones to quarantine.

use std::fs;
use std::io::{self, Read};
use std::path::Path;

use super::files::sync_dir;
use super::layout::parse_content_name;
use super::DiskStore;
use crate::cache::clock::unique_token;
use crate::cache::error::CacheError;
use crate::cache::key::CacheKey;
use crate::cache::manifest::{Manifest, ManifestParseError, MANIFEST_FORMAT, MAX_MANIFEST_BYTES};
use crate::cache::store::{BadEntry, Defect, ManifestScan, Store, StoredEntry};
use crate::cache::unix_nanos;

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

/// Outcome of reading the content of a manifest that parsed.
pub(super) enum ContentCheck {
    Valid(Vec<u8>),
    /// The content vanished together with its manifest (gc or quarantine ran meanwhile).
    Raced,
    Defective(Defect),
}

/// Outcome of checking one entry.
pub(super) enum Checked {
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
pub(super) enum Expect<'a> {
    /// Whatever is there (a symlink or a folder where a manifest should be).
    Anything,
    Bytes(&'a [u8]),
    Manifest(&'a Manifest),
}

/// Why manifest bytes were not accepted for a key.
pub(in crate::cache) enum Judged {
    Future { found: u32 },
    Defective(Defect),
}

/// Files the manifest bytes `raw` of `key` (found at `location`) into `scan`: usable, defective
/// or from a newer genie.
pub(in crate::cache) fn scan_manifest(
    scan: &mut ManifestScan,
    key: CacheKey,
    location: String,
    raw: &[u8],
) {
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
pub(in crate::cache) fn judge_manifest(key: &CacheKey, raw: &[u8]) -> Result<Manifest, Judged> {
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

impl DiskStore {
    /// Checks every committed entry (manifest and content). With `repair`, moves each bad one
    /// into `quarantine/`. Manifests from a newer genie are counted and left alone.
    pub fn verify(&self, repair: bool) -> Result<VerifyReport, CacheError> {
        self.verify_with(repair, |_| Ok(()))
    }

    /// [`verify`](Self::verify), and every entry whose bytes are intact must also pass
    /// `content_check` (e.g. [`check_image`](crate::cache::check_image): a PNG of the manifest's size);
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

    /// Reads and verifies one entry, judging without changing anything.
    pub(super) fn check_entry(&self, key: &CacheKey) -> Result<Checked, CacheError> {
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
    pub(super) fn check_content(
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

    /// Moves a defective entry into a new folder under `quarantine/`; returns whether it did
    /// (false when the entry had already gone or been replaced).
    pub(super) fn quarantine_entry(
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
}

/// Outcome of reading a file the cache owns, without following symlinks.
pub(super) enum FileRead {
    Absent,
    Bytes(Vec<u8>),
    TooLong { len: u64 },
    Defective(Defect),
}

/// Outcome of reading a manifest file.
pub(super) enum ManifestRead {
    Absent,
    Bytes(Vec<u8>),
    Defective(Defect),
}

impl DiskStore {
    /// Reads a file the cache owns: no symlinks, no folders, at most `limit` bytes (a longer
    /// file is reported by its length, unread).
    pub(super) fn read_owned_file(&self, path: &Path, limit: u64) -> Result<FileRead, CacheError> {
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
    pub(super) fn read_manifest(&self, path: &Path) -> Result<ManifestRead, CacheError> {
        Ok(match self.read_owned_file(path, MAX_MANIFEST_BYTES)? {
            FileRead::Absent => ManifestRead::Absent,
            FileRead::Bytes(raw) => ManifestRead::Bytes(raw),
            FileRead::TooLong { len } => ManifestRead::Defective(Defect::BadManifest(format!(
                "{len} bytes, larger than any manifest"
            ))),
            FileRead::Defective(defect) => ManifestRead::Defective(defect),
        })
    }
}
