//! Several processes and threads write overlapping keys at once: each key is committed exactly once, intact, and the losers leave nothing behind.

use std::collections::HashMap;
use std::io::BufRead;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use crate::support::{
    child_command, child_store, content, files_under, key, meta, wait_for_line, Rng,
};
use genie::cache::{Cache, CacheKey, DiskStore, GcPolicy, Lookup, MemoryStore, PutOutcome, Store};
use image::RgbImage;

const CHILD_DIR_ENV: &str = "GENIE_CACHE_CHILD_DIR";
const CHILD_ID_ENV: &str = "GENIE_CACHE_CHILD_ID";
const GO_FILE_ENV: &str = "GENIE_CACHE_GO_FILE";
const READY: &str = "GENIE-CACHE-CONCURRENT-CHILD-READY";
const KEYS: u64 = 60;
const PROCESSES: u64 = 4;
const THREADS: u64 = 6;

/// What writer `writer` stores for key `n`. Even keys: the same bytes from everyone (a
/// deterministic engine). Odd keys: each writer's own bytes (GPUs that differ in the last
/// bit), so the test can tell whose write won.
fn content_for(n: u64, writer: u64) -> Vec<u8> {
    if n % 2 == 0 {
        content(n, 40_000)
    } else {
        content(n * 1000 + writer + 1, 40_000)
    }
}

/// The order in which `writer` visits the keys: its own shuffle, so writers collide at
/// different moments.
fn order(writer: u64) -> Vec<u64> {
    let mut keys: Vec<u64> = (0..KEYS).collect();
    Rng::new(writer + 1).shuffle(&mut keys);
    keys
}

/// Asserts the folder holds exactly one manifest and one content file per key, nothing in
/// `tmp/`, and that every entry verifies.
fn assert_clean_store(store: &DiskStore, dir: &Path, keys: u64) {
    assert_eq!(files_under(&dir.join("manifests")).len() as u64, keys);
    assert_eq!(
        files_under(&dir.join("objects")).len() as u64,
        keys,
        "losers must remove their content files"
    );
    assert!(
        files_under(store.tmp_dir()).is_empty(),
        "temporary files left"
    );
    let report = store.verify(false).expect("verify");
    assert_eq!((report.ok, report.bad.len()), (keys, 0), "{report:?}");
}

/// The child: waits for the go file, then puts every key and prints each outcome.
#[test]
#[ignore = "child process of processes_writing_the_same_keys_commit_each_once"]
fn concurrent_child_entry() {
    let Some((store, writer)) = child_store(CHILD_DIR_ENV, CHILD_ID_ENV, READY) else {
        return;
    };
    let writer = writer.expect("writer id");
    let go = std::env::var_os(GO_FILE_ENV).expect("go file");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !Path::new(&go).exists() {
        assert!(Instant::now() < deadline, "never told to go");
        std::thread::sleep(Duration::from_millis(1));
    }
    for n in order(writer) {
        let outcome = store
            .put(&key(n), &content_for(n, writer), &meta("concurrent", n))
            .expect("put");
        println!("OUTCOME {n} {outcome:?}");
    }
}

