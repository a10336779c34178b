//! `genie serve` as a child process on loopback with the tiny engine, as a cluster runs it: the
//! helpers its tests share, and one file per concern. The HTTP client is a few lines over a
//! `TcpStream`, so the tests can also send bytes no client library would.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};

use crate::support::KillOnDrop;
use std::time::{Duration, Instant};

use genie::generator::SourceImage;
use genie::remote::protocol::{
    encode_pixels, hash_hex, BatchAnswer, ErrorBody, ErrorKind, KeyState, RequestAnswer,
    RequestBatch, ServerInfo, WireOutcome, WirePriority, WireRequest, WireSource, WireWait,
};

mod clients;
mod hardening;
mod protocol;

/// A `genie serve` child; killed when dropped.
struct Server {
    child: KillOnDrop,
    addr: String,
}

fn start(home: &std::path::Path, cache: &std::path::Path, extra: &[&str]) -> Server {
    start_at("127.0.0.1:0", home, cache, extra)
}

/// Asserts that the server answered `(status, body)` with `code` and an error body of `kind`.
fn refused_with((status, body): (u16, String), code: u16, kind: ErrorKind) {
    assert_eq!((status, error_kind(&body)), (code, kind), "{body}");
}

/// Asserts that the Prometheus page `metrics` has each of `lines` as a line of its own.
fn assert_metrics(metrics: &str, lines: &[&str]) {
    for line in lines {
        assert!(
            metrics.lines().any(|l| l == *line),
            "no {line:?} in\n{metrics}"
        );
    }
}

/// A server whose home is `home` and whose cache is `home/cache`, on a free loopback port.
fn start_in(home: &std::path::Path, extra: &[&str]) -> Server {
    start(home, &home.join("cache"), extra)
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
    let addr = genie::remote::server::listening_address(&line)
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_string();
    let server = Server {
        child: KillOnDrop(child),
        addr,
    };
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

/// A GET carrying the test token.
fn get_with_token(addr: &str, path: &str) -> (u16, String) {
    http_with(addr, "GET", path, &[("Authorization", BEARER)], b"")
}

/// Posts one request for `levels` of `src` and returns the levels' answers, asserting the
/// server took it.
fn post_levels(
    addr: &str,
    fingerprint: &genie::EngineFingerprint,
    src: &SourceImage,
    levels: &[u16],
    with_pixels: bool,
) -> (Vec<genie::remote::protocol::WireLevel>, String) {
    let batch = RequestBatch {
        fingerprint: fingerprint.clone(),
        requests: vec![request(src, "star", levels, with_pixels)],
    };
    let (status, body) = post(addr, &batch);
    assert_eq!(status, 200, "{body}");
    let RequestAnswer::Levels(answered) = answers(&body).swap_remove(0) else {
        panic!("refused: {body}");
    };
    (answered, body)
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
