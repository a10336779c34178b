//! The client of `genie serve`: a [`HardNegativeGenerator`] whose requests travel on a background thread.
//!
//! [`RemoteGenerator::request`] only puts the request on a bounded queue and answers
//! [`LevelOutcome::Sent`]; one sender thread posts queued requests in batches and hands the
//! server's answers back as late receipts. While the server is unreachable every request is
//! answered [`LevelOutcome::Dropped`] at once (and counted), the sender retries with growing
//! pauses, and the log says so once when it goes down and once when it is back.

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam::channel::{self, Receiver, RecvTimeoutError, Sender, TrySendError};

use super::protocol::{
    encode_pixels, hash_hex, receipt_of, BatchAnswer, ErrorBody, ErrorKind, KeyState,
    RequestAnswer, RequestBatch, ServerInfo, WireRequest, WireSource, CLIENT_HEADER,
    MAX_REQUESTS_PER_BATCH, MAX_WAIT_MS, PROTOCOL_VERSION,
};
use super::token::{Token, TokenError};
use crate::cache::CacheKey;
use crate::engine::{EngineFingerprint, NoiseLevel};
use crate::generator::{
    check_request, level_key, GeneratorError, HardNegativeGenerator, LevelOutcome, Priority,
    Receipt, Request, WaitOutcome,
};
use crate::sync::lock;

/// How the client queues, batches and retries.
///
/// New settings may be added: start from [`RemoteConfig::default`] and set fields.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct RemoteConfig {
    /// Most requests waiting for the sender thread; more are answered `Dropped`.
    pub queue_capacity: usize,
    /// Most requests in one POST.
    pub max_batch: usize,
    /// Most bytes of pixels (base64) in one POST; the server's default body limit is 64 MiB.
    pub max_batch_bytes: usize,
    /// Timeout of one call (connect, send, answer).
    pub timeout: Duration,
    /// First pause before trying an unreachable server again (doubles up to `max_backoff`), and
    /// how long retries wait after the server said its queue was full.
    pub backoff: Duration,
    /// The longest such pause.
    pub max_backoff: Duration,
    /// The server's bearer token (`genie serve --token-file`). `None`: the environment's
    /// ([`GENIE_TOKEN`](super::token::TOKEN_ENV) or the file named by
    /// [`GENIE_TOKEN_FILE`](super::token::TOKEN_FILE_ENV)), else none.
    pub token: Option<Token>,
    /// The name this client's requests are counted under on the server (its per-client queue
    /// share and metrics). `None`: `GENIE_CLIENT` from the environment, else `HOSTNAME/PID`.
    pub client_name: Option<String>,
}

impl Default for RemoteConfig {
    fn default() -> Self {
        RemoteConfig {
            queue_capacity: 1024,
            max_batch: 64,
            max_batch_bytes: 16 << 20,
            timeout: Duration::from_secs(10),
            backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(10),
            token: None,
            client_name: None,
        }
    }
}

/// Why a remote generator cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RemoteError {
    /// The URL is not `http://HOST:PORT` or `https://HOST[:PORT]`.
    #[error("generator URL {0:?}: expected http://HOST:PORT or https://HOST[:PORT]")]
    Url(String),
    /// The token from the environment cannot be used.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The server cannot be reached.
    #[error("cannot reach the generator server at {url}: {message}")]
    Unreachable {
        /// The server.
        url: String,
        /// The transport's account.
        message: String,
    },
    /// The server's answer is not genie's protocol.
    #[error(
        "the generator server at {url} answered something that is not genie's protocol: {message}"
    )]
    Protocol {
        /// The server.
        url: String,
        /// What was wrong with it.
        message: String,
    },
    /// The server answered the call with an error status.
    #[error("the generator server at {url} refused the call (HTTP {status}): {message}")]
    Refused {
        /// The server.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The refusal's kind, when the server sent genie's error body.
        kind: Option<ErrorKind>,
        /// The server's message (or "no error body").
        message: String,
    },
    /// The server runs another engine than the keys are made for.
    #[error(
        "the generator server at {url} runs engine {server}, but this job's keys are for {client}: \
         start the server with the same model and engine options (steps, guidance, size, dtype)"
    )]
    FingerprintMismatch {
        /// The server.
        url: String,
        /// Its engine.
        server: String,
        /// The client's.
        client: String,
    },
    /// The sender thread cannot be started.
    #[error("cannot start the sender thread: {0}")]
    Spawn(#[source] std::io::Error),
}

