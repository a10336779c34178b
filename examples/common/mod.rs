//! The small CNN, batcher and feature extractor shared by the long-tail example and the batcher
//! benchmark (not an example of its own: Cargo builds only files directly in `examples/`).

#![allow(dead_code)]

use burn::data::dataloader::batcher::Batcher;
use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{Linear, LinearConfig, PaddingConfig2d, Relu};
use burn::tensor::{Device, Int, Tensor, TensorData};
use genie::diffusion::{self, tiny, EngineOptions, ModelSource};
use genie::factory::SdEngineFactory;
use genie::loader::ImageItem;
use genie::loader::{FeatureExtractor, GenieItem};

/// The classifier: three conv blocks, a global max pool (a shape is recognised wherever it is
/// drawn), a 64-d embedding (what GeNIe-Ada projects), a linear head. Any input side works.
#[derive(Module, Debug)]
pub struct Cnn {
    conv1: Conv2d,
    conv2: Conv2d,
    conv3: Conv2d,
    pool: MaxPool2d,
    embed: Linear,
    head: Linear,
    relu: Relu,
}

impl Cnn {
    pub fn new(classes: usize, device: &Device) -> Self {
        let conv = |i, o| {
            Conv2dConfig::new([i, o], [3, 3])
                .with_padding(PaddingConfig2d::Same)
                .init(device)
        };
        Cnn {
            conv1: conv(3, 16),
            conv2: conv(16, 32),
            conv3: conv(32, 64),
            pool: MaxPool2dConfig::new([2, 2]).with_strides([2, 2]).init(),
            embed: LinearConfig::new(64, 64).init(device),
            head: LinearConfig::new(64, classes).init(device),
            relu: Relu::new(),
        }
    }

    pub fn features(&self, images: Tensor<4>) -> Tensor<2> {
        let x = self
            .pool
            .forward(self.relu.forward(self.conv1.forward(images)));
        let x = self.pool.forward(self.relu.forward(self.conv2.forward(x)));
        let x = self.relu.forward(self.conv3.forward(x));
        let [n, c, _, _] = x.dims();
        // Global max pool over the positions.
        let x = x.max_dim(3).max_dim(2).reshape([n, c]);
        self.relu.forward(self.embed.forward(x))
    }

    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        self.head.forward(self.features(images))
    }
}

impl genie::backbone::Classifier for Cnn {
    fn logits(&self, images: Tensor<4>) -> Tensor<2> {
        self.forward(images)
    }
}

#[derive(Clone, Debug)]
pub struct ImageBatch {
    pub images: Tensor<4>,
    pub targets: Tensor<1, Int>,
}

/// Items → normalised `[n, 3, side, side]` tensors and label tensors.
#[derive(Clone)]
pub struct ImageBatcher {
    pub side: u32,
}

impl ImageBatcher {
    pub fn images(&self, items: &[ImageItem], device: &Device) -> Tensor<4> {
        let side = self.side as usize;
        let mut values = Vec::with_capacity(items.len() * 3 * side * side);
        for item in items {
            let rgb = item
                .rgb()
                .unwrap_or_else(|_| image::RgbImage::new(self.side, self.side));
            let rgb = if rgb.dimensions() == (self.side, self.side) {
                rgb
            } else {
                image::imageops::resize(
                    &rgb,
                    self.side,
                    self.side,
                    image::imageops::FilterType::Triangle,
                )
            };
            for c in 0..3 {
                values.extend(rgb.pixels().map(|p| (p.0[c] as f32 / 255.0 - 0.5) / 0.25));
            }
        }
        Tensor::from_data(
            TensorData::new(values, [items.len(), 3, side, side]),
            device,
        )
    }
}

impl Batcher<ImageItem, ImageBatch> for ImageBatcher {
    fn batch(&self, items: Vec<ImageItem>, device: &Device) -> ImageBatch {
        let labels: Vec<i64> = items
            .iter()
            .map(|i| i.label().unwrap_or(0) as i64)
            .collect();
        ImageBatch {
            images: self.images(&items, device),
            targets: Tensor::from_data(TensorData::new(labels.clone(), [labels.len()]), device),
        }
    }
}

/// GeNIe-Ada's view of the model: the 64-d embedding.
pub struct Embeddings {
    pub batcher: ImageBatcher,
    pub device: Device,
}

impl FeatureExtractor<Cnn, ImageItem> for Embeddings {
    fn embed(&self, model: &Cnn, items: Vec<ImageItem>) -> Tensor<2> {
        model.features(self.batcher.images(&items, &self.device))
    }
}

/// The models built into genie.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum BuiltinModel {
    /// genie's shapes model: a small Stable Diffusion trained on the drawn shapes (64 px).
    Shapes,
    /// A tiny random model: fast, but its images are noise.
    Tiny,
}

