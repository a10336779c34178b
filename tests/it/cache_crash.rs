//! SIGKILLs a writer process at random moments, round after round: no corrupt entry is ever served and every committed entry is intact.
#![cfg(unix)]

use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::support::{
    child_command, child_store, content, files_under, key, meta, wait_for_line, Rng,
};
use genie::cache::{DiskStore, GcPolicy, Lookup, Store};

const CHILD_DIR_ENV: &str = "GENIE_CACHE_CHILD_DIR";
const CHILD_SEED_ENV: &str = "GENIE_CACHE_CHILD_SEED";
const READY: &str = "GENIE-CACHE-CRASH-CHILD-READY";
/// Keys the children draw from; with the gc between rounds, later children rewrite keys.
const KEY_POOL: u64 = 300;
const ROUNDS: usize = 24;
/// A child left alive by a failed parent stops on its own after this.
const CHILD_LIFETIME: Duration = Duration::from_secs(30);

/// The one content entry `n` may ever have: 32 to 144 KiB, so most of a writer's time is spent
/// inside a write, where a kill hurts most.
fn expected_content(n: u64) -> Vec<u8> {
    content(n, 32 * 1024 + (n % 8) as usize * 16 * 1024)
}

/// The child: writes entries of the pool in a tight loop until it is killed.
#[test]
#[ignore = "child process of sigkilled_writers_never_leave_a_corrupt_entry"]
fn child_writer_entry() {
    let Some((store, seed)) = child_store(CHILD_DIR_ENV, CHILD_SEED_ENV, READY) else {
        return;
    };
    let seed = seed.unwrap_or(0);
    let mut rng = Rng::new(seed);
    let started = Instant::now();
    while started.elapsed() < CHILD_LIFETIME {
        let n = rng.below(KEY_POOL);
        store
            .put(&key(n), &expected_content(n), &meta("crash", n))
            .expect("child put");
    }
}

#[test]
fn sigkilled_writers_never_leave_a_corrupt_entry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = DiskStore::open(dir.path()).expect("open");
    let mut rng = Rng::new(0x5eed_c0de);
    let mut kills = 0;
    let mut rounds_leaving_partial_writes = 0;
    let mut previous_leftovers = 0;
    let mut max_committed = 0;

    for round in 0..ROUNDS {
        let mut child = child_command(module_path!(), "child_writer_entry")
            .env(CHILD_DIR_ENV, dir.path())
            .env(CHILD_SEED_ENV, (round as u64 * 7919).to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn child writer");
        let _stdout = wait_for_line(&mut child, READY);
        std::thread::sleep(Duration::from_millis(2 + rng.below(40)));
        let still_running = child.try_wait().expect("poll child").is_none();
        child.kill().expect("SIGKILL the child");
        let status = child.wait().expect("reap child");
        assert!(
            still_running,
            "round {round}: the child ended before it was killed ({status})"
        );
        assert_eq!(status.signal(), Some(9), "round {round}: {status}");
        kills += 1;

        // Files a killed write left behind (temporary files, content without a manifest): the
        // evidence that kills land in the middle of writes.
        let manifests = files_under(&dir.path().join("manifests")).len();
        let leftovers = files_under(store.tmp_dir()).len()
            + files_under(&dir.path().join("objects")).len()
            - manifests;
        if leftovers > previous_leftovers {
            rounds_leaving_partial_writes += 1;
        }
        previous_leftovers = leftovers;

        let mut committed = 0;
        for n in 0..KEY_POOL {
            match store.get(&key(n)).expect("get") {
                Lookup::Hit(entry) => {
                    assert!(
                        entry.content == expected_content(n),
                        "round {round}: key {n} served wrong bytes"
                    );
                    assert_eq!(entry.manifest.meta, meta("crash", n));
                    committed += 1;
                }
                Lookup::Miss => {}
                Lookup::Corrupt(bad) => {
                    panic!("round {round}: corrupt entry after SIGKILL: {bad:?}")
                }
            }
        }
        assert_eq!(
            committed, manifests,
            "round {round}: every manifest is a hit"
        );
        let report = store.verify(false).expect("verify");
        assert!(report.bad.is_empty(), "round {round}: {:?}", report.bad);
        assert_eq!(report.ok, committed as u64);
        max_committed = max_committed.max(committed);

        // Drop the oldest entries now and then, so later children write those keys again.
        if round % 3 == 2 {
            store
                .gc(&GcPolicy {
                    max_bytes: Some(4 << 20),
                    max_age: None,
                })
                .expect("gc by size");
        }
    }

    eprintln!(
        "{kills} SIGKILLs; {rounds_leaving_partial_writes} left a partial write behind; \
         up to {max_committed} entries committed"
    );
    assert!(kills >= 20, "only {kills} SIGKILL rounds");
    assert!(max_committed > 0, "the children never committed anything");
    assert!(
        rounds_leaving_partial_writes >= 1,
        "no kill landed inside a write: the test proved nothing"
    );

    // What the killed writers left is removed by gc once it is old enough (here: at once).
    let report = store
        .gc_with_grace(&GcPolicy::default(), Duration::ZERO)
        .expect("gc of leftovers");
    assert!(report.removed_temp_files + report.removed_orphan_files > 0);
    assert!(files_under(store.tmp_dir()).is_empty());
    assert_eq!(
        files_under(&dir.path().join("objects")).len(),
        files_under(&dir.path().join("manifests")).len(),
        "orphaned content left after gc"
    );
    let report = store.verify(false).expect("verify after gc");
    assert!(report.bad.is_empty() && report.ok > 0, "{report:?}");
    for n in 0..KEY_POOL {
        if let Some(entry) = store.get(&key(n)).expect("get").into_entry() {
            assert!(entry.content == expected_content(n), "key {n} after gc");
        }
    }
}
