//! Deterministic drawn-shape images: a long-tailed classification dataset made in code.
//!
//! Examples, tests and benches need a labelled, class-imbalanced image set that exists without
//! network access, downloads or licences, and that is the same on every machine. Each class is
//! one shape (its label), drawn with random placement, size, rotation and colour on a random
//! background: plain, a gradient, stripes, checks, dots or waves, in colours of its own. The
//! backgrounds, colours and textures are shared by every class, so only the shape tells the
//! class: a hard negative that keeps a source's background and colours but shows another
//! shape is a meaningful one (the shapes model, `genie::diffusion::shapes`, was trained on
//! these images). Everything is a pure function of its arguments.

use std::path::{Path, PathBuf};

use image::{ImageFormat, Rgb, RgbImage};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

/// Class names in label order; also the folder names [`write_image_folder`] uses.
pub const CLASS_NAMES: [&str; 10] = [
    "circle", "square", "triangle", "cross", "ring", "diamond", "star", "crescent", "heart",
    "arrow",
];
/// Background styles, shared by every class.
pub const BACKGROUNDS: [&str; 6] = ["plain", "gradient", "stripes", "checks", "dots", "waves"];
/// Smallest image side [`render`] accepts: below this the shapes are no longer recognisable.
pub const MIN_SIZE: u32 = 8;
/// Largest image side [`render`] accepts, to keep generation cheap.
pub const MAX_SIZE: u32 = 1024;

/// Why a synthetic image or dataset could not be made or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SyntheticError {
    /// A class index past the shapes.
    #[error("unknown class {class}: there are {} classes", CLASS_NAMES.len())]
    UnknownClass {
        /// The index.
        class: usize,
    },
    /// An image size outside the range drawn.
    #[error("image size {size} is outside {MIN_SIZE}..={MAX_SIZE}")]
    SizeOutOfRange {
        /// The size.
        size: u32,
    },
    /// A folder cannot be created.
    #[error("cannot create directory {path}: {source}")]
    Io {
        /// The folder.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// An image cannot be written.
    #[error("cannot write image {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The encoder's error.
        #[source]
        source: image::ImageError,
    },
}

/// One labelled image.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntheticItem {
    /// The picture.
    pub image: RgbImage,
    /// Its class index.
    pub label: usize,
}

// Separate seed streams so a balanced test split never reuses a long-tail training image.
const LONG_TAIL_STREAM: u64 = 0x4c4f_4e47_5441_494c;
const BALANCED_STREAM: u64 = 0x4241_4c41_4e43_4544;

/// Draws one image of `class` (an index into [`CLASS_NAMES`]) with side `size`.
///
/// Position, scale, rotation, the background style and its texture, all colours and the pixel
/// noise come from a ChaCha8 stream seeded by `(class, seed)`.
pub fn render(class: usize, seed: u64, size: u32) -> Result<RgbImage, SyntheticError> {
    render_on(class, seed, size, None)
}

/// [`render`] with the background style forced (an index into [`BACKGROUNDS`]), e.g. to compare
/// shapes on plain backgrounds.
pub fn render_on(
    class: usize,
    seed: u64,
    size: u32,
    background: Option<usize>,
) -> Result<RgbImage, SyntheticError> {
    if class >= CLASS_NAMES.len() {
        return Err(SyntheticError::UnknownClass { class });
    }
    if !(MIN_SIZE..=MAX_SIZE).contains(&size) {
        return Err(SyntheticError::SizeOutOfRange { size });
    }
    let mut rng = ChaCha8Rng::seed_from_u64(mix(seed, class as u64));
    let shape = Shape::sample(class, &mut rng);
    let mut backdrop = Backdrop::sample(&mut rng);
    if let Some(style) = background {
        backdrop.style = style.min(BACKGROUNDS.len() - 1);
    }
    let fg = foreground(&mut rng, &backdrop.colours);
    // One pixel in local shape units: the width of the anti-aliased edge, so shapes look the
    // same (not jagged or blurred) at every size.
    let aa = 2.0 / size as f32 / shape.scale;
    let aa_image = 2.0 / size as f32;
    let mut img = RgbImage::new(size, size);
    for (x, y, px) in img.enumerate_pixels_mut() {
        let u = 2.0 * (x as f32 + 0.5) / size as f32 - 1.0;
        let v = 2.0 * (y as f32 + 0.5) / size as f32 - 1.0;
        let cover = shape.coverage(u, v, aa);
        let bg = backdrop.colour(u, v, aa_image);
        let noise = rng.next_u32().to_le_bytes();
        *px = Rgb(std::array::from_fn(|c| {
            let base = bg[c] + cover * (f32::from(fg[c]) - bg[c]);
            let jitter = f32::from(noise[c] % 25) - 12.0;
            (base + jitter).round().clamp(0.0, 255.0) as u8
        }));
    }
    Ok(img)
}

