//! The protocol: answers at once, fills the cache, reports metrics; refuses other engines and
//! hostile input and keeps serving; drains on SIGTERM; the deploy files pass only flags it takes.

use super::*;

#[test]
fn serve_answers_at_once_fills_the_cache_and_reports_metrics() {
    let tmp = tempfile::tempdir().unwrap();
    let cache_dir = tmp.path().join("cache");
    let server = start(tmp.path(), &cache_dir, &[]);
    assert_eq!(http(&server.addr, "GET", "/healthz", b"").0, 200);
    let info = info(&server.addr);
    assert_eq!(info.resolution, 64);

    let src = source(1);
    let (levels, body) = post_levels(&server.addr, &info.fingerprint, &src, &[500, 800], true);
    assert_eq!(levels.len(), 2);
    assert!(
        levels.iter().all(|l| l.outcome == WireOutcome::Queued),
        "{body}"
    );
    for level in &levels {
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
    let (again_levels, body) =
        post_levels(&server.addr, &info.fingerprint, &src, &[500, 800], false);
    assert!(
        again_levels
            .iter()
            .all(|l| l.outcome == WireOutcome::AlreadyCached),
        "{body}"
    );

    let (status, metrics) = http(&server.addr, "GET", "/metrics", b"");
    assert_eq!(status, 200);
    assert_metrics(
        &metrics,
        &[
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
        ],
    );
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
    let server = start_in(tmp.path(), &["--body-limit", "64KiB"]);
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
    refused_with(
        http(addr, "POST", "/v1/requests", b"{not json"),
        400,
        ErrorKind::Malformed,
    );
    refused_with(
        http(addr, "POST", "/v1/requests", br#"{"requests": 3}"#),
        400,
        ErrorKind::Malformed,
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
    refused_with(post(addr, &many), 400, ErrorKind::BadRequest);

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
    refused_with(
        http(addr, "GET", "/v1/keys/xyz", b""),
        400,
        ErrorKind::BadRequest,
    );
    refused_with(
        http(addr, "GET", "/v2/anything", b""),
        404,
        ErrorKind::NotFound,
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
