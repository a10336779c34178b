//! Who may call `genie serve`: the bearer token, and the `Host` names a request may carry
//! (which stops a browser page, or a DNS-rebinding one, from reaching a loopback server).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use crate::remote::protocol::ErrorKind;
use crate::remote::token::Token;

/// The routes a probe (kubelet, load balancer) calls: open to all, whatever the Host.
const PROBES: [&str; 2] = ["/healthz", "/readyz"];

/// What the access check needs to know.
pub(super) struct Access {
    token: Option<Token>,
    open_metrics: bool,
    /// `None`: any `Host` (a non-loopback server with no names configured; its token guards it).
    hosts: Option<Vec<String>>,
}

impl Access {
    pub(super) fn new(
        token: Option<Token>,
        open_metrics: bool,
        allowed_hosts: &[String],
        local: SocketAddr,
    ) -> Access {
        let mut hosts: Vec<String> = allowed_hosts.iter().map(|h| normalize(h)).collect();
        if !local.ip().is_unspecified() {
            hosts.push(local.ip().to_string());
        }
        let hosts = if local.ip().is_loopback() {
            hosts.extend(["localhost", "127.0.0.1", "::1"].map(String::from));
            Some(hosts)
        } else if allowed_hosts.is_empty() {
            None
        } else {
            Some(hosts)
        };
        Access {
            token,
            open_metrics,
            hosts,
        }
    }

    /// Why a request with these headers to `path` is refused, if it is.
    fn refusal(&self, path: &str, headers: &HeaderMap) -> Option<(StatusCode, ErrorKind, String)> {
        if PROBES.contains(&path) {
            return None;
        }
        if let Some(hosts) = &self.hosts {
            let named = headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(host_name);
            if !named.as_ref().is_some_and(|n| hosts.contains(n)) {
                return Some((
                    StatusCode::MISDIRECTED_REQUEST,
                    ErrorKind::WrongHost,
                    format!(
                        "the Host header {} is not a name of this server; start it with \
                         --allowed-host NAME to accept one",
                        crate::remote::protocol::quoted(
                            headers
                                .get(header::HOST)
                                .and_then(|h| h.to_str().ok())
                                .unwrap_or("(none)")
                        )
                    ),
                ));
            }
        }
        let needs_token = !(path == "/metrics" && self.open_metrics);
        match &self.token {
            Some(token)
                if needs_token
                    && !token.admits(headers.get(header::AUTHORIZATION).map(HeaderValue::as_bytes)) =>
            {
                Some((
                    StatusCode::UNAUTHORIZED,
                    ErrorKind::Unauthorized,
                    "this server needs its token: send `Authorization: Bearer TOKEN` (clients read \
                     it from GENIE_TOKEN or the file named by GENIE_TOKEN_FILE)"
                        .into(),
                ))
            }
            _ => None,
        }
    }
}

/// The middleware in front of every route.
pub(super) async fn check(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    match state
        .access
        .refusal(request.uri().path(), request.headers())
    {
        None => next.run(request).await,
        Some((status, kind, message)) => {
            let mut response = state.refuse(status, kind, message);
            if kind == ErrorKind::Unauthorized {
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"genie\""),
                );
            }
            response.into_response()
        }
    }
}

/// A `Host` header's name: lower case, without its port, brackets or a final dot.
fn host_name(host: &str) -> String {
    let host = host.trim();
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(rest),
        None => match host.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => host,
        },
    };
    normalize(name)
}

fn normalize(name: &str) -> String {
    name.trim()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .trim_end_matches('.')
        .to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(host: Option<&str>, auth: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(host) = host {
            h.insert(header::HOST, HeaderValue::from_str(host).unwrap());
        }
        if let Some(auth) = auth {
            h.insert(header::AUTHORIZATION, HeaderValue::from_str(auth).unwrap());
        }
        h
    }

    #[test]
    fn hosts_are_compared_by_name_without_port() {
        assert_eq!(host_name("LocalHost:8700"), "localhost");
        assert_eq!(host_name("[::1]:8700"), "::1");
        assert_eq!(host_name("example.org."), "example.org");
        assert_eq!(host_name("127.0.0.1"), "127.0.0.1");
    }

    #[test]
    fn a_loopback_server_refuses_foreign_hosts_and_a_token_guards_all_but_probes() {
        let local: SocketAddr = "127.0.0.1:8700".parse().unwrap();
        let token = Token::new("0123456789abcdef", "test").unwrap();
        let access = Access::new(Some(token), false, &["genie.internal".into()], local);
        let good = "Bearer 0123456789abcdef";
        for host in [
            "localhost:8700",
            "127.0.0.1:8700",
            "[::1]:8700",
            "GENIE.internal",
        ] {
            assert!(
                access
                    .refusal("/v1/info", &headers(Some(host), Some(good)))
                    .is_none(),
                "{host}"
            );
        }
        for host in [
            Some("evil.example:8700"),
            Some("localhost.evil.example"),
            None,
        ] {
            let r = access.refusal("/v1/info", &headers(host, Some(good)));
            assert_eq!(r.map(|r| r.1), Some(ErrorKind::WrongHost), "{host:?}");
        }
        let r = access.refusal("/v1/requests", &headers(Some("localhost"), None));
        assert_eq!(r.map(|r| r.0), Some(StatusCode::UNAUTHORIZED));
        let r = access.refusal(
            "/metrics",
            &headers(Some("localhost"), Some("Bearer wrong-wrong-wrong")),
        );
        assert_eq!(r.map(|r| r.1), Some(ErrorKind::Unauthorized));
        // Probes need neither.
        assert!(access
            .refusal("/readyz", &headers(Some("evil.example"), None))
            .is_none());

        // A server on every address checks no Host unless names are given; /metrics may be open.
        let any: SocketAddr = "0.0.0.0:8700".parse().unwrap();
        let token = Token::new("0123456789abcdef", "test").unwrap();
        let open = Access::new(Some(token), true, &[], any);
        assert!(open
            .refusal("/metrics", &headers(Some("10.1.2.3:8700"), None))
            .is_none());
        assert!(open
            .refusal("/v1/info", &headers(Some("10.1.2.3:8700"), Some(good)))
            .is_none());
        assert!(open
            .refusal("/v1/info", &headers(Some("10.1.2.3:8700"), None))
            .is_some());
    }
}
