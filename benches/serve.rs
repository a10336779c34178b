//! `genie serve` benchmarks (a plain harness: latency percentiles and rates, not means), against
//! the `genie serve` binary in a process of its own, with a token, as a cluster runs it.
//!
//! 1. Round trip of `POST /v1/requests` on loopback (one request whose level is cached: the
//!    protocol's own cost, the token check included), and of `RemoteGenerator::request` (only a
//!    queue push: what the batcher pays).
//! 2. Images/s on the tiny model: the in-process generator against `genie serve` on the same
//!    model files, fed by a `RemoteGenerator` (goal ≥ 0.95×), `GENIE_BENCH_RUNS` times (3), with
//!    the spread.
//!
//! `cargo bench --bench serve` (results in BENCHMARKS.md).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use genie::cache::Cache;
use genie::factory::SdEngineFactory;
use genie::generator::{
    Generator, GeneratorConfig, HardNegativeGenerator, Priority, Request, Shutdown, SourceImage,
    WaitOutcome,
};
// `HardNegativeGenerator` brings `RemoteGenerator`'s `request` and `wait` into scope.
use genie::remote::protocol::{encode_pixels, hash_hex, RequestBatch, WireRequest, WireSource};
use genie::remote::{RemoteConfig, RemoteGenerator, Token};
use genie::NoiseLevel;
use image::RgbImage;

const JOBS: usize = 32;

