//! Turning untrusted encoded images into what the network and the UI need.
//!
//! Everything here is pure CPU work with no libtorch, so the gateway, the
//! index tools and the fuzzers can use it too; [`budget`] bounds how much of
//! it runs at once.

pub mod budget;
mod pixels;
pub mod testing;

use std::io::Cursor;

use fast_image_resize::images::{Image as FirImage, ImageRef as FirImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::metadata::Orientation;
use image::{ColorType, DynamicImage, ImageDecoder, ImageFormat, ImageReader, RgbImage};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Side of the square network input.
pub const INPUT_SIZE: u32 = 224;
/// The shorter side is resized to this before the center crop.
pub const RESIZE_SHORTER: u32 = 256;
/// Long side of stored thumbnails.
pub const THUMBNAIL_SIZE: u32 = 256;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("empty image: the file has zero bytes")]
    Empty,
    #[error("image too large: {bytes} bytes, the limit is {limit} bytes")]
    TooManyBytes { bytes: usize, limit: usize },
    #[error("not an image: unrecognised format (supported: JPEG, PNG, WebP, GIF, BMP, TIFF)")]
    UnknownFormat,
    #[error("image format {0} is not supported (supported: JPEG, PNG, WebP, GIF, BMP, TIFF)")]
    UnsupportedFormat(String),
    #[error("image too large: {width}x{height} is {pixels} pixels, the limit is {limit} pixels")]
    TooManyPixels {
        width: u32,
        height: u32,
        pixels: u64,
        limit: u64,
    },
    #[error("image has a zero dimension ({width}x{height})")]
    ZeroSize { width: u32, height: u32 },
    #[error("corrupt {format} image: {message}")]
    Corrupt { format: String, message: String },
    #[error("image processing failed: {0}")]
    Processing(String),
    /// One image alone needs more than the whole decode budget.
    #[error(
        "image too large to decode: it needs about {need_mib} MiB, the decode memory budget is {budget_mib} MiB (limits.decode_memory_bytes): send a smaller image"
    )]
    OverBudget { need_mib: u64, budget_mib: u64 },
    /// The budget stayed full for the whole wait.
    #[error(
        "too many large images are being decoded at once (waited {waited_ms} ms for the decode memory budget): retry shortly"
    )]
    Busy { waited_ms: u64 },
}

impl Error {
    /// Whether the image may succeed later: the decode budget was full.
    pub fn is_busy(&self) -> bool {
        matches!(self, Error::Busy { .. })
    }

    /// Whether the decode budget, not the image's content, refused it.
    pub fn is_budget(&self) -> bool {
        matches!(self, Error::Busy { .. } | Error::OverBudget { .. })
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest accepted encoded file.
    pub max_bytes: usize,
    /// Largest accepted width x height, checked from the header before the
    /// pixels are decoded (decompression bombs).
    pub max_pixels: u64,
    /// Bytes that the images decoded at once may hold together (decoded
    /// pixels, conversions, resize buffers), per process: see [`budget`].
    pub decode_memory_bytes: u64,
    /// Images decoded at once, per process; 0 = the number of cores.
    pub max_decodes: usize,
    /// How long a decode waits for room in the budget before it is refused
    /// as busy (retry).
    pub decode_wait_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_bytes: 32 * 1024 * 1024,
            max_pixels: 64 * 1024 * 1024,
            // The largest image within the default pixel limit (64 Mi
            // pixels of 16-bit RGBA TIFF) needs about 0.95 GiB.
            decode_memory_bytes: 1 << 30,
            max_decodes: 0,
            decode_wait_ms: 10_000,
        }
    }
}

/// What the header says, before any pixel is decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub format: ImageFormat,
    pub width: u32,
    pub height: u32,
    /// The decoder's output: channels and bit depth.
    pub color: ColorType,
    /// A PNG decoded row by row into 8-bit RGB (no full-size buffer of its
    /// native depth).
    pub streamed: bool,
    /// The orientation turns the image by 90 degrees: one more RGB copy.
    pub rotated: bool,
}

