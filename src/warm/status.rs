//! How far a sharded pre-warm has got: per shard, what is cached and what is missing, and the
//! done markers that finished shards leave next to the plan.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::cache::CacheKey;

use super::plan::PlanEntry;
use super::shard::Shard;

/// One shard's progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct ShardProgress {
    /// The shard, from 0.
    pub index: u32,
    /// Shards in all.
    pub count: u32,
    /// Entries the shard owns.
    pub planned: usize,
    /// Of those, entries in the cache.
    pub cached: usize,
    /// The shard's task finished and wrote its done marker.
    pub marked_done: bool,
}

impl ShardProgress {
    /// Which shard.
    pub fn shard(&self) -> Shard {
        Shard {
            index: self.index,
            count: self.count,
        }
    }

    /// Entries still to generate.
    pub fn missing(&self) -> usize {
        self.planned - self.cached
    }

    /// Everything planned is cached. (A marker alone is not enough: gc may have removed entries
    /// since the task finished.)
    pub fn is_complete(&self) -> bool {
        self.missing() == 0
    }
}

/// Every shard's progress, in shard order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WarmStatus {
    /// One per shard.
    pub shards: Vec<ShardProgress>,
}

impl WarmStatus {
    /// Entries planned, all shards.
    pub fn planned(&self) -> usize {
        self.shards.iter().map(|s| s.planned).sum()
    }

    /// Entries cached, all shards.
    pub fn cached(&self) -> usize {
        self.shards.iter().map(|s| s.cached).sum()
    }

    /// Whether every planned entry is cached.
    pub fn is_complete(&self) -> bool {
        self.shards.iter().all(ShardProgress::is_complete)
    }

    /// Shards with something missing: the ones to resubmit.
    pub fn incomplete(&self) -> Vec<Shard> {
        self.shards
            .iter()
            .filter(|s| !s.is_complete())
            .map(ShardProgress::shard)
            .collect()
    }
}

/// The progress of a plan split in `count` shards, asking `is_cached` about every key. `count`
/// sizes a row per shard: check a count from outside with [`check_count`](super::check_count).
pub fn warm_status<E>(
    entries: &[PlanEntry],
    count: u32,
    done: &[Shard],
    mut is_cached: impl FnMut(&CacheKey) -> Result<bool, E>,
) -> Result<WarmStatus, E> {
    let count = count.max(1);
    let mut shards: Vec<ShardProgress> = (0..count)
        .map(|index| ShardProgress {
            index,
            count,
            planned: 0,
            cached: 0,
            marked_done: done.contains(&Shard { index, count }),
        })
        .collect();
    for entry in entries {
        let shard = &mut shards[entry.key.shard(count) as usize];
        shard.planned += 1;
        if is_cached(&entry.key)? {
            shard.cached += 1;
        }
    }
    Ok(WarmStatus { shards })
}

/// The marker a finished shard leaves next to its plan: `<plan>.done/<I>-of-<N>`.
pub fn done_marker(plan: &Path, shard: Shard) -> PathBuf {
    done_dir(plan).join(format!("{}-of-{}", shard.index, shard.count))
}

/// The shards whose markers are next to `plan` (files named otherwise are ignored).
pub fn done_markers(plan: &Path) -> Vec<Shard> {
    let Ok(dir) = std::fs::read_dir(done_dir(plan)) else {
        return Vec::new();
    };
    let mut shards: Vec<Shard> = dir
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name();
            let (i, n) = name.to_str()?.split_once("-of-")?;
            Shard::new(i.parse().ok()?, n.parse().ok()?).ok()
        })
        .collect();
    shards.sort_by_key(|s| (s.count, s.index));
    shards
}

/// The shard count of the latest run, as the markers tell it: the count most markers share
/// (ties to the larger), `None` without markers.
pub fn marker_shard_count(markers: &[Shard]) -> Option<u32> {
    let mut counts: Vec<(usize, u32)> = Vec::new();
    for m in markers {
        match counts.iter_mut().find(|(_, c)| *c == m.count) {
            Some((n, _)) => *n += 1,
            None => counts.push((1, m.count)),
        }
    }
    counts.into_iter().max().map(|(_, c)| c)
}

/// Where a shard lists the planned sources it could not read: `<plan>.done/skipped-<I>-of-<N>`
/// (tab-separated path, entries, reason), so `warm status` can say why entries stay missing.
pub fn skipped_report(plan: &Path, shard: Shard) -> PathBuf {
    done_dir(plan).join(format!("skipped-{}-of-{}", shard.index, shard.count))
}