/// Times `n` calls of `call` (given the call's index) and prints their p50, p99 and maximum.
fn print_latencies(what: &str, n: usize, mut call: impl FnMut(u64)) {
    let mut times = Vec::with_capacity(n);
    for i in 0..n as u64 {
        let t = Instant::now();
        call(i);
        times.push(t.elapsed());
    }
    times.sort();
    println!(
        "{what}, {n} calls: p50 {:?}  p99 {:?}  max {:?}",
        percentile(&times, 0.5),
        percentile(&times, 0.99),
        times[n - 1]
    );
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn sources(n: usize) -> Vec<SourceImage> {
    (0..n)
        .map(|i| {
            SourceImage::new(RgbImage::from_fn(64, 64, |x, y| {
                image::Rgb([x as u8 * 4, y as u8 * 4, (i * 7) as u8])
            }))
        })
        .collect()
}

fn request(source: &SourceImage, seed: u64) -> Request {
    Request {
        source: Some(source.clone()),
        target: "cat".into(),
        prompt: "a photo of a cat.".into(),
        levels: vec![NoiseLevel::GENIE_DEFAULT],
        seed,
        priority: Priority::Prewarm,
    }
}

const TOKEN: &str = "genie-bench-token-0123456789abcdef";

/// A `genie serve` child process on the model in `model`; killed when dropped.
struct Server {
    child: std::process::Child,
    url: String,
    _cache: tempfile::TempDir,
}

impl Server {
    fn start(model: &std::path::Path) -> Server {
        use std::io::BufRead as _;
        let cache = tempfile::tempdir().unwrap();
        let token = cache.path().join("token");
        std::fs::write(&token, TOKEN).unwrap();
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_genie"))
            .args([
                "serve",
                "--steps",
                "50",
                "--scheduler",
                "dpm",
                "--max-batch",
                "8",
            ])
            .args(["--queue-capacity", "4096", "--client-share", "1"])
            .args(["--listen", "127.0.0.1:0"])
            .arg("--weights")
            .arg(model)
            .arg("--token-file")
            .arg(&token)
            .arg("--cache")
            .arg(cache.path().join("cache"))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = genie::remote::server::listening_address(&line)
            .unwrap_or_else(|| panic!("no address in {line:?}"))
            .to_string();
        let url = format!("http://{addr}");
        let deadline = Instant::now() + Duration::from_secs(120);
        while ureq::get(&format!("{url}/readyz")).call().is_err() {
            assert!(Instant::now() < deadline, "the server never became ready");
            std::thread::sleep(Duration::from_millis(50));
        }
        Server {
            child,
            url,
            _cache: cache,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn client_config() -> RemoteConfig {
    let mut config = RemoteConfig::default();
    config.token = Some(Token::new(TOKEN, "bench").unwrap());
    config
}

fn config() -> GeneratorConfig {
    let mut options = GeneratorConfig::default();
    options.max_batch = 8;
    options.queue_capacity = 4096;
    options.load_at_start = true;
    options
}

fn round_trip(model: &std::path::Path, factory: &Arc<SdEngineFactory>) {
    let fingerprint = factory.plan().fingerprint.clone();
    let running = Server::start(model);
    let url = running.url.clone();
    let src = &sources(1)[0];
    // Cache the one level first, so every timed call is answered `already_cached`.
    let remote = RemoteGenerator::connect(&url, &fingerprint, client_config()).unwrap();
    remote.request(request(src, 0)).unwrap();
    let wire = |with_pixels: bool| RequestBatch {
        fingerprint: fingerprint.clone(),
        requests: vec![WireRequest {
            source: Some(WireSource {
                hash: hash_hex(&src.hash),
                pixels: with_pixels.then(|| encode_pixels(src)),
            }),
            target: "cat".into(),
            prompt: "a photo of a cat.".into(),
            levels: vec![800],
            seed: 0,
            priority: genie::remote::protocol::WirePriority::Prewarm,
        }],
    };
    let agent = ureq::AgentBuilder::new().build();
    let post = |batch: &RequestBatch| {
        let body = serde_json::to_string(batch).unwrap();
        agent
            .post(&format!("{url}/v1/requests"))
            .set("Content-Type", "application/json")
            .set("Authorization", &format!("Bearer {TOKEN}"))
            .send_string(&body)
            .unwrap()
            .into_string()
            .unwrap()
    };
    // Wait until the level is cached.
    let deadline = Instant::now() + Duration::from_secs(120);
    while !post(&wire(true)).contains("already_cached") {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(20));
    }
    for (label, with_pixels) in [("hash only", false), ("with 64-px pixels", true)] {
        let batch = wire(with_pixels);
        print_latencies(
            &format!("POST /v1/requests round trip on loopback, 1 cached request, {label}"),
            2000,
            |_| {
                std::hint::black_box(post(&batch));
            },
        );
    }
    print_latencies("RemoteGenerator::request (queue push)", 20_000, |i| {
        std::hint::black_box(remote.request(request(src, i % 100)).unwrap());
    });
    drop(remote);
    drop(running);
}

/// Images/s of `generator` making one image of each source, from the first request to the last
/// image in its cache.
fn images_per_second(generator: &dyn HardNegativeGenerator, sources: &[SourceImage]) -> f64 {
    let start = Instant::now();
    let keys: Vec<_> = sources
        .iter()
        .map(|s| generator.request(request(s, 1)).unwrap().levels[0].1)
        .collect();
    for key in &keys {
        assert_eq!(
            generator.wait(key, Duration::from_secs(600)).unwrap(),
            WaitOutcome::Ready
        );
    }
    sources.len() as f64 / start.elapsed().as_secs_f64()
}

/// One run: (in process, behind the binary) images/s.
fn throughput(model: &std::path::Path, factory: &Arc<SdEngineFactory>) -> (f64, f64) {
    let sources = sources(JOBS);
    // In process.
    let dir = tempfile::tempdir().unwrap();
    let cache = Arc::new(Cache::open_dir(dir.path(), 64 << 20).unwrap());
    let generator = Generator::start(factory.clone(), cache, config()).unwrap();
    let local = images_per_second(&generator, &sources);
    generator.shutdown(Shutdown::Drain);

    // Behind the server process, fed by the client.
    let fingerprint = factory.plan().fingerprint.clone();
    let running = Server::start(model);
    let remote = RemoteGenerator::connect(&running.url, &fingerprint, client_config()).unwrap();
    let served = images_per_second(&remote, &sources);
    drop(remote);
    drop(running);
    println!(
        "tiny model, {JOBS} jobs at r = 0.8, DPM 50 steps, max_batch 8: in process {local:.2} images/s, behind genie serve {served:.2} images/s ({:.3}x)",
        served / local
    );
    (local, served)
}

fn main() {
    genie::diffusion::tune_cpu_process();
    let (model, factory) = common::tiny_factory();
    round_trip(model.path(), &factory);
    let runs: usize = std::env::var("GENIE_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let ratios: Vec<f64> = (0..runs)
        .map(|_| {
            let (local, served) = throughput(model.path(), &factory);
            served / local
        })
        .collect();
    let lo = ratios.iter().cloned().fold(f64::INFINITY, f64::min);
    let hi = ratios.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let mean = ratios.iter().sum::<f64>() / ratios.len() as f64;
    println!(
        "behind genie serve / in process over {runs} runs: mean {mean:.3}x, spread {lo:.3}x to {hi:.3}x"
    );
}
