//! The few-shot protocol's command-line arguments, one definition for `genie eval few-shot` and
//! `examples/few_shot.rs` (feature `cli`).

use super::{EpisodeSpec, FewShotConfig, Method};

/// Episodes, methods and seed of the paper's few-shot protocol, as command-line flags
/// (`#[command(flatten)]` them; a program that wants another default changes it with
/// `#[command(mut_arg("episodes", |a| a.default_value("20")))]`).
#[derive(clap::Args, Clone, Debug)]
pub struct FewShotProtocolArgs {
    /// Classes per episode.
    #[arg(long, default_value_t = 5)]
    pub ways: usize,
    /// Support images per class.
    #[arg(long, default_value_t = 1)]
    pub shots: usize,
    /// Query images per class (the paper: 16).
    #[arg(long, default_value_t = 16)]
    pub queries: usize,
    /// Episodes (the paper: 600).
    #[arg(long, default_value_t = 600)]
    pub episodes: usize,
    /// Extra labelled images per support image for every method but "none" (the paper: 4).
    #[arg(long, default_value_t = 4)]
    pub extra_per_shot: usize,
    /// Methods (default: all): none, weak, strong, cutmix, mixup, img2img-l, img2img-h,
    /// txt2img, genie, genie-ada, and genie@R for GeNIe at level R.
    #[arg(long, value_delimiter = ',')]
    pub methods: Vec<String>,
    /// Also GeNIe at each of GeNIe-Ada's levels (the paper's Table 4; no extra diffusion when
    /// GeNIe-Ada runs too) and a plot of accuracy against r.
    #[arg(long)]
    pub sweep: bool,
    /// Seed of the episodes and the augmentations.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

impl FewShotProtocolArgs {
    /// The episodes' shape.
    pub fn spec(&self) -> EpisodeSpec {
        EpisodeSpec {
            ways: self.ways,
            shots: self.shots,
            queries: self.queries,
        }
    }

    /// Extra labelled images a class's support set gets (`--extra-per-shot` × `--shots`).
    pub fn extra_per_class(&self) -> usize {
        self.extra_per_shot * self.shots
    }

    /// The run these flags ask for (its `image_size` is left to the caller: the engine's
    /// resolution, once the engine is known); an unknown method name is refused, naming the known
    /// ones.
    pub fn config(&self) -> Result<FewShotConfig, String> {
        Ok(FewShotConfig {
            spec: self.spec(),
            episodes: self.episodes,
            seed: self.seed,
            extra_per_shot: self.extra_per_shot,
            methods: Method::selection(&self.methods, self.sweep)?,
            ..FewShotConfig::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    #[command(mut_arg("episodes", |a| a.default_value("20")))]
    struct Command {
        #[command(flatten)]
        protocol: FewShotProtocolArgs,
    }

    #[test]
    fn the_flags_make_the_run_and_a_program_may_change_a_default() {
        let parsed = Command::try_parse_from(["x", "--ways", "3", "--methods", "none,genie@0.6"])
            .unwrap()
            .protocol;
        assert_eq!(parsed.episodes, 20);
        let run = parsed.config().unwrap();
        assert_eq!(run.spec.ways, 3);
        assert_eq!(run.spec.queries, 16);
        assert_eq!(run.extra_per_shot, parsed.extra_per_class());
        assert_eq!(run.methods.len(), 2);
        let unknown = Command::try_parse_from(["x", "--methods", "nope"])
            .unwrap()
            .protocol
            .config()
            .unwrap_err();
        assert!(unknown.contains("nope"), "{unknown}");
    }
}
