use image::{ImageFormat, Rgb, RgbImage, Rgba, RgbaImage};

use super::testing::png_claiming;
use super::*;

fn two_colour(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, _| {
        if x < w / 2 {
            Rgb([255, 0, 0])
        } else {
            Rgb([0, 0, 255])
        }
    })
}

fn encode(img: &DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, format).expect("encode");
    out.into_inner()
}

#[test]
fn decodes_every_supported_format() {
    let img = DynamicImage::ImageRgb8(two_colour(40, 20));
    for format in [
        ImageFormat::Png,
        ImageFormat::Jpeg,
        ImageFormat::WebP,
        ImageFormat::Gif,
        ImageFormat::Bmp,
        ImageFormat::Tiff,
    ] {
        let bytes = encode(&img, format);
        let d = decode(&bytes, &Limits::default()).unwrap_or_else(|e| panic!("{format:?}: {e}"));
        assert_eq!(d.format, format);
        assert_eq!(d.image.dimensions(), (40, 20), "{format:?}");
        let left = d.image.get_pixel(5, 10);
        let right = d.image.get_pixel(35, 10);
        assert!(left[0] > 200 && left[2] < 60, "{format:?} left {left:?}");
        assert!(
            right[2] > 200 && right[0] < 60,
            "{format:?} right {right:?}"
        );
    }
}

#[test]
fn grayscale_and_sixteen_bit_become_rgb() {
    let gray = DynamicImage::ImageLuma8(image::GrayImage::from_pixel(8, 8, image::Luma([100])));
    let d = decode(&encode(&gray, ImageFormat::Png), &Limits::default()).expect("gray");
    assert_eq!(d.image.get_pixel(3, 3), &Rgb([100, 100, 100]));
    let deep = DynamicImage::ImageRgb16(image::ImageBuffer::from_pixel(
        4,
        4,
        Rgb([65535u16, 0, 32768]),
    ));
    let d = decode(&encode(&deep, ImageFormat::Png), &Limits::default()).expect("16-bit");
    assert_eq!(d.image.get_pixel(0, 0), &Rgb([255, 0, 128]));
}

#[test]
fn alpha_is_composited_over_white() {
    let mut rgba = RgbaImage::from_pixel(4, 4, Rgba([0, 0, 0, 0]));
    rgba.put_pixel(0, 0, Rgba([255, 0, 0, 255]));
    rgba.put_pixel(1, 0, Rgba([0, 0, 0, 128]));
    let d = decode(
        &encode(&DynamicImage::ImageRgba8(rgba), ImageFormat::Png),
        &Limits::default(),
    )
    .expect("rgba");
    assert_eq!(d.image.get_pixel(0, 0), &Rgb([255, 0, 0]));
    assert_eq!(d.image.get_pixel(3, 3), &Rgb([255, 255, 255]));
    assert_eq!(d.image.get_pixel(1, 0), &Rgb([127, 127, 127]));
}

#[test]
fn cmyk_jpeg_becomes_rgb() {
    let d = decode(
        include_bytes!("../tests/fixtures/cmyk.jpg"),
        &Limits::default(),
    )
    .expect("cmyk");
    assert_eq!(d.image.dimensions(), (32, 16));
    let left = d.image.get_pixel(4, 8);
    let right = d.image.get_pixel(28, 8);
    assert!(
        left[0] > 200 && left[1] < 60 && left[2] < 60,
        "left {left:?}"
    );
    assert!(right[2] > 200 && right[0] < 60, "right {right:?}");
}

#[test]
fn exif_orientation_is_applied() {
    let d = decode(
        include_bytes!("../tests/fixtures/exif_orientation6.jpg"),
        &Limits::default(),
    )
    .expect("exif");
    // Stored 32x16 with red on the left; orientation 6 turns it 90 degrees
    // clockwise, so it shows 16x32 with red on top.
    assert_eq!(d.image.dimensions(), (16, 32));
    let top = d.image.get_pixel(8, 4);
    let bottom = d.image.get_pixel(8, 28);
    assert!(top[0] > 200 && top[2] < 60, "top {top:?}");
    assert!(bottom[2] > 200 && bottom[0] < 60, "bottom {bottom:?}");
}

