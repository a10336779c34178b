//! [`GenieItem`]: what genie needs from a dataset item (label, pixels) and how it makes one from a
//! generated image; implemented for burn's `ImageDatasetItem`.

use burn_dataset::vision::{Annotation, ImageDatasetItem, PixelData};
use image::RgbImage;

/// Why an item's pixels cannot be read or written.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ItemError {
    /// The values are not a whole image of 1–4 channels.
    #[error("item has {len} values, which is not {width}×{height} pixels of 1–4 channels")]
    BadShape {
        /// Values given.
        len: usize,
        /// The width.
        width: usize,
        /// The height.
        height: usize,
    },
    /// An image with no pixels.
    #[error("item image is empty")]
    Empty,
    /// An image above genie's pixel limit.
    #[error("item is too large: {width}×{height}")]
    TooLarge {
        /// The width.
        width: usize,
        /// The height.
        height: usize,
    },
    /// The item's source image cannot be read.
    #[error("cannot read the item's source image: {0}")]
    Source(String),
}

/// A dataset item genie can take sources from and make hard negatives of.
///
/// Implement it for your own item type in a few lines: the class label (or `None` for items
/// without a single label, which genie then leaves alone), the pixels as RGB, and an item built
/// like `self` (same size, same layout) holding a generated image and the target's label.
/// Items that know the file they came from should also say so ([`GenieItem::source_rgb`],
/// [`GenieItem::source_id`]): diffusion then starts from the original, not from the small
/// training copy, and pre-warm plans find their sources.
pub trait GenieItem: Clone + Send + Sync + 'static {
    /// The class index, if the item has exactly one.
    fn label(&self) -> Option<usize>;

    /// The pixels as 8-bit RGB, as training sees them.
    fn rgb(&self) -> Result<RgbImage, ItemError>;

    /// The image diffusion starts from, at the best resolution the item can give (the engine
    /// resizes and crops it to its own size; cache keys hash what the engine receives). By
    /// default the item's own pixels; `ImageDatasetItem` reads its original file.
    fn source_rgb(&self) -> Result<RgbImage, ItemError> {
        self.rgb()
    }

    /// Which source of a pre-warm plan this item is: `<class folder>/<file name>`, as
    /// [`crate::warm::source_id`] names a plan's sources (so the dataset may move between
    /// planning and training). `None` (the default) for items without a file.
    fn source_id(&self) -> Option<&str> {
        None
    }

    /// An item shaped like `self` that holds `image` (resized keeping its aspect ratio and
    /// centre-cropped, never stretched) labelled `label`.
    /// `origin` names the generated image (its cache key) for logs and debugging.
    fn with_generated(
        &self,
        image: &RgbImage,
        label: usize,
        origin: &str,
    ) -> Result<Self, ItemError>;

    /// Whether genie made this item.
    fn is_generated(&self) -> bool;

    /// Roughly how many bytes the item holds (pixels and strings), for memory budgets.
    fn heap_bytes(&self) -> usize;
}

/// Prefix of the `image_path` of generated `ImageDatasetItem`s: `genie:<cache key>`.
pub const GENERATED_PATH_PREFIX: &str = "genie:";

/// Largest side genie accepts from an item (a guard against corrupt dimensions).
const MAX_SIDE: usize = 1 << 15;

impl GenieItem for ImageDatasetItem {
    fn label(&self) -> Option<usize> {
        match self.annotation {
            Annotation::Label(l) => Some(l),
            _ => None,
        }
    }

    fn rgb(&self) -> Result<RgbImage, ItemError> {
        let (width, height) = (self.image_width, self.image_height);
        let channels = channels_of(self.image.len(), width, height)?;
        let values: Vec<u8> = match &self.image {
            PixelData::U8(v) => v.clone(),
            PixelData::U16(v) => v.iter().map(|&x| (x >> 8) as u8).collect(),
            // Float images are taken to be in [0, 1], as `image` decodes them.
            PixelData::F32(v) => v
                .iter()
                .map(|&x| (x.clamp(0.0, 1.0) * 255.0).round() as u8)
                .collect(),
        };
        let mut rgb = Vec::with_capacity(width * height * 3);
        for px in values.chunks_exact(channels) {
            match channels {
                1 | 2 => rgb.extend([px[0]; 3]),
                _ => rgb.extend(&px[..3]),
            }
        }
        RgbImage::from_raw(width as u32, height as u32, rgb).ok_or(ItemError::BadShape {
            len: self.image.len(),
            width,
            height,
        })
    }

