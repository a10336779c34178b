//! The crate's rooms: every folder of `src/` is in the README's Layout section, no source file
//! grows past 900 lines, and no two modules import each other, directly or round a circle
//! (a module and its own parent or children may: `mod.rs` indexes its children).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const MAX_LINES: usize = 900;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|x| x == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn the_readme_layout_names_every_folder_of_src() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let layout = readme
        .split("\n## Layout\n")
        .nth(1)
        .expect("a Layout section")
        .split("\n## ")
        .next()
        .unwrap();
    let mut files = Vec::new();
    rust_files(&root().join("src"), &mut files);
    let folders: BTreeSet<String> = files
        .iter()
        .filter_map(|f| f.parent())
        .filter(|d| *d != root().join("src"))
        .map(|d| {
            let rel = d.strip_prefix(root()).unwrap();
            format!("`{}/`", rel.display())
        })
        .collect();
    assert!(folders.len() >= 10, "{folders:?}");
    let missing: Vec<&String> = folders.iter().filter(|f| !layout.contains(*f)).collect();
    assert!(
        missing.is_empty(),
        "README's Layout does not name {missing:?}"
    );
}

#[test]
fn no_source_file_is_over_900_lines() {
    let mut files = Vec::new();
    rust_files(&root().join("src"), &mut files);
    let long: Vec<String> = files
        .iter()
        .filter_map(|f| {
            let lines = std::fs::read_to_string(f).unwrap().lines().count();
            (lines > MAX_LINES).then(|| format!("{} ({lines} lines)", f.display()))
        })
        .collect();
    assert!(long.is_empty(), "over {MAX_LINES} lines: {long:?}");
}

/// One crate's modules: the module path of each file, and the files' top-level `use` paths.
struct Crate {
    /// Module path (e.g. `["cache", "disk", "gc"]`) → the file's text.
    modules: BTreeMap<Vec<String>, String>,
}

impl Crate {
    /// The crate rooted at `root_file` (`lib.rs` or a binary's `main.rs`), its folder `dir`;
    /// files under `skip` belong to another crate.
    fn read(dir: &Path, root_file: &str, skip: Option<&Path>) -> Crate {
        let mut files = Vec::new();
        rust_files(dir, &mut files);
        let mut modules = BTreeMap::new();
        for f in files {
            if skip.is_some_and(|s| f.starts_with(s)) {
                continue;
            }
            let rel = f.strip_prefix(dir).unwrap();
            let mut path: Vec<String> = rel
                .iter()
                .map(|c| c.to_string_lossy().trim_end_matches(".rs").to_string())
                .collect();
            if path.last().is_some_and(|l| l == "mod") || rel == Path::new(root_file) {
                path.pop();
            }
            modules.insert(path, std::fs::read_to_string(&f).unwrap());
        }
        Crate { modules }
    }

    /// The modules `module` imports from, by its top-level `use` declarations (test modules
    /// and other indented `use`s are left out), resolved to the longest known module path.
    fn imports(&self, module: &[String], text: &str) -> BTreeSet<Vec<String>> {
        let mut out = BTreeSet::new();
        let mut statement = String::new();
        let mut in_use = false;
        for line in text.lines() {
            let starts = ["use ", "pub use ", "pub(crate) use ", "pub(super) use "]
                .iter()
                .find_map(|p| line.strip_prefix(p));
            if let Some(rest) = starts {
                in_use = true;
                statement = rest.to_string();
            } else if in_use {
                statement.push_str(line.trim());
            }
            if in_use && statement.trim_end().ends_with(';') {
                in_use = false;
                let body = statement.trim_end().trim_end_matches(';').replace(' ', "");
                for path in expand(&body) {
                    if let Some(target) = self.resolve(module, &path) {
                        out.insert(target);
                    }
                }
            }
        }
        out
    }

    fn resolve(&self, module: &[String], path: &[String]) -> Option<Vec<String>> {
        let mut at: Vec<String> = module.to_vec();
        let mut rest = path;
        match rest.first().map(String::as_str) {
            Some("crate") => {
                at.clear();
                rest = &rest[1..];
            }
            Some("self") => rest = &rest[1..],
            Some("super") => {
                while rest.first().is_some_and(|s| s == "super") {
                    at.pop()?;
                    rest = &rest[1..];
                }
            }
            Some(first) => {
                // A child module (2018 paths), else another crate.
                let mut child = at.clone();
                child.push(first.to_string());
                if !self.modules.contains_key(&child) {
                    return None;
                }
            }
            None => return None,
        }
        let mut best = at.clone();
        for seg in rest {
            at.push(seg.clone());
            if self.modules.contains_key(&at) {
                best = at.clone();
            } else {
                break;
            }
        }
        Some(best)
    }

