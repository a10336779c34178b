//! Damaged and hostile caches: flipped, truncated and garbled entries are detected, quarantined and reported; hostile layouts get clear errors; gc removes the right entries.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::support::{content, files_under, key, meta, Rng};
use genie::cache::{
    CacheError, CacheKey, Defect, DiskStore, GcPolicy, Lookup, MemoryStore, PutOutcome, Store,
    MANIFEST_FORMAT,
};

const ENTRY_LEN: usize = 4096;

fn entry_content(n: u64) -> Vec<u8> {
    content(n, ENTRY_LEN + n as usize)
}

/// A store holding entries `0..count`.
/// A disk store in `cache/` of a new temporary folder, with `count` entries.
fn filled_in_tempdir(count: u64) -> (tempfile::TempDir, DiskStore) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = filled_store(&dir.path().join("cache"), count);
    (dir, store)
}

fn filled_store(dir: &Path, count: u64) -> DiskStore {
    let store = DiskStore::open(dir).expect("open");
    for n in 0..count {
        let outcome = store
            .put(&key(n), &entry_content(n), &meta("corruption", n))
            .expect("put");
        assert_eq!(outcome, PutOutcome::Stored);
    }
    store
}

fn content_path(store: &DiskStore, k: &CacheKey) -> PathBuf {
    let manifest = store
        .get(k)
        .expect("get")
        .into_entry()
        .expect("entry is intact before we damage it")
        .manifest;
    store.content_path(k, &manifest.content_file)
}

fn quarantined_folders(store: &DiskStore) -> Vec<PathBuf> {
    let mut folders: Vec<PathBuf> = fs::read_dir(store.quarantine_dir())
        .expect("list quarantine")
        .map(|e| e.expect("entry").path())
        .collect();
    folders.sort();
    folders
}

#[derive(Clone, Copy, Debug)]
enum Damage {
    FlipContentByte,
    TruncateContent,
    ExtendContent,
    DeleteContent,
    GarbleManifest,
    TruncateManifest,
    EmptyManifest,
    ManifestBecomesFolder,
}

/// Rewrites the file at `path` with `edit` applied to its bytes.
fn rewrite(path: &Path, edit: impl FnOnce(&mut Vec<u8>)) {
    let mut bytes = fs::read(path).expect("read");
    edit(&mut bytes);
    fs::write(path, bytes).expect("write");
}

/// Cuts the file at `path` to the length `keep` picks from its length.
fn truncate(path: &Path, keep: impl FnOnce(u64) -> u64) {
    let len = fs::metadata(path).expect("stat").len();
    File::options()
        .write(true)
        .open(path)
        .and_then(|f| f.set_len(keep(len)))
        .expect("truncate");
}

fn damage(store: &DiskStore, k: &CacheKey, how: Damage, rng: &mut Rng) {
    let content = content_path(store, k);
    let manifest = store.manifest_path(k);
    match how {
        Damage::FlipContentByte => rewrite(&content, |bytes| {
            let at = rng.below(bytes.len() as u64) as usize;
            bytes[at] ^= 1 << rng.below(8);
        }),
        Damage::TruncateContent => truncate(&content, |len| rng.below(len)),
        Damage::ExtendContent => rewrite(&content, |bytes| bytes.push(0)),
        Damage::DeleteContent => fs::remove_file(&content).expect("delete content"),
        Damage::GarbleManifest => rewrite(&manifest, |bytes| {
            for _ in 0..8 {
                let at = rng.below(bytes.len() as u64) as usize;
                bytes[at] = b"{}\"\\,:x\0"[rng.below(8) as usize];
            }
            // Guarantee the result cannot parse, whatever the random edits did.
            bytes.insert(0, b'#');
        }),
        Damage::TruncateManifest => truncate(&manifest, |len| 1 + rng.below(len - 1)),
        Damage::EmptyManifest => fs::write(&manifest, b"").expect("empty manifest"),
        Damage::ManifestBecomesFolder => {
            fs::remove_file(&manifest).expect("remove manifest");
            fs::create_dir(&manifest).expect("folder in its place");
        }
    }
}

