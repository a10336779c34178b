//! [`Shard`]: which part of a plan one task owns, from `--shard I/N` or the scheduler's variables.

use std::fmt;

use crate::cache::CacheKey;

/// Why a shard cannot be determined.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ShardError {
    /// Not `I/N`.
    #[error("shard {0:?} is not I/N with 0 ≤ I < N (e.g. 3/16)")]
    Malformed(String),
    /// A scheduler's variable holds no index.
    #[error("{variable}={value:?} is not a shard index")]
    BadVariable {
        /// The variable.
        variable: String,
        /// Its value.
        value: String,
    },
    /// No shard given and no array-job variable set.
    #[error(
        "no shard: give --shard I/N, or run as a Slurm array task (SLURM_ARRAY_TASK_ID) or a \
         Kubernetes Indexed Job (JOB_COMPLETION_INDEX) with the shard count"
    )]
    Missing,
    /// An index without a count.
    #[error("the shard count is missing: give --shards N or set SLURM_ARRAY_TASK_COUNT")]
    MissingCount,
    /// An index not below the count.
    #[error("shard index {index} is not below the shard count {count}")]
    OutOfRange {
        /// The index.
        index: u32,
        /// The count.
        count: u32,
    },
    /// A count of 0 or above the limit.
    #[error("the shard count must be between 1 and {MAX_SHARDS}, not {0}")]
    Count(u32),
}

/// Most shards a plan may be split into. Status keeps a row per shard, so the count sizes memory;
/// 65 536 tasks is past any array job a scheduler accepts (Slurm's default MaxArraySize is 1001).
pub const MAX_SHARDS: u32 = 65_536;

/// Task `index` of `count`: owns the keys whose [`CacheKey::shard`] is `index`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Shard {
    /// This shard, from 0.
    pub index: u32,
    /// Shards in all.
    pub count: u32,
}

impl Shard {
    /// The whole plan as one shard.
    pub const ALL: Shard = Shard { index: 0, count: 1 };

    /// Shard `index` of `count`.
    pub fn new(index: u32, count: u32) -> Result<Self, ShardError> {
        check_count(count)?;
        if index >= count {
            return Err(ShardError::OutOfRange { index, count });
        }
        Ok(Shard { index, count })
    }

    /// Parses `I/N`.
    pub fn parse(s: &str) -> Result<Self, ShardError> {
        let malformed = || ShardError::Malformed(s.to_string());
        let (i, n) = s.trim().split_once('/').ok_or_else(malformed)?;
        let index = i.trim().parse().map_err(|_| malformed())?;
        let count = n.trim().parse().map_err(|_| malformed())?;
        Shard::new(index, count).map_err(|_| malformed())
    }

    /// The shard of this task: `flag` (`I/N`) if given; else the index from
    /// `SLURM_ARRAY_TASK_ID` or `JOB_COMPLETION_INDEX` and the count from `count` or
    /// `SLURM_ARRAY_TASK_COUNT`. `env` reads a variable (`std::env::var` in the binary).
    pub fn resolve(
        flag: Option<&str>,
        count: Option<u32>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ShardError> {
        if let Some(flag) = flag {
            return Shard::parse(flag);
        }
        let parse = |variable: &str| -> Result<Option<u32>, ShardError> {
            env(variable)
                .map(|value| {
                    value.trim().parse().map_err(|_| ShardError::BadVariable {
                        variable: variable.to_string(),
                        value,
                    })
                })
                .transpose()
        };
        let index = match parse("SLURM_ARRAY_TASK_ID")? {
            Some(i) => i,
            None => parse("JOB_COMPLETION_INDEX")?.ok_or(ShardError::Missing)?,
        };
        let count = match count {
            Some(n) => n,
            None => parse("SLURM_ARRAY_TASK_COUNT")?.ok_or(ShardError::MissingCount)?,
        };
        Shard::new(index, count)
    }

    /// Whether `key` is this shard's to generate (a hash of the key, so shards are even).
    pub fn owns(&self, key: &CacheKey) -> bool {
        key.shard(self.count) == self.index
    }
}

/// `count` if it is a usable shard count (1 ..= [`MAX_SHARDS`]).
pub fn check_count(count: u32) -> Result<u32, ShardError> {
    if count == 0 || count > MAX_SHARDS {
        return Err(ShardError::Count(count));
    }
    Ok(count)
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn parses_flags() {
        assert_eq!(
            Shard::parse("3/16").unwrap(),
            Shard {
                index: 3,
                count: 16
            }
        );
        assert_eq!(Shard::parse(" 0 / 1 ").unwrap(), Shard::ALL);
        for bad in [
            "16/16",
            "1/0",
            "a/2",
            "3",
            "-1/4",
            "",
            "0/4294967295",
            "0/65537",
        ] {
            assert!(Shard::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn shard_counts_are_bounded() {
        assert_eq!(check_count(MAX_SHARDS), Ok(MAX_SHARDS));
        assert_eq!(check_count(0), Err(ShardError::Count(0)));
        assert_eq!(check_count(u32::MAX), Err(ShardError::Count(u32::MAX)));
        assert_eq!(
            Shard::new(0, MAX_SHARDS + 1),
            Err(ShardError::Count(MAX_SHARDS + 1))
        );
        assert_eq!(
            Shard::resolve(None, Some(0), env(&[("SLURM_ARRAY_TASK_ID", "0")])),
            Err(ShardError::Count(0))
        );
    }

    #[test]
    fn resolves_from_slurm_and_kubernetes() {
        let slurm = env(&[
            ("SLURM_ARRAY_TASK_ID", "2"),
            ("SLURM_ARRAY_TASK_COUNT", "8"),
        ]);
        assert_eq!(
            Shard::resolve(None, None, &slurm).unwrap(),
            Shard::new(2, 8).unwrap()
        );
        // The flag wins over the environment; an explicit count wins over Slurm's.
        assert_eq!(
            Shard::resolve(Some("1/3"), None, &slurm).unwrap(),
            Shard::new(1, 3).unwrap()
        );
        assert_eq!(
            Shard::resolve(None, Some(4), &slurm).unwrap(),
            Shard::new(2, 4).unwrap()
        );
        let k8s = env(&[("JOB_COMPLETION_INDEX", "5")]);
        assert_eq!(
            Shard::resolve(None, Some(6), &k8s).unwrap(),
            Shard::new(5, 6).unwrap()
        );
        assert_eq!(
            Shard::resolve(None, None, &k8s),
            Err(ShardError::MissingCount)
        );
        assert_eq!(
            Shard::resolve(None, None, env(&[])),
            Err(ShardError::Missing)
        );
        assert!(matches!(
            Shard::resolve(None, Some(2), env(&[("JOB_COMPLETION_INDEX", "x")])),
            Err(ShardError::BadVariable { .. })
        ));
        assert_eq!(
            Shard::resolve(None, Some(2), &k8s),
            Err(ShardError::OutOfRange { index: 5, count: 2 })
        );
    }
}