    /// A circle of imports between modules neither of which contains the other, if any.
    fn circle(&self) -> Option<Vec<String>> {
        let related = |a: &[String], b: &[String]| a.starts_with(b) || b.starts_with(a);
        let edges: BTreeMap<&Vec<String>, BTreeSet<Vec<String>>> = self
            .modules
            .iter()
            .map(|(m, text)| {
                let to = self
                    .imports(m, text)
                    .into_iter()
                    .filter(|t| !related(m, t))
                    .collect();
                (m, to)
            })
            .collect();
        // Depth-first search with the path on a stack: a back edge closes a circle.
        fn visit(
            m: &Vec<String>,
            edges: &BTreeMap<&Vec<String>, BTreeSet<Vec<String>>>,
            state: &mut BTreeMap<Vec<String>, u8>,
            stack: &mut Vec<Vec<String>>,
        ) -> Option<Vec<String>> {
            state.insert(m.clone(), 1);
            stack.push(m.clone());
            for t in edges.get(m).into_iter().flatten() {
                match state.get(t) {
                    Some(1) => {
                        let from = stack.iter().position(|s| s == t).unwrap();
                        let mut circle: Vec<String> =
                            stack[from..].iter().map(|s| s.join("::")).collect();
                        circle.push(t.join("::"));
                        return Some(circle);
                    }
                    Some(_) => {}
                    None => {
                        if let Some(c) = visit(t, edges, state, stack) {
                            return Some(c);
                        }
                    }
                }
            }
            stack.pop();
            state.insert(m.clone(), 2);
            None
        }
        let mut state = BTreeMap::new();
        for m in self.modules.keys() {
            if !state.contains_key(m) {
                if let Some(c) = visit(m, &edges, &mut state, &mut Vec::new()) {
                    return Some(c);
                }
            }
        }
        None
    }
}

/// The paths a `use` body names: `a::{b, c::{d, e}}` → `a::b`, `a::c::d`, `a::c::e`.
fn expand(body: &str) -> Vec<Vec<String>> {
    let Some(open) = body.find('{') else {
        return vec![body.split("::").map(str::to_string).collect()];
    };
    let prefix = body[..open].trim_end_matches("::");
    let inner = &body[open + 1..body.rfind('}').unwrap_or(body.len())];
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&inner[start..]);
    let mut out = Vec::new();
    for part in parts.into_iter().filter(|p| !p.is_empty()) {
        for mut tail in expand(part) {
            let mut path: Vec<String> = if prefix.is_empty() {
                Vec::new()
            } else {
                prefix.split("::").map(str::to_string).collect()
            };
            if tail.first().is_some_and(|t| t == "self") {
                tail.remove(0);
            }
            path.append(&mut tail);
            out.push(path);
        }
    }
    out
}

#[test]
fn no_two_modules_import_each_other() {
    let src = root().join("src");
    let lib = Crate::read(&src, "lib.rs", Some(&src.join("bin")));
    let bin = Crate::read(&src.join("bin/genie"), "main.rs", None);
    assert!(lib.modules.len() > 50 && bin.modules.len() > 10);
    assert_eq!(lib.circle(), None, "an import circle in the library");
    assert_eq!(bin.circle(), None, "an import circle in the binary");
}

/// The check finds the circles it is for: two siblings importing each other, and a circle of
/// three through another folder.
#[test]
fn the_circle_check_finds_circles() {
    let module = |name: &str, text: &str| {
        (
            name.split("::").map(str::to_string).collect::<Vec<_>>(),
            text.to_string(),
        )
    };
    let two = Crate {
        modules: BTreeMap::from([
            module("generator", "mod service;\nmod worker;\n"),
            module("generator::service", "use super::worker::Worker;\n"),
            module(
                "generator::worker",
                "use std::sync::Arc;\nuse super::{service::{Shared, RUNNING}, types};\n",
            ),
        ]),
    };
    assert_eq!(
        two.circle(),
        Some(vec![
            "generator::service".to_string(),
            "generator::worker".into(),
            "generator::service".into()
        ])
    );
    let three = Crate {
        modules: BTreeMap::from([
            module("a", ""),
            module("a::x", "use crate::b::y;\nuse super::Parent;\n"),
            module("b", ""),
            module("b::y", "use crate::c::\n    Z;\n"),
            module("c", "use crate::a::x::Thing;\n"),
        ]),
    };
    assert!(three.circle().is_some());
    // Parents and children may use each other.
    let family = Crate {
        modules: BTreeMap::from([
            module("a", "use x::Thing;\n"),
            module("a::x", "use super::Parent;\n"),
        ]),
    };
    assert_eq!(family.circle(), None);
}
