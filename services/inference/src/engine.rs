//! The domain of the inference service, free of tonic: images decoded in
//! parallel under the decode budget, embedded by the batcher of the model
//! a request names (the current one, or the one retained by the last
//! swap), each batch's answers from one model.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tracing::Instrument;

use cbir_imaging::Limits;
use parking_lot::{Mutex, RwLock};
use tokio::sync::Semaphore;

use crate::backend::{DeviceConfig, ModelSpec};
use crate::batcher::{Batcher, ModelMeta, RawOutput};
use crate::error::{Error, Result};
use crate::priority::Priority;

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
pub(crate) struct Retained {
    /// Kept so that its weights file is not pruned from the staging folder.
    pub(crate) spec: ModelSpec,
    pub(crate) batcher: Arc<Batcher>,
}

/// The domain side of the service, free of tonic types where it can be.
pub struct Inference {
    pub batcher: Arc<Batcher>,
    pub limits: Limits,
    pub max_images_per_request: usize,
    pub device: DeviceConfig,
    pub(crate) decode_slots: Arc<Semaphore>,
    /// The process's decode budget (see `cbir_imaging::budget`).
    pub(crate) decode_budget: Arc<cbir_imaging::budget::Budget>,
    pub(crate) stream_window: usize,
    /// What the main batcher serves: a later retaining swap rebuilds it from
    /// this spec's weights file.
    pub(crate) current: Mutex<ModelSpec>,
    pub(crate) retained: RwLock<Option<Retained>>,
    /// One load at a time: a load reads and replaces `current` and `retained`
    /// across awaits.
    pub(crate) loading: tokio::sync::Mutex<()>,
    /// Where weights sent as bytes are kept while their model is current or
    /// retained (the retained copy is built from the file when it is swapped
    /// out). One folder per instance: tests run several in one process.
    pub(crate) staging: PathBuf,
    /// The folder LoadModel reads weights from by path, links resolved;
    /// none: loads by path are refused.
    pub(crate) model_dir: Option<PathBuf>,
}

tokio::task_local! {
    /// The deadline of the gRPC call being served (`grpc-timeout`), for
    /// the waits of its decodes.
    pub(crate) static CALLER_DEADLINE: Option<std::time::Instant>;
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

/// Where one instance stages the weights it was sent.
fn staging_dir() -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    std::env::temp_dir().join(format!(
        "cbir-models-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ))
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

    /// [`Self::embed_one`] for bulk work, which waits for room in a full
    /// queue (a while) rather than failing.
    pub async fn embed_one_waiting(
        &self,
        image: Vec<u8>,
        priority: Priority,
        wanted: Option<&ModelId>,
    ) -> Result<Embedded> {
        let mut attempt = 0u32;
        loop {
            match self.embed_one(image.clone(), priority, wanted).await {
                Err(Error::QueueFull { .. }) if attempt < 200 => {
                    attempt += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(
                        5 * u64::from(attempt.min(20)),
                    ))
                    .await;
                }
                other => return other,
            }
        }
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

/// Drops a batcher handle; the last one joins the worker threads, which is
/// done on the blocking pool, not on the async threads.
pub(crate) fn release(batcher: Arc<Batcher>) {
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
