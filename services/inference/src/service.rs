//! The gRPC face of the inference service: validation, parallel decoding,
//! then the batcher.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tracing::Instrument;

use cbir_api::v1 as pb;
use cbir_api::v1::inference_service_server::InferenceService;
use cbir_imaging::Limits;
use futures::Stream;
use parking_lot::{Mutex, RwLock};
use tokio::sync::{mpsc, Semaphore};
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use crate::backend::{read_weights, sha256_hex, DeviceConfig, ModelSpec, TchBackend};
use crate::batcher::{Backend, Batcher, ModelMeta, Priority, RawOutput};
use crate::error::{Error, Result};

/// A model's registry identity: what callers name when they want features
/// of one model in particular.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelId {
    pub name: String,
    pub version: String,
}

impl ModelId {
    pub fn new(name: impl Into<String>, version: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            version: version.into(),
        }
    }

    pub fn of(meta: &ModelMeta) -> Self {
        Self::new(meta.name.clone(), meta.version.clone())
    }

    pub fn is(&self, meta: &ModelMeta) -> bool {
        self.name == meta.name && self.version == meta.version
    }
}

impl std::fmt::Display for ModelId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.name, self.version)
    }
}

/// The model replaced by the last swap, still served (one worker) to the
/// requests that name it, so that collections not yet rebuilt for the new
/// model keep answering searches.
struct Retained {
    /// Kept so that its weights file is not pruned from the staging folder.
    spec: ModelSpec,
    batcher: Arc<Batcher>,
}

/// The domain side of the service, free of tonic types where it can be.
pub struct Inference {
    pub batcher: Arc<Batcher>,
    pub limits: Limits,
    pub max_images_per_request: usize,
    pub device: DeviceConfig,
    decode_slots: Arc<Semaphore>,
    /// The process's decode budget (see `cbir_imaging::budget`).
    decode_budget: Arc<cbir_imaging::budget::Budget>,
    stream_window: usize,
    /// What the main batcher serves: a later retaining swap rebuilds it from
    /// this spec's weights file.
    current: Mutex<ModelSpec>,
    retained: RwLock<Option<Retained>>,
    /// One load at a time: a load reads and replaces `current` and `retained`
    /// across awaits.
    loading: tokio::sync::Mutex<()>,
    /// Where weights sent as bytes are kept while their model is current or
    /// retained (the retained copy is built from the file when it is swapped
    /// out). One folder per instance: tests run several in one process.
    staging: PathBuf,
    /// The folder LoadModel reads weights from by path, links resolved;
    /// none: loads by path are refused.
    model_dir: Option<PathBuf>,
}

/// Weights files larger than this are refused (EfficientNet-Lite0 needs
/// about 20 MB).
const MAX_WEIGHTS_BYTES: u64 = 2 << 30;

tokio::task_local! {
    /// The deadline of the gRPC call being served (`grpc-timeout`), for
    /// the waits of its decodes.
    static CALLER_DEADLINE: Option<std::time::Instant>;
}

/// One image's answer, with what the model calls its classes.
pub struct Embedded {
    pub output: RawOutput,
    pub meta: Arc<ModelMeta>,
    pub width: u32,
    pub height: u32,
    /// Thumbnail and rendition from the same decode, when asked for.
    pub stored: Option<cbir_imaging::StoredForms>,
}

/// A batch's answers, all from `model` (an image that a swap in the middle
/// of the request sent through another model fails alone).
pub struct Embeddings {
    pub model: Arc<ModelMeta>,
    pub results: Vec<Result<Embedded>>,
}

