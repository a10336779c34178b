//! genie's integration tests, in one test binary: each module is one area, `support` holds the
//! helpers they share.
//!
//! One binary links burn and candle once instead of once per file (16 files took minutes of
//! linking and gigabytes of disk). Run one area with `cargo test --test it cache_`, the fast
//! tests alone with `cargo test-fast` (an alias in `.cargo/config.toml`; see the README's
//! "Developing genie"). The tests that need a process of their own (`cache_crash`,
//! `cache_concurrency`) start this binary again as a child that runs one ignored test.

#[macro_use]
mod support;

mod ada_reference;
mod backbone;
mod cache_concurrency;
mod cache_corruption;
mod cache_crash;
mod cache_facade;
mod cache_stores;
mod cli;
mod engine;
mod eval;
mod examples;
mod generator;
mod layout;
mod loader;
mod parity;
mod policy;
mod readme;
mod serve;
mod shapes;
mod supervised;
mod train_device;
mod warm;
