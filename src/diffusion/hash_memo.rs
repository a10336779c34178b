//! Model files' blake3 hashes remembered across processes, so that a start does not re-read
//! gigabytes of weights to name the engine.
//!
//! A small JSON file in genie's home (`$GENIE_HOME/file-hashes.json`) maps a file's canonical
//! path to its hash and to what identifies that content on disk: size, modification time, change
//! time (which no user tool can set back), device and inode. Any of them changing makes the file
//! hashed again. The memo is an optimisation only: a memo that cannot be read, parsed or written
//! is ignored (and rewritten), never an error; `GENIE_HASH_MEMO=0` turns it off.

use std::collections::BTreeMap;
use std::fs::Metadata;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Memo entries kept at most: the oldest-looking go first (a user's model folders are few).
const MAX_ENTRIES: usize = 512;
const FILE_NAME: &str = "file-hashes.json";
const VERSION: u32 = 1;

/// What identifies a file's content on disk without reading it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Stamp {
    len: u64,
    modified_ns: i64,
    changed_ns: i64,
    dev: u64,
    ino: u64,
}

impl Stamp {
    /// `None` where the platform does not give the times (the memo is then not used).
    pub(crate) fn of(meta: &Metadata) -> Option<Stamp> {
        let ns = |t: std::time::SystemTime| -> Option<i64> {
            match t.duration_since(std::time::UNIX_EPOCH) {
                Ok(d) => i64::try_from(d.as_nanos()).ok(),
                Err(e) => i64::try_from(e.duration().as_nanos()).ok().map(|n| -n),
            }
        };
        let modified_ns = ns(meta.modified().ok()?)?;
        #[cfg(unix)]
        let (changed_ns, dev, ino) = {
            use std::os::unix::fs::MetadataExt;
            (
                meta.ctime()
                    .saturating_mul(1_000_000_000)
                    .saturating_add(meta.ctime_nsec()),
                meta.dev(),
                meta.ino(),
            )
        };
        #[cfg(not(unix))]
        let (changed_ns, dev, ino) = (modified_ns, 0, 0);
        Some(Stamp {
            len: meta.len(),
            modified_ns,
            changed_ns,
            dev,
            ino,
        })
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    stamp: Stamp,
    blake3: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Memo {
    version: u32,
    files: BTreeMap<PathBuf, Entry>,
}

/// Where the memo lives, or `None` when it is turned off.
fn memo_path() -> Option<PathBuf> {
    if std::env::var_os("GENIE_HASH_MEMO").is_some_and(|v| v == "0") {
        return None;
    }
    Some(super::tiny::genie_home().join(FILE_NAME))
}

fn load(path: &Path) -> Memo {
    // Bounded read: the memo is small; anything larger is not ours to parse.
    let read = || -> Option<Memo> {
        let file = crate::safe_open::open_regular(path).ok()?;
        let meta = file.metadata().ok()?;
        if meta.len() > 4 << 20 {
            return None;
        }
        let memo: Memo = serde_json::from_reader(std::io::BufReader::new(file)).ok()?;
        (memo.version == VERSION).then_some(memo)
    };
    read().unwrap_or(Memo {
        version: VERSION,
        files: BTreeMap::new(),
    })
}

/// The remembered hash of `file` if its stamp is unchanged.
pub(crate) fn recall(file: &Path, stamp: &Stamp) -> Option<blake3::Hash> {
    recall_in(&memo_path()?, file, stamp)
}

/// Remembers `hash` for `file` with `stamp`; failures are logged and otherwise ignored.
pub(crate) fn remember(file: &Path, stamp: &Stamp, hash: &blake3::Hash) {
    if let Some(path) = memo_path() {
        remember_in(&path, file, stamp, hash);
    }
}

fn recall_in(path: &Path, file: &Path, stamp: &Stamp) -> Option<blake3::Hash> {
    let key = std::fs::canonicalize(file).ok()?;
    let memo = load(path);
    let entry = memo.files.get(&key)?;
    if &entry.stamp != stamp {
        return None;
    }
    blake3::Hash::from_hex(&entry.blake3).ok()
}

fn remember_in(path: &Path, file: &Path, stamp: &Stamp, hash: &blake3::Hash) {
    let Ok(key) = std::fs::canonicalize(file) else {
        return;
    };
    // Read-modify-write under a lock, in this process (components hash on several threads) and
    // across processes (a lock file next to the memo; a lock not had within a second is skipped:
    // the entry is then only not remembered).
    static IN_PROCESS: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _held = crate::sync::lock(&IN_PROCESS);
    let _file_lock = match lock_file(path) {
        Ok(lock) => lock,
        Err(e) => {
            tracing::debug!("file-hash memo not updated: {e}");
            return;
        }
    };
    let mut memo = load(path);
    memo.files.insert(
        key,
        Entry {
            stamp: stamp.clone(),
            blake3: hash.to_hex().to_string(),
        },
    );
    while memo.files.len() > MAX_ENTRIES {
        let oldest = memo
            .files
            .iter()
            .min_by_key(|(_, e)| e.stamp.changed_ns)
            .map(|(k, _)| k.clone());
        match oldest {
            Some(k) => memo.files.remove(&k),
            None => break,
        };
    }
    if let Err(e) = save(path, &memo) {
        tracing::debug!("cannot write the file-hash memo {}: {e}", path.display());
    }
}

/// An exclusive lock on `<memo>.lock`, released when the returned file is dropped.
fn lock_file(path: &Path) -> std::io::Result<std::fs::File> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path.with_extension("lock"))?;
    if crate::sync::lock_file_within(&lock, std::time::Duration::from_secs(1))? {
        Ok(lock)
    } else {
        Err(std::io::Error::new(
            std::io::ErrorKind::WouldBlock,
            "another process holds the memo's lock",
        ))
    }
}

