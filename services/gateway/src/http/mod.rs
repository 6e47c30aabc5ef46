//! The JSON REST API (see `API.md` and `openapi.json`), and the routes of
//! the web UI's files (`crate::ui`):
//! one file per resource, each handler a thin translation onto one
//! `Gateway` method. Authorisation is in the handlers' types
//! ([`extract`]); the answers are typed structs.

mod backups;
mod collections;
mod duplicates;
pub mod extract;
mod images;
mod index_jobs;
mod ingest;
mod models;
pub mod openapi;
mod search;
mod system;
mod training;

use std::sync::Arc;

use axum::extract::Request;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::MethodRouter;
use axum::Router;
use cbir_api::v1 as pb;
use cbir_common::metrics::LabelledRoutes;

use crate::error::Error;
use crate::gateway::Gateway;

pub use openapi::OPENAPI_JSON;
pub use search::{search_batch_json, search_json};

type AppState = Arc<Gateway>;

/// A route template and what answers it.
type Route = (&'static str, MethodRouter<AppState>);

fn routes() -> Vec<Route> {
    [
        system::routes(),
        collections::routes(),
        images::routes(),
        duplicates::routes(),
        ingest::routes(),
        index_jobs::routes(),
        search::routes(),
        training::routes(),
        models::routes(),
        backups::routes(),
    ]
    .concat()
}

/// Every route template the gateway answers over HTTP: the REST API's
/// (what `openapi.json` must document) and the UI's files.
pub fn route_paths() -> Vec<&'static str> {
    let ui = std::iter::once(&crate::ui::INDEX).chain(crate::ui::ASSETS);
    routes()
        .into_iter()
        .map(|(path, _)| path)
        .chain(ui.map(|a| a.url))
        .collect()
}

pub fn router(gateway: Arc<Gateway>) -> Router {
    let body_limit = gateway.cfg.limits.max_request_bytes;
    let dataset_limit = gateway.cfg.limits.max_dataset_bytes;
    let import_limit = gateway.cfg.limits.max_import_bytes;
    routes()
        .into_iter()
        .fold(crate::ui::routes(), |r, (path, handler)| {
            r.route_labelled(path, handler)
        })
        .fallback(|| async {
            Error::NotFound("no such page or API route: see /api/openapi.json".into())
        })
        .layer(axum::extract::DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn(
            move |req: Request, next: axum::middleware::Next| {
                // Dataset archives and collection exports stream through
                // under their own limits.
                let path = req.uri().path();
                let limit = if path == "/api/training/datasets" {
                    usize::try_from(dataset_limit).unwrap_or(usize::MAX)
                } else if path.starts_with("/api/collections/") && path.ends_with("/import") {
                    usize::try_from(import_limit).unwrap_or(usize::MAX)
                } else {
                    body_limit
                };
                refuse_oversized(req, next, limit)
            },
        ))
        .with_state(gateway)
}

/// Bodies up to this size are read and dropped before an over-limit request
/// is refused: a client still sending when the server closes the connection
/// sees a broken pipe instead of the 413 and its message.
const DRAIN_CAP: u64 = 64 << 20;

/// Refuses a request whose declared length is over the limit with a clear
/// 413, after draining what the client sends (up to `DRAIN_CAP`).
async fn refuse_oversized(req: Request, next: axum::middleware::Next, limit: usize) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(len) if len > limit as u64 => {
            if len <= DRAIN_CAP {
                use futures::StreamExt;
                let mut body = req.into_body().into_data_stream();
                while let Some(Ok(_)) = body.next().await {}
            }
            Error::TooLarge(format!(
                "the request has {len} bytes, over the limit of {limit} bytes per request: send fewer or smaller files"
            ))
            .into_response()
        }
        _ => next.run(req).await,
    }
}

/// The name of an operation's or index job's state (one proto enum).
pub(crate) fn operation_state(s: i32) -> &'static str {
    use pb::operation_progress::State;
    match State::try_from(s).unwrap_or(State::Unspecified) {
        // Not started yet, as far as anyone can tell: clients keep polling.
        State::Pending | State::Unspecified => "pending",
        State::Running => "running",
        State::Succeeded => "succeeded",
        State::Failed => "failed",
        State::Cancelled => "cancelled",
    }
}

/// The name of a training job's state.
pub(crate) fn job_state(s: i32) -> &'static str {
    match pb::JobState::try_from(s).unwrap_or(pb::JobState::Unspecified) {
        pb::JobState::Unspecified => "unknown",
        pb::JobState::Queued => "queued",
        pb::JobState::Running => "running",
        pb::JobState::Succeeded => "succeeded",
        pb::JobState::Failed => "failed",
        pb::JobState::Cancelled => "cancelled",
    }
}

/// A model as answers name it.
#[derive(serde::Serialize)]
pub(crate) struct ModelJson {
    name: String,
    version: String,
}

impl From<pb::ModelRef> for ModelJson {
    fn from(m: pb::ModelRef) -> Self {
        Self {
            name: m.name,
            version: m.version,
        }
    }
}
