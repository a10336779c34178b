//! The sender thread: posts queued requests in batches, long-polls for the keys awaited,
//! hands answers back as late receipts, and backs off while the server is unreachable.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam::channel::{Receiver, RecvTimeoutError};

use super::http::{call_error, check_fingerprint, fetch_info, read_json};
use super::Shared;
use crate::cache::CacheKey;
use crate::engine::NoiseLevel;
use crate::generator::{LevelOutcome, Receipt, Request};
use crate::remote::protocol::{
    encode_pixels, hash_hex, receipt_of, BatchAnswer, ErrorBody, ErrorKind, RequestAnswer,
    RequestBatch, WireRequest, WireSource, MAX_REQUESTS_PER_BATCH,
};

/// The sender thread's state: the connection's view of the server.
pub(super) struct SenderThread {
    pub(super) shared: Arc<Shared>,
    pub(super) agent: ureq::Agent,
    pub(super) rx: Receiver<Request>,
    /// The server process last seen; another one means a restart.
    pub(super) instance: String,
    /// Sources the current server instance was sent the pixels of.
    pub(super) known_sources: lru::LruCache<[u8; 32], ()>,
    /// Requests the server queued, by their first key: re-offered (answered `Dropped`) when
    /// the server restarts, since its queue died with it.
    pub(super) outstanding: lru::LruCache<CacheKey, Vec<(NoiseLevel, CacheKey)>>,
    /// While the server is unreachable: when to try again and the pause after that.
    pub(super) backoff: Option<(Instant, Duration)>,
}

pub(super) enum Posted {
    Answered(BatchAnswer),
    /// The server refused the whole batch.
    Refused(ErrorBody),
    Unreachable(String),
}

impl SenderThread {
    pub(super) fn run(mut self) {
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

    pub(super) fn send(&mut self, batch: Vec<Request>) {
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

    pub(super) fn pixel_bytes(&self, req: &Request) -> usize {
        match &req.source {
            Some(s) if !self.known_sources.contains(&s.hash) => s.pixels.as_raw().len() * 4 / 3,
            _ => 0,
        }
    }

    pub(super) fn send_chunk(&mut self, chunk: Vec<Request>, with_pixels: bool) {
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

    pub(super) fn answered(
        &mut self,
        req: Request,
        answer: RequestAnswer,
        resend: &mut Vec<Request>,
    ) {
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

    pub(super) fn wire(&self, req: &Request, with_pixels: bool) -> WireRequest {
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

    pub(super) fn post(&self, batch: &RequestBatch) -> Posted {
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
    pub(super) fn saw_instance(&mut self, instance: &str) {
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

    pub(super) fn went_down(&mut self, message: String) {
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

    pub(super) fn try_reconnect(&mut self) {
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
