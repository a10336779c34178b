//! Safe image decoding, GeNIe preprocessing (resize the shorter side, center crop) and atomic PNG writes.

use std::io::{BufReader, Write};
use std::path::{Path, PathBuf};

use image::imageops::FilterType;
use image::{ImageReader, Limits, RgbImage};

/// File extensions (lower case) of the images genie reads from folders.
pub const IMAGE_EXTENSIONS: [&str; 8] = ["png", "jpg", "jpeg", "webp", "bmp", "gif", "tif", "tiff"];

/// Whether `path` is named like an image genie reads (by extension, any case).
pub fn has_image_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// Largest width or height we decode; larger inputs are refused before any pixel is read.
pub const MAX_DIMENSION: u32 = 16_384;
/// Largest allocation the decoder may make for one image.
pub const MAX_DECODE_BYTES: u64 = 512 * 1024 * 1024;

/// Why an image could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImageError {
    /// An image file cannot be read.
    #[error("cannot read image {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// An image file does not decode (or is over genie's limits).
    #[error("cannot decode image {path}: {source}")]
    Decode {
        /// The file.
        path: PathBuf,
        /// The decoder's account.
        #[source]
        source: image::ImageError,
    },
    /// Image bytes in memory do not decode.
    #[error("cannot decode image from memory: {0}")]
    DecodeBytes(#[source] image::ImageError),
    /// An image file cannot be written.
    #[error("cannot write image {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// An image cannot be encoded as PNG.
    #[error("cannot encode PNG: {0}")]
    Encode(#[source] image::ImageError),
    /// An image with no pixels.
    #[error("image is empty (0 pixels wide or high)")]
    Empty,
    /// An image or buffer of the wrong size.
    #[error("{context}: expected {expected}, got {got}")]
    Size {
        /// Where.
        context: &'static str,
        /// The size wanted.
        expected: String,
        /// The size found.
        got: String,
    },
}

fn limits() -> Limits {
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_DIMENSION);
    limits.max_image_height = Some(MAX_DIMENSION);
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    limits
}