impl Header {
    /// An upper estimate of the bytes that decoding this image and the
    /// resizing after it (thumbnail, rendition, network input) hold at the
    /// peak; checked against real peaks in the tests.
    pub fn peak_bytes(&self) -> u64 {
        let (w, h) = (u64::from(self.width), u64::from(self.height));
        let px = w * h;
        let rgb = px * 3;
        let decoded = if self.streamed {
            rgb
        } else {
            let native = px * u64::from(self.color.bytes_per_pixel());
            // Decoders that keep a second full frame: GIF's canvas, the
            // CMYK and progressive JPEG buffers, TIFF strips.
            let decoder = match self.format {
                ImageFormat::Png | ImageFormat::Bmp | ImageFormat::WebP => native,
                _ => native * 2,
            };
            if self.color == ColorType::Rgb8 {
                decoder
            } else {
                decoder + rgb
            }
        };
        let oriented = if self.rotated { rgb * 2 } else { rgb };
        // Convolution resizing keeps one pass's output: at most the longer
        // side times the largest target side (384 for renditions, 256 for
        // the network), in RGB, plus the target.
        let resize = 2 * 3 * 512 * w.max(h) + (1 << 20);
        decoded.max(oriented) + resize
    }
}

/// A decoded, upright RGB image.
#[derive(Debug, Clone)]
pub struct Decoded {
    pub image: RgbImage,
    pub format: ImageFormat,
}

fn format_name(f: ImageFormat) -> String {
    format!("{f:?}").to_uppercase()
}

/// Checks `bytes` against `limits` and opens a decoder on them.
fn open<'a>(bytes: &'a [u8], limits: &Limits) -> Result<(ImageFormat, impl ImageDecoder + 'a)> {
    if bytes.is_empty() {
        return Err(Error::Empty);
    }
    if bytes.len() > limits.max_bytes {
        return Err(Error::TooManyBytes {
            bytes: bytes.len(),
            limit: limits.max_bytes,
        });
    }
    let format = image::guess_format(bytes).map_err(|_| Error::UnknownFormat)?;
    match format {
        ImageFormat::Jpeg
        | ImageFormat::Png
        | ImageFormat::WebP
        | ImageFormat::Gif
        | ImageFormat::Bmp
        | ImageFormat::Tiff => {}
        other => return Err(Error::UnsupportedFormat(format_name(other))),
    }
    if format == ImageFormat::Jpeg && !jpeg_is_complete(bytes) {
        // The JPEG decoder fills a cut-off scan with grey and reports
        // success; an incomplete upload must not be indexed as if whole.
        return Err(Error::Corrupt {
            format: "JPEG".into(),
            message: "truncated: the file ends before its end-of-image marker".into(),
        });
    }
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut lim = image::Limits::default();
    // Bounds the decoder's own allocations as a second line of defence.
    lim.max_alloc = Some(max_alloc(limits));
    reader.limits(lim);
    let decoder = reader.into_decoder().map_err(corrupt(format))?;
    let (width, height) = decoder.dimensions();
    if width == 0 || height == 0 {
        return Err(Error::ZeroSize { width, height });
    }
    let pixels = u64::from(width) * u64::from(height);
    if pixels > limits.max_pixels {
        return Err(Error::TooManyPixels {
            width,
            height,
            pixels,
            limit: limits.max_pixels,
        });
    }
    Ok((format, decoder))
}

fn max_alloc(limits: &Limits) -> u64 {
    limits.max_pixels.saturating_mul(8).max(1 << 20)
}

fn corrupt(format: ImageFormat) -> impl Fn(image::ImageError) -> Error {
    move |e| Error::Corrupt {
        format: format_name(format),
        message: e.to_string(),
    }
}

fn rotates(o: Orientation) -> bool {
    matches!(
        o,
        Orientation::Rotate90
            | Orientation::Rotate270
            | Orientation::Rotate90FlipH
            | Orientation::Rotate270FlipH
    )
}