/// What the client did since it started.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RemoteStats {
    /// Requests handed to the sender thread.
    pub sent: u64,
    /// Requests the server answered.
    pub answered: u64,
    /// Levels answered `Dropped` because the server was unreachable.
    pub dropped_unreachable: u64,
    /// Levels answered `Dropped` because the client's queue was full.
    pub dropped_full: u64,
    /// Requests the server refused (bad input, or another engine).
    pub refused: u64,
    /// Times the server came back after being unreachable.
    pub reconnects: u64,
    /// Times the server was seen to restart (its queue is then lost; the levels are re-offered).
    pub restarts: u64,
    /// Whether the server is reachable now.
    pub up: bool,
}

#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    answered: AtomicU64,
    dropped_unreachable: AtomicU64,
    dropped_full: AtomicU64,
    refused: AtomicU64,
    reconnects: AtomicU64,
    restarts: AtomicU64,
}

/// Most late receipts kept for a caller that does not collect them.
const MAX_LATE: usize = 1 << 16;
/// Most requests remembered as queued on the server, to re-offer when it restarts.
const MAX_OUTSTANDING: usize = 1 << 16;

struct Shared {
    url: String,
    fingerprint: EngineFingerprint,
    resolution: u32,
    config: RemoteConfig,
    up: AtomicBool,
    /// Until when (ms since `started`) the server's queue was last seen full: retries would only
    /// be refused again, and each costs a source hash and an HTTP call.
    full_until_ms: AtomicU64,
    started: Instant,
    stop: AtomicBool,
    late: Mutex<std::collections::VecDeque<Receipt>>,
    /// Keys answered `Sent` whose server answer has not come yet.
    unanswered: Mutex<std::collections::HashSet<CacheKey>>,
    counters: Counters,
}

impl Shared {
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Whether the server said its queue was full less than a backoff ago.
    fn server_full(&self) -> bool {
        self.now_ms() < self.full_until_ms.load(Ordering::Relaxed)
    }

    fn deliver(&self, receipt: Receipt) {
        let mut unanswered = lock(&self.unanswered);
        for (_, key, _) in &receipt.levels {
            unanswered.remove(key);
        }
        drop(unanswered);
        let mut late = lock(&self.late);
        if late.len() == MAX_LATE {
            late.pop_front();
        }
        late.push_back(receipt);
    }

    /// Answers every level of `req` `Dropped` (as a late receipt): the caller retries later.
    fn drop_late(&self, req: &Request) {
        self.counters
            .dropped_unreachable
            .fetch_add(req.levels.len() as u64, Ordering::Relaxed);
        self.deliver(self.receipt(req, LevelOutcome::Dropped));
    }

    fn receipt(&self, req: &Request, outcome: LevelOutcome) -> Receipt {
        Receipt {
            levels: req
                .levels
                .iter()
                .map(|&l| {
                    let key = level_key(
                        &self.fingerprint,
                        req.source.as_ref(),
                        &req.prompt,
                        l,
                        req.seed,
                    );
                    (l, key, outcome)
                })
                .collect(),
        }
    }
}

/// A generator in another process (`genie serve`), behind the same trait as the in-process one.
pub struct RemoteGenerator {
    shared: Arc<Shared>,
    queue: Option<Sender<Request>>,
    agent: ureq::Agent,
    sender: Option<JoinHandle<()>>,
}

