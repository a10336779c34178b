//! The Stable Diffusion img2img engine (GeNIe's STDiff) on candle: the only module that knows candle.
//!
//! [`SdEngine`] loads a diffusers-layout model through [`model`], builds each network from its
//! `config.json` ([`config`]), and runs batches of jobs as chains over one shared timestep grid:
//! at every grid step a single UNet call evaluates every active chain (twice, for classifier-free
//! guidance), while each chain keeps its own sampler state ([`scheduler`]).
//!
//! The files, one job each (as candle's `stable_diffusion/`): `error`, `options` (what the user
//! chooses), `plan` (what an engine will be, from config files alone), `sd_engine` (the loaded
//! engine and its chains), `tensor_io`, `cpu` (process settings), and one file per network part
//! ([`unet`], [`vae`], [`resnet`], [`conv`], [`fused`]).

pub mod config;
pub mod conv;
mod cpu;
mod error;
pub mod fused;
mod geglu;
mod hash_memo;
pub mod model;
mod options;
pub mod parity;
mod plan;
pub mod resnet;
pub mod scheduler;
mod sd_engine;
pub mod shapes;
mod softmax;
mod tensor_io;
pub mod tiny;
pub mod tokenizer;
pub mod unet;
pub mod vae;
mod vmath;
pub mod weights;

pub use config::ConfigError;
pub use cpu::tune_cpu_process;
pub use error::{DiffusionError, JobError};
pub use model::{Component, ModelFiles, ModelSource};
pub use options::{parse_device, parse_dtype, EngineOptions, OptionsError, MAX_SIZE};
pub use plan::{plan_engine, EnginePlan, LevelStart, ALGORITHM_VERSION};
pub use scheduler::{SchedulerConfig, SchedulerError, SchedulerKind};
pub use sd_engine::{ChainOutput, SdEngine};
pub use tensor_io::{load_noise_file, tensor_to_rgb};
pub use tokenizer::{ClipTokenizer, TokenizerError};