/// Per-class counts falling exponentially from `max` (class 0) to `min` (last class), like
/// CIFAR-10-LT with imbalance ratio `max / min`: `round(max * (min / max)^(i / (classes - 1)))`.
///
/// `classes == 0` gives an empty vector and `classes == 1` gives `[max]`. A `min` above `max` is
/// clamped to `max` (a flat, balanced profile), so the result never increases. `min == 0` keeps
/// `max` for class 0 and gives 0 to every other class (the limit of the formula).
pub fn long_tail_counts(classes: usize, max: usize, min: usize) -> Vec<usize> {
    let min = min.min(max);
    if classes <= 1 || max == 0 {
        return vec![max; classes];
    }
    let ratio = min as f64 / max as f64;
    let last = (classes - 1) as f64;
    (0..classes)
        .map(|i| {
            let n = (max as f64 * ratio.powf(i as f64 / last)).round() as usize;
            n.clamp(min, max)
        })
        .collect()
}

/// `counts[c]` images of class `c`, class by class; `counts` may name at most 10 classes.
pub fn long_tail_dataset(
    counts: &[usize],
    size: u32,
    seed: u64,
) -> Result<Vec<SyntheticItem>, SyntheticError> {
    dataset(counts, size, seed, LONG_TAIL_STREAM)
}

/// `per_class` images of each of the first `classes` classes, from a seed stream disjoint from
/// [`long_tail_dataset`]'s, so it can serve as the held-out split for the same `seed`.
pub fn balanced_dataset(
    per_class: usize,
    classes: usize,
    size: u32,
    seed: u64,
) -> Result<Vec<SyntheticItem>, SyntheticError> {
    dataset(&vec![per_class; classes], size, seed, BALANCED_STREAM)
}

/// Writes `dir/<class_name>/<index:05>.png`, the layout burn's `ImageFolderDataset` reads;
/// `index` is the item's position in `items`, so file names are unique and map back to `items`.
pub fn write_image_folder(items: &[SyntheticItem], dir: &Path) -> Result<(), SyntheticError> {
    // Check every label first so a bad item does not leave a half-written folder behind.
    if let Some(bad) = items.iter().find(|it| it.label >= CLASS_NAMES.len()) {
        return Err(SyntheticError::UnknownClass { class: bad.label });
    }
    for name in CLASS_NAMES {
        let path = dir.join(name);
        std::fs::create_dir_all(&path).map_err(|source| SyntheticError::Io { path, source })?;
    }
    for (index, item) in items.iter().enumerate() {
        let path = dir
            .join(CLASS_NAMES[item.label])
            .join(format!("{index:05}.png"));
        item.image
            .save_with_format(&path, ImageFormat::Png)
            .map_err(|source| SyntheticError::Write { path, source })?;
    }
    Ok(())
}

fn dataset(
    counts: &[usize],
    size: u32,
    seed: u64,
    stream: u64,
) -> Result<Vec<SyntheticItem>, SyntheticError> {
    if let Some(class) = counts.get(CLASS_NAMES.len()).map(|_| CLASS_NAMES.len()) {
        return Err(SyntheticError::UnknownClass { class });
    }
    let mut items = Vec::with_capacity(counts.iter().sum());
    for (label, &count) in counts.iter().enumerate() {
        for index in 0..count {
            let item_seed = mix(mix(mix(seed, stream), label as u64), index as u64);
            items.push(SyntheticItem {
                image: render(label, item_seed, size)?,
                label,
            });
        }
    }
    Ok(items)
}

