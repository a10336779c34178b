//! Everything that can go wrong loading or running the engine, as one error type.

use std::path::PathBuf;

use super::{ConfigError, OptionsError, SchedulerError, TokenizerError};

/// Everything that can go wrong loading or running the engine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DiffusionError {
    #[error("missing {expected}: {path}")]
    MissingFile {
        path: PathBuf,
        expected: &'static str,
    },
    #[error("{dir} holds only pickled weights (.bin/.ckpt); genie loads safetensors only")]
    PickleOnly { dir: PathBuf },
    #[error("bad weights file {file}: {message}")]
    BadWeights { file: PathBuf, message: String },
    #[error("cannot build the {component} from {files}: {message}")]
    Build {
        component: &'static str,
        files: String,
        message: String,
    },
    #[error("Hugging Face Hub ({repo}): {message}")]
    Hub { repo: String, message: String },
    #[error("cancelled")]
    Cancelled,
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error(transparent)]
    Scheduler(#[from] SchedulerError),
    #[error("invalid engine options: {0}")]
    Options(#[from] OptionsError),
    #[error(
        "the UNet's {what} ({unet}) differs from the {other_component}'s ({other}): the model's \
         parts do not belong together"
    )]
    Incompatible {
        what: &'static str,
        unet: usize,
        other_component: &'static str,
        other: usize,
    },
    #[error("job {job}: {source}")]
    Job {
        job: usize,
        #[source]
        source: JobError,
    },
    #[error("expected an image tensor [3, H, W], got {dims:?}")]
    ImageShape { dims: Vec<usize> },
    #[error("{name}: cannot compare shape {actual:?} with {expected:?}")]
    ShapeMismatch {
        name: String,
        actual: Vec<usize>,
        expected: Vec<usize>,
    },
    #[error("tensor computation failed: {0}")]
    Tensor(#[from] candle_core::Error),
    #[error("cannot write the model at {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("bad parity fixtures {path}: {message}")]
    Fixtures { path: PathBuf, message: String },
    #[error(
        "job {job}, level {level}: the {stage} produced non-finite values in {dtype} \
         (the model's weights or the options overflow; nothing was kept)"
    )]
    NonFinite {
        job: usize,
        level: String,
        stage: &'static str,
        dtype: &'static str,
    },
}

/// Why one job of a batch cannot run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JobError {
    #[error("no noise levels")]
    NoLevels,
    #[error("levels below 1.0 need a source image")]
    MissingSource,
    #[error(
        "source is {width}x{height}; the engine expects {expected}x{expected} (preprocess with \
         image_io::resize_center_crop)"
    )]
    SourceSize {
        width: u32,
        height: u32,
        expected: u32,
    },
    #[error("noise has {len} values; expected {shape:?} = {expected}")]
    NoiseLength {
        len: usize,
        shape: [usize; 4],
        expected: usize,
    },
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