impl RemoteGenerator {
    /// Connects to the server at `url` (`http://HOST:PORT`) and checks that its engine is
    /// `fingerprint`, the one the caller's keys are made for.
    pub fn connect(
        url: &str,
        fingerprint: &EngineFingerprint,
        config: RemoteConfig,
    ) -> Result<Self, RemoteError> {
        let url = normalize_url(url)?;
        let token = match &config.token {
            Some(t) => Some(t.clone()),
            None => Token::from_env()?,
        };
        let agent = agent(&config, token, client_name(&config));
        let info = fetch_info(&agent, &url)?;
        check_fingerprint(&url, &info, fingerprint)?;
        let (queue, rx) = channel::bounded(config.queue_capacity.max(1));
        let shared = Arc::new(Shared {
            url,
            fingerprint: fingerprint.clone(),
            resolution: info.resolution,
            config,
            up: AtomicBool::new(true),
            full_until_ms: AtomicU64::new(0),
            started: Instant::now(),
            stop: AtomicBool::new(false),
            late: Mutex::new(Default::default()),
            unanswered: Mutex::new(Default::default()),
            counters: Counters::default(),
        });
        let sender = SenderThread {
            shared: shared.clone(),
            agent: agent.clone(),
            rx,
            instance: info.instance,
            known_sources: lru::LruCache::new(NonZeroUsize::new(4096).expect("non-zero")),
            outstanding: lru::LruCache::new(NonZeroUsize::new(MAX_OUTSTANDING).expect("non-zero")),
            backoff: None,
        };
        let handle = std::thread::Builder::new()
            .name("genie-remote".into())
            .spawn(move || sender.run())
            .map_err(RemoteError::Spawn)?;
        Ok(RemoteGenerator {
            shared,
            queue: Some(queue),
            agent,
            sender: Some(handle),
        })
    }

    /// The server's address, as given.
    pub fn url(&self) -> &str {
        &self.shared.url
    }

    /// Side length of the sources the server accepts.
    pub fn resolution(&self) -> u32 {
        self.shared.resolution
    }

    /// Counters of the client so far.
    pub fn stats(&self) -> RemoteStats {
        let c = &self.shared.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        RemoteStats {
            sent: get(&c.sent),
            answered: get(&c.answered),
            dropped_unreachable: get(&c.dropped_unreachable),
            dropped_full: get(&c.dropped_full),
            refused: get(&c.refused),
            reconnects: get(&c.reconnects),
            restarts: get(&c.restarts),
            up: self.shared.up.load(Ordering::Acquire),
        }
    }

    /// Sends what is queued (or answers it `Dropped` if the server is down) and stops the
    /// sender thread.
    pub fn shutdown(mut self) -> RemoteStats {
        self.stop();
        self.stats()
    }

    fn stop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        self.queue = None;
        if let Some(handle) = self.sender.take() {
            if handle.join().is_err() {
                tracing::error!("the remote generator's sender thread panicked");
            }
        }
    }
}

impl Drop for RemoteGenerator {
    fn drop(&mut self) {
        self.stop();
    }
}

impl HardNegativeGenerator for RemoteGenerator {
    fn fingerprint(&self) -> &EngineFingerprint {
        &self.shared.fingerprint
    }

