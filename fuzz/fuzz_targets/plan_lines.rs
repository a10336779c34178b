//! A pre-warm plan file (`genie warm plan`'s JSON lines), as `genie warm run` and the batcher
//! read it: any bytes give entries or a typed error naming the line, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plan.jsonl");
    std::fs::write(&path, data).unwrap();
    if let Ok(entries) = genie::warm::read_plan(&path) {
        let _ = genie::warm::plan_pairs(&entries);
    }
});