fn staging_dir() -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    std::env::temp_dir().join(format!(
        "cbir-models-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Keeps a registry name usable in a file name.
fn file_part(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

impl Inference {
    pub fn new(
        batcher: Arc<Batcher>,
        spec: ModelSpec,
        limits: Limits,
        max_images_per_request: usize,
        device: DeviceConfig,
        decode_concurrency: usize,
    ) -> Self {
        let decode_budget = cbir_imaging::budget::Budget::shared(&limits);
        if !decode_budget.made_from(&limits) {
            tracing::warn!(
                decode_memory_bytes = decode_budget.memory_bytes(),
                "another service of this process set the decode budget first: its settings apply"
            );
        }
        Self {
            batcher,
            limits,
            max_images_per_request,
            device,
            decode_slots: Arc::new(Semaphore::new(decode_concurrency.max(1))),
            decode_budget,
            stream_window: 64,
            current: Mutex::new(spec),
            retained: RwLock::new(None),
            loading: tokio::sync::Mutex::new(()),
            staging: staging_dir(),
            model_dir: None,
        }
    }

    /// Lets LoadModel read weights by path inside `dir` (and nowhere else).
    pub fn with_model_dir(mut self, dir: &std::path::Path) -> Self {
        let dir = if dir.as_os_str().is_empty() {
            std::path::Path::new(".")
        } else {
            dir
        };
        self.model_dir = match dir.canonicalize() {
            Ok(d) => Some(d),
            Err(e) => {
                tracing::warn!(model_dir = %dir.display(), error = %e, "the model folder cannot be opened: LoadModel by path is off");
                None
            }
        };
        self
    }

    /// Reads the weights at `path` (relative to the model folder, or
    /// absolute) if they lie inside the model folder once links are
    /// resolved; opened without following links and checked again after
    /// the open, so that a link swapped in meanwhile is refused too.
    /// Messages name no path: the caller knows the one it sent, and where
    /// links lead is the server's business.
    fn read_in_model_dir(&self, path: &str) -> Result<(PathBuf, Vec<u8>)> {
        let Some(dir) = &self.model_dir else {
            return Err(Error::Forbidden(
                "loading weights by path is off: the inference service has no model folder \
                 (model_dir); send the weights as data"
                    .into(),
            ));
        };
        let asked = dir.join(path.trim());
        let real = asked.canonicalize().map_err(|e| {
            tracing::info!(path = %asked.display(), error = %e, "LoadModel: no such weights file");
            Error::ModelLoad(
                "no weights file at that path in the inference service's model folder (model_dir)"
                    .into(),
            )
        })?;
        let outside = || {
            tracing::warn!(path = %asked.display(), resolved = %real.display(), "LoadModel: weights path outside the model folder refused");
            Error::Forbidden(
                "the weights path lies outside the inference service's model folder (model_dir), \
                 or leads out of it through a link: put the file there, or send the weights as data"
                    .into(),
            )
        };
        if !real.starts_with(dir) {
            return Err(outside());
        }
        let bytes = cbir_common::fs::read_under(&real, std::slice::from_ref(dir), MAX_WEIGHTS_BYTES)
            .map_err(|e| match e {
                cbir_common::fs::OpenError::Link | cbir_common::fs::OpenError::Outside => outside(),
                other => {
                    tracing::info!(path = %real.display(), error = %other, "LoadModel: weights unreadable");
                    Error::ModelLoad(format!("the weights file cannot be read: {other}"))
                }
            })?;
        Ok((real, bytes))
    }

    /// The model kept from the last swap, if any.
    pub fn retained(&self) -> Option<Arc<ModelMeta>> {
        self.retained.read().as_ref().map(|r| r.batcher.meta())
    }

    /// The batcher serving `wanted`: the retained one when it holds exactly
    /// that model and the main one does not; otherwise the main one (the
    /// answer names the model used, callers check it).
    fn pick(&self, wanted: Option<&ModelId>) -> Arc<Batcher> {
        if let Some(w) = wanted {
            if !w.is(&self.batcher.meta()) {
                if let Some(r) = self.retained.read().as_ref() {
                    if w.is(&r.batcher.meta()) {
                        return r.batcher.clone();
                    }
                }
            }
        }
        self.batcher.clone()
    }

    /// Queues `inputs` on the batcher for `wanted`; returns the model it
    /// serves and one receiver per input.
    fn submit(
        &self,
        inputs: Vec<Vec<u8>>,
        priority: Priority,
        wanted: Option<&ModelId>,
    ) -> Result<(
        Arc<ModelMeta>,
        Vec<tokio::sync::oneshot::Receiver<crate::batcher::Reply>>,
    )> {
        let batcher = self.pick(wanted);
        let submitted = batcher
            .submit(inputs, priority)
            .map(|rx| (batcher.meta(), rx));
        // Let go of a retained batcher before the forward pass: a load may
        // have replaced it meanwhile, and its last owner joins its worker.
        release(batcher);
        submitted
    }

    /// The model a request for `wanted` would run on now.
    fn serving(&self, wanted: Option<&ModelId>) -> Arc<ModelMeta> {
        let batcher = self.pick(wanted);
        let meta = batcher.meta();
        release(batcher);
        meta
    }

    /// Decodes and preprocesses one image on the blocking pool, bounded by
    /// `decode_concurrency` and by the process's decode memory budget (the
    /// header tells the peak before any pixel is decoded), so that a burst
    /// of huge images cannot take all memory at once.
    async fn prepare(
        &self,
        data: Vec<u8>,
        renditions: bool,
    ) -> Result<(Vec<u8>, u32, u32, Option<cbir_imaging::StoredForms>)> {
        let limits = self.limits;
        // A slot and room in the budget are waited for up to
        // `decode_wait_ms`, and up to half of what is left of the caller's
        // deadline: a burst is answered "retry" while the caller still
        // listens, instead of queueing past its deadline.
        let mut wait = std::time::Duration::from_millis(limits.decode_wait_ms);
        if let Ok(Some(deadline)) = CALLER_DEADLINE.try_with(|d| *d) {
            wait = wait.min(deadline.saturating_duration_since(std::time::Instant::now()) / 2);
        }
        let busy = || {
            Error::Image(cbir_imaging::Error::Busy {
                waited_ms: wait.as_millis() as u64,
            })
        };
        let started = std::time::Instant::now();
        let _permit = tokio::time::timeout(wait, self.decode_slots.clone().acquire_owned())
            .await
            .map_err(|_| busy())?
            .map_err(|_| Error::ShuttingDown)?;
        let header = cbir_imaging::probe(&data, &limits)?;
        let left = wait.saturating_sub(started.elapsed());
        let _memory = tokio::time::timeout(left, self.decode_budget.acquire(header.peak_bytes()))
            .await
            .map_err(|_| busy())??;
        // Created here, entered on the blocking thread: the span keeps the
        // request's trace as its parent.
        let span = tracing::info_span!("decode", bytes = data.len());
        tokio::task::spawn_blocking(move || {
            let _span = span.entered();
            let decoded = cbir_imaging::decode(&data, &limits)?;
            let (w, h) = decoded.image.dimensions();
            let input = cbir_imaging::preprocess(&decoded.image)?;
            let stored = renditions
                .then(|| cbir_imaging::stored_forms(&decoded.image, data.len()))
                .transpose()?;
            Ok((input, w, h, stored))
        })
        .await
        .map_err(|e| Error::Internal(format!("decode task failed: {e}")))?
    }

    /// Embeds a batch: every image gets its own result; request-level
    /// problems (queue full, shutting down) fail the whole call. `wanted`
    /// picks the retained model when it is that one (see [`Self::pick`]).
    pub async fn embed_many(
        &self,
        images: Vec<Vec<u8>>,
        priority: Priority,
        wanted: Option<&ModelId>,
    ) -> Result<Embeddings> {
        self.embed_many_with(images, priority, wanted, false).await
    }

    /// [`Self::embed_many`], with each image's thumbnail and rendition made
    /// from the same decode when `renditions` (what an upload stores).
    pub async fn embed_many_with(
        &self,
        images: Vec<Vec<u8>>,
        priority: Priority,
        wanted: Option<&ModelId>,
        renditions: bool,
    ) -> Result<Embeddings> {
        if images.is_empty() {
            return Err(Error::InvalidRequest("no images in the request".into()));
        }
        if images.len() > self.max_images_per_request {
            return Err(Error::InvalidRequest(format!(
                "{} images in one request, the limit is {}: split the request",
                images.len(),
                self.max_images_per_request
            )));
        }
        let prepared =
            futures::future::join_all(images.into_iter().map(|d| self.prepare(d, renditions)))
                .await;
        let mut inputs = Vec::new();
        let mut dims = Vec::new();
        let mut slots: Vec<Option<Result<Embedded>>> = Vec::with_capacity(prepared.len());
        for p in prepared {
            match p {
                Ok((input, w, h, stored)) => {
                    inputs.push(input);
                    dims.push((w, h, stored));
                    slots.push(None);
                }
                Err(e) => slots.push(Some(Err(e))),
            }
        }
        let inputs_len = inputs.len();
        let (served, receivers) = if inputs.is_empty() {
            (self.serving(wanted), Vec::new())
        } else {
            self.submit(inputs, priority, wanted)?
        };
        let mut answers = futures::future::join_all(receivers)
            .instrument(tracing::info_span!("batch_wait", images = inputs_len))
            .await
            .into_iter();
        let mut dims = dims.into_iter();
        let results: Vec<Result<Embedded>> = slots
            .into_iter()
            .map(|slot| match slot {
                Some(err) => err,
                None => {
                    let (width, height, stored) = dims.next().unwrap_or_default();
                    match answers.next() {
                        Some(Ok(Ok((output, meta)))) => Ok(Embedded {
                            output,
                            meta,
                            width,
                            height,
                            stored,
                        }),
                        Some(Ok(Err(e))) => Err(e),
                        Some(Err(_)) | None => Err(Error::ShuttingDown),
                    }
                }
            })
            .collect();
        Ok(one_model(served, results))
    }

    pub async fn embed_one(
        &self,
        image: Vec<u8>,
        priority: Priority,
        wanted: Option<&ModelId>,
    ) -> Result<Embedded> {
        let mut all = self.embed_many(vec![image], priority, wanted).await?;
        all.results
            .pop()
            .unwrap_or_else(|| Err(Error::Internal("no result for the image".into())))
    }

    /// Loads the weights at `path` (inside the model folder, see
    /// [`Self::read_in_model_dir`]) once per worker and swaps them in, if
    /// their SHA-256 is `expected_sha256`. With `retain_previous` the model
    /// it replaces keeps serving (one worker) the requests that name it,
    /// until the next load; without, a retained model is dropped.
    /// Reloading the active model keeps the retained one when asked to.
    pub async fn load_model(
        &self,
        model: ModelId,
        class_names: Vec<String>,
        path: &str,
        expected_sha256: &str,
        retain_previous: bool,
    ) -> Result<Arc<ModelMeta>> {
        let _loading = self.loading.lock().await;
        let loaded = match self.read_in_model_dir(path) {
            Ok((weights, data)) => {
                let spec = ModelSpec {
                    name: model.name,
                    version: model.version,
                    class_names,
                    weights,
                };
                self.load_locked(spec, data, expected_sha256, retain_previous)
                    .await
            }
            Err(e) => Err(e),
        };
        self.prune_staging();
        loaded
    }

    /// [`Self::load_model`] for weights sent as bytes: they are kept in a
    /// staging folder while their model is current or retained.
    pub async fn load_model_data(
        &self,
        model: ModelId,
        class_names: Vec<String>,
        data: Vec<u8>,
        expected_sha256: &str,
        retain_previous: bool,
    ) -> Result<Arc<ModelMeta>> {
        let _loading = self.loading.lock().await;
        // Checked before anything is written.
        let loaded = match check_sha256(&data, expected_sha256) {
            Ok(()) => match self.stage(&model, &data).await {
                Ok(weights) => {
                    let spec = ModelSpec {
                        name: model.name,
                        version: model.version,
                        class_names,
                        weights,
                    };
                    self.load_locked(spec, data, expected_sha256, retain_previous)
                        .await
                }
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        self.prune_staging();
        loaded
    }

    async fn stage(&self, model: &ModelId, data: &[u8]) -> Result<PathBuf> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        tokio::fs::create_dir_all(&self.staging)
            .await
            .map_err(|e| Error::Internal(format!("cannot create the staging folder: {e}")))?;
        // Unique: a reload under the same name must not overwrite the file
        // of the model it may have to retain.
        let path = self.staging.join(format!(
            "{}-{}-{}.safetensors",
            file_part(&model.name),
            file_part(&model.version),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        tokio::fs::write(&path, data)
            .await
            .map_err(|e| Error::Internal(format!("cannot stage the weights: {e}")))?;
        Ok(path)
    }

    /// Deletes staged weights whose model is neither current nor retained.
    fn prune_staging(&self) {
        let keep = [
            Some(self.current.lock().weights.clone()),
            self.retained
                .read()
                .as_ref()
                .map(|r| r.spec.weights.clone()),
        ];
        let Ok(entries) = std::fs::read_dir(&self.staging) else {
            return;
        };
        for path in entries.flatten().map(|e| e.path()) {
            if !keep.iter().flatten().any(|k| k == &path) {
                if let Err(e) = std::fs::remove_file(&path) {
                    tracing::warn!(path = %path.display(), error = %e, "cannot delete staged weights");
                }
            }
        }
    }

    async fn load_locked(
        &self,
        spec: ModelSpec,
        weights: Vec<u8>,
        expected_sha256: &str,
        retain_previous: bool,
    ) -> Result<Arc<ModelMeta>> {
        check_sha256(&weights, expected_sha256)?;
        let previous = self.current.lock().clone();
        let previous_sha = self.batcher.meta().weights_sha256.clone();
        let new_id = ModelId::new(spec.name.clone(), spec.version.clone());
        let previous_id = ModelId::new(previous.name.clone(), previous.version.clone());
        // Reloading the active model has nothing new to retain: the model
        // retained before (another one) stays.
        let keep_existing = retain_previous && previous_id == new_id;
        let retain = (retain_previous && !keep_existing).then(|| previous.clone());
        let workers = self.batcher.workers();
        let device = self.device.clone();
        let load = spec.clone();
        let (instances, kept) = tokio::task::spawn_blocking(move || {
            let instances = (0..workers)
                .map(|_| {
                    TchBackend::from_bytes(&load, &weights, &device)
                        .map(|b| Box::new(b) as Box<dyn Backend>)
                })
                .collect::<Result<Vec<_>>>()?;
            let kept = retain
                .map(|p| {
                    // Rebuilt from its file, which must still hold the
                    // weights it was loaded from.
                    read_weights(&p.weights)
                        .and_then(|w| {
                            if sha256_hex(&w) == previous_sha {
                                Ok(w)
                            } else {
                                Err(Error::ModelLoad(
                                    "its weights file changed since it was loaded".into(),
                                ))
                            }
                        })
                        .and_then(|w| TchBackend::from_bytes(&p, &w, &device))
                        .map_err(|e| {
                            let cause = match e {
                                Error::ModelLoad(m) => m,
                                other => other.to_string(),
                            };
                            Error::ModelLoad(format!(
                            "the previous model {}:{} cannot be retained ({cause}); load without \
                             retain_previous",
                            p.name, p.version
                        ))
                        })
                })
                .transpose()?;
            Ok::<_, Error>((instances, kept))
        })
        .await
        .map_err(|e| Error::Internal(format!("model load task failed: {e}")))??;
        let kept = match kept {
            Some(backend) => Some(Retained {
                spec: previous,
                batcher: Arc::new(Batcher::start(
                    self.batcher.config().clone(),
                    vec![Box::new(backend)],
                )?),
            }),
            None => None,
        };
        // The retained model is in place before the main batcher swaps, so
        // that a request naming the old model always finds it somewhere.
        let replaced = if keep_existing {
            None
        } else {
            std::mem::replace(&mut *self.retained.write(), kept)
        };
        self.batcher.swap(instances)?;
        *self.current.lock() = spec;
        if let Some(old) = replaced {
            release(old.batcher);
        }
        let meta = self.batcher.meta();
        let retained = self.retained();
        tracing::info!(
            model = %meta.name,
            version = %meta.version,
            retained = %retained.as_deref().map_or_else(|| "none".into(), |m| ModelId::of(m).to_string()),
            "model swapped in"
        );
        Ok(meta)
    }

    /// Stops accepting work, finishes what is queued and joins the workers
    /// of both batchers. Blocks.
    pub fn shutdown(&self) {
        self.batcher.shutdown();
        let retained = self.retained.read().as_ref().map(|r| r.batcher.clone());
        if let Some(b) = retained {
            b.shutdown();
        }
    }
}

impl Drop for Inference {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.staging);
    }
}

/// The hex SHA-256 a LoadModel request gives, lowercased: required, so
/// that only the weights the caller (the registry) vouches for are served.
pub fn expected_sha256(given: &str) -> Result<String> {
    let s = given.trim().to_ascii_lowercase();
    if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::InvalidRequest(
            "weights_sha256 must be the weights' SHA-256 as 64 hex digits (the registry's \
             weights_sha256)"
                .into(),
        ));
    }
    Ok(s)
}

/// Refuses weights whose SHA-256 is not `expected` (lowercase hex).
fn check_sha256(weights: &[u8], expected: &str) -> Result<()> {
    let got = sha256_hex(weights);
    if got == expected {
        Ok(())
    } else {
        tracing::warn!(
            expected,
            got,
            "LoadModel: weights with another SHA-256 refused"
        );
        Err(Error::InvalidRequest(format!(
            "the weights' SHA-256 is {got}, not the expected {expected}: refused (tampered or \
             wrong weights); the served model is unchanged"
        )))
    }
}

/// Drops a batcher handle; the last one joins the worker threads, which is
/// done on the blocking pool, not on the async threads.
fn release(batcher: Arc<Batcher>) {
    if let Some(last) = Arc::into_inner(batcher) {
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn_blocking(move || drop(last));
            }
            Err(_) => drop(last),
        }
    }
}

