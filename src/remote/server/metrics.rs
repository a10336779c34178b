//! What `genie serve` tells a cluster operator: Prometheus text with the generator's counters,
//! request latency per route, open connections, each client's levels and the process's memory.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;

use super::clients::ClientCounts;
use super::AppState;
use crate::generator::GeneratorStats;

/// The routes latency is kept for; anything else counts as `other`.
const ROUTES: [&str; 7] = [
    "/v1/info",
    "/v1/requests",
    "/v1/keys/{key}",
    "/healthz",
    "/readyz",
    "/metrics",
    "other",
];

/// Upper bounds of the latency buckets, in seconds (a long poll may take 30 s).
const BUCKETS: [f64; 12] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 30.0,
];

/// One route's latencies, as Prometheus' histogram counts them.
#[derive(Default)]
struct Histogram {
    /// Calls at most each bound; the last is every call.
    counts: [AtomicU64; BUCKETS.len() + 1],
    micros: AtomicU64,
}

/// The server's own HTTP counters.
#[derive(Default)]
pub(super) struct HttpMetrics {
    latency: [Histogram; ROUTES.len()],
    pub(super) open_connections: AtomicU64,
    pub(super) connections_total: AtomicU64,
}

impl HttpMetrics {
    fn observe(&self, route: &str, took: Duration) {
        let index = ROUTES
            .iter()
            .position(|r| *r == route)
            .unwrap_or(ROUTES.len() - 1);
        let h = &self.latency[index];
        let seconds = took.as_secs_f64();
        for (bound, count) in BUCKETS.iter().zip(&h.counts) {
            if seconds <= *bound {
                count.fetch_add(1, Ordering::Relaxed);
            }
        }
        h.counts[BUCKETS.len()].fetch_add(1, Ordering::Relaxed);
        h.micros
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    /// The histogram and connection lines.
    fn text(&self, out: &mut String) {
        use std::fmt::Write as _;
        let name = "genie_http_request_duration_seconds";
        let _ = writeln!(out, "# HELP {name} Time to answer a call, by route.");
        let _ = writeln!(out, "# TYPE {name} histogram");
        for (route, h) in ROUTES.iter().zip(&self.latency) {
            let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
            for (bound, count) in BUCKETS.iter().zip(&h.counts) {
                let _ = writeln!(
                    out,
                    "{name}_bucket{{route=\"{route}\",le=\"{bound}\"}} {}",
                    get(count)
                );
            }
            let all = get(&h.counts[BUCKETS.len()]);
            let _ = writeln!(out, "{name}_bucket{{route=\"{route}\",le=\"+Inf\"}} {all}");
            let _ = writeln!(
                out,
                "{name}_sum{{route=\"{route}\"}} {:.6}",
                get(&h.micros) as f64 / 1e6
            );
            let _ = writeln!(out, "{name}_count{{route=\"{route}\"}} {all}");
        }
        gauge(
            out,
            "http_open_connections",
            "Connections open now.",
            self.open_connections.load(Ordering::Relaxed),
        );
        let _ = writeln!(
            out,
            "# HELP genie_http_connections_total Connections accepted."
        );
        let _ = writeln!(out, "# TYPE genie_http_connections_total counter");
        let _ = writeln!(
            out,
            "genie_http_connections_total {}",
            self.connections_total.load(Ordering::Relaxed)
        );
    }
}

fn gauge(out: &mut String, name: &str, help: &str, value: u64) {
    use std::fmt::Write as _;
    let _ = writeln!(out, "# HELP genie_{name} {help}");
    let _ = writeln!(out, "# TYPE genie_{name} gauge");
    let _ = writeln!(out, "genie_{name} {value}");
}

/// The middleware that times every call by its route.
pub(super) async fn timed(
    State(state): State<std::sync::Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string());
    let started = Instant::now();
    let response = next.run(request).await;
    state
        .http
        .observe(route.as_deref().unwrap_or("other"), started.elapsed());
    response
}

/// The whole `/metrics` page.
pub(super) fn page(state: &AppState) -> String {
    let stats = state.generator.stats();
    let refused = crate::sync::lock(&state.refused).clone();
    let mut out = metrics_text(&stats, state.calls.load(Ordering::Relaxed), &refused);
    state.http.text(&mut out);
    clients_text(
        &state.clients.counts(&state.generator),
        state.clients.share(),
        &mut out,
    );
    if let Some(bytes) = resident_bytes() {
        gauge(
            &mut out,
            "process_resident_memory_bytes",
            "Resident memory of the server process.",
            bytes,
        );
    }
    out
}

/// A metric family of each client: name, type, help, value.
type Family = (
    &'static str,
    &'static str,
    &'static str,
    fn(&ClientCounts) -> u64,
);

/// Each client's levels.
fn clients_text(clients: &[(String, ClientCounts)], share: usize, out: &mut String) {
    use std::fmt::Write as _;
    gauge(
        out,
        "client_queue_share",
        "Most levels one client may have pending (--client-share).",
        share as u64,
    );
    let families: [Family; 5] = [
        (
            "client_levels_pending",
            "gauge",
            "Levels a client has queued or in flight.",
            |c| c.pending,
        ),
        (
            "client_levels_queued_total",
            "counter",
            "Levels queued for a client.",
            |c| c.queued_total,
        ),
        (
            "client_levels_generated_total",
            "counter",
            "Levels generated for a client (seen done).",
            |c| c.generated_total,
        ),
        (
            "client_levels_failed_total",
            "counter",
            "Levels whose generation failed, by client.",
            |c| c.failed_total,
        ),
        (
            "client_levels_over_share_total",
            "counter",
            "Levels refused because the client held its share of the queue.",
            |c| c.over_share_total,
        ),
    ];
    for (name, kind, help, value) in families {
        let _ = writeln!(out, "# HELP genie_{name} {help}");
        let _ = writeln!(out, "# TYPE genie_{name} {kind}");
        for (client, counts) in clients {
            let _ = writeln!(
                out,
                "genie_{name}{{client=\"{}\"}} {}",
                label_value(client),
                value(counts)
            );
        }
    }
}

/// The process's resident memory (Linux), in bytes.
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(page).ok().map(|p| p * pages)
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
