//! Distance kernels. Features are L2-normalised, so the Euclidean distance
//! follows from the dot product: |a - b|^2 = 2 - 2 a.b.
//!
//! The loops are written with independent lanes so that LLVM vectorises
//! them; on x86-64 a copy compiled for AVX2+FMA is picked at run time when the
//! processor has it.
#![allow(unsafe_code)]

use std::sync::OnceLock;

const LANES: usize = 16;

#[inline(always)]
fn dot_f32_portable(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; LANES];
    let chunks = n / LANES;
    for c in 0..chunks {
        let x = &a[c * LANES..(c + 1) * LANES];
        let y = &b[c * LANES..(c + 1) * LANES];
        for i in 0..LANES {
            acc[i] = x[i].mul_add(y[i], acc[i]);
        }
    }
    let mut sum: f32 = acc.iter().sum();
    for i in chunks * LANES..n {
        sum += a[i] * b[i];
    }
    sum
}

#[inline(always)]
fn dot_i8_portable(a: &[i8], b: &[i8]) -> i32 {
    // Integer sums are associative, so this vectorises as written.
    a.iter()
        .zip(b)
        .map(|(&x, &y)| i32::from(x) * i32::from(y))
        .sum()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn dot_f32_avx2(a: &[f32], b: &[f32]) -> f32 {
    dot_f32_portable(a, b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn dot_i8_avx2(a: &[i8], b: &[i8]) -> i32 {
    dot_i8_portable(a, b)
}

type DotF32 = fn(&[f32], &[f32]) -> f32;
type DotI8 = fn(&[i8], &[i8]) -> i32;

struct Kernels {
    f32: DotF32,
    i8: DotI8,
    name: &'static str,
}

fn kernels() -> &'static Kernels {
    static K: OnceLock<Kernels> = OnceLock::new();
    K.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            return Kernels {
                // SAFETY: called only after the processor was seen to have
                // AVX2 and FMA, which is all these functions require.
                f32: |a, b| unsafe { dot_f32_avx2(a, b) },
                // SAFETY: as above.
                i8: |a, b| unsafe { dot_i8_avx2(a, b) },
                name: "avx2+fma",
            };
        }
        Kernels {
            f32: dot_f32_portable,
            i8: dot_i8_portable,
            name: "portable",
        }
    })
}

/// Which kernel set runs here, for logs and benchmarks.
pub fn kernel_name() -> &'static str {
    kernels().name
}

#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    (kernels().f32)(a, b)
}

#[inline]
pub fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
    (kernels().i8)(a, b)
}

/// Euclidean distance of two unit vectors from their dot product.
#[inline]
pub fn distance_from_dot(dot: f32) -> f32 {
    (2.0 - 2.0 * dot).max(0.0).sqrt()
}

/// Euclidean distance computed from the differences: what the hits show.
/// `distance_from_dot` ranks (one dot per vector) but near 0 it cancels:
/// one rounding step of a dot near 1 is a distance of 5e-4, so an image's
/// distance to itself could read 0 or 0.0005 depending on its bits. Only
/// the final hits pay for this one.
pub fn distance(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y) * (x - y))
        .sum::<f32>()
        .sqrt()
}

/// The dot product of two unit vectors from their Euclidean distance (the
/// inverse of `distance_from_dot`).
#[inline]
pub fn dot_from_distance(distance: f32) -> f32 {
    1.0 - distance * distance / 2.0
}

/// The similarity users see.
#[inline]
pub fn similarity(distance: f32) -> f32 {
    1.0 / (1.0 + distance)
}

/// Symmetric int8 quantisation with one scale per vector: v ~ scale * q.
pub fn quantize(v: &[f32], out: &mut Vec<i8>) -> f32 {
    let max = v.iter().fold(0f32, |m, x| m.max(x.abs()));
    let scale = if max > 0.0 { max / 127.0 } else { 1.0 };
    let inv = 1.0 / scale;
    // Round half away from zero by offset and truncation: `f32::round` is a
    // libm call on baseline x86-64 and dominated loading.
    out.extend(v.iter().map(|x| {
        let y = (x * inv).clamp(-127.0, 127.0);
        (y + 0.5f32.copysign(y)) as i8
    }));
    scale
}

/// Scales `v` to unit length in place; false for a zero or non-finite vector.
/// A vector already unit within rounding is left as it is, so that
/// normalising twice changes no bit: a stored image used as a query is then
/// the very vector stored, at distance 0 from itself.
pub fn normalize(v: &mut [f32]) -> bool {
    let norm = dot_f32_portable(v, v).sqrt();
    if !norm.is_finite() || norm == 0.0 {
        return false;
    }
    if (norm - 1.0).abs() > 4.0 * f32::EPSILON {
        v.iter_mut().for_each(|x| *x /= norm);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_matches_naive() {
        for n in [0, 1, 7, 16, 33, 1280] {
            let a: Vec<f32> = (0..n).map(|i| ((i * 7 % 13) as f32 - 6.0) / 10.0).collect();
            let b: Vec<f32> = (0..n).map(|i| ((i * 5 % 11) as f32 - 5.0) / 10.0).collect();
            let naive: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            assert!((dot(&a, &b) - naive).abs() < 1e-4, "n={n}");
            let qa: Vec<i8> = a.iter().map(|x| (x * 100.0) as i8).collect();
            let qb: Vec<i8> = b.iter().map(|x| (x * 100.0) as i8).collect();
            let naive: i32 = qa.iter().zip(&qb).map(|(x, y)| *x as i32 * *y as i32).sum();
            assert_eq!(dot_i8(&qa, &qb), naive);
        }
    }

    #[test]
    fn quantized_dot_approximates() {
        let mut a: Vec<f32> = (0..1280).map(|i| ((i * 31 % 97) as f32).sin()).collect();
        let mut b: Vec<f32> = (0..1280).map(|i| ((i * 17 % 89) as f32).cos()).collect();
        assert!(normalize(&mut a) && normalize(&mut b));
        let (mut qa, mut qb) = (Vec::new(), Vec::new());
        let sa = quantize(&a, &mut qa);
        let sb = quantize(&b, &mut qb);
        let approx = dot_i8(&qa, &qb) as f32 * sa * sb;
        assert!(
            (approx - dot(&a, &b)).abs() < 0.01,
            "{approx} vs {}",
            dot(&a, &b)
        );
    }

    #[test]
    fn distance_and_similarity() {
        let mut a = vec![1.0, 0.0];
        let b = vec![0.0, 1.0];
        assert!(normalize(&mut a));
        let d = distance_from_dot(dot(&a, &b));
        assert!((d - 2f32.sqrt()).abs() < 1e-6);
        assert_eq!(similarity(d), 1.0 / (1.0 + d));
        assert_eq!(distance_from_dot(1.0000001), 0.0);
        assert!(!normalize(&mut [0.0, 0.0]));
        // Twice is once: a unit vector keeps its bits.
        let mut u: Vec<f32> = (0..1280)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        assert!(normalize(&mut u));
        let once = u.clone();
        assert!(normalize(&mut u));
        assert_eq!(u, once);
        assert!(!normalize(&mut [f32::NAN, 1.0]));
    }
}
