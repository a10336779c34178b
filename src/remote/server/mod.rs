//! `genie serve`'s HTTP server: a [`Generator`] behind the JSON protocol of [`super::protocol`].
//!
//! Handlers never wait on generation: a request batch is checked, turned into generator requests
//! (which answer at once) on the blocking pool, and answered; a long poll waits on a channel, not
//! a thread. The server keeps the pixels of recent sources so that clients may send a hash where
//! they sent the pixels before.
//!
//! What a shared cluster needs of it: a bearer token ([`ServeConfig::token`]), `Host` names
//! checked, a header-read timeout and a connection limit, each client's share of
//! the queue bounded, and a drain that ends: after the stop signal `/readyz` says
//! `draining` for [`ServeConfig::unready_delay`] while the listener still answers, then the
//! listener closes, connections finish, the queue drains, and whatever is left when
//! [`ServeConfig::drain_timeout`] has passed is cancelled.

mod access;
mod clients;
mod handlers;
mod metrics;

use std::future::Future;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use super::protocol::{ErrorBody, ErrorKind, ServerInfo, PROTOCOL_VERSION};
use super::token::{Token, HOW_TO_MAKE_A_TOKEN};
use crate::generator::{Generator, GeneratorStats, SourceImage};
use crate::sync::lock;

pub use metrics::metrics_text;

/// How the server listens, whom it serves and how it stops.
///
/// New settings may be added: start from [`ServeConfig::default`] and set fields.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ServeConfig {
    /// Largest request body in bytes; larger ones get 413.
    pub body_limit: usize,
    /// Sources whose pixels the server keeps, so that clients can send only their hash.
    pub remembered_sources: usize,
    /// The bearer token every call but the probes must carry. `None` serves anyone who can
    /// reach the port: allowed on a loopback address, and elsewhere only with `no_auth`.
    pub token: Option<Token>,
    /// Serve without a token on an address other machines can reach (`genie serve --no-auth`).
    pub no_auth: bool,
    /// Serve `/metrics` without the token (a Prometheus scraper that does not hold it).
    pub open_metrics: bool,
    /// `Host` names requests may carry besides the listen address (and, on loopback,
    /// `localhost`): the name of a proxy, an ingress or a Kubernetes Service. On a non-loopback
    /// address with none given, any `Host` is served.
    pub allowed_hosts: Vec<String>,
    /// Longest a connection may take to send a request head, which is also the longest it may
    /// stay idle between requests (hyper times both with one timer).
    pub header_timeout: Duration,
    /// Longest a request body may take to arrive once its head has.
    pub body_timeout: Duration,
    /// Most connections open at once; more wait in the listen backlog until one closes.
    pub max_connections: usize,
    /// After the stop signal, how long `/readyz` answers `draining` while the listener still
    /// takes calls (so that a load balancer stops sending before it closes).
    pub unready_delay: Duration,
    /// Longest the whole stop may take, from the signal: past it, queued and in-flight work is
    /// cancelled and connections are closed. Keep it below the grace period of whatever sends
    /// the signal (Kubernetes' `terminationGracePeriodSeconds`, Slurm's `--signal`).
    pub drain_timeout: Duration,
    /// The fraction of the generator's queue one client (by its `X-Genie-Client` name, else its
    /// address) may hold; requests past it are answered `dropped`, and the client retries later.
    pub client_share: f64,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            // 256 requests of 512×512 sources in base64 is ~270 MB; clients send far fewer.
            body_limit: 64 << 20,
            remembered_sources: 4096,
            token: None,
            no_auth: false,
            open_metrics: false,
            allowed_hosts: Vec::new(),
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            max_connections: 4096,
            unready_delay: Duration::from_secs(2),
            // Kubernetes' default grace period is 30 s.
            drain_timeout: Duration::from_secs(25),
            client_share: 0.5,
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
    /// No token for an address other machines can reach.
    #[error(
        "refusing to serve {addr} without a token: anyone who can reach it could queue work and \
         read the cache's keys; {HOW_TO_MAKE_A_TOKEN}, or pass --no-auth if a proxy in front \
         authenticates"
    )]
    NoToken {
        /// The address.
        addr: SocketAddr,
    },
}