/// Makes every answer of a batch come from one model: `served` (the model
/// the batcher named when the work was queued) when some image used it,
/// else the first image's. An image that a concurrent swap sent through
/// another model fails alone, so that the response's model tells the truth.
fn one_model(served: Arc<ModelMeta>, mut results: Vec<Result<Embedded>>) -> Embeddings {
    let used = |m: &ModelMeta| {
        results
            .iter()
            .any(|r| matches!(r, Ok(e) if ModelId::of(&e.meta).is(m)))
    };
    let model = if used(&served) {
        served
    } else {
        results
            .iter()
            .find_map(|r| r.as_ref().ok().map(|e| e.meta.clone()))
            .unwrap_or(served)
    };
    let id = ModelId::of(&model);
    for r in &mut results {
        if let Ok(e) = r {
            if !id.is(&e.meta) {
                *r = Err(Error::ModelChanged(format!(
                    "the model changed from {} to {id} while the request ran: retry the image",
                    ModelId::of(&e.meta)
                )));
            }
        }
    }
    Embeddings { model, results }
}

pub fn model_ref(meta: &ModelMeta) -> pb::ModelRef {
    pb::ModelRef {
        name: meta.name.clone(),
        version: meta.version.clone(),
    }
}

pub fn to_embedding(e: &Embedded, include_probabilities: bool) -> pb::Embedding {
    let probs = &e.output.probabilities;
    let mut order: Vec<usize> = (0..probs.len()).collect();
    order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
    let top = &order[..order.len().min(5)];
    let name = |i: usize| e.meta.class_names.get(i).cloned().unwrap_or_default();
    let best = top.first().copied().unwrap_or_default();
    pb::Embedding {
        feature: e.output.feature.clone(),
        probabilities: if include_probabilities {
            probs.clone()
        } else {
            Vec::new()
        },
        predicted_class: best as i32,
        predicted_name: name(best),
        confidence: probs.get(best).copied().unwrap_or_default(),
        top5: top
            .iter()
            .map(|&i| pb::ClassScore {
                index: i as i32,
                name: name(i),
                probability: probs[i],
            })
            .collect(),
        width: e.width,
        height: e.height,
    }
}