    fn with_generated(
        &self,
        image: &RgbImage,
        label: usize,
        origin: &str,
    ) -> Result<Self, ItemError> {
        let (width, height) = (self.image_width, self.image_height);
        let channels = channels_of(self.image.len(), width, height)?;
        let resized;
        let image = if image.dimensions() == (width as u32, height as u32) {
            image
        } else {
            resized = crate::image_io::resize_cover_crop(
                image,
                width as u32,
                height as u32,
                image::imageops::FilterType::Triangle,
            )
            .map_err(|_| ItemError::Empty)?;
            &resized
        };
        let mut out = Vec::with_capacity(width * height * channels);
        for p in image.pixels() {
            let [r, g, b] = p.0;
            match channels {
                1 | 2 => {
                    // ITU-R BT.601 luma, as `image` converts RGB to grey.
                    let luma = (0.299 * r as f32 + 0.587 * g as f32 + 0.114 * b as f32).round();
                    out.push(luma as u8);
                    if channels == 2 {
                        out.push(u8::MAX);
                    }
                }
                3 => out.extend([r, g, b]),
                _ => out.extend([r, g, b, u8::MAX]),
            }
        }
        let image = match &self.image {
            PixelData::U8(_) => PixelData::U8(out),
            PixelData::U16(_) => PixelData::U16(out.iter().map(|&x| u16::from(x) * 257).collect()),
            PixelData::F32(_) => {
                PixelData::F32(out.iter().map(|&x| f32::from(x) / 255.0).collect())
            }
        };
        Ok(ImageDatasetItem {
            image,
            image_width: width,
            image_height: height,
            annotation: Annotation::Label(label),
            image_path: format!("{GENERATED_PATH_PREFIX}{origin}"),
        })
    }

    /// The file `image_path` names, when it is a regular file (burn's `ImageFolderDataset`
    /// sets it): read at full resolution with genie's safe decoder. Otherwise (an in-memory
    /// item, a generated one) the item's pixels.
    fn source_rgb(&self) -> Result<RgbImage, ItemError> {
        match original_file(self) {
            Some(path) => {
                crate::image_io::open_rgb(path).map_err(|e| ItemError::Source(e.to_string()))
            }
            None => self.rgb(),
        }
    }

    fn source_id(&self) -> Option<&str> {
        if self.is_generated() {
            return None;
        }
        crate::warm::source_id(&self.image_path)
    }

    fn is_generated(&self) -> bool {
        self.image_path.starts_with(GENERATED_PATH_PREFIX)
    }

    fn heap_bytes(&self) -> usize {
        let pixels = match &self.image {
            PixelData::U8(v) => v.len(),
            PixelData::U16(v) => v.len() * 2,
            PixelData::F32(v) => v.len() * 4,
        };
        pixels + self.image_path.len() + std::mem::size_of::<Self>()
    }
}

/// The regular file an `ImageDatasetItem` was read from, if it names one.
fn original_file(item: &ImageDatasetItem) -> Option<&std::path::Path> {
    if item.image_path.is_empty() || item.is_generated() {
        return None;
    }
    let path = std::path::Path::new(&item.image_path);
    path.is_file().then_some(path)
}

fn channels_of(len: usize, width: usize, height: usize) -> Result<usize, ItemError> {
    if width == 0 || height == 0 {
        return Err(ItemError::Empty);
    }
    if width > MAX_SIDE || height > MAX_SIDE {
        return Err(ItemError::TooLarge { width, height });
    }
    let pixels = width * height;
    match len.checked_div(pixels) {
        Some(c @ 1..=4) if c * pixels == len => Ok(c),
        _ => Err(ItemError::BadShape { len, width, height }),
    }
}

/// An `ImageDatasetItem` holding `image` (8-bit RGB) with a class label, e.g. for in-memory
/// datasets made in code.
pub fn image_item(image: &RgbImage, label: usize, path: impl Into<String>) -> ImageDatasetItem {
    ImageDatasetItem {
        image: PixelData::U8(image.as_raw().clone()),
        image_width: image.width() as usize,
        image_height: image.height() as usize,
        annotation: Annotation::Label(label),
        image_path: path.into(),
    }
}

