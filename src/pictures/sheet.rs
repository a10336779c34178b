//! The contact sheet of one (source, target) pair: source and levels in a row, r* and d_m below.

use image::imageops::{self, FilterType};
use image::{Rgb, RgbImage};

use crate::cache::AdaChoiceRecord;
use crate::engine::NoiseLevel;

use super::canvas::{self, GREY, INK, MARK, WHITE};

/// One column of the sheet: a level and its image, `None` when it is not cached.
#[derive(Clone, Debug)]
pub struct SheetLevel {
    /// The level.
    pub level: NoiseLevel,
    /// Its image, when cached.
    pub image: Option<RgbImage>,
}

/// Largest tile side: the sheet's memory grows with its square.
pub const MAX_TILE_PX: u32 = 1024;

const GAP: u32 = 8;
const MARK_WIDTH: u32 = 4;

/// Draws the sheet: the source, then each of `levels` left to right with its r above it. With
/// a `choice`, the tile of r* is framed and labelled `r*`, and the d_m curve is plotted under
/// the row, one point under each tile whose level the choice scored.
///
/// Tiles are `tile` pixels square (images are resized to fit), within 16 ..= [`MAX_TILE_PX`].
pub fn contact_sheet(
    source: &RgbImage,
    levels: &[SheetLevel],
    choice: Option<&AdaChoiceRecord>,
    tile: u32,
) -> RgbImage {
    let tile = tile.clamp(16, MAX_TILE_PX);
    let scale = (tile / 64).clamp(1, 4);
    let label_h = canvas::text_height(scale) + 2 * GAP;
    let curve = choice.and_then(|c| curve_points(c, levels));
    let plot_h = if curve.is_some() {
        tile / 2 + label_h
    } else {
        0
    };
    let columns = levels.len() as u32 + 1;
    let width = GAP + columns * (tile + GAP);
    let height = label_h + tile + GAP + plot_h;
    let mut sheet = RgbImage::from_pixel(width, height, WHITE);
    let chosen = choice.and_then(AdaChoiceRecord::chosen_level);
    let column_x = |i: u32| i64::from(GAP + i * (tile + GAP));
    let top = i64::from(label_h);

    put_tile(&mut sheet, column_x(0), top, tile, Some(source));
    label(&mut sheet, column_x(0), tile, scale, "source", INK);
    for (i, l) in levels.iter().enumerate() {
        let x = column_x(i as u32 + 1);
        put_tile(&mut sheet, x, top, tile, l.image.as_ref());
        if l.image.is_none() {
            let msg = "missing";
            let w = canvas::text_width(msg, scale);
            let y = top + i64::from(tile / 2);
            canvas::text(
                &mut sheet,
                x + i64::from(tile.saturating_sub(w) / 2),
                y,
                msg,
                scale,
                INK,
            );
        }
        if Some(l.level) == chosen {
            canvas::frame(
                &mut sheet,
                x - 2,
                top - 2,
                tile + 4,
                tile + 4,
                MARK_WIDTH,
                MARK,
            );
            label(&mut sheet, x, tile, scale, &format!("r*={}", l.level), MARK);
        } else {
            label(&mut sheet, x, tile, scale, &format!("r={}", l.level), INK);
        }
    }

    if let Some(points) = curve {
        let plot_top = top + i64::from(tile + GAP);
        let plot_bottom = plot_top + i64::from(tile / 2);
        canvas::text(&mut sheet, column_x(0), plot_top, "d_m", scale, INK);
        canvas::line(
            &mut sheet,
            (column_x(1), plot_bottom),
            (column_x(columns - 1) + i64::from(tile), plot_bottom),
            1,
            GREY,
        );
        let (lo, hi) = points
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| {
                (lo.min(p.1), hi.max(p.1))
            });
        let span = (hi - lo).max(1e-12);
        let to_xy = |(column, d): (usize, f64)| {
            let x = column_x(column as u32 + 1) + i64::from(tile / 2);
            let y = plot_bottom
                - ((d - lo) / span * f64::from((tile / 2).saturating_sub(2 * GAP))) as i64
                - i64::from(GAP);
            (x, y)
        };
        for pair in points.windows(2) {
            canvas::line(&mut sheet, to_xy(pair[0]), to_xy(pair[1]), 2, INK);
        }
        for &(column, d) in &points {
            let (x, y) = to_xy((column, d));
            let color = if Some(levels[column].level) == chosen {
                MARK
            } else {
                INK
            };
            canvas::fill(&mut sheet, x - 4, y - 4, 9, 9, color);
            let value = format!("{d:.2}");
            let w = canvas::text_width(&value, scale);
            canvas::text(
                &mut sheet,
                x - i64::from(w / 2),
                plot_bottom + i64::from(GAP),
                &value,
                scale,
                color,
            );
        }
    }
    sheet
}

