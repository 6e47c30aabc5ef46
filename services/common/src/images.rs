//! Image files by name: the extensions every part of the system accepts,
//! and the folder walk that lists them.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// File extensions (lowercase) taken for images; the decoder has the last
/// word on what a file holds.
pub const IMAGE_EXTENSIONS: &[&str] = &[
    "jpg", "jpeg", "png", "gif", "bmp", "webp", "tif", "tiff", "jfif",
];

pub fn is_image_path(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// Whether a walk follows symbolic links.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Links {
    /// Links are skipped: a server folder must not lead out of itself.
    Skip,
    /// Links are followed, each real folder read once: the user's own
    /// files (a folder of links to a data set is a common way to make a
    /// split).
    Follow,
}

/// Every image file under `dir`, recursively, sorted.
pub fn walk_images(dir: &Path, links: Links) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        if links == Links::Follow && !seen.insert(d.canonicalize()?) {
            continue;
        }
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            let p = entry.path();
            let (is_dir, is_file) = match links {
                Links::Skip => {
                    let ft = entry.file_type()?;
                    (ft.is_dir(), ft.is_file())
                }
                Links::Follow => match std::fs::metadata(&p) {
                    Ok(meta) => (meta.is_dir(), meta.is_file()),
                    // A dangling link.
                    Err(_) => continue,
                },
            };
            if is_dir {
                stack.push(p);
            } else if is_file && is_image_path(&p) {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walks_images_and_follows_links_only_when_asked() {
        let root = tempfile::tempdir().expect("tmp");
        let other = tempfile::tempdir().expect("tmp");
        std::fs::create_dir_all(root.path().join("a/b")).expect("mkdir");
        std::fs::write(root.path().join("a/x.JPG"), b"x").expect("write");
        std::fs::write(root.path().join("a/b/y.png"), b"y").expect("write");
        std::fs::write(root.path().join("a/notes.txt"), b"n").expect("write");
        std::fs::write(other.path().join("z.webp"), b"z").expect("write");
        std::os::unix::fs::symlink(other.path(), root.path().join("linked")).expect("link");
        std::os::unix::fs::symlink(root.path(), root.path().join("a/loop")).expect("link");
        let names = |v: Vec<PathBuf>| -> Vec<String> {
            v.iter()
                .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
                .collect()
        };
        let skip = walk_images(root.path(), Links::Skip).expect("walk");
        assert_eq!(names(skip), ["y.png", "x.JPG"]);
        let follow = walk_images(root.path(), Links::Follow).expect("walk");
        assert_eq!(names(follow), ["y.png", "x.JPG", "z.webp"]);
    }
}
