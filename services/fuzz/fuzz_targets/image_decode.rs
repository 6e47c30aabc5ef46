//! Any bytes, as an uploaded image: decoding either fails with an error or
//! gives an upright RGB image within the pixel limit, which preprocessing
//! and the thumbnail turn into a network input of the fixed size.
#![no_main]

use libfuzzer_sys::fuzz_target;

// Small limits keep each run fast; the limit checks themselves are fuzzed.
const LIMITS: cbir_imaging::Limits = cbir_imaging::Limits {
    max_bytes: 1 << 20,
    max_pixels: 4 << 20,
};

fuzz_target!(|data: &[u8]| {
    let Ok(decoded) = cbir_imaging::decode(data, &LIMITS) else {
        return;
    };
    let img = &decoded.image;
    assert!(u64::from(img.width()) * u64::from(img.height()) <= LIMITS.max_pixels);
    assert!(img.width() > 0 && img.height() > 0);
    let input = cbir_imaging::preprocess(img).expect("a decoded image preprocesses");
    assert_eq!(input.len(), 3 * 224 * 224);
    cbir_imaging::thumbnail(img).expect("a decoded image has a thumbnail");
});
