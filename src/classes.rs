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
//!
//! Without a file, folders named by WordNet id (`n` and eight digits) are named from genie's
//! built-in ImageNet-1k table ([`ClassNames::imagenet`]; mini-ImageNet, tiered-ImageNet and
//! ImageNet-LT are subsets of ImageNet-1k), and a WordNet id the table lacks is an error: a prompt
//! never silently says "a photo of a n01440764.".

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
    /// Folders named by WordNet id that the built-in ImageNet-1k table does not name, and no
    /// class-name file.
    #[error(
        "{} class folder(s) are named by WordNet id but are not ImageNet-1k classes ({}): prompts \
         would say \"a photo of a {}.\"; give their names in a class-name file (`--class-names \
         FILE` in the genie commands and examples, `ClassNames::read` in the library), with \
         `id name` lines as in LOC_synset_mapping.txt or `id,name` CSV",
        ids.len(),
        shown(ids),
        ids.first().map_or("", String::as_str)
    )]
    UnknownWordNetIds {
        /// The ids, in label order (never empty).
        ids: Vec<String>,
    },
}

/// At most five ids, then how many more.
fn shown(ids: &[String]) -> String {
    let mut s = ids.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
    if ids.len() > 5 {
        s.push_str(&format!(" and {} more", ids.len() - 5));
    }
    s
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

    /// genie's built-in ImageNet-1k table: the 1 000 WordNet ids of ImageNet-1k and their first
    /// names, as in ImageNet's `LOC_synset_mapping.txt` (`n01440764` → "tench"). Two ids share a
    /// name there ("crane", "maillot") and stay two classes.
    pub fn imagenet() -> &'static ClassNames {
        static TABLE: std::sync::OnceLock<ClassNames> = std::sync::OnceLock::new();
        TABLE.get_or_init(|| {
            ClassNames::parse(
                IMAGENET_SYNSETS,
                Path::new("<genie's ImageNet-1k table>"),
                false,
            )
            .expect("the built-in ImageNet-1k table parses (unit test)")
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

/// ImageNet-1k's 1 000 WordNet ids and names, as ImageNet's `LOC_synset_mapping.txt`.
const IMAGENET_SYNSETS: &str = include_str!("../assets/imagenet_synsets.txt");

/// Where the names of a run's classes came from: what a command prints before it prompts.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum NameSource {
    /// A class-name file.
    File(PathBuf),
    /// genie's built-in ImageNet-1k table, for this many of the classes (the others, not WordNet
    /// ids, are named by their ids).
    ImageNet {
        /// Classes the table named.
        named: usize,
    },
    /// Every class is named by its id (folder names that are not WordNet ids).
    Ids,
}

impl std::fmt::Display for NameSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NameSource::File(path) => write!(f, "class names from {}", path.display()),
            NameSource::ImageNet { named } => write!(
                f,
                "class names from genie's built-in ImageNet-1k table ({named} WordNet id(s); \
                 --class-names FILE to use others)"
            ),
            NameSource::Ids => write!(f, "class names are the folder names"),
        }
    }
}

/// A run's classes and where their names came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamedClasses {
    /// The classes, in label order.
    pub classes: Vec<ClassInfo>,
    /// Where their names came from.
    pub source: NameSource,
}

/// Whether `id` has the shape of a WordNet noun id: `n` and eight digits (`n01440764`).
pub fn is_wordnet_id(id: &str) -> bool {
    let b = id.as_bytes();
    b.len() == 9 && b[0] == b'n' && b[1..].iter().all(u8::is_ascii_digit)
}

/// The classes of `ids` (a dataset's folder names, in label order), named by `names` when given;
/// else WordNet ids are named from the built-in ImageNet-1k table and other ids by themselves.
/// A WordNet id the table lacks, with no file, is [`ClassNameError::UnknownWordNetIds`].
///
/// ```
/// use genie::classes::{classes_for, NameSource};
/// let named = classes_for(&["n01440764", "n01443537"], None)?;
/// assert_eq!(named.classes[0].name, "tench");
/// assert_eq!(named.source, NameSource::ImageNet { named: 2 });
/// assert!(classes_for(&["n99999999"], None).is_err());
/// assert_eq!(classes_for(&["cat"], None)?.classes[0].name, "cat");
/// # Ok::<(), genie::classes::ClassNameError>(())
/// ```
pub fn classes_for<S: AsRef<str>>(
    ids: &[S],
    names: Option<&ClassNames>,
) -> Result<NamedClasses, ClassNameError> {
    if let Some(names) = names {
        return Ok(NamedClasses {
            classes: names.classes(ids)?,
            source: NameSource::File(names.path.clone()),
        });
    }
    let (classes, unknown) = name_by_imagenet(ids);
    if !unknown.is_empty() {
        return Err(ClassNameError::UnknownWordNetIds { ids: unknown });
    }
    let named = ids.iter().filter(|id| is_wordnet_id(id.as_ref())).count();
    let source = if named > 0 {
        NameSource::ImageNet { named }
    } else {
        NameSource::Ids
    };
    Ok(NamedClasses { classes, source })
}

