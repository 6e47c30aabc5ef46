//! Reading files under allowed folders when the folders' content may
//! change between listing and reading: a file swapped for a link (or a
//! folder for a link to elsewhere) after a job listed it must not be read.
//! The file is opened without following a link at its last component, then
//! the path the kernel opened is checked to lie under an allowed folder.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Why a file under the allowed folders could not be opened. The messages
/// name no path: callers add the one their user gave.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("it is a symbolic link now (links are not followed: it changed after the listing?)")]
    Link,
    #[error("it lies outside the allowed folders once links are resolved")]
    Outside,
    #[error("it is not a regular file")]
    NotFile,
    #[error("it is larger than {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("{0}")]
    Io(std::io::Error),
}

impl OpenError {
    /// Missing or unreadable, as opposed to refused.
    pub fn is_io(&self) -> bool {
        matches!(self, OpenError::Io(_))
    }
}

/// Each of `roots` with links resolved; roots that do not exist are left
/// out (nothing can lie under them).
pub fn canonical_roots(roots: &[PathBuf]) -> Vec<PathBuf> {
    roots.iter().filter_map(|r| r.canonicalize().ok()).collect()
}

/// Opens `path` for reading: not through a link at its last component, a
/// regular file, and (checked on the open file, so a swap in between is
/// caught) lying under one of `roots`, which must be canonical (see
/// [`canonical_roots`]).
pub fn open_under(path: &Path, roots: &[PathBuf]) -> Result<File, OpenError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        // A FIFO put in place of the file must not block the open.
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                OpenError::Link
            } else {
                OpenError::Io(e)
            }
        })?;
    let meta = file.metadata().map_err(OpenError::Io)?;
    if !meta.is_file() {
        return Err(OpenError::NotFile);
    }
    let real = opened_path(&file, path, &meta)?;
    if roots.iter().any(|r| real.starts_with(r)) {
        Ok(file)
    } else {
        Err(OpenError::Outside)
    }
}

/// Reads the whole file as [`open_under`] opens it, at most `limit` bytes.
pub fn read_under(path: &Path, roots: &[PathBuf], limit: u64) -> Result<Vec<u8>, OpenError> {
    let file = open_under(path, roots)?;
    let len = file.metadata().map_err(OpenError::Io)?.len();
    if len > limit {
        return Err(OpenError::TooLarge { limit });
    }
    let mut out = Vec::with_capacity(len as usize);
    // The file may grow after the check: read one byte past the limit to see.
    file.take(limit.saturating_add(1))
        .read_to_end(&mut out)
        .map_err(OpenError::Io)?;
    if out.len() as u64 > limit {
        return Err(OpenError::TooLarge { limit });
    }
    Ok(out)
}

/// The path of the open file: what the kernel says it opened
/// (/proc/self/fd), or where procfs is missing, `path` resolved and
/// checked to be the same file (device and inode) as the one open.
fn opened_path(file: &File, path: &Path, meta: &std::fs::Metadata) -> Result<PathBuf, OpenError> {
    use std::os::fd::AsRawFd;
    if let Ok(p) = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())) {
        return Ok(p);
    }
    let real = path.canonicalize().map_err(OpenError::Io)?;
    let now = std::fs::metadata(&real).map_err(OpenError::Io)?;
    if (now.dev(), now.ino()) == (meta.dev(), meta.ino()) {
        Ok(real)
    } else {
        // Swapped between the open and the check.
        Err(OpenError::Outside)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dirs {
        base: PathBuf,
        root: PathBuf,
        outside: PathBuf,
    }

    fn dirs(name: &str) -> Dirs {
        let base = std::env::temp_dir().join(format!("cbir-fs-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let root = base.join("root");
        let outside = base.join("outside");
        std::fs::create_dir_all(root.join("class")).expect("mkdir");
        std::fs::create_dir_all(&outside).expect("mkdir");
        std::fs::write(outside.join("secret.txt"), b"outside").expect("write");
        Dirs {
            base,
            root,
            outside,
        }
    }

    #[test]
    fn files_under_the_root_are_read() {
        let d = dirs("ok");
        let roots = canonical_roots(std::slice::from_ref(&d.root));
        let f = d.root.join("class/a.jpg");
        std::fs::write(&f, b"inside").expect("write");
        assert_eq!(read_under(&f, &roots, 100).expect("read"), b"inside");
        let e = read_under(&f, &roots, 3).expect_err("limit");
        assert!(matches!(e, OpenError::TooLarge { limit: 3 }), "{e}");
        let e = read_under(&d.root.join("class/none.jpg"), &roots, 100).expect_err("missing");
        assert!(e.is_io(), "{e}");
        let _ = std::fs::remove_dir_all(&d.base);
    }

    #[test]
    fn a_file_swapped_for_a_link_after_listing_is_not_read() {
        let d = dirs("swap");
        let roots = canonical_roots(std::slice::from_ref(&d.root));
        let f = d.root.join("class/a.jpg");
        std::fs::write(&f, b"inside").expect("write");
        // Listed as a regular file; then swapped for a link to outside.
        assert!(std::fs::symlink_metadata(&f).expect("meta").is_file());
        std::fs::remove_file(&f).expect("rm");
        std::os::unix::fs::symlink(d.outside.join("secret.txt"), &f).expect("link");
        let e = read_under(&f, &roots, 100).expect_err("a link");
        assert!(matches!(e, OpenError::Link), "{e}");
        // Even a link that stays inside is not followed at the last step.
        std::fs::write(d.root.join("class/b.jpg"), b"inside").expect("write");
        std::fs::remove_file(&f).expect("rm");
        std::os::unix::fs::symlink(d.root.join("class/b.jpg"), &f).expect("link");
        assert!(matches!(read_under(&f, &roots, 100), Err(OpenError::Link)));
        let _ = std::fs::remove_dir_all(&d.base);
    }

    #[test]
    fn a_folder_swapped_for_a_link_to_outside_is_caught_after_open() {
        let d = dirs("dir");
        let roots = canonical_roots(std::slice::from_ref(&d.root));
        let f = d.root.join("class/secret.txt");
        std::fs::write(&f, b"inside").expect("write");
        assert_eq!(read_under(&f, &roots, 100).expect("read"), b"inside");
        // The class folder becomes a link to outside, which holds a file of
        // the same name: O_NOFOLLOW alone would open it.
        std::fs::remove_dir_all(d.root.join("class")).expect("rm");
        std::os::unix::fs::symlink(&d.outside, d.root.join("class")).expect("link");
        let e = read_under(&f, &roots, 100).expect_err("outside");
        assert!(matches!(e, OpenError::Outside), "{e}");
        assert!(!e.to_string().contains('/'), "no path in {e}");
        let _ = std::fs::remove_dir_all(&d.base);
    }

    #[test]
    fn fifos_and_folders_are_not_files() {
        let d = dirs("fifo");
        let roots = canonical_roots(std::slice::from_ref(&d.root));
        let e = read_under(&d.root.join("class"), &roots, 100).expect_err("a folder");
        assert!(matches!(e, OpenError::NotFile), "{e}");
        let fifo = d.root.join("class/f.jpg");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        if made.is_ok_and(|s| s.success()) {
            let e = read_under(&fifo, &roots, 100).expect_err("a fifo");
            assert!(matches!(e, OpenError::NotFile), "{e}");
        }
        let _ = std::fs::remove_dir_all(&d.base);
    }
}
