//! The traditional augmentations the paper's few-shot baselines use, seeded: weak (a random
//! resized crop of 20–100 % of the area, then a horizontal flip half the time) and strong (weak,
//! then colour jitter, grayscale and Gaussian blur), after torchvision's recipes; and the two
//! that mix a pair of images, CutMix and MixUp, with the share λ of the first image that labels
//! the result.
//!
//! torchvision applies colour jitter's four parts in a random order; here they run in a fixed
//! order (brightness, contrast, saturation, hue), which draws from the same distribution of
//! factors and keeps one seed's output independent of anything but the seed.

use image::{imageops, Rgb, RgbImage};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

/// Which recipe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Augmentation {
    /// `RandomResizedCrop(scale = (0.2, 1.0))` + `RandomHorizontalFlip()`.
    Weak,
    /// Weak, then `ColorJitter(0.4, 0.4, 0.4, 0.1)` with p = 0.8, `RandomGrayscale(0.2)` and
    /// `GaussianBlur(σ ∈ [0.1, 2])` with p = 0.5.
    Strong,
}

/// How two images are mixed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageMix {
    /// CutMix (Yun et al., 2019): a box of the second image pasted into the first; λ is the
    /// first image's share of the area.
    CutMix,
    /// MixUp (Zhang et al., 2018): λ·first + (1 − λ)·second, pixel by pixel.
    MixUp,
}

/// `first` and `second` (each centre-cropped and resized to `size` × `size`) mixed with λ drawn
/// from Beta(1, 1) — uniform, CutMix's α = 1 and MixUp's for small datasets — with `seed`; returns
/// the image and λ, the weight of `first`'s label (1 − λ is `second`'s). For CutMix λ is the
/// share of the area the box left to `first`, as the CutMix paper corrects it.
pub fn mix_pair(
    first: &RgbImage,
    second: &RgbImage,
    kind: ImageMix,
    size: u32,
    seed: u64,
) -> (RgbImage, f64) {
    let mut rng = Draws(ChaCha8Rng::seed_from_u64(seed));
    let (mut out, other) = (square(first, size), square(second, size));
    let lambda = rng.unit();
    match kind {
        ImageMix::MixUp => {
            for (p, q) in out.pixels_mut().zip(other.pixels()) {
                for (a, &b) in p.0.iter_mut().zip(&q.0) {
                    let v = lambda * f64::from(*a) + (1.0 - lambda) * f64::from(b);
                    *a = v.round().clamp(0.0, 255.0) as u8;
                }
            }
            (out, lambda)
        }
        ImageMix::CutMix => {
            // The box has sides √(1 − λ)·size around a uniform centre, clipped to the image.
            let cut = (f64::from(size) * (1.0 - lambda).sqrt()).round() as i64;
            let (cx, cy) = (
                i64::from(rng.upto(size.saturating_sub(1))),
                i64::from(rng.upto(size.saturating_sub(1))),
            );
            let clip = |c: i64| c.clamp(0, i64::from(size)) as u32;
            let (x0, x1) = (clip(cx - cut / 2), clip(cx + cut - cut / 2));
            let (y0, y1) = (clip(cy - cut / 2), clip(cy + cut - cut / 2));
            for y in y0..y1 {
                for x in x0..x1 {
                    out.put_pixel(x, y, *other.get_pixel(x, y));
                }
            }
            let area = f64::from((x1 - x0) * (y1 - y0));
            let total = f64::from(size) * f64::from(size);
            let lambda = if total > 0.0 { 1.0 - area / total } else { 1.0 };
            (out, lambda)
        }
    }
}

/// The central square of `image` resized to `size` × `size` (black for an empty image).
fn square(image: &RgbImage, size: u32) -> RgbImage {
    let (w, h) = image.dimensions();
    if w == 0 || h == 0 {
        return RgbImage::new(size, size);
    }
    let side = w.min(h);
    let crop = imageops::crop_imm(image, (w - side) / 2, (h - side) / 2, side, side).to_image();
    imageops::resize(&crop, size, size, imageops::FilterType::Triangle)
}

/// One augmented copy of `image`, `size` × `size`, drawn with `seed`.
pub fn augment(image: &RgbImage, kind: Augmentation, size: u32, seed: u64) -> RgbImage {
    if image.width() == 0 || image.height() == 0 {
        // Nothing to crop: a black image of the size asked for, rather than a panic.
        return RgbImage::new(size, size);
    }
    let mut rng = Draws(ChaCha8Rng::seed_from_u64(seed));
    let mut out = resized_crop(image, size, &mut rng);
    if rng.chance(0.5) {
        imageops::flip_horizontal_in_place(&mut out);
    }
    if kind == Augmentation::Strong {
        if rng.chance(0.8) {
            let brightness = rng.uniform(0.6, 1.4);
            let contrast = rng.uniform(0.6, 1.4);
            let saturation = rng.uniform(0.6, 1.4);
            let hue = rng.uniform(-0.1, 0.1);
            jitter(&mut out, brightness, contrast, saturation, hue);
        }
        if rng.chance(0.2) {
            for p in out.pixels_mut() {
                let g = luma(p);
                *p = Rgb([g, g, g]);
            }
        }
        if rng.chance(0.5) {
            out = imageops::blur(&out, rng.uniform(0.1, 2.0) as f32);
        }
    }
    out
}