/// The model a request names; none when unset or nameless.
fn wanted(model: Option<pb::ModelRef>) -> Option<ModelId> {
    model
        .filter(|m| !m.name.is_empty())
        .map(|m| ModelId::new(m.name, m.version))
}

fn priority(p: i32, default: Priority) -> Priority {
    match pb::Priority::try_from(p) {
        Ok(pb::Priority::Interactive) => Priority::Interactive,
        Ok(pb::Priority::Bulk) => Priority::Bulk,
        Ok(pb::Priority::Unspecified) | Err(_) => default,
    }
}

fn model_info(meta: &ModelMeta, include_class_names: bool) -> pb::ModelInfo {
    pb::ModelInfo {
        model: Some(model_ref(meta)),
        architecture: meta.architecture.clone(),
        embedding_dim: meta.embedding_dim as u32,
        num_classes: meta.class_names.len() as u32,
        class_names: if include_class_names {
            meta.class_names.as_ref().clone()
        } else {
            Vec::new()
        },
        input_size: cbir_imaging::INPUT_SIZE,
        device: meta.device.clone(),
        dtype: meta.dtype.clone(),
        loaded_at_ms: meta.loaded_at_ms,
        source: meta.source.clone(),
        weights_sha256: meta.weights_sha256.clone(),
    }
}

