//! Training genie's ResNet classifier on a burn GPU device (features `burn-vulkan` / `burn-wgpu`),
//! step for step against burn's CPU backend.
//!
//! On a machine with a GPU: `GENIE_TRAIN_DEVICE=vulkan cargo test --features burn-vulkan --test it
//! train_device`. Without `GENIE_TRAIN_DEVICE` the device is `auto`: the first GPU the built
//! backends find; when there is none the test runs the CPU half alone and prints SKIPPED with the
//! reason. A device named explicitly that cannot be opened fails the test.

use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Device, Int, Tensor, TensorData};
use genie::backbone::{ResNetClassifier, ResNetConfig, ResNetDepth};
use genie::loader::TrainDevice;

const STEPS: usize = 5;
const BATCH: usize = 8;
const CLASSES: usize = 3;
const SIDE: usize = 16;

/// A fixed batch: smooth images whose pattern depends on the class, so the loss can fall.
fn batch(device: &Device) -> (Tensor<4>, Tensor<1, Int>) {
    let mut pixels = Vec::with_capacity(BATCH * 3 * SIDE * SIDE);
    let labels: Vec<i64> = (0..BATCH).map(|i| (i % CLASSES) as i64).collect();
    for (i, &label) in labels.iter().enumerate() {
        for c in 0..3 {
            for y in 0..SIDE {
                for x in 0..SIDE {
                    let phase = (label as f32 + 1.0) * (x as f32 + 0.5 * y as f32) / SIDE as f32;
                    pixels.push((phase * 3.0 + c as f32 + 0.1 * i as f32).sin());
                }
            }
        }
    }
    (
        Tensor::from_data(TensorData::new(pixels, [BATCH, 3, SIDE, SIDE]), device),
        Tensor::from_data(TensorData::new(labels, [BATCH]), device),
    )
}

/// The loss before each of `STEPS` Adam steps of `model` trained on `device`.
fn losses(model: &ResNetClassifier, device: &Device) -> Vec<f32> {
    let device = device.clone().autodiff();
    let mut model = model.clone().fork(&device);
    let mut optim = AdamConfig::new().init();
    let loss_fn = CrossEntropyLossConfig::new().init(&device);
    let (images, targets) = batch(&device);
    (0..STEPS)
        .map(|_| {
            let loss = loss_fn.forward(model.forward(images.clone()), targets.clone());
            let value = loss.clone().into_scalar::<f32>();
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(1e-2, model.clone(), grads);
            value
        })
        .collect()
}

#[test]
fn train_device_trains_a_few_steps_like_the_cpu() {
    let explicit = std::env::var("GENIE_TRAIN_DEVICE").ok();
    let spec = explicit.as_deref().unwrap_or("auto");
    let device = match TrainDevice::open(spec) {
        Ok(device) => device,
        Err(e) => panic!("GENIE_TRAIN_DEVICE={spec}: {e}"),
    };
    println!("training device: {device}");

    let init = Device::flex().autodiff();
    init.seed(11);
    let config = ResNetConfig {
        depth: ResNetDepth::R18,
        width: 4,
    };
    let model = ResNetClassifier::new(config.init(&init), config.feature_dim(), CLASSES, &init);

    let cpu = losses(&model, &Device::flex());
    assert!(
        cpu.iter().all(|l| l.is_finite()) && cpu[STEPS - 1] < cpu[0],
        "the CPU reference does not learn: {cpu:?}"
    );
    if !device.is_gpu() {
        println!("SKIPPED the GPU half: {device}");
        crate::support::skipped("train_device, the GPU half", &device.to_string());
        return;
    }
    let gpu = losses(&model, device.device());
    println!("losses, cpu {cpu:?}\nlosses, gpu {gpu:?}");
    for (step, (c, g)) in cpu.iter().zip(&gpu).enumerate() {
        assert!(
            (c - g).abs() <= 1e-3 + 1e-2 * c.abs(),
            "step {step}: loss {g} on {device}, {c} on the CPU"
        );
    }
}
