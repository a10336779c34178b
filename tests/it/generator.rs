//! The background generator: deduplication, bounded queues that never block, priorities, batching,
//! failures and panics, shutdown, and an end-to-end run through the real engine on a tiny model.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::{engine_fingerprint, FakeFactory, Gate};
use genie::cache::Cache;
use genie::diffusion::{tiny, EngineOptions, ModelSource};
use genie::generator::{
    DynEngine, EngineFactory, GenerationFailure, Generator, GeneratorConfig, HardNegativeGenerator,
    LevelOutcome, Priority, Request, Shutdown, SourceImage, WaitOutcome,
};
use genie::{EngineFingerprint, Job, NoiseLevel};
use image::RgbImage;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn fingerprint() -> EngineFingerprint {
    engine_fingerprint("test-engine", 8)
}

/// What the test engine saw: each generated (prompt, level, seed), and each call's job count.
/// A deterministic 8×8 image whose pixels encode the job and level.
fn encode_job(job: &Job, level: NoiseLevel) -> image::Rgb<u8> {
    image::Rgb([
        (level.thousandths() / 4) as u8 ^ job.seed as u8,
        job.prompt.len() as u8,
        7,
    ])
}

/// Fake engines painting [`encode_job`], held by `gate` when given.
fn test_factory(gate: Option<Arc<Gate>>) -> Arc<FakeFactory> {
    let factory = FakeFactory::new(fingerprint(), 8, encode_job);
    Arc::new(match gate {
        Some(gate) => factory.with_gate(gate),
        None => factory,
    })
}

fn cache() -> (tempfile::TempDir, Arc<Cache>) {
    let dir = tempfile::tempdir().unwrap();
    let cache = Arc::new(Cache::open_dir(dir.path(), 1 << 20).unwrap());
    (dir, cache)
}

fn source(v: u8) -> SourceImage {
    SourceImage::new(RgbImage::from_pixel(8, 8, image::Rgb([v, v, v])))
}

fn request(prompt: &str, seed: u64, levels: &[u16], priority: Priority) -> Request {
    Request {
        source: Some(source(seed as u8)),
        target: prompt.into(),
        prompt: prompt.into(),
        levels: crate::support::levels(levels),
        seed,
        priority,
    }
}

/// Devices are named `{tag}{i}` so each test can count its own worker threads (`genie-gen-{tag}{i}`).
fn config(tag: &str, devices: usize, capacity: usize, batch: usize) -> GeneratorConfig {
    let mut options = GeneratorConfig::default();
    options.devices = (0..devices).map(|i| format!("{tag}{i}")).collect();
    options.queue_capacity = capacity;
    options.max_batch = batch;
    options.failure_backoff = Duration::from_secs(60);
    options.max_backoff = Duration::from_secs(60);
    options.load_at_start = false;
    options
}

/// Live worker threads of the devices tagged `tag` (Linux thread names, from /proc).
fn worker_threads(tag: &str) -> usize {
    let prefix = format!("genie-gen-{tag}");
    std::fs::read_dir("/proc/self/task")
        .map(|rd| {
            rd.flatten()
                .filter(|t| {
                    std::fs::read_to_string(t.path().join("comm"))
                        .is_ok_and(|c| c.starts_with(&prefix))
                })
                .count()
        })
        .unwrap_or(0)
}

/// Opens the gate when dropped, so a failing assertion cannot leave workers blocked forever.
struct OpenOnDrop(Arc<Gate>);

/// A generator whose engines wait at a gate, closed until the test opens it.
struct Gated {
    /// First, so it drops first: a failed assertion cannot leave workers gated.
    _open_on_drop: OpenOnDrop,
    gate: Arc<Gate>,
    factory: Arc<FakeFactory>,
    generator: Generator,
    dir: tempfile::TempDir,
}

