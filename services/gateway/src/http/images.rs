//! One stored image: `GET` its metadata, `PATCH` its label, `DELETE` it;
//! and `POST .../images/delete` for many ids at once.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Json;
use cbir_api::v1 as pb;
use serde::{Deserialize, Serialize};

use super::extract::{Admin, JsonBody, Reader, Writer};
use super::{AppState, Route};
use crate::error::Result;

pub(super) fn routes() -> Vec<Route> {
    vec![
        (
            "/api/collections/{name}/images/{id}",
            get(image).patch(update_image).delete(delete_image),
        ),
        ("/api/collections/{name}/images/delete", post(delete_images)),
    ]
}

#[derive(Serialize)]
pub(super) struct ImageJson {
    id: u64,
    collection: String,
    file_name: String,
    path: String,
    label: String,
    predicted_class: i32,
    predicted_name: String,
    created_at_ms: i64,
    content_hash: String,
    thumbnail_url: String,
}

impl From<pb::StoredImage> for ImageJson {
    fn from(i: pb::StoredImage) -> Self {
        Self {
            thumbnail_url: format!(
                "/api/collections/{}/images/{}/thumbnail",
                i.collection, i.id
            ),
            id: i.id,
            collection: i.collection,
            file_name: i.file_name,
            path: i.path,
            label: i.label,
            predicted_class: i.predicted_class,
            predicted_name: i.predicted_name,
            created_at_ms: i.created_at_ms,
            content_hash: i.content_hash,
        }
    }
}

async fn image(
    State(gw): State<AppState>,
    Path((name, id)): Path<(String, u64)>,
    _: Reader,
) -> Result<Json<ImageJson>> {
    Ok(Json(gw.image(&name, id, false).await?.into()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateBody {
    label: String,
}

async fn update_image(
    State(gw): State<AppState>,
    Path((name, id)): Path<(String, u64)>,
    _: Writer,
    JsonBody(b): JsonBody<UpdateBody>,
) -> Result<Json<ImageJson>> {
    Ok(Json(gw.update_label(&name, id, b.label).await?.into()))
}

#[derive(Serialize)]
struct Deleted {
    deleted: u64,
}

async fn delete_image(
    State(gw): State<AppState>,
    Path((name, id)): Path<(String, u64)>,
    _: Admin,
) -> Result<StatusCode> {
    match gw.delete_images(&name, vec![id]).await? {
        0 => Err(crate::error::Error::NotFound(format!(
            "no image {id} in collection {name:?}"
        ))),
        _ => Ok(StatusCode::NO_CONTENT),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeleteBody {
    ids: Vec<u64>,
}

async fn delete_images(
    State(gw): State<AppState>,
    Path(name): Path<String>,
    _: Admin,
    JsonBody(b): JsonBody<DeleteBody>,
) -> Result<Json<Deleted>> {
    Ok(Json(Deleted {
        deleted: gw.delete_images(&name, b.ids).await?,
    }))
}
