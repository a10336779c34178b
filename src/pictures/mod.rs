//! Pictures for people: contact sheets of one pair across noise levels, an HTML report of a
//! whole cache, and the plot of an evaluation's sweep over r.
//!
//! - [`contact_sheet`]: the source, then each level left to right with its r, r* marked and
//!   the d_m curve drawn under the row when a GeNIe-Ada choice was recorded (the paper's Figure 2);
//! - [`cache_report`]: one self-contained HTML page (thumbnails inlined, no server needed) with
//!   counts by target class and level.
//!
//! - [`accuracy_plot`]: accuracy against r with interval bars (the paper's Table 4 sweep).
//!
//! Reads the cache through [`crate::cache::Store`] only, so it works on any backend.

mod canvas;
mod font;
mod plot;
mod report;
mod sheet;

pub use plot::accuracy_plot;
pub use report::{cache_report, ReportOptions, ReportSummary, MAX_THUMBNAIL_PX};
pub use sheet::{contact_sheet, SheetLevel, MAX_TILE_PX};
