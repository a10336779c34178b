//! Classes as genie names them — the id that labels a class (its folder name), the name its
//! prompt says, an optional superclass — and class-name files that map ids to names.
//!
//! ImageNet-style folders are named by WordNet id (`n01440764`); the paper prompts "a photo of a
//! tench.", not "a photo of a n01440764.". A class-name file gives each id its name:
//!
//! - `id name` lines, as ImageNet's `LOC_synset_mapping.txt` (`n01440764 tench, Tinca tinca`):
//!   the name is the text after the id up to the first comma (the rest are synonyms);
//! - CSV, `id,name[,superclass]` (a `.csv` file, or any file whose first entry has a comma in
//!   its first word), with an optional header line `folder,name[,superclass]` and `"quoted"`
//!   fields.
//!
//! Blank lines and lines starting with `#` are skipped. The file may name more classes than a
//! dataset has (a full ImageNet map for a 20-class split); a duplicate id in the file, or a
//! class of the dataset the file does not name, is an error that names it. Ids stay the labels
//! everywhere (keys, output paths, reports); two ids may share a name and stay two classes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// One class: its id (unique label), the name prompts use, and an optional superclass
/// ("a photo of a {name}, a type of {superclass}.").
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ClassInfo {
    /// The class's id: its dataset folder name, unique.
    pub id: String,
    /// The name prompts say.
    pub name: String,
    /// The superclass prompts add, if any.
    pub superclass: Option<String>,
}

impl ClassInfo {
    /// A class whose name is its id.
    pub fn named(id: impl Into<String>) -> Self {
        let id = id.into();
        ClassInfo {
            name: id.clone(),
            id,
            superclass: None,
        }
    }

    /// Readable and unique: the name when it is the id, else `name (id)` — what cache manifests,
    /// reports and logs show, so that two classes sharing a name stay apart there too.
    pub fn label(&self) -> String {
        if self.name == self.id {
            self.id.clone()
        } else {
            format!("{} ({})", self.name, self.id)
        }
    }
}

/// Why a class-name file cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClassNameError {
    /// The class-name file cannot be read.
    #[error("cannot read class-name file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A line is not `id<TAB>name[<TAB>superclass]`.
    #[error("{path}:{line}: {message}")]
    Line {
        /// The file.
        path: PathBuf,
        /// Its line (1-based).
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// An id named twice.
    #[error("{path}:{line}: class id {id:?} was already named on line {first}")]
    DuplicateId {
        /// The file.
        path: PathBuf,
        /// The later line.
        line: usize,
        /// The first line naming it.
        first: usize,
        /// The id.
        id: String,
    },
    /// A class of the dataset the file does not name.
    #[error("class {id:?} is not named in {path}")]
    UnknownId {
        /// The file.
        path: PathBuf,
        /// The class id.
        id: String,
    },
    /// The file names no class.
    #[error("{path} names no classes")]
    Empty {
        /// The file.
        path: PathBuf,
    },
}

/// The names a class-name file gives to class ids.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClassNames {
    path: PathBuf,
    by_id: HashMap<String, (String, Option<String>)>,
}

/// Names or superclasses longer than this are refused: they would only be truncated by CLIP's
/// 77 tokens anyway, and they keep a careless file (a binary, a log) from becoming prompts.
const MAX_NAME_BYTES: usize = 512;

