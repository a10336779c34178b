//! The README's Rust code is compiled: every ```rust block of README.md is, word for word, the
//! body of a function below (between `README begin` and `README end` markers), and this test
//! fails when the two drift apart. The functions are type-checked with the tests; the paths they
//! need at run time (SD 1.5 weights, a GPU server) are exercised by the other tests instead.
#![allow(dead_code, unused_variables, clippy::too_many_arguments)]

use std::path::Path;
use std::sync::Arc;

use burn::data::dataloader::batcher::Batcher;
use burn::data::dataloader::DataLoader;
use burn::data::dataset::InMemDataset;
use burn::module::Module;
use burn::nn::loss::{CrossEntropyLoss, CrossEntropyLossConfig};
use burn::nn::Linear;
use burn::optim::{AdamConfig, GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Int, Tensor, TensorData};
use burn::train::{
    ClassificationOutput, InferenceStep, Learner, SupervisedTraining, TrainOutput, TrainStep,
};
use genie::cache::Cache;
use genie::classes::{ClassInfo, ClassNames};
use genie::factory::SdEngineFactory;
use genie::loader::ImageItem;
use genie::loader::{Augmenter, FeatureExtractor, GenieItem, LiveConfig, LiveModel, Observed};
use genie::policy::{Policy, SharedConfusion};
use genie::EngineFingerprint;

use crate::support::Identity;

type Result = std::result::Result<(), Box<dyn std::error::Error>>;

const SIDE: usize = 4;

/// The model of the README's loops: a linear probe on flattened pixels.
#[derive(Module, Debug)]
struct MyModel {
    linear: Linear,
}

impl MyModel {
    fn forward(&self, images: Tensor<2>) -> Tensor<2> {
        self.linear.forward(images)
    }

    fn output(&self, batch: MyBatch) -> ClassificationOutput {
        let output = self.forward(batch.images);
        let loss = CrossEntropyLossConfig::new()
            .init(&output.device())
            .forward(output.clone(), batch.targets.clone());
        ClassificationOutput {
            loss,
            output,
            targets: batch.targets,
        }
    }
}

impl TrainStep for MyModel {
    type Input = MyBatch;
    type Output = ClassificationOutput;
    fn step(&self, batch: MyBatch) -> TrainOutput<ClassificationOutput> {
        let item = self.output(batch);
        TrainOutput::new(self, item.loss.backward(), item)
    }
}

impl InferenceStep for MyModel {
    type Input = MyBatch;
    type Output = ClassificationOutput;
    fn step(&self, batch: MyBatch) -> ClassificationOutput {
        self.output(batch)
    }
}

#[derive(Clone, Debug)]
struct MyBatch {
    images: Tensor<2>,
    targets: Tensor<1, Int>,
}

#[derive(Clone)]
struct MyBatcher;

impl Batcher<ImageItem, MyBatch> for MyBatcher {
    fn batch(&self, items: Vec<ImageItem>, device: &Device) -> MyBatch {
        let n = items.len();
        let pixels: Vec<f32> = items
            .iter()
            .flat_map(|i| i.rgb().map(|rgb| rgb.into_raw()).unwrap_or_default())
            .map(|v| v as f32 / 255.0)
            .collect();
        let labels: Vec<i64> = items
            .iter()
            .map(|i| i.label().unwrap_or(0) as i64)
            .collect();
        MyBatch {
            images: Tensor::from_data(TensorData::new(pixels, [n, SIDE * SIDE * 3]), device),
            targets: Tensor::from_data(TensorData::new(labels, [n]), device),
        }
    }
}

/// GeNIe-Ada's view of the model: its logits.
struct MyEmbeddings;

impl FeatureExtractor<MyModel, ImageItem> for MyEmbeddings {
    fn embed(&self, model: &MyModel, items: Vec<ImageItem>) -> Tensor<2> {
        model.forward(MyBatcher.batch(items, &Device::flex()).images)
    }
}