/// Reads the header of `bytes` and checks it against `limits`, decoding no
/// pixel: what a caller needs to reserve memory before [`decode`].
pub fn probe(bytes: &[u8], limits: &Limits) -> Result<Header> {
    let (format, mut decoder) = open(bytes, limits)?;
    let (width, height) = decoder.dimensions();
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    Ok(Header {
        format,
        width,
        height,
        color: decoder.color_type(),
        streamed: format == ImageFormat::Png && !pixels::png_interlaced(bytes),
        rotated: rotates(orientation),
    })
}

/// The media type of an encoded image from its first bytes (`image/jpeg`,
/// `image/png`, `image/webp`...), `application/octet-stream` when no format
/// is recognised: what a kept original is served as.
pub fn media_type(bytes: &[u8]) -> &'static str {
    image::guess_format(bytes).map_or("application/octet-stream", |f| f.to_mime_type())
}

/// Decodes `bytes` into an upright 8-bit RGB image, enforcing `limits`.
///
/// EXIF orientation is applied; grayscale, CMYK, 16-bit and palette images
/// become RGB; transparent pixels are composited over white (what a viewer
/// shows), not left as whatever colour the encoder stored under alpha 0.
/// Non-interlaced PNGs are decoded row by row straight into 8-bit RGB, so a
/// 16-bit one never exists in memory at full size.
///
/// Memory is not budgeted here: callers that serve requests take
/// [`Header::peak_bytes`] from a [`budget::Budget`] first.
pub fn decode(bytes: &[u8], limits: &Limits) -> Result<Decoded> {
    let (format, mut decoder) = open(bytes, limits)?;
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let mut image = if format == ImageFormat::Png && !pixels::png_interlaced(bytes) {
        drop(decoder);
        pixels::png_rgb(bytes, max_alloc(limits))?
    } else {
        let img = DynamicImage::from_decoder(decoder).map_err(corrupt(format))?;
        pixels::to_rgb(img)
    };
    // On 8-bit RGB, after the conversion: a turn copies the smallest image.
    pixels::orient(&mut image, orientation);
    Ok(Decoded { image, format })
}

/// Walks the marker segments to the first scan and checks that an
/// end-of-image marker follows it. Segments before the scan (EXIF with its
/// own embedded thumbnail, say) are skipped by their lengths, so their
/// markers do not count.
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let mut pos = 2; // after SOI
    loop {
        while bytes.get(pos) == Some(&0xFF) && bytes.get(pos + 1) == Some(&0xFF) {
            pos += 1;
        }
        if bytes.get(pos) != Some(&0xFF) {
            return false;
        }
        let Some(&marker) = bytes.get(pos + 1) else {
            return false;
        };
        pos += 2;
        match marker {
            0xDA => {
                return bytes
                    .get(pos..)
                    .is_some_and(|rest| rest.windows(2).any(|w| w == [0xFF, 0xD9]))
            }
            0xD9 => return false,
            0x01 | 0xD0..=0xD7 => {}
            _ => {
                let Some(len) = bytes.get(pos..pos + 2) else {
                    return false;
                };
                pos += usize::from(u16::from_be_bytes([len[0], len[1]]));
            }
        }
    }
}

fn resize(src: &RgbImage, width: u32, height: u32) -> Result<RgbImage> {
    let (sw, sh) = src.dimensions();
    if (sw, sh) == (width, height) {
        return Ok(src.clone());
    }
    // Borrowed: a copy of a large source would double the peak.
    let src_img = FirImageRef::new(sw, sh, src.as_raw(), PixelType::U8x3)
        .map_err(|e| Error::Processing(e.to_string()))?;
    let mut dst = FirImage::new(width, height, PixelType::U8x3);
    // Convolution bilinear = PIL's antialiased bilinear, which torchvision's
    // Resize uses on PIL images: the reference the network was trained with.
    Resizer::new()
        .resize(
            &src_img,
            &mut dst,
            &ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear)),
        )
        .map_err(|e| Error::Processing(e.to_string()))?;
    RgbImage::from_raw(width, height, dst.into_vec())
        .ok_or_else(|| Error::Processing("resize produced a buffer of the wrong size".into()))
}

