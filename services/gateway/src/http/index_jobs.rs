//! Index jobs: indexing a folder on the server (`allowed_roots`) in the
//! background, and their progress.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Json;
use cbir_api::v1 as pb;
use serde::{Deserialize, Serialize};

use super::extract::{JsonBody, Reader, Writer};
use super::{operation_state, AppState, Route};
use crate::error::Result;

pub(super) fn routes() -> Vec<Route> {
    vec![
        ("/api/collections/{name}/index-jobs", post(start_job)),
        ("/api/jobs", get(list_jobs)),
        ("/api/jobs/{id}", get(get_job)),
    ]
}

#[derive(Serialize)]
struct IndexJobJson {
    id: String,
    collection: String,
    path: String,
    state: &'static str,
    done: u64,
    failed: u64,
    total: u64,
    images_per_second: f64,
    failures: Vec<FailureJson>,
    message: String,
    started_at_ms: i64,
    updated_at_ms: i64,
}

#[derive(Serialize)]
struct FailureJson {
    path: String,
    reason: String,
}

impl From<pb::IndexJob> for IndexJobJson {
    fn from(j: pb::IndexJob) -> Self {
        Self {
            id: j.id,
            collection: j.collection,
            path: j.path,
            state: operation_state(j.state),
            done: j.done,
            failed: j.failed,
            total: j.total,
            images_per_second: j.images_per_second,
            failures: j
                .failures
                .into_iter()
                .map(|f| FailureJson {
                    path: f.path,
                    reason: f.reason,
                })
                .collect(),
            message: j.message,
            started_at_ms: j.started_at_ms,
            updated_at_ms: j.updated_at_ms,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JobBody {
    path: String,
    #[serde(default)]
    create_collection: bool,
}

async fn start_job(
    State(gw): State<AppState>,
    Path(name): Path<String>,
    _: Writer,
    JsonBody(b): JsonBody<JobBody>,
) -> Result<Response> {
    let job = gw
        .start_index_job(pb::StartIndexJobRequest {
            collection: name,
            path: b.path,
            create_collection: b.create_collection,
        })
        .await?;
    Ok((StatusCode::ACCEPTED, Json(IndexJobJson::from(job))).into_response())
}

#[derive(Serialize)]
struct JobList {
    jobs: Vec<IndexJobJson>,
}

async fn list_jobs(State(gw): State<AppState>, _: Reader) -> Result<Json<JobList>> {
    let jobs = gw.index_jobs().await?.into_iter().map(Into::into).collect();
    Ok(Json(JobList { jobs }))
}

async fn get_job(
    State(gw): State<AppState>,
    Path(id): Path<String>,
    _: Reader,
) -> Result<Json<IndexJobJson>> {
    Ok(Json(gw.index_job(&id).await?.into()))
}
