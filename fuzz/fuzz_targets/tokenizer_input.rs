//! Prompts (class names from users' files end up in them) through the CLIP tokenizer the engine
//! loads from a model folder: tokens within the context length, or a typed error.
#![no_main]

use std::sync::OnceLock;

use genie::diffusion::{tiny, ClipTokenizer};
use libfuzzer_sys::fuzz_target;

fn tokenizer() -> &'static ClipTokenizer {
    static TOKENIZER: OnceLock<(tempfile::TempDir, ClipTokenizer)> = OnceLock::new();
    &TOKENIZER
        .get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            tiny::write_tiny_model(dir.path(), 1).unwrap();
            let tokenizer = ClipTokenizer::from_dir(&dir.path().join("tokenizer"), 77).unwrap();
            (dir, tokenizer)
        })
        .1
}

fuzz_target!(|data: &[u8]| {
    if let Ok(prompt) = std::str::from_utf8(data) {
        let _ = tokenizer().encode(prompt);
    }
});
