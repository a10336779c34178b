//! genie's shapes model: the committed files are the documented ones, load through the real
//! loader with a stable fingerprint, and the model has learned the shapes: img2img toward a
//! target class gives that class at high r and keeps the source's class at low r, by a
//! classifier trained on real drawn shapes. The random tiny model fails the same check.

use std::sync::Arc;

use burn::data::dataloader::DataLoaderBuilder;
use burn::data::dataset::InMemDataset;
use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::Device;
use genie::diffusion::{shapes, tiny, EngineOptions, ModelSource, SdEngine};
use genie::generator::KeySpace;
use genie::loader::image_item;
use genie::synthetic::{self, CLASS_NAMES};
use genie::{Engine, Job, NoiseLevel};
use image::RgbImage;
use sha2::Digest;

#[path = "../../examples/common/mod.rs"]
mod common;
use common::{Cnn, ImageBatcher};

/// `sha256  path` lines of the committed model, as `scripts/shapes-model/train.py` printed them.
fn committed_hashes() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/shapes-model/SHA256SUMS"),
    )
    .unwrap();
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let (hash, path) = l.split_once("  ").unwrap();
            (hash.to_string(), path.to_string())
        })
        .collect()
}

#[test]
fn the_embedded_model_is_the_committed_one_and_loads_with_its_fingerprint() {
    let hashes = committed_hashes();
    for (name, bytes) in shapes::FILES {
        let (expected, _) = hashes
            .iter()
            .find(|(_, path)| path == name)
            .unwrap_or_else(|| panic!("{name} is not in SHA256SUMS"));
        let actual = format!("{:x}", sha2::Sha256::digest(bytes));
        assert_eq!(&actual, expected, "{name}");
    }
    let home = tempfile::tempdir().unwrap();
    let dir = shapes::ensure_shapes_model(&home.path().join("shapes")).unwrap();
    let engine = SdEngine::load(&ModelSource::Local(dir), {
        let mut options = EngineOptions::default();
        options.steps = 10;
        options
    })
    .unwrap();
    assert_eq!(engine.resolution(), 64);
    assert_eq!(engine.fingerprint().model, EXPECTED_MODEL_HASH);
}

/// The model identity genie computes from the committed files (changes with any of them).
const EXPECTED_MODEL_HASH: &str =
    "blake3:29e5dd0c594bfb477504291175de13e2456b9f53f51b19c0bfbd025c9d952fca";

/// A small judge: the examples' CNN trained on real drawn shapes (32 px).
fn judge() -> Cnn {
    // Seeded: the judge's initial weights, hence the test's outcome, are the same every run.
    Device::flex().seed(7);
    let device = Device::flex().autodiff();
    let items: Vec<_> = synthetic::balanced_dataset(500, CLASS_NAMES.len(), 32, 7)
        .unwrap()
        .into_iter()
        .map(|s| image_item(&s.image, s.label, "synthetic:judge"))
        .collect();
    let mut model = Cnn::new(CLASS_NAMES.len(), &device);
    let mut optim = AdamConfig::new().init();
    let loss_fn = CrossEntropyLossConfig::new().init(&device);
    let loader = DataLoaderBuilder::new(ImageBatcher { side: 32 })
        .batch_size(64)
        .shuffle(1)
        .set_device(device.clone())
        .build(InMemDataset::new(items));
    for _ in 0..12 {
        for batch in loader.iter() {
            let batch = batch.unwrap();
            let loss = loss_fn.forward(model.forward(batch.images), batch.targets);
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(1e-3, model, grads);
        }
    }
    model.valid()
}

fn labels(judge: &Cnn, images: &[RgbImage]) -> Vec<usize> {
    let items: Vec<_> = images.iter().map(|i| image_item(i, 0, "g")).collect();
    let logits = judge.forward(ImageBatcher { side: 32 }.images(&items, &Device::flex()));
    logits
        .argmax(1)
        .into_data()
        .convert::<i64>()
        .try_to_vec::<i64>()
        .unwrap()
        .into_iter()
        .map(|l| l as usize)
        .collect()
}

/// For twenty (source, target) pairs, two per source class: how many of the r = 0.1 images the
/// judge labels as the source, and how many of the r = 0.9 images as the target. (On this
/// small latent grid, 16×16, noise erases a shape sooner than on SD 1.5's 64×64: the shape is
/// already half gone at r = 0.3; see BENCHMARKS.md.)
fn low_and_high(model: ModelSource, judge: &Cnn) -> (usize, usize) {
    let mut engine = SdEngine::load(&model, {
        let mut options = EngineOptions::default();
        options.steps = 25;
        options
    })
    .unwrap();
    let size = engine.resolution();
    let keys = KeySpace::new(
        engine.fingerprint().clone(),
        size,
        CLASS_NAMES.map(String::from).to_vec(),
    );
    let levels = vec![
        NoiseLevel::parse("0.1").unwrap(),
        NoiseLevel::parse("0.9").unwrap(),
    ];
    let sources = synthetic::balanced_dataset(2, CLASS_NAMES.len(), size, 11).unwrap();
    let mut jobs = Vec::new();
    let mut targets = Vec::new();
    for s in &sources {
        let target = (s.label + 3 + jobs.len() % 2) % CLASS_NAMES.len();
        let hash = genie::cache::source_hash(&s.image);
        jobs.push(Job {
            source: Some(Arc::new(s.image.clone())),
            prompt: keys.prompt(target),
            levels: levels.clone(),
            seed: keys.pair_seed(0, hash, target, 0),
            noise: None,
        });
        targets.push(target);
    }
    let outputs = engine.generate(&jobs).unwrap();
    let low: Vec<RgbImage> = outputs.iter().map(|o| o.images[0].image.clone()).collect();
    let high: Vec<RgbImage> = outputs.iter().map(|o| o.images[1].image.clone()).collect();
    let kept = labels(judge, &low)
        .iter()
        .zip(&sources)
        .filter(|(l, s)| **l == s.label)
        .count();
    let moved = labels(judge, &high)
        .iter()
        .zip(&targets)
        .filter(|(l, t)| l == t)
        .count();
    (kept, moved)
}

#[test]
fn img2img_keeps_the_source_class_at_low_r_and_shows_the_target_at_high_r() {
    let judge = judge();
    let home = tempfile::tempdir().unwrap();
    let shapes = shapes::ensure_shapes_model(&home.path().join("shapes")).unwrap();
    let (kept, moved) = low_and_high(ModelSource::Local(shapes), &judge);
    eprintln!("shapes model: {kept}/20 keep the source's class at r = 0.1, {moved}/20 show the target at r = 0.9");
    // Chance is 2 of 20 for either count; this model gives 14 and 20 (BENCHMARKS.md). The
    // bounds leave room for the judge's training to differ slightly between machines.
    assert!(
        kept >= 10,
        "at r = 0.1 only {kept} of 20 are still their source's class"
    );
    assert!(
        moved >= 14,
        "at r = 0.9 only {moved} of 20 show the target class"
    );
    // The same check on the random tiny model fails: its r = 0.9 images are noise.
    let tiny = tiny::ensure_tiny_model(&home.path().join("tiny")).unwrap();
    let (_, moved) = low_and_high(ModelSource::Local(tiny), &judge);
    eprintln!("tiny random model: {moved}/20 'show' the target at r = 0.9");
    assert!(
        moved < 8,
        "the tiny random model 'showed' {moved} of 20 targets"
    );
}
