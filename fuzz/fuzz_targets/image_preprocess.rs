//! Encoded image bytes → decode (default pixel limit) → pixel_values.
#![no_main]

use blip_package::Preprocess;
use blip_preprocess::ImagePreprocessor;
use libfuzzer_sys::fuzz_target;

/// The fixture models' input size: small, so an iteration is spent decoding, not resizing.
const SIZE: usize = 32;

fuzz_target!(|data: &[u8]| {
    let pre = ImagePreprocessor::new(&Preprocess::blip(SIZE));
    let Ok(img) = pre.load_bytes(data, "fuzz-input") else {
        return;
    };
    assert_eq!(
        img.data.len(),
        img.width as usize * img.height as usize * 3,
        "decoded RGB buffer size"
    );
    let pixels = pre
        .pixel_values(&img)
        .expect("an image that decoded must preprocess");
    assert_eq!(pixels.len(), 3 * SIZE * SIZE);
    assert!(pixels.iter().all(|v| v.is_finite()));
});
