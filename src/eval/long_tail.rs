//! The long-tail protocol's report (the paper's Table 3): accuracy on a balanced test set per
//! group of classes (Many / Medium / Few by training images), overall and balanced, one row per
//! method.

use std::fmt::Write as _;

use crate::policy::Group;

/// One method's accuracies (%), `NaN` for a group without classes or test images.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupAccuracy {
    /// The method's name.
    pub method: String,
    /// Accuracy (%) on the Many classes.
    pub many: f64,
    /// On the Medium classes.
    pub medium: f64,
    /// On the Few classes.
    pub few: f64,
    /// Over every test item.
    pub overall: f64,
    /// The mean of the per-class accuracies (each class weighs alike).
    pub balanced: f64,
}

impl GroupAccuracy {
    /// From `per_class[c] = (right, total)` on the test set and each class's group.
    pub fn of(method: impl Into<String>, per_class: &[(usize, usize)], groups: &[Group]) -> Self {
        let ratio = |right: usize, total: usize| {
            if total == 0 {
                f64::NAN
            } else {
                100.0 * right as f64 / total as f64
            }
        };
        let group = |g: Group| {
            let (right, total) = per_class
                .iter()
                .zip(groups)
                .filter(|(_, &cg)| cg == g)
                .fold((0, 0), |(r, t), (&(cr, ct), _)| (r + cr, t + ct));
            ratio(right, total)
        };
        let (right, total) = per_class
            .iter()
            .fold((0, 0), |(r, t), &(cr, ct)| (r + cr, t + ct));
        let classes: Vec<f64> = per_class
            .iter()
            .filter(|&&(_, t)| t > 0)
            .map(|&(r, t)| ratio(r, t))
            .collect();
        GroupAccuracy {
            method: method.into(),
            many: group(Group::Many),
            medium: group(Group::Medium),
            few: group(Group::Few),
            overall: ratio(right, total),
            balanced: if classes.is_empty() {
                f64::NAN
            } else {
                classes.iter().sum::<f64>() / classes.len() as f64
            },
        }
    }

    /// The five accuracies, each written by `cell` (`missing` for a `NaN`).
    fn cells(&self, missing: &str, cell: impl Fn(f64) -> String) -> Vec<String> {
        [
            self.many,
            self.medium,
            self.few,
            self.overall,
            self.balanced,
        ]
        .iter()
        .map(|&v| {
            if v.is_nan() {
                missing.to_string()
            } else {
                cell(v)
            }
        })
        .collect()
    }
}

/// The rows as a Markdown table; `-` for a group without classes.
pub fn long_tail_markdown(rows: &[GroupAccuracy]) -> String {
    let mut out = String::from(
        "| method | Many (%) | Medium (%) | Few (%) | Overall (%) | Balanced (%) |\n\
         | --- | --- | --- | --- | --- | --- |\n",
    );
    for row in rows {
        let cells = row.cells("-", |v| format!("{v:.2}"));
        let _ = writeln!(out, "| {} | {} |", row.method, cells.join(" | "));
    }
    out
}

/// The rows as CSV: `method,many,medium,few,overall,balanced` (empty for a group without
/// classes).
pub fn long_tail_csv(rows: &[GroupAccuracy]) -> String {
    let mut out = String::from("method,many,medium,few,overall,balanced\n");
    for row in rows {
        let cells = row.cells("", |v| format!("{v:.4}"));
        let _ = writeln!(out, "{},{}", row.method, cells.join(","));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_overall_and_balanced_add_up() {
        // Class 0 (Many): 9/10; class 1 (Few): 1/10; class 2 (Few): 0 test items.
        let row = GroupAccuracy::of(
            "m",
            &[(9, 10), (1, 10), (0, 0)],
            &[Group::Many, Group::Few, Group::Few],
        );
        assert_eq!(row.many, 90.0);
        assert_eq!(row.few, 10.0);
        assert!(row.medium.is_nan());
        assert_eq!(row.overall, 50.0);
        assert_eq!(row.balanced, 50.0);
        let md = long_tail_markdown(std::slice::from_ref(&row));
        assert!(
            md.contains("| m | 90.00 | - | 10.00 | 50.00 | 50.00 |"),
            "{md}"
        );
        let csv = long_tail_csv(&[row]);
        assert!(
            csv.ends_with("m,90.0000,,10.0000,50.0000,50.0000\n"),
            "{csv}"
        );
    }

    #[test]
    fn balanced_weighs_classes_alike() {
        // 99/100 on a big class and 0/1 on a small one: overall 98 %, balanced 49.5 %.
        let row = GroupAccuracy::of("m", &[(99, 100), (0, 1)], &[Group::Many, Group::Few]);
        assert!((row.overall - 9900.0 / 101.0).abs() < 1e-9);
        assert_eq!(row.balanced, 49.5);
    }
}