/// SplitMix64 finaliser over a running hash: nearby inputs (seed 1 vs 2, class 3 vs 4) give
/// unrelated outputs, which `seed_from_u64` alone does not promise for the derived item seeds.
fn mix(acc: u64, value: u64) -> u64 {
    const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;
    const M1: u64 = 0xbf58_476d_1ce4_e5b9;
    const M2: u64 = 0x94d0_49bb_1331_11eb;
    // Multiplying `value` before the xor keeps mix(a, b) and mix(b, a) apart.
    let mut z = acc ^ value.wrapping_add(GOLDEN).wrapping_mul(M1);
    z = (z ^ (z >> 30)).wrapping_mul(M1);
    z = (z ^ (z >> 27)).wrapping_mul(M2);
    z ^ (z >> 31)
}

/// Uniform in `[lo, hi)` from the top 24 bits, which an f32 represents exactly.
fn uniform(rng: &mut ChaCha8Rng, lo: f32, hi: f32) -> f32 {
    lo + (hi - lo) * (rng.next_u32() >> 8) as f32 / (1u32 << 24) as f32
}

fn luma(c: [u8; 3]) -> f32 {
    0.299 * f32::from(c[0]) + 0.587 * f32::from(c[1]) + 0.114 * f32::from(c[2])
}

fn random_colour(rng: &mut ChaCha8Rng) -> [u8; 3] {
    std::array::from_fn(|_| (rng.next_u32() >> 24) as u8)
}

/// A foreground with a luminance gap of at least 70 to both background colours, so the shape is
/// visible in grayscale too; bright or dark says nothing about the class.
fn foreground(rng: &mut ChaCha8Rng, background: &[[u8; 3]; 2]) -> [u8; 3] {
    for _ in 0..64 {
        let fg = random_colour(rng);
        if background
            .iter()
            .all(|&bg| (luma(fg) - luma(bg)).abs() >= 70.0)
        {
            return fg;
        }
    }
    // Rare (a background spanning mid-grey): black or white, whichever is farther.
    let mean = (luma(background[0]) + luma(background[1])) / 2.0;
    if mean > 127.0 {
        [0, 0, 0]
    } else {
        [255, 255, 255]
    }
}

/// A background: one of [`BACKGROUNDS`], in two related colours.
struct Backdrop {
    style: usize,
    colours: [[u8; 3]; 2],
    /// Direction of gradients, stripes and waves, and the rotation of checks and dots.
    cos: f32,
    sin: f32,
    /// Texture period in image half-widths.
    period: f32,
    phase: (f32, f32),
}

impl Backdrop {
    fn sample(rng: &mut ChaCha8Rng) -> Self {
        let style = (rng.next_u32() % BACKGROUNDS.len() as u32) as usize;
        let a = random_colour(rng);
        // The second colour is the first, shifted: a textured background reads as one colour
        // family, and the foreground can stand apart from both.
        let shift = uniform(rng, 35.0, 80.0) * if luma(a) > 127.0 { -1.0 } else { 1.0 };
        let b = a.map(|c| (f32::from(c) + shift).clamp(0.0, 255.0) as u8);
        let angle = uniform(rng, 0.0, std::f32::consts::TAU);
        Backdrop {
            style,
            colours: [a, b],
            cos: angle.cos(),
            sin: angle.sin(),
            period: uniform(rng, 0.22, 0.45),
            phase: (uniform(rng, 0.0, 1.0), uniform(rng, 0.0, 1.0)),
        }
    }

