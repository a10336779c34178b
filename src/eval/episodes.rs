//! N-way K-shot episodes: which classes, which support and which query images, drawn from a
//! test split with a seed, the same episodes for every method compared.

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

/// The shape of an episode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EpisodeSpec {
    /// Classes per episode (N).
    pub ways: usize,
    /// Labelled (support) images per class (K).
    pub shots: usize,
    /// Query images per class (Q; the paper uses 16).
    pub queries: usize,
}

/// One episode. Class `i` of the episode is `classes[i]` of the split; `support[i]` and
/// `queries[i]` are indices into the caller's image list, disjoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Episode {
    /// The split's class of each way.
    pub classes: Vec<usize>,
    /// Support images per way.
    pub support: Vec<Vec<usize>>,
    /// Query images per way.
    pub queries: Vec<Vec<usize>>,
}

/// Why a split cannot give the episodes asked for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EpisodeError {
    /// Zero ways, shots or queries.
    #[error("an episode needs at least one way, one shot and one query, got {0:?}")]
    EmptySpec(EpisodeSpec),
    /// Fewer classes than ways.
    #[error("{ways}-way episodes need {ways} classes; the split has {have}")]
    TooFewClasses {
        /// Ways asked for.
        ways: usize,
        /// Classes in the split.
        have: usize,
    },
    /// A class has fewer images than shots plus queries.
    #[error(
        "class {class:?} has {have} images; {shots}-shot episodes with {queries} queries need \
         {} per class",
        shots + queries
    )]
    TooFewImages {
        /// The class.
        class: String,
        /// Its images.
        have: usize,
        /// Shots asked for.
        shots: usize,
        /// Queries asked for.
        queries: usize,
    },
    /// Class names and classes differ in number.
    #[error("{names} class names for {classes} classes")]
    Names {
        /// Names given.
        names: usize,
        /// Classes.
        classes: usize,
    },
}

/// Draws `count` episodes from the classes of a split (`members[c]`: the image indices of class
/// `c`, named `names[c]`). Episode `i` depends only on `seed` and `i`, so a run with more
/// episodes starts with the same ones. Every class must have K + Q images: a class that cannot
/// fill an episode is an error that names it, not a class quietly left out.
pub fn sample_episodes(
    members: &[Vec<usize>],
    names: &[String],
    spec: EpisodeSpec,
    count: usize,
    seed: u64,
) -> Result<Vec<Episode>, EpisodeError> {
    if spec.ways == 0 || spec.shots == 0 || spec.queries == 0 {
        return Err(EpisodeError::EmptySpec(spec));
    }
    if names.len() != members.len() {
        return Err(EpisodeError::Names {
            names: names.len(),
            classes: members.len(),
        });
    }
    if members.len() < spec.ways {
        return Err(EpisodeError::TooFewClasses {
            ways: spec.ways,
            have: members.len(),
        });
    }
    let need = spec.shots + spec.queries;
    if let Some((c, m)) = members.iter().enumerate().find(|(_, m)| m.len() < need) {
        return Err(EpisodeError::TooFewImages {
            class: names[c].clone(),
            have: m.len(),
            shots: spec.shots,
            queries: spec.queries,
        });
    }
    Ok((0..count)
        .map(|i| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            rng.set_stream(i as u64);
            let classes = draw(&mut rng, members.len(), spec.ways);
            let (mut support, mut queries) = (Vec::new(), Vec::new());
            for &c in &classes {
                let picked: Vec<usize> = draw(&mut rng, members[c].len(), need)
                    .into_iter()
                    .map(|j| members[c][j])
                    .collect();
                support.push(picked[..spec.shots].to_vec());
                queries.push(picked[spec.shots..].to_vec());
            }
            Episode {
                classes,
                support,
                queries,
            }
        })
        .collect())
}

/// `k` distinct numbers below `n`, in drawing order (a partial Fisher–Yates shuffle).
fn draw(rng: &mut ChaCha8Rng, n: usize, k: usize) -> Vec<usize> {
    let mut pool: Vec<usize> = (0..n).collect();
    for i in 0..k.min(n) {
        // Modulo bias is below 2⁻⁴⁰ for any split size that fits in memory.
        let j = i + (rng.next_u64() % (n - i) as u64) as usize;
        pool.swap(i, j);
    }
    pool.truncate(k.min(n));
    pool
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(classes: usize, per_class: usize) -> (Vec<Vec<usize>>, Vec<String>) {
        let members = (0..classes)
            .map(|c| (c * per_class..(c + 1) * per_class).collect())
            .collect();
        let names = (0..classes).map(|c| format!("class{c}")).collect();
        (members, names)
    }

    #[test]
    fn episodes_are_seeded_disjoint_and_prefix_stable() {
        let (members, names) = split(8, 30);
        let spec = EpisodeSpec {
            ways: 5,
            shots: 5,
            queries: 16,
        };
        let a = sample_episodes(&members, &names, spec, 20, 1).unwrap();
        let b = sample_episodes(&members, &names, spec, 40, 1).unwrap();
        assert_eq!(a[..], b[..20]);
        assert_ne!(a, sample_episodes(&members, &names, spec, 20, 2).unwrap());
        for e in &a {
            let mut classes = e.classes.clone();
            classes.sort_unstable();
            classes.dedup();
            assert_eq!(classes.len(), 5);
            for (way, &c) in e.classes.iter().enumerate() {
                assert_eq!(e.support[way].len(), 5);
                assert_eq!(e.queries[way].len(), 16);
                let mut all: Vec<usize> = e.support[way]
                    .iter()
                    .chain(&e.queries[way])
                    .copied()
                    .collect();
                assert!(all.iter().all(|i| members[c].contains(i)));
                all.sort_unstable();
                all.dedup();
                assert_eq!(all.len(), 21, "support and queries overlap");
            }
        }
        // Over many episodes every class is drawn.
        let drawn: std::collections::BTreeSet<usize> =
            b.iter().flat_map(|e| e.classes.iter().copied()).collect();
        assert_eq!(drawn.len(), 8);
    }

    #[test]
    fn a_split_too_small_is_an_error_naming_the_class() {
        let (mut members, names) = split(6, 21);
        let spec = EpisodeSpec {
            ways: 5,
            shots: 5,
            queries: 16,
        };
        members[3].pop();
        let e = sample_episodes(&members, &names, spec, 1, 0).unwrap_err();
        assert_eq!(
            e.to_string(),
            "class \"class3\" has 20 images; 5-shot episodes with 16 queries need 21 per class"
        );
        let (members, names) = split(4, 30);
        assert_eq!(
            sample_episodes(&members, &names, spec, 1, 0).unwrap_err(),
            EpisodeError::TooFewClasses { ways: 5, have: 4 }
        );
    }
}
