//! Each client's share of the generator's queue, and what it was given: one job cannot fill
//! the queue the others share.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Mutex;

use axum::http::HeaderMap;

use crate::cache::CacheKey;
use crate::generator::{Generator, LevelOutcome, Receipt};
use crate::remote::protocol::CLIENT_HEADER;
use crate::sync::lock;

/// Most clients counted by name; more are counted together as [`OTHERS`], so a client that
/// names itself anew on every call cannot grow the server's memory or its metrics.
const MAX_CLIENTS: usize = 256;
/// The name the clients past [`MAX_CLIENTS`] share.
const OTHERS: &str = "(others)";
/// Longest client name kept.
const MAX_NAME_CHARS: usize = 64;

#[derive(Default)]
struct Ledger {
    /// Keys queued for the client and still pending when last looked at.
    pending: HashSet<CacheKey>,
    /// Levels of calls being answered now, not yet in `pending`.
    reserved: usize,
    queued_total: u64,
    generated_total: u64,
    failed_total: u64,
    over_share_total: u64,
}

/// What one client was given, for the metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct ClientCounts {
    pub(super) pending: u64,
    pub(super) queued_total: u64,
    pub(super) generated_total: u64,
    pub(super) failed_total: u64,
    pub(super) over_share_total: u64,
}

/// The ledgers of every client.
pub(super) struct Clients {
    /// Most levels one client may have pending.
    share: usize,
    ledgers: Mutex<HashMap<String, Ledger>>,
}

impl Clients {
    /// `share`: the fraction of the queue (`queue_capacity` levels) one client may hold.
    pub(super) fn new(share: f64, queue_capacity: usize) -> Clients {
        let share = (share.clamp(0.0, 1.0) * queue_capacity as f64).ceil() as usize;
        Clients {
            share: share.max(1),
            ledgers: Mutex::new(HashMap::new()),
        }
    }

    /// The most levels one client may have pending.
    pub(super) fn share(&self) -> usize {
        self.share
    }

    /// Reserves `levels` for `client` if its pending levels leave room; `false` when they do not.
    pub(super) fn reserve(&self, client: &str, levels: usize, generator: &Generator) -> bool {
        let mut ledgers = lock(&self.ledgers);
        let name = if ledgers.contains_key(client) || ledgers.len() < MAX_CLIENTS {
            client
        } else {
            OTHERS
        };
        let ledger = ledgers.entry(name.to_string()).or_default();
        settle(ledger, generator);
        if ledger.pending.len() + ledger.reserved + levels > self.share {
            ledger.over_share_total += levels as u64;
            return false;
        }
        ledger.reserved += levels;
        true
    }

    /// Turns a reservation of `levels` into the keys the generator queued.
    pub(super) fn settle_reservation(&self, client: &str, levels: usize, receipt: &Receipt) {
        let mut ledgers = lock(&self.ledgers);
        let name = if ledgers.contains_key(client) {
            client
        } else {
            OTHERS
        };
        let ledger = ledgers.entry(name.to_string()).or_default();
        ledger.reserved = ledger.reserved.saturating_sub(levels);
        for (_, key, outcome) in &receipt.levels {
            if *outcome == LevelOutcome::Queued {
                ledger.queued_total += 1;
                ledger.pending.insert(*key);
            }
        }
    }

    /// Every client's counts, after a look at which of their keys are done.
    pub(super) fn counts(&self, generator: &Generator) -> Vec<(String, ClientCounts)> {
        let mut ledgers = lock(&self.ledgers);
        let mut counts: Vec<(String, ClientCounts)> = ledgers
            .iter_mut()
            .map(|(name, ledger)| {
                settle(ledger, generator);
                let counts = ClientCounts {
                    pending: (ledger.pending.len() + ledger.reserved) as u64,
                    queued_total: ledger.queued_total,
                    generated_total: ledger.generated_total,
                    failed_total: ledger.failed_total,
                    over_share_total: ledger.over_share_total,
                };
                (name.clone(), counts)
            })
            .collect();
        counts.sort_by(|a, b| a.0.cmp(&b.0));
        counts
    }
}

/// Drops the keys that are no longer pending, counting how they ended.
fn settle(ledger: &mut Ledger, generator: &Generator) {
    let mut generated = 0;
    let mut failed = 0;
    ledger.pending.retain(|key| {
        if generator.is_pending(key) {
            return true;
        }
        if generator.has_failed(key) {
            failed += 1;
        } else {
            generated += 1;
        }
        false
    });
    ledger.generated_total += generated;
    ledger.failed_total += failed;
}

/// The name a call is counted under: its `X-Genie-Client` header (printable ASCII, cut to 64
/// characters), else the address it came from.
pub(super) fn client_of(headers: &HeaderMap, peer: Option<SocketAddr>) -> String {
    let named: Option<String> = headers
        .get(CLIENT_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.chars()
                .filter(|c| c.is_ascii_graphic())
                .take(MAX_NAME_CHARS)
                .collect()
        })
        .filter(|n: &String| !n.is_empty());
    named.unwrap_or_else(|| match peer {
        Some(addr) => addr.ip().to_string(),
        None => "unknown".into(),
    })
}
