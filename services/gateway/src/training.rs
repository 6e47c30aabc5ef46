//! Training, the model registry and rebuilds through the REST API: the
//! gateway checks the caller's role and forwards to the training and index
//! services (see `API.md`).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use cbir_api::v1 as pb;
use cbir_api::v1::training_service_client::TrainingServiceClient;
use cbir_common::metrics::LabelledRoutes;
use futures::{Stream, StreamExt};
use parking_lot::Mutex;
use serde::Deserialize;
use serde_json::{json, Value};
use tonic::transport::Channel;

use crate::auth::Role;
use crate::clients::request;
use crate::error::{Error, Result};
use crate::gateway::Gateway;
use crate::rest::{allow, parse_json};

type AppState = Arc<Gateway>;

/// Uploads are forwarded in messages of about this size.
const UPLOAD_CHUNK: usize = 1 << 20;
/// A job's event stream may stay open this long.
const WATCH_DEADLINE: Duration = Duration::from_secs(24 * 3600);

fn training_client(ch: Channel, max: usize) -> TrainingServiceClient<Channel> {
    TrainingServiceClient::new(ch)
        .max_decoding_message_size(max)
        .max_encoding_message_size(max)
}

pub fn routes() -> Router<AppState> {
    Router::new()
        .route_labelled(
            "/api/training/datasets",
            get(list_datasets).post(upload_dataset),
        )
        .route_labelled("/api/training/datasets/{id}", delete(delete_dataset))
        .route_labelled("/api/training/jobs", get(list_jobs).post(submit_job))
        .route_labelled("/api/training/jobs/{id}", get(get_job))
        .route_labelled("/api/training/jobs/{id}/cancel", post(cancel_job))
        .route_labelled("/api/training/jobs/{id}/events", get(job_events))
        .route_labelled("/api/training/jobs/{id}/curve", get(job_curve))
        .route_labelled("/api/models", get(list_models))
        .route_labelled(
            "/api/models/{name}/{version}",
            get(get_model).delete(delete_model),
        )
        .route_labelled(
            "/api/models/{name}/{version}/activate",
            post(activate_model),
        )
        .route_labelled("/api/operations/{id}", get(operation))
        .route_labelled("/api/collections/{name}/rebuild", post(rebuild_collection))
}

impl Gateway {
    async fn training_rpc<Req: Clone, Resp, F, Fut>(
        &self,
        what: &str,
        timeout: Duration,
        msg: Req,
        rpc: F,
    ) -> Result<Resp>
    where
        F: Fn(TrainingServiceClient<Channel>, tonic::Request<Req>) -> Fut,
        Fut:
            std::future::Future<Output = std::result::Result<tonic::Response<Resp>, tonic::Status>>,
    {
        self.rpc(&self.training, training_client, what, timeout, msg, rpc)
            .await
    }

    fn admin_timeout(&self) -> Duration {
        Self::t(self.cfg.timeouts.admin_ms)
    }

