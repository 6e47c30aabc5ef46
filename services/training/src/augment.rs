//! Data augmentation: random resized crop and horizontal flip on the decoded
//! image, colour jitter and the PCA lighting noise of AlexNet (Krizhevsky et
//! al. 2012) on the batch tensor.

use cbir_imaging::INPUT_SIZE;
use image::RgbImage;
use rand::Rng;
use tch::{Kind, Tensor};

/// Smallest crop area as a fraction of the image. Inception's 0.08 throws
/// away too much of small objects for a few thousand images; 0.25 keeps the
/// object in view most of the time.
const MIN_SCALE: f64 = 0.25;
const MIN_RATIO: f64 = 3.0 / 4.0;
const MAX_RATIO: f64 = 4.0 / 3.0;
/// Images are shrunk to this shorter side once, before cropping, so that
/// crops of huge photos do not resize megapixels each time.
const WORK_SIDE: u32 = 320;
const JITTER: f64 = 0.4;
const LIGHTING_STD: f64 = 0.1;
/// Eigenvalues and eigenvectors (columns) of the RGB covariance of ImageNet
/// pixels in 0..1, as used by AlexNet and fb.resnet.torch.
const EIGVAL: [f64; 3] = [0.2175, 0.0188, 0.0045];
const EIGVEC: [[f64; 3]; 3] = [
    [-0.5675, 0.7192, 0.4009],
    [-0.5808, -0.0045, -0.8140],
    [-0.5836, -0.6948, 0.4203],
];

/// The image at a workable size: shorter side at most `WORK_SIDE`.
pub fn working_copy(img: RgbImage) -> std::result::Result<RgbImage, String> {
    cbir_imaging::shrink(img, WORK_SIDE).map_err(|e| e.to_string())
}

/// A random crop of 25–100 % of the area with aspect ratio 3/4–4/3, resized
/// to the network input and flipped half of the time: `INPUT_SIZE²·3` RGB
/// bytes, row-major HWC like `cbir_imaging::preprocess`.
pub fn random_view(img: &RgbImage, rng: &mut impl Rng) -> std::result::Result<Vec<u8>, String> {
    let (w, h) = img.dimensions();
    let area = f64::from(w) * f64::from(h);
    let mut crop = None;
    for _ in 0..10 {
        let target = area * rng.random_range(MIN_SCALE..=1.0);
        let ratio = rng.random_range(MIN_RATIO.ln()..=MAX_RATIO.ln()).exp();
        let cw = (target * ratio).sqrt().round() as u32;
        let ch = (target / ratio).sqrt().round() as u32;
        if cw >= 1 && ch >= 1 && cw <= w && ch <= h {
            let x = rng.random_range(0..=w - cw);
            let y = rng.random_range(0..=h - ch);
            crop = Some((x, y, cw, ch));
            break;
        }
    }
    // Fallback: the central square.
    let region = crop.unwrap_or_else(|| {
        let s = w.min(h);
        ((w - s) / 2, (h - s) / 2, s, s)
    });
    cbir_imaging::crop_resize(img, region, INPUT_SIZE, rng.random_bool(0.5))
        .map_err(|e| e.to_string())
}

/// Per-image random factors of one batch.
pub struct Jitter {
    brightness: Vec<f32>,
    contrast: Vec<f32>,
    saturation: Vec<f32>,
    /// RGB offsets in 0..255 units.
    lighting: Vec<f32>,
}

impl Jitter {
    pub fn sample(n: usize, rng: &mut impl Rng) -> Self {
        let mut factor = || rng.random_range(1.0 - JITTER..=1.0 + JITTER) as f32;
        let brightness = (0..n).map(|_| factor()).collect();
        let contrast = (0..n).map(|_| factor()).collect();
        let saturation = (0..n).map(|_| factor()).collect();
        let mut lighting = Vec::with_capacity(n * 3);
        for _ in 0..n {
            let alpha: [f64; 3] = std::array::from_fn(|_| gaussian(rng) * LIGHTING_STD);
            for row in EIGVEC {
                let v: f64 = (0..3).map(|j| row[j] * alpha[j] * EIGVAL[j]).sum();
                lighting.push((v * 255.0) as f32);
            }
        }
        Self {
            brightness,
            contrast,
            saturation,
            lighting,
        }
    }

    /// Applies brightness, contrast, saturation and lighting to `x`, a
    /// float `[N, 3, H, W]` batch in 0..255; the result is clamped to 0..255.
    pub fn apply(&self, x: &Tensor) -> Tensor {
        let n = x.size()[0];
        let dev = x.device();
        let per = |v: &[f32]| Tensor::from_slice(v).to_device(dev).view([n, 1, 1, 1]);
        let gray = |t: &Tensor| {
            let w = Tensor::from_slice(&[0.299f32, 0.587, 0.114])
                .to_device(dev)
                .view([1, 3, 1, 1]);
            (t * w).sum_dim_intlist([1i64].as_slice(), true, Kind::Float)
        };
        let x = x * per(&self.brightness);
        let mean = gray(&x).mean_dim([1i64, 2, 3].as_slice(), true, Kind::Float);
        let x = (&x - &mean) * per(&self.contrast) + &mean;
        let g = gray(&x);
        let x = (&x - &g) * per(&self.saturation) + &g;
        let light = Tensor::from_slice(&self.lighting)
            .to_device(dev)
            .view([n, 3, 1, 1]);
        (x + light).clamp(0.0, 255.0)
    }
}

/// A standard normal sample (Box–Muller; `rand` alone has no normal law).
fn gaussian(rng: &mut impl Rng) -> f64 {
    let u1: f64 = rng.random_range(f64::EPSILON..1.0);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn views_have_the_input_size_and_differ() {
        let mut img = RgbImage::new(300, 200);
        for (x, y, p) in img.enumerate_pixels_mut() {
            *p = image::Rgb([(x % 256) as u8, (y % 256) as u8, ((x + y) % 256) as u8]);
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let a = random_view(&img, &mut rng).expect("view");
        let b = random_view(&img, &mut rng).expect("view");
        assert_eq!(a.len(), (INPUT_SIZE * INPUT_SIZE * 3) as usize);
        assert_ne!(a, b, "two random views of one image are the same");
    }

    #[test]
    fn big_images_are_shrunk_once() {
        let img = RgbImage::new(4000, 3000);
        let w = working_copy(img).expect("shrink");
        assert_eq!(w.dimensions().1, WORK_SIDE);
        assert_eq!(w.dimensions().0, 427);
    }

    #[test]
    fn jitter_stays_in_range_and_changes_colours() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let x = Tensor::rand([4, 3, 8, 8], (Kind::Float, tch::Device::Cpu)) * 255.0;
        let j = Jitter::sample(4, &mut rng);
        let y = j.apply(&x);
        assert_eq!(y.size(), x.size());
        let (lo, hi) = (y.min().double_value(&[]), y.max().double_value(&[]));
        assert!((0.0..=255.0).contains(&lo) && (0.0..=255.0).contains(&hi));
        let diff = (&y - &x).abs().mean(Kind::Float).double_value(&[]);
        assert!(diff > 1.0, "jitter changed nothing (mean diff {diff})");
    }

    #[test]
    fn gaussian_has_unit_variance() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let n = 20_000;
        let xs: Vec<f64> = (0..n).map(|_| gaussian(&mut rng)).collect();
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        assert!(
            mean.abs() < 0.03 && (var - 1.0).abs() < 0.05,
            "{mean} {var}"
        );
    }
}
