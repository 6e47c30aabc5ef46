//! The export file of a collection, one format for the CLI, REST and the
//! Python client: the 8 bytes [`MAGIC`], then [`ExportChunk`] messages,
//! each prefixed by its length as a protobuf varint (prost's
//! `encode_length_delimited`); the first chunk is the header.
//!
//! The [`Decoder`] is fed bytes as they arrive (a file read piece by piece,
//! a request body) and hands out whole chunks, so that nothing holds a
//! whole export in memory.

use prost::Message;

use crate::v1::ExportChunk;

/// The first bytes of every export file (format version 1).
pub const MAGIC: &[u8; 8] = b"CBIREXP1";

/// One chunk as it is written to the file, length prefix included.
pub fn encode(chunk: &ExportChunk) -> Vec<u8> {
    chunk.encode_length_delimited_to_vec()
}

/// Reads chunks out of the bytes of an export file fed piece by piece.
pub struct Decoder {
    buf: Vec<u8>,
    /// Bytes of `buf` already handed out as chunks.
    start: usize,
    magic_seen: bool,
    max_chunk: usize,
    chunks: u64,
}

impl Decoder {
    /// A decoder refusing chunks over `max_chunk` bytes (a corrupt length
    /// would otherwise make it wait for, and buffer, gigabytes).
    pub fn new(max_chunk: usize) -> Self {
        Self {
            buf: Vec::new(),
            start: 0,
            magic_seen: false,
            max_chunk,
            chunks: 0,
        }
    }

    /// Appends bytes of the file.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start >= self.buf.len() / 2 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole chunk, or `None` until more bytes are pushed.
    pub fn next_chunk(&mut self) -> Result<Option<ExportChunk>, String> {
        let rest = &self.buf[self.start..];
        if !self.magic_seen {
            if rest.len() < MAGIC.len() {
                return Ok(None);
            }
            if &rest[..MAGIC.len()] != MAGIC {
                return Err(
                    "not a cbir export file: it does not start with CBIREXP1 (make one with \
                     `cbir collection export`)"
                        .into(),
                );
            }
            self.magic_seen = true;
            self.start += MAGIC.len();
            return self.next_chunk();
        }
        let Some((len, prefix)) = varint(rest)? else {
            return Ok(None);
        };
        if len > self.max_chunk as u64 {
            return Err(format!(
                "chunk {} of the export claims {len} bytes, over the limit of {} bytes: the \
                 file is corrupt",
                self.chunks + 1,
                self.max_chunk
            ));
        }
        let end = prefix + len as usize;
        if rest.len() < end {
            return Ok(None);
        }
        let chunk = ExportChunk::decode(&rest[prefix..end]).map_err(|e| {
            format!(
                "chunk {} of the export cannot be read ({e}): the file is corrupt",
                self.chunks + 1
            )
        })?;
        self.start += end;
        self.chunks += 1;
        Ok(Some(chunk))
    }

    /// Checks, at the end of the input, that no partial chunk is left.
    pub fn finish(&self) -> Result<(), String> {
        let left = self.buf.len() - self.start;
        if !self.magic_seen || left > 0 {
            return Err(format!(
                "the export file ends inside a chunk ({left} bytes after chunk {}): it is \
                 truncated",
                self.chunks
            ));
        }
        Ok(())
    }
}

/// A varint at the start of `b`: its value and length, `None` when `b`
/// ends inside it.
fn varint(b: &[u8]) -> Result<Option<(u64, usize)>, String> {
    let mut v: u64 = 0;
    for (i, byte) in b.iter().enumerate().take(10) {
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(Some((v, i + 1)));
        }
    }
    if b.len() >= 10 {
        return Err("a chunk length of the export is not a varint: the file is corrupt".into());
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::{export_chunk, ExportHeader, ImageBatch, ImageRecord};

    fn sample() -> Vec<ExportChunk> {
        let header = ExportChunk {
            chunk: Some(export_chunk::Chunk::Header(ExportHeader {
                version: 1,
                collection: None,
                count: 2,
            })),
            target_name: "x".into(),
        };
        let rec = |h: &str| ImageRecord {
            content_hash: h.into(),
            feature: vec![0.5; 300],
            thumbnail: vec![7; 1000],
            ..Default::default()
        };
        let images = ExportChunk {
            chunk: Some(export_chunk::Chunk::Images(ImageBatch {
                records: vec![rec("a"), rec("b")],
            })),
            target_name: String::new(),
        };
        vec![header, images]
    }

    fn file(chunks: &[ExportChunk]) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        for c in chunks {
            out.extend(encode(c));
        }
        out
    }

    #[test]
    fn chunks_come_back_whatever_the_pieces() {
        let chunks = sample();
        let bytes = file(&chunks);
        for piece in [1, 3, 7, 100, bytes.len()] {
            let mut d = Decoder::new(1 << 20);
            let mut got = Vec::new();
            for p in bytes.chunks(piece) {
                d.push(p);
                while let Some(c) = d.next_chunk().expect("decodes") {
                    got.push(c);
                }
            }
            d.finish().expect("whole");
            assert_eq!(got, chunks, "pieces of {piece} bytes");
        }
    }

    #[test]
    fn truncated_corrupt_and_foreign_files_are_refused() {
        let bytes = file(&sample());
        let mut d = Decoder::new(1 << 20);
        d.push(&bytes[..bytes.len() - 5]);
        while d.next_chunk().expect("no error before the end").is_some() {}
        assert!(d.finish().unwrap_err().contains("truncated"));

        let mut d = Decoder::new(1 << 20);
        d.push(b"PK\x03\x04 not an export");
        assert!(d.next_chunk().unwrap_err().contains("not a cbir export"));

        let mut d = Decoder::new(100);
        d.push(&bytes);
        d.next_chunk().expect("the small header");
        assert!(d.next_chunk().unwrap_err().contains("over the limit"));

        let mut d = Decoder::new(1 << 20);
        let mut bad = MAGIC.to_vec();
        bad.extend([3, 0xff, 0xff, 0xff]);
        d.push(&bad);
        assert!(d.next_chunk().unwrap_err().contains("corrupt"));
    }
}