impl ClassNames {
    /// Reads and checks a class-name file (see the module docs for the formats).
    pub fn read(path: &Path) -> Result<Self, ClassNameError> {
        let text =
            crate::safe_open::read_to_string(path).map_err(|source| ClassNameError::Read {
                path: path.to_path_buf(),
                source,
            })?;
        let csv = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("csv"));
        Self::parse(&text, path, csv)
    }

    /// Parses the text of a class-name file; `path` is for messages. `csv` forces the CSV
    /// format; otherwise it is detected from the first entry.
    pub fn parse(text: &str, path: &Path, csv: bool) -> Result<Self, ClassNameError> {
        let mut by_id = HashMap::new();
        let mut lines_of: HashMap<String, usize> = HashMap::new();
        let mut format_csv = None;
        let mut first_entry = true;
        for (n, raw) in text.lines().enumerate() {
            let line_no = n + 1;
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |message: String| ClassNameError::Line {
                path: path.to_path_buf(),
                line: line_no,
                message,
            };
            let is_csv = *format_csv.get_or_insert_with(|| {
                csv || line
                    .split_whitespace()
                    .next()
                    .is_some_and(|w| w.contains(','))
            });
            let (id, name, superclass) = if is_csv {
                let fields = split_csv(line).map_err(bad)?;
                if std::mem::take(&mut first_entry)
                    && fields.len() >= 2
                    && ["folder", "id", "wnid", "class"]
                        .contains(&fields[0].to_ascii_lowercase().as_str())
                    && fields[1].eq_ignore_ascii_case("name")
                {
                    // A header line.
                    continue;
                }
                if !(2..=3).contains(&fields.len()) {
                    return Err(bad(format!(
                        "expected `id,name[,superclass]`, found {} fields",
                        fields.len()
                    )));
                }
                let superclass = fields.get(2).cloned().filter(|s| !s.trim().is_empty());
                (fields[0].clone(), fields[1].clone(), superclass)
            } else {
                first_entry = false;
                let (id, rest) = line
                    .split_once(char::is_whitespace)
                    .ok_or_else(|| bad("expected `id name`".into()))?;
                let name = rest.split(',').next().unwrap_or("");
                (id.to_string(), name.to_string(), None)
            };
            let (id, name) = (id.trim().to_string(), name.trim().to_string());
            check_text(&id, "class id").map_err(bad)?;
            check_text(&name, "class name").map_err(bad)?;
            if let Some(s) = &superclass {
                check_text(s.trim(), "superclass").map_err(bad)?;
            }
            if let Some(&first) = lines_of.get(&id) {
                return Err(ClassNameError::DuplicateId {
                    path: path.to_path_buf(),
                    line: line_no,
                    first,
                    id,
                });
            }
            lines_of.insert(id.clone(), line_no);
            by_id.insert(id, (name, superclass.map(|s| s.trim().to_string())));
        }
        if by_id.is_empty() {
            return Err(ClassNameError::Empty {
                path: path.to_path_buf(),
            });
        }
        Ok(ClassNames {
            path: path.to_path_buf(),
            by_id,
        })
    }

    /// How many ids the file names.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether no class is named.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// The class `id` as the file names it.
    pub fn get(&self, id: &str) -> Option<ClassInfo> {
        self.by_id.get(id).map(|(name, superclass)| ClassInfo {
            id: id.to_string(),
            name: name.clone(),
            superclass: superclass.clone(),
        })
    }

    /// The classes of a dataset, in its label order; an id the file does not name is an error
    /// naming it.
    pub fn classes<S: AsRef<str>>(&self, ids: &[S]) -> Result<Vec<ClassInfo>, ClassNameError> {
        ids.iter()
            .map(|id| {
                self.get(id.as_ref())
                    .ok_or_else(|| ClassNameError::UnknownId {
                        path: self.path.clone(),
                        id: id.as_ref().to_string(),
                    })
            })
            .collect()
    }
}

/// The classes of `ids`, named by `names` when given, else by their ids.
pub fn classes_for<S: AsRef<str>>(
    ids: &[S],
    names: Option<&ClassNames>,
) -> Result<Vec<ClassInfo>, ClassNameError> {
    match names {
        Some(names) => names.classes(ids),
        None => Ok(ids.iter().map(|id| ClassInfo::named(id.as_ref())).collect()),
    }
}