/// Writes the memo through a temporary file and a rename, so a reader never sees half of it and
/// concurrent writers lose at most each other's newest entry.
fn save(path: &Path, memo: &Memo) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    serde_json::to_writer(std::io::BufWriter::new(tmp.as_file_mut()), memo)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_until_the_file_changes_and_survives_a_corrupt_memo() {
        let dir = tempfile::tempdir().unwrap();
        let memo = dir.path().join("home").join(FILE_NAME);
        let file = dir.path().join("weights.bin");
        std::fs::write(&file, b"weights").unwrap();
        let stamp = Stamp::of(&std::fs::metadata(&file).unwrap()).unwrap();
        let hash = blake3::hash(b"weights");

        assert_eq!(recall_in(&memo, &file, &stamp), None);
        remember_in(&memo, &file, &stamp, &hash);
        assert_eq!(recall_in(&memo, &file, &stamp), Some(hash));
        // Another spelling of the same file finds the same entry.
        let dotted = dir.path().join(".").join("weights.bin");
        assert_eq!(recall_in(&memo, &dotted, &stamp), Some(hash));

        std::fs::write(&file, b"other!!").unwrap();
        let changed = Stamp::of(&std::fs::metadata(&file).unwrap()).unwrap();
        assert_ne!(changed, stamp, "rewriting a file changes its stamp");
        assert_eq!(recall_in(&memo, &file, &changed), None);

        std::fs::write(&memo, b"{not json").unwrap();
        assert_eq!(recall_in(&memo, &file, &changed), None);
        remember_in(&memo, &file, &changed, &hash);
        assert_eq!(recall_in(&memo, &file, &changed), Some(hash));
    }

    #[test]
    fn files_hashed_on_several_threads_are_all_remembered() {
        let dir = tempfile::tempdir().unwrap();
        let memo = dir.path().join(FILE_NAME);
        let files: Vec<PathBuf> = (0..8)
            .map(|i| {
                let f = dir.path().join(format!("part{i}.bin"));
                std::fs::write(&f, format!("part {i}")).unwrap();
                f
            })
            .collect();
        std::thread::scope(|s| {
            for f in &files {
                let memo = &memo;
                s.spawn(move || {
                    let stamp = Stamp::of(&std::fs::metadata(f).unwrap()).unwrap();
                    remember_in(
                        memo,
                        f,
                        &stamp,
                        &blake3::hash(f.to_str().unwrap().as_bytes()),
                    );
                });
            }
        });
        for f in &files {
            let stamp = Stamp::of(&std::fs::metadata(f).unwrap()).unwrap();
            assert_eq!(
                recall_in(&memo, f, &stamp),
                Some(blake3::hash(f.to_str().unwrap().as_bytes())),
                "{}",
                f.display()
            );
        }
    }

    #[test]
    fn the_memo_keeps_a_bounded_number_of_files() {
        let dir = tempfile::tempdir().unwrap();
        let memo_file = dir.path().join(FILE_NAME);
        let mut memo = Memo {
            version: VERSION,
            files: BTreeMap::new(),
        };
        for i in 0..MAX_ENTRIES + 10 {
            memo.files.insert(
                PathBuf::from(format!("/models/{i}")),
                Entry {
                    stamp: Stamp {
                        len: 1,
                        modified_ns: 0,
                        changed_ns: i as i64,
                        dev: 0,
                        ino: 0,
                    },
                    blake3: blake3::hash(b"x").to_hex().to_string(),
                },
            );
        }
        save(&memo_file, &memo).unwrap();
        let file = dir.path().join("new.bin");
        std::fs::write(&file, b"new").unwrap();
        let stamp = Stamp::of(&std::fs::metadata(&file).unwrap()).unwrap();
        remember_in(&memo_file, &file, &stamp, &blake3::hash(b"new"));
        let kept = load(&memo_file);
        assert_eq!(kept.files.len(), MAX_ENTRIES);
        assert!(!kept.files.contains_key(Path::new("/models/0")));
        assert_eq!(
            recall_in(&memo_file, &file, &stamp),
            Some(blake3::hash(b"new"))
        );
    }
}
