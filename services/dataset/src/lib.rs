//! Labeled data sets: a folder per class, checked before a job is queued,
//! split into training and validation images, and unpacked from uploaded
//! archives with limits.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

/// What went wrong with a dataset: the user's input (`InvalidArgument`,
/// with what to fix) or the server's disk (`Io`).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("I/O error: {0}")]
    Io(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One labeled image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sample {
    pub path: PathBuf,
    pub class: usize,
}

/// A checked data set, split.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Dataset {
    pub root: PathBuf,
    pub classes: Vec<String>,
    pub train: Vec<Sample>,
    pub validation: Vec<Sample>,
    /// Files left out, each with the reason.
    pub skipped: Vec<String>,
    /// The folders (links resolved) the images may be read from: the data
    /// set's and the allowed roots. Reads check it after opening (see
    /// [`read_sample`]), so that a file swapped for a link after the scan
    /// is not read.
    #[serde(default)]
    pub allowed: Vec<PathBuf>,
}

/// Largest image file read for training (the decoder has its own limits).
const MAX_IMAGE_FILE_BYTES: u64 = 256 << 20;

/// The bytes of one listed image, opened without following links and
/// checked to lie under the data set's allowed folders; or why not.
pub fn read_sample(ds: &Dataset, path: &Path) -> std::result::Result<Vec<u8>, String> {
    cbir_common::fs::read_under(path, &ds.allowed, MAX_IMAGE_FILE_BYTES).map_err(|e| match e {
        cbir_common::fs::OpenError::Io(io) => io.to_string(),
        refused => format!("not read: {refused}"),
    })
}

pub use cbir_common::images::is_image_path as is_image_name;

/// Which symbolic links a scan follows.
#[derive(Debug, Clone, Copy)]
pub enum Links<'a> {
    /// None: each is listed as skipped.
    Refuse,
    /// Those whose target lies under one of these folders.
    Within(&'a [PathBuf]),
}

/// Image files under `dir`, recursively, sorted; hidden entries skipped,
/// links followed only as `links` allows (refused ones go to `skipped`).
fn images_under(
    root: &Path,
    dir: &Path,
    links: Links<'_>,
    out: &mut Vec<PathBuf>,
    skipped: &mut Vec<String>,
) -> std::io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<std::io::Result<_>>()?;
    entries.sort_by_key(std::fs::DirEntry::file_name);
    for e in entries {
        let name = e.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        let p = e.path();
        let mut ft = e.file_type()?;
        if ft.is_symlink() {
            let target = match links {
                Links::Refuse => None,
                Links::Within(roots) => p.canonicalize().ok().filter(|real| {
                    roots
                        .iter()
                        .any(|r| r.canonicalize().is_ok_and(|r| real.starts_with(r)))
                }),
            };
            let Some(target) = target else {
                skipped.push(format!(
                    "{}: a link to outside the allowed folders",
                    rel(root, &p)
                ));
                continue;
            };
            ft = std::fs::metadata(&target)?.file_type();
            // A linked file is listed by its target: reads never follow a
            // link (see `read_sample`).
            if ft.is_file() {
                if is_image_name(&p) {
                    out.push(target);
                }
                continue;
            }
        }
        if ft.is_dir() {
            images_under(root, &p, links, out, skipped)?;
        } else if ft.is_file() && is_image_name(&p) {
            out.push(p);
        }
    }
    Ok(())
}

/// Whether the file's header names a format we decode and gives a size:
/// cheap enough for every file at submission; a full decode failure later is
/// listed the same way.
fn readable(path: &Path, allowed: &[PathBuf]) -> std::result::Result<(), String> {
    let file = cbir_common::fs::open_under(path, allowed).map_err(|e| match e {
        cbir_common::fs::OpenError::Io(io) => io.to_string(),
        refused => format!("not read: {refused}"),
    })?;
    let reader = image::ImageReader::new(std::io::BufReader::new(file))
        .with_guessed_format()
        .map_err(|e| e.to_string())?;
    if reader.format().is_none() {
        return Err("not an image".into());
    }
    let (w, h) = reader.into_dimensions().map_err(|e| e.to_string())?;
    if w == 0 || h == 0 {
        return Err("empty image".into());
    }
    Ok(())
}