#[test]
fn bad_inputs_get_clear_errors() {
    let limits = Limits::default();
    assert_eq!(decode(b"", &limits).unwrap_err(), Error::Empty);
    assert_eq!(
        decode(b"hello, this is a text file\n", &limits).unwrap_err(),
        Error::UnknownFormat
    );
    let jpeg = encode(
        &DynamicImage::ImageRgb8(two_colour(64, 64)),
        ImageFormat::Jpeg,
    );
    for cut in [jpeg.len() / 2, jpeg.len() - 2, 3, 40] {
        let err = decode(&jpeg[..cut], &limits).unwrap_err();
        assert!(
            matches!(err, Error::Corrupt { .. }),
            "cut at {cut}: {err:?}"
        );
        assert!(err.to_string().starts_with("corrupt JPEG image"), "{err}");
    }
    // Bytes after the end-of-image marker are tolerated, as viewers do.
    let mut trailing = jpeg.clone();
    trailing.extend_from_slice(b"trailing bytes");
    assert!(decode(&trailing, &limits).is_ok());
    let bomb = png_claiming(50_000, 50_000);
    let err = decode(&bomb, &limits).unwrap_err();
    assert!(
        matches!(
            err,
            Error::TooManyPixels {
                width: 50_000,
                height: 50_000,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("50000x50000"), "{err}");
    let small = Limits {
        max_bytes: 10,
        ..Limits::default()
    };
    assert!(matches!(
        decode(&jpeg, &small).unwrap_err(),
        Error::TooManyBytes { limit: 10, .. }
    ));
}

#[test]
fn preprocess_follows_resize_then_center_crop() {
    // 1x1 still gives a full input.
    let one = RgbImage::from_pixel(1, 1, Rgb([10, 20, 30]));
    let x = preprocess(&one).expect("1x1");
    assert_eq!(x.len(), 224 * 224 * 3);
    assert!(x.chunks(3).all(|p| p == [10, 20, 30]));
    // A wide image keeps its centre: the crop of a 3-band image is the middle band.
    let wide = RgbImage::from_fn(600, 200, |x, _| match x {
        0..250 => Rgb([255, 0, 0]),
        250..350 => Rgb([0, 255, 0]),
        _ => Rgb([0, 0, 255]),
    });
    let x = preprocess(&wide).expect("wide");
    let px = |x_: usize, y: usize| &x[(y * 224 + x_) * 3..(y * 224 + x_) * 3 + 3];
    assert_eq!(px(112, 112), [0, 255, 0]);
    // 600x200 -> 768x256: green spans 320..448, the crop 272..496, so both
    // crop edges lie in the outer bands.
    assert!(px(0, 100)[0] > 200, "{:?}", px(0, 100));
    assert!(px(223, 100)[2] > 200, "{:?}", px(223, 100));
}

/// Resize to shorter side 256, then the central 224: the reference the
/// cropped path must match.
fn resize_then_crop(img: &RgbImage) -> Vec<u8> {
    let (w, h) = img.dimensions();
    let (nw, nh) = if w <= h {
        (256, (256 * h as u64 / w as u64) as u32)
    } else {
        ((256 * w as u64 / h as u64) as u32, 256)
    };
    let r = resize(img, nw, nh).expect("resize");
    let left = ((nw - 224) as f64 / 2.0).round_ties_even() as u32;
    let top = ((nh - 224) as f64 / 2.0).round_ties_even() as u32;
    image::imageops::crop_imm(&r, left, top, 224, 224)
        .to_image()
        .into_raw()
}

#[test]
fn extreme_aspect_ratios_preprocess_fast_and_like_resize_then_crop() {
    // Found by fuzzing: a GIF of 8x48390 pixels (within the pixel limit)
    // took more than 30 s to enlarge to 256x1.5M before the crop.
    let tall = RgbImage::from_fn(8, 48_390, |x, y| Rgb([(x * 30) as u8, (y % 251) as u8, 7]));
    let started = std::time::Instant::now();
    let x = preprocess(&tall).expect("tall");
    assert_eq!(x.len(), 224 * 224 * 3);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    // Where both paths are affordable they agree (17:1 and 1:40 take the
    // cropped path): the same sampling grid, up to rounding.
    for (w, h) in [(34, 600), (800, 20), (13, 4000)] {
        let img = RgbImage::from_fn(w, h, |x, y| {
            Rgb([
                ((x * 7 + y * 3) % 256) as u8,
                ((x * y) % 253) as u8,
                ((y * 5) % 256) as u8,
            ])
        });
        let fast = preprocess(&img).expect("preprocess");
        let reference = resize_then_crop(&img);
        let diffs: Vec<i32> = fast
            .iter()
            .zip(&reference)
            .map(|(a, b)| (i32::from(*a) - i32::from(*b)).abs())
            .collect();
        let mean = diffs.iter().sum::<i32>() as f64 / diffs.len() as f64;
        let max = diffs.iter().max().copied().unwrap_or(0);
        assert!(mean < 0.5 && max <= 2, "{w}x{h}: mean {mean}, max {max}");
    }
}

#[test]
fn thumbnail_is_small_jpeg() {
    let big = two_colour(1000, 500);
    let t = thumbnail(&big).expect("thumb");
    let d = decode(&t, &Limits::default()).expect("decode thumb");
    assert_eq!(d.format, ImageFormat::Jpeg);
    assert_eq!(d.image.dimensions(), (256, 128));
    let tiny = two_colour(10, 10);
    let d = decode(&thumbnail(&tiny).expect("thumb"), &Limits::default()).expect("decode");
    assert_eq!(d.image.dimensions(), (10, 10));
}

#[test]
fn content_hash_is_sha256_hex() {
    assert_eq!(
        content_hash(b"abc"),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
}

#[test]
fn rendition_keeps_the_shorter_side() {
    let big = two_colour(1000, 500);
    let r = rendition(&big, 320, 90).expect("rendition");
    let d = decode(&r, &Limits::default()).expect("decode rendition");
    assert_eq!(d.image.dimensions(), (640, 320));
    let small = two_colour(100, 50);
    let r = rendition(&small, 320, 90).expect("rendition");
    let d = decode(&r, &Limits::default()).expect("decode rendition");
    assert_eq!(d.image.dimensions(), (100, 50), "never upscaled");
}

#[test]
fn crop_resize_takes_the_region_and_flips_it() {
    // Left half red, right half blue.
    let img = RgbImage::from_fn(100, 50, |x, _| {
        if x < 50 {
            image::Rgb([255, 0, 0])
        } else {
            image::Rgb([0, 0, 255])
        }
    });
    let red = crop_resize(&img, (0, 0, 50, 50), 16, false).expect("crop");
    assert_eq!(red.len(), 16 * 16 * 3);
    // Away from the crop's right edge (the filter reads a pixel or two past
    // it), the left half of the image is all red.
    for row in red.chunks(16 * 3) {
        assert!(row[..12 * 3].chunks(3).all(|p| p == [255, 0, 0]));
    }
    let whole = crop_resize(&img, (0, 0, 100, 50), 16, false).expect("crop");
    let flipped = crop_resize(&img, (0, 0, 100, 50), 16, true).expect("crop");
    assert_eq!(&whole[..3], &[255, 0, 0]);
    assert_eq!(&flipped[..3], &[0, 0, 255]);
    assert!(crop_resize(&img, (60, 0, 50, 50), 16, false).is_err());
    assert_eq!(shrink(img, 20).expect("shrink").dimensions(), (40, 20));
}

/// What `decode` gave before it converted row by row: the image crate's
/// conversions (the reference the network's features were checked with).
fn reference_rgb(bytes: &[u8]) -> RgbImage {
    let mut img = image::load_from_memory(bytes).expect("reference decode");
    let mut decoder = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .expect("format")
        .into_decoder()
        .expect("decoder");
    img.apply_orientation(
        decoder
            .orientation()
            .unwrap_or(image::metadata::Orientation::NoTransforms),
    );
    if !img.color().has_alpha() {
        return img.into_rgb8();
    }
    let rgba = img.into_rgba8();
    RgbImage::from_fn(rgba.width(), rgba.height(), |x, y| {
        let p = rgba.get_pixel(x, y);
        let a = u32::from(p[3]);
        Rgb([0, 1, 2].map(|c| ((u32::from(p[c]) * a + 255 * (255 - a) + 127) / 255) as u8))
    })
}

#[test]
fn every_png_colour_type_converts_like_the_image_crate() {
    use image::{ImageBuffer, Luma, LumaA};
    // Pseudo-random samples, so rounding of every value range is exercised.
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let (w, h) = (37, 23);
    let images = [
        DynamicImage::ImageLuma8(ImageBuffer::from_fn(w, h, |_, _| Luma([next() as u8]))),
        DynamicImage::ImageLumaA8(ImageBuffer::from_fn(w, h, |_, _| {
            LumaA([next() as u8, next() as u8])
        })),
        DynamicImage::ImageRgb8(ImageBuffer::from_fn(w, h, |_, _| {
            Rgb([next() as u8, next() as u8, next() as u8])
        })),
        DynamicImage::ImageRgba8(ImageBuffer::from_fn(w, h, |_, _| {
            Rgba([next() as u8, next() as u8, next() as u8, next() as u8])
        })),
        DynamicImage::ImageLuma16(ImageBuffer::from_fn(w, h, |_, _| Luma([next() as u16]))),
        DynamicImage::ImageLumaA16(ImageBuffer::from_fn(w, h, |_, _| {
            LumaA([next() as u16, next() as u16])
        })),
        DynamicImage::ImageRgb16(ImageBuffer::from_fn(w, h, |_, _| {
            Rgb([next() as u16, next() as u16, next() as u16])
        })),
        DynamicImage::ImageRgba16(ImageBuffer::from_fn(w, h, |_, _| {
            Rgba([next() as u16, next() as u16, next() as u16, next() as u16])
        })),
    ];
    for img in images {
        let color = img.color();
        for format in [ImageFormat::Png, ImageFormat::Tiff] {
            let mut out = Cursor::new(Vec::new());
            if format == ImageFormat::Tiff && img.write_to(&mut out, format).is_err() {
                // The TIFF encoder writes no gray + alpha.
                continue;
            }
            let bytes = encode(&img, format);
            let got = decode(&bytes, &Limits::default())
                .unwrap_or_else(|e| panic!("{color:?} {format:?}: {e}"));
            assert!(
                got.image == reference_rgb(&bytes),
                "{color:?} as {format:?} differs from the image crate's conversion"
            );
        }
    }
    // The crafted 16-bit files of the memory tests, with and without alpha.
    for alpha in [false, true] {
        let bytes = testing::png_16bit(300, 7, alpha);
        let got = decode(&bytes, &Limits::default()).expect("decodes");
        assert!(
            got.image == reference_rgb(&bytes),
            "png_16bit alpha={alpha}"
        );
    }
}

/// An Adam7-interlaced 8-bit RGB PNG (the png crate writes none), its
/// image data in stored deflate blocks.
fn interlaced_png(w: u32, h: u32, px: impl Fn(u32, u32) -> [u8; 3]) -> Vec<u8> {
    let mut raw = Vec::new();
    for (x0, y0, dx, dy) in [
        (0, 0, 8, 8),
        (4, 0, 8, 8),
        (0, 4, 4, 8),
        (2, 0, 4, 4),
        (0, 2, 2, 4),
        (1, 0, 2, 2),
        (0, 1, 1, 2),
    ] {
        if x0 >= w || y0 >= h {
            continue;
        }
        for y in (y0..h).step_by(dy) {
            raw.push(0);
            for x in (x0..w).step_by(dx) {
                raw.extend_from_slice(&px(x, y));
            }
        }
    }
    let mut z = vec![0x78, 0x01];
    let blocks: Vec<&[u8]> = raw.chunks(65_535).collect();
    for (i, b) in blocks.iter().enumerate() {
        z.push(u8::from(i + 1 == blocks.len()));
        let len = b.len() as u16;
        z.extend_from_slice(&len.to_le_bytes());
        z.extend_from_slice(&(!len).to_le_bytes());
        z.extend_from_slice(b);
    }
    let (mut a, mut b) = (1u32, 0u32);
    for &byte in &raw {
        a = (a + u32::from(byte)) % 65_521;
        b = (b + a) % 65_521;
    }
    z.extend_from_slice(&((b << 16) | a).to_be_bytes());
    // The IHDR of a plain PNG with the interlace byte set, then the data.
    let mut plain = Vec::new();
    let mut enc = png::Encoder::new(&mut plain, w, h);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    enc.write_header().expect("header").finish().ok();
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = plain[16..29].to_vec();
    ihdr[12] = 1;
    for (kind, data) in [(&b"IHDR"[..], ihdr), (b"IDAT", z), (b"IEND", Vec::new())] {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut body = kind.to_vec();
        body.extend_from_slice(&data);
        out.extend_from_slice(&body);
        out.extend_from_slice(&testing::crc32(&body).to_be_bytes());
    }
    out
}

#[test]
fn interlaced_and_palette_pngs_decode_like_the_image_crate() {
    let interlaced = interlaced_png(19, 11, |x, y| {
        [(x * 13) as u8, (y * 23) as u8, (x * y) as u8]
    });
    assert!(
        !probe(&interlaced, &Limits::default())
            .expect("probe")
            .streamed
    );
    let got = decode(&interlaced, &Limits::default()).expect("decodes");
    assert!(got.image == reference_rgb(&interlaced), "interlaced");
    assert_eq!(got.image.get_pixel(5, 3).0, [65, 69, 15]);
    // A palette with transparency: expanded and composited row by row.
    let mut palette = Vec::new();
    let mut enc = png::Encoder::new(&mut palette, 19, 11);
    enc.set_color(png::ColorType::Indexed);
    enc.set_depth(png::BitDepth::Eight);
    enc.set_palette(vec![255, 0, 0, 0, 255, 0, 0, 0, 255]);
    enc.set_trns(vec![255, 128, 0]);
    let mut wr = enc.write_header().expect("header");
    let data: Vec<u8> = (0..19 * 11).map(|i| (i % 3) as u8).collect();
    wr.write_image_data(&data).expect("data");
    wr.finish().expect("finish");
    assert!(probe(&palette, &Limits::default()).expect("probe").streamed);
    let got = decode(&palette, &Limits::default()).expect("decodes");
    assert!(got.image == reference_rgb(&palette), "palette");
}

#[test]
fn probe_reads_the_header_without_decoding() {
    let bomb = testing::png_16bit(8000, 8000, true);
    let h = probe(&bomb, &Limits::default()).expect("probe");
    assert_eq!((h.width, h.height), (8000, 8000));
    assert_eq!(h.color, image::ColorType::Rgba16);
    assert!(h.streamed);
    // Streamed: the 8-bit RGB result and resize buffers, not 512 MB.
    let rgb = 8000u64 * 8000 * 3;
    assert!(h.peak_bytes() >= rgb && h.peak_bytes() < rgb + (40 << 20));
    let e = probe(&png_claiming(20_000, 20_000), &Limits::default()).unwrap_err();
    assert!(matches!(e, Error::TooManyPixels { .. }), "{e}");
}

#[test]
fn media_types_are_sniffed() {
    assert_eq!(media_type(&[0xFF, 0xD8, 0xFF, 0xE0, 0, 0]), "image/jpeg");
    assert_eq!(media_type(b"\x89PNG\r\n\x1a\n...."), "image/png");
    assert_eq!(media_type(b"RIFF\0\0\0\0WEBPVP8 "), "image/webp");
    assert_eq!(media_type(b"GIF89a.."), "image/gif");
    assert_eq!(media_type(b"not an image"), "application/octet-stream");
    assert_eq!(media_type(&[]), "application/octet-stream");
}
