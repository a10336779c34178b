//! A ResNet with a linear classifier head, to train or fine-tune (the long-tail protocol, or
//! burn's `SupervisedTraining` through [`ResNetBatcher`]), and its pooled features as GeNIe-Ada's
//! embedding.

use burn::data::dataloader::batcher::Batcher;
use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{Device, Int, Tensor, TensorData};
use burn::train::{ClassificationOutput, InferenceStep, TrainOutput, TrainStep};
use image::RgbImage;

use super::resnet::ResNet;
use crate::loader::{FeatureExtractor, GenieItem};

/// `backbone` → global-pooled features → `head` → logits.
#[derive(Module, Debug)]
pub struct ResNetClassifier {
    /// The feature extractor.
    pub backbone: ResNet,
    /// The linear classifier on its pooled features.
    pub head: Linear,
}

impl ResNetClassifier {
    /// `backbone` (pretrained or fresh) with a new head of `classes` outputs over its
    /// `feature_dim` features.
    pub fn new(backbone: ResNet, feature_dim: usize, classes: usize, device: &Device) -> Self {
        ResNetClassifier {
            backbone,
            head: LinearConfig::new(feature_dim, classes).init(device),
        }
    }

    /// `[n, 3, h, w]` normalised images ([`super::image_tensor`]) → `[n, classes]` logits.
    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        self.head.forward(self.backbone.features(images))
    }
}

impl ResNetClassifier {
    /// Logits and cross-entropy of a batch, as burn's classification metrics read them.
    pub fn classify(&self, batch: ResNetBatch) -> ClassificationOutput {
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

/// A batch for [`ResNetClassifier`]: normalised images and their class indices.
#[derive(Clone, Debug)]
pub struct ResNetBatch {
    /// `[n, 3, side, side]`, as [`super::image_tensor`] makes them.
    pub images: Tensor<4>,
    /// `[n]` class indices.
    pub targets: Tensor<1, Int>,
}

/// Items → [`ResNetBatch`] at `side` px: the batcher to wrap in `GenieBatcher` and hand to burn's
/// `SupervisedTraining` with a [`ResNetClassifier`]. An item without a label counts as class 0;
/// one whose pixels cannot be read as a black image (a batcher cannot fail).
#[derive(Clone, Copy, Debug)]
pub struct ResNetBatcher {
    /// The side images are resized to.
    pub side: u32,
}

impl<I: GenieItem> Batcher<I, ResNetBatch> for ResNetBatcher {
    fn batch(&self, items: Vec<I>, device: &Device) -> ResNetBatch {
        let images: Vec<RgbImage> = items
            .iter()
            .map(|i| i.rgb().unwrap_or_else(|_| RgbImage::new(1, 1)))
            .collect();
        let labels: Vec<i64> = items
            .iter()
            .map(|i| i.label().unwrap_or(0) as i64)
            .collect();
        ResNetBatch {
            images: super::image_tensor(&images, self.side, device),
            targets: Tensor::from_data(TensorData::new(labels, [items.len()]), device),
        }
    }
}

impl TrainStep for ResNetClassifier {
    type Input = ResNetBatch;
    type Output = ClassificationOutput;

    fn step(&self, batch: ResNetBatch) -> TrainOutput<ClassificationOutput> {
        let item = self.classify(batch);
        TrainOutput::new(self, item.loss.backward(), item)
    }
}

impl InferenceStep for ResNetClassifier {
    type Input = ResNetBatch;
    type Output = ClassificationOutput;

    fn step(&self, batch: ResNetBatch) -> ClassificationOutput {
        self.classify(batch)
    }
}

/// GeNIe-Ada's view of a [`ResNetClassifier`]: its pooled features of items resized to `side`.
#[derive(Clone, Debug)]
pub struct ResNetEmbeddings {
    /// The side items are resized to before embedding.
    pub side: u32,
    /// The burn device the embeddings run on.
    pub device: Device,
}

impl<I: GenieItem> FeatureExtractor<ResNetClassifier, I> for ResNetEmbeddings {
    fn embed(&self, model: &ResNetClassifier, items: Vec<I>) -> Tensor<2> {
        // An item whose pixels cannot be read embeds as black: GeNIe-Ada then finds its pair
        // unscorable rather than failing the run.
        let images: Vec<RgbImage> = items
            .iter()
            .map(|i| i.rgb().unwrap_or_else(|_| RgbImage::new(1, 1)))
            .collect();
        model
            .backbone
            .features(super::image_tensor(&images, self.side, &self.device))
    }
}
