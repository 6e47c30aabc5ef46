//! Training: dataset archives, training jobs, their live events and
//! learning curves.

use std::convert::Infallible;
use std::pin::Pin;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::Json;
use cbir_api::v1 as pb;
use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};

use super::extract::{Admin, JsonBody, LinkAdmin, LinkReader};
use super::{job_state, AppState, ModelJson, Route};
use crate::error::{Error, Result};

pub(super) fn routes() -> Vec<Route> {
    vec![
        (
            "/api/training/datasets",
            get(list_datasets).post(upload_dataset),
        ),
        ("/api/training/datasets/{id}", delete(delete_dataset)),
        ("/api/training/jobs", get(list_jobs).post(submit_job)),
        ("/api/training/jobs/{id}", get(get_job)),
        ("/api/training/jobs/{id}/cancel", post(cancel_job)),
        ("/api/training/jobs/{id}/events", get(job_events)),
        ("/api/training/jobs/{id}/curve", get(job_curve)),
    ]
}

/// `ParamsJson`, a job's parameters as submitted (zero for the training
/// service's default) and as answered, with its conversions to and from
/// the proto message; floats travel as f64 in JSON.
macro_rules! params_json {
    (same: $($same:ident: $t:ty),*; floats: $($float:ident),*) => {
        #[derive(Serialize, Deserialize, Default)]
        #[serde(deny_unknown_fields, default)]
        struct ParamsJson {
            $($same: $t,)*
            $($float: f64,)*
        }

        impl From<pb::TrainingParams> for ParamsJson {
            fn from(p: pb::TrainingParams) -> Self {
                Self {
                    $($same: p.$same,)*
                    $($float: f64::from(p.$float),)*
                }
            }
        }

        impl From<ParamsJson> for pb::TrainingParams {
            // JSON numbers are read as f64 and narrowed, as serde reads an f32.
            #[allow(clippy::cast_possible_truncation)]
            fn from(p: ParamsJson) -> Self {
                Self {
                    $($same: p.$same,)*
                    $($float: p.$float as f32,)*
                }
            }
        }
    };
}

params_json! {
    same: epochs: u32, batch_size: u32, fine_tune_backbone: bool, seed: u64,
        min_images_per_class: u32, early_stopping_patience: u32, tune_blocks: u32,
        augment_views: u32, head_epochs: u32, embedding_dim: u32;
    floats: learning_rate, validation_fraction
}

#[derive(Serialize)]
struct ProgressJson {
    phase: String,
    epoch: u32,
    epochs: u32,
    iteration: u64,
    iterations: u64,
    loss: f64,
    train_accuracy: f64,
    validation_accuracy: f64,
    images_per_second: f64,
    eta_seconds: f64,
    elapsed_seconds: f64,
}

#[derive(Serialize)]
struct JobJson {
    id: String,
    name: String,
    state: &'static str,
    message: String,
    params: ParamsJson,
    submitted_by: String,
    created_at_ms: i64,
    started_at_ms: i64,
    finished_at_ms: i64,
    class_names: Vec<String>,
    train_images: u32,
    validation_images: u32,
    skipped: Vec<String>,
    model: Option<ModelJson>,
    dataset: String,
    progress: ProgressJson,
}

impl From<pb::Job> for JobJson {
    fn from(j: pb::Job) -> Self {
        let p = j.progress.unwrap_or_default();
        Self {
            id: j.id,
            name: j.name,
            state: job_state(j.state),
            message: j.message,
            params: j.params.unwrap_or_default().into(),
            submitted_by: j.submitted_by,
            created_at_ms: j.created_at_ms,
            started_at_ms: j.started_at_ms,
            finished_at_ms: j.finished_at_ms,
            class_names: j.class_names,
            train_images: j.train_images,
            validation_images: j.validation_images,
            skipped: j.skipped,
            model: j.model.map(ModelJson::from),
            dataset: j.dataset,
            progress: ProgressJson {
                phase: p.phase,
                epoch: p.epoch,
                epochs: p.epochs,
                iteration: p.iteration,
                iterations: p.iterations,
                loss: f64::from(p.loss),
                train_accuracy: f64::from(p.train_accuracy),
                validation_accuracy: f64::from(p.validation_accuracy),
                images_per_second: p.images_per_second,
                eta_seconds: p.eta_seconds,
                elapsed_seconds: p.elapsed_seconds,
            },
        }
    }
}