#[rustfmt::skip]
fn burn_guide(
    dataset: InMemDataset<ImageItem>,
    factory: SdEngineFactory,
    cache: Arc<Cache>,
    class_ids: Vec<String>,
    names: Option<ClassNames>,
    my_batcher: Identity,
    seed: u64,
    device: Device,
) -> Result {
    // README begin
    use std::sync::Arc;
    use burn::data::dataloader::DataLoaderBuilder;
    use burn::data::dataset::Dataset;
    use genie::generator::{Generator, GeneratorConfig};
    use genie::loader::{Augmenter, GenieBatcher, GenieItem};
    use genie::policy::{ClassStats, Policy, PolicyConfig, SharedConfusion};

    // Targets: the Few classes (< 20 images); ≤ 50 hard negatives each; sources: top-4 confused classes.
    let stats = ClassStats::from_labels(dataset.iter().filter_map(|item| item.ok()?.label()), class_ids.len())?;
    let policy = Policy::long_tail(stats, PolicyConfig::long_tail())?;
    let generator = Generator::start(Arc::new(factory), cache.clone(), GeneratorConfig::default())?;
    // Class ids are your labels; a class-name file (or, for WordNet ids, the built-in ImageNet-1k
    // table) names them in the prompts: "a photo of a {name}."
    let classes = genie::classes::classes_for(&class_ids, names.as_ref())?.classes;
    let confusion = SharedConfusion::new(class_ids.len());
    let augmenter = Augmenter::builder(policy, classes, cache)
        .generator(Arc::new(generator)) // the cache keys are its engine's
        .confusion(confusion.clone())
        .build()?;
    let loader = DataLoaderBuilder::new(GenieBatcher::new(my_batcher, augmenter.clone()))
        .batch_size(32)
        .shuffle(seed)
        .set_device(device.clone())
        .build(dataset);
    // README end
    Ok(())
}

#[rustfmt::skip]
fn hand_written_loop(
    augmenter: Arc<Augmenter<ImageItem>>,
    loader: Arc<dyn DataLoader<MyBatch>>,
    mut model: MyModel,
    mut optim: ModuleOptimizer,
    loss_fn: CrossEntropyLoss,
    confusion: SharedConfusion,
    lr: f64,
) -> Result {
    // README begin
    let live = LiveModel::start(augmenter.clone(), MyEmbeddings, LiveConfig::default())?;
    for batch in loader.iter() {
        let batch = batch?;
        let logits = model.forward(batch.images);
        let (p, t) = genie::loader::predictions_and_targets(&logits, &batch.targets)?;
        confusion.record(&p, &t); // sources follow the live confusions
        let loss = loss_fn.forward(logits, batch.targets);
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(lr, model, grads);
        live.observe(&model); // every 50 calls: a model.valid() snapshot
    }
    // README end
    Ok(())
}

#[rustfmt::skip]
fn supervised_training(
    augmenter: Arc<Augmenter<ImageItem>>,
    loader: Arc<dyn DataLoader<MyBatch>>,
    valid_loader: Arc<dyn DataLoader<MyBatch>>,
    model: MyModel,
    confusion: SharedConfusion,
    dir: &Path,
) -> Result {
    // README begin
    let live = Arc::new(LiveModel::start(augmenter.clone(), MyEmbeddings, LiveConfig::default())?);
    let result = SupervisedTraining::new(dir, loader, valid_loader) // valid_loader: the plain batcher
        .metric_train(genie::loader::ConfusionMetric::new(confusion.clone()))
        .num_epochs(10)
        .launch(Learner::new(Observed::new(model, &live), AdamConfig::new().init(), 1e-3));
    let model = result.model.into_inner();
    // README end
    Ok(())
}

#[rustfmt::skip]
fn pre_warm_plan(
    policy: Policy,
    classes: Vec<ClassInfo>,
    cache: Arc<Cache>,
    factory: SdEngineFactory,
) -> Result {
    // README begin
    let pairs = genie::warm::plan_pairs(&genie::warm::read_plan("plan.jsonl".as_ref())?);
    let augmenter = Augmenter::<ImageItem>::builder(policy, classes, cache)
        .pre_warmed_by(&factory.plan().fingerprint) // or .generator(…) for what is missing
        .plan(pairs)
        .build()?;
    // README end
    Ok(())
}

