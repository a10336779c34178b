//! [`ConfusionMetric`]: a burn training metric that feeds the policy's running confusion matrix
//! from `ClassificationOutput`, so `SupervisedTraining` users add one metric and nothing else.

use burn::tensor::{Int, Tensor, TensorReadError};
use burn::train::metric::{Adaptor, Metric, MetricMetadata, MetricName, SerializedEntry};
use burn::train::ClassificationOutput;

use crate::policy::SharedConfusion;

/// What the metric reads from a step's output.
pub struct ConfusionInput {
    /// Logits or probabilities, `[batch, classes]`.
    pub output: Tensor<2>,
    /// Class indices, `[batch]`.
    pub targets: Tensor<1, Int>,
}

impl Adaptor<ConfusionInput> for ClassificationOutput {
    fn adapt(&self) -> ConfusionInput {
        ConfusionInput {
            output: self.output.clone(),
            targets: self.targets.clone(),
        }
    }
}

/// Records argmax predictions against targets into a [`SharedConfusion`]. At the end of each
/// epoch (when burn clears metrics) the counts are multiplied by `decay`, so the matrix follows
/// the model as it learns.
#[derive(Clone)]
pub struct ConfusionMetric {
    name: MetricName,
    confusion: SharedConfusion,
    decay: f64,
    recorded: u64,
}

impl ConfusionMetric {
    /// A metric that adds each batch's predictions to `confusion`. burn runs training metrics
    /// on a thread of their own, so the matrix is marked
    /// [`recorded_asynchronously`](SharedConfusion::recorded_asynchronously): the augmenter then
    /// reads it at fixed batch counts, and runs of one seed propose the same sources.
    pub fn new(confusion: SharedConfusion) -> Self {
        confusion.recorded_asynchronously();
        ConfusionMetric {
            name: MetricName::new("GeNIe confusion".to_string()),
            confusion,
            decay: 0.5,
            recorded: 0,
        }
    }

    /// The factor applied to old counts at each epoch end (default 0.5; 1 keeps everything).
    pub fn with_decay(mut self, decay: f64) -> Self {
        self.decay = decay.clamp(0.0, 1.0);
        self
    }

    fn entry(&self) -> SerializedEntry {
        let total = self.confusion.lock().total();
        SerializedEntry::new(
            format!(
                "{} predictions recorded ({total:.0} weighted)",
                self.recorded
            ),
            self.recorded.to_string(),
        )
    }
}

/// Argmax predictions and targets of one batch as class indices.
pub fn predictions_and_targets(
    output: &Tensor<2>,
    targets: &Tensor<1, Int>,
) -> Result<(Vec<usize>, Vec<usize>), TensorReadError> {
    let [batch, _] = output.dims();
    let predicted = output.clone().argmax(1).reshape([batch]);
    let to_indices = |t: Tensor<1, Int>| -> Result<Vec<usize>, TensorReadError> {
        let data = t.try_into_data()?.convert::<i64>();
        Ok(data
            .iter::<i64>()
            .map(|v| usize::try_from(v).unwrap_or(usize::MAX))
            .collect())
    };
    Ok((to_indices(predicted)?, to_indices(targets.clone())?))
}

impl Metric for ConfusionMetric {
    type Input = ConfusionInput;

    fn name(&self) -> MetricName {
        self.name.clone()
    }

    fn update(
        &mut self,
        item: &ConfusionInput,
        _metadata: &MetricMetadata,
    ) -> Result<SerializedEntry, TensorReadError> {
        let (predictions, targets) = predictions_and_targets(&item.output, &item.targets)?;
        // Out-of-range labels are skipped by the matrix; they are the dataset's business.
        self.confusion.record(&predictions, &targets);
        self.recorded += predictions.len() as u64;
        Ok(self.entry())
    }

    fn compute(&mut self) -> Result<SerializedEntry, TensorReadError> {
        Ok(self.entry())
    }

    fn clear(&mut self) {
        self.confusion.lock().decay(self.decay);
        self.recorded = 0;
    }
}