/// Decodes any supported image file (format from its content, not its name) into RGB. Only
/// regular files are opened (a FIFO or a device would block or never end).
pub fn open_rgb(path: &Path) -> Result<RgbImage, ImageError> {
    let file = crate::safe_open::open_regular(path).map_err(|source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut reader = ImageReader::new(BufReader::new(file))
        .with_guessed_format()
        .map_err(|source| ImageError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    reader.limits(limits());
    let decoded = reader.decode().map_err(|source| ImageError::Decode {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(decoded.into_rgb8())
}

/// Decodes an image held in memory into RGB, with the same limits as [`open_rgb`].
pub fn decode_rgb(bytes: &[u8]) -> Result<RgbImage, ImageError> {
    let mut reader = ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| ImageError::DecodeBytes(image::ImageError::IoError(e)))?;
    reader.limits(limits());
    Ok(reader
        .decode()
        .map_err(ImageError::DecodeBytes)?
        .into_rgb8())
}

/// How much wider (or taller) than the target a source may be before [`resize_cover_crop`] cuts
/// out its centre before resizing (see there).
const MAX_COVER_ASPECT: u64 = 4;

/// GeNIe's preprocessing: resize so the shorter side is `size` (bicubic), then center-crop to
/// `size`×`size`. An image that is already `size`×`size` is returned unchanged.
pub fn resize_center_crop(img: &RgbImage, size: u32) -> Result<RgbImage, ImageError> {
    resize_cover_crop(img, size, size, FilterType::CatmullRom)
}

/// Resizes `img` (keeping its aspect ratio) until it covers `width`×`height`, then crops the
/// centre: never stretched. An image that already has that size is returned unchanged.
pub fn resize_cover_crop(
    img: &RgbImage,
    width: u32,
    height: u32,
    filter: FilterType,
) -> Result<RgbImage, ImageError> {
    let (w, h) = img.dimensions();
    if w == 0 || h == 0 || width == 0 || height == 0 {
        return Err(ImageError::Empty);
    }
    if (w, h) == (width, height) {
        return Ok(img.clone());
    }
    let plan = cover_plan(w, h, width, height);
    let resized = if plan.source == (0, 0, w, h) {
        image::imageops::resize(img, plan.resized.0, plan.resized.1, filter)
    } else {
        let (x, y, cw, ch) = plan.source;
        let centre = image::imageops::crop_imm(img, x, y, cw, ch).to_image();
        image::imageops::resize(&centre, plan.resized.0, plan.resized.1, filter)
    };
    let (nw, nh) = plan.resized;
    let (x, y) = ((nw - width) / 2, (nh - height) / 2);
    Ok(image::imageops::crop_imm(&resized, x, y, width, height).to_image())
}

/// How [`resize_cover_crop`] sizes its work: the part of the source it resizes (x, y, w, h) and
/// the size it resizes that to, which covers the target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct CoverPlan {
    source: (u32, u32, u32, u32),
    resized: (u32, u32),
}

/// Resizing a thin image to cover the target would make it huge (16384×1 covering 96² is
/// 1.5 M×96 pixels), all but the centre of which the crop then throws away. So past
/// `MAX_COVER_ASPECT` times the target's aspect only the source's centre is resized, and the work
/// is bounded by the output (about 4× its area; the square of its longer side when the source is
/// one pixel thin); sources closer to the target's shape are resized whole, as always.
fn cover_plan(w: u32, h: u32, width: u32, height: u32) -> CoverPlan {
    let (w64, h64, tw, th) = (
        u64::from(w),
        u64::from(h),
        u64::from(width),
        u64::from(height),
    );
    let (mut x, mut y, mut cw, mut ch) = (0, 0, w64, h64);
    if w64 * th > MAX_COVER_ASPECT * tw * h64 {
        cw = (MAX_COVER_ASPECT * tw * h64).div_ceil(th).clamp(1, w64);
        x = (w64 - cw) / 2;
    } else if h64 * tw > MAX_COVER_ASPECT * th * w64 {
        ch = (MAX_COVER_ASPECT * th * w64).div_ceil(tw).clamp(1, h64);
        y = (h64 - ch) / 2;
    }
    // The side whose scale is larger binds; round the other so the crop never needs more
    // pixels than exist.
    let resized = if tw * ch >= th * cw {
        let nh = ((ch * tw + cw / 2) / cw) as u32;
        (width, nh.max(height))
    } else {
        let nw = ((cw * th + ch / 2) / ch) as u32;
        (nw.max(width), height)
    };
    CoverPlan {
        source: (x as u32, y as u32, cw as u32, ch as u32),
        resized,
    }
}

/// Opens and preprocesses a source image for an engine of resolution `size`.
pub fn load_source(path: &Path, size: u32) -> Result<RgbImage, ImageError> {
    resize_center_crop(&open_rgb(path)?, size)
}

/// Hash of an image's pixels (dimensions included), independent of the file format it came from.
pub fn pixel_hash(img: &RgbImage) -> blake3::Hash {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"genie-rgb8-v1");
    hasher.update(&img.width().to_le_bytes());
    hasher.update(&img.height().to_le_bytes());
    hasher.update(img.as_raw());
    hasher.finalize()
}

/// Encodes an image as PNG bytes.
pub fn encode_png(img: &RgbImage) -> Result<Vec<u8>, ImageError> {
    let mut bytes = Vec::new();
    img.write_to(
        &mut std::io::Cursor::new(&mut bytes),
        image::ImageFormat::Png,
    )
    .map_err(ImageError::Encode)?;
    Ok(bytes)
}

/// Writes `bytes` to `path` atomically: a unique temporary file in the same folder, fsync, rename.
/// Readers see either the old file or the whole new one, never a partial write.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ImageError> {
    let write_err = |source| ImageError::Write {
        path: path.to_path_buf(),
        source,
    };
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".genie-tmp-")
        .tempfile_in(dir)
        .map_err(write_err)?;
    tmp.write_all(bytes).map_err(write_err)?;
    #[cfg(unix)]
    {
        // tempfile creates 0600; outputs are ordinary files.
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o644))
            .map_err(write_err)?;
    }
    tmp.as_file().sync_all().map_err(write_err)?;
    tmp.persist(path).map_err(|e| write_err(e.error))?;
    Ok(())
}