#[test]
fn processes_writing_the_same_keys_commit_each_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cache_dir = dir.path().join("cache");
    let go_file = dir.path().join("go");
    let mut children = Vec::new();
    for writer in 0..PROCESSES {
        let mut child = child_command(module_path!(), "concurrent_child_entry")
            .env(CHILD_DIR_ENV, &cache_dir)
            .env(CHILD_ID_ENV, writer.to_string())
            .env(GO_FILE_ENV, &go_file)
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn writer");
        let stdout = wait_for_line(&mut child, READY);
        children.push((writer, child, stdout));
    }
    std::fs::write(&go_file, b"go").expect("start the writers");

    let mut stored_by: HashMap<u64, Vec<u64>> = HashMap::new();
    for (writer, mut child, stdout) in children {
        let mut outcomes = 0;
        for line in stdout.lines() {
            let line = line.expect("child output");
            let Some(rest) = line.strip_prefix("OUTCOME ") else {
                continue;
            };
            let (n, outcome) = rest.split_once(' ').expect("OUTCOME <n> <outcome>");
            let n: u64 = n.parse().expect("key number");
            match outcome {
                "Stored" => stored_by.entry(n).or_default().push(writer),
                "AlreadyPresent" => {}
                other => panic!("unknown outcome {other}"),
            }
            outcomes += 1;
        }
        let status = child.wait().expect("wait for writer");
        assert!(status.success(), "writer {writer}: {status}");
        assert_eq!(outcomes, KEYS, "writer {writer} reported every key");
    }

    let store = DiskStore::open(&cache_dir).expect("open");
    for n in 0..KEYS {
        let winners = stored_by.get(&n).cloned().unwrap_or_default();
        assert_eq!(winners.len(), 1, "key {n} stored by {winners:?}");
        let entry = store
            .get(&key(n))
            .expect("get")
            .into_entry()
            .expect("every key is committed");
        assert!(
            entry.content == content_for(n, winners[0]),
            "key {n} holds bytes other than its winner's"
        );
    }
    assert_clean_store(&store, &cache_dir, KEYS);
}

fn image_for(n: u64, writer: u64) -> RgbImage {
    let seed = if n % 2 == 0 { n } else { n * 1000 + writer + 1 };
    let bytes = content(seed, 16 * 16 * 3);
    RgbImage::from_raw(16, 16, bytes).expect("16x16 RGB")
}

#[test]
fn threads_writing_and_reading_the_same_keys_through_one_cache() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(DiskStore::open(dir.path()).expect("open"));
    let cache = Arc::new(Cache::new(store.clone(), 1 << 20));
    let start = Arc::new(Barrier::new(THREADS as usize + 3));
    let writing = Arc::new(AtomicBool::new(true));

    // Readers run throughout: whatever they see must be one writer's whole image.
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (cache, start, writing) = (cache.clone(), start.clone(), writing.clone());
            std::thread::spawn(move || {
                start.wait();
                let mut seen = 0;
                while writing.load(Ordering::Relaxed) {
                    for n in 0..KEYS {
                        if let Some(image) = cache.get_image(&key(n)).expect("get_image") {
                            assert!(
                                (0..THREADS).any(|w| *image == image_for(n, w)),
                                "key {n}: an image no writer made"
                            );
                            seen += 1;
                        }
                    }
                }
                seen
            })
        })
        .collect();
    let writers = {
        let cache = cache.clone();
        spawn_writers(&start, move |n, writer| {
            cache
                .put_image(&key(n), &image_for(n, writer), meta("threads", n))
                .expect("put_image")
        })
    };
    start.wait();
    let mut winners: HashMap<u64, Vec<u64>> = HashMap::new();
    for (n, writer) in stored_by(writers) {
        winners.entry(n).or_default().push(writer);
    }
    writing.store(false, Ordering::Relaxed);
    for handle in readers {
        handle.join().expect("reader thread");
    }

    for n in 0..KEYS {
        let won = winners.get(&n).cloned().unwrap_or_default();
        assert_eq!(won.len(), 1, "key {n} stored by {won:?}");
        let fresh = Cache::new(store.clone(), 0);
        let image = fresh.get_image(&key(n)).expect("get").expect("committed");
        assert!(
            *image == image_for(n, won[0]),
            "key {n}: not the winner's image"
        );
        let served = cache.get_image(&key(n)).expect("get").expect("committed");
        assert!(
            *served == image_for(n, won[0]),
            "key {n}: memory disagrees with disk"
        );
    }
    let counters = cache.counters();
    assert_eq!(counters.puts_stored, KEYS);
    assert_eq!(counters.puts_already_present, KEYS * (THREADS - 1));
    assert_eq!(counters.corrupt, 0);
    assert_clean_store(&store, dir.path(), KEYS);
}

