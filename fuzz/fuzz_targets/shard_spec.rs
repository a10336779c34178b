//! A shard spec (`--shard I/N`, or Slurm's and Kubernetes' task variables).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = genie::warm::Shard::parse(text);
    }
});
