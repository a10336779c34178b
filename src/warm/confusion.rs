//! Reads a confusion-matrix CSV so that `genie warm plan --sources confusion FILE` can take each
//! target's sources from the classes a trained classifier confuses with it.
//!
//! The file is a square table labelled by class name, rows the true class and columns the
//! predicted one, as most evaluation scripts write it:
//!
//! ```text
//! truth\predicted,cat,dog,fox
//! cat,50,3,1
//! dog,4,40,0
//! fox,9,1,12
//! ```
//!
//! Classes are matched by name to the dataset's folders, in any order. A dataset class missing
//! from the file counts as never confused; a name the dataset does not have is an error (it is
//! almost always a typo or the wrong file).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::policy::ConfusionMatrix;

/// Why a confusion file cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfusionFileError {
    /// The file cannot be read.
    #[error("cannot read confusion matrix {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A line is not a row of the matrix.
    #[error("{path}:{line}: {message}")]
    Bad {
        /// The file.
        path: PathBuf,
        /// Its line (1-based).
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// A class name that is not a class of the dataset.
    #[error(
        "{path}: class {name:?} is not a class of the dataset (its classes are the folder names: {known})"
    )]
    UnknownClass {
        /// The file.
        path: PathBuf,
        /// The name.
        name: String,
        /// The dataset's classes, listed.
        known: String,
    },
}