struct AppState {
    generator: Arc<Generator>,
    body_limit: usize,
    body_timeout: Duration,
    info: ServerInfo,
    sources: Mutex<lru::LruCache<[u8; 32], SourceImage>>,
    draining: AtomicBool,
    /// Turns `true` when the stop signal comes: long polls answer at once.
    drain_started: watch::Receiver<bool>,
    /// The generator's settle epoch, moved by [`SettleWatcher`]: long polls wake on it.
    settled: watch::Receiver<u64>,
    calls: AtomicU64,
    refused: Mutex<std::collections::BTreeMap<String, u64>>,
    access: access::Access,
    clients: clients::Clients,
    http: metrics::HttpMetrics,
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

/// The address a connection came from, as a request extension.
#[derive(Clone, Copy)]
struct Peer(SocketAddr);

/// The one line `genie serve` prints on stdout once it listens; scripts read the address from it.
pub fn listening_line(addr: std::net::SocketAddr, model: &str) -> String {
    format!("genie serve: listening on http://{addr} (engine {model})")
}

/// The `HOST:PORT` a [`listening_line`] names; `None` for any other line.
pub fn listening_address(line: &str) -> Option<&str> {
    line.split("http://").nth(1)?.split_whitespace().next()
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
        config.check_listen(addr)?;
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

impl ServeConfig {
    /// Whether this config may serve on `addr`: without a token only on loopback, unless
    /// `no_auth`. [`serve`] checks it too; a caller that loads a model first checks it before.
    pub fn check_listen(&self, addr: SocketAddr) -> Result<(), ServeError> {
        if self.token.is_none() && !self.no_auth && !addr.ip().is_loopback() {
            return Err(ServeError::NoToken { addr });
        }
        Ok(())
    }
}

/// Serves `generator` on `listener` until `shutdown` resolves, then drains within
/// [`ServeConfig::drain_timeout`] (see the module's documentation) and returns the generator's
/// final counters.
pub async fn serve(
    generator: Generator,
    listener: tokio::net::TcpListener,
    config: ServeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<GeneratorStats, ServeError> {
    let local = listener.local_addr().map_err(ServeError::Listen)?;
    config.check_listen(local)?;
    if config.token.is_none() {
        tracing::warn!(addr = %local, "serving without a token: anyone who can reach this address may use the server");
    }
    let generator = Arc::new(generator);
    let (settle_tx, settled) = watch::channel(generator.settle_epoch());
    let watcher = SettleWatcher::start(generator.clone(), settle_tx);
    let (drain_tx, drain_started) = watch::channel(false);
    let state = Arc::new(AppState {
        info: ServerInfo {
            protocol: PROTOCOL_VERSION,
            fingerprint: generator.fingerprint().clone(),
            resolution: generator.resolution(),
            instance: instance_id(),
            version: env!("CARGO_PKG_VERSION").to_string(),
        },
        clients: clients::Clients::new(config.client_share, generator.queue_capacity()),
        generator,
        body_limit: config.body_limit,
        body_timeout: config.body_timeout,
        sources: Mutex::new(lru::LruCache::new(
            NonZeroUsize::new(config.remembered_sources.max(1)).expect("max(1) is non-zero"),
        )),
        draining: AtomicBool::new(false),
        drain_started,
        settled,
        calls: AtomicU64::new(0),
        refused: Mutex::new(Default::default()),
        access: access::Access::new(
            config.token.clone(),
            config.open_metrics,
            &config.allowed_hosts,
            local,
        ),
        http: Default::default(),
    });
    let mut connections = Connections {
        app: router(state.clone(), config.body_limit),
        state: state.clone(),
        limit: Arc::new(Semaphore::new(config.max_connections.max(1))),
        http1: {
            let mut http1 = hyper::server::conn::http1::Builder::new();
            http1
                .timer(TokioTimer::new())
                .header_read_timeout(config.header_timeout);
            http1
        },
        graceful: hyper_util::server::graceful::GracefulShutdown::new(),
        tasks: tokio::task::JoinSet::new(),
    };

    connections.accept_until(&listener, shutdown).await;
    let stop_by = Instant::now() + config.drain_timeout;
    state.draining.store(true, Ordering::Release);
    let _ = drain_tx.send(true);
    tracing::info!(
        unready_for = ?config.unready_delay,
        deadline = ?config.drain_timeout,
        "stopping: /readyz says draining; then no new connections, and the queue drains"
    );
    // Still listening, so that a load balancer sees `draining` before connections are refused.
    let unready = tokio::time::sleep(config.unready_delay.min(config.drain_timeout));
    connections.accept_until(&listener, unready).await;
    drop(listener);
    // Takes the router, and with it every handler's hold on the state.
    connections.close_by(stop_by).await;
    watcher.stop().await;

    let generator = state.generator.clone();
    drop(state);
    let stats = tokio::task::spawn_blocking(move || {
        let mut generator = generator;
        loop {
            match Arc::try_unwrap(generator) {
                Ok(g) => {
                    let left = stop_by.saturating_duration_since(Instant::now());
                    return g.shutdown_within(left);
                }
                // A blocking task of a closed call still holds it for a moment.
                Err(shared) if Instant::now() < stop_by + Duration::from_secs(5) => {
                    generator = shared;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(shared) => {
                    tracing::error!("the generator is still in use past the drain deadline; stopping without it");
                    return shared.stats();
                }
            }
        }
    })
    .await
    .unwrap_or_default();
    Ok(stats)
}

/// The accepted connections: each served by hyper with the header timeout, counted against the
/// limit, and watched for a graceful close.
struct Connections {
    app: Router,
    state: Arc<AppState>,
    limit: Arc<Semaphore>,
    http1: hyper::server::conn::http1::Builder,
    graceful: hyper_util::server::graceful::GracefulShutdown,
    tasks: tokio::task::JoinSet<()>,
}

impl Connections {
    /// Accepts connections until `stop` resolves.
    async fn accept_until(
        &mut self,
        listener: &tokio::net::TcpListener,
        stop: impl Future<Output = ()>,
    ) {
        tokio::pin!(stop);
        loop {
            while self.tasks.try_join_next().is_some() {}
            tokio::select! {
                _ = &mut stop => return,
                (permit, stream, peer) = accept(listener, &self.limit) => self.spawn(permit, stream, peer),
            }
        }
    }

    fn spawn(
        &mut self,
        permit: OwnedSemaphorePermit,
        stream: tokio::net::TcpStream,
        peer: SocketAddr,
    ) {
        use tower::ServiceExt as _;
        let app = self.app.clone().map_request(
            move |mut request: axum::http::Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(Peer(peer));
                request
            },
        );
        let service = hyper_util::service::TowerToHyperService::new(app);
        let connection = self
            .graceful
            .watch(self.http1.serve_connection(TokioIo::new(stream), service));
        let open = OpenConnection::new(self.state.clone());
        self.tasks.spawn(async move {
            let _open = (open, permit);
            if let Err(e) = connection.await {
                tracing::debug!(peer = %peer, error = %e, "connection closed with an error");
            }
        });
    }

    /// Asks every connection to close after its call in progress, waits for them until
    /// `deadline`, then closes the rest.
    async fn close_by(self, deadline: Instant) {
        let Connections {
            graceful,
            mut tasks,
            ..
        } = self;
        let left = deadline.saturating_duration_since(Instant::now());
        if tokio::time::timeout(left, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!(
                open = tasks.len(),
                "connections still open at the drain deadline: closing them"
            );
        }
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
    }
}

/// The next connection, once the limit has room; errors of `accept` (out of file descriptors,
/// say) are logged and retried after a pause, never ending the server.
async fn accept(
    listener: &tokio::net::TcpListener,
    limit: &Arc<Semaphore>,
) -> (OwnedSemaphorePermit, tokio::net::TcpStream, SocketAddr) {
    let permit = limit
        .clone()
        .acquire_owned()
        .await
        .expect("the connection semaphore is never closed");
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => return (permit, stream, peer),
            Err(e) => {
                tracing::warn!(error = %e, "cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Counts a connection as open while it lives.
struct OpenConnection(Arc<AppState>);

impl OpenConnection {
    fn new(state: Arc<AppState>) -> Self {
        state.http.open_connections.fetch_add(1, Ordering::Relaxed);
        state.http.connections_total.fetch_add(1, Ordering::Relaxed);
        OpenConnection(state)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.http.open_connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One thread that waits for the generator's keys to settle and tells the long polls, which
/// then wait on a channel rather than each on a thread of the blocking pool.
struct SettleWatcher {
    stop: Arc<AtomicBool>,
    thread: tokio::task::JoinHandle<()>,
}

impl SettleWatcher {
    fn start(generator: Arc<Generator>, epochs: watch::Sender<u64>) -> SettleWatcher {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = tokio::task::spawn_blocking(move || {
            let mut seen = generator.settle_epoch();
            while !stopped.load(Ordering::Acquire) {
                seen = generator.wait_for_settling(seen, Duration::from_millis(100));
                epochs.send_replace(seen);
            }
        });
        SettleWatcher { stop, thread }
    }

    async fn stop(self) {
        self.stop.store(true, Ordering::Release);
        let _ = self.thread.await;
    }
}

fn router(state: Arc<AppState>, body_limit: usize) -> Router {
    use axum::middleware::from_fn_with_state;
    Router::new()
        .route("/v1/info", get(handlers::info))
        .route("/v1/requests", post(handlers::requests))
        .route("/v1/keys/{key}", get(handlers::key_state))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(handlers::readyz))
        .route("/metrics", get(handlers::metrics))
        .fallback(handlers::not_found)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(from_fn_with_state(state.clone(), access::check))
        .layer(from_fn_with_state(state.clone(), metrics::timed))
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
