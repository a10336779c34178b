//! `genie serve` as a child process on loopback with the tiny engine: it answers requests at
//! once and fills the cache, refuses another engine's keys by name, answers malformed, oversized
//! and hostile input with typed 4xx and keeps serving, reports Prometheus metrics, and drains its
//! queue on SIGTERM. The HTTP client is a few lines over a `TcpStream`, so the tests can also send
//! bytes no client library would.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use genie::generator::SourceImage;
use genie::remote::protocol::{
    encode_pixels, hash_hex, BatchAnswer, ErrorBody, ErrorKind, KeyState, RequestAnswer,
    RequestBatch, ServerInfo, WireOutcome, WirePriority, WireRequest, WireSource, WireWait,
};

/// A `genie serve` child; killed when dropped.
struct Server {
    child: Child,
    addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(home: &std::path::Path, cache: &std::path::Path, extra: &[&str]) -> Server {
    start_at("127.0.0.1:0", home, cache, extra)
}

/// A server on `listen` (port 0: any free one).
fn start_at(
    listen: &str,
    home: &std::path::Path,
    cache: &std::path::Path,
    extra: &[&str],
) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_genie"))
        .args([
            "serve", "--model", "tiny", "--steps", "4", "--listen", listen,
        ])
        .arg("--cache")
        .arg(cache)
        .args(extra)
        .env("GENIE_HOME", home)
        .env("HF_HUB_OFFLINE", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_string();
    let server = Server { child, addr };
    // Ready once the engine is loaded.
    let deadline = Instant::now() + Duration::from_secs(60);
    while http(&server.addr, "GET", "/readyz", b"").0 != 200 {
        assert!(Instant::now() < deadline, "the server never became ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    server
}

/// One HTTP/1.1 call; (status, body).
fn http(addr: &str, method: &str, path: &str, body: &[u8]) -> (u16, String) {
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    raw(addr, &[head.as_bytes(), body].concat())
}

/// One HTTP/1.1 call with the token (and other headers); (status, head and body).
fn http_with(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    let mut head = format!("{method} {path} HTTP/1.1\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
        head.push_str(&format!("Host: {addr}\r\n"));
    }
    head.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    ));
    raw(addr, &[head.as_bytes(), body].concat())
}

/// Sends `bytes` as they are; (status, body), status 0 when the answer is not HTTP.
fn raw(addr: &str, bytes: &[u8]) -> (u16, String) {
    let (status, _, body) = exchange(addr, bytes);
    (status, body)
}

/// Sends `bytes` as they are; (status, head, body), status 0 when the answer is not HTTP.
fn exchange(addr: &str, bytes: &[u8]) -> (u16, String, String) {
    let Ok(mut stream) = TcpStream::connect(addr) else {
        return (0, String::new(), String::new());
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let _ = stream.write_all(bytes);
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .map_or((text.clone(), String::new()), |(h, b)| {
            (h.to_string(), b.to_string())
        });
    (status, head, body)
}

/// Posts 200 requests of five levels each (sources drawn from `first_seed` on) for `target`.
fn queue_1000_images(addr: &str, first_seed: u64, target: &str) -> (u16, String) {
    let requests: Vec<WireRequest> = (0..200)
        .map(|seed| {
            request(
                &source(first_seed + seed),
                target,
                &[500, 600, 700, 800, 900],
                true,
            )
        })
        .collect();
    post(
        addr,
        &RequestBatch {
            fingerprint: info(addr).fingerprint,
            requests,
        },
    )
}

/// Waits for the server to exit, at most `within`; it must exit 0. Its stderr.
fn exits_within(server: &mut Server, within: Duration) -> String {
    let deadline = Instant::now() + within;
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the server did not stop in {within:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
    let mut stderr = String::new();
    server
        .child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    stderr
}

fn info(addr: &str) -> ServerInfo {
    let (status, body) = http(addr, "GET", "/v1/info", b"");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// A drawn 64-px source (the tiny model's side).
fn source(seed: u64) -> SourceImage {
    let item = genie::synthetic::balanced_dataset(1, 1, 64, seed).unwrap();
    SourceImage::new(item[0].image.clone())
}

fn request(src: &SourceImage, target: &str, levels: &[u16], with_pixels: bool) -> WireRequest {
    WireRequest {
        source: Some(WireSource {
            hash: hash_hex(&src.hash),
            pixels: with_pixels.then(|| encode_pixels(src)),
        }),
        target: target.into(),
        prompt: format!("a photo of a {target}"),
        levels: levels.to_vec(),
        seed: 7,
        priority: WirePriority::Prewarm,
    }
}

fn post(addr: &str, batch: &RequestBatch) -> (u16, String) {
    http(
        addr,
        "POST",
        "/v1/requests",
        &serde_json::to_vec(batch).unwrap(),
    )
}

fn answers(body: &str) -> Vec<RequestAnswer> {
    serde_json::from_str::<BatchAnswer>(body)
        .unwrap_or_else(|e| panic!("{e}: {body}"))
        .answers
}

fn error_kind(body: &str) -> ErrorKind {
    serde_json::from_str::<ErrorBody>(body)
        .unwrap_or_else(|e| panic!("{e}: {body}"))
        .kind
}

#[test]
fn serve_answers_at_once_fills_the_cache_and_reports_metrics() {
    let tmp = tempfile::tempdir().unwrap();
    let cache_dir = tmp.path().join("cache");
    let server = start(tmp.path(), &cache_dir, &[]);
    assert_eq!(http(&server.addr, "GET", "/healthz", b"").0, 200);
    let info = info(&server.addr);
    assert_eq!(info.resolution, 64);

    let src = source(1);
    let batch = RequestBatch {
        fingerprint: info.fingerprint.clone(),
        requests: vec![request(&src, "star", &[500, 800], true)],
    };
    let (status, body) = post(&server.addr, &batch);
    assert_eq!(status, 200, "{body}");
    let RequestAnswer::Levels(levels) = &answers(&body)[0] else {
        panic!("refused: {body}");
    };
    assert_eq!(levels.len(), 2);
    assert!(
        levels.iter().all(|l| l.outcome == WireOutcome::Queued),
        "{body}"
    );
    for level in levels {
        let (status, body) = http(
            &server.addr,
            "GET",
            &format!("/v1/keys/{}?wait_ms=30000", level.key),
            b"",
        );
        assert_eq!(status, 200, "{body}");
        let state: KeyState = serde_json::from_str(&body).unwrap();
        assert_eq!(state.state, WireWait::Ready, "{body}");
    }
    // The same request again: cached. The pixels are remembered, so the hash alone will do.
    let again = RequestBatch {
        fingerprint: info.fingerprint.clone(),
        requests: vec![request(&src, "star", &[500, 800], false)],
    };
    let (status, body) = post(&server.addr, &again);
    assert_eq!(status, 200, "{body}");
    let RequestAnswer::Levels(again_levels) = &answers(&body)[0] else {
        panic!("refused: {body}");
    };
    assert!(
        again_levels
            .iter()
            .all(|l| l.outcome == WireOutcome::AlreadyCached),
        "{body}"
    );

    let (status, metrics) = http(&server.addr, "GET", "/metrics", b"");
    assert_eq!(status, 200);
    for line in [
        "genie_levels_done_total 2",
        "genie_levels_cached_total 2",
        "genie_queue_depth 0",
        "genie_device_engine_loaded{device=\"cpu\"} 1",
        "genie_device_levels_done_total{device=\"cpu\"} 2",
        // The raw client names itself by its address; it queued both levels, both were made.
        "genie_client_levels_queued_total{client=\"127.0.0.1\"} 2",
        "genie_client_levels_generated_total{client=\"127.0.0.1\"} 2",
        "genie_http_request_duration_seconds_count{route=\"/v1/requests\"} 2",
        "genie_http_request_duration_seconds_count{route=\"/v1/keys/{key}\"} 2",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "no {line:?} in\n{metrics}"
        );
    }
    for prefix in [
        "genie_http_open_connections ",
        "genie_process_resident_memory_bytes ",
        "genie_http_request_duration_seconds_bucket{route=\"/v1/keys/{key}\",le=\"30\"} 2",
    ] {
        assert!(
            metrics.lines().any(|l| l.starts_with(prefix)),
            "no {prefix:?} in\n{metrics}"
        );
    }
    drop(server);

    // What the server wrote, read by a training process: decodable images of the right size.
    let cache = genie::cache::Cache::open_dir(&cache_dir, 1 << 20).unwrap();
    for level in levels {
        let image = cache.get_image(&level.key).unwrap().expect("cached");
        assert_eq!(image.dimensions(), (64, 64));
    }
}

#[test]
fn serve_refuses_other_engines_and_hostile_input_and_keeps_serving() {
    let tmp = tempfile::tempdir().unwrap();
    let server = start(
        tmp.path(),
        &tmp.path().join("cache"),
        &["--body-limit", "64KiB"],
    );
    let info = info(&server.addr);
    let src = source(2);
    let addr = server.addr.as_str();

    // Keys made for another engine: refused, naming both.
    let mut other = info.fingerprint.clone();
    other.steps = 50;
    let (status, body) = post(
        addr,
        &RequestBatch {
            fingerprint: other,
            requests: vec![request(&src, "star", &[800], true)],
        },
    );
    assert_eq!(status, 409, "{body}");
    assert_eq!(error_kind(&body), ErrorKind::FingerprintMismatch);
    assert!(
        body.contains("4 steps") && body.contains("50 steps"),
        "{body}"
    );

    // Not JSON, the wrong JSON, too large, too many requests.
    let (status, body) = http(addr, "POST", "/v1/requests", b"{not json");
    assert_eq!(
        (status, error_kind(&body)),
        (400, ErrorKind::Malformed),
        "{body}"
    );
    let (status, body) = http(addr, "POST", "/v1/requests", br#"{"requests": 3}"#);
    assert_eq!(
        (status, error_kind(&body)),
        (400, ErrorKind::Malformed),
        "{body}"
    );
    let (status, body) = http(addr, "POST", "/v1/requests", &vec![b' '; 100 << 10]);
    assert_eq!(
        (status, error_kind(&body)),
        (413, ErrorKind::TooLarge),
        "{body}"
    );
    let many = RequestBatch {
        fingerprint: info.fingerprint.clone(),
        requests: vec![request(&src, "star", &[800], false); 300],
    };
    let (status, body) = post(addr, &many);
    assert_eq!(
        (status, error_kind(&body)),
        (400, ErrorKind::BadRequest),
        "{body}"
    );

    // Per request: each refused with its reason, the good one beside them taken.
    let mut bad_hash = request(&src, "star", &[800], true);
    bad_hash.source.as_mut().unwrap().hash = hash_hex(&[7; 32]);
    let mut short_pixels = request(&src, "star", &[800], true);
    short_pixels.source.as_mut().unwrap().pixels = Some("AAAA".into());
    let unknown = request(&source(3), "star", &[800], false);
    let batch = RequestBatch {
        fingerprint: info.fingerprint.clone(),
        requests: vec![
            request(&src, "star", &[0, 1001], true),
            bad_hash,
            short_pixels,
            unknown,
            request(&src, "star", &[800], true),
        ],
    };
    let (status, body) = post(addr, &batch);
    assert_eq!(status, 200, "{body}");
    let kinds: Vec<Option<ErrorKind>> = answers(&body)
        .iter()
        .map(|a| match a {
            RequestAnswer::Refused(e) => Some(e.kind),
            RequestAnswer::Levels(_) => None,
        })
        .collect();
    assert_eq!(
        kinds,
        vec![
            Some(ErrorKind::BadRequest),
            Some(ErrorKind::HashMismatch),
            Some(ErrorKind::BadRequest),
            Some(ErrorKind::UnknownSource),
            None
        ],
        "{body}"
    );

    // A key that is not one, an unknown path, garbage on the socket.
    let (status, body) = http(addr, "GET", "/v1/keys/xyz", b"");
    assert_eq!(
        (status, error_kind(&body)),
        (400, ErrorKind::BadRequest),
        "{body}"
    );
    let (status, body) = http(addr, "GET", "/v2/anything", b"");
    assert_eq!(
        (status, error_kind(&body)),
        (404, ErrorKind::NotFound),
        "{body}"
    );
    assert_eq!(raw(addr, &[0xff; 4096]).0, 400);
    // A huge declared body that never comes is refused at once, not waited for.
    let started = Instant::now();
    let huge = format!(
        "POST /v1/requests HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: 999999999999\r\n\r\n{{"
    );
    let (status, body) = raw(addr, huge.as_bytes());
    assert_eq!(
        (status, error_kind(&body)),
        (413, ErrorKind::TooLarge),
        "{body}"
    );
    assert!(started.elapsed() < Duration::from_secs(20));

    // Still serving, and the refusals are counted by kind.
    assert_eq!(http(addr, "GET", "/healthz", b"").0, 200);
    let (_, metrics) = http(addr, "GET", "/metrics", b"");
    for kind in [
        "malformed",
        "too_large",
        "fingerprint_mismatch",
        "hash_mismatch",
    ] {
        let prefix = format!("genie_http_refused_total{{kind=\"{kind}\"}} ");
        assert!(
            metrics.lines().any(|l| l.starts_with(&prefix)),
            "no {prefix:?} in\n{metrics}"
        );
    }
}

#[test]
fn serve_drains_its_queue_on_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let cache_dir = tmp.path().join("cache");
    let mut server = start(tmp.path(), &cache_dir, &["--drain-timeout", "120s"]);
    let info = info(&server.addr);
    let requests: Vec<WireRequest> = (10..16)
        .map(|seed| request(&source(seed), "heart", &[500, 600, 700, 800, 900], true))
        .collect();
    let (status, body) = post(
        &server.addr,
        &RequestBatch {
            fingerprint: info.fingerprint,
            requests,
        },
    );
    assert_eq!(status, 200, "{body}");
    let mut keys = Vec::new();
    for answer in answers(&body) {
        match answer {
            RequestAnswer::Levels(levels) => keys.extend(levels.iter().map(|l| l.key)),
            RequestAnswer::Refused(e) => panic!("refused: {e:?}"),
        }
    }
    assert_eq!(keys.len(), 30);
    // SAFETY: kill(2) on our own child's pid.
    let rc = unsafe { libc::kill(server.child.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(rc, 0);
    let stderr = exits_within(&mut server, Duration::from_secs(120));
    assert!(stderr.contains("stopped after 30 images"), "{stderr}");
    let cache = genie::cache::Cache::open_dir(&cache_dir, 1 << 20).unwrap();
    for key in &keys {
        assert!(cache.contains(key).unwrap(), "{key} was not drained");
    }
}

/// A batch of 16 drawn 64-px items dominated by class 0, one of each other class (class 3 is
/// the Few class the policy targets).
fn batch(round: usize) -> Vec<genie::loader::ImageItem> {
    let draw = |class: usize, n: usize| {
        let items = genie::synthetic::balanced_dataset(1, 4, 64, (round * 100 + n) as u64).unwrap();
        let it = items.into_iter().find(|i| i.label == class).unwrap();
        genie::loader::image_item(&it.image, class, format!("{class}/{round}-{n}.png"))
    };
    let mut items: Vec<_> = (0..13).map(|n| draw(0, n)).collect();
    items.extend((1..4).map(|c| draw(c, 50)));
    items
}

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
    let (status, body) = http_with(
        &server.addr,
        "GET",
        "/v1/info",
        &[("Authorization", BEARER)],
        b"",
    );
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
        let (_, metrics) = http_with(
            &server.addr,
            "GET",
            "/metrics",
            &[("Authorization", BEARER)],
            b"",
        );
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
    let server = start(
        tmp.path(),
        &tmp.path().join("cache"),
        &["--queue-capacity", "1"],
    );
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

const TOKEN: &str = "genie-test-token-0123456789abcdef";
const BEARER: &str = "Bearer genie-test-token-0123456789abcdef";

/// A token file readable by its owner only.
fn token_file(dir: &std::path::Path) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let path = dir.join("genie.token");
    std::fs::write(&path, format!("{TOKEN}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

#[test]
fn a_token_server_refuses_strangers_browsers_and_foreign_hosts() {
    let tmp = tempfile::tempdir().unwrap();
    let token = token_file(tmp.path());
    let server = start(
        tmp.path(),
        &tmp.path().join("cache"),
        &["--token-file", token.to_str().unwrap()],
    );
    let addr = server.addr.as_str();
    let auth = [("Authorization", BEARER)];
    // No token, or a wrong one: 401 with genie's error body and the scheme to use.
    for headers in [
        vec![],
        vec![("Authorization", "Bearer genie-test-token-0123456789abcdeX")],
    ] {
        let mut head = format!("GET /v1/info HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
        for (n, v) in &headers {
            head.push_str(&format!("{n}: {v}\r\n"));
        }
        head.push_str("\r\n");
        let (status, head, body) = exchange(addr, head.as_bytes());
        assert_eq!(status, 401, "{body}");
        assert!(
            head.to_ascii_lowercase()
                .contains("www-authenticate: bearer"),
            "{head}"
        );
        assert_eq!(error_kind(&body), ErrorKind::Unauthorized);
    }
    let (status, body) = http_with(addr, "GET", "/v1/info", &auth, b"");
    assert_eq!(status, 200, "{body}");
    let info: ServerInfo = serde_json::from_str(&body).unwrap();
    // Probes stay open; metrics need the token (no --open-metrics).
    assert_eq!(http_with(addr, "GET", "/healthz", &[], b"").0, 200);
    assert_eq!(http_with(addr, "GET", "/readyz", &[], b"").0, 200);
    assert_eq!(http_with(addr, "GET", "/metrics", &[], b"").0, 401);
    assert_eq!(http_with(addr, "GET", "/metrics", &auth, b"").0, 200);
    assert_eq!(http_with(addr, "GET", "/v1/keys/00", &[], b"").0, 401);

    // A browser's cross-site "simple request" (text/plain, no preflight), even with the token.
    let batch = serde_json::to_vec(&RequestBatch {
        fingerprint: info.fingerprint.clone(),
        requests: vec![request(&source(3), "star", &[500], true)],
    })
    .unwrap();
    let plain = [("Authorization", BEARER), ("Content-Type", "text/plain")];
    let (status, body) = http_with(addr, "POST", "/v1/requests", &plain, &batch);
    assert_eq!(status, 415, "{body}");
    assert_eq!(error_kind(&body), ErrorKind::UnsupportedMediaType);
    // A page on another name that resolves here (DNS rebinding): refused by its Host.
    let foreign = [
        ("Authorization", BEARER),
        ("Host", "genie.attacker.example:8700"),
    ];
    let (status, body) = http_with(addr, "GET", "/v1/info", &foreign, b"");
    assert_eq!(status, 421, "{body}");
    assert_eq!(error_kind(&body), ErrorKind::WrongHost);
    // The same call, as a client sends it: served.
    let json = [
        ("Authorization", BEARER),
        ("Content-Type", "application/json; charset=utf-8"),
    ];
    let (status, body) = http_with(addr, "POST", "/v1/requests", &json, &batch);
    assert_eq!(status, 200, "{body}");
    assert!(
        matches!(answers(&body)[0], RequestAnswer::Levels(_)),
        "{body}"
    );

    let (_, metrics) = http_with(addr, "GET", "/metrics", &auth, b"");
    for kind in ["unauthorized", "unsupported_media_type", "wrong_host"] {
        let prefix = format!("genie_http_refused_total{{kind=\"{kind}\"}} ");
        assert!(
            metrics.lines().any(|l| l.starts_with(&prefix)),
            "no {prefix:?} in\n{metrics}"
        );
    }

    // Every address without a token: refused before the model loads, saying how to make one.
    let o = Command::new(env!("CARGO_BIN_EXE_genie"))
        .args([
            "serve",
            "--model",
            "tiny",
            "--steps",
            "4",
            "--listen",
            "0.0.0.0:0",
        ])
        .arg("--cache")
        .arg(tmp.path().join("cache"))
        .env("GENIE_HOME", tmp.path())
        .env("HF_HUB_OFFLINE", "1")
        .env_remove("GENIE_TOKEN")
        .env_remove("GENIE_TOKEN_FILE")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{stderr}");
    assert!(
        stderr.contains("without a token") && stderr.contains("openssl rand"),
        "{stderr}"
    );
}

/// Whether the server closed `stream` (read gives end of file or a reset) within `within`.
fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    stream.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 512];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            // A 408 the server may send before closing.
            Ok(_) => continue,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return false
            }
            Err(_) => return true,
        }
    }
}

#[test]
fn slow_clients_are_cut_off_connections_are_bounded_and_sigterm_ends_by_its_deadline() {
    let tmp = tempfile::tempdir().unwrap();
    let mut server = start(
        tmp.path(),
        &tmp.path().join("cache"),
        &[
            "--header-timeout",
            "1s",
            "--max-connections",
            "16",
            "--unready-delay",
            "1s",
            "--drain-timeout",
            "4s",
            "--client-share",
            "1",
        ],
    );
    let addr = server.addr.clone();
    // Half a request head, then nothing: cut off by the header timeout.
    let mut slow = TcpStream::connect(&addr).unwrap();
    slow.write_all(b"GET /v1/info HTTP/1.1\r\nHost: loc")
        .unwrap();
    let started = Instant::now();
    assert!(
        closed_within(&mut slow, Duration::from_secs(5)),
        "a half head held its connection"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );

    // 40 idle connections against a limit of 16: a real call still gets through (the idle ones
    // are cut off a second after they were accepted), and no more than 16 are ever open.
    let idle: Vec<TcpStream> = (0..40)
        .map(|_| TcpStream::connect(&addr).unwrap())
        .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    let metrics = loop {
        let (status, body) = http(&addr, "GET", "/metrics", b"");
        if status == 200 {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "idle connections kept a call out: {status}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let open: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("genie_http_open_connections "))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no open connections in\n{metrics}"));
    assert!((1..=16).contains(&open), "{open} open");
    drop(idle);

    // Work queued (1 000 images, far more than 4 s of it), a client holding half a head:
    // SIGTERM says `draining` on /readyz while it still listens, and ends by its deadline with
    // exit 0, cancelling what is left.
    let (status, body) = queue_1000_images(&addr, 1000, "heart");
    assert_eq!(status, 200, "{body}");
    let mut holder = TcpStream::connect(&addr).unwrap();
    holder.write_all(b"POST /v1/requests HTTP/1.1\r\n").unwrap();
    // SAFETY: kill(2) on our own child's pid.
    let rc = unsafe { libc::kill(server.child.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(rc, 0);
    let signalled = Instant::now();
    let mut draining = false;
    while signalled.elapsed() < Duration::from_millis(800) && !draining {
        let (status, body) = http(&addr, "GET", "/readyz", b"");
        draining = status == 503 && body.contains("draining");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        draining,
        "/readyz never said draining before the listener closed"
    );
    // By its 4 s deadline, with some slack for a loaded machine.
    let stderr = exits_within(
        &mut server,
        Duration::from_secs(10).saturating_sub(signalled.elapsed()),
    );
    // "stopped after N images (F failed, D dropped)": the deadline cut the queue short.
    let dropped: u64 = stderr
        .split("genie serve: stopped after ")
        .nth(1)
        .and_then(|rest| rest.split(", ").nth(1))
        .and_then(|d| d.split_whitespace().next())
        .and_then(|d| d.parse().ok())
        .unwrap_or_else(|| panic!("no final counts in {stderr}"));
    assert!(dropped > 0, "nothing was left to cancel: {stderr}");
}

#[test]
fn a_thousand_idle_connections_and_600_long_polls_do_not_stop_a_valid_request() {
    let tmp = tempfile::tempdir().unwrap();
    let server = start(
        tmp.path(),
        &tmp.path().join("cache"),
        &["--client-share", "1"],
    );
    let mut idle = Vec::new();
    for _ in 0..1000 {
        match TcpStream::connect(&server.addr) {
            Ok(s) => idle.push(s),
            Err(e) => panic!("connection {} refused: {e}", idle.len()),
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _) = http(&server.addr, "GET", "/v1/info", b"");
        if status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "1000 idle connections kept a call out"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // 1 000 images queued, and 600 long polls (more than the 512 threads of the server's
    // blocking pool) on the last of them: a request batch, which needs that pool, is still
    // answered at once.
    let (status, body) = queue_1000_images(&server.addr, 3000, "moon");
    let info = info(&server.addr);
    assert_eq!(status, 200, "{body}");
    let last = match answers(&body).pop() {
        Some(RequestAnswer::Levels(levels)) => levels.last().unwrap().key,
        other => panic!("{other:?}"),
    };
    let poll = format!(
        "GET /v1/keys/{last}?wait_ms=30000 HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        server.addr
    );
    let polls: Vec<TcpStream> = (0..600)
        .map(|_| {
            let mut s = TcpStream::connect(&server.addr).unwrap();
            s.write_all(poll.as_bytes()).unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    let (status, body) = post(
        &server.addr,
        &RequestBatch {
            fingerprint: info.fingerprint,
            requests: vec![request(&source(4000), "moon", &[500], true)],
        },
    );
    assert_eq!(status, 200, "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "a request batch waited {:?} behind the long polls",
        started.elapsed()
    );
    drop(polls);
}

#[test]
fn one_client_cannot_hold_more_than_its_share_of_the_queue() {
    let tmp = tempfile::tempdir().unwrap();
    let server = start(
        tmp.path(),
        &tmp.path().join("cache"),
        &["--queue-capacity", "4", "--client-share", "0.5"],
    );
    let info = info(&server.addr);
    let post_as = |client: &str, req: WireRequest| {
        let body = serde_json::to_vec(&RequestBatch {
            fingerprint: info.fingerprint.clone(),
            requests: vec![req],
        })
        .unwrap();
        let headers = [
            ("Content-Type", "application/json"),
            ("X-Genie-Client", client),
        ];
        let (status, body) = http_with(&server.addr, "POST", "/v1/requests", &headers, &body);
        assert_eq!(status, 200, "{body}");
        match answers(&body).remove(0) {
            RequestAnswer::Levels(levels) => levels,
            RequestAnswer::Refused(e) => panic!("refused: {e:?}"),
        }
    };
    // Three levels are more than half of four: every one is answered dropped.
    let greedy = post_as(
        "job-a",
        request(&source(40), "star", &[500, 600, 700], true),
    );
    assert!(
        greedy.iter().all(|l| l.outcome == WireOutcome::Dropped),
        "{greedy:?}"
    );
    // Two fit, for each client.
    for client in ["job-a", "job-b"] {
        let fair = post_as(client, request(&source(41), client, &[500, 600], true));
        assert!(
            fair.iter().all(|l| l.outcome == WireOutcome::Queued),
            "{client}: {fair:?}"
        );
    }
    let (_, metrics) = http(&server.addr, "GET", "/metrics", b"");
    for line in [
        "genie_client_queue_share 2",
        "genie_client_levels_over_share_total{client=\"job-a\"} 3",
        "genie_client_levels_queued_total{client=\"job-a\"} 2",
        "genie_client_levels_queued_total{client=\"job-b\"} 2",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "no {line:?} in\n{metrics}"
        );
    }
}

/// Bytes of the image files under a cache folder.
fn cached_bytes(dir: &std::path::Path) -> u64 {
    fn walk(dir: &std::path::Path, total: &mut u64) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let path = e.path();
            if path.is_dir() {
                walk(&path, total);
            } else if path.extension().is_some_and(|x| x == "png") {
                *total += e.metadata().map(|m| m.len()).unwrap_or(0);
            }
        }
    }
    let mut total = 0;
    walk(dir, &mut total);
    total
}

#[test]
fn the_cache_stays_under_its_bound_while_a_client_floods_requests() {
    let tmp = tempfile::tempdir().unwrap();
    let cache_dir = tmp.path().join("cache");
    let bound: u64 = 64 << 10;
    let server = start(
        tmp.path(),
        &cache_dir,
        &[
            "--max-cache-bytes",
            "64KiB",
            "--gc-every",
            "100ms",
            "--max-batch",
            "1",
        ],
    );
    let info = info(&server.addr);
    let mut keys = Vec::new();
    for round in 0..6u64 {
        let requests: Vec<WireRequest> = (0..4)
            .map(|i| request(&source(100 + round * 4 + i), "moon", &[500, 700, 900], true))
            .collect();
        let (status, body) = post(
            &server.addr,
            &RequestBatch {
                fingerprint: info.fingerprint.clone(),
                requests,
            },
        );
        assert_eq!(status, 200, "{body}");
        for answer in answers(&body) {
            if let RequestAnswer::Levels(levels) = answer {
                keys.extend(levels.into_iter().map(|l| l.key));
            }
        }
    }
    assert_eq!(keys.len(), 72);
    // While it generates, gc rounds run: the folder never holds the flood. How much one round
    // lets through depends on how the threads are scheduled (a loaded CI machine starves the gc
    // thread for a while), so the check is that the folder never held the bound plus half the
    // flood, which a server without the gc loop (or one that runs it only at the end) breaks.
    let mut sizes = (u64::MAX, 0u64);
    let mut most = 0u64;
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let (_, metrics) = http(&server.addr, "GET", "/metrics", b"");
        let depth = metrics
            .lines()
            .find_map(|l| l.strip_prefix("genie_queue_depth "))
            .and_then(|v| v.parse::<u64>().ok());
        let in_flight = metrics
            .lines()
            .find_map(|l| l.strip_prefix("genie_in_flight "))
            .and_then(|v| v.parse::<u64>().ok());
        let bytes = cached_bytes(&cache_dir.join("objects"));
        most = most.max(bytes);
        let (small, large) = png_sizes(&cache_dir.join("objects"));
        sizes = (sizes.0.min(small), sizes.1.max(large));
        if depth == Some(0) && in_flight == Some(0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the flood was not generated in time"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
    let done: u64 = {
        let (_, metrics) = http(&server.addr, "GET", "/metrics", b"");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix("genie_levels_done_total "))
            .and_then(|v| v.parse().ok())
            .unwrap()
    };
    let (smallest_image, largest_image) = sizes;
    assert!(largest_image > 0);
    let flood = done * smallest_image;
    assert!(
        flood > 4 * bound,
        "the flood ({done} images of at least {smallest_image} bytes) should overflow the bound"
    );
    // A last round after the flood.
    std::thread::sleep(Duration::from_millis(400));
    let settled = cached_bytes(&cache_dir.join("objects"));
    assert!(settled <= bound, "{settled} bytes cached, bound {bound}");
    assert!(
        most <= bound + flood / 2,
        "{most} bytes at the most, bound {bound}, a flood of at least {flood} bytes"
    );
}

/// The smallest and largest PNG under `dir` (`(u64::MAX, 0)` when there is none).
fn png_sizes(dir: &std::path::Path) -> (u64, u64) {
    let mut sizes = (u64::MAX, 0);
    let Ok(entries) = std::fs::read_dir(dir) else {
        return sizes;
    };
    for e in entries.flatten() {
        let path = e.path();
        let (small, large) = if path.is_dir() {
            png_sizes(&path)
        } else if path.extension().is_some_and(|x| x == "png") {
            let len = e.metadata().map(|m| m.len()).unwrap_or(0);
            (len, len)
        } else {
            continue;
        };
        sizes = (sizes.0.min(small), sizes.1.max(large));
    }
    sizes
}

#[test]
fn the_deploy_files_pass_only_flags_serve_takes_and_a_token() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let o = Command::new(env!("CARGO_BIN_EXE_genie"))
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        o.status.success() && help.contains("--token-file"),
        "{help}"
    );
    let manifest = std::fs::read_to_string(root.join("docs/kubernetes/genie-serve.yaml")).unwrap();
    let script = std::fs::read_to_string(root.join("docs/slurm/genie-serve.sbatch")).unwrap();
    let yaml_flags = manifest
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- --"))
        .map(|l| l.split(['=', ' ']).next().unwrap().to_string());
    let exec = script
        .split("exec genie serve")
        .nth(1)
        .expect("an exec line");
    let script_flags = exec
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("--"))
        .map(str::to_string);
    let flags: Vec<String> = yaml_flags.chain(script_flags).collect();
    for needed in ["token-file", "drain-timeout", "listen", "cache"] {
        assert!(
            flags.iter().filter(|f| *f == needed).count() >= 2,
            "--{needed} is not in both files: {flags:?}"
        );
    }
    for flag in &flags {
        assert!(
            help.contains(&format!("--{flag}")),
            "--{flag} is not a serve flag"
        );
    }
    for object in [
        "kind: Secret",
        "secretName: genie-serve-token",
        "kind: NetworkPolicy",
        "readinessProbe",
        "livenessProbe",
    ] {
        let found = manifest.contains(object)
            || (object == "kind: Secret" && manifest.contains("kubectl create secret"));
        assert!(found, "no {object:?} in the Kubernetes file");
    }
    assert!(script.contains("umask 077") && script.contains("chmod 600"));
}
