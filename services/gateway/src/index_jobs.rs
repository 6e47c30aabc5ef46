//! Index jobs: indexing a folder on the gateway's machine in the background, with
//! progress that the UI and the API poll. Jobs live in the index service's
//! database, so that every gateway replica answers for every job: the
//! replica that accepted a job runs it and saves its progress every second
//! (which renews the job's lease) and at the end; a job whose gateway
//! stopped is answered as failed once its lease runs out.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cbir_api::v1 as pb;
use futures::StreamExt;
use parking_lot::Mutex;

use crate::error::{Error, Result};
use crate::gateway::Gateway;

/// Images per AddImages batch of a job, and batches in flight: enough to
/// keep the inference batcher full without holding many images in memory.
const BATCH: usize = 16;
const IN_FLIGHT: usize = 2;
const MAX_FAILURES_LISTED: usize = 100;
/// How often a running job's progress is saved; its lease is at least
/// three times this.
const SAVE_EVERY: Duration = Duration::from_secs(1);
/// Attempts of a job's last save (its final state) before giving up.
const FINAL_SAVE_ATTEMPTS: u32 = 5;

pub use cbir_common::images::{is_image_path, IMAGE_EXTENSIONS};

/// An image file as an item of AddImages; its label is the name of the
/// folder holding it (a folder-per-class set).
pub async fn read_image(path: &Path) -> std::io::Result<pb::NewImage> {
    let name = |p: Option<&std::ffi::OsStr>| p.map(|n| n.to_string_lossy().to_string());
    Ok(pb::NewImage {
        file_name: name(path.file_name()).unwrap_or_default(),
        label: name(path.parent().and_then(Path::file_name)).unwrap_or_default(),
        path: path.display().to_string(),
        data: tokio::fs::read(path).await?,
    })
}

/// [`read_image`] of a file a server-folder job listed under `root`: opened
/// without following links and checked after the open to lie under `root`,
/// so that a file swapped for a link since the listing is not read.
pub async fn read_image_under(path: &Path, root: &Path) -> std::io::Result<pb::NewImage> {
    let (p, r) = (path.to_path_buf(), root.to_path_buf());
    let data = tokio::task::spawn_blocking(move || {
        let roots = cbir_common::fs::canonical_roots(&[r]);
        cbir_common::fs::read_under(&p, &roots, u64::MAX).map_err(|e| match e {
            cbir_common::fs::OpenError::Io(io) => io,
            refused => std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!("not read: {refused}"),
            ),
        })
    })
    .await
    .map_err(std::io::Error::other)??;
    let name = |p: Option<&std::ffi::OsStr>| p.map(|n| n.to_string_lossy().to_string());
    Ok(pb::NewImage {
        file_name: name(path.file_name()).unwrap_or_default(),
        label: name(path.parent().and_then(Path::file_name)).unwrap_or_default(),
        path: path.display().to_string(),
        data,
    })
}

