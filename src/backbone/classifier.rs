//! A ResNet with a linear classifier head, to train or fine-tune (the long-tail protocol), and
//! its pooled features as GeNIe-Ada's embedding.

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{Device, Tensor};
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