    fn request(&self, req: Request) -> Result<Receipt, GeneratorError> {
        check_request(&req, self.shared.resolution)?;
        let n = req.levels.len() as u64;
        let c = &self.shared.counters;
        if !self.shared.up.load(Ordering::Acquire) {
            c.dropped_unreachable.fetch_add(n, Ordering::Relaxed);
            return Ok(self.shared.receipt(&req, LevelOutcome::Dropped));
        }
        let Some(queue) = &self.queue else {
            return Ok(self.shared.receipt(&req, LevelOutcome::Dropped));
        };
        let sent = self.shared.receipt(&req, LevelOutcome::Sent);
        // Before the send: the sender thread may answer before `try_send` returns.
        lock(&self.shared.unanswered).extend(sent.levels.iter().map(|(_, k, _)| *k));
        match queue.try_send(req) {
            Ok(()) => {
                c.sent.fetch_add(1, Ordering::Relaxed);
                Ok(sent)
            }
            Err(TrySendError::Full(req)) | Err(TrySendError::Disconnected(req)) => {
                let mut unanswered = lock(&self.shared.unanswered);
                sent.levels.iter().for_each(|(_, k, _)| {
                    unanswered.remove(k);
                });
                drop(unanswered);
                c.dropped_full.fetch_add(n, Ordering::Relaxed);
                Ok(self.shared.receipt(&req, LevelOutcome::Dropped))
            }
        }
    }

    fn has_room(&self, _priority: Priority) -> bool {
        self.shared.up.load(Ordering::Acquire)
            && !self.shared.server_full()
            && self.queue.as_ref().is_some_and(|q| !q.is_full())
    }

