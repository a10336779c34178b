//! The HTML report of a cache: counts by target class and level, and thumbnails, in one file.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use base64::Engine as _;
use image::imageops::{self, FilterType};

use crate::cache::{CacheError, CacheKey, Lookup, Manifest, Store};
use crate::engine::NoiseLevel;
use crate::image_io;

/// What the report shows.
///
/// New settings may be added: start from [`ReportOptions::default`] and set fields.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ReportOptions {
    /// The page's heading (e.g. the cache's location).
    pub title: String,
    /// Thumbnails per (target class, level); counts always cover every entry.
    pub thumbnails_per_level: usize,
    /// Thumbnail side in pixels, used within 16 ..= [`MAX_THUMBNAIL_PX`].
    pub thumbnail_px: u32,
}

/// Largest thumbnail side: the page inlines every thumbnail, so this bounds its size.
pub const MAX_THUMBNAIL_PX: u32 = 512;

impl Default for ReportOptions {
    fn default() -> Self {
        ReportOptions {
            title: "genie cache".into(),
            thumbnails_per_level: 8,
            thumbnail_px: 96,
        }
    }
}

/// What went into a report.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReportSummary {
    /// Entries listed.
    pub entries: u64,
    /// Target classes.
    pub targets: usize,
    /// Thumbnails drawn.
    pub thumbnails: usize,
    /// Entries listed by a manifest but unreadable now (corrupt or gone); left out of thumbnails.
    pub unreadable: usize,
    /// Manifests the store could not use at all (garbage or a newer genie's).
    pub skipped_manifests: usize,
}

/// Writes the report of everything `store` holds as one HTML page with the thumbnails inlined
/// (PNG data URIs), so that it opens in a browser from a file, with no server.
///
/// Within a (target, level) group, thumbnails are the entries with the smallest keys, so the
/// same cache always gives the same page.
pub fn cache_report(
    store: &dyn Store,
    options: &ReportOptions,
) -> Result<(String, ReportSummary), CacheError> {
    let scan = store.manifests()?;
    let mut summary = ReportSummary {
        skipped_manifests: scan.bad.len() + scan.newer_format.len(),
        ..ReportSummary::default()
    };
    let mut groups: BTreeMap<&str, BTreeMap<NoiseLevel, Vec<&Manifest>>> = BTreeMap::new();
    for m in &scan.manifests {
        groups
            .entry(m.meta.target.as_str())
            .or_default()
            .entry(m.meta.level)
            .or_default()
            .push(m);
    }
    let levels: Vec<NoiseLevel> = {
        let mut all: Vec<NoiseLevel> = groups.values().flat_map(|g| g.keys().copied()).collect();
        all.sort_unstable();
        all.dedup();
        all
    };
    summary.entries = scan.manifests.len() as u64;
    summary.targets = groups.len();

    let mut html = String::new();
    let title = escape(&options.title);
    let _ = write!(
        html,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>{title}</title>\n<style>{STYLE}</style></head><body>\n<h1>{title}</h1>\n"
    );
    let bytes: u64 = scan.manifests.iter().map(|m| m.content_len).sum();
    let _ = writeln!(
        html,
        "<p>{} hard negatives of {} target classes, {:.1} MiB.</p>",
        summary.entries,
        groups.len(),
        bytes as f64 / f64::from(1 << 20)
    );
    if summary.skipped_manifests > 0 {
        let _ = writeln!(
            html,
            "<p class=\"warn\">{} manifests could not be read (run <code>genie cache verify</code>).</p>",
            summary.skipped_manifests
        );
    }

    // Counts: one row per target, one column per level.
    html.push_str("<h2>Counts by target class and r</h2>\n<table><tr><th>target</th>");
    for l in &levels {
        let _ = write!(html, "<th>r = {l}</th>");
    }
    html.push_str("<th>total</th></tr>\n");
    for (target, by_level) in &groups {
        let (id, name) = (anchor(target), escape(target));
        let _ = write!(html, "<tr><td><a href=\"#{id}\">{name}</a></td>");
        for l in &levels {
            let n = by_level.get(l).map_or(0, Vec::len);
            let _ = write!(html, "<td>{n}</td>");
        }
        let total: usize = by_level.values().map(Vec::len).sum();
        let _ = writeln!(html, "<td>{total}</td></tr>");
    }
    html.push_str("</table>\n");

    // Thumbnails: a section per target, a row per level.
    for (target, by_level) in &groups {
        let (id, name) = (anchor(target), escape(target));
        let _ = writeln!(html, "<h2 id=\"{id}\">{name}</h2>");
        for (level, manifests) in by_level {
            let mut chosen: Vec<&Manifest> = manifests.clone();
            chosen.sort_by_key(|m| m.key);
            let _ = write!(
                html,
                "<div class=\"row\"><div class=\"level\">r = {level}<br><small>{} images</small></div>",
                manifests.len()
            );
            for m in chosen.into_iter().take(options.thumbnails_per_level) {
                match thumbnail(
                    store,
                    &m.key,
                    options.thumbnail_px.clamp(16, MAX_THUMBNAIL_PX),
                )? {
                    Some(data) => {
                        summary.thumbnails += 1;
                        let _ = write!(
                            html,
                            "<img src=\"data:image/png;base64,{data}\" title=\"{} — {}\" alt=\"\">",
                            m.key,
                            escape(&m.meta.prompt)
                        );
                    }
                    None => summary.unreadable += 1,
                }
            }
            html.push_str("</div>\n");
        }
    }
    html.push_str("</body></html>\n");
    Ok((html, summary))
}

/// The entry as a base64 PNG thumbnail; `None` when it cannot be read or decoded now.
fn thumbnail(store: &dyn Store, key: &CacheKey, px: u32) -> Result<Option<String>, CacheError> {
    let Lookup::Hit(entry) = store.get(key)? else {
        return Ok(None);
    };
    let Ok(image) = image_io::decode_rgb(&entry.content) else {
        return Ok(None);
    };
    let small = imageops::resize(&image, px.max(8), px.max(8), FilterType::Triangle);
    let png = image_io::encode_png(&small)?;
    Ok(Some(base64::engine::general_purpose::STANDARD.encode(png)))
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2em;color:#222}\
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}\
td:first-child{text-align:left}.row{display:flex;align-items:center;gap:4px;margin:4px 0}\
.level{width:6em;font-size:90%}img{image-rendering:auto;border:1px solid #ddd}.warn{color:#a40}";

/// Class names are user data: everything that reaches the page is escaped.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// An id for a class's section: its bytes in hex, so any name makes a valid, unique id.
fn anchor(target: &str) -> String {
    let hex: String = target.bytes().map(|b| format!("{b:02x}")).collect();
    format!("t-{hex}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_escaped_and_anchors_are_safe() {
        assert_eq!(
            escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
        assert_eq!(anchor("a b"), "t-612062");
    }
}
