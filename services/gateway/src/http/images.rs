//! One stored image: `GET` its metadata, `PATCH` its label, `DELETE` it,
//! `GET .../original` its kept original; `POST .../images/delete` for many
//! ids at once; and `GET .../images`, a collection page by page.

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Json;
use cbir_api::v1 as pb;
use serde::{Deserialize, Serialize};

use super::extract::{Admin, JsonBody, LinkReader, Reader, Writer};
use super::{AppState, Route};
use crate::error::{Error, Result};

pub(super) fn routes() -> Vec<Route> {
    vec![
        (
            "/api/collections/{name}/images/{id}",
            get(image).patch(update_image).delete(delete_image),
        ),
        ("/api/collections/{name}/images/delete", post(delete_images)),
        (
            "/api/collections/{name}/images/{id}/original",
            get(original),
        ),
    ]
}

/// `GET /api/collections/{name}/images`: joins the upload route of the
/// same path in `ingest.rs`, which registers both methods.
pub(super) fn list_route() -> axum::routing::MethodRouter<AppState> {
    get(list_images)
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
    /// None when the collection keeps no original of this image.
    original_url: Option<String>,
}

impl From<pb::StoredImage> for ImageJson {
    fn from(i: pb::StoredImage) -> Self {
        Self {
            thumbnail_url: format!(
                "/api/collections/{}/images/{}/thumbnail",
                i.collection, i.id
            ),
            original_url: i
                .has_source
                .then(|| format!("/api/collections/{}/images/{}/original", i.collection, i.id)),
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

async fn original(
    State(gw): State<AppState>,
    Path((name, id)): Path<(String, u64)>,
    _: LinkReader,
) -> Result<Response> {
    let (data, media) = gw.original(&name, id).await?;
    Ok((
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(media)),
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
struct ImagePage {
    images: Vec<ImageJson>,
    next_cursor: Option<String>,
    total: u64,
}

/// Most images per page over REST, as over gRPC.
const MAX_LIMIT: u32 = 500;

/// The query of a listing; `label` and `not_label` repeat.
fn list_request(name: String, query: Vec<(String, String)>) -> Result<pb::ListImagesRequest> {
    let mut r = pb::ListImagesRequest {
        collection: name,
        page_size: 50,
        ..Default::default()
    };
    let mut filter = pb::ImageFilter::default();
    let int = |key: &str, v: &str| {
        v.parse::<i64>()
            .map_err(|_| Error::InvalidArgument(format!("{key} must be a whole number, got {v:?}")))
    };
    for (key, v) in query {
        match key.as_str() {
            "sort" => {
                r.sort = match v.as_str() {
                    "time" => pb::ImageSort::Time,
                    "name" => pb::ImageSort::Name,
                    "label" => pb::ImageSort::Label,
                    _ => {
                        return Err(Error::InvalidArgument(format!(
                            "sort must be time, name or label, got {v:?}"
                        )))
                    }
                } as i32
            }
            "order" => {
                r.descending = match v.as_str() {
                    "asc" => false,
                    "desc" => true,
                    _ => {
                        return Err(Error::InvalidArgument(format!(
                            "order must be asc or desc, got {v:?}"
                        )))
                    }
                }
            }
            "limit" => {
                r.page_size = v
                    .parse::<u32>()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| {
                        Error::InvalidArgument(format!(
                            "limit must be 1 to {MAX_LIMIT}, got {v:?}: follow next_cursor for more"
                        ))
                    })?
            }
            "cursor" => r.cursor = v,
            "label" => filter.labels_in.push(v),
            "not_label" => filter.labels_not_in.push(v),
            "path_prefix" => filter.path_prefix = v,
            "from_ms" => filter.created_from_ms = int("from_ms", &v)?,
            "to_ms" => filter.created_to_ms = int("to_ms", &v)?,
            // The key of links (`<img>`); checked by the guard.
            "api_key" => {}
            other => {
                return Err(Error::InvalidArgument(format!(
                    "unknown parameter {other:?}: use sort, order, limit, cursor, label, not_label, path_prefix, from_ms, to_ms"
                )))
            }
        }
    }
    r.filter = Some(filter);
    Ok(r)
}

async fn list_images(
    State(gw): State<AppState>,
    Path(name): Path<String>,
    _: Reader,
    Query(query): Query<Vec<(String, String)>>,
) -> Result<Json<ImagePage>> {
    let page = gw.list_images(list_request(name, query)?).await?;
    Ok(Json(ImagePage {
        images: page.images.into_iter().map(ImageJson::from).collect(),
        next_cursor: (!page.next_cursor.is_empty()).then_some(page.next_cursor),
        total: page.total,
    }))
}
