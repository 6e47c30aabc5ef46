//! Near-duplicates of a collection: `POST` starts a run (progress at
//! `/api/operations/{id}`), `GET` lists the latest run's groups.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Json;
use serde::{Deserialize, Serialize};

use super::collections::OperationJson;
use super::extract::{JsonBody, Reader, Writer};
use super::images::ImageJson;
use super::{AppState, Route};
use crate::error::Result;

pub(super) fn routes() -> Vec<Route> {
    vec![(
        "/api/collections/{name}/duplicates",
        get(list_duplicates).post(find_duplicates),
    )]
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FindBody {
    /// Omitted or 0: the index's default (`duplicates.min_similarity`).
    #[serde(default)]
    min_similarity: Option<f32>,
}

#[derive(Serialize)]
struct Started {
    operation_id: String,
}

async fn find_duplicates(
    State(gw): State<AppState>,
    Path(name): Path<String>,
    _: Writer,
    JsonBody(b): JsonBody<FindBody>,
) -> Result<Response> {
    let operation_id = gw
        .find_duplicates(&name, b.min_similarity.unwrap_or(0.0))
        .await?;
    Ok((StatusCode::ACCEPTED, Json(Started { operation_id })).into_response())
}

#[derive(Serialize)]
struct MemberJson {
    #[serde(flatten)]
    image: ImageJson,
    similarity: f32,
}

#[derive(Serialize)]
struct GroupJson {
    members: Vec<MemberJson>,
}

#[derive(Serialize)]
struct Listing {
    operation: Option<OperationJson>,
    min_similarity: f32,
    total_groups: u32,
    groups: Vec<GroupJson>,
}

async fn list_duplicates(
    State(gw): State<AppState>,
    Path(name): Path<String>,
    _: Reader,
) -> Result<Json<Listing>> {
    let l = gw.duplicates(&name).await?;
    Ok(Json(Listing {
        operation: l.operation.map(OperationJson::from),
        min_similarity: l.min_similarity,
        total_groups: l.total_groups,
        groups: l
            .groups
            .into_iter()
            .map(|g| GroupJson {
                members: g
                    .into_iter()
                    .map(|m| MemberJson {
                        image: m.image.into(),
                        similarity: m.similarity,
                    })
                    .collect(),
            })
            .collect(),
    }))
}