#[test]
fn verify_reports_and_repair_quarantines_every_damaged_entry() {
    const COUNT: u64 = 40;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = filled_store(dir.path(), COUNT);
    let mut rng = Rng::new(77);
    let mut victims: Vec<u64> = (0..COUNT).collect();
    rng.shuffle(&mut victims);
    let plan = [
        Damage::FlipContentByte,
        Damage::FlipContentByte,
        Damage::FlipContentByte,
        Damage::FlipContentByte,
        Damage::TruncateContent,
        Damage::TruncateContent,
        Damage::TruncateContent,
        Damage::ExtendContent,
        Damage::DeleteContent,
        Damage::GarbleManifest,
        Damage::GarbleManifest,
        Damage::TruncateManifest,
        Damage::TruncateManifest,
        Damage::EmptyManifest,
        Damage::ManifestBecomesFolder,
    ];
    let damaged: BTreeSet<CacheKey> = victims
        .iter()
        .zip(plan)
        .map(|(&n, how)| {
            damage(&store, &key(n), how, &mut rng);
            key(n)
        })
        .collect();
    let bad_count = damaged.len() as u64;

    let report = store.verify(false).expect("verify");
    let reported: BTreeSet<CacheKey> = report.bad.iter().filter_map(|b| b.key).collect();
    assert_eq!(reported, damaged, "{:#?}", report.bad);
    assert_eq!(report.ok, COUNT - bad_count);
    assert_eq!(report.quarantined, 0);
    assert!(
        quarantined_folders(&store).is_empty(),
        "verify without repair moved files"
    );
    assert!(report
        .bad
        .iter()
        .any(|b| matches!(b.defect, Defect::HashMismatch { .. })));
    assert!(report
        .bad
        .iter()
        .any(|b| matches!(b.defect, Defect::LengthMismatch { .. })));
    assert!(report
        .bad
        .iter()
        .any(|b| matches!(b.defect, Defect::BadManifest(_))));

    let report = store.verify(true).expect("verify and repair");
    assert_eq!(report.bad.len() as u64, bad_count);
    assert_eq!(report.quarantined, bad_count);
    let folders = quarantined_folders(&store);
    assert_eq!(folders.len() as u64, bad_count);
    for folder in &folders {
        let reason = fs::read_to_string(folder.join("reason.txt")).expect("reason.txt");
        assert!(!reason.trim().is_empty());
    }

    for n in 0..COUNT {
        match store.get(&key(n)).expect("get") {
            Lookup::Hit(entry) => {
                assert!(!damaged.contains(&key(n)), "damaged entry {n} served");
                assert!(entry.content == entry_content(n));
            }
            Lookup::Miss => assert!(damaged.contains(&key(n)), "intact entry {n} lost"),
            Lookup::Corrupt(bad) => panic!("repair left a corrupt entry: {bad:?}"),
        }
    }
    let report = store.verify(false).expect("verify after repair");
    assert_eq!((report.ok, report.bad.len()), (COUNT - bad_count, 0));

    // The caller regenerates: the keys are free again.
    for k in &damaged {
        let n = (0..COUNT).find(|&n| key(n) == *k).expect("known key");
        assert_eq!(
            store
                .put(k, &entry_content(n), &meta("corruption", n))
                .expect("put"),
            PutOutcome::Stored
        );
    }
    assert_eq!(store.verify(false).expect("verify").ok, COUNT);
}

#[test]
fn get_quarantines_a_damaged_entry_on_first_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = filled_store(dir.path(), 3);
    let k = key(1);
    let content = content_path(&store, &k);
    damage(&store, &k, Damage::FlipContentByte, &mut Rng::new(1));

    match store.get(&k).expect("get") {
        Lookup::Corrupt(bad) => {
            assert_eq!(bad.key, Some(k));
            assert!(matches!(bad.defect, Defect::HashMismatch { .. }), "{bad:?}");
        }
        other => panic!("expected a corrupt entry, got {other:?}"),
    }
    assert_eq!(store.get(&k).expect("get"), Lookup::Miss);
    assert!(!content.exists(), "the damaged content stayed in objects/");
    let folders = quarantined_folders(&store);
    assert_eq!(folders.len(), 1);
    let held: Vec<String> = files_under(&folders[0])
        .iter()
        .filter_map(|p| p.file_name()?.to_str().map(str::to_string))
        .collect();
    assert!(held.contains(&"manifest.json".to_string()), "{held:?}");
    assert!(held.contains(&"reason.txt".to_string()), "{held:?}");
    assert!(held.iter().any(|name| name.ends_with(".png")), "{held:?}");
    // Neighbours are untouched.
    assert!(store.get(&key(0)).expect("get").is_hit());
    assert!(store.get(&key(2)).expect("get").is_hit());
}