#[test]
fn threads_writing_a_memory_store_commit_each_key_once() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let start = Arc::new(Barrier::new(THREADS as usize));
    let writers = {
        let store = store.clone();
        spawn_writers(&start, move |n, writer| {
            store
                .put(&key(n), &content_for(n, writer), &meta("memory", n))
                .expect("put")
        })
    };
    let mut winners: HashMap<u64, u64> = HashMap::new();
    for (n, writer) in stored_by(writers) {
        assert!(winners.insert(n, writer).is_none(), "key {n} stored twice");
    }
    assert_eq!(winners.len() as u64, KEYS);
    for (n, writer) in winners {
        let entry = store.get(&key(n)).expect("get").into_entry().expect("hit");
        assert!(entry.content == content_for(n, writer));
    }
}

/// gc by size while writers keep committing: gc may remove committed entries, but never
/// breaks one (a manifest without its content) and never removes a write in progress.
#[test]
fn gc_alongside_writers_never_breaks_an_entry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(DiskStore::open(dir.path()).expect("open"));
    let writing = Arc::new(AtomicBool::new(true));
    let writers: Vec<_> = (0..3u64)
        .map(|writer| {
            let (store, writing) = (store.clone(), writing.clone());
            std::thread::spawn(move || {
                let mut rng = Rng::new(writer + 100);
                let mut puts = 0;
                while writing.load(Ordering::Relaxed) {
                    let n = rng.below(200);
                    store
                        .put(&key(n), &content_for(n, 0), &meta("gc", n))
                        .expect("put while gc runs");
                    puts += 1;
                }
                puts
            })
        })
        .collect();
    let started = Instant::now();
    let mut gcs = 0;
    while started.elapsed() < Duration::from_millis(1500) {
        let policy = GcPolicy {
            max_bytes: Some(400_000),
            max_age: None,
        };
        match store.gc(&policy) {
            Ok(_) => gcs += 1,
            Err(e) => panic!("gc: {e}"),
        }
        for n in 0..200 {
            match store.get(&key(n)).expect("get") {
                Lookup::Hit(entry) => assert!(entry.content == content_for(n, 0)),
                Lookup::Miss => {}
                Lookup::Corrupt(bad) => panic!("gc broke an entry: {bad:?}"),
            }
        }
    }
    writing.store(false, Ordering::Relaxed);
    let puts: u64 = writers.into_iter().map(|h| h.join().expect("writer")).sum();
    eprintln!("{gcs} gcs alongside {puts} puts");
    assert!(
        gcs > 3 && puts > 50,
        "too little overlap: {gcs} gcs, {puts} puts"
    );
    let report = store.verify(false).expect("verify");
    assert!(report.bad.is_empty(), "{:?}", report.bad);
    assert!(
        files_under(store.tmp_dir()).is_empty(),
        "in-flight files outlived their writes"
    );
    let committed: Vec<CacheKey> = (0..200)
        .map(key)
        .filter(|k| store.contains(k).unwrap_or(false))
        .collect();
    assert_eq!(
        files_under(&dir.path().join("objects")).len(),
        committed.len()
    );
}

type Writers = Vec<std::thread::JoinHandle<Vec<(u64, u64, PutOutcome)>>>;

/// `THREADS` threads that each wait on `start`, then `put` every key in their writer's order.
fn spawn_writers(
    start: &Arc<Barrier>,
    put: impl Fn(u64, u64) -> PutOutcome + Clone + Send + 'static,
) -> Writers {
    (0..THREADS)
        .map(|writer| {
            let (put, start) = (put.clone(), start.clone());
            std::thread::spawn(move || {
                start.wait();
                order(writer)
                    .into_iter()
                    .map(|n| (n, writer, put(n, writer)))
                    .collect()
            })
        })
        .collect()
}

/// The (key, writer) pairs whose put stored the entry.
fn stored_by(writers: Writers) -> Vec<(u64, u64)> {
    writers
        .into_iter()
        .flat_map(|handle| handle.join().expect("writer thread"))
        .filter(|(_, _, outcome)| *outcome == PutOutcome::Stored)
        .map(|(n, writer, _)| (n, writer))
        .collect()
}
