//! `genie serve`'s HTTP server: a [`Generator`] behind the JSON protocol of [`super::protocol`].
//!
//! Handlers never wait on generation: a request batch is checked, turned into generator requests
//! (which answer at once) on the blocking pool, and answered. The server keeps the pixels of
//! recent sources so that clients may send a hash where they sent the pixels before.

use std::future::Future;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{to_bytes, Body};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use super::protocol::{
    decode_pixels, parse_hash, wire_levels, BatchAnswer, ErrorBody, ErrorKind, KeyState,
    RequestAnswer, RequestBatch, ServerInfo, WireRequest, MAX_LEVELS_PER_REQUEST,
    MAX_REQUESTS_PER_BATCH, MAX_TEXT_BYTES, MAX_WAIT_MS, PROTOCOL_VERSION,
};
use crate::cache::CacheKey;
use crate::engine::NoiseLevel;
use crate::generator::{Generator, GeneratorStats, Request, Shutdown, SourceImage};
use crate::sync::lock;

/// How the server listens and what it accepts.
///
/// New settings may be added: start from [`ServeConfig::default`] and set fields.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ServeConfig {
    /// Largest request body in bytes; larger ones get 413.
    pub body_limit: usize,
    /// Sources whose pixels the server keeps, so that clients can send only their hash.
    pub remembered_sources: usize,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            // 256 requests of 512×512 sources in base64 is ~270 MB; clients send far fewer.
            body_limit: 64 << 20,
            remembered_sources: 4096,
        }
    }
}

/// Why `genie serve` stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The address cannot be listened on (in use, no permission).
    #[error("cannot listen: {0}")]
    Listen(#[source] std::io::Error),
    /// The HTTP server failed while running.
    #[error("the HTTP server failed: {0}")]
    Server(#[source] std::io::Error),
}

/// Longest a request body may take to arrive once its headers have.
const BODY_TIMEOUT: Duration = Duration::from_secs(30);

struct AppState {
    generator: Arc<Generator>,
    body_limit: usize,
    info: ServerInfo,
    sources: Mutex<lru::LruCache<[u8; 32], SourceImage>>,
    draining: AtomicBool,
    calls: AtomicU64,
    refused: Mutex<std::collections::BTreeMap<String, u64>>,
}

impl AppState {
    fn refuse(&self, status: StatusCode, kind: ErrorKind, message: impl Into<String>) -> Response {
        self.count_refusal(kind);
        (status, Json(ErrorBody::new(kind, message))).into_response()
    }

    fn count_refusal(&self, kind: ErrorKind) {
        let mut refused = lock(&self.refused);
        *refused.entry(kind.to_string()).or_default() += 1;
    }
}

/// A server running on a thread of its own (with its own async runtime), for a process that
/// wants one beside its other work: benchmarks, tests, a trainer that hosts the generator for
/// others. [`stop`](Self::stop) drains it like SIGTERM does.
pub struct BackgroundServer {
    addr: std::net::SocketAddr,
    stop: std::sync::mpsc::Sender<()>,
    thread: Option<std::thread::JoinHandle<Result<GeneratorStats, ServeError>>>,
}

impl BackgroundServer {
    /// Binds `listen` (port 0: a free one) and serves `generator` there.
    pub fn start(
        generator: Generator,
        listen: &str,
        config: ServeConfig,
    ) -> Result<Self, ServeError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(ServeError::Listen)?;
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(listen))
            .map_err(ServeError::Listen)?;
        let addr = listener.local_addr().map_err(ServeError::Listen)?;
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("genie-serve".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let shutdown = async move {
                        // Either a stop or the handle dropped.
                        let _ = tokio::task::spawn_blocking(move || stopped.recv()).await;
                    };
                    serve(generator, listener, config, shutdown).await
                })
            })
            .map_err(ServeError::Listen)?;
        Ok(BackgroundServer {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.addr
    }

    /// `http://ADDR`, what a [`RemoteGenerator`](super::RemoteGenerator) connects to.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops taking calls, drains the queue and returns the generator's final counters.
    pub fn stop(mut self) -> Result<GeneratorStats, ServeError> {
        self.finish()
    }

    fn finish(&mut self) -> Result<GeneratorStats, ServeError> {
        let _ = self.stop.send(());
        match self.thread.take() {
            Some(thread) => thread.join().unwrap_or_else(|_| {
                Err(ServeError::Server(std::io::Error::other(
                    "the server thread panicked",
                )))
            }),
            None => Ok(GeneratorStats::default()),
        }
    }
}

