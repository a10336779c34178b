//! The generator in another process: `genie serve`'s wire protocol and its server (`serve`
//! feature).
//!
//! A server runs the same [`Generator`](crate::generator::Generator) a training process would,
//! behind HTTP + JSON, and writes into the cache the training jobs read: a diffusion crash never
//! takes training down, and several jobs share one pool of GPUs. The client a training job uses
//! is not written yet (issue 28, step 2); [`protocol`] is what it will speak.

pub mod protocol;
#[cfg(feature = "serve")]
pub mod server;
