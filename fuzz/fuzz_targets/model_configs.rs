//! A model folder's `config.json` files (UNet, VAE, text encoder: diffusers and transformers
//! write Python JSON, `Infinity` included) and `scheduler_config.json`, as the engine plans from
//! them: a spec or a typed error naming the key, never a panic — nor a grid the sampler cannot run.
#![no_main]

use genie::diffusion::config::{text_spec, unet_spec, vae_spec, ConfigReader};
use genie::diffusion::{SchedulerConfig, SchedulerKind};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&which, bytes)) = data.split_first() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    std::fs::write(&path, bytes).unwrap();
    match which % 4 {
        0 => {
            let _ = ConfigReader::open(&path).and_then(unet_spec);
        }
        1 => {
            let _ = ConfigReader::open(&path).and_then(vae_spec);
        }
        2 => {
            let _ = ConfigReader::open(&path).and_then(text_spec);
        }
        _ => {
            let kind = if which & 4 == 0 {
                SchedulerKind::Ddim
            } else {
                SchedulerKind::DpmSolverPp
            };
            if let Ok(scheduler) = SchedulerConfig::from_file(&path, kind) {
                for steps in [1, 4, 50, 1000] {
                    let _ = scheduler.grid(steps);
                }
            }
        }
    }
});