/// Writes an image as a PNG file atomically.
pub fn save_png_atomic(img: &RgbImage, path: &Path) -> Result<(), ImageError> {
    write_atomic(path, &encode_png(img)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([(x % 256) as u8, (y % 256) as u8, 7])
        })
    }

    #[test]
    fn crop_makes_a_square_of_the_requested_size() {
        for (w, h) in [(640, 480), (480, 640), (64, 64), (100, 37), (1, 300)] {
            let out = resize_center_crop(&gradient(w, h), 64).unwrap();
            assert_eq!(out.dimensions(), (64, 64), "from {w}x{h}");
        }
    }

    #[test]
    fn a_square_of_the_right_size_is_untouched() {
        let img = gradient(64, 64);
        assert_eq!(resize_center_crop(&img, 64).unwrap(), img);
    }

    #[test]
    fn center_crop_keeps_the_middle() {
        // 128x64 with the left quarter red, right quarter blue, middle green: crop to 64 keeps green.
        let img = RgbImage::from_fn(128, 64, |x, _| match x {
            0..=31 => image::Rgb([255, 0, 0]),
            96.. => image::Rgb([0, 0, 255]),
            _ => image::Rgb([0, 255, 0]),
        });
        let out = resize_center_crop(&img, 64).unwrap();
        let p = out.get_pixel(32, 32);
        assert_eq!(p.0, [0, 255, 0]);
    }

    #[test]
    fn pixel_hash_ignores_file_format() {
        let img = gradient(32, 16);
        let dir = tempfile::tempdir().unwrap();
        let png = dir.path().join("a.png");
        let bmp = dir.path().join("a.bmp");
        save_png_atomic(&img, &png).unwrap();
        img.save(&bmp).unwrap();
        assert_eq!(
            pixel_hash(&open_rgb(&png).unwrap()),
            pixel_hash(&open_rgb(&bmp).unwrap())
        );
        assert_ne!(pixel_hash(&img), pixel_hash(&gradient(16, 32)));
    }

    #[test]
    fn garbage_is_a_typed_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.png");
        std::fs::write(&p, b"\x89PNG\r\n\x1a\nnot really").unwrap();
        assert!(matches!(open_rgb(&p), Err(ImageError::Decode { .. })));
        assert!(matches!(
            open_rgb(&dir.path().join("missing.png")),
            Err(ImageError::Io { .. })
        ));
    }

    #[test]
    fn cover_crop_keeps_the_aspect_and_the_middle() {
        // A 64×64 picture of a green square on red: into a 32×16 item, the square stays
        // square (8 px high in the 16 px crop, not squashed to 4).
        let img = RgbImage::from_fn(64, 64, |x, y| {
            if (16..48).contains(&x) && (16..48).contains(&y) {
                image::Rgb([0, 255, 0])
            } else {
                image::Rgb([255, 0, 0])
            }
        });
        let out = resize_cover_crop(&img, 32, 16, FilterType::Nearest).unwrap();
        assert_eq!(out.dimensions(), (32, 16));
        let green_rows = (0..16)
            .filter(|&y| out.get_pixel(16, y).0 == [0, 255, 0])
            .count();
        assert_eq!(
            green_rows, 16,
            "the middle 16 rows of a 32 px-high resize are all square"
        );
        let green_cols = (0..32)
            .filter(|&x| out.get_pixel(x, 8).0 == [0, 255, 0])
            .count();
        assert_eq!(green_cols, 16);
        // Same result as the square crop for square targets.
        let wide = gradient(300, 100);
        assert_eq!(
            resize_cover_crop(&wide, 50, 50, FilterType::CatmullRom).unwrap(),
            resize_center_crop(&wide, 50).unwrap()
        );
    }

    /// The resize covers the target and, however thin the source, stays within a few times the
    /// target's area (it was 16384 times for a 16384×1 source); sources up to 4 times the target's
    /// aspect are resized whole, as before.
    #[test]
    fn cover_work_is_bounded_by_the_output() {
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = |max: u32| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % u64::from(max)) as u32 + 1
        };
        let mut shapes = vec![(16384, 1, 96, 96), (1, 16384, 96, 96), (16384, 3, 64, 32)];
        for _ in 0..2000 {
            let long = next(16384);
            shapes.push((next(long), next(long), next(512), next(512)));
        }
        for (w, h, tw, th) in shapes {
            let plan = cover_plan(w, h, tw, th);
            let (x, y, cw, ch) = plan.source;
            let (nw, nh) = plan.resized;
            let case = format!("{w}×{h} to {tw}×{th}: {plan:?}");
            assert!(x + cw <= w && y + ch <= h && cw > 0 && ch > 0, "{case}");
            assert!(nw >= tw && nh >= th, "{case}");
            // A source cannot be cut thinner than one pixel: covering 1×512 from 16384×1 takes
            // 512×512, hence the square of the longer target side.
            let longer = u64::from(tw.max(th));
            assert!(
                u64::from(nw) * u64::from(nh)
                    <= 5 * u64::from(tw) * u64::from(th) + longer * longer,
                "{case}"
            );
            // Only sources past 4 times the target's aspect are cut (and not always: a source
            // smaller than the cut keeps all of its few pixels).
            let close = u64::from(w) * u64::from(th) <= 4 * u64::from(tw) * u64::from(h)
                && u64::from(h) * u64::from(tw) <= 4 * u64::from(th) * u64::from(w);
            if close {
                assert_eq!(plan.source, (0, 0, w, h), "{case}");
            }
        }
        let thin = RgbImage::from_fn(16384, 1, |x, _| image::Rgb([(x % 251) as u8, 0, 0]));
        assert_eq!(
            resize_center_crop(&thin, 96).unwrap().dimensions(),
            (96, 96)
        );
    }

    #[cfg(unix)]
    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("z.png");
        let status = std::process::Command::new("mkfifo").arg(&fifo).status();
        if !status.is_ok_and(|s| s.success()) {
            return; // no mkfifo on this system: nothing to check
        }
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(open_rgb(&fifo).map(|_| ()).map_err(|e| e.to_string()));
        });
        let e = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("opening a FIFO must not block")
            .unwrap_err();
        assert!(e.contains("not a regular file"), "{e}");
    }
}
