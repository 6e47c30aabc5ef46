//! Any bytes, as an uploaded dataset archive (zip, tar or tar.gz, chosen by
//! the first byte): unpacking fails with an error or leaves only regular
//! files and folders inside the target folder, within the limits; a failed
//! unpack leaves nothing behind.
#![no_main]

use std::path::{Path, PathBuf};

use cbir_dataset::{ArchiveKind, ArchiveLimits};
use libfuzzer_sys::fuzz_target;

const LIMITS: ArchiveLimits = ArchiveLimits {
    max_entries: 64,
    max_total_bytes: 1 << 20,
    max_entry_bytes: 256 << 10,
};

fn scratch() -> PathBuf {
    let base = if Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    base.join(format!("cbir-fuzz-archive-{}", std::process::id()))
}

/// Walks `dir` without following links: counts files and bytes, and fails
/// on anything that is not a plain file or folder.
fn check(dir: &Path, files: &mut usize, bytes: &mut u64) {
    for e in std::fs::read_dir(dir).expect("read_dir") {
        let e = e.expect("entry");
        let m = std::fs::symlink_metadata(e.path()).expect("metadata");
        if m.is_dir() {
            check(&e.path(), files, bytes);
        } else {
            assert!(m.is_file(), "unpacked a non-regular file: {:?}", e.path());
            *files += 1;
            *bytes += m.len();
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    let kind = match which % 3 {
        0 => ArchiveKind::Zip,
        1 => ArchiveKind::Tar,
        _ => ArchiveKind::TarGz,
    };
    let root = scratch();
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).expect("scratch");
    let archive = root.join("upload");
    std::fs::write(&archive, body).expect("write archive");
    let dest = root.join("out");
    match cbir_dataset::unpack(&archive, kind, &dest, LIMITS) {
        Ok(()) => {
            let (mut files, mut bytes) = (0, 0);
            check(&dest, &mut files, &mut bytes);
            assert!(files <= LIMITS.max_entries);
            assert!(bytes <= LIMITS.max_total_bytes);
        }
        Err(_) => assert!(!dest.exists(), "a failed unpack left files behind"),
    }
    // Nothing may appear beside the target folder.
    let mut names: Vec<_> = std::fs::read_dir(&root)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    names.sort();
    names.retain(|n| n != "upload" && n != "out");
    assert!(names.is_empty(), "unpacked outside the target: {names:?}");
    let _ = std::fs::remove_dir_all(&root);
});
