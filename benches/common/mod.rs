//! What the benches share: genie's tiny random model behind the engine factory they measure.

use std::sync::Arc;

use genie::diffusion::{tiny, EngineOptions, ModelSource, SchedulerKind};
use genie::factory::SdEngineFactory;

/// The tiny model (seed 1) in a temporary folder, and a factory for it: DPM-Solver++, 50 steps,
/// named here rather than taken from `EngineOptions::default()`, so the benches' numbers stay
/// comparable if the defaults change.
pub fn tiny_factory() -> (tempfile::TempDir, Arc<SdEngineFactory>) {
    let model = tempfile::tempdir().unwrap();
    tiny::write_tiny_model(model.path(), 1).unwrap();
    let mut opts = EngineOptions::default();
    opts.scheduler = SchedulerKind::DpmSolverPp;
    opts.steps = 50;
    let factory =
        Arc::new(SdEngineFactory::new(ModelSource::Local(model.path().into()), opts).unwrap());
    (model, factory)
}
