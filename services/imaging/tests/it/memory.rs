//! The decompression bomb of issue 13 (an 8000x8000 16-bit PNG of 0.5 MB)
//! against decoding, its estimate and the decode budget.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use cbir_imaging::budget::Budget;
use cbir_imaging::{testing, Limits};

use crate::{peak_of, MEASURE};

const SIDE: u32 = 8000;
const MIB: usize = 1 << 20;

/// RGBA, 16 bits per sample: 512 MB of native pixels.
static BOMB: LazyLock<Vec<u8>> = LazyLock::new(|| testing::png_16bit(SIDE, SIDE, true));

fn rgb_bytes() -> usize {
    SIDE as usize * SIDE as usize * 3
}

#[test]
fn sixteen_bit_png_decodes_without_a_full_size_16_bit_copy() {
    let _one = MEASURE.lock().unwrap_or_else(|e| e.into_inner());
    let bomb = &*BOMB;
    assert!(bomb.len() < MIB, "the bomb is {} bytes", bomb.len());
    let (decoded, peak) = peak_of(|| cbir_imaging::decode(bomb, &Limits::default()));
    let decoded = decoded.expect("decodes");
    assert_eq!(decoded.image.dimensions(), (SIDE, SIDE));
    // The 8-bit RGB result (192 MB) and row buffers; the image crate's
    // path held the 16-bit RGBA pixels (512 MB) and an 8-bit RGBA copy.
    let limit = rgb_bytes() + 8 * MIB;
    println!(
        "decode of {SIDE}x{SIDE} RGBA16 ({} bytes): peak {} MiB, limit {} MiB",
        bomb.len(),
        peak / MIB,
        limit / MIB
    );
    assert!(peak <= limit, "peak {peak} bytes, over {limit}");
}

#[test]
fn the_estimate_covers_decode_thumbnail_rendition_and_preprocessing() {
    let _one = MEASURE.lock().unwrap_or_else(|e| e.into_inner());
    let limits = Limits::default();
    for (name, data) in [
        ("rgba16", BOMB.clone()),
        ("rgb16 2000x3000", testing::png_16bit(2000, 3000, false)),
    ] {
        let header = cbir_imaging::probe(&data, &limits).expect("probe");
        let (r, peak) = peak_of(|| {
            let d = cbir_imaging::decode(&data, &limits)?;
            let thumb = cbir_imaging::thumbnail(&d.image)?;
            let rendition = cbir_imaging::rendition(&d.image, 384, 90)?;
            let input = cbir_imaging::preprocess(&d.image)?;
            Ok::<_, cbir_imaging::Error>((thumb.len(), rendition.len(), input.len()))
        });
        r.expect("prepared");
        let estimate = header.peak_bytes();
        println!(
            "{name}: peak {} MiB, estimate {} MiB",
            peak / MIB,
            estimate as usize / MIB
        );
        assert!(
            peak as u64 <= estimate,
            "{name}: peak {peak} bytes over the estimate {estimate}"
        );
        // Not wildly over either: the budget would refuse needlessly.
        assert!(
            estimate <= 2 * peak as u64,
            "{name}: estimate {estimate} is over twice the peak {peak}"
        );
    }
}

#[test]
fn concurrent_bombs_stay_within_the_decode_budget() {
    let _one = MEASURE.lock().unwrap_or_else(|e| e.into_inner());
    let limits = Limits::default();
    let header = cbir_imaging::probe(&BOMB, &limits).expect("probe");
    let need = header.peak_bytes();
    // Room for two at once; six arrive together.
    let budget = Arc::new(Budget::new(&Limits {
        decode_memory_bytes: need * 2 + need / 2,
        max_decodes: 8,
        decode_wait_ms: 120_000,
        ..limits
    }));
    let (results, peak) = peak_of(|| {
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..6)
                .map(|_| {
                    let budget = budget.clone();
                    s.spawn(move || {
                        let _permit =
                            budget.acquire_blocking(need, Some(Duration::from_secs(120)))?;
                        let d = cbir_imaging::decode(&BOMB, &limits)?;
                        cbir_imaging::thumbnail(&d.image).map(|t| t.len())
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("thread"))
                .collect::<Vec<_>>()
        })
    });
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let budget_bytes = budget.memory_bytes() as usize;
    println!(
        "6 bombs at once: peak {} MiB, budget {} MiB",
        peak / MIB,
        budget_bytes / MIB
    );
    assert!(
        peak <= budget_bytes + 16 * MIB,
        "peak {peak} bytes over the budget {budget_bytes}"
    );
    assert_eq!(budget.in_use(), 0, "every permit went back");
}