#[test]
fn a_root_that_is_a_file_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("cache");
    fs::write(&file, b"not a folder").expect("write");
    let err = DiskStore::open(&file).expect_err("a file is not a cache");
    assert!(matches!(err, CacheError::NotADirectory { .. }), "{err:?}");
    assert!(err.to_string().contains(&*file.to_string_lossy()), "{err}");
    assert!(matches!(
        DiskStore::open_existing(&file),
        Err(CacheError::NotADirectory { .. })
    ));
    // A cache's own folder replaced by a file is refused just as clearly.
    let root = dir.path().join("real");
    DiskStore::open(&root).expect("create");
    fs::remove_dir(root.join("quarantine")).expect("remove quarantine/");
    fs::write(root.join("quarantine"), b"").expect("file in its place");
    assert!(matches!(
        DiskStore::open(&root),
        Err(CacheError::NotADirectory { .. })
    ));
}

#[test]
fn open_existing_refuses_missing_and_unmarked_folders() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("missing");
    assert!(matches!(
        DiskStore::open_existing(&missing),
        Err(CacheError::NotACache { .. })
    ));
    assert!(!missing.exists(), "open_existing must not create anything");
    assert!(matches!(
        DiskStore::open_existing(dir.path()),
        Err(CacheError::NotACache { .. })
    ));
    DiskStore::open(dir.path()).expect("create");
    DiskStore::open_existing(dir.path()).expect("now it is a cache");
}

#[test]
fn newer_formats_are_clear_errors_and_are_left_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = filled_store(dir.path(), 2);
    let k = key(0);
    let manifest_path = store.manifest_path(&k);
    let mut value: serde_json::Value =
        serde_json::from_slice(&fs::read(&manifest_path).expect("read")).expect("json");
    value["format"] = 99.into();
    value["something_new"] = "from the future".into();
    fs::write(&manifest_path, serde_json::to_vec(&value).expect("json")).expect("write");

    let err = store.get(&k).expect_err("a future manifest is an error");
    match &err {
        CacheError::FutureFormat {
            path,
            found,
            supported,
        } => {
            assert_eq!((*found, *supported), (99, MANIFEST_FORMAT));
            assert_eq!(path, &manifest_path);
        }
        other => panic!("expected FutureFormat, got {other:?}"),
    }
    assert!(err.to_string().contains("newer genie"), "{err}");
    let report = store.verify(true).expect("verify");
    assert_eq!(
        (report.newer_format, report.quarantined, report.ok),
        (1, 0, 1)
    );
    assert!(
        manifest_path.exists(),
        "a newer entry must not be quarantined"
    );
    assert_eq!(store.manifests().expect("scan").newer_format.len(), 1);
    let stats = store.stats().expect("stats");
    assert_eq!(
        (
            stats.entries,
            stats.newer_format_manifests,
            stats.unusable_manifests
        ),
        (1, 1, 0)
    );
    let report = store
        .gc(&GcPolicy {
            max_bytes: Some(0),
            max_age: None,
        })
        .expect("gc");
    assert_eq!((report.removed_entries, report.skipped_manifests), (1, 1));
    assert!(
        manifest_path.exists(),
        "gc must not remove what it cannot read"
    );
    // A garbage manifest is not silently left out of the statistics: it is counted as unusable.
    let garbage = store.manifest_path(&key(1));
    fs::create_dir_all(garbage.parent().expect("shard folder")).expect("shard folder");
    fs::write(&garbage, b"#garbage").expect("write garbage");
    let stats = store.stats().expect("stats");
    assert_eq!(
        (
            stats.entries,
            stats.newer_format_manifests,
            stats.unusable_manifests
        ),
        (0, 1, 1)
    );

    // The whole folder from a newer genie is refused at open.
    let marker = dir.path().join("genie-cache.json");
    fs::write(&marker, br#"{"format": 7, "kind": "genie-cache"}"#).expect("write marker");
    let err = DiskStore::open(dir.path()).expect_err("future layout");
    assert!(
        matches!(err, CacheError::FutureFormat { found: 7, .. }),
        "{err:?}"
    );
    fs::write(&marker, b"garbage").expect("write marker");
    assert!(matches!(
        DiskStore::open(dir.path()),
        Err(CacheError::BadMarker { .. })
    ));
}

