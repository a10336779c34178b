//! The HTTP side of the client: the agent (token, client name), URLs, the server's info and
//! engine check, JSON bodies and the errors calls end in.

use std::time::Duration;

use super::{RemoteConfig, RemoteError};
use crate::engine::EngineFingerprint;
use crate::remote::protocol::{ErrorBody, ServerInfo, CLIENT_HEADER, PROTOCOL_VERSION};
use crate::remote::token::Token;

/// The HTTP agent every call goes through: it sends the token and the client's name.
pub(super) fn agent(config: &RemoteConfig, token: Option<Token>, client: String) -> ureq::Agent {
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
pub(super) struct Identify {
    pub(super) authorization: Option<String>,
    pub(super) client: String,
}

/// The name a client's requests are counted under: the config's, `GENIE_CLIENT`, or
/// `HOSTNAME/PID`; printable ASCII, at most 64 characters (the server cuts it there too).
pub(super) fn client_name(config: &RemoteConfig) -> String {
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

pub(super) fn normalize_url(url: &str) -> Result<String, RemoteError> {
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

pub(super) fn fetch_info(agent: &ureq::Agent, url: &str) -> Result<ServerInfo, RemoteError> {
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

pub(super) fn check_fingerprint(
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

pub(super) fn read_json<T: serde::de::DeserializeOwned>(resp: ureq::Response) -> Result<T, String> {
    let text = resp
        .into_string()
        .map_err(|e| format!("cannot read the answer: {e}"))?;
    serde_json::from_str(&text).map_err(|e| format!("unexpected answer: {e}"))
}

/// A failed call to the server at `url`: an error status (with genie's error body when the
/// server sent one) or no answer at all.
pub(super) fn call_error(url: &str, e: ureq::Error) -> RemoteError {
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