/// `ids` named as [`classes_for`] names them without a file, and the WordNet ids the table lacks
/// (named by themselves here).
pub(crate) fn name_by_imagenet<S: AsRef<str>>(ids: &[S]) -> (Vec<ClassInfo>, Vec<String>) {
    let table = ClassNames::imagenet();
    let mut unknown = Vec::new();
    let classes = ids
        .iter()
        .map(|id| {
            let id = id.as_ref();
            if !is_wordnet_id(id) {
                return ClassInfo::named(id);
            }
            table.get(id).unwrap_or_else(|| {
                unknown.push(id.to_string());
                ClassInfo::named(id)
            })
        })
        .collect();
    (classes, unknown)
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
        let bad_lines = [
            ("lonely\n", false),
            ("a,b,c,d\n", true),
            ("a,\"open\n", true),
            ("n01 a\u{7}b\n", false),
        ];
        for (text, csv) in bad_lines {
            let e = parse(text, csv).unwrap_err();
            assert!(
                matches!(e, ClassNameError::Line { line: 1, .. }),
                "{text:?}: {e}"
            );
        }
        let e = parse("# nothing\n", false).unwrap_err();
        assert!(matches!(e, ClassNameError::Empty { .. }), "{e}");
    }

    #[test]
    fn without_a_file_ids_are_names() {
        let named = classes_for(&["cat", "dog"], None).unwrap();
        assert_eq!(named.classes[1], ClassInfo::named("dog"));
        assert_eq!(named.classes[1].label(), "dog");
        assert_eq!(named.source, NameSource::Ids);
    }

    #[test]
    fn the_imagenet_table_has_the_thousand_classes() {
        let table = ClassNames::imagenet();
        assert_eq!(table.len(), 1000);
        assert!(table.by_id.keys().all(|id| is_wordnet_id(id)));
        assert_eq!(table.get("n01440764").unwrap().name, "tench");
        assert_eq!(table.get("n15075141").unwrap().name, "toilet tissue");
        // Two ImageNet classes share a first name and stay two classes.
        assert_eq!(table.get("n02012849").unwrap().name, "crane");
        assert_eq!(table.get("n03126707").unwrap().name, "crane");
    }

    #[test]
    fn wordnet_folders_are_named_from_the_table_or_refused() {
        let named = classes_for(&["n01440764", "n01443537", "background"], None).unwrap();
        let names: Vec<_> = named.classes.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["tench", "goldfish", "background"]);
        assert_eq!(named.classes[0].id, "n01440764", "ids stay the labels");
        assert_eq!(named.source, NameSource::ImageNet { named: 2 });
        assert!(named.source.to_string().contains("ImageNet-1k"));

        let e = classes_for(&["n01440764", "n00000001", "n00000002"], None).unwrap_err();
        match &e {
            ClassNameError::UnknownWordNetIds { ids } => {
                assert_eq!(ids, &["n00000001", "n00000002"])
            }
            other => panic!("{other}"),
        }
        assert!(e.to_string().contains("--class-names"), "{e}");
        // A names file wins over the table and may name ids the table lacks.
        let file = parse("n00000001 zebra fish\nn01440764 fish\n", false).unwrap();
        let named = classes_for(&["n00000001", "n01440764"], Some(&file)).unwrap();
        assert_eq!(named.classes[1].name, "fish");
        assert_eq!(named.source, NameSource::File("names.txt".into()));
        for not_an_id in [
            "n0144076",
            "n014407640",
            "x01440764",
            "N01440764",
            "n0144076a",
        ] {
            assert!(!is_wordnet_id(not_an_id), "{not_an_id}");
        }
    }
}