#[derive(Deserialize)]
struct UploadQuery {
    file_name: Option<String>,
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

#[derive(Serialize)]
struct Uploaded {
    dataset_id: String,
    bytes: u64,
}

async fn upload_dataset(
    State(gw): State<AppState>,
    Query(q): Query<UploadQuery>,
    _: LinkAdmin,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Uploaded>> {
    let name = archive_name(q.file_name, &headers);
    let r = gw.upload_dataset(name, body).await?;
    Ok(Json(Uploaded {
        dataset_id: r.dataset_id,
        bytes: r.bytes,
    }))
}

#[derive(Serialize)]
struct DatasetJson {
    id: String,
    bytes: u64,
    created_at_ms: i64,
    job_ids: Vec<String>,
    expires_at_ms: i64,
}

#[derive(Serialize)]
struct DatasetList {
    datasets: Vec<DatasetJson>,
    used_bytes: u64,
    quota_bytes: u64,
}

async fn list_datasets(State(gw): State<AppState>, _: Admin) -> Result<Json<DatasetList>> {
    let r = gw.datasets().await?;
    Ok(Json(DatasetList {
        datasets: r
            .datasets
            .into_iter()
            .map(|d| DatasetJson {
                id: d.id,
                bytes: d.bytes,
                created_at_ms: d.created_at_ms,
                job_ids: d.job_ids,
                expires_at_ms: d.expires_at_ms,
            })
            .collect(),
        used_bytes: r.used_bytes,
        quota_bytes: r.quota_bytes,
    }))
}

#[derive(Serialize)]
struct DatasetDeleted {
    deleted: String,
    freed_bytes: u64,
}

async fn delete_dataset(
    State(gw): State<AppState>,
    Path(id): Path<String>,
    _: Admin,
) -> Result<Json<DatasetDeleted>> {
    let r = gw.delete_dataset(id.clone()).await?;
    Ok(Json(DatasetDeleted {
        deleted: id,
        freed_bytes: r.freed_bytes,
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubmitBody {
    name: String,
    dataset_id: Option<String>,
    server_path: Option<String>,
    #[serde(default)]
    params: ParamsJson,
}

async fn submit_job(
    State(gw): State<AppState>,
    caller: Admin,
    JsonBody(b): JsonBody<SubmitBody>,
) -> Result<Json<JobJson>> {
    let dataset = match (b.dataset_id, b.server_path) {
        (Some(id), None) => pb::submit_job_request::Dataset::DatasetId(id),
        (None, Some(p)) => pb::submit_job_request::Dataset::ServerPath(p),
        _ => {
            return Err(Error::InvalidArgument(
                "give exactly one of dataset_id (an uploaded archive) and server_path".into(),
            ))
        }
    };
    let msg = pb::SubmitJobRequest {
        name: b.name,
        dataset: Some(dataset),
        params: Some(b.params.into()),
        submitted_by: caller.name(),
    };
    Ok(Json(gw.submit_training_job(msg).await?.into()))
}

#[derive(Serialize)]
struct JobList {
    jobs: Vec<JobJson>,
}

async fn list_jobs(State(gw): State<AppState>, _: LinkReader) -> Result<Json<JobList>> {
    let jobs = gw.training_jobs().await?;
    Ok(Json(JobList {
        jobs: jobs.into_iter().map(Into::into).collect(),
    }))
}

async fn get_job(
    State(gw): State<AppState>,
    Path(id): Path<String>,
    _: LinkReader,
) -> Result<Json<JobJson>> {
    Ok(Json(gw.training_job(id).await?.into()))
}

async fn cancel_job(
    State(gw): State<AppState>,
    Path(id): Path<String>,
    _: Admin,
) -> Result<Json<JobJson>> {
    Ok(Json(gw.cancel_training_job(id).await?.into()))
}

#[derive(Serialize)]
struct StreamError<'a> {
    code: &'static str,
    message: &'a str,
}

type Events = Pin<Box<dyn Stream<Item = std::result::Result<Event, Infallible>> + Send>>;

/// Server-sent events: one `data:` line of job JSON per update, until the
/// job ends. `api_key` in the query, as EventSource cannot send headers.
async fn job_events(
    State(gw): State<AppState>,
    Path(id): Path<String>,
    _: LinkReader,
) -> Result<Response> {
    let stream = gw.watch_training_job(id).await?;
    let events: Events = Box::pin(stream.filter_map(|e| async move {
        let event = match e {
            Ok(ev) => Event::default()
                .event("job")
                .json_data(JobJson::from(ev.job?)),
            Err(s) => Event::default().event("error").json_data(StreamError {
                code: "unavailable",
                message: s.message(),
            }),
        };
        event.ok().map(Ok)
    }));
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response())
}

#[derive(Serialize)]
struct CurveJson {
    points: Vec<PointJson>,
}

#[derive(Serialize)]
struct PointJson {
    iteration: u64,
    epoch: u32,
    elapsed_seconds: f64,
    loss: f64,
    train_accuracy: f64,
    validation_accuracy: f64,
}

async fn job_curve(
    State(gw): State<AppState>,
    Path(id): Path<String>,
    _: LinkReader,
) -> Result<Json<CurveJson>> {
    let points = gw.training_curve(id).await?;
    Ok(Json(CurveJson {
        points: points
            .into_iter()
            .map(|p| PointJson {
                iteration: p.iteration,
                epoch: p.epoch,
                elapsed_seconds: p.elapsed_seconds,
                loss: f64::from(p.loss),
                train_accuracy: f64::from(p.train_accuracy),
                validation_accuracy: f64::from(p.validation_accuracy),
            })
            .collect(),
    }))
}
