//! [`GenieItem`]: what genie needs from a dataset item (label, pixels) and how it makes one from a
//! generated image; [`ImageItem`], genie's own labelled image, implements it.

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

    /// Where the item came from: the file it was read from, `genie:<cache key>` for a hard
    /// negative genie made ([`GENERATED_PATH_PREFIX`]), or `None` (the default) for an item
    /// with no such name. The provided methods below read it.
    fn path(&self) -> Option<&str> {
        None
    }

    /// The image diffusion starts from, at the best resolution the item can give (the engine
    /// resizes and crops it to its own size; cache keys hash what the engine receives): the
    /// file [`GenieItem::path`] names, when it is a regular file, read with genie's safe
    /// decoder; otherwise (an image made in memory, a generated one) the item's own pixels.
    fn source_rgb(&self) -> Result<RgbImage, ItemError> {
        match self.path().and_then(original_file) {
            Some(file) => {
                crate::image_io::open_rgb(file).map_err(|e| ItemError::Source(e.to_string()))
            }
            None => self.rgb(),
        }
    }

    /// Which source of a pre-warm plan this item is: `<class folder>/<file name>`, as
    /// [`crate::warm::source_id`] names a plan's sources (so the dataset may move between
    /// planning and training). `None` for items without a file and for generated ones.
    fn source_id(&self) -> Option<&str> {
        self.path()
            .filter(|path| !path.starts_with(GENERATED_PATH_PREFIX))
            .and_then(crate::warm::source_id)
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

    /// Whether genie made this item (for an item with a [`GenieItem::path`]: whether the path
    /// starts with [`GENERATED_PATH_PREFIX`]). Required, not derived from `path`: an item type
    /// that keeps no path must still tell genie's images from the dataset's, so that they are
    /// never taken as sources.
    fn is_generated(&self) -> bool;

    /// Roughly how many bytes the item holds (pixels and strings), for memory budgets.
    fn heap_bytes(&self) -> usize;
}

/// Prefix of the path of generated items: `genie:<cache key>`.
pub const GENERATED_PATH_PREFIX: &str = "genie:";

/// Largest side genie accepts from an item (a guard against corrupt dimensions).
pub(super) const MAX_SIDE: usize = 1 << 15;

/// A labelled 8-bit RGB image: genie's own dataset item, what [`image_item`] and
/// [`folder_items`] make. burn's `ImageDatasetItem` (what `ImageFolderDataset` gives) works too,
/// with the `burn-vision` feature.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageItem {
    /// The pixels, as training sees them.
    pub image: RgbImage,
    /// The class index.
    pub label: usize,
    /// Where the image came from: the file it was read from (diffusion then starts from the
    /// original at full resolution, and pre-warm plans find it as `<class folder>/<file
    /// name>`), any other name for an image made in memory, or `genie:<cache key>` for a hard
    /// negative genie made.
    pub path: String,
}

impl GenieItem for ImageItem {
    fn label(&self) -> Option<usize> {
        Some(self.label)
    }

    fn rgb(&self) -> Result<RgbImage, ItemError> {
        checked_size(self.image.width() as usize, self.image.height() as usize)?;
        Ok(self.image.clone())
    }

    fn with_generated(
        &self,
        image: &RgbImage,
        label: usize,
        origin: &str,
    ) -> Result<Self, ItemError> {
        let (width, height) = self.image.dimensions();
        checked_size(width as usize, height as usize)?;
        Ok(ImageItem {
            image: fit(image, width, height)?,
            label,
            path: format!("{GENERATED_PATH_PREFIX}{origin}"),
        })
    }

    fn path(&self) -> Option<&str> {
        Some(&self.path)
    }

    fn is_generated(&self) -> bool {
        self.path.starts_with(GENERATED_PATH_PREFIX)
    }

    fn heap_bytes(&self) -> usize {
        self.image.as_raw().len() + self.path.len() + std::mem::size_of::<Self>()
    }
}

/// `image` resized to `width`×`height` keeping its aspect ratio and centre-cropped (never
/// stretched); itself when it has that size already.
pub(super) fn fit(image: &RgbImage, width: u32, height: u32) -> Result<RgbImage, ItemError> {
    if image.dimensions() == (width, height) {
        return Ok(image.clone());
    }
    crate::image_io::resize_cover_crop(image, width, height, image::imageops::FilterType::Triangle)
        .map_err(|_| ItemError::Empty)
}

/// The regular file an item's path names, if it names one (not a generated item's key).
fn original_file(path: &str) -> Option<&std::path::Path> {
    if path.is_empty() || path.starts_with(GENERATED_PATH_PREFIX) {
        return None;
    }
    let path = std::path::Path::new(path);
    path.is_file().then_some(path)
}

/// Refuses empty images and sides past [`MAX_SIDE`].
pub(super) fn checked_size(width: usize, height: usize) -> Result<(), ItemError> {
    if width == 0 || height == 0 {
        return Err(ItemError::Empty);
    }
    if width > MAX_SIDE || height > MAX_SIDE {
        return Err(ItemError::TooLarge { width, height });
    }
    Ok(())
}

/// An [`ImageItem`] holding `image` with a class label, e.g. for in-memory datasets made in code.
pub fn image_item(image: &RgbImage, label: usize, path: impl Into<String>) -> ImageItem {
    ImageItem {
        image: image.clone(),
        label,
        path: path.into(),
    }
}

/// The images of an image folder ([`crate::warm::ImageFolder`], the scan `genie warm plan` makes,
/// so labels and plan class ids agree) as items at `side`×`side`: read with genie's safe decoder,
/// resized and center-cropped. Each item keeps its file's path, from which diffusion reads the
/// original at full resolution. An unreadable file is an error naming it.
pub fn folder_items(
    folder: &crate::warm::ImageFolder,
    side: u32,
) -> Result<Vec<ImageItem>, super::LoaderError> {
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
        assert_eq!(generated.path, "genie:abc");
        assert_eq!(generated.image.dimensions(), (12, 9));
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
    fn empty_items_are_errors() {
        let item = image_item(&RgbImage::new(0, 4), 0, "x");
        assert_eq!(item.rgb(), Err(ItemError::Empty));
        assert!(item.with_generated(&gradient(4, 4), 1, "k").is_err());
    }
}