    /// The background's colour at image coordinates `(u, v)`, each in -1..1.
    fn colour(&self, u: f32, v: f32, aa: f32) -> [f32; 3] {
        let (s, t) = (self.cos * u + self.sin * v, -self.sin * u + self.cos * v);
        let p = self.period;
        // Soft-edged band of half of each period, 1 inside.
        let band = |w: f32, phase: f32| {
            let d = ((w / p + phase).rem_euclid(1.0) - 0.5).abs() * p - 0.25 * p;
            (0.5 - d / aa).clamp(0.0, 1.0)
        };
        let mix = match self.style {
            0 => 0.0,
            1 => (0.5 + 0.5 * s).clamp(0.0, 1.0),
            2 => band(s, self.phase.0),
            3 => {
                let (x, y) = (band(s, self.phase.0), band(t, self.phase.1));
                x + y - 2.0 * x * y
            }
            4 => {
                let cell = |w: f32, phase: f32| ((w / p + phase).rem_euclid(1.0) - 0.5) * p;
                let d = cell(s, self.phase.0).hypot(cell(t, self.phase.1)) - 0.25 * p;
                (0.5 - d / aa).clamp(0.0, 1.0)
            }
            _ => {
                let k = std::f32::consts::TAU / (2.0 * p);
                0.5 + 0.5
                    * ((k * s + self.phase.0 * 6.0).sin() * (k * t + self.phase.1 * 6.0).sin())
            }
        };
        let [a, b] = self.colours;
        std::array::from_fn(|c| f32::from(a[c]) + mix * (f32::from(b[c]) - f32::from(a[c])))
    }
}

/// A class's shape after its random draws: where its local frame is, how big and turned.
struct Shape {
    class: usize,
    centre: (f32, f32),
    /// Local units per image half-width: shapes have radius about 1 in local units.
    scale: f32,
    cos: f32,
    sin: f32,
}

impl Shape {
    fn sample(class: usize, rng: &mut ChaCha8Rng) -> Self {
        let scale = uniform(rng, 0.45, 0.72);
        let reach = (0.95 - scale).max(0.0);
        let centre = (uniform(rng, -reach, reach), uniform(rng, -reach, reach));
        // Square and diamond turn only a little (a square at 45° would be a diamond); hearts
        // stay upright-ish.
        let angle = match class {
            1 | 5 => uniform(rng, -0.35, 0.35),
            8 => uniform(rng, -0.5, 0.5),
            _ => uniform(rng, 0.0, std::f32::consts::TAU),
        };
        Shape {
            class,
            centre,
            scale,
            cos: angle.cos(),
            sin: angle.sin(),
        }
    }

    /// How much of the pixel at image coordinates `(u, v)` (each in -1..1) is the shape.
    fn coverage(&self, u: f32, v: f32, aa: f32) -> f32 {
        let du = (u - self.centre.0) / self.scale;
        let dv = (v - self.centre.1) / self.scale;
        let x = self.cos * du + self.sin * dv;
        let y = -self.sin * du + self.cos * dv;
        // Signed distance (negative inside) turned into a one-pixel-wide soft edge.
        (0.5 - self.distance(x, y) / aa).clamp(0.0, 1.0)
    }

    /// Signed distance to the class's outline (`y` grows downwards); exact or a close bound
    /// near edges, which is all anti-aliasing needs.
    fn distance(&self, x: f32, y: f32) -> f32 {
        let (ax, ay) = (x.abs(), y.abs());
        match self.class {
            0 => x.hypot(y) - 1.0,
            1 => ax.max(ay) - 0.85,
            2 => {
                // Equilateral triangle, inradius 0.55: the farthest of its three edge lines.
                let (s, c) = (0.866_025_4_f32, 0.5_f32);
                (-y).max(c * y + s * x).max(c * y - s * x) - 0.55
            }
            3 => (ax - 1.0).max(ay - 0.28).min((ax - 0.28).max(ay - 1.0)),
            4 => (x.hypot(y) - 0.75).abs() - 0.22,
            5 => {
                // Tall rhombus, half-width A and half-height B: distance to its edge lines.
                const A: f32 = 0.65;
                const B: f32 = 1.05;
                (ax / A + ay / B - 1.0) * A * B / (A * A + B * B).sqrt()
            }
            6 => star(x, -y, 1.0, 0.42),
            7 => (x.hypot(y) - 1.0).max(0.8 - (x - 0.45).hypot(y)),
            8 => heart(x / 1.7, (0.85 - y) / 1.7) * 1.7,
            _ => {
                // Shaft and head, pointing along +x.
                let shaft = (x + 0.35).abs().max(0.0) - 0.6;
                let shaft = shaft.max(ay - 0.2);
                let head_back = 0.15 - x;
                // Edges from (0.15, ±0.65) to (1.0, 0).
                let (nx, ny) = (0.65f32, 0.85f32);
                let n = nx.hypot(ny);
                let edge = (nx * (x - 1.0) + ny * ay) / n;
                shaft.min(head_back.max(edge))
            }
        }
    }
}

