//! [`ImageFolder`]: a dataset in the image-folder layout (`DIR/<class>/<image>`), read safely.

use std::path::{Path, PathBuf};

/// Why a dataset folder cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FolderError {
    /// The folder cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The folder.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The folder has no class folders.
    #[error("{0} has no class folders (expected DIR/<class>/<image>)")]
    NoClasses(PathBuf),
    /// A class folder's name is not plain UTF-8.
    #[error("class folder name {0:?} is not a plain UTF-8 name")]
    BadClassName(String),
}

/// Class names (sorted folder names) and every image file with its class index.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImageFolder {
    /// Class ids (folder names), sorted; a class's label is its index here.
    pub classes: Vec<String>,
    /// (path, class index), sorted by class then file name.
    pub images: Vec<(PathBuf, usize)>,
    /// Things worth telling the user that do not stop planning (e.g. empty classes).
    pub warnings: Vec<String>,
}

impl ImageFolder {
    /// Reads `dir`: every sub-folder not starting with `.` is a class, every file in it with an
    /// image extension is an image (not recursive). Files are not decoded here.
    pub fn scan(dir: &Path) -> Result<Self, FolderError> {
        let read = |path: &Path| {
            std::fs::read_dir(path).map_err(|source| FolderError::Read {
                path: path.to_path_buf(),
                source,
            })
        };
        let mut classes = Vec::new();
        for entry in read(dir)? {
            let entry = entry.map_err(|source| FolderError::Read {
                path: dir.to_path_buf(),
                source,
            })?;
            if !entry.path().is_dir() {
                continue;
            }
            let name = entry.file_name();
            let name = name
                .to_str()
                .ok_or_else(|| FolderError::BadClassName(name.to_string_lossy().into_owned()))?;
            if name.starts_with('.') {
                continue;
            }
            if name.chars().any(char::is_control) || name.trim().is_empty() {
                return Err(FolderError::BadClassName(name.to_string()));
            }
            classes.push(name.to_string());
        }
        if classes.is_empty() {
            return Err(FolderError::NoClasses(dir.to_path_buf()));
        }
        classes.sort();
        let mut images = Vec::new();
        let mut warnings = Vec::new();
        for (label, class) in classes.iter().enumerate() {
            let class_dir = dir.join(class);
            let mut files: Vec<PathBuf> = Vec::new();
            for entry in read(&class_dir)? {
                let path = entry
                    .map_err(|source| FolderError::Read {
                        path: class_dir.clone(),
                        source,
                    })?
                    .path();
                if path.is_file() && crate::image_io::has_image_extension(&path) {
                    files.push(path);
                }
            }
            if files.is_empty() {
                warnings.push(format!(
                    "class {class:?} has no images ({})",
                    class_dir.display()
                ));
            }
            files.sort();
            images.extend(files.into_iter().map(|p| (p, label)));
        }
        Ok(ImageFolder {
            classes,
            images,
            warnings,
        })
    }

    /// The index of class `name`, or an error that names it (e.g. from a pairs file).
    pub fn class_index(&self, name: &str) -> Result<usize, FolderError> {
        self.classes
            .iter()
            .position(|c| c == name)
            .ok_or_else(|| FolderError::BadClassName(name.to_string()))
    }

    /// Every image's label, in image order.
    pub fn labels(&self) -> Vec<usize> {
        self.images.iter().map(|&(_, l)| l).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(path: &Path) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        image::RgbImage::new(4, 4).save(path).unwrap();
    }

    #[test]
    fn scans_classes_and_images_in_order() {
        let dir = tempfile::tempdir().unwrap();
        png(&dir.path().join("dog/b.png"));
        png(&dir.path().join("dog/a.PNG"));
        png(&dir.path().join("cat/x.png"));
        std::fs::write(dir.path().join("cat/notes.txt"), "not an image").unwrap();
        std::fs::create_dir_all(dir.path().join("empty")).unwrap();
        std::fs::create_dir_all(dir.path().join(".git")).unwrap();
        std::fs::write(dir.path().join("README"), "").unwrap();
        let f = ImageFolder::scan(dir.path()).unwrap();
        assert_eq!(f.classes, vec!["cat", "dog", "empty"]);
        assert_eq!(f.labels(), vec![0, 1, 1]);
        assert!(f.images[1].0.ends_with("dog/a.PNG"));
        assert_eq!(f.warnings.len(), 1);
        assert!(f.warnings[0].contains("\"empty\""));
        assert_eq!(f.class_index("dog").unwrap(), 1);
        assert!(matches!(
            f.class_index("../x"),
            Err(FolderError::BadClassName(n)) if n == "../x"
        ));
    }

    #[test]
    fn missing_or_classless_folders_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            ImageFolder::scan(&dir.path().join("nope")),
            Err(FolderError::Read { .. })
        ));
        std::fs::write(dir.path().join("a.png"), "").unwrap();
        assert!(matches!(
            ImageFolder::scan(dir.path()),
            Err(FolderError::NoClasses(_))
        ));
    }
}