    /// Asks the server (long polls of at most 30 s each); this one call does wait on the network.
    fn wait(&self, key: &CacheKey, timeout: Duration) -> Result<WaitOutcome, GeneratorError> {
        let deadline = Instant::now() + timeout;
        // A request still on its way would find the server knowing nothing of the key.
        while lock(&self.shared.unanswered).contains(key) {
            if Instant::now() >= deadline {
                return Ok(WaitOutcome::TimedOut);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let wait_ms = (left.as_millis() as u64).min(MAX_WAIT_MS);
            let url = format!("{}/v1/keys/{}?wait_ms={wait_ms}", self.shared.url, key);
            let answer = self
                .agent
                .get(&url)
                .timeout(Duration::from_millis(wait_ms) + self.shared.config.timeout)
                .call();
            let remote = |e: RemoteError| GeneratorError::Remote(Box::new(e));
            let state: KeyState = match answer {
                Ok(resp) => read_json(resp).map_err(|message| {
                    remote(RemoteError::Protocol {
                        url: self.shared.url.clone(),
                        message,
                    })
                })?,
                Err(e) => return Err(remote(call_error(&self.shared.url, e))),
            };
            let outcome = state.outcome();
            if outcome != WaitOutcome::TimedOut || Instant::now() >= deadline {
                return Ok(outcome);
            }
        }
    }

    fn late_receipts(&self) -> Vec<Receipt> {
        lock(&self.shared.late).drain(..).collect()
    }
}

/// The sender thread's state: the connection's view of the server.
struct SenderThread {
    shared: Arc<Shared>,
    agent: ureq::Agent,
    rx: Receiver<Request>,
    /// The server process last seen; another one means a restart.
    instance: String,
    /// Sources the current server instance was sent the pixels of.
    known_sources: lru::LruCache<[u8; 32], ()>,
    /// Requests the server queued, by their first key: re-offered (answered `Dropped`) when
    /// the server restarts, since its queue died with it.
    outstanding: lru::LruCache<CacheKey, Vec<(NoiseLevel, CacheKey)>>,
    /// While the server is unreachable: when to try again and the pause after that.
    backoff: Option<(Instant, Duration)>,
}

enum Posted {
    Answered(BatchAnswer),
    /// The server refused the whole batch.
    Refused(ErrorBody),
    Unreachable(String),
}

impl SenderThread {
    fn run(mut self) {
        loop {
            let first = match self.rx.recv_timeout(Duration::from_millis(100)) {
                Ok(r) => Some(r),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            if !self.shared.up.load(Ordering::Acquire) {
                self.try_reconnect();
            }
            let Some(first) = first else {
                continue;
            };
            let mut batch = vec![first];
            while batch.len()
                < self
                    .shared
                    .config
                    .max_batch
                    .clamp(1, MAX_REQUESTS_PER_BATCH)
            {
                match self.rx.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
            self.send(batch);
        }
        // The queue is closed: what is left was sent above or is answered now.
        while let Ok(req) = self.rx.try_recv() {
            self.shared.drop_late(&req);
        }
    }

    fn send(&mut self, batch: Vec<Request>) {
        if !self.shared.up.load(Ordering::Acquire) {
            batch.iter().for_each(|r| self.shared.drop_late(r));
            return;
        }
        // Several POSTs when the pixels would make one too large.
        let mut chunk = Vec::new();
        let mut bytes = 0;
        for req in batch {
            let size = self.pixel_bytes(&req);
            if !chunk.is_empty() && bytes + size > self.shared.config.max_batch_bytes {
                self.send_chunk(std::mem::take(&mut chunk), false);
                bytes = 0;
            }
            bytes += size;
            chunk.push(req);
        }
        if !chunk.is_empty() {
            self.send_chunk(chunk, false);
        }
    }

    fn pixel_bytes(&self, req: &Request) -> usize {
        match &req.source {
            Some(s) if !self.known_sources.contains(&s.hash) => s.pixels.as_raw().len() * 4 / 3,
            _ => 0,
        }
    }

    fn send_chunk(&mut self, chunk: Vec<Request>, with_pixels: bool) {
        if !self.shared.up.load(Ordering::Acquire) {
            chunk.iter().for_each(|r| self.shared.drop_late(r));
            return;
        }
        let wire = RequestBatch {
            fingerprint: self.shared.fingerprint.clone(),
            requests: chunk.iter().map(|r| self.wire(r, with_pixels)).collect(),
        };
        match self.post(&wire) {
            Posted::Answered(answer) if answer.answers.len() == chunk.len() => {
                self.saw_instance(&answer.instance);
                let mut resend = Vec::new();
                for (req, answer) in chunk.into_iter().zip(answer.answers) {
                    self.answered(req, answer, &mut resend);
                }
                if !resend.is_empty() && !with_pixels {
                    self.send_chunk(resend, true);
                } else {
                    resend.iter().for_each(|r| self.shared.drop_late(r));
                }
            }
            Posted::Answered(answer) => {
                tracing::error!(
                    url = %self.shared.url,
                    "the generator server answered {} requests with {} answers",
                    chunk.len(),
                    answer.answers.len()
                );
                chunk.iter().for_each(|r| self.shared.drop_late(r));
            }
            Posted::Refused(body) => {
                self.shared
                    .counters
                    .refused
                    .fetch_add(chunk.len() as u64, Ordering::Relaxed);
                if body.kind == ErrorKind::FingerprintMismatch {
                    // The server was replaced by one with another engine: nothing it makes
                    // would ever be read, so treat it as down until the right one is back.
                    tracing::error!(url = %self.shared.url, error = %body.message, "the generator server refused this job's engine");
                    self.went_down(body.message);
                } else {
                    tracing::debug!(kind = %body.kind, error = %body.message, "the generator server refused a batch");
                }
                chunk.iter().for_each(|r| self.shared.drop_late(r));
            }
            Posted::Unreachable(message) => {
                self.went_down(message);
                chunk.iter().for_each(|r| self.shared.drop_late(r));
            }
        }
    }

    fn answered(&mut self, req: Request, answer: RequestAnswer, resend: &mut Vec<Request>) {
        let c = &self.shared.counters;
        match answer {
            RequestAnswer::Levels(levels) => match receipt_of(&levels) {
                Some(receipt) => {
                    c.answered.fetch_add(1, Ordering::Relaxed);
                    if receipt.count(LevelOutcome::Dropped) > 0 {
                        // The server's queue is full: hold retries back for a backoff.
                        let pause = self.shared.config.backoff.as_millis() as u64;
                        self.shared
                            .full_until_ms
                            .store(self.shared.now_ms() + pause, Ordering::Relaxed);
                    }
                    if let Some(src) = &req.source {
                        self.known_sources.put(src.hash, ());
                    }
                    let queued: Vec<(NoiseLevel, CacheKey)> = receipt
                        .levels
                        .iter()
                        .filter(|(_, _, o)| {
                            matches!(o, LevelOutcome::Queued | LevelOutcome::AlreadyPending)
                        })
                        .map(|&(l, k, _)| (l, k))
                        .collect();
                    if let Some(&(_, first)) = queued.first() {
                        self.outstanding.put(first, queued);
                    }
                    self.shared.deliver(receipt);
                }
                None => {
                    c.refused.fetch_add(1, Ordering::Relaxed);
                    self.shared.drop_late(&req);
                }
            },
            RequestAnswer::Refused(body) if body.kind == ErrorKind::UnknownSource => {
                if let Some(src) = &req.source {
                    self.known_sources.pop(&src.hash);
                }
                resend.push(req);
            }
            RequestAnswer::Refused(body) => {
                c.refused.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(kind = %body.kind, error = %body.message, "the generator server refused a request");
                self.shared.drop_late(&req);
            }
        }
    }

    fn wire(&self, req: &Request, with_pixels: bool) -> WireRequest {
        WireRequest {
            source: req.source.as_ref().map(|s| WireSource {
                hash: hash_hex(&s.hash),
                pixels: (with_pixels || !self.known_sources.contains(&s.hash))
                    .then(|| encode_pixels(s)),
            }),
            target: req.target.clone(),
            prompt: req.prompt.clone(),
            levels: req.levels.iter().map(|l| l.thousandths()).collect(),
            seed: req.seed,
            priority: req.priority.into(),
        }
    }

    fn post(&self, batch: &RequestBatch) -> Posted {
        let body = match serde_json::to_string(batch) {
            Ok(b) => b,
            Err(e) => return Posted::Unreachable(format!("cannot encode the batch: {e}")),
        };
        let url = format!("{}/v1/requests", self.shared.url);
        match self
            .agent
            .post(&url)
            .set("Content-Type", "application/json")
            .send_string(&body)
        {
            Ok(resp) => match read_json::<BatchAnswer>(resp) {
                Ok(a) => Posted::Answered(a),
                Err(e) => Posted::Unreachable(e),
            },
            Err(ureq::Error::Status(code, resp)) => match read_json::<ErrorBody>(resp) {
                Ok(body) if body.kind == ErrorKind::ShuttingDown => {
                    Posted::Unreachable("the server is shutting down".into())
                }
                Ok(body) => Posted::Refused(body),
                Err(_) if code >= 500 => Posted::Unreachable(format!("HTTP {code}")),
                Err(e) => Posted::Refused(ErrorBody::new(
                    ErrorKind::Malformed,
                    format!("HTTP {code}: {e}"),
                )),
            },
            Err(e) => Posted::Unreachable(call_error(&self.shared.url, e).to_string()),
        }
    }

    /// A new server instance lost the old one's queue: re-offer what was queued there.
    fn saw_instance(&mut self, instance: &str) {
        if instance == self.instance {
            return;
        }
        self.instance = instance.to_string();
        self.known_sources.clear();
        let lost: Vec<Vec<(NoiseLevel, CacheKey)>> =
            std::iter::from_fn(|| self.outstanding.pop_lru().map(|(_, v)| v)).collect();
        self.shared
            .counters
            .restarts
            .fetch_add(1, Ordering::Relaxed);
        tracing::info!(url = %self.shared.url, lost = lost.len(), "the generator server restarted; re-offering what it had queued");
        for levels in lost {
            self.shared.deliver(Receipt {
                levels: levels
                    .into_iter()
                    .map(|(l, k)| (l, k, LevelOutcome::Dropped))
                    .collect(),
            });
        }
    }

    fn went_down(&mut self, message: String) {
        if self.shared.up.swap(false, Ordering::AcqRel) {
            tracing::warn!(
                url = %self.shared.url,
                error = %message,
                "the generator server is unreachable: training goes on without new hard negatives; retrying in the background"
            );
        } else {
            tracing::debug!(error = %message, "the generator server is still unreachable");
        }
        let pause = self.shared.config.backoff;
        self.backoff = Some((Instant::now() + pause, pause));
    }

    fn try_reconnect(&mut self) {
        let (due, pause) = self
            .backoff
            .unwrap_or((Instant::now(), self.shared.config.backoff));
        if Instant::now() < due {
            return;
        }
        let attempt = fetch_info(&self.agent, &self.shared.url).and_then(|info| {
            check_fingerprint(&self.shared.url, &info, &self.shared.fingerprint)?;
            Ok(info)
        });
        match attempt {
            Ok(info) => {
                self.saw_instance(&info.instance);
                self.backoff = None;
                self.shared.up.store(true, Ordering::Release);
                self.shared
                    .counters
                    .reconnects
                    .fetch_add(1, Ordering::Relaxed);
                tracing::info!(url = %self.shared.url, "the generator server is reachable again");
            }
            Err(e) => {
                tracing::debug!(error = %e, "the generator server is still unreachable");
                let next = (pause * 2).min(self.shared.config.max_backoff);
                self.backoff = Some((Instant::now() + pause, next));
            }
        }
    }
}

/// The HTTP agent every call goes through: it sends the token and the client's name.
fn agent(config: &RemoteConfig, token: Option<Token>, client: String) -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout_connect(config.timeout.min(Duration::from_secs(2)))
        .timeout(config.timeout)
        .middleware(Identify {
            authorization: token.map(|t| t.header_value()),
            client,
        })
        .build()
}

/// Adds the token and the client's name to every call.
struct Identify {
    authorization: Option<String>,
    client: String,
}

impl ureq::Middleware for Identify {
    fn handle(
        &self,
        request: ureq::Request,
        next: ureq::MiddlewareNext<'_>,
    ) -> Result<ureq::Response, ureq::Error> {
        let request = request.set(CLIENT_HEADER, &self.client);
        match &self.authorization {
            Some(value) => next.handle(request.set("Authorization", value)),
            None => next.handle(request),
        }
    }
}

/// The name a client's requests are counted under: the config's, `GENIE_CLIENT`, or
/// `HOSTNAME/PID`; printable ASCII, at most 64 characters (the server cuts it there too).
fn client_name(config: &RemoteConfig) -> String {
    let name = config
        .client_name
        .clone()
        .or_else(|| std::env::var("GENIE_CLIENT").ok())
        .unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .or_else(|| std::env::var("HOSTNAME").ok())
                .unwrap_or_else(|| "client".into());
            format!("{}/{}", host.trim(), std::process::id())
        });
    let name: String = name
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(64)
        .collect();
    if name.is_empty() {
        "client".into()
    } else {
        name
    }
}