/// A generator on an ungated engine, its engine factory (for the log) and its cache's folder.
fn started(config: GeneratorConfig) -> (Arc<FakeFactory>, Generator, tempfile::TempDir) {
    let factory = test_factory(None);
    let (dir, cache) = cache();
    let generator = Generator::start(factory.clone(), cache, config).unwrap();
    (factory, generator, dir)
}

fn gated(config: GeneratorConfig) -> Gated {
    let gate = Gate::closed();
    let factory = test_factory(Some(gate.clone()));
    let (dir, cache) = cache();
    let generator = Generator::start(factory.clone(), cache, config).unwrap();
    Gated {
        _open_on_drop: OpenOnDrop(gate.clone()),
        gate,
        factory,
        generator,
        dir,
    }
}

impl Drop for OpenOnDrop {
    fn drop(&mut self) {
        self.0.open();
    }
}

#[test]
fn concurrent_requests_generate_each_key_exactly_once() {
    let factory = test_factory(None);
    let (_dir, cache) = cache();
    let generator = Arc::new(
        Generator::start(factory.clone(), cache.clone(), config("q", 2, 100_000, 4)).unwrap(),
    );
    let levels = [500u16, 600, 700, 800, 900];
    // 8 threads × 400 requests over 60 (prompt, seed) pairs × 5 levels = 300 keys.
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let generator = generator.clone();
            std::thread::spawn(move || {
                let mut outcomes = HashMap::new();
                for i in 0..400u64 {
                    let pair = (i * 7 + t * 13) % 60;
                    let lv = &levels[(i % 3) as usize..(i % 3) as usize + 3];
                    let receipt = generator
                        .request(request(
                            &format!("class {}", pair % 12),
                            pair,
                            lv,
                            Priority::Online,
                        ))
                        .unwrap();
                    for (_, _, o) in receipt.levels {
                        *outcomes.entry(format!("{o:?}")).or_insert(0u64) += 1;
                    }
                }
                outcomes
            })
        })
        .collect();
    let mut totals: HashMap<String, u64> = HashMap::new();
    for t in threads {
        for (k, v) in t.join().unwrap() {
            *totals.entry(k).or_default() += v;
        }
    }
    let generator = Arc::try_unwrap(generator).ok().unwrap();
    // Once everything is generated, asking again finds every level in the cache.
    let again: Vec<_> = (0..60u64)
        .map(|pair| {
            request(
                &format!("class {}", pair % 12),
                pair,
                &levels,
                Priority::Online,
            )
        })
        .collect();
    for r in &again {
        for (_, key, _) in generator.request(r.clone()).unwrap().levels {
            let _ = generator.wait(&key, Duration::from_secs(30)).unwrap();
        }
    }
    let cached_again: usize = again
        .into_iter()
        .map(|r| {
            generator
                .request(r)
                .unwrap()
                .count(LevelOutcome::AlreadyCached)
        })
        .sum();
    assert_eq!(cached_again, 300);
    let stats = generator.shutdown(Shutdown::Drain);
    let log = factory.log.lock().unwrap();
    let mut seen: HashMap<&(String, u16, u64), usize> = HashMap::new();
    for g in &log.generated {
        *seen.entry(g).or_default() += 1;
    }
    assert!(seen.values().all(|&n| n == 1), "a key was generated twice");
    assert_eq!(seen.len(), 300, "every key generated");
    assert_eq!(stats.done, 300);
    assert_eq!(stats.queued, 300);
    assert_eq!(stats.dropped, 0);
    // Every requested level is accounted for exactly once.
    let requested = 8 * 400 * 3 + 2 * 300;
    assert_eq!(
        stats.queued + stats.deduplicated + stats.cached + stats.dropped + stats.backing_off,
        requested
    );
    assert_eq!(totals.values().sum::<u64>(), 8 * 400 * 3);
    assert!(stats.deduplicated > 0 && stats.cached >= 300, "{stats:?}");
    assert_eq!(worker_threads("q"), 0);
}