/// Which engine the examples generate with, where (one generator worker per device), in which
/// dtype.
#[derive(clap::Args, Clone, Debug)]
pub struct EngineArgs {
    /// Diffusers-layout Stable Diffusion folder (e.g. SD 1.5) instead of a built-in model.
    #[arg(long)]
    pub weights: Option<std::path::PathBuf>,
    /// The built-in model used without --weights.
    #[arg(long, value_enum, default_value = "shapes")]
    pub model: BuiltinModel,
    /// Diffusion steps N (the paper uses 50; fewer keeps the CPU run short).
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    /// Devices the engine generates on, one worker each: cpu, or cuda:N with a CUDA build
    /// (comma-separated, e.g. cuda:0,cuda:1).
    #[arg(long, value_delimiter = ',', default_value = "cpu")]
    pub device: Vec<String>,
    /// f32, f16 or bf16 for the UNet and text encoder (f16/bf16 on a GPU).
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// With --device cpu: engines generating side by side, the cores shared out between them
    /// (0: one single-threaded engine per core for the built-in models, whose small UNet calls
    /// keep two threads only partly busy; one engine on every core with --weights).
    #[arg(long, default_value_t = 0)]
    pub cpu_workers: usize,
}

/// The engine the examples use: Stable Diffusion from `--weights`, else the shapes model (or
/// the tiny random one, whose images are noise, as the note printed here says), on `--device`
/// in `--dtype`; and the generator configuration with one worker per device.
pub fn engine_factory(
    args: &EngineArgs,
) -> anyhow::Result<(SdEngineFactory, genie::generator::GeneratorConfig)> {
    // One engine worker shares the CPU with the training loop.
    diffusion::tune_cpu_process();
    let source = match (&args.weights, args.model) {
        (Some(dir), _) => ModelSource::Local(dir.clone()),
        (None, BuiltinModel::Shapes) => {
            println!("engine: genie's shapes model (a small Stable Diffusion trained on the drawn shapes, 64 px)");
            diffusion::shapes::source()?
        }
        (None, BuiltinModel::Tiny) => {
            println!("note: the tiny engine has random weights; its hard negatives are noise");
            ModelSource::Local(tiny::ensure_tiny_model(&tiny::default_tiny_dir())?)
        }
    };
    let first = args.device.first().map_or("cpu", String::as_str);
    let mut options = EngineOptions::default();
    options.steps = args.steps;
    options.device = diffusion::parse_device(first)?;
    options.dtype = diffusion::parse_dtype(&args.dtype)?;
    // Check every device now, not in a worker thread later.
    for d in &args.device {
        diffusion::parse_device(d)?;
    }
    let mut devices = args.device.clone();
    let mut per_worker = String::new();
    if args.device == ["cpu"] {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let workers = match args.cpu_workers {
            0 if args.weights.is_none() => cores,
            0 => 1,
            n => n,
        };
        if workers > 1 {
            let threads = (cores / workers).max(1);
            options.threads = Some(threads);
            devices = vec!["cpu".to_string(); workers];
            per_worker = format!(
                " of {threads} thread{}",
                if threads == 1 { "" } else { "s" }
            );
        }
    }
    println!(
        "devices: training on the CPU (burn flex); generating on {} ({}, {} worker{}{per_worker})",
        args.device.join(", "),
        args.dtype,
        devices.len(),
        if devices.len() == 1 { "" } else { "s" }
    );
    let mut config = genie::generator::GeneratorConfig::default();
    config.devices = devices;
    Ok((SdEngineFactory::new(source, options)?, config))
}

/// The examples' cache: `dir`; else, with `fresh`, a new temporary folder (kept alive by the
/// returned guard); else `$GENIE_HOME/cache`, kept across runs, so that the same command again
/// finds every image it made (the keys hold the engine, prompt, source, level and seed). Says
/// which it is.
pub fn open_cache(
    dir: Option<&std::path::Path>,
    fresh: bool,
) -> anyhow::Result<(
    std::sync::Arc<genie::cache::Cache>,
    std::path::PathBuf,
    Option<tempfile::TempDir>,
)> {
    let (path, temp) = match dir {
        Some(dir) => (dir.to_path_buf(), None),
        None if fresh => {
            let t = tempfile::tempdir()?;
            (t.path().to_path_buf(), Some(t))
        }
        None => (genie::diffusion::tiny::genie_home().join("cache"), None),
    };
    let cache = genie::cache::Cache::open_dir(&path, 64 << 20)?;
    let kept = if temp.is_some() {
        "temporary, removed at exit"
    } else if dir.is_some() {
        "--cache"
    } else {
        "kept across runs: the same command again generates nothing; --fresh-cache for a temporary one"
    };
    println!("cache: {} ({kept})", path.display());
    Ok((std::sync::Arc::new(cache), path, temp))
}

/// Logs to standard error as `RUST_LOG` says, in colour on a terminal.
pub fn log_to_stderr() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