/// Uniform draws from a seeded stream.
struct Draws(ChaCha8Rng);

impl Draws {
    fn unit(&mut self) -> f64 {
        (self.0.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn uniform(&mut self, low: f64, high: f64) -> f64 {
        low + (high - low) * self.unit()
    }

    fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// An integer in `0..=max`.
    fn upto(&mut self, max: u32) -> u32 {
        (self.0.next_u64() % (u64::from(max) + 1)) as u32
    }
}

/// torchvision's `RandomResizedCrop`: ten tries at a box of 20–100 % of the area with an
/// aspect ratio in [3/4, 4/3] (log-uniform), else the central box of the nearest allowed ratio.
fn resized_crop(image: &RgbImage, size: u32, rng: &mut Draws) -> RgbImage {
    let (w, h) = image.dimensions();
    let area = f64::from(w) * f64::from(h);
    let (log_low, log_high) = ((3.0f64 / 4.0).ln(), (4.0f64 / 3.0).ln());
    let mut chosen = None;
    for _ in 0..10 {
        let target = area * rng.uniform(0.2, 1.0);
        let ratio = rng.uniform(log_low, log_high).exp();
        let cw = (target * ratio).sqrt().round() as u32;
        let ch = (target / ratio).sqrt().round() as u32;
        if cw > 0 && ch > 0 && cw <= w && ch <= h {
            let x = rng.upto(w - cw);
            let y = rng.upto(h - ch);
            chosen = Some((x, y, cw, ch));
            break;
        }
    }
    let (x, y, cw, ch) = chosen.unwrap_or_else(|| {
        let ratio = f64::from(w) / f64::from(h.max(1));
        let (cw, ch) = if ratio < 3.0 / 4.0 {
            (w, (f64::from(w) * 4.0 / 3.0).round() as u32)
        } else if ratio > 4.0 / 3.0 {
            ((f64::from(h) * 4.0 / 3.0).round() as u32, h)
        } else {
            (w, h)
        };
        let (cw, ch) = (cw.clamp(1, w.max(1)), ch.clamp(1, h.max(1)));
        ((w - cw) / 2, (h - ch) / 2, cw, ch)
    });
    let crop = imageops::crop_imm(image, x, y, cw, ch).to_image();
    imageops::resize(&crop, size, size, imageops::FilterType::Triangle)
}

/// ITU-R 601 luma, as torchvision's grayscale.
fn luma(p: &Rgb<u8>) -> u8 {
    let [r, g, b] = p.0.map(f64::from);
    (0.299 * r + 0.587 * g + 0.114 * b)
        .round()
        .clamp(0.0, 255.0) as u8
}

/// Brightness and contrast scale about black and the mean grey, saturation about each pixel's
/// grey, and hue rotates by `hue` turns.
fn jitter(image: &mut RgbImage, brightness: f64, contrast: f64, saturation: f64, hue: f64) {
    let clamp = |v: f64| v.clamp(0.0, 255.0);
    for p in image.pixels_mut() {
        for c in &mut p.0 {
            *c = clamp(f64::from(*c) * brightness).round() as u8;
        }
    }
    let n = f64::from(image.width() * image.height()).max(1.0);
    let mean = image.pixels().map(|p| f64::from(luma(p))).sum::<f64>() / n;
    for p in image.pixels_mut() {
        let mut rgb = p.0.map(|c| clamp(mean + (f64::from(c) - mean) * contrast));
        let grey = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2];
        for c in &mut rgb {
            *c = clamp(grey + (*c - grey) * saturation);
        }
        let rgb = rotate_hue(rgb, hue);
        p.0 = rgb.map(|c| c.round() as u8);
    }
}

/// Rotates the hue of an RGB colour (0–255 channels) by `turns` through HSV.
fn rotate_hue([r, g, b]: [f64; 3], turns: f64) -> [f64; 3] {
    let max = r.max(g).max(b);
    let min = r.min(g).min(b);
    let delta = max - min;
    if delta == 0.0 {
        return [r, g, b];
    }
    let h = if max == r {
        ((g - b) / delta).rem_euclid(6.0)
    } else if max == g {
        (b - r) / delta + 2.0
    } else {
        (r - g) / delta + 4.0
    };
    let h = (h / 6.0 + turns).rem_euclid(1.0) * 6.0;
    let s = delta / max;
    let (v, c) = (max, s * max);
    let x = c * (1.0 - ((h % 2.0) - 1.0).abs());
    let (r1, g1, b1) = match h as u32 {
        0 => (c, x, 0.0),
        1 => (x, c, 0.0),
        2 => (0.0, c, x),
        3 => (0.0, x, c),
        4 => (x, 0.0, c),
        _ => (c, 0.0, x),
    };
    let m = v - c;
    [r1 + m, g1 + m, b1 + m]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient() -> RgbImage {
        RgbImage::from_fn(40, 30, |x, y| Rgb([(x * 6) as u8, (y * 8) as u8, 90]))
    }

    #[test]
    fn augmentations_are_seeded_and_sized() {
        let img = gradient();
        for kind in [Augmentation::Weak, Augmentation::Strong] {
            let a = augment(&img, kind, 24, 5);
            assert_eq!(a.dimensions(), (24, 24));
            assert_eq!(a, augment(&img, kind, 24, 5));
            assert_ne!(a, augment(&img, kind, 24, 6));
        }
    }

    #[test]
    fn mixes_are_seeded_and_their_lambda_is_the_first_images_share() {
        let black = RgbImage::from_pixel(20, 20, Rgb([0, 0, 0]));
        let white = RgbImage::from_pixel(30, 20, Rgb([255, 255, 255]));
        let mut lambdas = Vec::new();
        for seed in 0..30 {
            for kind in [ImageMix::CutMix, ImageMix::MixUp] {
                let (out, lambda) = mix_pair(&black, &white, kind, 16, seed);
                assert_eq!(out.dimensions(), (16, 16));
                assert_eq!(
                    (out.clone(), lambda),
                    mix_pair(&black, &white, kind, 16, seed)
                );
                assert!((0.0..=1.0).contains(&lambda), "{lambda}");
                // Black's share of the brightness is λ: exactly the area for CutMix, up to
                // rounding each pixel for MixUp.
                let white_share =
                    out.pixels().map(|p| f64::from(p.0[0])).sum::<f64>() / (255.0 * 256.0);
                let tolerance = if kind == ImageMix::CutMix {
                    1e-12
                } else {
                    0.5 / 255.0
                };
                assert!(
                    (white_share - (1.0 - lambda)).abs() <= tolerance,
                    "{kind:?} {seed}: {white_share} vs {lambda}"
                );
                if kind == ImageMix::CutMix {
                    assert!(out.pixels().all(|p| p.0 == [0; 3] || p.0 == [255; 3]));
                }
                lambdas.push(lambda);
            }
        }
        // λ is drawn, not fixed.
        let spread = lambdas.iter().cloned().fold(0.0, f64::max)
            - lambdas.iter().cloned().fold(1.0, f64::min);
        assert!(spread > 0.5, "{lambdas:?}");
        assert_ne!(
            mix_pair(&black, &white, ImageMix::MixUp, 16, 1).1,
            mix_pair(&black, &white, ImageMix::MixUp, 16, 2).1
        );
    }

    #[test]
    fn weak_only_crops_and_flips() {
        // A crop of a flat image is that flat image; of a gradient, its values stay in range
        // and the blue channel is untouched.
        let flat = RgbImage::from_pixel(20, 20, Rgb([10, 200, 30]));
        let out = augment(&flat, Augmentation::Weak, 16, 1);
        assert!(out.pixels().all(|p| p.0 == [10, 200, 30]));
        for seed in 0..20 {
            let out = augment(&gradient(), Augmentation::Weak, 16, seed);
            assert!(out
                .pixels()
                .all(|p| p.0[2] == 90 && p.0[0] <= 234 && p.0[1] <= 232));
        }
    }

    #[test]
    fn strong_greys_about_a_fifth_and_changes_colours() {
        let img = gradient();
        let draws = 400;
        let grey = (0..draws)
            .filter(|&s| {
                augment(&img, Augmentation::Strong, 16, s)
                    .pixels()
                    .all(|p| p.0[0] == p.0[1] && p.0[1] == p.0[2])
            })
            .count();
        let share = grey as f64 / draws as f64;
        assert!((0.13..0.27).contains(&share), "grey share {share}");
        let changed = (0..50)
            .filter(|&s| {
                augment(&img, Augmentation::Strong, 16, s)
                    .pixels()
                    .any(|p| p.0[2] != 90)
            })
            .count();
        assert!(changed > 40, "{changed} of 50 strong copies changed colour");
    }

    #[test]
    fn an_empty_image_gives_a_black_one() {
        let empty = RgbImage::new(0, 7);
        for kind in [Augmentation::Weak, Augmentation::Strong] {
            let out = augment(&empty, kind, 8, 1);
            assert_eq!(out.dimensions(), (8, 8));
            assert!(out.pixels().all(|p| p.0 == [0, 0, 0]));
        }
    }

    #[test]
    fn hue_rotation_is_a_rotation() {
        let red = [255.0, 0.0, 0.0];
        let green = rotate_hue(red, 1.0 / 3.0);
        assert!(
            (green[1] - 255.0).abs() < 1e-9 && green[0].abs() < 1e-9,
            "{green:?}"
        );
        let back = rotate_hue(green, -1.0 / 3.0);
        assert!((back[0] - 255.0).abs() < 1e-9, "{back:?}");
        assert_eq!(rotate_hue([7.0, 7.0, 7.0], 0.3), [7.0, 7.0, 7.0]);
    }
}