#[rustfmt::skip]
fn remote_generator(
    policy: Policy,
    classes: Vec<ClassInfo>,
    expected: EngineFingerprint,
    your_batcher: Identity,
) -> Result {
    // README begin
    use std::sync::Arc;
    use genie::loader::{Augmenter, GenieBatcher};
    use genie::remote::{RemoteConfig, RemoteGenerator};

    let cache = Arc::new(genie::cache::Cache::open("/shared/genie-cache", 64 << 20)?); // the server's cache
    // `expected`: the server's engine, e.g. `genie::diffusion::plan_engine(&source, &options)?.fingerprint`;
    // connect refuses a server that runs another one.
    let remote = RemoteGenerator::connect("http://gpu-node:8700", &expected, RemoteConfig::default())?;
    let augmenter = Augmenter::<ImageItem>::builder(policy, classes, cache)
        .generator(Arc::new(remote)) // the keys are the server's engine's
        .build()?;
    let batcher = GenieBatcher::new(your_batcher, augmenter); // as in-process
    // README end
    Ok(())
}

#[rustfmt::skip]
fn library_generator() -> Result {
    // README begin
    use std::sync::Arc;
    use genie::cache::Cache;
    use genie::diffusion::{EngineOptions, ModelSource};
    use genie::factory::SdEngineFactory;
    use genie::generator::{Generator, GeneratorConfig, Priority, Request, SourceImage};

    let factory = Arc::new(SdEngineFactory::new(ModelSource::sd15(), EngineOptions::default())?);
    let cache = Arc::new(Cache::open_dir("hn-cache", 512 << 20)?);
    let generator = Generator::start(factory, cache.clone(), GeneratorConfig::default())?;
    // Never blocks: says at once whether each level was queued, already pending, cached, backing off
    // after a failure, or dropped because the bounded queue is full.
    let receipt = generator.request(Request {
        source: Some(SourceImage::new(genie::image_io::load_source("dog.jpg".as_ref(), 512)?)),
        target: "cat".into(),
        prompt: "a photo of a cat.".into(),
        levels: genie::NoiseLevel::ADA_SWEEP.to_vec(),
        seed: 0,
        priority: Priority::Online,
    })?;
    // README end
    Ok(())
}

#[rustfmt::skip]
fn library_engine() -> Result {
    // README begin
    use std::sync::Arc;
    use genie::diffusion::{EngineOptions, ModelSource, SdEngine};
    use genie::{image_io, Engine, Job, NoiseLevel};

    let mut engine = SdEngine::load(&ModelSource::Local("sd15/".into()), EngineOptions::default())?;
    let source = image_io::load_source("dog.jpg".as_ref(), engine.resolution())?;
    let job = Job {
        source: Some(Arc::new(source)),
        prompt: "a photo of a cat.".into(),
        levels: NoiseLevel::ADA_SWEEP.to_vec(),
        seed: 0,
        noise: None,
    };
    let images = engine.generate(&[job])?; // one RgbImage per level
    // README end
    Ok(())
}

/// The ```rust blocks of `markdown`, each as its lines.
fn rust_blocks(markdown: &str) -> Vec<Vec<String>> {
    regions(markdown, ["```rust", "```"], |line| line.trim_end())
}

/// The marked regions of this file, each as its lines with the function body's indentation
/// taken off.
fn compiled_regions(source: &str) -> Vec<Vec<String>> {
    regions(source, ["// README begin", "// README end"], |line| {
        line.strip_prefix("    ").unwrap_or(line)
    })
}

/// The runs of `text`'s lines between a line `begin` and a line `end` (both trimmed), each line
/// as `keep` gives it.
fn regions(text: &str, [begin, end]: [&str; 2], keep: impl Fn(&str) -> &str) -> Vec<Vec<String>> {
    let mut regions = Vec::new();
    let mut current: Option<Vec<String>> = None;
    for line in text.lines() {
        match (&mut current, line.trim()) {
            (None, l) if l == begin => current = Some(Vec::new()),
            (Some(_), l) if l == end => regions.extend(current.take()),
            (Some(region), _) => region.push(keep(line).to_string()),
            (None, _) => {}
        }
    }
    regions
}

#[test]
fn every_rust_block_of_the_readme_is_compiled_code() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let blocks = rust_blocks(&readme);
    let regions = compiled_regions(include_str!("readme.rs"));
    assert!(blocks.len() >= 7, "README rust blocks: {}", blocks.len());
    for (n, block) in blocks.iter().enumerate() {
        assert!(
            regions.contains(block),
            "README rust block {} is not compiled code in tests/it/readme.rs:\n{}",
            n + 1,
            block.join("\n")
        );
    }
    for region in &regions {
        assert!(
            blocks.contains(region),
            "a region of tests/it/readme.rs is no longer in the README:\n{}",
            region.join("\n")
        );
    }
}
