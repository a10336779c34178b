//! A server a shared cluster can trust: the token, Host and content checks, slow and idle
//! clients, per-client shares of the queue, and the cache's bound under a flood.

use super::*;

#[test]
fn a_token_server_refuses_strangers_browsers_and_foreign_hosts() {
    let tmp = tempfile::tempdir().unwrap();
    let token = token_file(tmp.path());
    let server = start_in(tmp.path(), &["--token-file", token.to_str().unwrap()]);
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
    crate::support::failed_saying(&o, &["without a token", "openssl rand"]);
}

#[test]
fn slow_clients_are_cut_off_connections_are_bounded_and_sigterm_ends_by_its_deadline() {
    let tmp = tempfile::tempdir().unwrap();
    let mut server = start_in(
        tmp.path(),
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
    let server = start_in(tmp.path(), &["--client-share", "1"]);
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
    let server = start_in(
        tmp.path(),
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
    assert_metrics(
        &metrics,
        &[
            "genie_client_queue_share 2",
            "genie_client_levels_over_share_total{client=\"job-a\"} 3",
            "genie_client_levels_queued_total{client=\"job-a\"} 2",
            "genie_client_levels_queued_total{client=\"job-b\"} 2",
        ],
    );
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