fn normalize_url(url: &str) -> Result<String, RemoteError> {
    let trimmed = url.trim().trim_end_matches('/');
    let rest = trimmed
        .strip_prefix("http://")
        .or_else(|| trimmed.strip_prefix("https://"))
        .ok_or_else(|| RemoteError::Url(url.to_string()))?;
    if rest.is_empty() || rest.contains('/') || rest.contains(char::is_whitespace) {
        return Err(RemoteError::Url(url.to_string()));
    }
    Ok(trimmed.to_string())
}

fn fetch_info(agent: &ureq::Agent, url: &str) -> Result<ServerInfo, RemoteError> {
    let resp = agent
        .get(&format!("{url}/v1/info"))
        .call()
        .map_err(|e| call_error(url, e))?;
    let info: ServerInfo = read_json(resp).map_err(|message| RemoteError::Protocol {
        url: url.to_string(),
        message,
    })?;
    if info.protocol != PROTOCOL_VERSION {
        return Err(RemoteError::Protocol {
            url: url.to_string(),
            message: format!(
                "protocol version {}; this client speaks {PROTOCOL_VERSION}",
                info.protocol
            ),
        });
    }
    Ok(info)
}

fn check_fingerprint(
    url: &str,
    info: &ServerInfo,
    fingerprint: &EngineFingerprint,
) -> Result<(), RemoteError> {
    if &info.fingerprint == fingerprint {
        return Ok(());
    }
    Err(RemoteError::FingerprintMismatch {
        url: url.to_string(),
        server: info.fingerprint.to_string(),
        client: fingerprint.to_string(),
    })
}