/// Reads `path` into a matrix over `classes` (the dataset's class names, in label order).
pub fn read_confusion(
    path: &Path,
    classes: &[String],
) -> Result<ConfusionMatrix, ConfusionFileError> {
    let text = crate::safe_open::read_to_string(path).map_err(|source| ConfusionFileError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_confusion(&text, classes).map_err(|e| e.at(path, classes))
}

/// `matrix` as the CSV [`read_confusion`] reads: a header, then one row per true class, named
/// by `classes` (label order). `None` when a class name cannot be a cell of that format (it holds
/// a comma or a line break, starts with `#`, or has surrounding spaces).
pub fn confusion_csv(matrix: &ConfusionMatrix, classes: &[String]) -> Option<String> {
    let writable = |c: &String| {
        !c.is_empty()
            && !c.contains([',', '\n', '\r'])
            && !c.starts_with('#')
            && c.trim() == c.as_str()
    };
    if classes.len() != matrix.num_classes() || !classes.iter().all(writable) {
        return None;
    }
    let mut out = format!("truth\\predicted,{}\n", classes.join(","));
    for (truth, name) in classes.iter().enumerate() {
        out.push_str(name);
        for predicted in 0..classes.len() {
            out.push_str(&format!(",{}", matrix.get(truth, predicted)));
        }
        out.push('\n');
    }
    Some(out)
}

/// A problem found while parsing, before the file's path is known.
#[derive(Debug, PartialEq)]
enum ParseProblem {
    Line(usize, String),
    Unknown(String),
}

impl ParseProblem {
    fn at(self, path: &Path, classes: &[String]) -> ConfusionFileError {
        match self {
            ParseProblem::Line(line, message) => ConfusionFileError::Bad {
                path: path.to_path_buf(),
                line,
                message,
            },
            ParseProblem::Unknown(name) => ConfusionFileError::UnknownClass {
                path: path.to_path_buf(),
                name,
                known: classes.join(", "),
            },
        }
    }
}

fn parse_confusion(text: &str, classes: &[String]) -> Result<ConfusionMatrix, ParseProblem> {
    let index: HashMap<&str, usize> = classes
        .iter()
        .enumerate()
        .map(|(i, c)| (c.as_str(), i))
        .collect();
    let class_of = |name: &str| {
        index
            .get(name)
            .copied()
            .ok_or_else(|| ParseProblem::Unknown(name.to_string()))
    };
    let mut lines = text
        .lines()
        .enumerate()
        .map(|(n, l)| (n + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'));
    let (header_line, header) = lines
        .next()
        .ok_or_else(|| ParseProblem::Line(1, "the file is empty".into()))?;
    let columns = header
        .split(',')
        .skip(1)
        .map(|name| class_of(name.trim()))
        .collect::<Result<Vec<_>, _>>()?;
    if columns.is_empty() {
        return Err(ParseProblem::Line(
            header_line,
            "the header names no predicted classes (expected `truth\\predicted,class,class,…`)"
                .into(),
        ));
    }
    let mut rows = vec![vec![0.0; classes.len()]; classes.len()];
    let mut seen = vec![false; classes.len()];
    for (line, text) in lines {
        let mut cells = text.split(',').map(str::trim);
        let truth = class_of(cells.next().unwrap_or(""))?;
        if std::mem::replace(&mut seen[truth], true) {
            return Err(ParseProblem::Line(
                line,
                format!("a second row for class {:?}", classes[truth]),
            ));
        }
        let counts: Vec<&str> = cells.collect();
        if counts.len() != columns.len() {
            return Err(ParseProblem::Line(
                line,
                format!(
                    "{} counts, the header has {} classes",
                    counts.len(),
                    columns.len()
                ),
            ));
        }
        for (cell, &predicted) in counts.iter().zip(&columns) {
            let count: f64 = cell
                .parse()
                .ok()
                .filter(|c: &f64| c.is_finite() && *c >= 0.0)
                .ok_or_else(|| {
                    ParseProblem::Line(line, format!("{cell:?} is not a count (a number ≥ 0)"))
                })?;
            rows[truth][predicted] = count;
        }
    }
    // Rows were built square from finite, non-negative counts.
    ConfusionMatrix::from_rows(&rows)
        .ok_or_else(|| ParseProblem::Line(header_line, "internal: not a square matrix".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classes() -> Vec<String> {
        ["cat", "dog", "fox"].map(String::from).to_vec()
    }

    #[test]
    fn a_written_matrix_reads_back_and_unwritable_names_are_refused() {
        let matrix = ConfusionMatrix::from_rows(&[
            vec![5.0, 1.0, 0.0],
            vec![2.5, 7.0, 1.0],
            vec![0.0, 3.0, 4.0],
        ])
        .unwrap();
        let text = confusion_csv(&matrix, &classes()).unwrap();
        assert!(text.starts_with("truth\\predicted,cat,dog,fox\n"), "{text}");
        assert_eq!(parse_confusion(&text, &classes()), Ok(matrix.clone()));
        for bad in ["a,b", "#x", " x", ""] {
            let names = vec![bad.to_string(), "dog".into(), "fox".into()];
            assert_eq!(confusion_csv(&matrix, &names), None, "{bad:?}");
        }
        assert_eq!(confusion_csv(&matrix, &classes()[..2]), None);
    }

    #[test]
    fn reads_a_labelled_matrix_in_any_order() {
        let text = "truth\\predicted,fox,cat\n# a comment\ncat,1,50\nfox,12,9\n";
        let m = parse_confusion(text, &classes()).expect("parses");
        assert_eq!(m.get(0, 2), 1.0);
        assert_eq!(m.get(2, 0), 9.0);
        assert_eq!(m.get(1, 0), 0.0, "dog has no row: never confused");
        assert_eq!(m.most_confused_with(2, 4), vec![0]);
    }

    #[test]
    fn bad_files_name_the_line_or_class() {
        let c = classes();
        assert_eq!(
            parse_confusion(",cat,wolf\n", &c).unwrap_err(),
            ParseProblem::Unknown("wolf".into())
        );
        assert!(matches!(
            parse_confusion(",cat,dog\ncat,1\n", &c).unwrap_err(),
            ParseProblem::Line(2, _)
        ));
        assert!(matches!(
            parse_confusion(",cat\ncat,-3\n", &c).unwrap_err(),
            ParseProblem::Line(2, m) if m.contains("-3")
        ));
        assert!(matches!(
            parse_confusion(",cat\ncat,1\ncat,2\n", &c).unwrap_err(),
            ParseProblem::Line(3, m) if m.contains("second row")
        ));
        assert!(matches!(
            parse_confusion("", &c).unwrap_err(),
            ParseProblem::Line(1, _)
        ));
    }
}