impl Drop for BackgroundServer {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

/// Serves `generator` on `listener` until `shutdown` resolves, then stops taking connections,
/// finishes the calls in flight, drains the generator's queue and returns its final counters.
pub async fn serve(
    generator: Generator,
    listener: tokio::net::TcpListener,
    config: ServeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<GeneratorStats, ServeError> {
    let generator = Arc::new(generator);
    let state = Arc::new(AppState {
        info: ServerInfo {
            protocol: PROTOCOL_VERSION,
            fingerprint: generator.fingerprint().clone(),
            resolution: generator.resolution(),
            instance: instance_id(),
            version: env!("CARGO_PKG_VERSION").to_string(),
        },
        generator,
        body_limit: config.body_limit,
        sources: Mutex::new(lru::LruCache::new(
            NonZeroUsize::new(config.remembered_sources.max(1)).expect("max(1) is non-zero"),
        )),
        draining: AtomicBool::new(false),
        calls: AtomicU64::new(0),
        refused: Mutex::new(Default::default()),
    });
    let app = router(state.clone(), config.body_limit);
    let signalled = state.clone();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown.await;
            signalled.draining.store(true, Ordering::Release);
            tracing::info!("shutting down: no new connections; draining the queue");
        })
        .await
        .map_err(ServeError::Server)?;
    // Handlers are done; only `state` (and maybe a straggling blocking task) still holds it.
    let generator = state.generator.clone();
    drop(state);
    let stats = tokio::task::spawn_blocking(move || {
        let mut generator = generator;
        loop {
            match Arc::try_unwrap(generator) {
                Ok(g) => return g.shutdown(Shutdown::Drain),
                Err(shared) => {
                    generator = shared;
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    })
    .await
    .unwrap_or_default();
    Ok(stats)
}

fn router(state: Arc<AppState>, body_limit: usize) -> Router {
    Router::new()
        .route("/v1/info", get(info))
        .route("/v1/requests", post(requests))
        .route("/v1/keys/{key}", get(key_state))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

fn instance_id() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let seed = format!("{now}-{}", std::process::id());
    blake3::hash(seed.as_bytes()).to_hex()[..16].to_string()
}

async fn info(State(state): State<Arc<AppState>>) -> Json<ServerInfo> {
    Json(state.info.clone())
}

async fn not_found(State(state): State<Arc<AppState>>) -> Response {
    state.refuse(
        StatusCode::NOT_FOUND,
        ErrorKind::NotFound,
        "no such endpoint",
    )
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    if state.draining.load(Ordering::Acquire) {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response();
    }
    let stats = state.generator.stats();
    if stats.engines_loaded() == 0 {
        return (StatusCode::SERVICE_UNAVAILABLE, "engine not loaded\n").into_response();
    }
    (StatusCode::OK, "ready\n").into_response()
}

async fn requests(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    state.calls.fetch_add(1, Ordering::Relaxed);
    let too_large = |state: &AppState| {
        state.refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::TooLarge,
            "the body is larger than the server's limit (--body-limit)",
        )
    };
    // A declared length over the limit is refused before any of the body is read: a client
    // that announces a huge body and sends none must not hold the call open.
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > state.body_limit as u64) {
        return too_large(&state);
    }
    let body = match tokio::time::timeout(BODY_TIMEOUT, to_bytes(body, state.body_limit)).await {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => {
            let length_limit = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            if length_limit {
                return too_large(&state);
            }
            return state.refuse(
                StatusCode::BAD_REQUEST,
                ErrorKind::Malformed,
                format!("cannot read the body: {e}"),
            );
        }
        Err(_) => {
            return state.refuse(
                StatusCode::REQUEST_TIMEOUT,
                ErrorKind::Malformed,
                format!(
                    "the body did not arrive within {} s",
                    BODY_TIMEOUT.as_secs()
                ),
            )
        }
    };
    if state.draining.load(Ordering::Acquire) {
        return state.refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::ShuttingDown,
            "the server is draining for shutdown",
        );
    }
    let batch: RequestBatch = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => {
            return state.refuse(
                StatusCode::BAD_REQUEST,
                ErrorKind::Malformed,
                format!("not a request batch: {e}"),
            )
        }
    };
    if batch.fingerprint != state.info.fingerprint {
        return state.refuse(
            StatusCode::CONFLICT,
            ErrorKind::FingerprintMismatch,
            format!(
                "this server's engine is {} ({} steps, guidance {}, {}px, {}); the client's keys \
                 are for {} ({} steps, guidance {}, {}px, {}): their images would be cached under \
                 keys the client never reads",
                state.info.fingerprint.model,
                state.info.fingerprint.steps,
                state.info.fingerprint.guidance,
                state.info.fingerprint.resolution,
                state.info.fingerprint.dtype,
                batch.fingerprint.model,
                batch.fingerprint.steps,
                batch.fingerprint.guidance,
                batch.fingerprint.resolution,
                batch.fingerprint.dtype,
            ),
        );
    }
    if batch.requests.len() > MAX_REQUESTS_PER_BATCH {
        return state.refuse(
            StatusCode::BAD_REQUEST,
            ErrorKind::BadRequest,
            format!(
                "{} requests in one batch; at most {MAX_REQUESTS_PER_BATCH}",
                batch.requests.len()
            ),
        );
    }
    let worker = state.clone();
    let answers = tokio::task::spawn_blocking(move || {
        batch
            .requests
            .into_iter()
            .map(|r| worker.answer(r))
            .collect::<Vec<_>>()
    })
    .await;
    match answers {
        Ok(answers) => Json(BatchAnswer {
            instance: state.info.instance.clone(),
            answers,
        })
        .into_response(),
        Err(e) => state.refuse(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorKind::Internal,
            format!("the request batch failed: {e}"),
        ),
    }
}

