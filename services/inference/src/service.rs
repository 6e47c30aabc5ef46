//! The gRPC face of the inference service: proto messages to and from the
//! domain (`engine`, `swap`), errors to statuses.

use std::pin::Pin;
use std::sync::Arc;

use cbir_api::v1 as pb;
use cbir_api::v1::inference_service_server::InferenceService;
use futures::Stream;
use tokio::sync::{mpsc, Semaphore};
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use crate::batcher::ModelMeta;
use crate::engine::{Embedded, Inference, ModelId, CALLER_DEADLINE};
use crate::error::Result;
use crate::priority::Priority;
use crate::swap::expected_sha256;

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
        backend: meta.backend.clone(),
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
                    let r = this
                        .embed_one_waiting(image.data, prio, model.as_ref())
                        .await;
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