#[cfg(unix)]
#[test]
fn a_content_symlink_to_a_file_outside_the_root_is_not_served() {
    let (dir, store) = filled_in_tempdir(2);
    let k = key(0);
    let content = content_path(&store, &k);
    // The outside file even holds the right bytes: the link alone must be refused.
    let outside = dir.path().join("secret.png");
    fs::write(&outside, entry_content(0)).expect("write outside file");
    fs::remove_file(&content).expect("remove content");
    std::os::unix::fs::symlink(&outside, &content).expect("symlink");

    match store.get(&k).expect("get") {
        Lookup::Corrupt(bad) => match bad.defect {
            Defect::Symlink {
                outside_root,
                target,
                ..
            } => {
                assert!(outside_root);
                assert_eq!(target, outside);
            }
            other => panic!("expected a symlink defect, got {other:?}"),
        },
        other => panic!("a symlinked content file was served: {other:?}"),
    }
    assert_eq!(
        fs::read(&outside).expect("outside file"),
        entry_content(0),
        "the link's target must not be touched"
    );
    assert!(
        fs::symlink_metadata(&content).is_err(),
        "the link was moved away"
    );
    assert!(store.get(&key(1)).expect("get").is_hit());
}

#[cfg(unix)]
#[test]
fn symlinked_cache_folders_are_clear_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let outside = dir.path().join("elsewhere");
    fs::create_dir(&outside).expect("outside folder");

    let root = dir.path().join("a");
    DiskStore::open(&root).expect("create");
    fs::remove_dir(root.join("objects")).expect("remove objects/");
    std::os::unix::fs::symlink(&outside, root.join("objects")).expect("symlink");
    let err = DiskStore::open(&root).expect_err("symlinked objects/");
    assert!(
        matches!(
            err,
            CacheError::Symlink {
                outside_root: true,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("outside the cache root"), "{err}");

    // A shard folder that is a symlink: reads and writes through it are refused.
    let root = dir.path().join("b");
    let store = filled_store(&root, 1);
    let k = key(0);
    let manifest = store.manifest_path(&k);
    let shard = manifest.parent().expect("shard").to_path_buf();
    let moved = dir.path().join("moved-shard");
    fs::rename(&shard, &moved).expect("move shard away");
    std::os::unix::fs::symlink(&moved, &shard).expect("symlink shard");
    assert!(matches!(store.get(&k), Err(CacheError::Symlink { .. })));
    assert!(matches!(
        store.put(&k, b"x", &meta("x", 0)),
        Err(CacheError::Symlink { .. })
    ));
    assert!(matches!(
        store.verify(false),
        Err(CacheError::Symlink { .. })
    ));
    assert!(moved.join(manifest.file_name().expect("name")).exists());

    // The root itself may be a symlink (to put the cache on another disk).
    let link = dir.path().join("link-to-b");
    std::os::unix::fs::symlink(dir.path().join("a"), &link).expect("symlink root");
    fs::remove_file(dir.path().join("a").join("objects")).expect("unlink objects/");
    let store = DiskStore::open(&link).expect("a symlinked root is fine");
    assert_eq!(
        store.put(&key(5), b"content", &meta("x", 5)).expect("put"),
        PutOutcome::Stored
    );
}

#[test]
fn a_manifest_naming_a_path_outside_its_folder_is_not_followed() {
    let (dir, store) = filled_in_tempdir(1);
    let k = key(0);
    let outside = dir.path().join("outside.png");
    fs::write(&outside, entry_content(0)).expect("write outside");
    let manifest_path = store.manifest_path(&k);
    let mut value: serde_json::Value =
        serde_json::from_slice(&fs::read(&manifest_path).expect("read")).expect("json");
    value["content_file"] = "../../../outside.png".into();
    fs::write(&manifest_path, serde_json::to_vec(&value).expect("json")).expect("write");

    match store.get(&k).expect("get") {
        Lookup::Corrupt(bad) => assert!(matches!(bad.defect, Defect::BadContentName(_)), "{bad:?}"),
        other => panic!("expected a corrupt entry, got {other:?}"),
    }
    assert!(outside.exists(), "a file outside the root was moved");
}

/// Rewrites the creation time in a manifest: how old gc thinks the entry is.
fn backdate(store: &DiskStore, k: &CacheKey, seconds_ago: u64) {
    let path = store.manifest_path(k);
    let mut value: serde_json::Value =
        serde_json::from_slice(&fs::read(&path).expect("read")).expect("json");
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    value["created_unix"] = (now - seconds_ago).into();
    fs::write(&path, serde_json::to_vec(&value).expect("json")).expect("write");
}

#[test]
fn gc_by_age_then_size_removes_the_oldest_entries() {
    const HOUR: u64 = 3600;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = filled_store(dir.path(), 10);
    // Entry n is 10 - n hours old: entry 0 is the oldest.
    for n in 0..10 {
        backdate(&store, &key(n), (10 - n) * HOUR);
    }
    let report = store
        .gc(&GcPolicy {
            max_bytes: None,
            max_age: Some(Duration::from_secs(11 * HOUR / 2)),
        })
        .expect("gc by age");
    assert_eq!(report.removed_entries, 5, "{report:?}");
    let present = |store: &DiskStore| -> Vec<u64> {
        (0..10)
            .filter(|&n| store.contains(&key(n)).expect("contains"))
            .collect()
    };
    assert_eq!(present(&store), vec![5, 6, 7, 8, 9]);

    let three_newest: u64 = (7..10).map(|n| entry_content(n).len() as u64).sum();
    let report = store
        .gc(&GcPolicy {
            max_bytes: Some(three_newest),
            max_age: None,
        })
        .expect("gc by size");
    assert_eq!(report.removed_entries, 2, "{report:?}");
    assert_eq!(report.remaining_bytes, three_newest);
    assert_eq!(present(&store), vec![7, 8, 9]);
    for n in 7..10 {
        let entry = store.get(&key(n)).expect("get").into_entry().expect("kept");
        assert!(entry.content == entry_content(n));
    }
    assert_eq!(files_under(&dir.path().join("objects")).len(), 3);
    let stats = store.stats().expect("stats");
    assert_eq!((stats.entries, stats.bytes), (3, three_newest));
    assert_eq!(stats.by_target["corruption"].entries, 3);
    assert_eq!(stats.by_level[&800], 3);
}

fn set_age(path: &Path, age: Duration) {
    File::options()
        .write(true)
        .open(path)
        .and_then(|f| f.set_modified(SystemTime::now() - age))
        .expect("set modification time");
}

#[test]
fn gc_leaves_fresh_temporary_and_unreferenced_files_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = filled_store(dir.path(), 2);
    let two_hours = Duration::from_secs(2 * 3600);

    let fresh_temp = store.tmp_dir().join("content-fresh.tmp");
    let old_temp = store.tmp_dir().join("content-old.tmp");
    fs::write(&fresh_temp, b"being written").expect("write");
    fs::write(&old_temp, b"left by a crash").expect("write");
    set_age(&old_temp, two_hours);

    // Content files no manifest references yet: a write about to commit, and a crash's leftover.
    let uncommitted = key(50);
    let shard = store
        .content_path(&uncommitted, "x")
        .parent()
        .expect("shard")
        .to_path_buf();
    fs::create_dir_all(&shard).expect("shard");
    let fresh_orphan = shard.join(format!(
        "{uncommitted}.0123456789abcdef.0123456789abcdef.png"
    ));
    let old_orphan = shard.join(format!(
        "{uncommitted}.0123456789abcdef.fedcba9876543210.png"
    ));
    fs::write(&fresh_orphan, b"x").expect("write");
    fs::write(&old_orphan, b"x").expect("write");
    set_age(&old_orphan, two_hours);
    // A losing writer's content next to a committed entry's, killed before it cleaned up.
    let committed = key(0);
    let loser = store.content_path(
        &committed,
        &format!("{committed}.0000000000000000.1111111111111111.png"),
    );
    fs::write(&loser, b"lost the race").expect("write");
    set_age(&loser, two_hours);
    // An old committed entry's own content is not an orphan, however old.
    set_age(&content_path(&store, &committed), two_hours);

    let report = store.gc(&GcPolicy::default()).expect("gc");
    assert_eq!(report.removed_entries, 0);
    assert_eq!(report.removed_temp_files, 1, "{report:?}");
    assert_eq!(report.removed_orphan_files, 2, "{report:?}");
    assert!(fresh_temp.exists() && fresh_orphan.exists());
    assert!(!old_temp.exists() && !old_orphan.exists() && !loser.exists());
    assert_eq!(store.verify(false).expect("verify").ok, 2);
}

