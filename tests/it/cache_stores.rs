//! One cache test suite, run against every store: the local folder, the in-process memory store,
//! and with the `s3` feature the object-storage store over `object_store`'s in-memory backend and
//! over a real S3-compatible server (moto) started on loopback — skipped, with a message, when no
//! such server can be started (install it with `pip install 'moto[server]'`, or point
//! `GENIE_MOTO_SERVER` at its `moto_server` program), and failed instead under `CI=true`.

use std::sync::{Arc, Barrier};

use crate::support::{content, key, meta};
use genie::cache::{
    AdaChoiceRecord, Cache, CacheKey, DiskStore, Lookup, MemoryStore, PutOutcome, Store,
};
use genie::NoiseLevel;
use image::RgbImage;

/// Overwrites the committed content of a key behind the store's back.
type Tamper = Box<dyn Fn(&CacheKey)>;

/// A store under test, and a way to overwrite an entry's committed content behind its back.
struct Backend {
    name: &'static str,
    store: Arc<dyn Store>,
    /// Replaces the content of `key` with other bytes; `None` where the store cannot be reached
    /// underneath (the memory store).
    tamper: Option<Tamper>,
    /// Content objects or files the store holds (to check that losers clean up).
    content_count: Box<dyn Fn() -> usize>,
}

fn suite(backend: &Backend) {
    eprintln!("cache suite on {}", backend.name);
    round_trip_and_stats(backend);
    first_complete_writer_wins(backend);
    corrupt_content_is_quarantined_and_regenerated(backend);
    records_are_replaced_whole(backend);
}

fn image(seed: u64) -> RgbImage {
    RgbImage::from_raw(16, 16, content(seed, 16 * 16 * 3)).expect("16x16 RGB")
}

fn round_trip_and_stats(b: &Backend) {
    let cache = Cache::new(b.store.clone(), 0);
    for n in 0..3 {
        let target = if n == 2 { "dog" } else { "cat" };
        assert_eq!(
            cache
                .put_image(&key(n), &image(n), meta(target, n))
                .unwrap(),
            PutOutcome::Stored,
            "{}",
            b.name
        );
    }
    for n in 0..3 {
        let got = cache.get_image(&key(n)).unwrap().expect("hit");
        assert_eq!(*got, image(n), "{}", b.name);
        assert!(cache.contains(&key(n)).unwrap());
    }
    assert!(cache.get_image(&key(99)).unwrap().is_none());
    assert!(!cache.contains(&key(99)).unwrap());
    let stats = b.store.stats().unwrap();
    assert_eq!(stats.entries, 3, "{}", b.name);
    assert_eq!(stats.by_target["cat"].entries, 2);
    assert_eq!(stats.by_level[&800], 3);
    let keys: Vec<CacheKey> = b
        .store
        .manifests()
        .unwrap()
        .manifests
        .iter()
        .map(|m| m.key)
        .collect();
    let mut expected = vec![key(0), key(1), key(2)];
    expected.sort();
    assert_eq!(keys, expected, "{}", b.name);
}

