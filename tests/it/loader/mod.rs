//! The burn wrappers: the helpers their tests share, and one file per part: the batcher, GeNIe-Ada
//! with the live model, and the dataset, plans and builder.

use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use crate::support::{colour_factory, engine_fingerprint, level_colour, Gate, Identity};
use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::{Dataset, InMemDataset};
use burn::tensor::{Device, Int, Tensor, TensorData};
use genie::cache::{Cache, MemoryStore};
use genie::generator::{Generator, GeneratorConfig, Shutdown};
use genie::loader::ImageItem;
use genie::loader::{
    image_item, Augmenter, AugmenterConfig, ConfusionMetric, FeatureExtractor, GenieBatcher,
    GenieDataset, GenieItem, KeySpace, LiveConfig, LiveModel, OfflinePlan,
};
use genie::policy::{ClassStats, Policy, PolicyConfig, SharedConfusion};
use genie::{EngineFingerprint, NoiseLevel};
use image::{Rgb, RgbImage};

mod ada;
mod batcher;
mod plans;

const CLASSES: usize = 4;
const SIDE: u32 = 8;

fn names() -> Vec<String> {
    ["alpha", "beta", "gamma", "delta"]
        .map(String::from)
        .to_vec()
}

fn fingerprint() -> EngineFingerprint {
    engine_fingerprint("colour-engine", SIDE)
}

fn generator(cache: Arc<Cache>, gate: Arc<Gate>, queue_capacity: usize) -> Arc<Generator> {
    let factory = Arc::new(colour_factory(fingerprint(), SIDE, gate));
    let mut config = GeneratorConfig::default();
    config.devices = vec!["cpu".into()];
    config.queue_capacity = queue_capacity;
    config.max_batch = 4;
    Arc::new(Generator::start(factory, cache, config).unwrap())
}

/// A generator whose engine answers at once.
fn open_generator(cache: Arc<Cache>, queue_capacity: usize) -> Arc<Generator> {
    let gate = Arc::new(Gate::default());
    gate.open();
    generator(cache, gate, queue_capacity)
}

fn memory_cache(budget: usize) -> Arc<Cache> {
    Arc::new(Cache::new(Arc::new(MemoryStore::new()), budget))
}

/// Class 0 has many images, class 3 few: class 3 is the only target.
fn stats() -> ClassStats {
    ClassStats::from_counts(vec![300, 120, 60, 5])
}

fn config(ada: bool) -> AugmenterConfig {
    let mut options = AugmenterConfig::default();
    options.ada = ada;
    options
}

/// The long-tail policy, mixing as often as the batch fraction allows (these tests look at
/// single batches, not epochs; the per-epoch rate is tested in `tests/it/policy.rs`).
fn policy(per_target: usize) -> Policy {
    Policy::long_tail(stats(), {
        let mut options = PolicyConfig::long_tail();
        options.per_target = per_target;
        options.uses_per_epoch = None;
        options
    })
    .unwrap()
}

/// A distinct item of `class`: its pixels encode (class, n).
fn item(class: usize, n: usize) -> ImageItem {
    let colour = match class {
        3 => Rgb([0, 250, 0]),
        _ => Rgb([255, (n % 200) as u8, (n / 200) as u8]),
    };
    let mut img = RgbImage::from_pixel(SIDE, SIDE, colour);
    img.put_pixel(0, 0, Rgb([class as u8, (n % 256) as u8, (n / 256) as u8]));
    image_item(&img, class, format!("{class}/{n}.png"))
}

/// A batch of 16 dominated by class 0, with one item of each other class.
fn batch(round: usize) -> Vec<ImageItem> {
    let mut items: Vec<_> = (0..13).map(|i| item(0, round * 100 + i)).collect();
    items.extend((1..CLASSES).map(|c| item(c, round * 100 + 50)));
    items
}

fn keys() -> KeySpace {
    KeySpace::new(fingerprint(), SIDE, names())
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs batches until the generator has made the images of every pair started so far.
fn run_until_mixed(batcher: &GenieBatcher<Identity, ImageItem>) -> Vec<Vec<ImageItem>> {
    let device = Device::default();
    let mut out = Vec::new();
    for round in 0..200 {
        let b = batcher.batch(batch(round), &device);
        let mixed = b.iter().any(GenieItem::is_generated);
        out.push(b);
        if mixed {
            return out;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("no hard negative was ever mixed in");
}

/// The model's view of an item: its linear map of the item's mean colour.
struct MeanColour;

impl FeatureExtractor<burn::nn::Linear, ImageItem> for MeanColour {
    fn embed(&self, model: &burn::nn::Linear, items: Vec<ImageItem>) -> Tensor<2> {
        let n = items.len();
        let mut values = Vec::with_capacity(n * 3);
        for item in items {
            let rgb = item.rgb().unwrap();
            let count = rgb.pixels().len() as f32;
            for c in 0..3 {
                values.push(rgb.pixels().map(|p| p.0[c] as f32).sum::<f32>() / count);
            }
        }
        model.forward(Tensor::from_data(
            TensorData::new(values, [n, 3]),
            &Device::default(),
        ))
    }
}

/// A 3 → 3 linear map without bias (`O = I W`), `weights` row-major `[input][output]`.
fn linear(weights: [[f32; 3]; 3]) -> burn::nn::Linear {
    let values: Vec<f32> = weights.iter().flatten().copied().collect();
    burn::nn::Linear {
        weight: burn::module::Param::from_tensor(Tensor::from_data(
            TensorData::new(values, [3, 3]),
            &Device::default(),
        )),
        bias: None,
    }
}

/// The identity: the embedding is the mean colour, and the jump is between r = 0.5 and 0.6.
fn colour_model() -> burn::nn::Linear {
    linear([[1., 0., 0.], [0., 1., 0.], [0., 0., 1.]])
}

/// A model blind to the difference between the r = 0.5 and r = 0.6 colours
/// ((250, 5, 0) − (6, 234, 60) is in its null space): its largest jump comes later.
fn blind_model() -> burn::nn::Linear {
    // Output 0 = 0.229 R + 0.244 G, output 1 = 0.060 R + 0.244 B.
    linear([[0.229, 0.060, 0.], [0.244, 0., 0.], [0., 0.244, 0.]])
}

/// Writes an image-folder dataset of PNGs (`side` px, one colour per class, the image's number
/// in its left half) and returns it scanned.
fn image_folder(
    dir: &std::path::Path,
    counts: &[(&str, usize)],
    side: u32,
) -> genie::warm::ImageFolder {
    for (class, (name, count)) in counts.iter().enumerate() {
        let class_dir = dir.join(name);
        std::fs::create_dir_all(&class_dir).unwrap();
        for n in 0..*count {
            let img = RgbImage::from_fn(side, side, |x, _| {
                if x < side / 2 {
                    Rgb([40 * class as u8, (n * 7 % 256) as u8, 100])
                } else {
                    Rgb([40 * class as u8, 200, 9])
                }
            });
            img.save(class_dir.join(format!("{n:03}.png"))).unwrap();
        }
    }
    genie::warm::ImageFolder::scan(dir).unwrap()
}

/// Training items of a folder: small thumbnails that remember their file.
fn folder_items(folder: &genie::warm::ImageFolder) -> Vec<ImageItem> {
    folder
        .images
        .iter()
        .map(|(path, label)| {
            let img = genie::image_io::open_rgb(path).unwrap();
            let thumb = genie::image_io::resize_center_crop(&img, 4).unwrap();
            image_item(&thumb, *label, path.display().to_string())
        })
        .collect()
}
