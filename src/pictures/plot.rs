//! [`accuracy_plot`]: accuracy against the noise level r with 95 % interval bars, the figure of
//! the paper's Table 4 sweep.

use image::RgbImage;

use super::canvas::{self, GREY, INK, MARK, WHITE};

const WIDTH: u32 = 480;
const HEIGHT: u32 = 300;
const MARGIN: i64 = 48;
const SCALE: u32 = 2;

/// A plot of `points` — (r, mean accuracy %, half-width of its interval) — in order of r: a
/// line through the means, a bar for each interval, r under each point and the y range on the
/// left. Empty or non-finite input gives an empty frame.
pub fn accuracy_plot(points: &[(f64, f64, f64)]) -> RgbImage {
    let mut img = RgbImage::from_pixel(WIDTH, HEIGHT, WHITE);
    let (left, right) = (MARGIN, i64::from(WIDTH) - MARGIN / 2);
    let (top, bottom) = (MARGIN / 2, i64::from(HEIGHT) - MARGIN);
    canvas::line(&mut img, (left, top), (left, bottom), 1, GREY);
    canvas::line(&mut img, (left, bottom), (right, bottom), 1, GREY);
    let finite: Vec<(f64, f64, f64)> = points
        .iter()
        .copied()
        .filter(|(r, m, c)| r.is_finite() && m.is_finite() && c.is_finite())
        .collect();
    if finite.is_empty() {
        return img;
    }
    let (r_lo, r_hi) = span(finite.iter().map(|p| p.0));
    let (y_lo, y_hi) = span(finite.iter().flat_map(|p| [p.1 - p.2, p.1 + p.2]));
    let (y_lo, y_hi) = (
        y_lo.floor().max(0.0),
        y_hi.ceil().min(100.0).max(y_lo.floor() + 1.0),
    );
    let x_of = |r: f64| {
        if r_hi > r_lo {
            left + 16 + ((r - r_lo) / (r_hi - r_lo) * (right - left - 32) as f64) as i64
        } else {
            (left + right) / 2
        }
    };
    let y_of = |v: f64| bottom - ((v - y_lo) / (y_hi - y_lo) * (bottom - top) as f64) as i64;
    canvas::text(&mut img, 4, top, &format!("{y_hi:.0}"), SCALE, INK);
    canvas::text(&mut img, 4, bottom - 10, &format!("{y_lo:.0}"), SCALE, INK);
    for pair in finite.windows(2) {
        canvas::line(
            &mut img,
            (x_of(pair[0].0), y_of(pair[0].1)),
            (x_of(pair[1].0), y_of(pair[1].1)),
            2,
            INK,
        );
    }
    for &(r, mean, ci) in &finite {
        let x = x_of(r);
        canvas::line(
            &mut img,
            (x, y_of(mean - ci)),
            (x, y_of(mean + ci)),
            1,
            MARK,
        );
        canvas::fill(&mut img, x - 4, y_of(mean) - 4, 9, 9, MARK);
        let label = format!("{r:.1}");
        let w = i64::from(canvas::text_width(&label, SCALE));
        canvas::text(&mut img, x - w / 2, bottom + 8, &label, SCALE, INK);
    }
    img
}

fn span(values: impl Iterator<Item = f64>) -> (f64, f64) {
    values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_land_where_their_values_say() {
        let img = accuracy_plot(&[(0.5, 40.0, 2.0), (0.7, 60.0, 2.0), (0.9, 50.0, 2.0)]);
        assert_eq!(img.dimensions(), (WIDTH, HEIGHT));
        // The highest mean (r = 0.7, the middle point) is drawn highest: its marker's row is
        // above the others'.
        let marker_rows = |x: u32| {
            (0..HEIGHT)
                .filter(|&y| img.get_pixel(x, y) == &MARK)
                .collect::<Vec<_>>()
        };
        let middle = (MARGIN as u32 + WIDTH - MARGIN as u32 / 2) / 2;
        let first = MARGIN as u32 + 16;
        let (m, f) = (marker_rows(middle), marker_rows(first));
        assert!(!m.is_empty() && !f.is_empty());
        assert!(m[0] < f[0], "{m:?} vs {f:?}");
        // Nothing to draw: an empty frame, no panic.
        let empty = accuracy_plot(&[(f64::NAN, 1.0, 0.0)]);
        assert!(empty.pixels().all(|p| p != &MARK));
    }
}