/// `path` resolved (symlinks included) and checked to lie under one of the
/// allowed roots.
pub fn resolve_allowed(path: &str, roots: &[PathBuf]) -> Result<PathBuf> {
    if roots.is_empty() {
        return Err(Error::Forbidden(
            "indexing server folders is disabled: set allowed_roots (GATEWAY_ALLOWED_ROOTS) in the gateway config".into(),
        ));
    }
    let p = Path::new(path.trim());
    let real = p.canonicalize().map_err(|e| {
        Error::InvalidArgument(format!("cannot open server folder {}: {e}", p.display()))
    })?;
    if !real.is_dir() {
        return Err(Error::InvalidArgument(format!(
            "{} is not a folder",
            p.display()
        )));
    }
    let inside = roots.iter().any(|r| {
        r.canonicalize()
            .map(|root| real.starts_with(root))
            .unwrap_or(false)
    });
    if !inside {
        return Err(Error::Forbidden(format!(
            "{} is outside the allowed roots ({}): pick a folder under one of them",
            p.display(),
            roots
                .iter()
                .map(|r| r.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    Ok(real)
}

/// Every image file under `dir`, sorted, without following links out of it.
pub fn walk_images(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    cbir_common::images::walk_images(dir, cbir_common::images::Links::Skip)
}

use cbir_common::time::now_ms;

impl Gateway {
    pub async fn start_index_job(
        self: &Arc<Self>,
        req: pb::StartIndexJobRequest,
    ) -> Result<pb::IndexJob> {
        let collection = self.collection_name(&req.collection)?;
        let dir = resolve_allowed(&req.path, &self.cfg.allowed_roots)?;
        if req.create_collection {
            self.create_collection(pb::CreateGatewayCollectionRequest {
                name: collection.clone(),
                description: String::new(),
                if_not_exists: true,
            })
            .await?;
        } else {
            self.stats(&collection).await?;
        }
        let walk_dir = dir.clone();
        let files = tokio::task::spawn_blocking(move || walk_images(&walk_dir))
            .await
            .map_err(|e| Error::Internal(format!("folder walk: {e}")))?
            .map_err(|e| {
                Error::InvalidArgument(format!("cannot read folder {}: {e}", dir.display()))
            })?;
        let snapshot = pb::IndexJob {
            id: uuid::Uuid::new_v4().to_string(),
            collection: collection.clone(),
            path: dir.display().to_string(),
            state: pb::operation_progress::State::Running as i32,
            total: files.len() as u64,
            started_at_ms: now_ms(),
            updated_at_ms: now_ms(),
            ..Default::default()
        };
        // Recorded before it starts: any replica asked next finds it.
        self.save_job(&snapshot).await?;
        let job = Arc::new(Mutex::new(snapshot.clone()));
        let gw = self.clone();
        tokio::spawn(async move { gw.run_job(job, collection, dir, files).await });
        Ok(snapshot)
    }

    /// A job as the index service keeps it (whichever replica runs it).
    pub async fn index_job(&self, id: &str) -> Result<pb::IndexJob> {
        let r = self
            .index_rpc(
                "LoadIndexJob",
                Self::t(self.cfg.timeouts.admin_ms),
                pb::LoadIndexJobRequest { id: id.to_string() },
                |mut c, r| async move { c.load_index_job(r).await },
            )
            .await?;
        r.job
            .ok_or_else(|| Error::NotFound(format!("no indexing job {id:?}")))
    }

    /// Every job, newest first.
    pub async fn index_jobs(&self) -> Result<Vec<pb::IndexJob>> {
        Ok(self
            .index_rpc(
                "ListIndexJobs",
                Self::t(self.cfg.timeouts.admin_ms),
                pb::ListIndexJobsRequest {},
                |mut c, r| async move { c.list_index_jobs(r).await },
            )
            .await?
            .jobs)
    }

    fn job_lease_ms(&self) -> u64 {
        self.cfg
            .timeouts
            .job_lease_ms
            .max(3 * SAVE_EVERY.as_millis() as u64)
    }

    async fn save_job(&self, job: &pb::IndexJob) -> Result<()> {
        self.index_rpc(
            "SaveIndexJob",
            Self::t(self.cfg.timeouts.admin_ms),
            pb::SaveIndexJobRequest {
                job: Some(job.clone()),
                lease_ms: self.job_lease_ms(),
            },
            |mut c, r| async move { c.save_index_job(r).await },
        )
        .await?;
        Ok(())
    }

    /// Saves the job every `SAVE_EVERY` until `stop` fires; a save in
    /// flight finishes first, so that none lands after the final one.
    async fn keep_saving(
        self: Arc<Self>,
        job: Arc<Mutex<pb::IndexJob>>,
        mut stop: tokio::sync::oneshot::Receiver<()>,
    ) {
        let mut tick = tokio::time::interval(SAVE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = &mut stop => return,
            }
            let snapshot = job.lock().clone();
            if let Err(e) = self.save_job(&snapshot).await {
                tracing::warn!(job = %snapshot.id, error = %e, "saving the indexing job's progress failed; trying again in a second");
            }
        }
    }

    async fn run_job(
        self: Arc<Self>,
        job: Arc<Mutex<pb::IndexJob>>,
        collection: String,
        root: PathBuf,
        files: Vec<PathBuf>,
    ) {
        let started = Instant::now();
        let (stop_saving, stop) = tokio::sync::oneshot::channel();
        let saver = tokio::spawn(self.clone().keep_saving(job.clone(), stop));
        let batches: Vec<Vec<PathBuf>> = files.chunks(BATCH).map(<[PathBuf]>::to_vec).collect();
        let max_bytes = self.cfg.limits.max_image_bytes;
        let mut stream = futures::stream::iter(batches.into_iter().map(|batch| {
            let gw = self.clone();
            let collection = collection.clone();
            let root = root.clone();
            async move {
                let (images, unreadable) = read_batch(&root, batch, max_bytes).await;
                let r = gw
                    .add_images(pb::AddImagesRequest {
                        replace: false,
                        collection,
                        images,
                        create_collection: false,
                    })
                    .await;
                (r, unreadable)
            }
        }))
        .buffered(IN_FLIGHT);
        let mut fatal = None;
        while let Some((r, unreadable)) = stream.next().await {
            let mut j = job.lock();
            fatal = tally(&mut j, unreadable, r);
            let secs = started.elapsed().as_secs_f64().max(1e-3);
            j.images_per_second = j.done as f64 / secs;
            j.updated_at_ms = now_ms();
            if fatal.is_some() {
                break;
            }
        }
        let _ = stop_saving.send(());
        let _ = saver.await;
        let last = finish(&mut job.lock(), fatal, started);
        tracing::info!(job = %last.id, collection = %last.collection, done = last.done, failed = last.failed, "indexing job finished");
        self.save_final(&last).await;
    }

    async fn save_final(&self, last: &pb::IndexJob) {
        for attempt in 1..=FINAL_SAVE_ATTEMPTS {
            match self.save_job(last).await {
                Ok(()) => return,
                Err(e) if attempt < FINAL_SAVE_ATTEMPTS => {
                    tracing::warn!(job = %last.id, error = %e, "saving the finished indexing job failed; trying again");
                    tokio::time::sleep(SAVE_EVERY).await;
                }
                Err(e) => {
                    // Its lease runs out: replicas will answer it failed.
                    tracing::error!(job = %last.id, error = %e, "the finished indexing job could not be saved");
                }
            }
        }
    }
}

/// Reads a batch of a job's files under `root`; the files that cannot be
/// read or are too large come back apart, with why (and their path under
/// `root`).
async fn read_batch(
    root: &Path,
    batch: Vec<PathBuf>,
    max_bytes: usize,
) -> (Vec<pb::NewImage>, Vec<(String, String)>) {
    let mut images = Vec::with_capacity(batch.len());
    let mut unreadable = Vec::new();
    for p in batch {
        let rel = p
            .strip_prefix(root)
            .unwrap_or(&p)
            .to_string_lossy()
            .to_string();
        match tokio::fs::metadata(&p).await {
            Ok(m) if m.len() as usize > max_bytes => {
                unreadable.push((
                    rel,
                    format!(
                        "image too large: {} bytes, the limit is {max_bytes} bytes",
                        m.len()
                    ),
                ));
                continue;
            }
            Err(e) => {
                unreadable.push((rel, format!("cannot read: {e}")));
                continue;
            }
            Ok(_) => {}
        }
        match read_image_under(&p, root).await {
            Ok(img) => images.push(img),
            Err(e) => unreadable.push((rel, format!("cannot read: {e}"))),
        }
    }
    (images, unreadable)
}

fn record_failure(j: &mut pb::IndexJob, path: String, reason: String) {
    j.failed += 1;
    if j.failures.len() < MAX_FAILURES_LISTED {
        j.failures.push(pb::FailedFile { path, reason });
    }
}

/// Counts a batch's outcome into the job; the error that stops the job
/// (a service down or the collection gone: every later batch would fail
/// the same way), if any.
fn tally(
    j: &mut pb::IndexJob,
    unreadable: Vec<(String, String)>,
    r: Result<pb::AddImagesResponse>,
) -> Option<String> {
    for (path, reason) in unreadable {
        record_failure(j, path, reason);
    }
    match r {
        Ok(resp) => {
            for item in resp.results {
                if item.error.is_empty() {
                    j.done += 1;
                } else {
                    record_failure(j, item.path, item.error);
                }
            }
            None
        }
        Err(e) => Some(e.to_string()),
    }
}

/// The job's final state and message.
fn finish(j: &mut pb::IndexJob, fatal: Option<String>, started: Instant) -> pb::IndexJob {
    j.updated_at_ms = now_ms();
    match fatal {
        Some(e) => {
            j.state = pb::operation_progress::State::Failed as i32;
            j.message = format!("indexing stopped after {} images: {e}", j.done);
        }
        None => {
            j.state = pb::operation_progress::State::Succeeded as i32;
            j.message = format!(
                "indexed {} images, {} failed, in {:.1} s",
                j.done,
                j.failed,
                started.elapsed().as_secs_f64()
            );
        }
    }
    j.clone()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::label_from_path;

    #[test]
    fn server_paths_must_be_under_allowed_roots() {
        let root = tempfile::tempdir().expect("tmp");
        let inside = root.path().join("photos");
        std::fs::create_dir(&inside).expect("mkdir");
        let other = tempfile::tempdir().expect("tmp");
        let roots = vec![root.path().to_path_buf()];
        assert!(resolve_allowed(inside.to_str().expect("utf8"), &roots).is_ok());
        let err =
            resolve_allowed(other.path().to_str().expect("utf8"), &roots).expect_err("outside");
        assert!(matches!(err, Error::Forbidden(_)), "{err}");
        // `..` and symlinks are resolved before the check.
        let escape = format!("{}/photos/../../", root.path().display());
        assert!(matches!(
            resolve_allowed(&escape, &roots),
            Err(Error::Forbidden(_))
        ));
        #[cfg(unix)]
        {
            let link = root.path().join("link");
            std::os::unix::fs::symlink(other.path(), &link).expect("symlink");
            let err = resolve_allowed(link.to_str().expect("utf8"), &roots).expect_err("link out");
            assert!(matches!(err, Error::Forbidden(_)), "{err}");
        }
        assert!(matches!(
            resolve_allowed(inside.to_str().expect("utf8"), &[]),
            Err(Error::Forbidden(_))
        ));
    }

    #[test]
    fn walk_finds_images_recursively() {
        let root = tempfile::tempdir().expect("tmp");
        std::fs::create_dir_all(root.path().join("a/b")).expect("mkdir");
        for f in ["a/1.JPG", "a/b/2.png", "a/notes.txt", "3.webp"] {
            std::fs::write(root.path().join(f), b"x").expect("write");
        }
        let found = walk_images(root.path()).expect("walk");
        let names: Vec<String> = found
            .iter()
            .map(|p| {
                p.strip_prefix(root.path())
                    .expect("under")
                    .display()
                    .to_string()
            })
            .collect();
        assert_eq!(names, ["3.webp", "a/1.JPG", "a/b/2.png"]);
        assert_eq!(label_from_path("flowers/daisy/1.jpg"), "daisy");
        assert_eq!(label_from_path("1.jpg"), "");
    }
}
