//! Wall-clock times and unique tokens as stores write them: whole seconds for manifests,
//! nanoseconds and tokens for names no other writer picks.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Hex digits of a [`unique_token`].
pub(crate) const TOKEN_LEN: usize = 16;

/// Seconds since the Unix epoch (0 on a clock set before 1970).
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Nanoseconds since the Unix epoch, for unique names.
pub(crate) fn unix_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// 16 hex digits no other write (in any process, on any machine) will pick.
pub(in crate::cache) fn unique_token() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = blake3::Hasher::new();
    hasher.update(&std::process::id().to_le_bytes());
    hasher.update(&unix_nanos().to_le_bytes());
    hasher.update(&COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    hasher.update(format!("{:?}", std::thread::current().id()).as_bytes());
    // RandomState is seeded from the OS's randomness: it separates machines on a shared
    // filesystem whose pids and clocks happen to agree.
    let random = std::collections::hash_map::RandomState::new().hash_one(0u8);
    hasher.update(&random.to_le_bytes());
    hasher.finalize().to_hex()[..TOKEN_LEN].to_string()
}
