//! The gRPC face of the inference service: validation, parallel decoding,
//! then the batcher.

use std::pin::Pin;
use std::sync::Arc;
use tracing::Instrument;

use cbir_api::v1 as pb;
use cbir_api::v1::inference_service_server::InferenceService;
use cbir_imaging::Limits;
use futures::Stream;
use tokio::sync::{mpsc, Semaphore};
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use crate::backend::{DeviceConfig, ModelSpec, TchBackend};
use crate::batcher::{Backend, Batcher, ModelMeta, Priority, RawOutput};
use crate::error::{Error, Result};

/// The domain side of the service, free of tonic types where it can be.
pub struct Inference {
    pub batcher: Arc<Batcher>,
    pub limits: Limits,
    pub max_images_per_request: usize,
    pub device: DeviceConfig,
    decode_slots: Arc<Semaphore>,
    stream_window: usize,
}

/// One image's answer, with what the model calls its classes.
pub struct Embedded {
    pub output: RawOutput,
    pub meta: Arc<ModelMeta>,
    pub width: u32,
    pub height: u32,
}

impl Inference {
    pub fn new(
        batcher: Arc<Batcher>,
        limits: Limits,
        max_images_per_request: usize,
        device: DeviceConfig,
        decode_concurrency: usize,
    ) -> Self {
        Self {
            batcher,
            limits,
            max_images_per_request,
            device,
            decode_slots: Arc::new(Semaphore::new(decode_concurrency.max(1))),
            stream_window: 64,
        }
    }

    /// Decodes and preprocesses one image on the blocking pool, bounded by
    /// `decode_concurrency` so that a burst of huge images cannot take all
    /// memory at once.
    async fn prepare(&self, data: Vec<u8>) -> Result<(Vec<u8>, u32, u32)> {
        let _permit = self
            .decode_slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Error::ShuttingDown)?;
        let limits = self.limits;
        // Created here, entered on the blocking thread: the span keeps the
        // request's trace as its parent.
        let span = tracing::info_span!("decode", bytes = data.len());
        tokio::task::spawn_blocking(move || {
            let _span = span.entered();
            let decoded = cbir_imaging::decode(&data, &limits)?;
            let (w, h) = decoded.image.dimensions();
            let input = cbir_imaging::preprocess(&decoded.image)?;
            Ok((input, w, h))
        })
        .await
        .map_err(|e| Error::Internal(format!("decode task failed: {e}")))?
    }

    /// Embeds a batch: every image gets its own result; request-level
    /// problems (queue full, shutting down) fail the whole call.
    pub async fn embed_many(
        &self,
        images: Vec<Vec<u8>>,
        priority: Priority,
    ) -> Result<Vec<Result<Embedded>>> {
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
        let prepared = futures::future::join_all(images.into_iter().map(|d| self.prepare(d))).await;
        let mut inputs = Vec::new();
        let mut dims = Vec::new();
        let mut slots: Vec<Option<Result<Embedded>>> = Vec::with_capacity(prepared.len());
        for p in prepared {
            match p {
                Ok((input, w, h)) => {
                    inputs.push(input);
                    dims.push((w, h));
                    slots.push(None);
                }
                Err(e) => slots.push(Some(Err(e))),
            }
        }
        let inputs_len = inputs.len();
        let receivers = if inputs.is_empty() {
            Vec::new()
        } else {
            self.batcher.submit(inputs, priority)?
        };
        let mut answers = futures::future::join_all(receivers)
            .instrument(tracing::info_span!("batch_wait", images = inputs_len))
            .await
            .into_iter();
        let mut dims = dims.into_iter();
        Ok(slots
            .into_iter()
            .map(|slot| match slot {
                Some(err) => err,
                None => {
                    let (width, height) = dims.next().unwrap_or_default();
                    match answers.next() {
                        Some(Ok(Ok((output, meta)))) => Ok(Embedded {
                            output,
                            meta,
                            width,
                            height,
                        }),
                        Some(Ok(Err(e))) => Err(e),
                        Some(Err(_)) | None => Err(Error::ShuttingDown),
                    }
                }
            })
            .collect())
    }

    pub async fn embed_one(&self, image: Vec<u8>, priority: Priority) -> Result<Embedded> {
        let mut all = self.embed_many(vec![image], priority).await?;
        all.pop()
            .unwrap_or_else(|| Err(Error::Internal("no result for the image".into())))
    }

    /// Loads `spec` once per worker and swaps it in.
    pub async fn load_model(&self, spec: ModelSpec) -> Result<Arc<ModelMeta>> {
        let workers = self.batcher.workers();
        let device = self.device.clone();
        let instances = tokio::task::spawn_blocking(move || {
            (0..workers)
                .map(|_| TchBackend::load(&spec, &device).map(|b| Box::new(b) as Box<dyn Backend>))
                .collect::<Result<Vec<_>>>()
        })
        .await
        .map_err(|e| Error::Internal(format!("model load task failed: {e}")))??;
        self.batcher.swap(instances)?;
        let meta = self.batcher.meta();
        tracing::info!(model = %meta.name, version = %meta.version, "model swapped in");
        Ok(meta)
    }
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
    }
}

fn item_result(id: String, r: Result<Embedded>, include_probabilities: bool) -> pb::EmbedResult {
    pb::EmbedResult {
        id,
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
        let req = request.into_inner();
        let (ids, data): (Vec<String>, Vec<Vec<u8>>) =
            req.images.into_iter().map(|i| (i.id, i.data)).unzip();
        let results = self
            .0
            .embed_many(data, priority(req.priority, Priority::Interactive))
            .await?;
        let model = Some(model_ref(&self.0.batcher.meta()));
        Ok(Response::new(pb::EmbedResponse {
            results: ids
                .into_iter()
                .zip(results)
                .map(|(id, r)| item_result(id, r, req.include_probabilities))
                .collect(),
            model,
        }))
    }

    async fn embed_image(
        &self,
        request: Request<pb::EmbedImageRequest>,
    ) -> Result<Response<pb::EmbedImageResponse>, Status> {
        let req = request.into_inner();
        let image = req
            .image
            .ok_or_else(|| Status::invalid_argument("missing field `image`"))?;
        let e = self
            .0
            .embed_one(image.data, priority(req.priority, Priority::Interactive))
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
                    let mut attempt = 0u32;
                    let r = loop {
                        match this.embed_one(image.data.clone(), prio).await {
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
        // Held until the load finishes: the file must outlive the reads.
        let mut _tmp = None;
        let weights = match req.weights {
            Some(pb::load_model_request::Weights::Path(p)) => std::path::PathBuf::from(p),
            Some(pb::load_model_request::Weights::Data(bytes)) => {
                let dir = std::env::temp_dir();
                let path = dir.join(format!(
                    "cbir-model-{}-{}.safetensors",
                    std::process::id(),
                    crate::backend::now_ms()
                ));
                tokio::fs::write(&path, &bytes)
                    .await
                    .map_err(|e| Status::internal(format!("cannot stage the weights: {e}")))?;
                _tmp = Some(TempFile(path.clone()));
                path
            }
            None => {
                return Err(Status::invalid_argument(
                    "missing weights: give a path or the data",
                ))
            }
        };
        if !weights.is_file() {
            return Err(Error::ModelLoad(format!("{} is not a file", weights.display())).into());
        }
        let meta = self
            .0
            .load_model(ModelSpec {
                name: model.name,
                version: model.version,
                class_names: req.class_names,
                weights,
            })
            .await?;
        Ok(Response::new(pb::LoadModelResponse {
            info: Some(model_info(&meta, false)),
        }))
    }
}

struct TempFile(std::path::PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