/// (column, d_m) for each sheet column whose level the choice scored, in column order; `None`
/// when fewer than two columns have a value.
fn curve_points(choice: &AdaChoiceRecord, levels: &[SheetLevel]) -> Option<Vec<(usize, f64)>> {
    let scored = choice.noise_levels();
    let points: Vec<(usize, f64)> = levels
        .iter()
        .enumerate()
        .filter_map(|(column, l)| {
            let at = scored.iter().position(|&s| s == l.level)?;
            let d = *choice.curve.get(at)?;
            d.is_finite().then_some((column, d))
        })
        .collect();
    (points.len() >= 2).then_some(points)
}

fn put_tile(sheet: &mut RgbImage, x: i64, y: i64, tile: u32, image: Option<&RgbImage>) {
    match image {
        Some(img) => {
            let resized = imageops::resize(img, tile, tile, FilterType::Triangle);
            imageops::replace(sheet, &resized, x, y);
        }
        None => canvas::fill(sheet, x, y, tile, tile, Rgb([225, 225, 225])),
    }
}

/// Centres `text` above the tile at column position `x`.
fn label(sheet: &mut RgbImage, x: i64, tile: u32, scale: u32, text: &str, color: Rgb<u8>) {
    let w = canvas::text_width(text, scale);
    canvas::text(
        sheet,
        x + i64::from(tile.saturating_sub(w) / 2),
        i64::from(GAP),
        text,
        scale,
        color,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn solid(v: u8) -> RgbImage {
        RgbImage::from_pixel(32, 32, Rgb([v, v, v]))
    }

    fn levels() -> Vec<SheetLevel> {
        NoiseLevel::ADA_SWEEP
            .iter()
            .enumerate()
            .map(|(i, &level)| SheetLevel {
                level,
                image: (i != 1).then(|| solid(40 + 40 * i as u8)),
            })
            .collect()
    }

    fn count(img: &RgbImage, color: Rgb<u8>) -> usize {
        img.pixels().filter(|p| **p == color).count()
    }

    #[test]
    fn lays_out_source_and_levels_and_marks_the_choice_only_when_recorded() {
        let plain = contact_sheet(&solid(200), &levels(), None, 64);
        assert_eq!(plain.width(), GAP + 6 * (64 + GAP));
        assert_eq!(count(&plain, MARK), 0, "no choice, no mark");
        // Each tile shows its image: sample the centre of the r = 0.9 tile.
        let label_h = canvas::text_height(1) + 2 * GAP;
        let centre = plain.get_pixel(GAP + 5 * (64 + GAP) + 32, label_h + 32);
        assert_eq!(*centre, Rgb([200, 200, 200]));

        let (sweep, curve) = (NoiseLevel::ADA_SWEEP, [0.1, 0.15, 0.7, 0.75, 0.8]);
        let choice = AdaChoiceRecord::new("fox", &sweep, &curve, Some(sweep[2]), 1);
        let marked = contact_sheet(&solid(200), &levels(), Some(&choice), 64);
        assert!(marked.height() > plain.height(), "the curve panel is added");
        assert!(
            count(&marked, MARK) > 4 * 64 * MARK_WIDTH as usize,
            "r* is framed"
        );
        // The frame surrounds the third level's tile (column 3).
        let x = GAP + 3 * (64 + GAP);
        assert_eq!(*marked.get_pixel(x - 1, label_h + 32), MARK);
    }

    #[test]
    fn a_choice_with_too_few_matching_levels_draws_no_curve() {
        let choice = AdaChoiceRecord::new("fox", &[NoiseLevel::GENIE_DEFAULT], &[0.3], None, 1);
        let a = contact_sheet(&solid(200), &levels(), Some(&choice), 64);
        let b = contact_sheet(&solid(200), &levels(), None, 64);
        assert_eq!(a.dimensions(), b.dimensions());
    }
}