/// The skipped-source reports of shards of `count`, with how many entries each holds back.
pub fn skipped_reports(plan: &Path, count: u32) -> Vec<(PathBuf, usize)> {
    let Ok(dir) = std::fs::read_dir(done_dir(plan)) else {
        return Vec::new();
    };
    let suffix = format!("-of-{count}");
    let mut reports: Vec<(PathBuf, usize)> = dir
        .filter_map(Result::ok)
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.starts_with("skipped-") && name.ends_with(&suffix)
        })
        .map(|e| {
            let entries = crate::safe_open::read_to_string(&e.path())
                .unwrap_or_default()
                .lines()
                .filter_map(|l| l.split('\t').nth(1)?.parse::<usize>().ok())
                .sum();
            (e.path(), entries)
        })
        .collect();
    reports.sort();
    reports
}

fn done_dir(plan: &Path) -> PathBuf {
    let mut dir = plan.as_os_str().to_owned();
    dir.push(".done");
    PathBuf::from(dir)
}

/// Shard indices as a Slurm `--array` list, ranges folded: `0-2,5,7-8`.
pub fn slurm_array_list(shards: &[Shard]) -> String {
    let mut indices: Vec<u32> = shards.iter().map(|s| s.index).collect();
    indices.sort_unstable();
    indices.dedup();
    let mut parts = Vec::new();
    let mut i = 0;
    while i < indices.len() {
        let start = indices[i];
        while i + 1 < indices.len() && indices[i + 1] == indices[i] + 1 {
            i += 1;
        }
        parts.push(if indices[i] == start {
            start.to_string()
        } else {
            format!("{start}-{}", indices[i])
        });
        i += 1;
    }
    parts.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::NoiseLevel;

    fn entry(n: u8) -> PlanEntry {
        PlanEntry {
            key: CacheKey::from_bytes([n; 32]),
            source: PathBuf::from(format!("{n}.png")),
            source_class: "a".into(),
            target: "b".into(),
            prompt: "a photo of a b.".into(),
            r: NoiseLevel::GENIE_DEFAULT,
            seed: 0,
            variant: 0,
            source_hash: [n; 32],
        }
    }

    #[test]
    fn counts_per_shard_and_lists_the_incomplete_ones() {
        let entries: Vec<PlanEntry> = (0..40).map(entry).collect();
        let cached = |k: &CacheKey| Ok::<_, ()>(k.as_bytes()[0] % 2 == 0);
        let status = warm_status(&entries, 3, &[Shard::new(1, 3).unwrap()], cached).unwrap();
        assert_eq!(status.planned(), 40);
        assert_eq!(status.cached(), 20);
        assert_eq!(status.shards.iter().map(|s| s.planned).sum::<usize>(), 40);
        for s in &status.shards {
            let mine: Vec<_> = entries.iter().filter(|e| s.shard().owns(&e.key)).collect();
            assert_eq!(s.planned, mine.len());
            let cached = mine.iter().filter(|e| e.key.as_bytes()[0] % 2 == 0).count();
            assert_eq!(s.cached, cached);
            assert_eq!(s.marked_done, s.index == 1);
        }
        assert!(!status.is_complete());
        let all = warm_status(&entries, 3, &[], |_| Ok::<_, ()>(true)).unwrap();
        assert!(all.is_complete() && all.incomplete().is_empty());
    }

    #[test]
    fn markers_round_trip_and_junk_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let plan = dir.path().join("plan.jsonl");
        for shard in [Shard::new(2, 4).unwrap(), Shard::new(0, 4).unwrap()] {
            let marker = done_marker(&plan, shard);
            std::fs::create_dir_all(marker.parent().unwrap()).unwrap();
            std::fs::write(marker, "x").unwrap();
        }
        std::fs::write(dir.path().join("plan.jsonl.done/notes.txt"), "x").unwrap();
        std::fs::write(dir.path().join("plan.jsonl.done/9-of-4"), "x").unwrap();
        let markers = done_markers(&plan);
        assert_eq!(
            markers,
            vec![Shard::new(0, 4).unwrap(), Shard::new(2, 4).unwrap()]
        );
        assert_eq!(marker_shard_count(&markers), Some(4));
        assert_eq!(marker_shard_count(&[]), None);
    }

    #[test]
    fn slurm_lists_fold_ranges() {
        let shards: Vec<Shard> = [0, 1, 2, 5, 7, 8]
            .iter()
            .map(|&i| Shard::new(i, 10).unwrap())
            .collect();
        assert_eq!(slurm_array_list(&shards), "0-2,5,7-8");
        assert_eq!(slurm_array_list(&shards[3..4]), "5");
        assert_eq!(slurm_array_list(&[]), "");
    }
}