/// Reads a folder-per-class data set: each sub-folder of `root` with images
/// is a class (images in deeper folders count for it). Refuses fewer than
/// two classes and classes with fewer than `min_per_class` readable images;
/// unreadable files are listed in `skipped`. The split is stratified and
/// seeded: the same folder and seed give the same split.
pub fn scan(
    root: &Path,
    min_per_class: usize,
    validation_fraction: f64,
    seed: u64,
    links: Links<'_>,
) -> Result<Dataset> {
    // Messages name no server path: the root is resolved (links), or an
    // upload's folder on the server.
    if !root.is_dir() {
        return Err(Error::InvalidArgument(
            "the data set is not a folder: give a folder with one sub-folder of images per class"
                .into(),
        ));
    }
    if !(0.0..0.9).contains(&validation_fraction) {
        return Err(Error::InvalidArgument(format!(
            "validation fraction {validation_fraction} is outside 0..0.9"
        )));
    }
    let io = |e: std::io::Error| Error::InvalidArgument(format!("reading the data set: {e}"));
    let mut allowed = cbir_common::fs::canonical_roots(&[root.to_path_buf()]);
    if let Links::Within(roots) = links {
        allowed.extend(cbir_common::fs::canonical_roots(roots));
    }
    let mut by_class: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    let mut skipped = Vec::new();
    let mut loose = 0usize;
    let mut entries: Vec<_> = std::fs::read_dir(root)
        .map_err(io)?
        .collect::<std::io::Result<_>>()
        .map_err(io)?;
    entries.sort_by_key(std::fs::DirEntry::file_name);
    for e in entries {
        let name = e.file_name().to_string_lossy().to_string();
        if name.starts_with('.') {
            continue;
        }
        let p = e.path();
        if std::fs::metadata(&p).map_err(io)?.is_dir() {
            let mut files = Vec::new();
            images_under(root, &p, links, &mut files, &mut skipped).map_err(io)?;
            let mut ok = Vec::new();
            for f in files {
                match readable(&f, &allowed) {
                    Ok(()) => ok.push(f),
                    Err(why) => skipped.push(format!("{}: {why}", rel(root, &f))),
                }
            }
            if !ok.is_empty() {
                by_class.insert(name, ok);
            }
        } else if is_image_name(&p) {
            loose += 1;
        }
    }
    if loose > 0 {
        skipped.push(format!(
            "{loose} image(s) directly in the top folder: they have no class folder"
        ));
    }
    if by_class.len() < 2 {
        return Err(Error::InvalidArgument(format!(
            "the data set has {} class folder(s) with images; training needs at least 2 (one sub-folder of images per class)",
            by_class.len()
        )));
    }
    let small: Vec<String> = by_class
        .iter()
        .filter(|(_, v)| v.len() < min_per_class)
        .map(|(k, v)| format!("{k} ({})", v.len()))
        .collect();
    if !small.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "every class needs at least {min_per_class} readable images; too few in: {}",
            small.join(", ")
        )));
    }
    let classes: Vec<String> = by_class.keys().cloned().collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let (mut train, mut validation) = (Vec::new(), Vec::new());
    for (class, (_, mut files)) in by_class.into_iter().enumerate() {
        files.shuffle(&mut rng);
        let n = files.len();
        let mut v = (n as f64 * validation_fraction).round() as usize;
        if validation_fraction > 0.0 && n >= 2 {
            v = v.clamp(1, n - 1);
        }
        for (i, path) in files.into_iter().enumerate() {
            let s = Sample { path, class };
            if i < v {
                validation.push(s);
            } else {
                train.push(s);
            }
        }
    }
    Ok(Dataset {
        root: root.to_path_buf(),
        classes,
        train,
        validation,
        skipped,
        allowed,
    })
}

fn rel(root: &Path, p: &Path) -> String {
    p.strip_prefix(root).unwrap_or(p).display().to_string()
}

/// What an uploaded archive may unpack to.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ArchiveLimits {
    pub max_entries: usize,
    pub max_total_bytes: u64,
    pub max_entry_bytes: u64,
}

impl Default for ArchiveLimits {
    fn default() -> Self {
        Self {
            max_entries: 200_000,
            max_total_bytes: 8 << 30,
            max_entry_bytes: 64 << 20,
        }
    }
}

/// The path an entry may be written to: relative, no `..`, no root or
/// drive; refuses anything that would land outside `dest`.
fn safe_join(dest: &Path, name: &str) -> Result<PathBuf> {
    let p = Path::new(name);
    let mut out = dest.to_path_buf();
    for c in p.components() {
        match c {
            Component::Normal(s) => out.push(s),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Err(Error::InvalidArgument(format!(
                    "the archive entry {name:?} points outside its folder: archives may only hold relative paths without '..'"
                )))
            }
        }
    }
    if out == dest {
        return Err(Error::InvalidArgument(format!(
            "the archive entry {name:?} has no file name"
        )));
    }
    Ok(out)
}

/// Archive formats, from the file name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchiveKind {
    Zip,
    Tar,
    TarGz,
}

impl ArchiveKind {
    pub fn from_name(name: &str) -> Result<Self> {
        let n = name.to_ascii_lowercase();
        if n.ends_with(".zip") {
            Ok(Self::Zip)
        } else if n.ends_with(".tar.gz") || n.ends_with(".tgz") {
            Ok(Self::TarGz)
        } else if n.ends_with(".tar") {
            Ok(Self::Tar)
        } else {
            Err(Error::InvalidArgument(format!(
                "cannot tell the archive format of {name:?}: send a .zip, .tar, .tar.gz or .tgz file"
            )))
        }
    }
}

/// Running totals against the limits.
struct Budget {
    limits: ArchiveLimits,
    entries: usize,
    bytes: u64,
}

