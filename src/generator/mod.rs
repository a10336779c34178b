//! The background generator: turns hard-negative requests into cached images without ever blocking the caller.
//!
//! A [`Generator`] owns one worker thread per device, each with its own engine made by an
//! [`EngineFactory`]. [`Generator::request`] answers at once — queued, already pending
//! (deduplicated by cache key), already cached, backing off after a failure, or dropped because the
//! bounded queue is full — and the workers fill the cache in the background, online requests before
//! pre-warm work, several jobs per engine call so that their chains share UNet calls.
//! [`KeySpace`] names hard negatives (prompt, request, cache key) the same way for every caller.

mod keys;
mod service;
mod stats;

pub use keys::KeySpace;
pub use service::{
    DynEngine, EngineFactory, Generator, GeneratorConfig, GeneratorError, LevelOutcome, Priority,
    Receipt, Request, Shutdown, SourceImage, WaitOutcome,
};
pub use stats::{DeviceStats, GeneratorStats};
