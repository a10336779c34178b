//! The wire format of `genie serve`: JSON bodies, their limits, and their conversion to generator types.
//!
//! Version 1. Every answer that is not a success carries an [`ErrorBody`] whose `kind` a client
//! can match on; pixels travel as base64 of raw RGB8 rows at the server's resolution.

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::cache::CacheKey;
use crate::engine::{EngineFingerprint, NoiseLevel};
use crate::generator::{
    GenerationFailure, LevelOutcome, Priority, Receipt, SourceImage, WaitOutcome,
};

/// Bumped when a change would make an old client misread the server.
pub const PROTOCOL_VERSION: u32 = 1;
/// Most requests in one `POST /v1/requests`.
pub const MAX_REQUESTS_PER_BATCH: usize = 256;
/// Most levels in one request (the Ada sweep plus the fixed level is 6).
pub const MAX_LEVELS_PER_REQUEST: usize = 32;
/// Longest prompt or target label, in bytes.
pub const MAX_TEXT_BYTES: usize = 4096;
/// Longest a `GET /v1/keys/{key}?wait_ms=` waits.
pub const MAX_WAIT_MS: u64 = 30_000;

/// `GET /v1/info`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ServerInfo {
    /// The server's [`PROTOCOL_VERSION`].
    pub protocol: u32,
    /// The engine behind it: the keys it writes are made from this.
    pub fingerprint: EngineFingerprint,
    /// Side length of the sources the server accepts.
    pub resolution: u32,
    /// Random per server process: a client that sees it change knows the server restarted and
    /// that whatever it had queued is gone.
    pub instance: String,
    /// The server's genie version.
    pub version: String,
}

/// `POST /v1/requests`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RequestBatch {
    /// The engine the client's keys are made for; refused unless it is the server's.
    pub fingerprint: EngineFingerprint,
    /// At most [`MAX_REQUESTS_PER_BATCH`].
    pub requests: Vec<WireRequest>,
}

/// One [`Request`](crate::generator::Request) on the wire.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WireRequest {
    /// `None` only for text-to-image.
    pub source: Option<WireSource>,
    /// The target class's label.
    pub target: String,
    /// The full prompt ("a photo of a …").
    pub prompt: String,
    /// Levels in thousandths (800 is r = 0.8).
    pub levels: Vec<u16>,
    /// The noise seed.
    pub seed: u64,
    /// Which queue it joins.
    pub priority: WirePriority,
}

/// A source image: always its pixel hash, and its pixels unless the server is known to hold them.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WireSource {
    /// blake3 of the pixels, hex.
    pub hash: String,
    /// base64 of `resolution × resolution × 3` bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pixels: Option<String>,
}

/// A request's [`Priority`] on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WirePriority {
    /// Asked for by a training loop: served first.
    Online,
    /// Asked for by a pre-warm: served when no online request waits.
    Prewarm,
}

/// The answer to a [`RequestBatch`]: one entry per request, in order.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BatchAnswer {
    /// The server's [`ServerInfo::instance`]: a client sees a restart in the first answer after it.
    pub instance: String,
    /// One per request of the batch, in order.
    pub answers: Vec<RequestAnswer>,
}

/// What became of one request: its levels' outcomes, or why it was refused.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestAnswer {
    /// Accepted: what became of each level, in the request's order.
    Levels(Vec<WireLevel>),
    /// Refused as a whole.
    Refused(ErrorBody),
}

/// One level of an accepted request: a [`LevelOutcome`] on the wire.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WireLevel {
    /// In thousandths.
    pub level: u16,
    /// The cache key its image will have.
    pub key: CacheKey,
    /// What the server did with it.
    pub outcome: WireOutcome,
}

/// What the server did with one level (see [`LevelOutcome`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WireOutcome {
    /// Queued for generation.
    Queued,
    /// Already queued or running.
    AlreadyPending,
    /// Already in the cache.
    AlreadyCached,
    /// It failed recently; not retried yet.
    BackingOff,
    /// The queue was full.
    Dropped,
}

/// `GET /v1/keys/{key}`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KeyState {
    /// Where the key stands.
    pub state: WireWait,
    /// Why it failed, for [`WireWait::Failed`], for people (and clients older than `failure`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Why it failed, for [`WireWait::Failed`], typed (absent from servers older than it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<GenerationFailure>,
}

/// A [`WaitOutcome`] on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WireWait {
    /// In the cache.
    Ready,
    /// Its generation failed.
    Failed,
    /// Neither cached nor queued.
    NotPending,
    /// Still pending when the wait ended.
    TimedOut,
}

