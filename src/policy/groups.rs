//! Class statistics: frequency groups (Many / Medium / Few) from a dataset's labels, and the
//! running per-class counts of what the batches held.

use std::fmt;

/// A class's frequency group, as the long-tail literature (and the paper) splits them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Group {
    /// More than `many_above` training images.
    Many,
    /// Between the two thresholds, inclusive.
    Medium,
    /// Fewer than `few_below` training images: the classes GeNIe augments in long-tail mode.
    Few,
}

impl Group {
    /// Every group, from head to tail.
    pub const ALL: [Group; 3] = [Group::Many, Group::Medium, Group::Few];
}

impl fmt::Display for Group {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Group::Many => "Many",
            Group::Medium => "Medium",
            Group::Few => "Few",
        })
    }
}

/// Group boundaries; the paper's are Few < 20, Medium 20–100, Many > 100.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupThresholds {
    /// Classes with fewer images are Few.
    pub few_below: usize,
    /// Classes with more images are Many.
    pub many_above: usize,
}

impl Default for GroupThresholds {
    fn default() -> Self {
        GroupThresholds {
            few_below: 20,
            many_above: 100,
        }
    }
}

impl GroupThresholds {
    /// The group of a class with `count` images.
    pub fn group(&self, count: usize) -> Group {
        if count < self.few_below {
            Group::Few
        } else if count > self.many_above {
            Group::Many
        } else {
            Group::Medium
        }
    }
}

/// Per-class image counts of a training set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClassStats {
    counts: Vec<usize>,
}

impl ClassStats {
    /// Counts `labels` into `num_classes` classes; a label outside the range is an error that
    /// names it (a silently dropped class would change every group).
    pub fn from_labels(
        labels: impl IntoIterator<Item = usize>,
        num_classes: usize,
    ) -> Result<Self, super::PolicyError> {
        let mut counts = vec![0; num_classes];
        for label in labels {
            let slot = counts
                .get_mut(label)
                .ok_or(super::PolicyError::LabelOutOfRange { label, num_classes })?;
            *slot += 1;
        }
        Ok(ClassStats { counts })
    }

    /// Counts given per class, in class order.
    pub fn from_counts(counts: Vec<usize>) -> Self {
        ClassStats { counts }
    }

    /// Classes.
    pub fn num_classes(&self) -> usize {
        self.counts.len()
    }

    /// Images of `class`.
    pub fn count(&self, class: usize) -> usize {
        self.counts.get(class).copied().unwrap_or(0)
    }

    /// Images per class.
    pub fn counts(&self) -> &[usize] {
        &self.counts
    }

    /// The group of `class`.
    pub fn group(&self, class: usize, thresholds: &GroupThresholds) -> Group {
        thresholds.group(self.count(class))
    }

    /// The classes of `group`, ascending.
    pub fn classes_in(&self, group: Group, thresholds: &GroupThresholds) -> Vec<usize> {
        (0..self.counts.len())
            .filter(|&c| self.group(c, thresholds) == group)
            .collect()
    }
}

/// Running per-class counts of what the batches held, updated by every batch
/// ([`super::Policy::observe`] and [`super::Policy::record_mix`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BatchCounts {
    /// Real items the dataset yielded, per class, before mixing.
    pub seen: Vec<u64>,
    /// Real items given up for hard negatives, per class.
    pub replaced: Vec<u64>,
    /// Hard negatives mixed in, per target class.
    pub mixed: Vec<u64>,
    /// Items whose label is outside the classes: passed through, never used as sources.
    pub unknown_labels: u64,
}

impl BatchCounts {
    /// Zero counts for `num_classes` classes.
    pub fn new(num_classes: usize) -> Self {
        BatchCounts {
            seen: vec![0; num_classes],
            replaced: vec![0; num_classes],
            mixed: vec![0; num_classes],
            unknown_labels: 0,
        }
    }

    /// Real items seen in all classes.
    pub fn seen_total(&self) -> u64 {
        self.seen.iter().sum()
    }

    /// Items of `class` that reached training: real ones kept plus hard negatives labelled
    /// `class`.
    pub fn trained(&self, class: usize) -> u64 {
        let at = |v: &[u64]| v.get(class).copied().unwrap_or(0);
        (at(&self.seen) + at(&self.mixed)).saturating_sub(at(&self.replaced))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paper_thresholds() {
        let t = GroupThresholds::default();
        assert_eq!(t.group(0), Group::Few);
        assert_eq!(t.group(19), Group::Few);
        assert_eq!(t.group(20), Group::Medium);
        assert_eq!(t.group(100), Group::Medium);
        assert_eq!(t.group(101), Group::Many);
    }

    #[test]
    fn counts_and_groups_from_labels() {
        let mut labels = vec![0; 150];
        labels.extend(vec![1; 50]);
        labels.extend(vec![2; 5]);
        let stats = ClassStats::from_labels(labels, 4).unwrap();
        assert_eq!(stats.counts(), &[150, 50, 5, 0]);
        let t = GroupThresholds::default();
        assert_eq!(stats.classes_in(Group::Many, &t), vec![0]);
        assert_eq!(stats.classes_in(Group::Medium, &t), vec![1]);
        assert_eq!(stats.classes_in(Group::Few, &t), vec![2, 3]);
        let custom = GroupThresholds {
            few_below: 6,
            many_above: 60,
        };
        assert_eq!(stats.classes_in(Group::Few, &custom), vec![2, 3]);
        assert_eq!(stats.classes_in(Group::Many, &custom), vec![0]);
    }

    #[test]
    fn out_of_range_label_is_an_error() {
        assert!(matches!(
            ClassStats::from_labels([0, 7], 3),
            Err(crate::policy::PolicyError::LabelOutOfRange { label: 7, .. })
        ));
    }
}