/// The images of an image folder ([`crate::warm::ImageFolder`], the scan `genie warm plan` makes,
/// so labels and plan class ids agree) as items at `side`×`side`: read with genie's safe decoder,
/// resized and center-cropped. Each item keeps its file's path, from which diffusion reads the
/// original at full resolution. An unreadable file is an error naming it.
pub fn folder_items(
    folder: &crate::warm::ImageFolder,
    side: u32,
) -> Result<Vec<ImageDatasetItem>, super::LoaderError> {
    let mut items = Vec::with_capacity(folder.images.len());
    for (index, (path, label)) in folder.images.iter().enumerate() {
        let image = crate::image_io::open_rgb(path)
            .and_then(|img| crate::image_io::resize_center_crop(&img, side))
            .map_err(|source| super::LoaderError::Image { index, source })?;
        items.push(image_item(&image, *label, path.display().to_string()));
    }
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 7) as u8, (y * 5) as u8, 77]))
    }

    #[test]
    fn rgb_round_trip_and_generated_marking() {
        let img = gradient(12, 9);
        let item = image_item(&img, 3, "a.png");
        assert_eq!(item.label(), Some(3));
        assert_eq!(item.rgb().unwrap(), img);
        assert!(!item.is_generated());
        let big = gradient(48, 36);
        let generated = item.with_generated(&big, 5, "abc").unwrap();
        assert_eq!(generated.label(), Some(5));
        assert!(generated.is_generated());
        assert_eq!((generated.image_width, generated.image_height), (12, 9));
        assert_eq!(generated.image.len(), 12 * 9 * 3);
    }

    #[test]
    fn grey_rgba_u16_and_f32_layouts_are_kept() {
        let img = gradient(4, 4);
        for (data, channels) in [
            (PixelData::U8(vec![9; 16]), 1),
            (PixelData::U8(vec![9; 32]), 2),
            (PixelData::U16(vec![9; 48]), 3),
            (PixelData::F32(vec![0.5; 64]), 4),
        ] {
            let item = ImageDatasetItem {
                image: data,
                image_width: 4,
                image_height: 4,
                annotation: Annotation::Label(0),
                image_path: String::new(),
            };
            assert_eq!(item.rgb().unwrap().dimensions(), (4, 4));
            let generated = item.with_generated(&img, 1, "k").unwrap();
            assert_eq!(generated.image.len(), 16 * channels);
            assert_eq!(
                std::mem::discriminant(&generated.image),
                std::mem::discriminant(&item.image)
            );
        }
    }

    #[test]
    fn generated_images_are_center_cropped_to_the_item_not_stretched() {
        // A square generation with a red border into a wide item: the crop drops the top and
        // bottom (the border's rows), a stretch would keep them.
        let square = RgbImage::from_fn(32, 32, |_, y| {
            if !(8..24).contains(&y) {
                image::Rgb([255, 0, 0])
            } else {
                image::Rgb([0, 0, 255])
            }
        });
        let wide = image_item(&gradient(16, 8), 0, "w.png");
        let generated = wide.with_generated(&square, 1, "k").unwrap();
        let rgb = generated.rgb().unwrap();
        assert_eq!(rgb.dimensions(), (16, 8));
        assert!(rgb.pixels().all(|p| p.0[2] > 200 && p.0[0] < 60), "{rgb:?}");
    }

    #[test]
    fn the_source_is_the_original_file_when_the_item_names_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cat").join("001.png");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let original = gradient(64, 48);
        original.save(&path).unwrap();
        let thumb = image::imageops::resize(&original, 8, 6, image::imageops::FilterType::Triangle);
        let item = image_item(&thumb, 0, path.display().to_string());
        assert_eq!(item.source_rgb().unwrap(), original);
        assert_eq!(item.source_id(), Some("cat/001.png"));
        // No file: the item's own pixels; a generated item has no source id.
        let in_memory = image_item(&thumb, 0, "synthetic:train/3");
        assert_eq!(in_memory.source_rgb().unwrap(), thumb);
        let generated = item.with_generated(&original, 1, "k").unwrap();
        assert_eq!(generated.source_id(), None);
        // A file that cannot be decoded is an error, not a silent fallback.
        std::fs::write(&path, b"not a png").unwrap();
        assert!(matches!(item.source_rgb(), Err(ItemError::Source(_))));
    }

    #[test]
    fn malformed_items_are_errors() {
        let mut item = image_item(&gradient(4, 4), 0, "x");
        item.image_width = 5;
        assert!(matches!(item.rgb(), Err(ItemError::BadShape { .. })));
        item.image_width = 0;
        assert_eq!(item.rgb(), Err(ItemError::Empty));
        item.annotation = Annotation::MultiLabel(vec![1, 2]);
        assert_eq!(item.label(), None);
    }
}
