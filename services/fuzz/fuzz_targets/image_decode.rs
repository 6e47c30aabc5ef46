//! Any bytes, as an uploaded image: decoding either fails with an error or
//! gives an upright RGB image within the pixel limit, which preprocessing
//! and the thumbnail turn into a network input of the fixed size.
#![no_main]

use libfuzzer_sys::fuzz_target;

// Small limits keep each run fast; the limit checks themselves are fuzzed.
const LIMITS: cbir_imaging::Limits = cbir_imaging::Limits {
    max_bytes: 1 << 20,
    max_pixels: 4 << 20,
    decode_memory_bytes: 1 << 30,
    max_decodes: 1,
    decode_wait_ms: 0,
};

fuzz_target!(|data: &[u8]| {
    let Ok(decoded) = cbir_imaging::decode(data, &LIMITS) else {
        return;
    };
    let img = &decoded.image;
    // What the services reserve from the decode budget comes from the
    // header: it must describe what was decoded.
    let header = cbir_imaging::probe(data, &LIMITS).expect("a decodable image probes");
    let (w, h) = if header.rotated {
        (header.height, header.width)
    } else {
        (header.width, header.height)
    };
    assert_eq!((img.width(), img.height()), (w, h));
    assert!(header.peak_bytes() >= u64::from(w) * u64::from(h) * 3);
    assert!(u64::from(img.width()) * u64::from(img.height()) <= LIMITS.max_pixels);
    assert!(img.width() > 0 && img.height() > 0);
    let input = cbir_imaging::preprocess(img).expect("a decoded image preprocesses");
    assert_eq!(input.len(), 3 * 224 * 224);
    cbir_imaging::thumbnail(img).expect("a decoded image has a thumbnail");
});