impl Budget {
    fn entry(&mut self, name: &str, declared: u64) -> Result<()> {
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(Error::InvalidArgument(format!(
                "the archive has more than {} entries",
                self.limits.max_entries
            )));
        }
        if declared > self.limits.max_entry_bytes {
            return Err(Error::InvalidArgument(format!(
                "the archive entry {name:?} unpacks to {declared} bytes, over the limit of {} per file",
                self.limits.max_entry_bytes
            )));
        }
        Ok(())
    }

    /// Copies at most the entry limit, counting what was really written
    /// (a declared size can lie).
    fn copy(&mut self, name: &str, r: &mut dyn Read, to: &Path) -> Result<()> {
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent).map_err(|e| Error::Io(format!("{e}")))?;
        }
        let mut f = std::fs::File::create(to).map_err(|e| Error::Io(format!("{e}")))?;
        let cap = self.limits.max_entry_bytes + 1;
        let n = std::io::copy(&mut r.take(cap), &mut f).map_err(|e| {
            Error::InvalidArgument(format!("reading the archive entry {name:?}: {e}"))
        })?;
        if n >= cap {
            return Err(Error::InvalidArgument(format!(
                "the archive entry {name:?} unpacks to more than {} bytes per file",
                self.limits.max_entry_bytes
            )));
        }
        self.bytes += n;
        if self.bytes > self.limits.max_total_bytes {
            return Err(Error::InvalidArgument(format!(
                "the archive unpacks to more than {} bytes",
                self.limits.max_total_bytes
            )));
        }
        Ok(())
    }
}

/// Unpacks `archive` into `dest` (created), refusing entries that escape
/// it, links of any kind, and archives over the limits; on refusal `dest`
/// is removed, so nothing half-unpacked stays. Only image files and folders
/// are written; other files are ignored.
pub fn unpack(archive: &Path, kind: ArchiveKind, dest: &Path, limits: ArchiveLimits) -> Result<()> {
    std::fs::create_dir_all(dest)
        .map_err(|e| Error::Io(format!("creating {}: {e}", dest.display())))?;
    let r = unpack_inner(archive, kind, dest, limits);
    if r.is_err() {
        let _ = std::fs::remove_dir_all(dest);
    }
    r
}

fn unpack_inner(
    archive: &Path,
    kind: ArchiveKind,
    dest: &Path,
    limits: ArchiveLimits,
) -> Result<()> {
    let mut budget = Budget {
        limits,
        entries: 0,
        bytes: 0,
    };
    let file = std::fs::File::open(archive).map_err(|e| Error::Io(format!("{e}")))?;
    match kind {
        ArchiveKind::Zip => {
            let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file))
                .map_err(|e| Error::InvalidArgument(format!("not a readable zip archive: {e}")))?;
            for i in 0..zip.len() {
                let mut entry = zip
                    .by_index(i)
                    .map_err(|e| Error::InvalidArgument(format!("zip entry {i}: {e}")))?;
                let name = entry.name().to_string();
                budget.entry(&name, entry.size())?;
                let to = safe_join(dest, &name)?;
                if entry.is_symlink() {
                    return Err(Error::InvalidArgument(format!(
                        "the archive entry {name:?} is a link: archives may hold only folders and files"
                    )));
                }
                if entry.is_dir() || !is_image_name(&to) {
                    continue;
                }
                budget.copy(&name, &mut entry, &to)?;
            }
        }
        ArchiveKind::Tar | ArchiveKind::TarGz => {
            let reader: Box<dyn Read> = if kind == ArchiveKind::TarGz {
                Box::new(flate2::read::GzDecoder::new(std::io::BufReader::new(file)))
            } else {
                Box::new(std::io::BufReader::new(file))
            };
            let mut tar = tar::Archive::new(reader);
            let entries = tar
                .entries()
                .map_err(|e| Error::InvalidArgument(format!("not a readable tar archive: {e}")))?;
            for entry in entries {
                let mut entry = entry.map_err(|e| {
                    Error::InvalidArgument(format!("not a readable tar archive: {e}"))
                })?;
                let name = entry
                    .path()
                    .map_err(|e| Error::InvalidArgument(format!("bad entry name: {e}")))?
                    .to_string_lossy()
                    .to_string();
                budget.entry(&name, entry.size())?;
                let to = safe_join(dest, &name)?;
                let t = entry.header().entry_type();
                if t.is_symlink() || t.is_hard_link() {
                    return Err(Error::InvalidArgument(format!(
                        "the archive entry {name:?} is a link: archives may hold only folders and files"
                    )));
                }
                if !t.is_file() || !is_image_name(&to) {
                    continue;
                }
                budget.copy(&name, &mut entry, &to)?;
            }
        }
    }
    Ok(())
}

/// The folder that holds the class folders: an archive of `flowers/` with
/// `flowers/daisy/...` has its classes one level down.
pub fn dataset_root(unpacked: &Path) -> PathBuf {
    let mut dir = unpacked.to_path_buf();
    for _ in 0..4 {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            break;
        };
        let items: Vec<_> = rd
            .filter_map(std::result::Result::ok)
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .collect();
        if items.len() == 1 && items[0].file_type().is_ok_and(|t| t.is_dir()) {
            dir = items[0].path();
        } else {
            break;
        }
    }
    dir
}

#[cfg(test)]
mod tests;