fn item_result(id: String, r: Result<Embedded>, include_probabilities: bool) -> pb::EmbedResult {
    let (thumbnail, rendition) = match &r {
        Ok(Embedded {
            stored: Some(s), ..
        }) => (s.thumbnail.clone(), s.rendition.clone().unwrap_or_default()),
        _ => Default::default(),
    };
    pb::EmbedResult {
        id,
        thumbnail,
        rendition,
        outcome: Some(match r {
            Ok(e) => pb::embed_result::Outcome::Embedding(to_embedding(&e, include_probabilities)),
            Err(err) => pb::embed_result::Outcome::Error(pb::ItemError {
                code: err.code() as i32,
                message: err.to_string(),
            }),
        }),
    }
}

/// The tonic service over the shared domain object.
#[derive(Clone)]
pub struct InferenceGrpc(pub Arc<Inference>);

#[tonic::async_trait]
impl InferenceService for InferenceGrpc {
    async fn embed(
        &self,
        request: Request<pb::EmbedRequest>,
    ) -> Result<Response<pb::EmbedResponse>, Status> {
        let deadline = cbir_common::grpc::deadline_of(request.metadata());
        let req = request.into_inner();
        let (ids, data): (Vec<String>, Vec<Vec<u8>>) =
            req.images.into_iter().map(|i| (i.id, i.data)).unzip();
        let wanted = wanted(req.model);
        let out = CALLER_DEADLINE
            .scope(
                deadline,
                self.0.embed_many_with(
                    data,
                    priority(req.priority, Priority::Interactive),
                    wanted.as_ref(),
                    req.include_renditions,
                ),
            )
            .await?;
        Ok(Response::new(pb::EmbedResponse {
            results: ids
                .into_iter()
                .zip(out.results)
                .map(|(id, r)| item_result(id, r, req.include_probabilities))
                .collect(),
            model: Some(model_ref(&out.model)),
        }))
    }

