//! The client of `genie serve`: a [`HardNegativeGenerator`] whose requests travel on a background thread.
//!
//! [`RemoteGenerator::request`] only puts the request on a bounded queue and answers
//! [`LevelOutcome::Sent`]; one sender thread posts queued requests in batches and hands the
//! server's answers back as late receipts. While the server is unreachable every request is
//! answered [`LevelOutcome::Dropped`] at once (and counted), the sender retries with growing
//! pauses, and the log says so once when it goes down and once when it is back.

mod http;
mod sender;

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam::channel::{self, Sender, TrySendError};

use super::protocol::{ErrorKind, KeyState, MAX_WAIT_MS};
use super::token::{Token, TokenError};
use crate::cache::CacheKey;
use crate::engine::EngineFingerprint;
use crate::generator::{
    check_request, level_key, GeneratorError, HardNegativeGenerator, LevelOutcome, Priority,
    Receipt, Request, WaitOutcome,
};
use crate::sync::lock;
use http::{
    agent, call_error, check_fingerprint, client_name, fetch_info, normalize_url, read_json,
};
use sender::SenderThread;

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

crate::counters::live_counters! {
    struct Counters => RemoteStats {
        sent, answered, dropped_unreachable, dropped_full, refused, reconnects, restarts,
    }
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
        self.shared.counters.snapshot_into(RemoteStats {
            up: self.shared.up.load(Ordering::Acquire),
            ..RemoteStats::default()
        })
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