/// A refusal, of a whole call (with a 4xx/5xx status) or of one request in a batch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What a client matches on.
    pub kind: ErrorKind,
    /// For people.
    pub message: String,
}

/// The header a client names itself in (its per-client queue share and metrics on the server).
pub const CLIENT_HEADER: &str = "X-Genie-Client";

/// The longest message an [`ErrorBody`] carries, in bytes.
pub const MAX_ERROR_MESSAGE_BYTES: usize = 1024;

/// Why a call or request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// Not JSON, or not this shape.
    Malformed,
    /// Well formed but invalid (a level out of range, a source of the wrong size, …).
    BadRequest,
    /// Larger than the server's body limit.
    TooLarge,
    /// The client's keys are for another engine.
    FingerprintMismatch,
    /// A hash-only source the server does not hold: send the pixels.
    UnknownSource,
    /// The pixels do not hash to the hash sent with them.
    HashMismatch,
    /// The server is draining for shutdown.
    ShuttingDown,
    /// No such route.
    NotFound,
    /// The server failed (its log says why).
    Internal,
    /// No token, or not the server's (`genie serve --token-file`).
    Unauthorized,
    /// A `POST` whose body is not declared `application/json`.
    UnsupportedMediaType,
    /// The `Host` header names another server than this one (a browser page's request, DNS
    /// rebinding): `genie serve --allowed-host` adds names.
    WrongHost,
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        f.write_str(&name)
    }
}

impl ErrorBody {
    /// A refusal of this kind.
    /// The message is cut to [`MAX_ERROR_MESSAGE_BYTES`]: an error body never grows with what
    /// a client sent.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        let mut message = message.into();
        if message.len() > MAX_ERROR_MESSAGE_BYTES {
            let mut end = MAX_ERROR_MESSAGE_BYTES - '…'.len_utf8();
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
            message.push('…');
        }
        ErrorBody { kind, message }
    }
}

impl From<Priority> for WirePriority {
    fn from(p: Priority) -> Self {
        match p {
            Priority::Online => WirePriority::Online,
            Priority::Prewarm => WirePriority::Prewarm,
        }
    }
}

impl From<WirePriority> for Priority {
    fn from(p: WirePriority) -> Self {
        match p {
            WirePriority::Online => Priority::Online,
            WirePriority::Prewarm => Priority::Prewarm,
        }
    }
}

impl WireOutcome {
    /// The server's side of the conversion.
    pub fn from_outcome(o: LevelOutcome) -> Self {
        match o {
            LevelOutcome::Queued => WireOutcome::Queued,
            LevelOutcome::AlreadyPending => WireOutcome::AlreadyPending,
            LevelOutcome::AlreadyCached => WireOutcome::AlreadyCached,
            LevelOutcome::BackingOff => WireOutcome::BackingOff,
            // A server never answers `Sent`; it is the client's placeholder.
            LevelOutcome::Dropped | LevelOutcome::Sent => WireOutcome::Dropped,
        }
    }

    /// The client's side of the conversion.
    pub fn outcome(self) -> LevelOutcome {
        match self {
            WireOutcome::Queued => LevelOutcome::Queued,
            WireOutcome::AlreadyPending => LevelOutcome::AlreadyPending,
            WireOutcome::AlreadyCached => LevelOutcome::AlreadyCached,
            WireOutcome::BackingOff => LevelOutcome::BackingOff,
            WireOutcome::Dropped => LevelOutcome::Dropped,
        }
    }
}

impl From<&WaitOutcome> for KeyState {
    fn from(w: &WaitOutcome) -> Self {
        let (state, failure) = match w {
            WaitOutcome::Ready => (WireWait::Ready, None),
            WaitOutcome::Failed(f) => (WireWait::Failed, Some(f.clone())),
            WaitOutcome::NotPending => (WireWait::NotPending, None),
            WaitOutcome::TimedOut => (WireWait::TimedOut, None),
        };
        KeyState {
            state,
            message: failure.as_ref().map(ToString::to_string),
            failure,
        }
    }
}

impl KeyState {
    /// The client's side of the conversion.
    pub fn outcome(&self) -> WaitOutcome {
        match self.state {
            WireWait::Ready => WaitOutcome::Ready,
            WireWait::Failed => WaitOutcome::Failed(self.failure.clone().unwrap_or_else(|| {
                GenerationFailure::Remote {
                    message: self.message.clone().unwrap_or_default(),
                }
            })),
            WireWait::NotPending => WaitOutcome::NotPending,
            WireWait::TimedOut => WaitOutcome::TimedOut,
        }
    }
}

