//! # genie — generative hard negatives for burn training loops
//!
//! GeNIe makes *hard negatives* for a classifier: it takes an image of a source class, noises it
//! part of the way (level r) and denoises it with Stable Diffusion towards a prompt of a target
//! class. The result keeps the source's background and low-level look but shows the target.
//!
//! Layers, each knowing only those below it:
//! - [`cache`]: the on-disk and in-memory store of generated images, keyed by everything that
//!   changes their pixels (knows bytes, keys and images only);
//! - [`engine`]: the plain-Rust interface (jobs, noise levels, images) every generator speaks;
//! - [`diffusion`]: Stable Diffusion img2img on candle ([`diffusion::SdEngine`]);
//! - [`image_io`], [`noise`]: safe decoding and preprocessing; seeded, device-independent noise;
//! - [`safe_open`]: user-named files opened without blocking (regular files only);
//! - [`generator`]: a background service that turns requests into cached images on N devices;
//! - [`classes`], [`seed`]: class ids and the names prompts use; per-pair noise seeds;
//! - [`policy`], [`ada`]: which hard negatives to make (plain Rust), and GeNIe-Ada's choice of r;
//! - [`loader`]: the burn integration (`GenieBatcher`, `GenieDataset`, the live Ada model);
//! - [`warm`]: offline pre-warming plans, shards and their status;
//! - [`remote`]: `genie serve`, the generator behind HTTP + JSON (`serve` feature);
//! - [`pictures`]: contact sheets and HTML reports of a cache;
//! - [`eval`]: the paper's evaluation protocols on features (episodes, a logistic probe, CIs,
//!   the long-tail report);
//! - [`backbone`]: torchvision's ResNets in burn with PyTorch weights, for the protocols.
//!
//! Features layer the crate (default: all three): `engine` brings [`diffusion`] and [`factory`]
//! (candle), `burn` brings [`loader`] and [`backbone`] (burn), `cli` the `genie` binary; with
//! `default-features = false, features = ["burn"]` a training job mixes a pre-warmed cache (or a
//! `genie serve`'s images) into its batches without compiling candle.

// Every public item is documented; CI's clippy and `cargo doc` runs turn this into an error.
#![warn(missing_docs)]

pub mod ada;
#[cfg(feature = "burn")]
pub mod backbone;
pub mod cache;
pub mod classes;
mod counters;
#[cfg(feature = "engine")]
pub mod diffusion;
pub mod engine;
pub mod eval;
#[cfg(feature = "engine")]
pub mod factory;
pub mod generator;
pub mod image_io;
#[cfg(feature = "burn")]
pub mod loader;
pub mod noise;
pub mod pictures;
pub mod policy;
pub mod remote;
pub mod safe_open;
pub mod seed;
mod sync;
pub mod synthetic;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod warm;

pub use engine::{
    CancelToken, Engine, EngineFingerprint, Job, JobOutput, LevelImage, NoiseLevel, PromptTemplate,
};
