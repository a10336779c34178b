//! The crate's rooms: every folder of `src/` is in the README's Layout section, no source file
//! grows past 900 lines, no two modules import each other, directly or round a circle (a module
//! and its own parent or children may: `mod.rs` indexes its children), and each layer uses only
//! the layers below it.

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

/// What each top-level module of the library may use of the others: the layers of `src/lib.rs`,
/// each knowing only those below it (data flows batch → policy → cache → generator → engine →
/// cache → batch). Which of burn and candle a module may use, the features check: `cargo check
/// --no-default-features` with `engine` alone, and with `burn` alone, in `.ci/run`. A new edge
/// here is a design decision, made on purpose.
const LAYERS: &[(&str, &[&str])] = &[
    ("ada", &["engine"]),
    (
        "backbone",
        &["eval", "image_io", "loader", "policy", "safe_open"],
    ),
    (
        "cache",
        &["counters", "engine", "image_io", "safe_open", "sync"],
    ),
    ("classes", &["safe_open"]),
    ("counters", &[]),
    (
        "diffusion",
        &["engine", "image_io", "noise", "safe_open", "sync"],
    ),
    ("engine", &[]),
    (
        "eval",
        &["ada", "cache", "engine", "generator", "policy", "sync"],
    ),
    ("factory", &["diffusion", "engine", "generator"]),
    (
        "generator",
        &[
            "cache", "classes", "counters", "engine", "image_io", "seed", "sync",
        ],
    ),
    ("image_io", &["safe_open"]),
    (
        "loader",
        &[
            "ada",
            "cache",
            "classes",
            "engine",
            "generator",
            "image_io",
            "policy",
            "sync",
            "warm",
        ],
    ),
    ("noise", &[]),
    ("pictures", &["cache", "engine", "image_io"]),
    ("policy", &["sync"]),
    (
        "remote",
        &[
            "cache",
            "counters",
            "engine",
            "generator",
            "safe_open",
            "sync",
        ],
    ),
    ("safe_open", &[]),
    ("seed", &[]),
    ("sync", &[]),
    ("synthetic", &[]),
    ("testing", &["engine", "generator", "sync"]),
    (
        "warm",
        &[
            "cache",
            "engine",
            "generator",
            "image_io",
            "policy",
            "safe_open",
        ],
    ),
];

/// The other top-level modules each top-level module names as `crate::name` in its code (not in
/// comments, nor in a `#[cfg(test)] mod tests` at a file's end). `files`: (top-level module, text);
/// `reexports`: the crate root's `pub use` items and the module each comes from.
fn crate_edges(
    files: &[(String, String)],
    reexports: &BTreeMap<String, String>,
) -> BTreeMap<String, BTreeSet<String>> {
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, text) in files {
        let code = text
            .split("#[cfg(test)]\nmod tests")
            .next()
            .unwrap_or_default();
        for line in code.lines().map(str::trim).filter(|l| !l.starts_with("//")) {
            for (at, _) in line.match_indices("crate::") {
                if line[..at].chars().last().is_some_and(ident) {
                    continue;
                }
                let rest = &line[at + "crate::".len()..];
                // `crate::{a::X, b}` names each of a and b.
                let names: Vec<&str> = match rest.strip_prefix('{') {
                    Some(group) => group.split(',').map(str::trim).collect(),
                    None => vec![rest],
                };
                for name in names {
                    let name: String = name.chars().take_while(|&c| ident(c)).collect();
                    let name = reexports.get(&name).cloned().unwrap_or(name);
                    if !name.is_empty() && name != *module {
                        edges.entry(module.clone()).or_default().insert(name);
                    }
                }
            }
        }
    }
    edges
}

/// The items `lib.rs` re-exports at the crate root (`pub use engine::{Job, …}`), each with the
/// module it comes from.
fn root_reexports(lib: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for statement in lib.split("pub use ").skip(1) {
        let body: String = statement
            .split(';')
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .collect();
        for path in expand(&body) {
            if let (Some(first), Some(last)) = (path.first(), path.last()) {
                out.insert(last.clone(), first.clone());
            }
        }
    }
    out
}

/// The edges of `edges` that [`LAYERS`] does not allow, as `from -> to`.
fn against_layers(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    let allowed: BTreeMap<&str, &[&str]> = LAYERS.iter().copied().collect();
    edges
        .iter()
        .flat_map(|(from, tos)| tos.iter().map(move |to| (from, to)))
        .filter(|(from, to)| {
            allowed
                .get(from.as_str())
                .is_none_or(|ok| !ok.contains(&to.as_str()))
        })
        .map(|(from, to)| format!("{from} -> {to}"))
        .collect()
}

#[test]
fn each_layer_uses_only_the_layers_below_it() {
    let src = root().join("src");
    let mut paths = Vec::new();
    rust_files(&src, &mut paths);
    let files: Vec<(String, String)> = paths
        .iter()
        .filter(|p| !p.starts_with(src.join("bin")) && *p != &src.join("lib.rs"))
        .map(|p| {
            let first = p.strip_prefix(&src).unwrap().iter().next().unwrap();
            let module = first.to_string_lossy().trim_end_matches(".rs").to_string();
            (module, std::fs::read_to_string(p).unwrap())
        })
        .collect();
    let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap();
    let edges = crate_edges(&files, &root_reexports(&lib));
    // Every module is in the table, and the table names only modules there are.
    let modules: BTreeSet<&str> = files.iter().map(|(m, _)| m.as_str()).collect();
    let listed: BTreeSet<&str> = LAYERS.iter().map(|(m, _)| *m).collect();
    assert_eq!(modules, listed, "LAYERS and the modules of src/ differ");
    assert!(edges["loader"].contains("generator") && edges["cache"].contains("engine"));
    assert_eq!(against_layers(&edges), Vec::<String>::new());
}

/// The check finds a layer reaching up, in a `use` list or a path in code, and not in comments
/// or a file's test module.
#[test]
fn the_layer_check_finds_an_upward_edge() {
    let file = |module: &str, text: &str| (module.to_string(), text.to_string());
    let reexports = root_reexports("pub use loader::{\n    GenieBatcher,\n};\n");
    let edges = crate_edges(
        &[
            file("pictures", "use crate::GenieBatcher;\n"),
            file(
                "cache",
                "use crate::{engine::Job, sync};\nlet g = crate::generator::start();\n",
            ),
            file(
                "policy",
                "// see crate::loader\n#[cfg(test)]\nmod tests {\n    use crate::cache;\n}\n",
            ),
            file("engine", "use super::thing;\nlet x = mycrate::loader::Y;\n"),
        ],
        &reexports,
    );
    assert_eq!(
        against_layers(&edges),
        ["cache -> generator", "pictures -> loader"]
    );
    assert_eq!(edges.get("policy"), None);
    assert_eq!(edges.get("engine"), None);
}