    async fn embed_image(
        &self,
        request: Request<pb::EmbedImageRequest>,
    ) -> Result<Response<pb::EmbedImageResponse>, Status> {
        let deadline = cbir_common::grpc::deadline_of(request.metadata());
        let req = request.into_inner();
        let image = req
            .image
            .ok_or_else(|| Status::invalid_argument("missing field `image`"))?;
        let wanted = wanted(req.model);
        let e = CALLER_DEADLINE
            .scope(
                deadline,
                self.0.embed_one(
                    image.data,
                    priority(req.priority, Priority::Interactive),
                    wanted.as_ref(),
                ),
            )
            .await?;
        Ok(Response::new(pb::EmbedImageResponse {
            embedding: Some(to_embedding(&e, req.include_probabilities)),
            model: Some(model_ref(&e.meta)),
        }))
    }

    type EmbedStreamStream =
        Pin<Box<dyn Stream<Item = Result<pb::EmbedResult, Status>> + Send + 'static>>;

    async fn embed_stream(
        &self,
        request: Request<Streaming<pb::EmbedStreamRequest>>,
    ) -> Result<Response<Self::EmbedStreamStream>, Status> {
        let mut incoming = request.into_inner();
        let this = self.0.clone();
        let window = Arc::new(Semaphore::new(self.0.stream_window));
        let (tx, rx) = mpsc::channel::<Result<pb::EmbedResult, Status>>(self.0.stream_window);
        tokio::spawn(async move {
            while let Some(msg) = incoming.next().await {
                let msg = match msg {
                    Ok(m) => m,
                    Err(status) => {
                        let _ = tx.send(Err(status)).await;
                        break;
                    }
                };
                // Bounded in-flight items per stream: backpressure to the client.
                let Ok(permit) = window.clone().acquire_owned().await else {
                    break;
                };
                let this = this.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    let image = msg.image.unwrap_or_default();
                    let prio = priority(msg.priority, Priority::Bulk);
                    let model = wanted(msg.model);
                    let mut attempt = 0u32;
                    let r = loop {
                        match this
                            .embed_one(image.data.clone(), prio, model.as_ref())
                            .await
                        {
                            // Bulk work waits for room rather than failing.
                            Err(Error::QueueFull { .. }) if attempt < 200 => {
                                attempt += 1;
                                tokio::time::sleep(std::time::Duration::from_millis(
                                    5 * u64::from(attempt.min(20)),
                                ))
                                .await;
                            }
                            other => break other,
                        }
                    };
                    let _ = tx
                        .send(Ok(item_result(image.id, r, msg.include_probabilities)))
                        .await;
                });
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn get_model_info(
        &self,
        request: Request<pb::GetModelInfoRequest>,
    ) -> Result<Response<pb::GetModelInfoResponse>, Status> {
        let req = request.into_inner();
        let meta = self.0.batcher.meta();
        let stats = self.0.batcher.stats();
        let cfg = self.0.batcher.config();
        Ok(Response::new(pb::GetModelInfoResponse {
            info: Some(model_info(&meta, req.include_class_names)),
            batcher: Some(pb::BatcherStats {
                queued_interactive: stats.queued_interactive as u64,
                queued_bulk: stats.queued_bulk as u64,
                queue_capacity: (cfg.max_queue_interactive + cfg.max_queue_bulk) as u64,
                batches: stats.batches,
                images: stats.images,
                max_batch_size: cfg.max_batch_size as u32,
                max_queue_delay_us: cfg.max_queue_delay_us,
            }),
            retained: self.0.retained().map(|m| model_ref(&m)),
        }))
    }

    async fn load_model(
        &self,
        request: Request<pb::LoadModelRequest>,
    ) -> Result<Response<pb::LoadModelResponse>, Status> {
        let req = request.into_inner();
        let model = req
            .model
            .ok_or_else(|| Status::invalid_argument("missing field `model` (name and version)"))?;
        if model.name.trim().is_empty() || model.version.trim().is_empty() {
            return Err(Status::invalid_argument(
                "model name and version must not be empty",
            ));
        }
        let sha = expected_sha256(&req.weights_sha256)?;
        let id = ModelId::new(model.name, model.version);
        let meta = match req.weights {
            Some(pb::load_model_request::Weights::Path(p)) => {
                self.0
                    .load_model(id, req.class_names, &p, &sha, req.retain_previous)
                    .await?
            }
            Some(pb::load_model_request::Weights::Data(bytes)) => {
                self.0
                    .load_model_data(id, req.class_names, bytes, &sha, req.retain_previous)
                    .await?
            }
            None => {
                return Err(Status::invalid_argument(
                    "missing weights: give a path or the data",
                ))
            }
        };
        Ok(Response::new(pb::LoadModelResponse {
            info: Some(model_info(&meta, false)),
        }))
    }
}