    /// Streams an archive to the training service; nothing is buffered
    /// whole. Refused with 413 past `max_dataset_bytes`.
    pub async fn upload_dataset(
        &self,
        file_name: String,
        body: Body,
    ) -> Result<pb::UploadDatasetResponse> {
        let limit = self.cfg.limits.max_dataset_bytes;
        let over = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let over2 = over.clone();
        let mut data = body.into_data_stream();
        let chunks = async_stream::stream! {
            let mut buf = Vec::with_capacity(UPLOAD_CHUNK);
            let mut total = 0u64;
            let mut first = true;
            while let Some(Ok(b)) = data.next().await {
                total += b.len() as u64;
                if total > limit {
                    over2.store(true, std::sync::atomic::Ordering::Relaxed);
                    // The truncated archive fails to unpack on the other side.
                    return;
                }
                buf.extend_from_slice(&b);
                if buf.len() >= UPLOAD_CHUNK {
                    let file_name = if first { file_name.clone() } else { String::new() };
                    first = false;
                    yield pb::UploadDatasetChunk { file_name, data: std::mem::take(&mut buf) };
                }
            }
            if first || !buf.is_empty() {
                yield pb::UploadDatasetChunk {
                    file_name: if first { file_name.clone() } else { String::new() },
                    data: buf,
                };
            }
        };
        // A stream can be sent once: no retry on another replica.
        let chunks = Mutex::new(Some(chunks));
        let max = self.max_msg();
        let r = self
            .training
            .call("UploadDataset", WATCH_DEADLINE, false, |ch, t| {
                let s = chunks.lock().take();
                async move {
                    let s = s.ok_or_else(|| {
                        tonic::Status::unavailable("the upload cannot be sent twice: upload again")
                    })?;
                    training_client(ch, max)
                        .upload_dataset(request(s, t))
                        .await
                        .map(tonic::Response::into_inner)
                }
            })
            .await;
        if over.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(Error::TooLarge(format!(
                "the dataset archive is over the limit of {limit} bytes (max_dataset_bytes)"
            )));
        }
        r
    }

    pub async fn operation(&self, id: &str) -> Result<pb::OperationProgress> {
        let mut stream = self
            .index_rpc(
                "WatchOperation",
                self.admin_timeout(),
                pb::WatchOperationRequest {
                    operation_id: id.to_string(),
                },
                |mut c, r| async move { c.watch_operation(r).await },
            )
            .await?;
        stream
            .message()
            .await
            .map_err(|s| Error::upstream(crate::error::Upstream::Index, s))?
            .ok_or_else(|| Error::NotFound(format!("no operation {id:?}")))
    }

    /// Re-embeds a collection with the model inference serves now.
    pub async fn rebuild(&self, collection: &str) -> Result<String> {
        let info = self.model_info(self.admin_timeout()).await?;
        let model = info.info.and_then(|i| i.model).ok_or_else(|| {
            Error::Internal("the inference service did not name its model".into())
        })?;
        let r = self
            .index_rpc(
                "Rebuild",
                self.admin_timeout(),
                pb::RebuildRequest {
                    collection: collection.to_string(),
                    model: Some(model),
                },
                |mut c, r| async move { c.rebuild(r).await },
            )
            .await?;
        Ok(r.operation_id)
    }
}

// ----- JSON ---------------------------------------------------------------------

fn state_name(s: i32) -> &'static str {
    match pb::JobState::try_from(s).unwrap_or(pb::JobState::Unspecified) {
        pb::JobState::Unspecified => "unknown",
        pb::JobState::Queued => "queued",
        pb::JobState::Running => "running",
        pb::JobState::Succeeded => "succeeded",
        pb::JobState::Failed => "failed",
        pb::JobState::Cancelled => "cancelled",
    }
}

fn op_state(s: i32) -> &'static str {
    use pb::operation_progress::State;
    match State::try_from(s).unwrap_or(State::Unspecified) {
        State::Unspecified => "unknown",
        State::Pending => "pending",
        State::Running => "running",
        State::Succeeded => "succeeded",
        State::Failed => "failed",
        State::Cancelled => "cancelled",
    }
}

/// JSON has no NaN: a value that is not a number is null.
fn num(v: f64) -> Value {
    if v.is_finite() {
        json!(v)
    } else {
        Value::Null
    }
}

fn model_ref_json(m: Option<&pb::ModelRef>) -> Value {
    m.map_or(
        Value::Null,
        |m| json!({"name": m.name, "version": m.version}),
    )
}

fn params_json(p: &pb::TrainingParams) -> Value {
    json!({
        "epochs": p.epochs,
        "batch_size": p.batch_size,
        "learning_rate": num(f64::from(p.learning_rate)),
        "fine_tune_backbone": p.fine_tune_backbone,
        "validation_fraction": num(f64::from(p.validation_fraction)),
        "seed": p.seed,
        "min_images_per_class": p.min_images_per_class,
        "early_stopping_patience": p.early_stopping_patience,
        "tune_blocks": p.tune_blocks,
        "augment_views": p.augment_views,
        "head_epochs": p.head_epochs,
        "embedding_dim": p.embedding_dim,
    })
}

pub fn job_json(j: &pb::Job) -> Value {
    let p = j.progress.clone().unwrap_or_default();
    json!({
        "id": j.id,
        "name": j.name,
        "state": state_name(j.state),
        "message": j.message,
        "params": params_json(&j.params.unwrap_or_default()),
        "submitted_by": j.submitted_by,
        "created_at_ms": j.created_at_ms,
        "started_at_ms": j.started_at_ms,
        "finished_at_ms": j.finished_at_ms,
        "class_names": j.class_names,
        "train_images": j.train_images,
        "validation_images": j.validation_images,
        "skipped": j.skipped,
        "model": model_ref_json(j.model.as_ref()),
        "dataset": j.dataset,
        "progress": {
            "phase": p.phase,
            "epoch": p.epoch,
            "epochs": p.epochs,
            "iteration": p.iteration,
            "iterations": p.iterations,
            "loss": num(f64::from(p.loss)),
            "train_accuracy": num(f64::from(p.train_accuracy)),
            "validation_accuracy": num(f64::from(p.validation_accuracy)),
            "images_per_second": num(p.images_per_second),
            "eta_seconds": num(p.eta_seconds),
            "elapsed_seconds": num(p.elapsed_seconds),
        },
    })
}