fn check_text(s: &str, what: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err(format!("empty {what}"));
    }
    if s.len() > MAX_NAME_BYTES {
        return Err(format!("{what} longer than {MAX_NAME_BYTES} bytes"));
    }
    if s.chars().any(char::is_control) {
        return Err(format!("{what} {s:?} holds control characters"));
    }
    Ok(())
}

/// Splits one CSV line: fields separated by commas, `"quoted"` fields may hold commas and `""`.
fn split_csv(line: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut chars = line.chars().peekable();
    let mut quoted = false;
    let mut was_quoted = false;
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            ('"', true) => quoted = false,
            ('"', false) if field.trim().is_empty() && !was_quoted => {
                field.clear();
                quoted = true;
                was_quoted = true;
            }
            (',', false) => {
                fields.push(std::mem::take(&mut field).trim().to_string());
                was_quoted = false;
            }
            (c, _) => field.push(c),
        }
    }
    if quoted {
        return Err("unterminated quoted field".into());
    }
    fields.push(field.trim().to_string());
    Ok(fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, csv: bool) -> Result<ClassNames, ClassNameError> {
        ClassNames::parse(text, Path::new("names.txt"), csv)
    }

    #[test]
    fn synset_mapping_lines_take_the_first_synonym() {
        let names = parse(
            "# ImageNet\nn01440764 tench, Tinca tinca\n\nn02012849 crane\nn03126707 crane\n",
            false,
        )
        .unwrap();
        assert_eq!(names.len(), 3);
        let tench = names.get("n01440764").unwrap();
        assert_eq!(tench.name, "tench");
        assert_eq!(tench.label(), "tench (n01440764)");
        let classes = names.classes(&["n03126707", "n02012849"]).unwrap();
        assert_eq!(classes[0].name, classes[1].name);
        assert_ne!(classes[0], classes[1], "two cranes stay two classes");
    }

    #[test]
    fn csv_with_header_quotes_and_superclasses() {
        let text = "folder,name,superclass\nn01,\"golden retriever\",dog\nn02,\"a, b\"\nn03,x,\n";
        let names = parse(text, true).unwrap();
        assert_eq!(names.get("n01").unwrap().superclass.as_deref(), Some("dog"));
        assert_eq!(names.get("n02").unwrap().name, "a, b");
        assert_eq!(names.get("n03").unwrap().superclass, None);
        // Detected without the extension too: the first word holds a comma.
        let detected = parse("n01,tench\nn02,goldfish,fish\n", false).unwrap();
        assert_eq!(detected.get("n02").unwrap().name, "goldfish");
    }

    #[test]
    fn duplicates_unknown_ids_and_bad_lines_are_errors_that_name_them() {
        let e = parse("n01 a\nn02 b\nn01 c\n", false).unwrap_err();
        assert!(
            matches!(&e, ClassNameError::DuplicateId { id, line: 3, first: 1, .. } if id == "n01"),
            "{e}"
        );
        let names = parse("n01 a\n", false).unwrap();
        let e = names.classes(&["n01", "n09"]).unwrap_err();
        assert!(e.to_string().contains("\"n09\""), "{e}");
        assert!(matches!(
            parse("lonely\n", false),
            Err(ClassNameError::Line { line: 1, .. })
        ));
        assert!(matches!(
            parse("a,b,c,d\n", true),
            Err(ClassNameError::Line { .. })
        ));
        assert!(matches!(
            parse("a,\"open\n", true),
            Err(ClassNameError::Line { .. })
        ));
        assert!(matches!(
            parse("# nothing\n", false),
            Err(ClassNameError::Empty { .. })
        ));
        assert!(matches!(
            parse("n01 a\u{7}b\n", false),
            Err(ClassNameError::Line { .. })
        ));
    }

    #[test]
    fn without_a_file_ids_are_names() {
        let classes = classes_for(&["cat", "dog"], None).unwrap();
        assert_eq!(classes[1], ClassInfo::named("dog"));
        assert_eq!(classes[1].label(), "dog");
    }
}