#[test]
fn a_second_gc_fails_clearly_while_one_holds_the_lock() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = filled_store(dir.path(), 1);
    let lock = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(dir.path().join("gc.lock"))
        .expect("open lock");
    fs4::FileExt::lock(&lock).expect("hold the gc lock");
    let started = std::time::Instant::now();
    let err = store.gc(&GcPolicy::default()).expect_err("gc must not run");
    assert!(
        started.elapsed() >= genie::cache::GC_LOCK_WAIT,
        "gc gave up without waiting"
    );
    assert!(matches!(err, CacheError::GcBusy { .. }), "{err:?}");
    assert!(err.to_string().contains("gc.lock"), "{err}");
    fs4::FileExt::unlock(&lock).expect("release");
    store
        .gc(&GcPolicy::default())
        .expect("gc runs once released");
}

/// The contract every store keeps, run over the disk and the memory store alike.
fn exercise_store(store: &dyn Store) {
    let (a, b) = (key(1), key(2));
    assert_eq!(store.get(&a).expect("get"), Lookup::Miss);
    assert!(!store.contains(&a).expect("contains"));
    assert_eq!(
        store.put(&a, b"first", &meta("cat", 1)).expect("put"),
        PutOutcome::Stored
    );
    assert_eq!(
        store.put(&a, b"second", &meta("cat", 1)).expect("put"),
        PutOutcome::AlreadyPresent
    );
    assert!(store.contains(&a).expect("contains"));
    let entry = store.get(&a).expect("get").into_entry().expect("hit");
    assert_eq!(entry.content, b"first");
    assert_eq!(entry.manifest.key, a);
    assert_eq!(entry.manifest.content_len, 5);
    assert_eq!(entry.manifest.meta, meta("cat", 1));
    store.put(&b, b"other", &meta("dog", 2)).expect("put");

    let scan = store.manifests().expect("manifests");
    let keys: BTreeSet<CacheKey> = scan.manifests.iter().map(|m| m.key).collect();
    assert_eq!(keys, BTreeSet::from([a, b]));
    assert!(scan.bad.is_empty());
    let stats = store.stats().expect("stats");
    assert_eq!((stats.entries, stats.bytes), (2, 10));
    assert_eq!(stats.by_target.len(), 2);

    let undecodable = Defect::Undecodable("test".into());
    assert!(store
        .quarantine(&entry.manifest, &undecodable)
        .expect("quarantine"));
    assert!(!store
        .quarantine(&entry.manifest, &undecodable)
        .expect("again"));
    assert_eq!(store.get(&a).expect("get"), Lookup::Miss);
    assert!(store.get(&b).expect("get").is_hit());
    assert_eq!(
        store.put(&a, b"third", &meta("cat", 1)).expect("put"),
        PutOutcome::Stored
    );
    // A stale manifest (of the quarantined entry) must not quarantine the new one.
    assert!(!store
        .quarantine(&entry.manifest, &undecodable)
        .expect("stale"));
    let entry = store.get(&a).expect("get").into_entry().expect("hit");
    assert_eq!(entry.content, b"third");
}

