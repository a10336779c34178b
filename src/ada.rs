//! GeNIe-Ada (the paper's Algorithm 1): choose the noise level r* for one (source, target) pair
//! from classifier embeddings of the images generated at each level.
//!
//! The classifier sees the source image (Z_S), the target class's real images (whose mean is the
//! prototype Z_T) and one generated image per level (Z_m). Each embedding is L2-normalised, then
//! projected onto the line from Z_S to Z_T:
//!
//! ```text
//! d_m = (Z_m − Z_S) · (Z_T − Z_S) / ‖Z_T − Z_S‖
//! m*  = argmax_{m ≥ 2} |d_m − d_{m−1}|     (first maximum on ties)
//! r*  = levels[m*]                           (the level just after the largest jump)
//! ```
//!
//! so the lowest level is never chosen. Everything here is plain arithmetic in `f64`; the burn
//! side ([`crate::loader`]) only produces the embeddings.

use crate::engine::NoiseLevel;

/// Why a pair cannot be scored. None of these is a bug in the caller's data flow; the selector
/// keeps the fixed level for such pairs.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum AdaError {
    /// Fewer than two levels: there is no jump to find.
    #[error("GeNIe-Ada needs at least two noise levels, got {0}")]
    TooFewLevels(usize),
    /// Levels not strictly increasing (the later, then the earlier).
    #[error("noise levels must be strictly increasing, got {0} after {1}")]
    UnsortedLevels(NoiseLevel, NoiseLevel),
    /// Levels and generated-image embeddings differ in number.
    #[error("{levels} noise levels but {embeddings} generated-image embeddings")]
    LevelCountMismatch {
        /// Levels.
        levels: usize,
        /// Embeddings.
        embeddings: usize,
    },
    /// Embeddings of different dimensions.
    #[error("{what} has dimension {got}, expected {expected}")]
    DimensionMismatch {
        /// Which embedding.
        what: &'static str,
        /// Its dimension.
        got: usize,
        /// The source embedding's.
        expected: usize,
    },
    /// An empty embedding or set.
    #[error("{what} is empty")]
    Empty {
        /// Which.
        what: &'static str,
    },
    /// An embedding holds NaN or infinity.
    #[error("{what} contains NaN or infinite values")]
    NonFinite {
        /// Which.
        what: &'static str,
    },
    /// A zero embedding cannot be normalised.
    #[error("{what} is the zero vector and cannot be L2-normalised")]
    ZeroVector {
        /// Which.
        what: &'static str,
    },
    /// The prototype is (numerically) the source: no line to project on.
    #[error(
        "the target prototype equals the source embedding (distance {distance:.3e}): \
         there is no direction to project on"
    )]
    DegenerateDirection {
        /// Their distance.
        distance: f64,
    },
}

/// The outcome of Algorithm 1 for one pair.
#[derive(Debug, Clone, PartialEq)]
pub struct AdaChoice {
    /// The chosen level r*.
    pub level: NoiseLevel,
    /// Its index m* into the levels (never 0).
    pub index: usize,
    /// d_m for every level, in level order: the semantic trajectory, for plots and reports.
    pub curve: Vec<f64>,
}

/// Below this distance between Z_S and Z_T (on unit vectors) the projection direction is noise.
const MIN_DIRECTION_NORM: f64 = 1e-9;

/// Returns `v / ‖v‖` in `f64`, refusing non-finite and zero vectors.
pub fn l2_normalised(v: &[f32], what: &'static str) -> Result<Vec<f64>, AdaError> {
    if v.is_empty() {
        return Err(AdaError::Empty { what });
    }
    if v.iter().any(|x| !x.is_finite()) {
        return Err(AdaError::NonFinite { what });
    }
    let norm = v
        .iter()
        .map(|&x| f64::from(x) * f64::from(x))
        .sum::<f64>()
        .sqrt();
    if norm == 0.0 || !norm.is_finite() {
        return Err(AdaError::ZeroVector { what });
    }
    Ok(v.iter().map(|&x| f64::from(x) / norm).collect())
}

/// The target prototype Z_T: the mean of the L2-normalised embeddings of the target's real
/// images (as the official notebook does it; the mean itself is not re-normalised).
pub fn prototype<E: AsRef<[f32]>>(embeddings: &[E]) -> Result<Vec<f64>, AdaError> {
    let first = embeddings.first().ok_or(AdaError::Empty {
        what: "the target class's embeddings",
    })?;
    let dim = first.as_ref().len();
    let mut sum = vec![0.0f64; dim];
    for e in embeddings {
        let e = e.as_ref();
        if e.len() != dim {
            return Err(AdaError::DimensionMismatch {
                what: "a target-class embedding",
                got: e.len(),
                expected: dim,
            });
        }
        for (s, x) in sum
            .iter_mut()
            .zip(l2_normalised(e, "a target-class embedding")?)
        {
            *s += x;
        }
    }
    let n = embeddings.len() as f64;
    Ok(sum.into_iter().map(|s| s / n).collect())
}

