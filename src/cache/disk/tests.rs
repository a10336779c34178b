//! The disk store's unit tests (the integration suite tests it through `Cache`).

use std::collections::HashSet;

use super::files::faults;
use super::layout::{marker_json, parse_content_name, MARKER_FILE};
use super::*;
use crate::cache::clock::unique_token;
use crate::cache::key::CacheKey;
use crate::cache::manifest::EntryMeta;
use crate::cache::store::{Lookup, PutOutcome, Store};
use crate::engine::{EngineFingerprint, NoiseLevel};

/// Two processes creating one cache: the marker the other wrote after this one looked is not
/// foreign content; anything else still is.
#[test]
fn a_marker_written_meanwhile_is_not_foreign_content() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join(TMP_DIR)).unwrap();
    fs::write(dir.path().join(MARKER_FILE), marker_json()).unwrap();
    refuse_foreign_content(dir.path()).unwrap();
    fs::write(dir.path().join("holiday.jpg"), b"x").unwrap();
    assert!(matches!(
        refuse_foreign_content(dir.path()),
        Err(CacheError::NotEmpty { .. })
    ));
}

fn meta() -> EntryMeta {
    EntryMeta {
        target: "cat".into(),
        prompt: "a photo of a cat.".into(),
        level: NoiseLevel::GENIE_DEFAULT,
        seed: 1,
        source: None,
        fingerprint: EngineFingerprint {
            model: "m".into(),
            scheduler: "ddim".into(),
            steps: 10,
            guidance: "7.5".into(),
            resolution: 64,
            dtype: "f32".into(),
            algorithm_version: 1,
        },
        width: 64,
        height: 64,
    }
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).expect("list") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[test]
fn a_full_disk_while_writing_content_or_manifest_leaves_nothing_behind() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = DiskStore::open(dir.path()).expect("open");
    let key = CacheKey::from_bytes([1; 32]);
    // Write 0 is the content, write 1 the manifest.
    for writes_before in [0, 1] {
        faults::fail_write_after(writes_before, io::ErrorKind::StorageFull);
        let err = store
            .put(&key, b"some content", &meta())
            .expect_err("the write must fail");
        assert!(matches!(err, CacheError::DiskFull { .. }), "{err:?}");
        assert!(
            err.to_string().contains(&*store.tmp.to_string_lossy()),
            "{err}"
        );
        assert_eq!(store.get(&key).expect("get"), Lookup::Miss);
        assert!(files_under(&store.tmp).is_empty(), "temporary files left");
        assert!(files_under(&store.objects).is_empty(), "content left");
        assert!(files_under(&store.manifests).is_empty(), "manifest left");
    }
    assert_eq!(
        store.put(&key, b"some content", &meta()).expect("put"),
        PutOutcome::Stored
    );
}

#[test]
fn content_names_are_recognised_exactly() {
    let key = CacheKey::from_bytes([0xab; 32]);
    let good = format!("{key}.0123456789abcdef.fedcba9876543210.png");
    assert_eq!(parse_content_name(&good), Some(key));
    for bad in [
        format!("{key}.0123456789abcdef.png"),
        format!("{key}.0123456789ABCDEF.fedcba9876543210.png"),
        format!("{key}.0123456789abcdef.fedcba9876543210.png.tmp"),
        format!("{key}.0123456789abcdef.fedcba9876543210.x.png"),
        format!("../{key}.0123456789abcdef.fedcba9876543210.png"),
        "../../etc/passwd".to_string(),
    ] {
        assert_eq!(parse_content_name(&bad), None, "{bad}");
    }
}

#[test]
fn tokens_are_unique() {
    let tokens: HashSet<String> = (0..1000).map(|_| unique_token()).collect();
    assert_eq!(tokens.len(), 1000);
}