fn read_json<T: serde::de::DeserializeOwned>(resp: ureq::Response) -> Result<T, String> {
    let text = resp
        .into_string()
        .map_err(|e| format!("cannot read the answer: {e}"))?;
    serde_json::from_str(&text).map_err(|e| format!("unexpected answer: {e}"))
}

/// A failed call to the server at `url`: an error status (with genie's error body when the
/// server sent one) or no answer at all.
fn call_error(url: &str, e: ureq::Error) -> RemoteError {
    match e {
        ureq::Error::Status(status, resp) => {
            let (kind, message) = match read_json::<ErrorBody>(resp) {
                Ok(body) => (Some(body.kind), format!("{}: {}", body.kind, body.message)),
                Err(_) => (None, "no error body".to_string()),
            };
            RemoteError::Refused {
                url: url.to_string(),
                status,
                kind,
                message,
            }
        }
        ureq::Error::Transport(t) => RemoteError::Unreachable {
            url: url.to_string(),
            message: t.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// A one-shot HTTP server that answers its first call with `status` and `body`.
    fn answer_once(status: &str, body: &'static str) -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let status = status.to_string();
        std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut request = [0u8; 1024];
            let _ = stream.read(&mut request);
            let reply = format!(
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            stream.write_all(reply.as_bytes()).unwrap();
        });
        url
    }

    #[test]
    fn urls_are_http_or_https_to_a_host_only() {
        assert_eq!(
            normalize_url("http://gpu-node:8700/").unwrap(),
            "http://gpu-node:8700"
        );
        assert_eq!(
            normalize_url(" https://genie.example.org ").unwrap(),
            "https://genie.example.org"
        );
        for bad in [
            "ftp://x",
            "gpu-node:8700",
            "http://",
            "http://x/v1",
            "https://a b",
        ] {
            assert!(
                matches!(normalize_url(bad), Err(RemoteError::Url(_))),
                "{bad}"
            );
        }
        let config = RemoteConfig {
            client_name: Some("job\n 7\u{7f}".repeat(20)),
            ..RemoteConfig::default()
        };
        let name = client_name(&config);
        assert!(name.len() <= 64 && name.starts_with("job7"), "{name}");
    }

    #[test]
    fn failed_calls_become_typed_remote_errors() {
        let url = answer_once(
            "503 Service Unavailable",
            r#"{"kind":"shutting_down","message":"draining"}"#,
        );
        let e = ureq::get(&format!("{url}/v1/info")).call().unwrap_err();
        match call_error(&url, e) {
            RemoteError::Refused {
                status: 503,
                kind: Some(ErrorKind::ShuttingDown),
                message,
                ..
            } => assert!(message.contains("draining"), "{message}"),
            other => panic!("{other:?}"),
        }

        let url = answer_once("500 Internal Server Error", "not json");
        let e = ureq::get(&format!("{url}/v1/info")).call().unwrap_err();
        assert!(matches!(
            call_error(&url, e),
            RemoteError::Refused {
                status: 500,
                kind: None,
                ..
            }
        ));

        // Nothing listens on a port just released.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("http://127.0.0.1:{port}");
        let e = ureq::get(&url).call().unwrap_err();
        assert!(matches!(
            call_error(&url, e),
            RemoteError::Unreachable { .. }
        ));
    }
}
