//! What crosses the network between `genie serve` and its clients: a request body as the server
//! reads it (the JSON, then each source's pixels and hash), and the server's answers as the
//! client reads them.
#![no_main]

use genie::remote::protocol::{
    decode_pixels, parse_hash, BatchAnswer, ErrorBody, KeyState, RequestBatch, ServerInfo,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(batch) = serde_json::from_slice::<RequestBatch>(data) {
        for request in &batch.requests {
            if let Some(source) = &request.source {
                let _ = parse_hash(&source.hash);
                if let Some(pixels) = &source.pixels {
                    let _ = decode_pixels(pixels, 16);
                }
            }
            for &level in &request.levels {
                let _ = genie::NoiseLevel::from_thousandths(level);
            }
        }
    }
    let _ = serde_json::from_slice::<BatchAnswer>(data);
    let _ = serde_json::from_slice::<KeyState>(data);
    let _ = serde_json::from_slice::<ServerInfo>(data);
    let _ = serde_json::from_slice::<ErrorBody>(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = parse_hash(text);
        let _ = decode_pixels(text, 16);
    }
});
