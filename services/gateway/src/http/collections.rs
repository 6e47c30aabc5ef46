//! Collections: list, create, stats, delete, clear, thumbnails, and
//! rebuilds for the served model with the operations that track them.

use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Json;
use cbir_api::v1 as pb;
use serde::{Deserialize, Serialize};

use super::extract::{Admin, JsonBody, LinkReader, Reader, Writer};
use super::{operation_state, AppState, ModelJson, Route};
use crate::error::Result;

pub(super) fn routes() -> Vec<Route> {
    vec![
        (
            "/api/collections",
            get(list_collections).post(create_collection),
        ),
        (
            "/api/collections/{name}",
            get(collection_stats).delete(delete_collection),
        ),
        ("/api/collections/{name}/clear", post(clear_collection)),
        (
            "/api/collections/{name}/images/{id}/thumbnail",
            get(thumbnail),
        ),
        ("/api/collections/{name}/rebuild", post(rebuild_collection)),
        ("/api/collections/{name}/refine", post(refine_collection)),
        ("/api/operations/{id}", get(operation)),
    ]
}

#[derive(Serialize)]
pub(super) struct CollectionJson {
    name: String,
    physical_name: String,
    model: Option<ModelJson>,
    dims: u32,
    count: u64,
    description: String,
    created_at_ms: i64,
}

impl From<pb::Collection> for CollectionJson {
    fn from(c: pb::Collection) -> Self {
        Self {
            name: c.name,
            physical_name: c.physical_name,
            model: c.model.map(ModelJson::from),
            dims: c.dims,
            count: c.count,
            description: c.description,
            created_at_ms: c.created_at_ms,
        }
    }
}

#[derive(Serialize)]
struct CollectionList {
    collections: Vec<CollectionJson>,
}

async fn list_collections(State(gw): State<AppState>, _: Reader) -> Result<Json<CollectionList>> {
    let collections = gw
        .list_collections()
        .await?
        .into_iter()
        .map(Into::into)
        .collect();
    Ok(Json(CollectionList { collections }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    if_not_exists: bool,
}

async fn create_collection(
    State(gw): State<AppState>,
    _: Writer,
    JsonBody(b): JsonBody<CreateBody>,
) -> Result<Response> {
    let c = gw
        .create_collection(pb::CreateGatewayCollectionRequest {
            name: b.name,
            description: b.description,
            if_not_exists: b.if_not_exists,
        })
        .await?;
    Ok((StatusCode::CREATED, Json(CollectionJson::from(c))).into_response())
}

#[derive(Serialize)]
struct Stats {
    collection: Option<CollectionJson>,
    partitions: Vec<PartitionJson>,
    bytes_in_memory: u64,
    dims: u32,
    count: u64,
    /// The user's labels, most images first.
    labels: Vec<LabelJson>,
    /// Refined ranking's augmented vectors on the index replica that answered.
    refinement: RefinementJson,
}

#[derive(Serialize)]
struct RefinementJson {
    /// Images whose augmented vector waits for a refresh.
    stale: u64,
    /// The refresh running now, if any (`/api/operations/{id}`).
    operation_id: Option<String>,
    /// Bytes the augmented vectors take (part of bytes_in_memory).
    bytes: u64,
}

#[derive(Serialize)]
struct LabelJson {
    label: String,
    count: u64,
}

#[derive(Serialize)]
struct PartitionJson {
    class_index: i32,
    class_name: String,
    count: u64,
    bytes_in_memory: u64,
}

async fn collection_stats(
    State(gw): State<AppState>,
    Path(name): Path<String>,
    _: Reader,
) -> Result<Json<Stats>> {
    let s = gw.stats(&name).await?;
    let r = s.refinement.unwrap_or_default();
    Ok(Json(Stats {
        refinement: RefinementJson {
            stale: r.stale,
            operation_id: (!r.operation_id.is_empty()).then_some(r.operation_id),
            bytes: r.bytes,
        },
        collection: s.collection.map(CollectionJson::from),
        partitions: s
            .partitions
            .into_iter()
            .map(|p| PartitionJson {
                class_index: p.class_index,
                class_name: p.class_name,
                count: p.count,
                bytes_in_memory: p.bytes_in_memory,
            })
            .collect(),
        bytes_in_memory: s.bytes_in_memory,
        dims: s.dims,
        count: s.count,
        labels: s
            .labels
            .into_iter()
            .map(|l| LabelJson {
                label: l.label,
                count: l.count,
            })
            .collect(),
    }))
}

async fn delete_collection(
    State(gw): State<AppState>,
    Path(name): Path<String>,
    _: Admin,
) -> Result<StatusCode> {
    gw.delete_collection(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Serialize)]
struct Cleared {
    removed: u64,
}

async fn clear_collection(
    State(gw): State<AppState>,
    Path(name): Path<String>,
    _: Admin,
) -> Result<Json<Cleared>> {
    Ok(Json(Cleared {
        removed: gw.clear(&name).await?,
    }))
}

async fn thumbnail(
    State(gw): State<AppState>,
    Path((name, id)): Path<(String, u64)>,
    _: LinkReader,
) -> Result<Response> {
    let data = gw.thumbnail(&name, id).await?;
    Ok((
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("image/jpeg")),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("private, max-age=3600"),
            ),
        ],
        data,
    )
        .into_response())
}

#[derive(Serialize)]
struct Rebuilding {
    operation_id: String,
}

async fn rebuild_collection(
    State(gw): State<AppState>,
    Path(name): Path<String>,
    _: Admin,
) -> Result<Json<Rebuilding>> {
    let operation_id = gw.rebuild(&name).await?;
    Ok(Json(Rebuilding { operation_id }))
}

/// Recomputes the collection's augmented vectors now (they are kept up to
/// date on their own; this is for after changing `refined.*` settings).
async fn refine_collection(
    State(gw): State<AppState>,
    Path(name): Path<String>,
    _: Admin,
) -> Result<Json<Rebuilding>> {
    let operation_id = gw.refine(&name).await?;
    Ok(Json(Rebuilding { operation_id }))
}

#[derive(Serialize)]
pub(super) struct OperationJson {
    operation_id: String,
    state: &'static str,
    done: u64,
    failed: u64,
    total: u64,
    items_per_second: f64,
    message: String,
    started_at_ms: i64,
    updated_at_ms: i64,
}

impl From<pb::OperationProgress> for OperationJson {
    fn from(o: pb::OperationProgress) -> Self {
        Self {
            operation_id: o.operation_id,
            state: operation_state(o.state),
            done: o.done,
            failed: o.failed,
            total: o.total,
            items_per_second: o.items_per_second,
            message: o.message,
            started_at_ms: o.started_at_ms,
            updated_at_ms: o.updated_at_ms,
        }
    }
}

async fn operation(
    State(gw): State<AppState>,
    Path(id): Path<String>,
    _: LinkReader,
) -> Result<Json<OperationJson>> {
    Ok(Json(gw.operation(&id).await?.into()))
}
