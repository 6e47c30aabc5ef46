//! Uploaded datasets on disk: the quota they count against
//! (`max_datasets_bytes`), listing and deletion by an admin, deletion when
//! the last job using one ends, and expiry of uploads no job ever used
//! (`dataset_ttl_s`).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cbir_api::v1 as pb;
use tokio::sync::watch;

use crate::dataset::{self, ArchiveKind};
use crate::error::{Error, Result};
use crate::training::{is_terminal, Training};

/// The label a job gives its uploaded dataset (`pb::Job::dataset`).
pub fn upload_label(id: &str) -> String {
    format!("upload {id}")
}

fn id_of_label(label: &str) -> Option<&str> {
    label.strip_prefix("upload ")
}

/// `path` if it lies under one of `roots` once links are resolved.
pub fn resolve_allowed(path: &str, roots: &[PathBuf]) -> Result<PathBuf> {
    if roots.is_empty() {
        return Err(Error::FailedPrecondition(
            "training from server folders is disabled: set allowed_roots (TRAINING_ALLOWED_ROOTS) in the training config, or upload the folder".into(),
        ));
    }
    let p = Path::new(path.trim());
    let real = p.canonicalize().map_err(|e| {
        Error::InvalidArgument(format!("cannot open server folder {}: {e}", p.display()))
    })?;
    let inside = roots.iter().any(|r| {
        r.canonicalize()
            .map(|root| real.starts_with(root))
            .unwrap_or(false)
    });
    if !inside {
        return Err(Error::PermissionDenied(format!(
            "{} is outside the allowed roots of the training service: pick a folder under one of them",
            p.display()
        )));
    }
    Ok(real)
}

/// Bytes of the files under `path` (links are not followed: unpacking
/// refuses them anyway).
fn disk_bytes(path: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    if !meta.is_dir() {
        return meta.len();
    }
    std::fs::read_dir(path)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| disk_bytes(&e.path()))
                .sum::<u64>()
        })
        .unwrap_or(0)
}

fn ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// One upload's share of the bytes streaming in (`Training::uploading`),
/// given back when it ends.
pub struct UploadShare<'a> {
    total: &'a AtomicU64,
    bytes: u64,
}

impl UploadShare<'_> {
    pub fn add(&mut self, n: u64) {
        self.bytes += n;
        self.total.fetch_add(n, Ordering::Relaxed);
    }
}