/// Runs Algorithm 1: `levels[m]` produced the image whose embedding is `generated[m]`;
/// `source` is the source image's embedding and `prototype` comes from [`prototype`].
pub fn select<E: AsRef<[f32]>>(
    levels: &[NoiseLevel],
    source: &[f32],
    prototype: &[f64],
    generated: &[E],
) -> Result<AdaChoice, AdaError> {
    if levels.len() < 2 {
        return Err(AdaError::TooFewLevels(levels.len()));
    }
    if let Some(w) = levels.windows(2).find(|w| w[1] <= w[0]) {
        return Err(AdaError::UnsortedLevels(w[1], w[0]));
    }
    if generated.len() != levels.len() {
        return Err(AdaError::LevelCountMismatch {
            levels: levels.len(),
            embeddings: generated.len(),
        });
    }
    let z_s = l2_normalised(source, "the source embedding")?;
    if prototype.len() != z_s.len() {
        return Err(AdaError::DimensionMismatch {
            what: "the target prototype",
            got: prototype.len(),
            expected: z_s.len(),
        });
    }
    if prototype.iter().any(|x| !x.is_finite()) {
        return Err(AdaError::NonFinite {
            what: "the target prototype",
        });
    }
    let direction: Vec<f64> = prototype.iter().zip(&z_s).map(|(t, s)| t - s).collect();
    let distance = direction.iter().map(|d| d * d).sum::<f64>().sqrt();
    if distance < MIN_DIRECTION_NORM {
        return Err(AdaError::DegenerateDirection { distance });
    }

    let mut curve = Vec::with_capacity(levels.len());
    for g in generated {
        let g = g.as_ref();
        if g.len() != z_s.len() {
            return Err(AdaError::DimensionMismatch {
                what: "a generated-image embedding",
                got: g.len(),
                expected: z_s.len(),
            });
        }
        let z_m = l2_normalised(g, "a generated-image embedding")?;
        let along: f64 = z_m
            .iter()
            .zip(&z_s)
            .zip(&direction)
            .map(|((m, s), d)| (m - s) * d)
            .sum();
        curve.push(along / distance);
    }

    // Strictly greater keeps the first maximum on ties.
    let mut index = 1;
    let mut largest = (curve[1] - curve[0]).abs();
    for m in 2..curve.len() {
        let jump = (curve[m] - curve[m - 1]).abs();
        if jump > largest {
            largest = jump;
            index = m;
        }
    }
    Ok(AdaChoice {
        level: levels[index],
        index,
        curve,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sweep() -> Vec<NoiseLevel> {
        NoiseLevel::ADA_SWEEP.to_vec()
    }

    #[test]
    fn picks_the_level_just_after_the_largest_jump() {
        // Z_S = e0, Z_T = e1; the images cross over between r = 0.6 and r = 0.7.
        let source = [1.0f32, 0.0];
        let proto = prototype(&[[0.0f32, 1.0]]).unwrap();
        let generated = [
            [1.0f32, 0.05],
            [1.0, 0.1],
            [0.2, 1.0],
            [0.1, 1.0],
            [0.0, 1.0],
        ];
        let choice = select(&sweep(), &source, &proto, &generated).unwrap();
        assert_eq!(choice.index, 2);
        assert_eq!(choice.level.thousandths(), 700);
        assert_eq!(choice.curve.len(), 5);
        assert!(choice.curve.windows(2).all(|w| w[1] >= w[0]));
    }

    #[test]
    fn first_maximum_wins_ties_and_lowest_level_is_never_chosen() {
        let source = [1.0f32, 0.0];
        let proto = prototype(&[[0.0f32, 1.0]]).unwrap();
        // All images identical: every jump is 0, so the first candidate (index 1) wins.
        let same = [[1.0f32, 1.0]; 5];
        assert_eq!(select(&sweep(), &source, &proto, &same).unwrap().index, 1);
    }

    #[test]
    fn degenerate_inputs_are_typed_errors() {
        let s = [1.0f32, 0.0];
        let p = prototype(&[[0.0f32, 1.0]]).unwrap();
        let g = [[1.0f32, 0.0]; 5];
        assert_eq!(
            select(&sweep()[..1], &s, &p, &g[..1]),
            Err(AdaError::TooFewLevels(1))
        );
        let same_as_source = prototype(&[[2.0f32, 0.0]]).unwrap();
        assert!(matches!(
            select(&sweep(), &s, &same_as_source, &g),
            Err(AdaError::DegenerateDirection { .. })
        ));
        assert!(matches!(
            select(&sweep(), &[f32::NAN, 0.0], &p, &g),
            Err(AdaError::NonFinite { .. })
        ));
        assert!(matches!(
            select(&sweep(), &[0.0, 0.0], &p, &g),
            Err(AdaError::ZeroVector { .. })
        ));
        assert!(matches!(
            select(&sweep(), &s, &p, &g[..4]),
            Err(AdaError::LevelCountMismatch { .. })
        ));
        assert!(matches!(
            select(&sweep(), &s, &p, &[[1.0f32, 0.0, 0.0]; 5]),
            Err(AdaError::DimensionMismatch { .. })
        ));
        let mut backwards = sweep();
        backwards.reverse();
        assert!(matches!(
            select(&backwards, &s, &p, &g),
            Err(AdaError::UnsortedLevels(..))
        ));
        assert!(matches!(
            prototype::<[f32; 2]>(&[]),
            Err(AdaError::Empty { .. })
        ));
        assert!(matches!(
            prototype(&[vec![1.0f32, 0.0], vec![1.0]]),
            Err(AdaError::DimensionMismatch { .. })
        ));
    }

    #[test]
    fn embeddings_are_scale_invariant() {
        let s = [3.0f32, 0.5];
        let p = prototype(&[[0.1f32, 2.0], [0.0, 5.0]]).unwrap();
        let g = [
            [1.0f32, 0.1],
            [1.0, 0.3],
            [1.0, 0.9],
            [0.5, 1.0],
            [0.0, 1.0],
        ];
        let scaled: Vec<Vec<f32>> = g.iter().map(|v| vec![v[0] * 7.0, v[1] * 7.0]).collect();
        let a = select(&sweep(), &s, &p, &g).unwrap();
        let b = select(&sweep(), &[s[0] * 0.1, s[1] * 0.1], &p, &scaled).unwrap();
        assert_eq!(a.index, b.index);
        for (x, y) in a.curve.iter().zip(&b.curve) {
            assert!((x - y).abs() < 1e-6);
        }
    }
}