#[test]
fn a_full_queue_drops_without_blocking() {
    let g = gated(config("f", 1, 2, 1));
    // The worker takes the first item and blocks in the engine; two more fill the queue.
    let first = g
        .generator
        .request(request("a", 0, &[800], Priority::Online))
        .unwrap();
    assert_eq!(first.count(LevelOutcome::Queued), 1);
    let deadline = Instant::now() + Duration::from_secs(5);
    while g.generator.stats().in_flight == 0 {
        assert!(
            Instant::now() < deadline,
            "worker never picked up the first item"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    let mut dropped = 0;
    for i in 1..50u64 {
        // If request() blocked on the full queue, this loop would hang with the gate closed.
        let r = g
            .generator
            .request(request("a", i, &[800], Priority::Online))
            .unwrap();
        dropped += r.count(LevelOutcome::Dropped);
    }
    assert_eq!(dropped, 47, "two fit in the queue, the rest are dropped");
    let stats = g.generator.stats();
    assert_eq!(
        (stats.queue_len, stats.dropped, stats.in_flight),
        (2, 47, 1)
    );
    assert!(!g.generator.has_room(Priority::Online));
    g.gate.open();
    let stats = g.generator.shutdown(Shutdown::Drain);
    assert_eq!(stats.done, 3);
}

#[test]
fn the_queue_counts_levels_not_requests() {
    let (_dir, cache) = cache();
    let generator = Generator::start(test_factory(None), cache, config("lv", 1, 5, 1)).unwrap();
    // Held: no worker takes anything, so the queue holds exactly what was accepted.
    generator.hold();
    let three = generator
        .request(request("a", 0, &[500, 600, 700], Priority::Prewarm))
        .unwrap();
    assert_eq!(three.count(LevelOutcome::Queued), 3);
    let two = generator
        .request(request("a", 1, &[500, 600], Priority::Prewarm))
        .unwrap();
    assert_eq!(two.count(LevelOutcome::Queued), 2);
    assert_eq!(generator.stats().queue_len, 5);
    assert!(!generator.has_room(Priority::Prewarm));
    // The sixth level does not fit, in a request of its own or in a larger one.
    let sixth = generator
        .request(request("a", 2, &[500], Priority::Prewarm))
        .unwrap();
    assert_eq!(sixth.count(LevelOutcome::Dropped), 1);
    // The other priority has a queue of its own.
    assert!(generator.has_room(Priority::Online));
    generator.release();
    let stats = generator.shutdown(Shutdown::Drain);
    assert_eq!((stats.done, stats.dropped, stats.queue_len), (5, 1, 0));
}

#[test]
fn online_requests_go_before_prewarm_and_jobs_are_batched() {
    let g = gated(config("p", 1, 100, 3));
    g.generator
        .request(request("blocker", 0, &[800], Priority::Prewarm))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while g.generator.stats().in_flight == 0 {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(1));
    }
    for i in 1..=3 {
        g.generator
            .request(request("prewarm", i, &[800], Priority::Prewarm))
            .unwrap();
    }
    for i in 1..=3 {
        g.generator
            .request(request("online", i, &[800], Priority::Online))
            .unwrap();
    }
    g.gate.open();
    g.generator.shutdown(Shutdown::Drain);
    let log = g.factory.log.lock().unwrap();
    let order: Vec<&str> = log.generated.iter().map(|g| g.0.as_str()).collect();
    assert_eq!(
        order,
        ["blocker", "online", "online", "online", "prewarm", "prewarm", "prewarm"]
    );
    assert_eq!(log.batch_sizes, [1, 3, 3]);
}

/// A held generator takes nothing; released, it takes the whole queue in order, in full batches,
/// however slowly the requests arrived: reruns group jobs alike (and give the same pixels).
#[test]
fn a_held_generator_batches_the_whole_queue_in_order_once_released() {
    let (factory, generator, _dir) = started(config("h", 1, 100, 3));
    generator.hold();
    for i in 1..=5 {
        generator
            .request(request("held", i, &[800], Priority::Online))
            .unwrap();
        // Time enough for an unheld worker to take each request alone.
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(generator.stats().in_flight, 0);
    assert!(factory.log.lock().unwrap().batch_sizes.is_empty());
    generator.release();
    generator.shutdown(Shutdown::Drain);
    let log = factory.log.lock().unwrap();
    assert_eq!(log.batch_sizes, [3, 2]);
    let seeds: Vec<u64> = log.generated.iter().map(|g| g.2).collect();
    assert_eq!(seeds, [1, 2, 3, 4, 5]);
}

/// Shutting down a held generator does not wait for a release: `Drain` finishes the queue.
#[test]
fn a_held_generator_still_drains_on_shutdown() {
    let (factory, generator, _dir) = started(config("hd", 1, 100, 4));
    generator.hold();
    generator
        .request(request("held", 1, &[500, 800], Priority::Prewarm))
        .unwrap();
    let stats = generator.shutdown(Shutdown::Drain);
    assert_eq!(stats.done, 2);
    assert_eq!(factory.log.lock().unwrap().batch_sizes, [1]);
}

/// Cancelling reaches inside a batch in flight: shutdown returns in well under the minute the
/// batch would take, the batch's levels count as dropped, not failed, and so does dropping the
/// generator (a training program that ends does not wait for its last batch).
#[test]
fn cancel_stops_the_batch_in_flight() {
    for drop_it in [false, true] {
        let (_dir, cache) = cache();
        let factory = Arc::new(
            FakeFactory::new(fingerprint(), 8, encode_job).with_call_time(Duration::from_secs(60)),
        );
        let generator = Generator::start(factory, cache, config("c", 1, 100, 4)).unwrap();
        generator
            .request(request("slow", 1, &[500, 800], Priority::Online))
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while generator.stats().in_flight == 0 {
            assert!(Instant::now() < deadline, "the batch never started");
            std::thread::sleep(Duration::from_millis(1));
        }
        let started = Instant::now();
        if drop_it {
            drop(generator);
        } else {
            let stats = generator.shutdown(Shutdown::Cancel);
            assert_eq!((stats.dropped, stats.failed), (2, 0), "{stats:?}");
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "stopping took {:?}",
            started.elapsed()
        );
    }
}

/// `wait_all` settles every key in order, reports progress after each, and returns the reasons of
/// those that did not become ready.
#[test]
fn wait_all_reports_progress_and_the_failures() {
    let (_factory, generator, _dir) = started(config("w", 1, 100, 1));
    let mut keys = Vec::new();
    for (prompt, seed) in [("fine", 1), ("please fail", 2), ("fine too", 3)] {
        let receipt = generator
            .request(request(prompt, seed, &[500, 800], Priority::Online))
            .unwrap();
        keys.extend(receipt.levels.into_iter().map(|(_, k, _)| k));
    }
    let mut seen = Vec::new();
    let failures = generator
        .wait_all(&keys, Duration::from_secs(10), &mut |done, total| {
            seen.push((done, total))
        })
        .unwrap();
    assert_eq!(seen, (1..=6).map(|n| (n, 6)).collect::<Vec<_>>());
    assert_eq!(failures.len(), 2, "{failures:?}");
    // The two levels of the failing request, in order, each with the engine's message.
    assert_eq!(failures[0].0, keys[2]);
    assert_eq!(failures[1].0, keys[3]);
    assert!(
        failures
            .iter()
            .all(|(_, outcome)| outcome.to_string().contains("asked to fail")),
        "{failures:?}"
    );
}

#[test]
fn failures_back_off_and_panics_restart_the_engine() {
    let (factory, generator, _dir) = started(config("b", 1, 100, 1));
    let boom = generator
        .request(request("please panic", 1, &[700], Priority::Online))
        .unwrap();
    let fail = generator
        .request(request("please fail", 2, &[700], Priority::Online))
        .unwrap();
    let fine = generator
        .request(request("fine", 3, &[700], Priority::Online))
        .unwrap();
    let wait = |r: &genie::generator::Receipt| {
        generator
            .wait(&r.levels[0].1, Duration::from_secs(10))
            .unwrap()
    };
    assert!(matches!(
        wait(&boom),
        WaitOutcome::Failed(GenerationFailure::Panic { .. })
    ));
    assert!(matches!(wait(&fail),
        WaitOutcome::Failed(GenerationFailure::Engine { message }) if message.contains("asked to fail")));
    assert_eq!(wait(&fine), WaitOutcome::Ready);
    // Asking again during the backoff is refused at once, not retried in a loop.
    let again = generator
        .request(request("please fail", 2, &[700], Priority::Online))
        .unwrap();
    assert_eq!(again.count(LevelOutcome::BackingOff), 1);
    // The service keeps working after the panic, with a fresh engine.
    let after = generator
        .request(request("fine again", 4, &[700], Priority::Online))
        .unwrap();
    assert_eq!(wait(&after), WaitOutcome::Ready);
    let stats = generator.shutdown(Shutdown::Drain);
    assert_eq!(
        (stats.panics, stats.failed, stats.done, stats.backing_off),
        (1, 2, 2, 1)
    );
    assert_eq!(
        factory.created.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "one engine at start, one after the panic"
    );
}

#[test]
fn cancel_with_work_in_flight_leaves_no_thread_and_no_partial_entry() {
    // Batches of one job: each worker holds exactly one job (2 levels) once it is in the gate.
    let g = gated(config("k", 2, 1000, 1));
    for i in 0..40 {
        g.generator
            .request(request("c", i, &[600, 900], Priority::Prewarm))
            .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while g.generator.stats().in_flight < 4 {
        assert!(Instant::now() < deadline, "{:?}", g.generator.stats());
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(worker_threads("k"), 2);
    let opener = {
        let gate = g.gate.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            gate.open();
        })
    };
    let stats = g.generator.shutdown(Shutdown::Cancel);
    opener.join().unwrap();
    assert_eq!(worker_threads("k"), 0, "worker threads left behind");
    // The two batches in flight (one job of 2 levels on each of 2 workers) finished whole.
    assert_eq!(stats.done, 4, "{stats:?}");
    assert_eq!(stats.dropped, 80 - 4);
    let report = genie::cache::DiskStore::open(g.dir.path())
        .unwrap()
        .verify(false)
        .unwrap();
    assert_eq!((report.checked, report.bad.len()), (4, 0));
}

#[test]
fn end_to_end_through_the_real_engine() {
    let model = tempfile::tempdir().unwrap();
    tiny::write_tiny_model(model.path(), 3).unwrap();
    // genie's own factory, as `genie warm run` and the serve command build it.
    let mut opts = EngineOptions::default();
    opts.steps = 8;
    let source = ModelSource::Local(model.path().into());
    let factory = Arc::new(genie::factory::SdEngineFactory::new(source, opts).unwrap());
    let (_dir, cache) = cache();
    let generator = Generator::start(factory, cache.clone(), GeneratorConfig::default()).unwrap();
    let src = SourceImage::new(RgbImage::from_fn(64, 64, |x, y| {
        image::Rgb([x as u8 * 4, y as u8 * 4, 9])
    }));
    let receipt = generator
        .request(Request {
            source: Some(src),
            target: "cat".into(),
            prompt: "a photo of a cat.".into(),
            levels: NoiseLevel::ADA_SWEEP.to_vec(),
            seed: 1,
            priority: Priority::Online,
        })
        .unwrap();
    assert_eq!(receipt.count(LevelOutcome::Queued), 5);
    for (_, key, _) in &receipt.levels {
        assert_eq!(
            generator.wait(key, Duration::from_secs(120)).unwrap(),
            WaitOutcome::Ready
        );
        let img = cache.get_image(key).unwrap().expect("cached");
        assert_eq!(img.dimensions(), (64, 64));
    }
    let stats = generator.shutdown(Shutdown::Drain);
    assert_eq!(
        (stats.done, stats.engine_calls),
        (5, 1),
        "one engine call for the whole sweep"
    );
}

/// A factory whose engines can never be made (e.g. truncated weights behind valid configs).
struct BrokenFactory(EngineFingerprint, Mutex<usize>);

impl EngineFactory for BrokenFactory {
    fn fingerprint(&self) -> &EngineFingerprint {
        &self.0
    }
    fn resolution(&self) -> u32 {
        8
    }
    fn create(&self, _device: &str) -> Result<Box<dyn DynEngine>, BoxError> {
        *self.1.lock().unwrap() += 1;
        Err("weights are truncated".into())
    }
}

#[test]
fn an_engine_that_cannot_be_made_fails_requests_instead_of_hanging() {
    let factory = Arc::new(BrokenFactory(fingerprint(), Mutex::new(0)));
    let (_dir, cache) = cache();
    let generator = Generator::start(factory.clone(), cache, config("x", 1, 100, 1)).unwrap();
    let a = generator
        .request(request("a", 1, &[800], Priority::Online))
        .unwrap();
    let outcome = generator
        .wait(&a.levels[0].1, Duration::from_secs(10))
        .unwrap();
    assert!(
        matches!(&outcome, WaitOutcome::Failed(GenerationFailure::EngineCreation { message, .. }) if message.contains("truncated")),
        "{outcome:?}"
    );
    // Within the creation backoff, other work fails at once without another attempt.
    let b = generator
        .request(request("b", 2, &[800], Priority::Online))
        .unwrap();
    assert!(matches!(
        generator
            .wait(&b.levels[0].1, Duration::from_secs(10))
            .unwrap(),
        WaitOutcome::Failed(_)
    ));
    assert_eq!(*factory.1.lock().unwrap(), 1);
    let stats = generator.shutdown(Shutdown::Drain);
    assert_eq!((stats.failed, stats.done), (2, 0));
    assert_eq!(worker_threads("x"), 0);
}

/// A config with nothing to run on and requests the engine cannot take are typed errors, said at
/// once, not queued work that fails later.
#[test]
fn bad_configs_and_requests_are_typed_errors() {
    use genie::generator::GeneratorError;
    let (_dir, cache) = cache();
    for (devices, capacity, batch) in [(0, 4, 1), (1, 0, 1), (1, 4, 0)] {
        let started = Generator::start(
            test_factory(None),
            Arc::clone(&cache),
            config("bad", devices, capacity, batch),
        );
        match started {
            Err(GeneratorError::Config {
                devices: d,
                queue_capacity: q,
                max_batch: b,
            }) => assert_eq!((d, q, b), (devices, capacity, batch)),
            other => panic!("expected a config error, got {:?}", other.err()),
        }
    }
    let generator = Generator::start(test_factory(None), cache, config("req", 1, 4, 1)).unwrap();
    let mut wrong_size = request("a", 0, &[800], Priority::Online);
    wrong_size.source = Some(SourceImage::new(RgbImage::new(9, 8)));
    assert!(matches!(
        generator.request(wrong_size),
        Err(GeneratorError::SourceSize {
            width: 9,
            height: 8,
            expected: 8
        })
    ));
    let mut no_source = request("a", 0, &[800, 1000], Priority::Online);
    no_source.source = None;
    assert!(matches!(
        generator.request(no_source),
        Err(GeneratorError::MissingSource)
    ));
    let mut text_only = request("a", 0, &[1000], Priority::Online);
    text_only.source = None;
    assert!(generator.request(text_only).is_ok());
    generator.shutdown(Shutdown::Drain);
}
