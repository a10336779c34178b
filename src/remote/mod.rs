//! The generator in another process: `genie serve`'s wire protocol, its server (`serve`
//! feature), and the client a training job uses.
//!
//! A server runs the same [`Generator`](crate::generator::Generator) a training process would,
//! behind HTTP + JSON, and writes into the cache the training jobs read: a diffusion crash never
//! takes training down, and several jobs share one pool of GPUs. [`RemoteGenerator`] implements
//! [`HardNegativeGenerator`](crate::generator::HardNegativeGenerator), so an
//! [`Augmenter`](crate::loader::Augmenter) uses it exactly as it uses an in-process generator:
//! the training binary then needs no diffusion engine at all (and no `cuda` feature).

mod client;
pub mod protocol;
#[cfg(feature = "serve")]
pub mod server;
pub mod token;

pub use client::{RemoteConfig, RemoteError, RemoteGenerator, RemoteStats};
pub use token::{Token, TokenError};
