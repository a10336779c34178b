//! What the commands print and name: folder slugs, byte sizes, shell words, user text made
//! printable, and errors on one line.

use anyhow::{bail, Result};

/// A folder-name-safe form of a class or file name (the output folder is the user's; keys never use names).
pub(crate) fn slug(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.trim_matches('_').is_empty() {
        "x".into()
    } else if s.len() > MAX_SLUG_BYTES {
        // File systems refuse names past 255 bytes, and only after the images are made: a long
        // name keeps its start and gets a hash of the whole, so it stays readable and unique.
        let hash = blake3::hash(name.as_bytes()).to_hex();
        format!("{}-{}", &s[..MAX_SLUG_BYTES - 17], &hash[..16])
    } else {
        s
    }
}

/// Longest output folder name `slug` makes (well below every file system's 255).
pub(crate) const MAX_SLUG_BYTES: usize = 96;

/// Folder names for `names`, refusing two that would share a folder (and overwrite each
/// other's images) before anything is generated.
pub(crate) fn unique_slugs<'a>(
    names: impl IntoIterator<Item = &'a str>,
    what: &str,
) -> Result<Vec<String>> {
    let mut seen: std::collections::HashMap<String, &str> = Default::default();
    let mut slugs = Vec::new();
    for name in names {
        let s = slug(name);
        if let Some(first) = seen.insert(s.clone(), name) {
            bail!(
                "{what}s {first:?} and {name:?} would both be written to {s}/: rename one of them"
            );
        }
        slugs.push(s);
    }
    Ok(slugs)
}

pub(crate) fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Quotes an argument for a POSIX shell when it needs it.
pub(crate) fn shell_word(arg: &str) -> String {
    let plain = !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=,@%+".contains(c));
    if plain {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', "'\\''"))
    }
}

/// `text` with control characters escaped: a class name read from a file or a cache may hold a
/// terminal escape sequence, which is shown, not obeyed.
pub(crate) fn printable(text: &str) -> String {
    let mut shown = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            shown.extend(c.escape_default());
        } else {
            shown.push(c);
        }
    }
    shown
}

/// The error and its causes on one line: a cause whose text the line already holds is not
/// repeated (many errors quote their source), control characters (a terminal escape in a class
/// name) are shown escaped, and the line is cut at `MAX_ERROR_CHARS`.
pub(crate) fn error_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    let line = printable(&line);
    match line.char_indices().nth(MAX_ERROR_CHARS) {
        Some((cut, _)) => {
            let rest = line[cut..].chars().count();
            format!("{}… ({rest} more characters)", &line[..cut])
        }
        None => line,
    }
}

/// Longest error line printed; past it the line is cut (a 1 MB plan line is not echoed whole).
pub(crate) const MAX_ERROR_CHARS: usize = 2000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printable_escapes_control_characters_only() {
        assert_eq!(printable("tench, Tinca"), "tench, Tinca");
        assert_eq!(printable("\u{1b}[2Jcat\r"), "\\u{1b}[2Jcat\\r");
    }

    #[test]
    fn error_lines_say_each_cause_once_escaped_and_bounded() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file or directory");
        let e = anyhow::Error::new(io)
            .context("cannot read x.png: No such file or directory")
            .context("loading sources");
        assert_eq!(
            error_line(&e),
            "loading sources: cannot read x.png: No such file or directory"
        );
        let e = anyhow::anyhow!("unknown class \u{1b}[31mred\nline");
        assert_eq!(error_line(&e), "unknown class \\u{1b}[31mred\\nline");
        let e = anyhow::anyhow!("bad line {}", "x".repeat(1_000_000));
        let line = error_line(&e);
        assert!(
            line.chars().count() < MAX_ERROR_CHARS + 40,
            "{}",
            line.len()
        );
        assert!(
            line.ends_with("more characters)"),
            "{}",
            &line[line.len() - 40..]
        );
    }

    #[test]
    fn slugs_are_plain_names() {
        assert_eq!(slug("golden retriever"), "golden_retriever");
        assert_eq!(slug("../etc"), "___etc");
        assert_eq!(slug("///"), "x");
        let long = "a".repeat(10_000);
        let (a, b) = (slug(&long), slug(&format!("{long}b")));
        assert_eq!(a.len(), MAX_SLUG_BYTES);
        assert!(a.starts_with("aaaa") && a != b, "{a} {b}");
    }
}