pub fn model_json(m: &pb::RegisteredModel) -> Value {
    let r = m.model.clone().unwrap_or_default();
    json!({
        "name": r.name,
        "version": r.version,
        "trained_by": m.trained_by,
        "created_at_ms": m.created_at_ms,
        "duration_seconds": num(m.duration_seconds),
        "iterations": m.iterations,
        "epochs": m.epochs,
        "validation_accuracy": num(f64::from(m.validation_accuracy)),
        "per_class": m.per_class.iter().map(|c| json!({
            "class_name": c.class_name,
            "accuracy": num(f64::from(c.accuracy)),
            "images": c.images,
        })).collect::<Vec<_>>(),
        "class_names": m.class_names,
        "base_model": m.base_model.as_ref().map_or_else(String::new, |b| format!("{}:{}", b.name, b.version)),
        "active": m.active,
        "job_id": m.job_id,
        "weights_bytes": m.weights_bytes,
    })
}

pub fn operation_json(o: &pb::OperationProgress) -> Value {
    json!({
        "operation_id": o.operation_id,
        "state": op_state(o.state),
        "done": o.done,
        "failed": o.failed,
        "total": o.total,
        "items_per_second": num(o.items_per_second),
        "message": o.message,
        "started_at_ms": o.started_at_ms,
        "updated_at_ms": o.updated_at_ms,
    })
}

fn curve_json(points: &[pb::CurvePoint]) -> Value {
    json!({
        "points": points.iter().map(|p| json!({
            "iteration": p.iteration,
            "epoch": p.epoch,
            "elapsed_seconds": num(p.elapsed_seconds),
            "loss": num(f64::from(p.loss)),
            "train_accuracy": num(f64::from(p.train_accuracy)),
            "validation_accuracy": num(f64::from(p.validation_accuracy)),
        })).collect::<Vec<_>>()
    })
}

// ----- handlers -----------------------------------------------------------------

#[derive(Deserialize, Default)]
struct KeyQuery {
    api_key: Option<String>,
}

#[derive(Deserialize)]
struct UploadQuery {
    file_name: Option<String>,
    api_key: Option<String>,
}

/// The archive's name: from the query, or from the content type.
fn archive_name(q: Option<String>, headers: &HeaderMap) -> String {
    if let Some(n) = q.filter(|n| !n.trim().is_empty()) {
        return n;
    }
    let ct = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    match ct {
        "application/zip" | "application/x-zip-compressed" => "dataset.zip",
        "application/gzip" | "application/x-gzip" | "application/x-compressed-tar" => {
            "dataset.tar.gz"
        }
        _ => "dataset.tar",
    }
    .to_string()
}

