//! Image backbones in burn for the evaluation protocols and fine-tuning: torchvision's
//! ResNet-18/34/50, loaded from PyTorch (`.pth`/`.pt`) or safetensors weights with burn-store's
//! import (and saved in torchvision's names), frozen (few-shot) or with a classifier head to
//! fine-tune (long-tail, or burn's `SupervisedTraining`).
//!
//! A backbone turns images into feature vectors ([`crate::eval::Backbone`]); nothing here knows
//! candle or the cache. Checkpoints from torchvision load as they are; the usual wrappers are
//! unwrapped by key remapping: a `state_dict`/`model` top-level entry, the `module.` prefix of
//! `DataParallel`, the `backbone.`/`encoder.` prefix of self-supervised checkpoints (UniSiam,
//! SimCLR-style), and a classifier head (`fc.*`) is ignored.
//!
//! ```no_run
//! use burn::tensor::Device;
//! use genie::backbone::{load_resnet, ResNetBackbone, ResNetConfig, ResNetDepth};
//! use genie::eval::Backbone;
//!
//! let device = Device::flex();
//! let config = ResNetConfig::torchvision(ResNetDepth::R18);
//! let model = load_resnet("resnet18-f37072fd.pth".as_ref(), config, &device)?;
//! let backbone = ResNetBackbone::new(model, 224, device);
//! let image = image::RgbImage::new(84, 84);
//! let features = backbone.features(&[image]).unwrap();
//! assert_eq!(features[0].len(), config.feature_dim());
//! # Ok::<(), genie::backbone::BackboneError>(())
//! ```

mod classifier;
mod load;
mod resnet;
mod train;

pub use classifier::{ResNetBatch, ResNetBatcher, ResNetClassifier, ResNetEmbeddings};
pub use load::{load_resnet, save_resnet, BackboneError};
pub use resnet::{ResNet, ResNetConfig, ResNetDepth, UnknownDepth};
pub use train::{confusion_of, Classifier, ClassifierTraining, TrainedBatch};

use burn::tensor::{Device, Tensor, TensorData};
use image::imageops::FilterType;
use image::RgbImage;

/// ImageNet's channel means and standard deviations, which torchvision's weights expect.
const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const STD: [f32; 3] = [0.229, 0.224, 0.225];

/// Images through at most this many at a time, so memory stays bounded on long lists.
const BATCH: usize = 32;

/// A frozen ResNet with its preprocessing: resize to `side`×`side` (bilinear), scale to
/// [0, 1], normalise with ImageNet's statistics, pool the last stage.
#[derive(Debug)]
pub struct ResNetBackbone {
    model: ResNet,
    side: u32,
    device: Device,
}

impl ResNetBackbone {
    /// `side`: the input resolution (224 for torchvision's weights; mini-ImageNet's 84-px images
    /// are usually upsampled to it).
    pub fn new(model: ResNet, side: u32, device: Device) -> Self {
        ResNetBackbone {
            model,
            side: side.max(1),
            device,
        }
    }

    /// Images → the normalised `[n, 3, side, side]` tensor the network reads.
    pub fn tensor(&self, images: &[RgbImage]) -> Tensor<4> {
        image_tensor(images, self.side, &self.device)
    }

    /// The network itself, for callers with their own preprocessing.
    pub fn model(&self) -> &ResNet {
        &self.model
    }
}

/// Images → the `[n, 3, side, side]` tensor torchvision's ResNets read: resized (bilinear) to
/// `side`×`side`, scaled to [0, 1], normalised with ImageNet's statistics. An empty image reads as
/// black rather than failing the batch.
pub fn image_tensor(images: &[RgbImage], side: u32, device: &Device) -> Tensor<4> {
    let side = side.max(1);
    let plane = side as usize * side as usize;
    let mut values = vec![0f32; images.len() * 3 * plane];
    for (img, out) in images.iter().zip(values.chunks_mut(3 * plane)) {
        let resized;
        let img = if img.dimensions() == (side, side) {
            img
        } else if img.width() == 0 || img.height() == 0 {
            resized = RgbImage::new(side, side);
            &resized
        } else {
            resized = image::imageops::resize(img, side, side, FilterType::Triangle);
            &resized
        };
        for (i, px) in img.pixels().enumerate() {
            for c in 0..3 {
                out[c * plane + i] = (px[c] as f32 / 255.0 - MEAN[c]) / STD[c];
            }
        }
    }
    let side = side as usize;
    Tensor::from_data(
        TensorData::new(values, [images.len(), 3, side, side]),
        device,
    )
}

/// A `[n, d]` feature tensor as `n` vectors, what [`crate::eval::Backbone`] returns.
pub fn feature_rows(features: Tensor<2>) -> Result<Vec<Vec<f32>>, String> {
    let [_, dim] = features.dims();
    let values = features
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| format!("reading the backbone's features: {e:?}"))?;
    Ok(values.chunks(dim.max(1)).map(<[f32]>::to_vec).collect())
}

impl crate::eval::Backbone for ResNetBackbone {
    fn features(&self, images: &[RgbImage]) -> Result<Vec<Vec<f32>>, String> {
        let mut features = Vec::with_capacity(images.len());
        for chunk in images.chunks(BATCH) {
            features.extend(feature_rows(self.model.features(self.tensor(chunk)))?);
        }
        Ok(features)
    }
}