impl AppState {
    /// One request of a batch, checked, given to the generator, answered.
    fn answer(&self, wire: WireRequest) -> RequestAnswer {
        match self.to_request(wire) {
            Ok(req) => match self.generator.request(req) {
                Ok(receipt) => RequestAnswer::Levels(wire_levels(&receipt)),
                Err(e) => {
                    self.count_refusal(ErrorKind::BadRequest);
                    RequestAnswer::Refused(ErrorBody::new(ErrorKind::BadRequest, e.to_string()))
                }
            },
            Err(body) => {
                self.count_refusal(body.kind);
                RequestAnswer::Refused(body)
            }
        }
    }

    fn to_request(&self, wire: WireRequest) -> Result<Request, ErrorBody> {
        let bad = |m: String| ErrorBody::new(ErrorKind::BadRequest, m);
        if wire.levels.is_empty() || wire.levels.len() > MAX_LEVELS_PER_REQUEST {
            return Err(bad(format!(
                "{} levels; a request has 1 to {MAX_LEVELS_PER_REQUEST}",
                wire.levels.len()
            )));
        }
        if wire.prompt.len() > MAX_TEXT_BYTES || wire.target.len() > MAX_TEXT_BYTES {
            return Err(bad(format!(
                "prompt and target are at most {MAX_TEXT_BYTES} bytes"
            )));
        }
        let levels = wire
            .levels
            .iter()
            .map(|&t| {
                NoiseLevel::from_thousandths(t)
                    .ok_or_else(|| bad(format!("level {t} is outside 1..=1000 (thousandths)")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let source = match wire.source {
            None => None,
            Some(src) => {
                let hash = parse_hash(&src.hash).ok_or_else(|| {
                    bad(format!(
                        "source hash {} is not 64 hex digits",
                        super::protocol::quoted(&src.hash)
                    ))
                })?;
                Some(self.source(hash, src.pixels.as_deref())?)
            }
        };
        Ok(Request {
            source,
            target: wire.target,
            prompt: wire.prompt,
            levels,
            seed: wire.seed,
            priority: wire.priority.into(),
        })
    }

    /// The source of `hash`: from the pixels sent (checked against the hash), else remembered.
    fn source(&self, hash: [u8; 32], pixels: Option<&str>) -> Result<SourceImage, ErrorBody> {
        let mut sources = lock(&self.sources);
        let Some(pixels) = pixels else {
            return sources.get(&hash).cloned().ok_or_else(|| {
                ErrorBody::new(
                    ErrorKind::UnknownSource,
                    "the server does not hold this source: send its pixels",
                )
            });
        };
        drop(sources);
        let image = decode_pixels(pixels, self.info.resolution)
            .map_err(|m| ErrorBody::new(ErrorKind::BadRequest, m))?;
        let source = SourceImage::new(image);
        if source.hash != hash {
            return Err(ErrorBody::new(
                ErrorKind::HashMismatch,
                "the pixels do not hash to the source hash sent with them",
            ));
        }
        sources = lock(&self.sources);
        sources.put(hash, source.clone());
        Ok(source)
    }
}

#[derive(serde::Deserialize)]
struct WaitQuery {
    wait_ms: Option<u64>,
}

async fn key_state(
    State(state): State<Arc<AppState>>,
    Path(key): Path<String>,
    query: Result<Query<WaitQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    state.calls.fetch_add(1, Ordering::Relaxed);
    let Ok(key) = CacheKey::from_hex(&key) else {
        return state.refuse(
            StatusCode::BAD_REQUEST,
            ErrorKind::BadRequest,
            format!(
                "{} is not a cache key (64 lowercase hex digits)",
                super::protocol::quoted(&key)
            ),
        );
    };
    let wait_ms = match query {
        Ok(q) => q.wait_ms.unwrap_or(0).min(MAX_WAIT_MS),
        Err(e) => {
            return state.refuse(StatusCode::BAD_REQUEST, ErrorKind::Malformed, e.body_text())
        }
    };
    let generator = state.generator.clone();
    let outcome =
        tokio::task::spawn_blocking(move || generator.wait(&key, Duration::from_millis(wait_ms)))
            .await;
    match outcome {
        Ok(Ok(w)) => Json(KeyState::from(&w)).into_response(),
        Ok(Err(e)) => state.refuse(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorKind::Internal,
            e.to_string(),
        ),
        Err(e) => state.refuse(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorKind::Internal,
            e.to_string(),
        ),
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let stats = state.generator.stats();
    let refused = lock(&state.refused).clone();
    let text = metrics_text(&stats, state.calls.load(Ordering::Relaxed), &refused);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// The generator's counters in Prometheus' text exposition format.
pub fn metrics_text(
    stats: &GeneratorStats,
    calls: u64,
    refused: &std::collections::BTreeMap<String, u64>,
) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, String)]| {
        let _ = writeln!(out, "# HELP genie_{name} {help}");
        let _ = writeln!(out, "# TYPE genie_{name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "genie_{name}{labels} {value}");
        }
    };
    let one = |v: u64| vec![(String::new(), v.to_string())];
    metric(
        "queue_depth",
        "gauge",
        "Levels waiting in the generator's queues.",
        &one(stats.queue_len),
    );
    metric(
        "in_flight",
        "gauge",
        "Levels being generated now.",
        &one(stats.in_flight),
    );
    metric(
        "images_per_second",
        "gauge",
        "Levels generated and stored per second since start.",
        &[(String::new(), format!("{:.6}", stats.images_per_second))],
    );
    let counters = [
        (
            "levels_queued_total",
            "Levels accepted into the queue.",
            stats.queued,
        ),
        (
            "levels_done_total",
            "Levels generated and stored.",
            stats.done,
        ),
        (
            "levels_failed_total",
            "Levels whose generation or storage failed.",
            stats.failed,
        ),
        (
            "levels_dropped_total",
            "Levels refused: queue full or shutting down.",
            stats.dropped,
        ),
        (
            "levels_cached_total",
            "Levels already cached when requested.",
            stats.cached,
        ),
        (
            "levels_deduplicated_total",
            "Levels already pending when requested.",
            stats.deduplicated,
        ),
        (
            "levels_backing_off_total",
            "Levels refused while their key backs off after a failure.",
            stats.backing_off,
        ),
        (
            "engine_panics_total",
            "Engine panics caught (each restarts the engine).",
            stats.panics,
        ),
        (
            "engine_calls_total",
            "Engine calls made.",
            stats.engine_calls,
        ),
        ("http_calls_total", "Request and key calls received.", calls),
    ];
    for (name, help, value) in counters {
        metric(name, "counter", help, &one(value));
    }
    let per_device = |f: &dyn Fn(&crate::generator::DeviceStats) -> u64| {
        stats
            .devices
            .iter()
            .map(|d| {
                (
                    format!("{{device=\"{}\"}}", label_value(&d.device)),
                    f(d).to_string(),
                )
            })
            .collect::<Vec<_>>()
    };
    metric(
        "device_engine_loaded",
        "gauge",
        "1 while the device's worker holds a working engine.",
        &per_device(&|d| u64::from(d.engine_loaded)),
    );
    metric(
        "device_levels_done_total",
        "counter",
        "Levels generated on the device.",
        &per_device(&|d| d.done),
    );
    metric(
        "device_levels_failed_total",
        "counter",
        "Levels that failed on the device.",
        &per_device(&|d| d.failed),
    );
    metric(
        "device_engine_calls_total",
        "counter",
        "Engine calls on the device.",
        &per_device(&|d| d.engine_calls),
    );
    let refused: Vec<(String, String)> = refused
        .iter()
        .map(|(kind, n)| (format!("{{kind=\"{}\"}}", label_value(kind)), n.to_string()))
        .collect();
    metric(
        "http_refused_total",
        "counter",
        "Calls or requests refused, by error kind.",
        &refused,
    );
    out
}

fn label_value(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
