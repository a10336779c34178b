//! The paper's evaluation protocols, in plain Rust on images and features: N-way K-shot
//! episodes, the traditional augmentations of its baselines, a logistic-regression probe,
//! mean ± 95 % confidence intervals, and the long-tail report per group of classes.
//!
//! Nothing here knows burn or candle: a backbone turns images into feature vectors elsewhere,
//! and these modules sample the episodes, fit the probe on the support features and score it on
//! the queries.
//!
//! ```
//! use genie::eval::{sample_episodes, EpisodeSpec, LogisticRegression, MeanCi};
//!
//! // Three classes of six images each (indices into the caller's image list).
//! let members = vec![(0..6).collect(), (6..12).collect(), (12..18).collect()];
//! let names = vec!["a".to_string(), "b".to_string(), "c".to_string()];
//! let spec = EpisodeSpec { ways: 2, shots: 1, queries: 2 };
//! let episodes = sample_episodes(&members, &names, spec, 10, 7).unwrap();
//! assert_eq!(episodes.len(), 10);
//!
//! // A probe on 2-d features: class 0 left, class 1 right.
//! let x = vec![vec![-1.0, 0.0], vec![-2.0, 0.5], vec![1.0, 0.0], vec![2.0, -0.5]];
//! let probe = LogisticRegression::default().fit(&x, &[0, 0, 1, 1], 2).unwrap();
//! assert_eq!(probe.predict(&[-3.0, 0.0]), 0);
//! assert_eq!(MeanCi::of(&[50.0, 60.0, 70.0]).mean, 60.0);
//! ```

mod augment;
mod episodes;
mod few_shot;
mod hard_negatives;
mod logreg;
mod long_tail;
#[cfg(feature = "cli")]
mod protocol_args;
mod stats;

pub use augment::{augment, mix_pair, Augmentation, ImageMix};
pub use episodes::{sample_episodes, Episode, EpisodeError, EpisodeSpec};
pub use few_shot::{
    csv_table, markdown_table, run_few_shot, sweep_points, Backbone, FewShotConfig, FewShotError,
    Generated, GeneratedImages, Method, MethodResult,
};
pub use hard_negatives::{missing_keys, CachedEpisodes, NeededPair};
pub use logreg::{FittedProbe, LogRegError, LogisticRegression, MixedTarget};
pub use long_tail::{long_tail_csv, long_tail_markdown, GroupAccuracy};
#[cfg(feature = "cli")]
pub use protocol_args::FewShotProtocolArgs;
pub use stats::MeanCi;