async fn upload_dataset(
    State(gw): State<AppState>,
    Query(q): Query<UploadQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>> {
    allow(&gw, &headers, q.api_key.as_deref(), Role::Admin)?;
    let name = archive_name(q.file_name, &headers);
    let r = gw.upload_dataset(name, body).await?;
    Ok(Json(json!({"dataset_id": r.dataset_id, "bytes": r.bytes})))
}

fn dataset_json(d: &pb::DatasetInfo) -> Value {
    json!({
        "id": d.id,
        "bytes": d.bytes,
        "created_at_ms": d.created_at_ms,
        "job_ids": d.job_ids,
        "expires_at_ms": d.expires_at_ms,
    })
}

async fn list_datasets(State(gw): State<AppState>, headers: HeaderMap) -> Result<Json<Value>> {
    allow(&gw, &headers, None, Role::Admin)?;
    let r = gw
        .training_rpc(
            "ListDatasets",
            gw.admin_timeout(),
            pb::ListDatasetsRequest {},
            |mut c, r| async move { c.list_datasets(r).await },
        )
        .await?;
    Ok(Json(json!({
        "datasets": r.datasets.iter().map(dataset_json).collect::<Vec<_>>(),
        "used_bytes": r.used_bytes,
        "quota_bytes": r.quota_bytes,
    })))
}

async fn delete_dataset(
    State(gw): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>> {
    allow(&gw, &headers, None, Role::Admin)?;
    let r = gw
        .training_rpc(
            "DeleteDataset",
            gw.admin_timeout(),
            pb::DeleteDatasetRequest {
                dataset_id: id.clone(),
            },
            |mut c, r| async move { c.delete_dataset(r).await },
        )
        .await?;
    Ok(Json(json!({"deleted": id, "freed_bytes": r.freed_bytes})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubmitBody {
    name: String,
    dataset_id: Option<String>,
    server_path: Option<String>,
    #[serde(default)]
    params: ParamsBody,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct ParamsBody {
    epochs: u32,
    batch_size: u32,
    learning_rate: f32,
    fine_tune_backbone: bool,
    validation_fraction: f32,
    seed: u64,
    min_images_per_class: u32,
    early_stopping_patience: u32,
    tune_blocks: u32,
    augment_views: u32,
    head_epochs: u32,
    embedding_dim: u32,
}

async fn submit_job(
    State(gw): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<Value>> {
    let caller = allow(&gw, &headers, None, Role::Admin)?
        .0
        .unwrap_or_else(|| "anonymous".into());
    let b: SubmitBody = parse_json(&headers, &body)?;
    let dataset = match (b.dataset_id, b.server_path) {
        (Some(id), None) => pb::submit_job_request::Dataset::DatasetId(id),
        (None, Some(p)) => pb::submit_job_request::Dataset::ServerPath(p),
        _ => {
            return Err(Error::InvalidArgument(
                "give exactly one of dataset_id (an uploaded archive) and server_path".into(),
            ))
        }
    };
    let p = b.params;
    let msg = pb::SubmitJobRequest {
        name: b.name,
        dataset: Some(dataset),
        params: Some(pb::TrainingParams {
            epochs: p.epochs,
            batch_size: p.batch_size,
            learning_rate: p.learning_rate,
            fine_tune_backbone: p.fine_tune_backbone,
            validation_fraction: p.validation_fraction,
            seed: p.seed,
            min_images_per_class: p.min_images_per_class,
            early_stopping_patience: p.early_stopping_patience,
            tune_blocks: p.tune_blocks,
            augment_views: p.augment_views,
            head_epochs: p.head_epochs,
            embedding_dim: p.embedding_dim,
        }),
        submitted_by: caller,
    };
    let r = gw
        .training_rpc(
            "SubmitJob",
            Duration::from_secs(300),
            msg,
            |mut c, r| async move { c.submit_job(r).await },
        )
        .await?;
    Ok(Json(job_json(&r.job.unwrap_or_default())))
}

async fn list_jobs(
    State(gw): State<AppState>,
    Query(q): Query<KeyQuery>,
    headers: HeaderMap,
) -> Result<Json<Value>> {
    allow(&gw, &headers, q.api_key.as_deref(), Role::Search)?;
    let r = gw
        .training_rpc(
            "ListJobs",
            gw.admin_timeout(),
            pb::ListJobsRequest {},
            |mut c, r| async move { c.list_jobs(r).await },
        )
        .await?;
    Ok(Json(
        json!({"jobs": r.jobs.iter().map(job_json).collect::<Vec<_>>()}),
    ))
}

async fn get_job(
    State(gw): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<KeyQuery>,
    headers: HeaderMap,
) -> Result<Json<Value>> {
    allow(&gw, &headers, q.api_key.as_deref(), Role::Search)?;
    let r = gw
        .training_rpc(
            "GetJob",
            gw.admin_timeout(),
            pb::GetJobRequest { job_id: id },
            |mut c, r| async move { c.get_job(r).await },
        )
        .await?;
    Ok(Json(job_json(&r.job.unwrap_or_default())))
}

async fn cancel_job(
    State(gw): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>> {
    allow(&gw, &headers, None, Role::Admin)?;
    let r = gw
        .training_rpc(
            "CancelJob",
            gw.admin_timeout(),
            pb::CancelJobRequest { job_id: id },
            |mut c, r| async move { c.cancel_job(r).await },
        )
        .await?;
    Ok(Json(job_json(&r.job.unwrap_or_default())))
}

/// Server-sent events: one `data:` line of job JSON per update, until the
/// job ends. `api_key` in the query, as EventSource cannot send headers.
async fn job_events(
    State(gw): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<KeyQuery>,
    headers: HeaderMap,
) -> Result<Response> {
    allow(&gw, &headers, q.api_key.as_deref(), Role::Search)?;
    let stream = gw
        .training_rpc(
            "WatchJob",
            WATCH_DEADLINE,
            pb::WatchJobRequest { job_id: id },
            |mut c, r| async move { c.watch_job(r).await },
        )
        .await?;
    let events: std::pin::Pin<
        Box<dyn Stream<Item = std::result::Result<Event, std::convert::Infallible>> + Send>,
    > = Box::pin(stream.filter_map(|e| async move {
        match e {
            Ok(ev) => ev
                .job
                .map(|j| Ok(Event::default().event("job").data(job_json(&j).to_string()))),
            Err(s) => Some(Ok(Event::default().event("error").data(
                json!({"code": "unavailable", "message": s.message()}).to_string(),
            ))),
        }
    }));
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response())
}

async fn job_curve(
    State(gw): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<KeyQuery>,
    headers: HeaderMap,
) -> Result<Json<Value>> {
    allow(&gw, &headers, q.api_key.as_deref(), Role::Search)?;
    let msg = pb::GetPerformanceCurveRequest {
        target: Some(pb::get_performance_curve_request::Target::JobId(id)),
    };
    let r = gw
        .training_rpc(
            "GetPerformanceCurve",
            gw.admin_timeout(),
            msg,
            |mut c, r| async move { c.get_performance_curve(r).await },
        )
        .await?;
    Ok(Json(curve_json(&r.points)))
}

async fn list_models(
    State(gw): State<AppState>,
    Query(q): Query<KeyQuery>,
    headers: HeaderMap,
) -> Result<Json<Value>> {
    allow(&gw, &headers, q.api_key.as_deref(), Role::Search)?;
    let r = gw
        .training_rpc(
            "ListModels",
            gw.admin_timeout(),
            pb::ListModelsRequest {},
            |mut c, r| async move { c.list_models(r).await },
        )
        .await?;
    Ok(Json(
        json!({"models": r.models.iter().map(model_json).collect::<Vec<_>>()}),
    ))
}

fn model_ref(name: String, version: String) -> Option<pb::ModelRef> {
    Some(pb::ModelRef { name, version })
}

async fn get_model(
    State(gw): State<AppState>,
    Path((name, version)): Path<(String, String)>,
    Query(q): Query<KeyQuery>,
    headers: HeaderMap,
) -> Result<Json<Value>> {
    allow(&gw, &headers, q.api_key.as_deref(), Role::Search)?;
    let msg = pb::GetModelRequest {
        model: model_ref(name, version),
    };
    let r = gw
        .training_rpc("GetModel", gw.admin_timeout(), msg, |mut c, r| async move {
            c.get_model(r).await
        })
        .await?;
    Ok(Json(model_json(&r.model.unwrap_or_default())))
}

async fn delete_model(
    State(gw): State<AppState>,
    Path((name, version)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<Value>> {
    allow(&gw, &headers, None, Role::Admin)?;
    let msg = pb::DeleteModelRequest {
        model: model_ref(name.clone(), version.clone()),
    };
    gw.training_rpc(
        "DeleteModel",
        gw.admin_timeout(),
        msg,
        |mut c, r| async move { c.delete_model(r).await },
    )
    .await?;
    Ok(Json(json!({"deleted": {"name": name, "version": version}})))
}

async fn activate_model(
    State(gw): State<AppState>,
    Path((name, version)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<Value>> {
    allow(&gw, &headers, None, Role::Admin)?;
    let msg = pb::ActivateModelRequest {
        model: model_ref(name, version),
    };
    let r = gw
        .training_rpc(
            "ActivateModel",
            Duration::from_secs(300),
            msg,
            |mut c, r| async move { c.activate_model(r).await },
        )
        .await?;
    Ok(Json(json!({
        "model": model_json(&r.model.unwrap_or_default()),
        "rebuild_operation_ids": r.rebuild_operation_ids,
    })))
}

async fn operation(
    State(gw): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<KeyQuery>,
    headers: HeaderMap,
) -> Result<Json<Value>> {
    allow(&gw, &headers, q.api_key.as_deref(), Role::Search)?;
    Ok(Json(operation_json(&gw.operation(&id).await?)))
}

async fn rebuild_collection(
    State(gw): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>> {
    allow(&gw, &headers, None, Role::Admin)?;
    let id = gw.rebuild(&name).await?;
    Ok(Json(json!({"operation_id": id})))
}
