//! Glue between the layers: builds candle [`SdEngine`]s for the generator's worker threads.
//!
//! The generator knows only the [`EngineFactory`] trait and the diffusion engine knows nothing of
//! the generator; this module is where the two meet, so neither has to reach into the other.

use crate::diffusion::{self, DiffusionError, EngineOptions, EnginePlan, ModelSource, SdEngine};
use crate::engine::EngineFingerprint;
use crate::generator::{DynEngine, EngineFactory};

/// Makes one [`SdEngine`] per worker device from one model source and one set of options.
pub struct SdEngineFactory {
    source: ModelSource,
    options: EngineOptions,
    plan: EnginePlan,
}

impl SdEngineFactory {
    /// Plans the engine (configs read, weights hashed) without loading it; workers load it later.
    pub fn new(source: ModelSource, options: EngineOptions) -> Result<Self, DiffusionError> {
        let plan = diffusion::plan_engine(&source, &options)?;
        Ok(SdEngineFactory {
            source,
            options,
            plan,
        })
    }

    /// What the engines will be, decided from the config files.
    pub fn plan(&self) -> &EnginePlan {
        &self.plan
    }
}

impl EngineFactory for SdEngineFactory {
    fn fingerprint(&self) -> &EngineFingerprint {
        &self.plan.fingerprint
    }

    fn resolution(&self) -> u32 {
        self.plan.resolution
    }

    fn create(
        &self,
        device: &str,
    ) -> Result<Box<dyn DynEngine>, Box<dyn std::error::Error + Send + Sync>> {
        let options = EngineOptions {
            device: diffusion::parse_device(device)?,
            ..self.options.clone()
        };
        Ok(Box::new(SdEngine::load(&self.source, options)?))
    }
}
