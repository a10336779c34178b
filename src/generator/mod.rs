//! The background generator: turns hard-negative requests into cached images without ever blocking the caller.
//!
//! A [`Generator`] owns one worker thread per device, each with its own engine made by an
//! [`EngineFactory`]. [`Generator::request`] answers at once — queued, already pending
//! (deduplicated by cache key), already cached, backing off after a failure, or dropped because the
//! bounded queue is full — and the workers fill the cache in the background, online requests before
//! pre-warm work, several jobs per engine call so that their chains share UNet calls.
//! [`HardNegativeGenerator`] is what callers need of it, so that a remote generator
//! (`genie serve`) can stand in for it. [`KeySpace`] names hard negatives (prompt, request, cache key) the same way for every caller.

mod api;
mod keys;
mod service;
mod shared;
mod stats;
mod types;
mod worker;

pub use api::HardNegativeGenerator;
pub use keys::KeySpace;
pub use service::Generator;
pub use stats::{DeviceStats, GeneratorStats};
pub use types::{
    DynEngine, EngineFactory, GenerationFailure, GeneratorConfig, GeneratorError, LevelOutcome,
    Priority, Receipt, Request, Shutdown, SourceImage, WaitOutcome,
};

pub(crate) use types::{check_request, level_key};
