//! Conversions of decoded pixels to 8-bit RGB that allocate nothing but the
//! result: no intermediate RGBA or 16-bit copy of a large image.
//!
//! The arithmetic is the image crate's (`into_rgba8` rounding of 16-bit
//! samples, then alpha over white), so results are the same to the bit; the
//! tests compare them.

use std::io::Cursor;

use image::metadata::Orientation;
use image::{DynamicImage, ImageFormat, RgbImage};

use crate::{Error, Result};

/// A 16-bit sample rounded to 8 bits: round(v * 255 / 65535), as the image
/// crate does.
fn to8(v: u16) -> u8 {
    ((u32::from(v) + 128) / 257) as u8
}

/// `c` composited with alpha `a` over white, rounded.
fn over_white(c: u8, a: u8) -> u8 {
    let a = u32::from(a);
    ((u32::from(c) * a + 255 * (255 - a) + 127) / 255) as u8
}

/// Writes `dst.len() / 3` pixels of `channels` samples each (gray, gray +
/// alpha, RGB or RGBA; `sample(i)` gives the i-th sample in 8 bits) as RGB.
fn row_to_rgb(channels: usize, sample: impl Fn(usize) -> u8, dst: &mut [u8]) {
    for (p, out) in dst.chunks_exact_mut(3).enumerate() {
        let s = |k: usize| sample(p * channels + k);
        match channels {
            1 => out.fill(s(0)),
            2 => out.fill(over_white(s(0), s(1))),
            3 => {
                out[0] = s(0);
                out[1] = s(1);
                out[2] = s(2);
            }
            _ => {
                let a = s(3);
                out[0] = over_white(s(0), a);
                out[1] = over_white(s(1), a);
                out[2] = over_white(s(2), a);
            }
        }
    }
}

fn convert8(w: u32, h: u32, channels: usize, src: &[u8]) -> RgbImage {
    let mut out = RgbImage::new(w, h);
    row_to_rgb(channels, |i| src[i], &mut out);
    out
}

fn convert16(w: u32, h: u32, channels: usize, src: &[u16]) -> RgbImage {
    let mut out = RgbImage::new(w, h);
    row_to_rgb(channels, |i| to8(src[i]), &mut out);
    out
}

/// The decoded image as 8-bit RGB, alpha composited over white; the source
/// is dropped as soon as the result is made.
pub(crate) fn to_rgb(img: DynamicImage) -> RgbImage {
    let (w, h) = (img.width(), img.height());
    match img {
        DynamicImage::ImageRgb8(i) => i,
        DynamicImage::ImageLuma8(i) => convert8(w, h, 1, i.as_raw()),
        DynamicImage::ImageLumaA8(i) => convert8(w, h, 2, i.as_raw()),
        DynamicImage::ImageRgba8(i) => convert8(w, h, 4, i.as_raw()),
        DynamicImage::ImageLuma16(i) => convert16(w, h, 1, i.as_raw()),
        DynamicImage::ImageLumaA16(i) => convert16(w, h, 2, i.as_raw()),
        DynamicImage::ImageRgb16(i) => convert16(w, h, 3, i.as_raw()),
        DynamicImage::ImageRgba16(i) => convert16(w, h, 4, i.as_raw()),
        // Floating point (TIFF): rare, through the image crate.
        other if other.color().has_alpha() => {
            let rgba = other.into_rgba8();
            convert8(w, h, 4, rgba.as_raw())
        }
        other => other.into_rgb8(),
    }
}

/// Applies an EXIF orientation to the RGB image.
pub(crate) fn orient(img: &mut RgbImage, o: Orientation) {
    use image::imageops;
    match o {
        Orientation::NoTransforms => {}
        Orientation::Rotate90 => *img = imageops::rotate90(img),
        Orientation::Rotate180 => imageops::rotate180_in_place(img),
        Orientation::Rotate270 => *img = imageops::rotate270(img),
        Orientation::FlipHorizontal => imageops::flip_horizontal_in_place(img),
        Orientation::FlipVertical => imageops::flip_vertical_in_place(img),
        Orientation::Rotate90FlipH => {
            *img = imageops::rotate90(img);
            imageops::flip_horizontal_in_place(img);
        }
        Orientation::Rotate270FlipH => {
            *img = imageops::rotate270(img);
            imageops::flip_horizontal_in_place(img);
        }
    }
}

/// Whether the PNG's header says Adam7 interlacing (its rows arrive in seven
/// passes: decoded whole by the image crate instead).
pub(crate) fn png_interlaced(bytes: &[u8]) -> bool {
    // Signature (8), IHDR length and type (8), width, height (8), depth,
    // colour type, compression, filter: the interlace method is byte 28.
    bytes.get(12..16) == Some(b"IHDR") && bytes.get(28).is_some_and(|&m| m != 0)
}

fn png_error(e: png::DecodingError) -> Error {
    Error::Corrupt {
        format: "PNG".into(),
        message: e.to_string(),
    }
}

/// Decodes a non-interlaced PNG row by row straight into 8-bit RGB: the
/// only full-size buffer is the result. Orientation is left to the caller.
pub(crate) fn png_rgb(bytes: &[u8], max_alloc: u64) -> Result<RgbImage> {
    let limits = png::Limits {
        bytes: usize::try_from(max_alloc).unwrap_or(usize::MAX),
    };
    let mut decoder = png::Decoder::new_with_limits(Cursor::new(bytes), limits);
    // Palette and low bit depths to 8 bits, tRNS to an alpha channel: what
    // the image crate asks for too.
    decoder.set_transformations(png::Transformations::EXPAND);
    let mut reader = decoder.read_info().map_err(png_error)?;
    let (w, h) = reader.info().size();
    let (color, depth) = reader.output_color_type();
    let channels = color.samples();
    let wide = depth == png::BitDepth::Sixteen;
    let mut out = RgbImage::new(w, h);
    let row_bytes = w as usize * 3;
    for dst in out.chunks_exact_mut(row_bytes) {
        let row = reader
            .next_row()
            .map_err(png_error)?
            .ok_or_else(|| Error::Corrupt {
                format: format!("{:?}", ImageFormat::Png).to_uppercase(),
                message: "the image data ends before the last row".into(),
            })?;
        let data = row.data();
        if wide {
            row_to_rgb(
                channels,
                |i| to8(u16::from_be_bytes([data[2 * i], data[2 * i + 1]])),
                dst,
            );
        } else {
            row_to_rgb(channels, |i| data[i], dst);
        }
    }
    Ok(out)
}
