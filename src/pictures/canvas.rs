//! Drawing on an RGB image: filled rectangles, frames, lines and text, clipped to the image.

use image::{Rgb, RgbImage};

use super::font::{glyph, GLYPH_HEIGHT, GLYPH_WIDTH};

pub(super) const WHITE: Rgb<u8> = Rgb([255, 255, 255]);
pub(super) const INK: Rgb<u8> = Rgb([20, 20, 20]);
pub(super) const GREY: Rgb<u8> = Rgb([170, 170, 170]);
/// The mark of r*: an orange that reads on photos and on white.
pub(super) const MARK: Rgb<u8> = Rgb([230, 110, 0]);

pub(super) fn fill(img: &mut RgbImage, x: i64, y: i64, w: u32, h: u32, color: Rgb<u8>) {
    let (iw, ih) = (i64::from(img.width()), i64::from(img.height()));
    for py in y.max(0)..(y + i64::from(h)).min(ih) {
        for px in x.max(0)..(x + i64::from(w)).min(iw) {
            img.put_pixel(px as u32, py as u32, color);
        }
    }
}

/// A frame `thickness` pixels wide just inside the rectangle.
pub(super) fn frame(
    img: &mut RgbImage,
    x: i64,
    y: i64,
    w: u32,
    h: u32,
    thickness: u32,
    color: Rgb<u8>,
) {
    let t = i64::from(thickness);
    fill(img, x, y, w, thickness, color);
    fill(img, x, y + i64::from(h) - t, w, thickness, color);
    fill(img, x, y, thickness, h, color);
    fill(img, x + i64::from(w) - t, y, thickness, h, color);
}

/// A line `width` pixels thick from (x0, y0) to (x1, y1).
pub(super) fn line(
    img: &mut RgbImage,
    from: (i64, i64),
    to: (i64, i64),
    width: u32,
    color: Rgb<u8>,
) {
    let (mut x, mut y) = from;
    let (dx, dy) = ((to.0 - x).abs(), -(to.1 - y).abs());
    let (sx, sy) = (if x < to.0 { 1 } else { -1 }, if y < to.1 { 1 } else { -1 });
    let mut err = dx + dy;
    let half = i64::from(width / 2);
    loop {
        fill(img, x - half, y - half, width, width, color);
        if (x, y) == to {
            break;
        }
        let e2 = 2 * err;
        if e2 >= dy {
            err += dy;
            x += sx;
        }
        if e2 <= dx {
            err += dx;
            y += sy;
        }
    }
}

/// The width in pixels of `text` drawn at `scale`.
pub(super) fn text_width(text: &str, scale: u32) -> u32 {
    let n = text.chars().count() as u32;
    (n * (GLYPH_WIDTH + 1)).saturating_sub(1) * scale
}

pub(super) fn text_height(scale: u32) -> u32 {
    GLYPH_HEIGHT * scale
}

/// Draws `text` with its top-left corner at (x, y).
pub(super) fn text(img: &mut RgbImage, x: i64, y: i64, text: &str, scale: u32, color: Rgb<u8>) {
    let s = i64::from(scale);
    for (n, c) in text.chars().enumerate() {
        let left = x + n as i64 * i64::from(GLYPH_WIDTH + 1) * s;
        for (row, bits) in glyph(c).iter().enumerate() {
            for col in 0..GLYPH_WIDTH {
                if bits & (0b100 >> col) != 0 {
                    fill(
                        img,
                        left + i64::from(col) * s,
                        y + row as i64 * s,
                        scale,
                        scale,
                        color,
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drawing_is_clipped_and_text_has_the_promised_size() {
        let mut img = RgbImage::from_pixel(20, 10, WHITE);
        fill(&mut img, -5, -5, 100, 100, INK);
        assert!(img.pixels().all(|p| *p == INK));
        let mut img = RgbImage::from_pixel(40, 20, WHITE);
        let origin = 1;
        text(
            &mut img,
            i64::from(origin),
            i64::from(origin),
            "0.5",
            2,
            INK,
        );
        let inked: Vec<(u32, u32)> = img
            .enumerate_pixels()
            .filter(|(_, _, p)| **p == INK)
            .map(|(x, y, _)| (x, y))
            .collect();
        let max_x = inked.iter().map(|p| p.0).max().unwrap();
        let max_y = inked.iter().map(|p| p.1).max().unwrap();
        assert_eq!(max_x + 1 - origin, text_width("0.5", 2));
        assert_eq!(max_y + 1 - origin, text_height(2));
        let mut img = RgbImage::from_pixel(10, 10, WHITE);
        line(&mut img, (0, 0), (9, 9), 1, INK);
        assert!((0..10).all(|i| *img.get_pixel(i, i) == INK));
    }
}
