//! What a result shows besides its distance, packed: at tens of millions
//! of images in one process, four `String`s and an `Arc` per image cost
//! more than 200 bytes of headers and allocator rounding on top of their
//! text, which is as much as the rest of an image's memory beyond its
//! codes. Here an image holds one allocation (its names, back to back) and
//! its SHA-256 as 32 bytes.

use std::borrow::Cow;
use std::fmt;

#[derive(Clone, PartialEq, Eq, Default)]
pub struct Meta {
    /// file_name, path and label back to back, after the content hash
    /// when that is not 64 lowercase hex digits (`hash_in_text`).
    text: Box<str>,
    /// Where, in `text`, the hash text, file_name and path end.
    ends: [u32; 3],
    /// The SHA-256 when it was 64 lowercase hex digits.
    hash: [u8; 32],
    hash_in_text: bool,
    /// When the image was first stored (Unix ms), for time filters.
    pub created_at_ms: i64,
}

/// The 32 bytes of a 64-digit lowercase hex string; None for anything else
/// (uppercase included, so that the text comes back as it went in).
fn decode_hex(s: &str) -> Option<[u8; 32]> {
    if s.bytes().any(|c| c.is_ascii_uppercase()) {
        return None;
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

impl Meta {
    pub fn new(
        content_hash: &str,
        file_name: &str,
        path: &str,
        label: &str,
        created_at_ms: i64,
    ) -> Self {
        let raw = decode_hex(content_hash);
        let hash_text = if raw.is_some() { "" } else { content_hash };
        let mut text =
            String::with_capacity(hash_text.len() + file_name.len() + path.len() + label.len());
        let mut ends = [0u32; 3];
        for (end, part) in ends.iter_mut().zip([hash_text, file_name, path]) {
            text.push_str(part);
            *end = text.len() as u32;
        }
        text.push_str(label);
        Self {
            text: text.into_boxed_str(),
            ends,
            hash: raw.unwrap_or_default(),
            hash_in_text: raw.is_none(),
            created_at_ms,
        }
    }

    /// The file's SHA-256 as 64 lowercase hex digits (or the text it was
    /// stored with, when that was something else).
    pub fn content_hash(&self) -> Cow<'_, str> {
        if self.hash_in_text {
            return Cow::Borrowed(&self.text[..self.ends[0] as usize]);
        }
        Cow::Owned(hex::encode(self.hash))
    }

    pub fn file_name(&self) -> &str {
        &self.text[self.ends[0] as usize..self.ends[1] as usize]
    }

    pub fn path(&self) -> &str {
        &self.text[self.ends[1] as usize..self.ends[2] as usize]
    }

    pub fn label(&self) -> &str {
        &self.text[self.ends[2] as usize..]
    }

    /// The same image under another label.
    pub fn with_label(&self, label: &str) -> Self {
        Self::new(
            &self.content_hash(),
            self.file_name(),
            self.path(),
            label,
            self.created_at_ms,
        )
    }

    /// Heap bytes beyond the struct itself.
    pub fn heap_bytes(&self) -> usize {
        self.text.len()
    }
}

impl fmt::Debug for Meta {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Meta")
            .field("content_hash", &self.content_hash())
            .field("file_name", &self.file_name())
            .field("path", &self.path())
            .field("label", &self.label())
            .field("created_at_ms", &self.created_at_ms)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_comes_back_as_it_went_in() {
        let hex = "00ff10a0b1c2d3e4f5060708090a0b0c0d0e0f101112131415161718191a1b1c";
        for hash in [hex, "", "h17", &hex.to_uppercase(), &hex[..63], "zz"] {
            for (name, path, label) in [
                ("a.jpg", "trip/2024/a.jpg", "beach"),
                ("", "", ""),
                ("ünï.png", "", "dog"),
            ] {
                let m = Meta::new(hash, name, path, label, 7);
                assert_eq!(m.content_hash(), hash);
                assert_eq!(m.file_name(), name);
                assert_eq!(m.path(), path);
                assert_eq!(m.label(), label);
                assert_eq!(m.created_at_ms, 7);
                let l = m.with_label("cat");
                assert_eq!(
                    (l.label(), l.path(), l.content_hash()),
                    ("cat", path, hash.into())
                );
            }
        }
    }

    #[test]
    fn a_sha256_takes_no_text() {
        let hex = "ab".repeat(32);
        let m = Meta::new(&hex, "x.jpg", "", "", 0);
        assert_eq!(m.heap_bytes(), "x.jpg".len());
        assert!(std::mem::size_of::<Meta>() <= 72);
    }
}
