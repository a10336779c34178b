//! Trains a classifier a batch at a time (Adam, cross-entropy) and tests it into a confusion
//! matrix: the loop `genie eval long-tail` and `examples/long_tail.rs` share.
//!
//! The caller owns the batches (a burn `DataLoader`, a hand-made order, hard negatives mixed in
//! by an `Augmenter`) and what it shows each step to (GeNIe-Ada's `LiveModel`); this module owns
//! the optimiser step and the counting.

use burn::module::Module;
use burn::nn::loss::{CrossEntropyLoss, CrossEntropyLossConfig};
use burn::optim::{AdamConfig, GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Int, Tensor, TensorReadError};

use super::ResNetClassifier;
use crate::loader::predictions_and_targets;
use crate::policy::ConfusionMatrix;

/// A model that maps a batch of images `[n, 3, h, w]` to class logits `[n, classes]`.
pub trait Classifier: Module {
    /// The logits of `images`.
    fn logits(&self, images: Tensor<4>) -> Tensor<2>;
}

impl Classifier for ResNetClassifier {
    fn logits(&self, images: Tensor<4>) -> Tensor<2> {
        self.forward(images)
    }
}

/// A classifier being trained with Adam on cross-entropy, one batch per [`step`](Self::step).
pub struct ClassifierTraining<M> {
    model: M,
    optim: ModuleOptimizer,
    loss: CrossEntropyLoss,
    lr: f64,
}

/// What one optimiser step saw.
pub struct TrainedBatch {
    /// The batch's mean cross-entropy before the step.
    pub loss: f64,
    /// The batch's logits before the step (for a running confusion matrix).
    pub logits: Tensor<2>,
}

impl<M: Classifier> ClassifierTraining<M> {
    /// Trains `model` (made on an autodiff `device`) with Adam's defaults at learning rate `lr`.
    pub fn new(model: M, lr: f64, device: &Device) -> Self {
        ClassifierTraining {
            model,
            optim: AdamConfig::new().init(),
            loss: CrossEntropyLossConfig::new().init(device),
            lr,
        }
    }

    /// One optimiser step on `images` labelled `targets`.
    pub fn step(
        &mut self,
        images: Tensor<4>,
        targets: Tensor<1, Int>,
    ) -> Result<TrainedBatch, TensorReadError> {
        let logits = self.model.logits(images);
        let loss = self.loss.forward(logits.clone(), targets);
        let value = loss.clone().try_into_scalar::<f32>()? as f64;
        let grads = GradientsParams::from_grads(loss.backward(), &self.model);
        self.model = self.optim.step(self.lr, self.model.clone(), grads);
        Ok(TrainedBatch {
            loss: value,
            logits,
        })
    }

    /// The model as trained so far.
    pub fn model(&self) -> &M {
        &self.model
    }

    /// The trained model.
    pub fn into_model(self) -> M {
        self.model
    }
}

/// The confusion matrix (true class, predicted class) of `model` over labelled `batches`;
/// stops at the first batch that cannot be made.
pub fn confusion_of<M, E>(
    model: &M,
    classes: usize,
    batches: impl IntoIterator<Item = Result<(Tensor<4>, Tensor<1, Int>), E>>,
) -> Result<ConfusionMatrix, E>
where
    M: Classifier,
    E: From<TensorReadError>,
{
    let mut matrix = ConfusionMatrix::new(classes);
    for batch in batches {
        let (images, targets) = batch?;
        let (predicted, truth) = predictions_and_targets(&model.logits(images), &targets)?;
        matrix.record(&predicted, &truth);
    }
    Ok(matrix)
}
