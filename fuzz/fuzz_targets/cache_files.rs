//! The files of an on-disk cache a crash, a bad disk or another program may have written: the
//! cache's marker, an entry's manifest and a pair's side record. Reading them gives an entry,
//! nothing, or a typed error (the entry quarantined), never a panic.
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use genie::cache::{Cache, CacheKey, DiskStore};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&which, bytes)) = data.split_first() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let key: CacheKey = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
        .parse()
        .unwrap();
    match which % 3 {
        0 => {
            std::fs::write(dir.path().join("genie-cache.json"), bytes).unwrap();
            let _ = DiskStore::open(dir.path());
        }
        1 => {
            let cache = cache_with_file(dir.path(), bytes, |s| s.manifest_path(&key));
            let _ = cache.get_image(&key);
            let _ = cache.contains(&key);
        }
        _ => {
            let cache = cache_with_file(dir.path(), bytes, |s| s.record_path(&key));
            let _ = cache.ada_choice(&key);
        }
    }
});

/// A cache in `root` with `bytes` written where `path` puts them (a manifest or a side record).
fn cache_with_file(root: &Path, bytes: &[u8], path: impl Fn(&DiskStore) -> PathBuf) -> Cache {
    let store = DiskStore::open(root).unwrap();
    let path = path(&store);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, bytes).unwrap();
    Cache::new(Arc::new(store), 1 << 20)
}
