//! Everything that can go wrong loading or running the engine, as one error type.

use std::path::PathBuf;

use super::{ConfigError, OptionsError, SchedulerError, TokenizerError};

/// Everything that can go wrong loading or running the engine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DiffusionError {
    /// A file the model folder must have is not there.
    #[error("missing {expected}: {path}")]
    MissingFile {
        /// Where it was looked for.
        path: PathBuf,
        /// What the file would have held.
        expected: &'static str,
    },
    /// A component has only pickled weights, which genie does not execute.
    #[error("{dir} holds only pickled weights (.bin/.ckpt); genie loads safetensors only")]
    PickleOnly {
        /// The component's folder.
        dir: PathBuf,
    },
    /// A weights file (or a sharded index) cannot be read as safetensors.
    #[error("bad weights file {file}: {message}")]
    BadWeights {
        /// The file.
        file: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// The weights were read but do not fit the component's configuration.
    #[error("cannot build the {component} from {files}: {message}")]
    Build {
        /// "UNet", "VAE", "text encoder", …
        component: &'static str,
        /// The weight files, comma-separated.
        files: String,
        /// candle's account (usually a missing tensor or a shape).
        message: String,
    },
    /// Fetching the model from the Hugging Face Hub failed.
    #[error("Hugging Face Hub ({repo}): {message}")]
    Hub {
        /// The repository asked for.
        repo: String,
        /// What the Hub client reported.
        message: String,
    },
    /// The call was cancelled through the engine's cancel token.
    #[error("cancelled")]
    Cancelled,
    /// A component's `config.json` is missing, malformed or unsupported.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The tokenizer's files cannot be read.
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    /// The scheduler's configuration or a noise level does not fit.
    #[error(transparent)]
    Scheduler(#[from] SchedulerError),
    /// The engine options are out of range.
    #[error("invalid engine options: {0}")]
    Options(#[from] OptionsError),
    /// Two components of the model disagree on a size they must share.
    #[error(
        "the UNet's {what} ({unet}) differs from the {other_component}'s ({other}): the model's \
         parts do not belong together"
    )]
    Incompatible {
        /// The shared size (e.g. "cross-attention width").
        what: &'static str,
        /// The UNet's value.
        unet: usize,
        /// The other component.
        other_component: &'static str,
        /// Its value.
        other: usize,
    },
    /// One job of a batch cannot run; the others were not started.
    #[error("job {job}: {source}")]
    Job {
        /// The job's index in the batch.
        job: usize,
        /// Why.
        #[source]
        source: JobError,
    },
    /// A tensor handed over as an image is not `[3, H, W]`.
    #[error("expected an image tensor [3, H, W], got {dims:?}")]
    ImageShape {
        /// Its shape.
        dims: Vec<usize>,
    },
    /// Two tensors compared (parity) have different shapes.
    #[error("{name}: cannot compare shape {actual:?} with {expected:?}")]
    ShapeMismatch {
        /// Which tensor.
        name: String,
        /// genie's shape.
        actual: Vec<usize>,
        /// The reference's shape.
        expected: Vec<usize>,
    },
    /// A tensor operation failed (out of memory on a device, an unsupported dtype, …).
    #[error("tensor computation failed: {0}")]
    Tensor(#[from] candle_core::Error),
    /// Writing a model genie makes (tiny, shapes) failed.
    #[error("cannot write the model at {path}: {source}")]
    Write {
        /// The file or folder.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The parity fixtures (diffusers' recorded tensors) cannot be read.
    #[error("bad parity fixtures {path}: {message}")]
    Fixtures {
        /// The fixtures folder or file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A stage produced NaN or infinity; nothing of the job was kept.
    #[error(
        "job {job}, level {level}: the {stage} produced non-finite values in {dtype} \
         (the model's weights or the options overflow; nothing was kept)"
    )]
    NonFinite {
        /// The job's index in the batch.
        job: usize,
        /// The noise level, as written in keys.
        level: String,
        /// "UNet", "VAE decoder", …
        stage: &'static str,
        /// The dtype it ran in.
        dtype: &'static str,
    },
}

/// Why one job of a batch cannot run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JobError {
    /// The job asks for no noise level.
    #[error("no noise levels")]
    NoLevels,
    /// img2img levels (r < 1) need a source image to noise.
    #[error("levels below 1.0 need a source image")]
    MissingSource,
    /// The source image is not the engine's size.
    #[error(
        "source is {width}x{height}; the engine expects {expected}x{expected} (preprocess with \
         image_io::resize_center_crop)"
    )]
    SourceSize {
        /// The source's width.
        width: u32,
        /// The source's height.
        height: u32,
        /// The engine's side.
        expected: u32,
    },
    /// Noise given by the caller has the wrong number of values.
    #[error("noise has {len} values; expected {shape:?} = {expected}")]
    NoiseLength {
        /// Values given.
        len: usize,
        /// The latent shape the engine needs.
        shape: [usize; 4],
        /// Values needed.
        expected: usize,
    },
    /// A noise level does not fit the engine's step grid.
    #[error(transparent)]
    Level(#[from] SchedulerError),
}

impl DiffusionError {
    /// A failed write of a file or folder of a model genie makes (the tiny and shapes models).
    pub(super) fn write(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> Self + '_ {
        move |source| DiffusionError::Write {
            path: path.to_path_buf(),
            source,
        }
    }
}