/// Past this long side of the resized image (an aspect ratio over 16:1),
/// preprocessing samples the central crop straight from the source: an
/// 8x48000 image, within the pixel limit, would otherwise be enlarged to
/// 256x1.5M pixels before the crop (seconds of CPU and a gigabyte).
const MAX_RESIZED_SIDE: u32 = 4096;

/// The network input: shorter side resized to 256 (bilinear), then the
/// central 224x224, as interleaved RGB bytes (HWC).
pub fn preprocess(img: &RgbImage) -> Result<Vec<u8>> {
    let (w, h) = img.dimensions();
    if w == 0 || h == 0 {
        return Err(Error::Processing("the image has no pixels".into()));
    }
    // torchvision Resize(256): the shorter side becomes 256, the longer
    // keeps the aspect ratio, truncated.
    let (nw, nh) = if w <= h {
        (
            RESIZE_SHORTER,
            ((RESIZE_SHORTER as u64 * h as u64) / w as u64).max(1) as u32,
        )
    } else {
        (
            ((RESIZE_SHORTER as u64 * w as u64) / h as u64).max(1) as u32,
            RESIZE_SHORTER,
        )
    };
    // torchvision CenterCrop: offsets rounded half to even of (size-224)/2.
    let left = ((nw - INPUT_SIZE) as f64 / 2.0).round_ties_even() as u32;
    let top = ((nh - INPUT_SIZE) as f64 / 2.0).round_ties_even() as u32;
    if nw.max(nh) > MAX_RESIZED_SIDE {
        // The same sampling grid as resizing then cropping: the crop's
        // pixels mapped back into the source.
        let (sx, sy) = (f64::from(w) / f64::from(nw), f64::from(h) / f64::from(nh));
        let side = f64::from(INPUT_SIZE);
        return resample(
            img,
            (
                f64::from(left) * sx,
                f64::from(top) * sy,
                side * sx,
                side * sy,
            ),
            INPUT_SIZE,
            false,
        );
    }
    let resized = resize(img, nw, nh)?;
    let mut out = Vec::with_capacity((INPUT_SIZE * INPUT_SIZE * 3) as usize);
    let stride = nw as usize * 3;
    let raw = resized.as_raw();
    for y in top..top + INPUT_SIZE {
        let start = y as usize * stride + left as usize * 3;
        out.extend_from_slice(&raw[start..start + INPUT_SIZE as usize * 3]);
    }
    Ok(out)
}

/// The region `(x, y, w, h)` of `img` resized to `side`x`side` (the same
/// bilinear filter as `preprocess`), mirrored left-right when `flip`: the
/// random resized crop of training, as HWC RGB bytes.
pub fn crop_resize(
    img: &RgbImage,
    region: (u32, u32, u32, u32),
    side: u32,
    flip: bool,
) -> Result<Vec<u8>> {
    let (sw, sh) = img.dimensions();
    let (x, y, w, h) = region;
    if w == 0 || h == 0 || x + w > sw || y + h > sh {
        return Err(Error::Processing(format!(
            "crop {region:?} is outside the {sw}x{sh} image"
        )));
    }
    resample(
        img,
        (f64::from(x), f64::from(y), f64::from(w), f64::from(h)),
        side,
        flip,
    )
}

/// The source box `(x, y, w, h)` (fractional) resampled to `side`x`side`.
fn resample(
    img: &RgbImage,
    region: (f64, f64, f64, f64),
    side: u32,
    flip: bool,
) -> Result<Vec<u8>> {
    let (sw, sh) = img.dimensions();
    let (x, y, w, h) = region;
    let src = FirImageRef::new(sw, sh, img.as_raw(), PixelType::U8x3)
        .map_err(|e| Error::Processing(e.to_string()))?;
    let mut dst = FirImage::new(side, side, PixelType::U8x3);
    Resizer::new()
        .resize(
            &src,
            &mut dst,
            &ResizeOptions::new()
                .crop(x, y, w, h)
                .resize_alg(ResizeAlg::Convolution(FilterType::Bilinear)),
        )
        .map_err(|e| Error::Processing(e.to_string()))?;
    let mut out = dst.into_vec();
    if flip {
        let row = side as usize * 3;
        for r in out.chunks_exact_mut(row) {
            let (mut a, mut b) = (0usize, row - 3);
            while a < b {
                for c in 0..3 {
                    r.swap(a + c, b + c);
                }
                a += 3;
                b -= 3;
            }
        }
    }
    Ok(out)
}

