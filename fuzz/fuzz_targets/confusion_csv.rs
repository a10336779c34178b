//! A confusion-matrix CSV (`genie warm plan --sources confusion FILE`) over three classes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("confusion.csv");
    std::fs::write(&path, data).unwrap();
    let classes = ["cat", "dog", "fox"].map(String::from);
    if let Ok(matrix) = genie::warm::read_confusion(&path, &classes) {
        assert_eq!(matrix.num_classes(), classes.len());
    }
});
