//! [`Observed`]: the model being trained, wrapped so that burn's `SupervisedTraining` shows it
//! to GeNIe-Ada's [`LiveModel`] after every optimiser step — no hand-written loop needed.
//!
//! ```ignore
//! let live = Arc::new(LiveModel::start(augmenter.clone(), MyEmbeddings, LiveConfig::default())?);
//! let result = SupervisedTraining::new(dir, loader, valid_loader)
//!     .num_epochs(10)
//!     .launch(Learner::new(Observed::new(model, &live), AdamConfig::new().init(), 1e-3));
//! let model = result.model.into_inner();
//! ```

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use burn::module::Module;
use burn::optim::lr_scheduler::module_lr_scheduler::ModuleLearningRate;
use burn::optim::{GradientsParams, ModuleOptimizer, MultiGradientsParams};
use burn::train::{InferenceStep, TrainOutput, TrainStep};

use super::live::LiveModel;

/// A model of any type that a [`LiveModel`] watches. Erased, because burn's `Module` derive
/// refuses a skipped field that names the module's own type parameter.
trait Watcher: Send + Sync {
    fn observe(&self, model: &dyn Any);
}

impl<M: Module + 'static> Watcher for LiveModel<M> {
    fn observe(&self, model: &dyn Any) {
        if let Some(model) = model.downcast_ref::<M>() {
            LiveModel::observe(self, model);
        }
    }
}

/// The live model's handle inside [`Observed`]: cloned with the module, never saved.
#[derive(Clone)]
struct Watch(Arc<dyn Watcher>);

impl fmt::Debug for Watch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LiveModel")
    }
}

/// Your model, as burn's `Learner` trains it, calling [`LiveModel::observe`] after every
/// optimiser step (which publishes a snapshot every `LiveConfig::every` steps). Its `TrainStep`
/// and `InferenceStep` are your model's; its parameters and records are your model's.
#[derive(Module, Debug)]
pub struct Observed<M> {
    model: M,
    #[module(skip)]
    watch: Watch,
}

impl<M: Module + 'static> Observed<M> {
    /// Wraps `model` so that `live` sees it after every optimiser step.
    pub fn new(model: M, live: &Arc<LiveModel<M>>) -> Self {
        let watch: Arc<dyn Watcher> = live.clone();
        Observed {
            model,
            watch: Watch(watch),
        }
    }

    /// The wrapped model.
    pub fn inner(&self) -> &M {
        &self.model
    }

    /// The trained model (e.g. `LearningResult::model`), without the wrapper.
    pub fn into_inner(self) -> M {
        self.model
    }

    /// The wrapper around `update`'s model, which the live model then observes: every optimiser
    /// step passes through here.
    fn updated(self, update: impl FnOnce(M) -> M) -> Self {
        let Observed { model, watch } = self;
        let model = update(model);
        watch.0.observe(&model);
        Observed { model, watch }
    }
}

impl<M: TrainStep + Module + 'static> TrainStep for Observed<M> {
    type Input = M::Input;
    type Output = M::Output;

    fn step(&self, item: Self::Input) -> TrainOutput<Self::Output> {
        // The wrapper's parameters are the model's, so its gradients apply to both.
        self.model.step(item)
    }

    fn optimize(
        self,
        optim: &mut ModuleOptimizer,
        lr_module: ModuleLearningRate,
        grads: GradientsParams,
    ) -> Self {
        self.updated(|model| model.optimize(optim, lr_module, grads))
    }

    fn optimize_multi(
        self,
        optim: &mut ModuleOptimizer,
        lr_module: ModuleLearningRate,
        grads: MultiGradientsParams,
    ) -> Self {
        self.updated(|model| model.optimize_multi(optim, lr_module, grads))
    }
}

impl<M: InferenceStep + Module + 'static> InferenceStep for Observed<M> {
    type Input = M::Input;
    type Output = M::Output;

    fn step(&self, item: Self::Input) -> Self::Output {
        self.model.step(item)
    }
}