#[test]
fn disk_and_memory_stores_keep_the_same_contract() {
    let dir = tempfile::tempdir().expect("tempdir");
    exercise_store(&DiskStore::open(dir.path()).expect("open"));
    exercise_store(&MemoryStore::new());
}

/// A folder that is not a cache and holds something else is refused and left as it was; one
/// holding only what an interrupted creation leaves becomes a cache.
#[test]
fn a_foreign_non_empty_folder_is_not_adopted_as_a_cache() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("holiday.jpg"), b"not ours").unwrap();
    let err = DiskStore::open(dir.path()).unwrap_err();
    assert!(matches!(err, CacheError::NotEmpty { .. }), "{err}");
    assert!(err.to_string().contains("holiday.jpg"), "{err}");
    let left: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["holiday.jpg"]);

    let interrupted = tempfile::tempdir().unwrap();
    fs::create_dir(interrupted.path().join("tmp")).unwrap();
    DiskStore::open(interrupted.path()).unwrap();
    assert!(interrupted.path().join("genie-cache.json").is_file());
}

/// A file the process may not read (mode 000) is a defect of its own entry, reported and
/// quarantined, not an error that stops stats, verify and every read of the cache. Root reads
/// mode-000 files, so as root (CI) the check runs in a copy of this test binary as the
/// unprivileged uid 65534: it runs everywhere, never skipped.
#[cfg(unix)]
#[test]
fn an_unreadable_file_is_a_defect_of_its_entry_not_of_the_cache() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    if !reads_mode_000_files() {
        unreadable_manifest_check();
        return;
    }
    // A copy of the binary, in a folder others may enter: the build folder may not be.
    let dir = tempfile::tempdir().expect("tempdir");
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    let exe = dir.path().join("it");
    fs::copy(std::env::current_exe().expect("this binary"), &exe).expect("copy");
    fs::set_permissions(&exe, fs::Permissions::from_mode(0o755)).expect("chmod");
    let work = dir.path().join("tmp");
    fs::create_dir(&work).expect("mkdir");
    std::os::unix::fs::chown(&work, Some(UNPRIVILEGED), Some(UNPRIVILEGED)).expect("chown");
    let output = crate::support::child_command_at(
        &exe,
        module_path!(),
        "unreadable_manifest_as_an_unprivileged_user",
    )
    .env("TMPDIR", &work)
    .uid(UNPRIVILEGED)
    .gid(UNPRIVILEGED)
    .output()
    .expect("run the check as uid 65534");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("checked as an unprivileged user"),
        "{}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The user the mode-000 check runs as when the tests run as root (`nobody` on most systems).