impl Drop for UploadShare<'_> {
    fn drop(&mut self) {
        self.total.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

impl Training {
    pub(crate) fn datasets_dir(&self) -> PathBuf {
        self.cfg.data_dir.join("datasets")
    }

    pub(crate) fn uploads_dir(&self) -> PathBuf {
        self.cfg.data_dir.join("uploads")
    }

    /// Bytes of every dataset and partial upload on disk.
    pub async fn datasets_bytes(&self) -> Result<u64> {
        let (d, u) = (self.datasets_dir(), self.uploads_dir());
        tokio::task::spawn_blocking(move || disk_bytes(&d) + disk_bytes(&u))
            .await
            .map_err(|e| Error::Internal(format!("sizing the datasets failed: {e}")))
    }

    /// A share of the uploads in progress for a new upload.
    pub fn upload_share(&self) -> UploadShare<'_> {
        UploadShare {
            total: &self.uploading,
            bytes: 0,
        }
    }

    /// Refuses when `on_disk` (measured when the upload started) and every
    /// upload in progress are over `max_datasets_bytes`.
    pub fn check_quota(&self, on_disk: u64) -> Result<()> {
        let quota = self.cfg.max_datasets_bytes;
        let used = on_disk + self.uploading.load(Ordering::Relaxed);
        if used > quota {
            return Err(Error::QuotaExceeded(format!(
                "the training datasets would take {used} bytes, over the quota of {quota} bytes (max_datasets_bytes): delete datasets no job needs (DELETE /api/training/datasets/{{id}}, `cbir dataset rm ID`) or raise max_datasets_bytes"
            )));
        }
        Ok(())
    }

    /// Queued or running jobs per uploaded dataset id.
    async fn live_users(&self) -> Result<Vec<(String, String)>> {
        let jobs = self.jobs().await?;
        Ok(jobs
            .into_iter()
            .filter(|j| !is_terminal(j.state))
            .filter_map(|j| id_of_label(&j.dataset).map(|id| (id.to_string(), j.id.clone())))
            .collect())
    }

    pub async fn list_datasets(&self) -> Result<pb::ListDatasetsResponse> {
        let users = self.live_users().await?;
        let dir = self.datasets_dir();
        let ttl = self.cfg.dataset_ttl_s;
        let mut datasets = tokio::task::spawn_blocking(move || {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                return Vec::new();
            };
            entries
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| {
                    let created = e.metadata().and_then(|m| m.modified()).map_or(0, ms);
                    pb::DatasetInfo {
                        id: e.file_name().to_string_lossy().into_owned(),
                        bytes: disk_bytes(&e.path()),
                        created_at_ms: created,
                        job_ids: Vec::new(),
                        expires_at_ms: created.saturating_add(
                            i64::try_from(ttl.saturating_mul(1000)).unwrap_or(i64::MAX),
                        ),
                    }
                })
                .collect::<Vec<_>>()
        })
        .await
        .map_err(|e| Error::Internal(format!("listing the datasets failed: {e}")))?;
        for d in &mut datasets {
            d.job_ids = users
                .iter()
                .filter(|(id, _)| *id == d.id)
                .map(|(_, job)| job.clone())
                .collect();
            if !d.job_ids.is_empty() {
                d.expires_at_ms = 0;
            }
        }
        datasets.sort_by_key(|d| d.created_at_ms);
        Ok(pb::ListDatasetsResponse {
            datasets,
            used_bytes: self.datasets_bytes().await?,
            quota_bytes: self.cfg.max_datasets_bytes,
        })
    }

    fn dataset_path(&self, id: &str) -> Result<PathBuf> {
        if uuid::Uuid::parse_str(id).is_err() {
            return Err(Error::InvalidArgument(format!("bad dataset id {id:?}")));
        }
        Ok(self.datasets_dir().join(id))
    }

    /// Deletes dataset `id` unless a queued or running job uses it.
    pub async fn delete_dataset(&self, id: &str) -> Result<u64> {
        let path = self.dataset_path(id)?;
        if !path.is_dir() {
            return Err(Error::NotFound(format!("no uploaded dataset {id:?}")));
        }
        let users: Vec<String> = self
            .live_users()
            .await?
            .into_iter()
            .filter(|(d, _)| d == id)
            .map(|(_, job)| job)
            .collect();
        if !users.is_empty() {
            return Err(Error::FailedPrecondition(format!(
                "dataset {id} is used by job(s) {}: cancel them first",
                users.join(", ")
            )));
        }
        remove(path).await
    }

    /// After `job` ended: deletes its uploaded dataset unless another queued
    /// or running job uses it too.
    pub async fn release_dataset(&self, job: &pb::Job) {
        let Some(id) = id_of_label(&job.dataset) else {
            return;
        };
        let Ok(path) = self.dataset_path(id) else {
            return;
        };
        match self.live_users().await {
            Ok(users) if users.iter().any(|(d, j)| d == id && *j != job.id) => {}
            Ok(_) => {
                if let Err(e) = remove(path).await {
                    tracing::warn!(dataset = %id, error = %e, "could not delete the dataset of an ended job; the sweep retries");
                }
            }
            Err(e) => {
                tracing::warn!(dataset = %id, error = %e, "could not check the dataset's other jobs; the sweep deletes it later")
            }
        }
    }

    /// Deletes datasets whose jobs have all ended (left by a crash or a
    /// failed delete), datasets no job used within `dataset_ttl_s`, and
    /// partial uploads older than that.
    pub async fn sweep_datasets(&self) -> Result<u64> {
        let all: Vec<pb::Job> = self.jobs().await?;
        let ttl = Duration::from_secs(self.cfg.dataset_ttl_s);
        let now = SystemTime::now();
        let old = |p: &Path| {
            std::fs::metadata(p)
                .and_then(|m| m.modified())
                .is_ok_and(|t| now.duration_since(t).unwrap_or_default() >= ttl)
        };
        let mut doomed = Vec::new();
        for entry in std::fs::read_dir(self.datasets_dir())
            .into_iter()
            .flatten()
            .flatten()
        {
            let id = entry.file_name().to_string_lossy().into_owned();
            let label = upload_label(&id);
            let mut users = all.iter().filter(|j| j.dataset == label).peekable();
            let used = users.peek().is_some();
            let live = all
                .iter()
                .any(|j| j.dataset == label && !is_terminal(j.state));
            if live {
                continue;
            }
            if used || old(&entry.path()) {
                doomed.push(entry.path());
            }
        }
        for entry in std::fs::read_dir(self.uploads_dir())
            .into_iter()
            .flatten()
            .flatten()
        {
            if old(&entry.path()) {
                doomed.push(entry.path());
            }
        }
        let mut freed = 0;
        for p in doomed {
            match remove(p.clone()).await {
                Ok(n) => freed += n,
                Err(e) => {
                    tracing::warn!(path = %p.display(), error = %e, "could not delete an expired dataset")
                }
            }
        }
        if freed > 0 {
            tracing::info!(bytes = freed, "deleted datasets no job needs");
        }
        Ok(freed)
    }
    /// Unpacks an uploaded archive (already written to `archive`) into a new
    /// dataset folder; returns its id.
    pub async fn add_archive(&self, archive: PathBuf, file_name: &str) -> Result<String> {
        let kind = ArchiveKind::from_name(file_name)?;
        let id = uuid::Uuid::new_v4().to_string();
        let dest = self.datasets_dir().join(&id);
        let limits = self.cfg.archive;
        let dest2 = dest.clone();
        let r = tokio::task::spawn_blocking(move || {
            let r = dataset::unpack(&archive, kind, &dest2, limits);
            let _ = std::fs::remove_file(&archive);
            r
        })
        .await
        .map_err(|e| Error::Internal(format!("unpacking task failed: {e}")))?;
        r?;
        // Unpacked, an archive may be larger than it was.
        if let Err(e) = self.check_quota(self.datasets_bytes().await?) {
            let _ = tokio::fs::remove_dir_all(&dest).await;
            return Err(e);
        }
        Ok(id)
    }

    pub fn upload_path(&self) -> Result<PathBuf> {
        let dir = self.uploads_dir();
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::Io(format!("creating {}: {e}", dir.display())))?;
        Ok(dir.join(uuid::Uuid::new_v4().to_string()))
    }

    pub(crate) fn dataset_dir(&self, req: &pb::SubmitJobRequest) -> Result<(PathBuf, String)> {
        match &req.dataset {
            Some(pb::submit_job_request::Dataset::ServerPath(p)) => {
                let real = resolve_allowed(p, &self.cfg.allowed_roots)?;
                Ok((real, p.clone()))
            }
            Some(pb::submit_job_request::Dataset::DatasetId(id)) => {
                if uuid::Uuid::parse_str(id).is_err() {
                    return Err(Error::InvalidArgument(format!("bad dataset id {id:?}")));
                }
                let dir = self.datasets_dir().join(id);
                if !dir.is_dir() {
                    return Err(Error::NotFound(format!(
                        "no uploaded dataset {id:?}: upload it again"
                    )));
                }
                Ok((dataset::dataset_root(&dir), upload_label(id)))
            }
            None => Err(Error::InvalidArgument(
                "no dataset: give a server path or an uploaded dataset id".into(),
            )),
        }
    }

    /// Sweeps the datasets now and then until `stop` fires: datasets of
    /// jobs that ended while the service was down, and uploads no job used
    /// in time.
    pub fn spawn_sweeper(self: &Arc<Self>, every: Duration, stop: &watch::Receiver<bool>) {
        let weak = Arc::downgrade(self);
        let mut stop = stop.clone();
        tokio::spawn(async move {
            loop {
                let Some(t) = weak.upgrade() else { return };
                if let Err(e) = t.sweep_datasets().await {
                    tracing::warn!(error = %e, "could not sweep the uploaded datasets; retrying");
                }
                drop(t);
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = stop.changed() => return,
                }
            }
        });
    }
}

/// Deletes a dataset folder or upload file; returns the bytes freed.
async fn remove(path: PathBuf) -> Result<u64> {
    tokio::task::spawn_blocking(move || {
        let bytes = disk_bytes(&path);
        let r = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        r.map(|()| bytes).map_err(|e| {
            Error::Io(format!(
                "cannot delete dataset {}: {e}",
                path.file_name()
                    .map(|n| n.to_string_lossy())
                    .unwrap_or_default()
            ))
        })
    })
    .await
    .map_err(|e| Error::Internal(format!("deleting a dataset failed: {e}")))?
}