/// `img` with its shorter side at most `shorter` pixels (never enlarged).
pub fn shrink(img: RgbImage, shorter: u32) -> Result<RgbImage> {
    let (w, h) = img.dimensions();
    let short = w.min(h);
    if short <= shorter {
        return Ok(img);
    }
    let s = f64::from(shorter) / f64::from(short);
    let nw = ((f64::from(w) * s).round() as u32).max(1);
    let nh = ((f64::from(h) * s).round() as u32).max(1);
    resize(&img, nw, nh)
}

/// A JPEG of at most `THUMBNAIL_SIZE` on the long side.
pub fn thumbnail(img: &RgbImage) -> Result<Vec<u8>> {
    let (w, h) = img.dimensions();
    scaled_jpeg(
        img,
        f64::from(THUMBNAIL_SIZE) / f64::from(w.max(h).max(1)),
        80,
    )
}

/// A JPEG with the shorter side at most `shorter` pixels: a compact copy
/// that still re-embeds like the original (preprocessing scales the shorter
/// side to `RESIZE_SHORTER` anyway), kept so a collection can be rebuilt for
/// another model without the original files.
pub fn rendition(img: &RgbImage, shorter: u32, quality: u8) -> Result<Vec<u8>> {
    let (w, h) = img.dimensions();
    scaled_jpeg(
        img,
        f64::from(shorter) / f64::from(w.min(h).max(1)),
        quality,
    )
}

/// `img` scaled down by `scale` (never up) and encoded as JPEG.
fn scaled_jpeg(img: &RgbImage, scale: f64, quality: u8) -> Result<Vec<u8>> {
    let (w, h) = img.dimensions();
    let small;
    let src = if scale < 1.0 {
        let tw = ((f64::from(w) * scale).round() as u32).max(1);
        let th = ((f64::from(h) * scale).round() as u32).max(1);
        small = resize(img, tw, th)?;
        &small
    } else {
        img
    };
    let mut out = Vec::new();
    let enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality);
    src.write_with_encoder(enc)
        .map_err(|e| Error::Processing(format!("JPEG encoding: {e}")))?;
    Ok(out)
}

/// Originals up to this size are stored as they are (for rebuilds); larger
/// ones as a rendition.
pub const KEEP_ORIGINAL_BYTES: usize = 512 * 1024;
/// Shorter side of a stored rendition: preprocessing scales the shorter
/// side to `RESIZE_SHORTER` anyway, so it re-embeds like the original.
pub const RENDITION_SHORTER_SIDE: u32 = 384;
const RENDITION_QUALITY: u8 = 90;

/// What the index stores of an image besides its feature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredForms {
    pub thumbnail: Vec<u8>,
    /// A rendition when the file (`encoded_bytes`) is over
    /// `KEEP_ORIGINAL_BYTES`; `None`: store the file itself.
    pub rendition: Option<Vec<u8>>,
}

/// The thumbnail and, for a large file, the rendition of a decoded image:
/// made where it is decoded, so that no service decodes it twice.
pub fn stored_forms(img: &RgbImage, encoded_bytes: usize) -> Result<StoredForms> {
    let thumbnail = thumbnail(img)?;
    let rendition = if encoded_bytes > KEEP_ORIGINAL_BYTES {
        Some(rendition(img, RENDITION_SHORTER_SIDE, RENDITION_QUALITY)?)
    } else {
        None
    };
    Ok(StoredForms {
        thumbnail,
        rendition,
    })
}

/// Hex SHA-256 of the encoded file: the identity of an image in the index.
pub fn content_hash(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod tests;
