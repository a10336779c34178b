//! Image bytes (sources, cached PNGs, pixels sent to `genie serve`) decoded with genie's limits:
//! a typed error or an image within the limits, never a panic or an allocation that aborts.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(image) = genie::image_io::decode_rgb(data) {
        let _ = genie::image_io::resize_center_crop(&image, 16);
    }
});