#[cfg(unix)]
const UNPRIVILEGED: u32 = 65534;

/// The check itself, run by [`an_unreadable_file_is_a_defect_of_its_entry_not_of_the_cache`] as
/// uid 65534 when the tests run as root.
#[cfg(unix)]
#[test]
#[ignore = "run by an_unreadable_file_is_a_defect_of_its_entry_not_of_the_cache as uid 65534"]
fn unreadable_manifest_as_an_unprivileged_user() {
    assert!(!reads_mode_000_files(), "still privileged");
    unreadable_manifest_check();
    println!("checked as an unprivileged user");
}

/// Whether this process reads files of mode 000 (root, or CAP_DAC_OVERRIDE).
#[cfg(unix)]
fn reads_mode_000_files() -> bool {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("probe");
    fs::write(&file, b"x").expect("write");
    fs::set_permissions(&file, fs::Permissions::from_mode(0o000)).expect("chmod");
    fs::read(&file).is_ok()
}

#[cfg(unix)]
fn unreadable_manifest_check() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = filled_store(dir.path(), 3);
    let manifest = store.manifest_path(&key(0));
    fs::set_permissions(&manifest, fs::Permissions::from_mode(0o000)).expect("chmod");
    assert!(fs::read(&manifest).is_err(), "the manifest is unreadable");
    let stats = store
        .stats()
        .expect("stats despite one unreadable manifest");
    assert_eq!((stats.entries, stats.unusable_manifests), (2, 1));
    let report = store
        .verify(true)
        .expect("verify despite one unreadable manifest");
    assert_eq!((report.ok, report.quarantined), (2, 1), "{report:?}");
    assert!(matches!(store.get(&key(1)), Ok(Lookup::Hit(_))));
}

/// An entry whose bytes match their manifest but whose image contradicts it (another size, or
/// not an image) passes the byte-level `verify` and fails `verify_with(check_image)`, which
/// `genie cache verify` runs; `--repair` quarantines it and keeps the good one.
#[test]
fn verify_with_check_image_catches_an_image_that_contradicts_its_manifest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = DiskStore::open(dir.path()).expect("open");
    let png =
        |side: u32| genie::image_io::encode_png(&image::RgbImage::new(side, side)).expect("png");
    // meta() promises 64×64.
    store
        .put(&key(0), &png(64), &meta("images", 0))
        .expect("put");
    store
        .put(&key(1), &png(32), &meta("images", 1))
        .expect("put");
    let bytes_only = store.verify(false).expect("verify");
    assert_eq!((bytes_only.ok, bytes_only.bad.len()), (2, 0));
    let report = store
        .verify_with(false, genie::cache::check_image)
        .expect("verify");
    assert_eq!((report.ok, report.bad.len()), (1, 1));
    assert!(
        matches!(
            report.bad[0].defect,
            Defect::WrongDimensions {
                found_width: 32,
                ..
            }
        ),
        "{:?}",
        report.bad[0].defect
    );
    let repaired = store
        .verify_with(true, genie::cache::check_image)
        .expect("repair");
    assert_eq!(repaired.quarantined, 1);
    assert!(matches!(store.get(&key(1)), Ok(Lookup::Miss)));
    assert!(matches!(store.get(&key(0)), Ok(Lookup::Hit(_))));
}