fn first_complete_writer_wins(b: &Backend) {
    let before = (b.content_count)();
    let writers = 6;
    let barrier = Barrier::new(writers);
    let outcomes: Vec<(PutOutcome, Vec<u8>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..writers as u64)
            .map(|w| {
                let (store, barrier) = (&b.store, &barrier);
                s.spawn(move || {
                    let bytes = content(1000 + w, 4096);
                    barrier.wait();
                    (
                        store.put(&key(10), &bytes, &meta("cat", 10)).unwrap(),
                        bytes,
                    )
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let winners: Vec<&Vec<u8>> = outcomes
        .iter()
        .filter(|(o, _)| *o == PutOutcome::Stored)
        .map(|(_, bytes)| bytes)
        .collect();
    assert_eq!(winners.len(), 1, "{}: exactly one writer commits", b.name);
    let entry = b.store.get(&key(10)).unwrap().into_entry().expect("hit");
    assert_eq!(
        &entry.content, winners[0],
        "{}: readers see the winner's bytes",
        b.name
    );
    assert_eq!(
        (b.content_count)(),
        before + 1,
        "{}: losers remove their content",
        b.name
    );
}

fn corrupt_content_is_quarantined_and_regenerated(b: &Backend) {
    let Some(tamper) = &b.tamper else {
        return;
    };
    let k = key(20);
    b.store
        .put(&k, &content(20, 1000), &meta("cat", 20))
        .unwrap();
    tamper(&k);
    assert!(
        matches!(b.store.get(&k).unwrap(), Lookup::Corrupt(_)),
        "{}",
        b.name
    );
    assert_eq!(
        b.store.get(&k).unwrap(),
        Lookup::Miss,
        "{}: quarantined, so a miss",
        b.name
    );
    assert!(!b.store.contains(&k).unwrap());
    assert_eq!(
        b.store
            .put(&k, &content(20, 1000), &meta("cat", 20))
            .unwrap(),
        PutOutcome::Stored
    );
    assert!(b.store.get(&k).unwrap().is_hit(), "{}", b.name);
}

fn records_are_replaced_whole(b: &Backend) {
    let cache = Cache::new(b.store.clone(), 0);
    let pair = key(30);
    assert_eq!(cache.ada_choice(&pair).unwrap(), None);
    let levels = NoiseLevel::ADA_SWEEP;
    // A second choice for the same pair replaces the first whole.
    for (step, (chosen, second)) in [(2, 0.2), (1, 0.5)].into_iter().enumerate() {
        let projections = [0.1, second, 0.6, 0.7, 0.8];
        let record = AdaChoiceRecord::new(
            "fox",
            &levels,
            &projections,
            Some(levels[chosen]),
            step as u64 + 1,
        );
        cache.put_ada_choice(&pair, &record).unwrap();
        assert_eq!(cache.ada_choice(&pair).unwrap(), Some(record), "{}", b.name);
    }
    b.store.put_record(&pair, b"{ not json").unwrap();
    assert_eq!(
        cache.ada_choice(&pair).unwrap(),
        None,
        "{}: garbage reads as absent",
        b.name
    );
}

fn files_under(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| {
                    if e.path().is_dir() {
                        files_under(&e.path())
                    } else {
                        1
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

#[test]
fn suite_on_a_local_folder() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(DiskStore::open(dir.path()).unwrap());
    let tamper_store = store.clone();
    let objects = dir.path().join("objects");
    suite(&Backend {
        name: "local folder",
        store,
        tamper: Some(Box::new(move |k| {
            let raw = std::fs::read(tamper_store.manifest_path(k)).unwrap();
            let manifest: serde_json::Value = serde_json::from_slice(&raw).unwrap();
            let file = manifest["content_file"].as_str().unwrap();
            std::fs::write(tamper_store.content_path(k, file), b"tampered").unwrap();
        })),
        content_count: Box::new(move || files_under(&objects)),
    });
}

#[test]
fn suite_on_the_memory_store() {
    let store: Arc<MemoryStore> = Arc::new(MemoryStore::new());
    let counted = store.clone();
    suite(&Backend {
        name: "memory store",
        store,
        tamper: None,
        content_count: Box::new(move || counted.manifests().unwrap().manifests.len()),
    });
}

#[cfg(feature = "s3")]
mod object_storage {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::process::{Command, Stdio};

    use crate::support::KillOnDrop;
    use std::time::{Duration, Instant};

    use futures_util::TryStreamExt;
    use genie::cache::BucketStore;
    use object_store::path::Path as ObjectPath;
    use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

    fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    fn backend(name: &'static str, bucket: BucketStore) -> Backend {
        let bucket = Arc::new(bucket);
        let raw: Arc<dyn ObjectStore> = bucket.object_store().clone();
        let (tamper_bucket, tamper_raw) = (bucket.clone(), raw.clone());
        Backend {
            name,
            store: bucket,
            tamper: Some(Box::new(move |k| {
                let manifest = block_on(async {
                    tamper_raw
                        .get(&tamper_bucket.manifest_path(k))
                        .await
                        .unwrap()
                        .bytes()
                        .await
                        .unwrap()
                });
                let manifest: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
                let path =
                    tamper_bucket.content_path(k, manifest["content_file"].as_str().unwrap());
                block_on(tamper_raw.put(&path, PutPayload::from_static(b"tampered"))).unwrap();
            })),
            content_count: Box::new(move || {
                let listed: Vec<_> = block_on(
                    raw.list(Some(&ObjectPath::from("suite/objects")))
                        .try_collect(),
                )
                .unwrap();
                listed.len()
            }),
        }
    }

    #[test]
    fn suite_on_object_store_in_memory() {
        let store = Arc::new(object_store::memory::InMemory::new());
        let bucket = BucketStore::new(store, "suite", "memory://suite", true).unwrap();
        suite(&backend("object store (in memory)", bucket));
    }

    /// A moto S3 server on a free loopback port, killed when dropped.
    struct Moto {
        _child: KillOnDrop,
        endpoint: String,
    }

    fn start_moto() -> Result<Moto, String> {
        let program = std::env::var("GENIE_MOTO_SERVER").unwrap_or_else(|_| "moto_server".into());
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        let child = Command::new(&program)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {program}: {e}"))?;
        let moto = Moto {
            _child: KillOnDrop(child),
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            // Creating the bucket is also the readiness probe (moto does not check signatures).
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
                let request = format!("PUT /genie-test HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                let mut reply = String::new();
                if s.write_all(request.as_bytes()).is_ok() && s.read_to_string(&mut reply).is_ok() {
                    if reply.starts_with("HTTP/1.1 200") {
                        return Ok(moto);
                    }
                    return Err(format!(
                        "moto refused to create a bucket: {}",
                        reply.lines().next().unwrap_or("")
                    ));
                }
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{program} did not answer on port {port} within 30 s"
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    #[test]
    fn suite_on_an_s3_compatible_server() {
        let moto = match start_moto() {
            Ok(moto) => moto,
            // CI promises this suite: there a missing server is a failure, not a skip.
            Err(why) if std::env::var("CI").is_ok_and(|v| v == "true") => {
                panic!("CI=true and the S3 part of the cache suite cannot run: {why}")
            }
            Err(why) => {
                crate::support::skipped(
                    "cache_stores, the S3 suite",
                    &format!("it needs an S3-compatible server on loopback ({why}); install one with `pip install 'moto[server]'`"),
                );
                return;
            }
        };
        BucketStore::install_tls_provider();
        let s3 = object_store::aws::AmazonS3Builder::new()
            .with_endpoint(&moto.endpoint)
            .with_allow_http(true)
            .with_bucket_name("genie-test")
            .with_region("us-east-1")
            .with_access_key_id("test")
            .with_secret_access_key("test")
            .build()
            .unwrap();
        let bucket =
            BucketStore::new(Arc::new(s3), "suite", "s3://genie-test/suite", true).unwrap();
        suite(&backend("S3 (moto)", bucket));

        // The binary reaches the same bucket through its URL and the AWS_* variables.
        let genie = |args: &[&str]| {
            Command::new(env!("CARGO_BIN_EXE_genie"))
                .args(args)
                .env("AWS_ENDPOINT_URL", &moto.endpoint)
                .env("AWS_ALLOW_HTTP", "true")
                .env("AWS_REGION", "us-east-1")
                .env("AWS_ACCESS_KEY_ID", "test")
                .env("AWS_SECRET_ACCESS_KEY", "test")
                .output()
                .unwrap()
        };
        let o = genie(&["cache", "stats", "s3://genie-test/suite", "--json"]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let stats: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(stats["entries"], 5, "{stats}");
        let o = genie(&["cache", "stats", "s3://genie-test/not-a-cache"]);
        assert!(!o.status.success());
        assert!(String::from_utf8_lossy(&o.stderr).contains("not a genie cache"));
    }

    #[test]
    fn a_prefix_without_a_marker_is_not_opened_unless_asked_to_create() {
        let store = Arc::new(object_store::memory::InMemory::new());
        let err = BucketStore::new(store.clone(), "x", "memory://x", false).unwrap_err();
        assert!(err.to_string().contains("not a genie cache"), "{err}");
        BucketStore::new(store.clone(), "x", "memory://x", true).unwrap();
        BucketStore::new(store, "x", "memory://x", false).unwrap();
    }
}
