//! The routes of `genie serve`: info, request batches, key states (long polls), probes and
//! metrics.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{to_bytes, Body};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};

use super::clients::client_of;
use super::{AppState, Peer};
use crate::cache::CacheKey;
use crate::engine::NoiseLevel;
use crate::generator::{LevelOutcome, Receipt, Request, SourceImage, WaitOutcome};
use crate::remote::protocol::{
    decode_pixels, parse_hash, quoted, wire_levels, BatchAnswer, ErrorBody, ErrorKind, KeyState,
    RequestAnswer, RequestBatch, ServerInfo, WireRequest, MAX_LEVELS_PER_REQUEST,
    MAX_REQUESTS_PER_BATCH, MAX_TEXT_BYTES, MAX_WAIT_MS,
};
use crate::sync::lock;

pub(super) async fn info(State(state): State<Arc<AppState>>) -> Json<ServerInfo> {
    Json(state.info.clone())
}

pub(super) async fn not_found(State(state): State<Arc<AppState>>) -> Response {
    state.refuse(
        StatusCode::NOT_FOUND,
        ErrorKind::NotFound,
        "no such endpoint",
    )
}

pub(super) async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    if state.draining.load(Ordering::Acquire) {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response();
    }
    let stats = state.generator.stats();
    if stats.engines_loaded() == 0 {
        return (StatusCode::SERVICE_UNAVAILABLE, "engine not loaded\n").into_response();
    }
    (StatusCode::OK, "ready\n").into_response()
}

pub(super) async fn requests(
    State(state): State<Arc<AppState>>,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    state.calls.fetch_add(1, Ordering::Relaxed);
    // A browser may send a cross-site "simple" POST (text/plain, no preflight); JSON it may not.
    if !is_json(&headers) {
        return state.refuse(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorKind::UnsupportedMediaType,
            "a request batch is sent as Content-Type: application/json",
        );
    }
    let client = client_of(&headers, peer.map(|Extension(Peer(p))| p));
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
    let body =
        match tokio::time::timeout(state.body_timeout, to_bytes(body, state.body_limit)).await {
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
                        state.body_timeout.as_secs()
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
            .map(|r| worker.answer(r, &client))
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
    /// One request of a batch, checked, given to the generator (if the client's share of the
    /// queue has room for it), answered.
    fn answer(&self, wire: WireRequest, client: &str) -> RequestAnswer {
        match self.to_request(wire) {
            Ok(req) => {
                let levels = req.levels.len();
                if !self.clients.reserve(client, levels, &self.generator) {
                    return RequestAnswer::Levels(wire_levels(&self.over_share(&req)));
                }
                let answer = self.generator.request(req);
                let empty = Receipt { levels: Vec::new() };
                self.clients
                    .settle_reservation(client, levels, answer.as_ref().unwrap_or(&empty));
                match answer {
                    Ok(receipt) => RequestAnswer::Levels(wire_levels(&receipt)),
                    Err(e) => {
                        self.count_refusal(ErrorKind::BadRequest);
                        RequestAnswer::Refused(ErrorBody::new(ErrorKind::BadRequest, e.to_string()))
                    }
                }
            }
            Err(body) => {
                self.count_refusal(body.kind);
                RequestAnswer::Refused(body)
            }
        }
    }

    /// Every level of `req` answered `dropped`: the client holds its share of the queue, and
    /// retries as it does when the queue is full.
    fn over_share(&self, req: &Request) -> Receipt {
        Receipt {
            levels: req
                .levels
                .iter()
                .map(|&level| {
                    let key = self
                        .generator
                        .key(req.source.as_ref(), &req.prompt, level, req.seed);
                    (level, key, LevelOutcome::Dropped)
                })
                .collect(),
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
                        quoted(&src.hash)
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
pub(super) struct WaitQuery {
    wait_ms: Option<u64>,
}

pub(super) async fn key_state(
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
                quoted(&key)
            ),
        );
    };
    let wait_ms = match query {
        Ok(q) => q.wait_ms.unwrap_or(0).min(MAX_WAIT_MS),
        Err(e) => {
            return state.refuse(StatusCode::BAD_REQUEST, ErrorKind::Malformed, e.body_text())
        }
    };
    match wait_for(&state, key, Duration::from_millis(wait_ms)).await {
        Ok(w) => Json(KeyState::from(&w)).into_response(),
        Err(message) => state.refuse(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorKind::Internal,
            message,
        ),
    }
}

/// The state of `key`, waiting up to `wait` for it to settle: on the settle channel, so that a
/// long poll holds no thread (each look at the key is a short blocking task). Answers at once
/// when the server starts draining.
async fn wait_for(
    state: &Arc<AppState>,
    key: CacheKey,
    wait: Duration,
) -> Result<WaitOutcome, String> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut settled = state.settled.clone();
    let mut draining = state.drain_started.clone();
    loop {
        settled.borrow_and_update();
        // Every settled key wakes every poll: the ones whose key is still pending go back to
        // sleep after a look at the pending set (one short lock, no I/O, no blocking task).
        if !state.generator.is_pending(&key) || *draining.borrow() {
            let generator = state.generator.clone();
            return tokio::task::spawn_blocking(move || generator.wait(&key, Duration::ZERO))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string());
        }
        tokio::select! {
            changed = settled.changed() => if changed.is_err() { return Ok(WaitOutcome::TimedOut) },
            _ = tokio::time::sleep_until(deadline) => return Ok(WaitOutcome::TimedOut),
            _ = draining.wait_for(|d| *d) => return Ok(WaitOutcome::TimedOut),
        }
    }
}

pub(super) async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let text = super::metrics::page(&state);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// Whether the body is declared JSON (`application/json`, parameters allowed).
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"))
}
