//! Crafted inputs for tests of this crate and of the services.

pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A PNG whose header claims `w`x`h` but carries almost no pixel data.
pub fn png_claiming(w: u32, h: u32) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut chunk = |kind: &[u8], data: &[u8]| {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut body = kind.to_vec();
        body.extend_from_slice(data);
        out.extend_from_slice(&body);
        out.extend_from_slice(&crc32(&body).to_be_bytes());
    };
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    chunk(b"IHDR", &ihdr);
    chunk(b"IDAT", &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]);
    chunk(b"IEND", &[]);
    out
}

/// A real `w`x`h` 16-bit PNG (RGBA when `alpha`) that compresses to
/// almost nothing: every row is the same gradient, so the Up filter
/// leaves zeros. An 8000x8000 RGBA one is about 0.5 MB and 512 MB of
/// native pixels: the decompression bomb of issue 13.
pub fn png_16bit(w: u32, h: u32, alpha: bool) -> Vec<u8> {
    use std::io::Write;
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, w, h);
    enc.set_color(if alpha {
        png::ColorType::Rgba
    } else {
        png::ColorType::Rgb
    });
    enc.set_depth(png::BitDepth::Sixteen);
    enc.set_compression(png::Compression::High);
    enc.set_filter(png::Filter::Up);
    let channels = if alpha { 4 } else { 3 };
    let mut row = Vec::with_capacity(w as usize * channels * 2);
    for x in 0..w {
        let v = ((u64::from(x) * 65535) / u64::from(w.max(2) - 1)) as u16;
        let px = [v, 65535 - v, v / 2, 40000];
        for s in &px[..channels] {
            row.extend_from_slice(&s.to_be_bytes());
        }
    }
    {
        let mut writer = enc.write_header().expect("png header");
        let mut stream = writer.stream_writer().expect("png stream");
        for _ in 0..h {
            stream.write_all(&row).expect("png row");
        }
        stream.finish().expect("png end");
    }
    out
}