/// A receipt as the server sends it.
pub fn wire_levels(receipt: &Receipt) -> Vec<WireLevel> {
    receipt
        .levels
        .iter()
        .map(|&(level, key, outcome)| WireLevel {
            level: level.thousandths(),
            key,
            outcome: WireOutcome::from_outcome(outcome),
        })
        .collect()
}

/// A server's levels as a receipt; `None` when a level is out of range (a broken server).
pub fn receipt_of(levels: &[WireLevel]) -> Option<Receipt> {
    let levels = levels
        .iter()
        .map(|l| {
            Some((
                NoiseLevel::from_thousandths(l.level)?,
                l.key,
                l.outcome.outcome(),
            ))
        })
        .collect::<Option<Vec<_>>>()?;
    Some(Receipt { levels })
}

/// A pixel hash as the wire writes it (lowercase hex).
pub fn hash_hex(hash: &[u8; 32]) -> String {
    blake3::Hash::from(*hash).to_hex().to_string()
}

/// A pixel hash from the wire; `None` unless it is 64 hex digits.
pub fn parse_hash(hex: &str) -> Option<[u8; 32]> {
    blake3::Hash::from_hex(hex).ok().map(|h| *h.as_bytes())
}

/// A client's string as an error message quotes it: escaped, and cut to its first 64 characters
/// with its length when longer, so an error body never grows with a hostile input (an escaped
/// control byte takes up to 10 characters: 64 kiB of them would echo as 640 kiB).
pub fn quoted(text: &str) -> String {
    const SHOWN: usize = 64;
    if text.chars().count() <= SHOWN {
        return format!("{text:?}");
    }
    let head: String = text.chars().take(SHOWN).collect();
    format!("{head:?}… ({} bytes)", text.len())
}

/// A source's pixels as the wire carries them (base64 of raw RGB8 rows).
pub fn encode_pixels(source: &SourceImage) -> String {
    base64::engine::general_purpose::STANDARD.encode(source.pixels.as_raw())
}

/// Decodes pixels sent for a `side × side` source; the error says what was wrong.
pub fn decode_pixels(b64: &str, side: u32) -> Result<image::RgbImage, String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| format!("pixels are not base64: {e}"))?;
    let want = side as usize * side as usize * 3;
    if bytes.len() != want {
        return Err(format!(
            "pixels are {} bytes; a {side}x{side} RGB source is {want}",
            bytes.len()
        ));
    }
    image::RgbImage::from_raw(side, side, bytes).ok_or_else(|| "pixels do not fit".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_client_strings_are_bounded() {
        assert_eq!(quoted("ab\"c"), "\"ab\\\"c\"");
        let hostile = "\u{7f}".repeat(65536);
        let q = quoted(&hostile);
        assert!(q.len() < 64 * 10 + 40, "{}", q.len());
        assert!(q.ends_with("… (65536 bytes)"), "{q}");
    }

    #[test]
    fn error_messages_are_bounded_on_a_character_boundary() {
        let long = "é".repeat(4000);
        let body = ErrorBody::new(ErrorKind::Malformed, long);
        assert!(
            body.message.len() <= MAX_ERROR_MESSAGE_BYTES,
            "{}",
            body.message.len()
        );
        assert!(body.message.ends_with('…'));
        assert_eq!(
            ErrorBody::new(ErrorKind::Malformed, "short").message,
            "short"
        );
        assert_eq!(ErrorKind::WrongHost.to_string(), "wrong_host");
    }

    #[test]
    fn a_typed_failure_crosses_the_wire_and_an_untyped_one_is_remote() {
        let failure = GenerationFailure::EngineCreation {
            device: "cuda:1".into(),
            message: "weights are truncated".into(),
        };
        let json =
            serde_json::to_value(KeyState::from(&WaitOutcome::Failed(failure.clone()))).unwrap();
        assert_eq!(json["failure"]["kind"], "engine_creation", "{json}");
        assert_eq!(json["message"], failure.to_string(), "{json}");
        let back: KeyState = serde_json::from_value(json).unwrap();
        assert_eq!(back.outcome(), WaitOutcome::Failed(failure));

        // A server from before typed failures sends the message alone.
        let old: KeyState =
            serde_json::from_str(r#"{"state":"failed","message":"out of memory"}"#).unwrap();
        assert_eq!(
            old.outcome(),
            WaitOutcome::Failed(GenerationFailure::Remote {
                message: "out of memory".into()
            })
        );
        // Not failed: no failure field is written.
        let ready = serde_json::to_value(KeyState::from(&WaitOutcome::Ready)).unwrap();
        assert!(
            ready.get("failure").is_none() && ready.get("message").is_none(),
            "{ready}"
        );
    }
}
