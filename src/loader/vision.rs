//! burn's `ImageDatasetItem` (what `ImageFolderDataset` gives) as a [`GenieItem`], its pixel
//! layouts (grey, grey + alpha, RGB, RGBA; 8-bit, 16-bit, float) kept in generated items
//! (`burn-vision` feature).

use burn_dataset::vision::{Annotation, ImageDatasetItem, PixelData};
use image::RgbImage;

use super::item::{checked_size, fit, GenieItem, ItemError, GENERATED_PATH_PREFIX};

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
        let image = fit(image, width as u32, height as u32)?;
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

    /// burn's `ImageFolderDataset` sets `image_path` to the file it read.
    fn path(&self) -> Option<&str> {
        Some(&self.image_path)
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

/// Channels per pixel of `len` values at `width`×`height` (1–4), or why not.
fn channels_of(len: usize, width: usize, height: usize) -> Result<usize, ItemError> {
    checked_size(width, height)?;
    let pixels = width * height;
    match len.checked_div(pixels) {
        Some(c @ 1..=4) if c * pixels == len => Ok(c),
        _ => Err(ItemError::BadShape { len, width, height }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 7) as u8, (y * 5) as u8, 77]))
    }

    fn item(image: PixelData, width: usize, height: usize, path: &str) -> ImageDatasetItem {
        ImageDatasetItem {
            image,
            image_width: width,
            image_height: height,
            annotation: Annotation::Label(0),
            image_path: path.into(),
        }
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
            let item = item(data, 4, 4, "");
            assert_eq!(item.rgb().unwrap().dimensions(), (4, 4));
            let generated = item.with_generated(&img, 1, "k").unwrap();
            assert_eq!(generated.image.len(), 16 * channels);
            assert_eq!(generated.label(), Some(1));
            assert!(generated.is_generated());
            assert_eq!(
                std::mem::discriminant(&generated.image),
                std::mem::discriminant(&item.image)
            );
        }
    }

    #[test]
    fn the_source_is_the_original_file_and_malformed_items_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cat").join("001.png");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let original = gradient(64, 48);
        original.save(&path).unwrap();
        let thumb = item(
            PixelData::U8(vec![1; 8 * 6 * 3]),
            8,
            6,
            &path.display().to_string(),
        );
        assert_eq!(thumb.source_rgb().unwrap(), original);
        assert_eq!(thumb.source_id(), Some("cat/001.png"));
        let mut bad = item(PixelData::U8(vec![1; 16 * 3]), 4, 4, "x");
        bad.image_width = 5;
        assert!(matches!(bad.rgb(), Err(ItemError::BadShape { .. })));
        bad.image_width = 0;
        assert_eq!(bad.rgb(), Err(ItemError::Empty));
        bad.annotation = Annotation::MultiLabel(vec![1, 2]);
        assert_eq!(bad.label(), None);
    }
}
