//! Clients: a batcher mixing a server's hard negatives across the server's SIGKILL and restart,
//! and a client holding its retries back while the queue is full.

use super::*;

#[test]
fn a_batcher_mixes_a_servers_hard_negatives_and_outlives_the_server() {
    use genie::classes::ClassInfo;
    use genie::loader::{Augmenter, GenieBatcher, GenieItem};
    use genie::policy::{ClassStats, Policy, PolicyConfig};
    use genie::remote::{RemoteConfig, RemoteError, RemoteGenerator};
    use std::sync::Arc;

    let tmp = tempfile::tempdir().unwrap();
    let cache_dir = tmp.path().join("cache");
    // A shared server: it takes calls with its token only.
    let token_path = token_file(tmp.path());
    let token_arg = ["--token-file", token_path.to_str().unwrap()];
    let server = start(tmp.path(), &cache_dir, &token_arg);
    let (status, body) = get_with_token(&server.addr, "/v1/info");
    assert_eq!(status, 200, "{body}");
    let info: ServerInfo = serde_json::from_str(&body).unwrap();
    let url = format!("http://{}", server.addr);

    // A job without the token is refused at connect, saying why.
    let mut tokenless = RemoteConfig::default();
    tokenless.token = None;
    match RemoteGenerator::connect(&url, &info.fingerprint, tokenless) {
        Err(RemoteError::Refused {
            status: 401,
            kind: Some(ErrorKind::Unauthorized),
            ..
        }) => {}
        Err(e) => panic!("expected 401, got {e}"),
        Ok(_) => panic!("expected 401"),
    }
    let token = genie::remote::Token::new(TOKEN, "test").unwrap();

    // A job whose keys are for another engine is refused at connect, naming both.
    let mut other = info.fingerprint.clone();
    other.steps = 50;
    let mut with_token = RemoteConfig::default();
    with_token.token = Some(token.clone());
    match RemoteGenerator::connect(&url, &other, with_token) {
        Err(e @ RemoteError::FingerprintMismatch { .. }) => {
            let text = e.to_string();
            assert!(
                text.contains("4 steps") && text.contains("50 steps"),
                "{text}"
            );
        }
        Err(e) => panic!("expected a fingerprint mismatch, got {e}"),
        Ok(_) => panic!("expected a fingerprint mismatch"),
    }

    let mut config = RemoteConfig::default();
    config.token = Some(token);
    config.backoff = Duration::from_millis(50);
    config.max_backoff = Duration::from_millis(200);
    let remote = Arc::new(RemoteGenerator::connect(&url, &info.fingerprint, config).unwrap());
    let cache = Arc::new(genie::cache::Cache::open_dir(&cache_dir, 16 << 20).unwrap());
    let names: Vec<String> = genie::synthetic::CLASS_NAMES[..4]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let policy = Policy::long_tail(
        ClassStats::from_counts(vec![300, 120, 60, 5]),
        // A few new pairs in every batch, for longer than the test runs: requests keep going
        // out while the server is down and after it is back.
        {
            let mut options = PolicyConfig::long_tail();
            options.per_target = 1000;
            options.new_pairs_per_batch = 2;
            options.uses_per_epoch = None;
            options
        },
    )
    .unwrap();
    let classes = names.into_iter().map(ClassInfo::named).collect();
    let augmenter = Augmenter::builder(policy, classes, cache)
        .generator(remote.clone())
        .ada(false)
        .build()
        .unwrap();
    let batcher = GenieBatcher::new(crate::support::Identity, augmenter);
    let device = burn::tensor::Device::default();
    let mut round = 0;
    let mut mixed_until = |batcher: &GenieBatcher<_, _>, what: &str| {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let b: Vec<genie::loader::ImageItem> =
                burn::data::dataloader::batcher::Batcher::batch(batcher, batch(round), &device);
            round += 1;
            assert_eq!(b.len(), 16);
            if b.iter().any(GenieItem::is_generated) {
                return;
            }
            assert!(Instant::now() < deadline, "no hard negative mixed {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    mixed_until(&batcher, "from the first server");
    let mixed_before = batcher.augmenter().stats().mixed;

    // The server dies: batches keep coming, un-augmented where nothing is cached, never waiting.
    let port = server.addr.rsplit(':').next().unwrap().to_string();
    drop(server);
    for _ in 0..30 {
        let started = Instant::now();
        let b: Vec<genie::loader::ImageItem> =
            burn::data::dataloader::batcher::Batcher::batch(&batcher, batch(round), &device);
        round += 1;
        assert_eq!(b.len(), 16);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "a batch waited on the network"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let down = remote.stats();
    assert!(!down.up, "{down:?}");
    assert!(down.dropped_unreachable > 0, "{down:?}");

    // It comes back on the same address: the client reconnects and mixing resumes with images
    // the new server made.
    let server = start_at(
        &format!("127.0.0.1:{port}"),
        tmp.path(),
        &cache_dir,
        &token_arg,
    );
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let b: Vec<genie::loader::ImageItem> =
            burn::data::dataloader::batcher::Batcher::batch(&batcher, batch(round), &device);
        round += 1;
        let (_, metrics) = get_with_token(&server.addr, "/metrics");
        let made = metrics
            .lines()
            .find_map(|l| l.strip_prefix("genie_levels_done_total "))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        if made > 0 && b.iter().any(GenieItem::is_generated) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "mixing did not resume after the restart"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let back = remote.stats();
    assert!(back.up && back.reconnects >= 1, "{back:?}");
    assert!(batcher.augmenter().stats().mixed > mixed_before);
    drop(server);

    // Nothing half-written: every entry of the cache verifies.
    let o = Command::new(env!("CARGO_BIN_EXE_genie"))
        .args(["cache", "verify"])
        .arg(&cache_dir)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn a_client_holds_retries_back_while_the_servers_queue_is_full() {
    use genie::generator::{HardNegativeGenerator, LevelOutcome, Priority, Request};
    use genie::remote::{RemoteConfig, RemoteGenerator};

    let tmp = tempfile::tempdir().unwrap();
    let server = start_in(tmp.path(), &["--queue-capacity", "1"]);
    let info = info(&server.addr);
    let mut config = RemoteConfig::default();
    config.backoff = Duration::from_secs(30);
    let remote = RemoteGenerator::connect(
        &format!("http://{}", server.addr),
        &info.fingerprint,
        config,
    )
    .unwrap();
    assert!(remote.has_room(Priority::Prewarm));
    for seed in 0..20 {
        let src = source(100 + seed);
        remote
            .request(Request {
                source: Some(src),
                target: "star".into(),
                prompt: "a photo of a star".into(),
                levels: vec![genie::NoiseLevel::GENIE_DEFAULT],
                seed,
                priority: Priority::Prewarm,
            })
            .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut dropped = 0;
    while dropped == 0 {
        assert!(
            Instant::now() < deadline,
            "the server never said its queue was full"
        );
        dropped += remote
            .late_receipts()
            .iter()
            .map(|r| r.count(LevelOutcome::Dropped))
            .sum::<usize>();
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        !remote.has_room(Priority::Prewarm),
        "a full server queue should hold retries back"
    );
}