/// Inigo Quilez's exact signed distance to a five-pointed star of outer radius `r` and inner
/// ratio `rf`, `y` up.
fn star(x: f32, y: f32, r: f32, rf: f32) -> f32 {
    const K1: (f32, f32) = (0.809_017, -0.587_785_24);
    const K2: (f32, f32) = (-0.809_017, -0.587_785_24);
    let (mut px, mut py) = (x.abs(), y);
    let d1 = 2.0 * (K1.0 * px + K1.1 * py).max(0.0);
    px -= d1 * K1.0;
    py -= d1 * K1.1;
    let d2 = 2.0 * (K2.0 * px + K2.1 * py).max(0.0);
    px -= d2 * K2.0;
    py -= d2 * K2.1;
    px = px.abs();
    py -= r;
    let (bax, bay) = (-rf * K1.1, rf * K1.0 - 1.0);
    let h = ((px * bax + py * bay) / (bax * bax + bay * bay)).clamp(0.0, r);
    let (dx, dy) = (px - bax * h, py - bay * h);
    dx.hypot(dy) * (py * bax - px * bay).signum()
}

/// Inigo Quilez's exact signed distance to a heart whose tip is at the origin and whose lobes
/// reach about y = 1 (`y` up).
fn heart(x: f32, y: f32) -> f32 {
    let px = x.abs();
    let dot2 = |a: f32, b: f32| a * a + b * b;
    if y + px > 1.0 {
        return dot2(px - 0.25, y - 0.75).sqrt() - std::f32::consts::SQRT_2 / 4.0;
    }
    let m = 0.5 * (px + y).max(0.0);
    dot2(px, y - 1.0).min(dot2(px - m, y - m)).sqrt() * (px - y).signum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_arguments_same_pixels_and_seed_matters() {
        for class in 0..CLASS_NAMES.len() {
            let a = render(class, 42, 32).unwrap();
            assert_eq!(a.as_raw(), render(class, 42, 32).unwrap().as_raw());
            assert_ne!(a.as_raw(), render(class, 43, 32).unwrap().as_raw());
        }
        assert_ne!(render(0, 1, 32).unwrap(), render(1, 1, 32).unwrap());
    }

    #[test]
    fn every_class_renders_at_small_medium_large_sizes() {
        for class in 0..CLASS_NAMES.len() {
            for size in [MIN_SIZE, 32, 512] {
                assert_eq!(render(class, 7, size).unwrap().dimensions(), (size, size));
            }
        }
        assert_eq!(render(9, 7, MAX_SIZE).unwrap().width(), MAX_SIZE);
    }

    #[test]
    fn bad_class_and_size_are_errors() {
        use SyntheticError::{SizeOutOfRange, UnknownClass};
        assert!(matches!(render(10, 0, 32), Err(UnknownClass { class: 10 })));
        assert!(matches!(render(0, 0, 7), Err(SizeOutOfRange { size: 7 })));
        assert!(matches!(
            render(0, 0, 1025),
            Err(SizeOutOfRange { size: 1025 })
        ));
        assert!(matches!(
            long_tail_dataset(&[1; 11], 16, 0),
            Err(UnknownClass { .. })
        ));
        assert!(matches!(
            balanced_dataset(1, 3, 4, 0),
            Err(SizeOutOfRange { .. })
        ));
        let mut bad = balanced_dataset(1, 1, 8, 0).unwrap();
        bad[0].label = 12;
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            write_image_folder(&bad, dir.path()),
            Err(UnknownClass { class: 12 })
        ));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn long_tail_counts_profile() {
        // CIFAR-10-LT's profile at imbalance ratio 100.
        assert_eq!(
            long_tail_counts(10, 500, 5),
            [500, 300, 180, 108, 65, 39, 23, 14, 8, 5]
        );
        let c = long_tail_counts(7, 1000, 10);
        assert_eq!((c.len(), c[0], c[6]), (7, 1000, 10));
        assert!(c.windows(2).all(|w| w[0] > w[1]), "{c:?}");
        assert_eq!(long_tail_counts(1, 9, 2), [9]);
        assert!(long_tail_counts(0, 9, 2).is_empty());
        assert_eq!(long_tail_counts(3, 4, 10), [4, 4, 4]);
        assert_eq!(long_tail_counts(3, 4, 0), [4, 0, 0]);
        assert_eq!(long_tail_counts(2, 0, 0), [0, 0]);
    }

    #[test]
    fn datasets_have_requested_counts_and_disjoint_streams() {
        let counts = long_tail_counts(10, 6, 1);
        let lt = long_tail_dataset(&counts, 16, 3).unwrap();
        for (label, &n) in counts.iter().enumerate() {
            assert_eq!(lt.iter().filter(|it| it.label == label).count(), n);
        }
        let bal = balanced_dataset(2, 10, 16, 3).unwrap();
        assert_eq!(bal.len(), 20);
        assert!(bal.iter().all(|b| lt.iter().all(|l| l.image != b.image)));
        assert!(lt.windows(2).all(|w| w[0].image != w[1].image));
    }

    #[test]
    fn image_folder_round_trip() {
        let items = balanced_dataset(2, 10, 16, 9).unwrap();
        let dir = tempfile::tempdir().unwrap();
        write_image_folder(&items, dir.path()).unwrap();
        for (index, item) in items.iter().enumerate() {
            let path = dir
                .path()
                .join(CLASS_NAMES[item.label])
                .join(format!("{index:05}.png"));
            let back = image::open(&path).unwrap().to_rgb8();
            assert_eq!(back, item.image, "{}", path.display());
        }
    }

    /// Features that ignore the random colours (bright-on-dark or dark-on-bright) and placement,
    /// so class means do not average away: minority-tone area, edge length, perimeter² / area
    /// (compactness), mid-tone area, how peaked the edge orientations are (straight edges versus
    /// curves), whether the shape covers its own centroid, and the orientation histogram.
    fn features(img: &RgbImage) -> Vec<f32> {
        let g = image::imageops::grayscale(img);
        let (lo, hi) = (g.iter().min().copied(), g.iter().max().copied());
        let (lo, hi) = (f32::from(lo.unwrap()), f32::from(hi.unwrap()));
        let n: Vec<f32> = g
            .iter()
            .map(|&v| (f32::from(v) - lo) / (hi - lo).max(1.0))
            .collect();
        let bright = n.iter().filter(|&&v| v > 0.5).count() as f32;
        let minority = bright.min(n.len() as f32 - bright);
        let midtone = n.iter().filter(|&&v| (0.25..0.75).contains(&v)).count() as f32;
        let (w, pi) = (img.width() as usize, std::f32::consts::PI);
        let mut hist = [0.0f32; 8];
        // Interior pixels only, so the central differences never wrap across rows.
        for i in (w..n.len() - w).filter(|i| (1..w - 1).contains(&(i % w))) {
            let (gx, gy) = (n[i + 1] - n[i - 1], n[i + w] - n[i - w]);
            let bin = (gy.atan2(gx).rem_euclid(pi) / pi * 8.0) as usize;
            hist[bin.min(7)] += gx.hypot(gy);
        }
        let edges: f32 = hist.iter().sum();
        let peak = hist.iter().fold(0.0f32, |m, &h| m.max(h)) / edges.max(1e-6);
        let compact = (edges * edges / (minority + 1.0)).ln();
        // Whether the minority tone's centroid lies in that tone (a star's does, a crescent's
        // or a ring's does not): the mean over the 3×3 pixels around it.
        let in_minority = |v: f32| (v > 0.5) == (bright <= n.len() as f32 - bright);
        let (mut sx, mut sy, mut count) = (0.0f32, 0.0f32, 0.0f32);
        for (i, &v) in n.iter().enumerate() {
            if in_minority(v) {
                sx += (i % w) as f32;
                sy += (i / w) as f32;
                count += 1.0;
            }
        }
        let (cx, cy) = (
            (sx / count.max(1.0)).round() as usize,
            (sy / count.max(1.0)).round() as usize,
        );
        let h = n.len() / w;
        let mut centre = 0.0f32;
        for dy in 0..3 {
            for dx in 0..3 {
                let (x, y) = (
                    (cx + dx).saturating_sub(1).min(w - 1),
                    (cy + dy).saturating_sub(1).min(h - 1),
                );
                centre += f32::from(u8::from(in_minority(n[y * w + x]))) / 9.0;
            }
        }
        let mut f = vec![minority, edges, compact, midtone, peak, centre];
        f.extend(hist.iter().map(|h| h / edges.max(1e-6)));
        f
    }

    #[test]
    fn backgrounds_are_shared_by_every_class() {
        // Every class is drawn on every background style, and a style's share is the same
        // across classes (within sampling noise): the background never tells the class.
        let n = 600;
        for (class, name) in CLASS_NAMES.iter().enumerate() {
            let mut counts = [0usize; BACKGROUNDS.len()];
            for seed in 0..n {
                let mut rng = ChaCha8Rng::seed_from_u64(mix(seed, class as u64));
                let _ = Shape::sample(class, &mut rng);
                counts[Backdrop::sample(&mut rng).style] += 1;
            }
            let expected = n as f64 / BACKGROUNDS.len() as f64;
            for (style, &c) in counts.iter().enumerate() {
                assert!(
                    (c as f64 - expected).abs() < 0.3 * expected,
                    "{name} on {}: {c} of {n}",
                    BACKGROUNDS[style]
                );
            }
        }
    }

    #[test]
    fn every_pair_of_classes_differs_in_some_feature() {
        // Effect size: two classes are clearly apart when some feature's class means differ by
        // well over one within-class standard deviation (pooled over the two classes).
        let n = 64;
        let stats: Vec<Vec<(f32, f32)>> = (0..CLASS_NAMES.len())
            .map(|class| {
                // The shapes alone: on plain backgrounds (textures are shared by every class).
                let fs: Vec<_> = (0..n)
                    .map(|s| features(&render_on(class, s, 32, Some(0)).unwrap()))
                    .collect();
                let column = |d: usize| fs.iter().map(move |f: &Vec<f32>| f[d]);
                (0..fs[0].len())
                    .map(|d| {
                        let mean = column(d).sum::<f32>() / n as f32;
                        let var = column(d).map(|v| (v - mean).powi(2)).sum::<f32>() / n as f32;
                        (mean, var)
                    })
                    .collect()
            })
            .collect();
        let mut closest = (f32::INFINITY, "", "");
        for a in 0..stats.len() {
            for b in a + 1..stats.len() {
                let effect = stats[a].iter().zip(&stats[b]).map(|((ma, va), (mb, vb))| {
                    (ma - mb).abs() / ((va + vb) / 2.0).sqrt().max(1e-6)
                });
                let effect = effect.fold(0.0, f32::max);
                if effect < closest.0 {
                    closest = (effect, CLASS_NAMES[a], CLASS_NAMES[b]);
                }
            }
        }
        let (d, a, b) = closest;
        assert!(
            d > 1.5,
            "{a} vs {b}: best feature is only {d} std devs apart"
        );
    }
}
