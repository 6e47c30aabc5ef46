//! The JSON REST API and the web UI (see `API.md` and `openapi.json`).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{FromRequest, Multipart, Path, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use cbir_api::v1 as pb;
use cbir_common::metrics::LabelledRoutes;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::auth::Role;
use crate::error::{Error, Result};
use crate::gateway::{file_name_of, label_from_path, mode_name, parse_mode, Gateway};

pub const OPENAPI_JSON: &str = include_str!("../openapi.json");

type AppState = Arc<Gateway>;

pub fn router(gateway: Arc<Gateway>) -> Router {
    let body_limit = gateway.cfg.limits.max_request_bytes;
    let dataset_limit = gateway.cfg.limits.max_dataset_bytes;
    Router::new()
        .merge(crate::ui::routes())
        .route_labelled(
            "/api/openapi.json",
            get(|| async { asset("application/json", OPENAPI_JSON) }),
        )
        .route_labelled("/api/health", get(health))
        .route_labelled("/api/config", get(config))
        .route_labelled("/api/model", get(model))
        .route_labelled(
            "/api/collections",
            get(list_collections).post(create_collection),
        )
        .route_labelled(
            "/api/collections/{name}",
            get(collection_stats).delete(delete_collection),
        )
        .route_labelled("/api/collections/{name}/clear", post(clear_collection))
        .route_labelled("/api/collections/{name}/images", post(add_images))
        .route_labelled("/api/collections/{name}/index-jobs", post(start_job))
        .route_labelled(
            "/api/collections/{name}/images/{id}/thumbnail",
            get(thumbnail),
        )
        .route_labelled("/api/jobs", get(list_jobs))
        .route_labelled("/api/jobs/{id}", get(get_job))
        .route_labelled("/api/search", post(search))
        .merge(crate::training::routes())
        .fallback(|| async {
            Error::NotFound("no such page or API route: see /api/openapi.json".into())
        })
        .layer(axum::extract::DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn(
            move |req: Request, next: axum::middleware::Next| {
                // Dataset archives stream through under their own limit.
                let limit = if req.uri().path() == "/api/training/datasets" {
                    usize::try_from(dataset_limit).unwrap_or(usize::MAX)
                } else {
                    body_limit
                };
                refuse_oversized(req, next, limit)
            },
        ))
        .with_state(gateway)
}

/// The caller's key (header, or `api_key` in the query for `<img>` tags)
/// must carry `role`.
pub(crate) fn allow(
    gw: &Gateway,
    headers: &axum::http::HeaderMap,
    query_key: Option<&str>,
    role: Role,
) -> Result<crate::auth::Caller> {
    gw.auth
        .check(crate::auth::key_from_headers(headers).or(query_key), role)
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

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response()
}

/// A JSON request body, taken only with a JSON Content-Type (415
/// otherwise): a page on another site can send `text/plain` without the
/// browser asking the gateway first, but not `application/json`.
pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(
    headers: &axum::http::HeaderMap,
    body: &[u8],
) -> Result<T> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap_or("?"))
        .unwrap_or("");
    if !crate::guard::is_json_type(content_type) {
        return Err(Error::UnsupportedMediaType(format!(
            "send the body as JSON with Content-Type: application/json (got {})",
            if content_type.is_empty() {
                "no Content-Type".to_string()
            } else {
                format!("{:?}", content_type.chars().take(100).collect::<String>())
            }
        )));
    }
    parse_json_content(body)
}

/// The JSON of a body whose Content-Type was checked already.
fn parse_json_content<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T> {
    serde_json::from_slice(body).map_err(|e| Error::InvalidArgument(format!("bad JSON body: {e}")))
}

fn multipart_error(e: &axum::extract::multipart::MultipartError, limit: usize) -> Error {
    if crate::guard::timed_out(e) {
        return Error::ClientTimeout(format!("the upload stopped: {}", e.body_text()));
    }
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        Error::TooLarge(format!(
            "the upload is over the limit of {limit} bytes per request: send fewer or smaller files"
        ))
    } else {
        Error::InvalidArgument(format!("bad multipart upload: {}", e.body_text()))
    }
}

/// Reads one upload part, stopping as soon as it grows past `max` bytes
/// (`limits.max_image_bytes`) instead of buffering all of it first: `None`
/// for a part over the limit (the rest of it is skipped, not stored).
async fn read_part(
    field: &mut axum::extract::multipart::Field<'_>,
    max: usize,
    request_limit: usize,
) -> Result<Option<Vec<u8>>> {
    let mut data = Vec::new();
    while let Some(chunk) = field
        .chunk()
        .await
        .map_err(|e| multipart_error(&e, request_limit))?
    {
        if data.len() + chunk.len() > max {
            return Ok(None);
        }
        data.extend_from_slice(&chunk);
    }
    Ok(Some(data))
}

/// The per-image error of an upload part over `limits.max_image_bytes`.
fn too_large_image(max: usize) -> String {
    format!("image too large: over the limit of {max} bytes (limits.max_image_bytes)")
}

// ----- JSON shapes -----------------------------------------------------------

#[derive(Serialize)]
struct ModelJson {
    name: String,
    version: String,
}

#[derive(Serialize)]
struct CollectionJson {
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
            model: c.model.map(|m| ModelJson {
                name: m.name,
                version: m.version,
            }),
            dims: c.dims,
            count: c.count,
            description: c.description,
            created_at_ms: c.created_at_ms,
        }
    }
}

fn state_name(s: i32) -> &'static str {
    use pb::operation_progress::State;
    match State::try_from(s).unwrap_or(State::Unspecified) {
        State::Pending | State::Unspecified => "pending",
        State::Running => "running",
        State::Succeeded => "succeeded",
        State::Failed => "failed",
        State::Cancelled => "cancelled",
    }
}

fn job_json(j: pb::IndexJob) -> Value {
    json!({
        "id": j.id,
        "collection": j.collection,
        "path": j.path,
        "state": state_name(j.state),
        "done": j.done,
        "failed": j.failed,
        "total": j.total,
        "images_per_second": j.images_per_second,
        "failures": j.failures.into_iter().map(|f| json!({"path": f.path, "reason": f.reason})).collect::<Vec<_>>(),
        "message": j.message,
        "started_at_ms": j.started_at_ms,
        "updated_at_ms": j.updated_at_ms,
    })
}

/// Percent-encodes a path segment (collection names may hold spaces).
fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub fn search_json(r: pb::SearchResponse) -> Value {
    let coll = encode_segment(&r.collection);
    let stats = r.stats.unwrap_or_default();
    json!({
        "results": r.results.into_iter().map(|h| json!({
            "id": h.id,
            "file_name": h.file_name,
            "path": h.path,
            "label": h.label,
            "distance": h.distance,
            "similarity": h.similarity,
            "partition": h.partition,
            "partition_name": h.partition_name,
            "thumbnail_url": format!("/api/collections/{coll}/images/{}/thumbnail", h.id),
        })).collect::<Vec<_>>(),
        "query": r.query.map(|q| json!({
            "predicted_class": q.predicted_class,
            "predicted_name": q.predicted_name,
            "confidence": q.confidence,
            "top5": q.top5.into_iter().map(|c| json!({"index": c.index, "name": c.name, "probability": c.probability})).collect::<Vec<_>>(),
        })),
        "stats": {
            "partitions_searched": stats.partitions_searched,
            "partitions_total": stats.partitions_total,
            "vectors_scanned": stats.vectors_scanned,
            "vectors_total": stats.vectors_total,
        },
        "took_ms": r.took_ms,
        "collection": r.collection,
        "mode": mode_name(r.mode),
    })
}

// ----- handlers ----------------------------------------------------------------

async fn health(State(gw): State<AppState>) -> Json<Value> {
    let t = Duration::from_millis(1500);
    let (inf, idx) = tokio::join!(gw.model_info(t), gw.ping_index(t));
    let part = |r: std::result::Result<String, Error>| match r {
        Ok(detail) => json!({"ok": true, "detail": detail}),
        Err(e) => json!({"ok": false, "detail": e.to_string()}),
    };
    let ok = inf.is_ok() && idx.is_ok();
    let inf = inf.map(|m| {
        m.info
            .and_then(|i| i.model)
            .map_or_else(String::new, |m| format!("serving {}:{}", m.name, m.version))
    });
    Json(json!({
        "status": if ok { "ok" } else { "degraded" },
        "services": { "inference": part(inf), "index": part(idx) },
    }))
}

async fn config(State(gw): State<AppState>) -> Json<Value> {
    let c = &gw.cfg;
    Json(json!({
        "max_image_bytes": c.limits.max_image_bytes,
        "max_files_per_request": c.limits.max_files_per_request,
        "max_request_bytes": c.limits.max_request_bytes,
        "max_top_k": c.limits.max_top_k,
        "default_top_k": 20,
        "default_collection": c.default_collection,
        "allowed_roots": c.allowed_roots.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
    }))
}

async fn model(State(gw): State<AppState>) -> Result<Json<Value>> {
    let r = gw
        .model_info(Duration::from_millis(gw.cfg.timeouts.admin_ms))
        .await?;
    let i = r.info.unwrap_or_default();
    let m = i.model.unwrap_or_default();
    Ok(Json(json!({
        "name": m.name,
        "version": m.version,
        "architecture": i.architecture,
        "embedding_dim": i.embedding_dim,
        "num_classes": i.num_classes,
        "device": i.device,
    })))
}

async fn list_collections(
    State(gw): State<AppState>,
    headers: axum::http::HeaderMap,
) -> Result<Json<Value>> {
    allow(&gw, &headers, None, Role::Search)?;
    let cs: Vec<CollectionJson> = gw
        .list_collections()
        .await?
        .into_iter()
        .map(Into::into)
        .collect();
    Ok(Json(json!({ "collections": cs })))
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
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Result<Response> {
    allow(&gw, &headers, None, Role::Index)?;
    let b: CreateBody = parse_json(&headers, &body)?;
    let c = gw
        .create_collection(pb::CreateGatewayCollectionRequest {
            name: b.name,
            description: b.description,
            if_not_exists: b.if_not_exists,
        })
        .await?;
    Ok((StatusCode::CREATED, Json(CollectionJson::from(c))).into_response())
}

async fn collection_stats(
    State(gw): State<AppState>,
    headers: axum::http::HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<Value>> {
    allow(&gw, &headers, None, Role::Search)?;
    let s = gw.stats(&name).await?;
    Ok(Json(json!({
        "collection": s.collection.map(CollectionJson::from),
        "partitions": s.partitions.into_iter().map(|p| json!({
            "class_index": p.class_index,
            "class_name": p.class_name,
            "count": p.count,
            "bytes_in_memory": p.bytes_in_memory,
        })).collect::<Vec<_>>(),
        "bytes_in_memory": s.bytes_in_memory,
        "dims": s.dims,
        "count": s.count,
    })))
}

async fn delete_collection(
    State(gw): State<AppState>,
    headers: axum::http::HeaderMap,
    Path(name): Path<String>,
) -> Result<StatusCode> {
    allow(&gw, &headers, None, Role::Admin)?;
    gw.delete_collection(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn clear_collection(
    State(gw): State<AppState>,
    headers: axum::http::HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<Value>> {
    allow(&gw, &headers, None, Role::Admin)?;
    Ok(Json(json!({ "removed": gw.clear(&name).await? })))
}

#[derive(Deserialize, Default)]
struct AddQuery {
    #[serde(default)]
    create: bool,
    /// Overwrite the stored path, file name and label of images the
    /// collection holds already.
    #[serde(default)]
    replace: bool,
}

async fn add_images(
    State(gw): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<AddQuery>,
    request: Request,
) -> Result<Json<Value>> {
    allow(&gw, request.headers(), None, Role::Index)?;
    let limit = gw.cfg.limits.max_request_bytes;
    let mut mp = Multipart::from_request(request, &()).await.map_err(|e| {
        Error::UnsupportedMediaType(format!(
            "send the images as multipart/form-data parts named \"files\" ({})",
            e.body_text()
        ))
    })?;
    let max_image = gw.cfg.limits.max_image_bytes;
    let mut images = Vec::new();
    // Parts over the per-image limit, with their place among the files:
    // answered as failed without being read whole or sent on.
    let mut oversized: Vec<(usize, String)> = Vec::new();
    while let Some(mut field) = mp
        .next_field()
        .await
        .map_err(|e| multipart_error(&e, limit))?
    {
        if field.name() != Some("files") {
            continue;
        }
        let path = field.file_name().unwrap_or_default().to_string();
        match read_part(&mut field, max_image, limit).await? {
            Some(data) => images.push(pb::NewImage {
                file_name: file_name_of(&path),
                label: label_from_path(&path),
                path,
                data,
            }),
            None => oversized.push((images.len() + oversized.len(), path)),
        }
        if images.len() + oversized.len() > gw.cfg.limits.max_files_per_request {
            return Err(Error::TooLarge(format!(
                "more than {} files in one request: send them in smaller batches",
                gw.cfg.limits.max_files_per_request
            )));
        }
    }
    if images.is_empty() && oversized.is_empty() {
        return Err(Error::InvalidArgument(
            "no files in the upload: send multipart parts named \"files\"".into(),
        ));
    }
    let mut r = if images.is_empty() {
        // Every file was over the limit: nothing to send on, but the
        // collection must still exist (or be created) as for any upload.
        gw.collection_name(&name)?;
        pb::AddImagesResponse::default()
    } else {
        gw.add_images(pb::AddImagesRequest {
            collection: name,
            images,
            create_collection: q.create,
            replace: q.replace,
        })
        .await?
    };
    for (at, path) in oversized {
        r.results.insert(
            at.min(r.results.len()),
            pb::AddImageResult {
                file_name: file_name_of(&path),
                path,
                error: too_large_image(max_image),
                ..Default::default()
            },
        );
        r.failed += 1;
    }
    Ok(Json(json!({
        "results": r.results.into_iter().map(|i| json!({
            "file_name": i.file_name,
            "path": i.path,
            "id": i.id,
            "created": i.created,
            "predicted_class": i.predicted_class,
            "predicted_name": i.predicted_name,
            "error": i.error,
        })).collect::<Vec<_>>(),
        "added": r.added,
        "failed": r.failed,
    })))
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
    headers: axum::http::HeaderMap,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response> {
    allow(&gw, &headers, None, Role::Index)?;
    let b: JobBody = parse_json(&headers, &body)?;
    let job = gw
        .start_index_job(pb::StartIndexJobRequest {
            collection: name,
            path: b.path,
            create_collection: b.create_collection,
        })
        .await?;
    Ok((StatusCode::ACCEPTED, Json(job_json(job))).into_response())
}

async fn list_jobs(
    State(gw): State<AppState>,
    headers: axum::http::HeaderMap,
) -> Result<Json<Value>> {
    allow(&gw, &headers, None, Role::Search)?;
    Ok(Json(
        json!({ "jobs": gw.index_jobs().await?.into_iter().map(job_json).collect::<Vec<_>>() }),
    ))
}

async fn get_job(
    State(gw): State<AppState>,
    headers: axum::http::HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>> {
    allow(&gw, &headers, None, Role::Search)?;
    Ok(Json(job_json(gw.index_job(&id).await?)))
}

#[derive(Deserialize, Default)]
struct KeyQuery {
    api_key: Option<String>,
}

async fn thumbnail(
    State(gw): State<AppState>,
    headers: axum::http::HeaderMap,
    Query(q): Query<KeyQuery>,
    Path((name, id)): Path<(String, u64)>,
) -> Result<Response> {
    allow(&gw, &headers, q.api_key.as_deref(), Role::Search)?;
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

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct SearchBody {
    #[serde(default)]
    collection: String,
    #[serde(default)]
    top_k: u32,
    #[serde(default)]
    mode: String,
    #[serde(default)]
    min_similarity: f32,
    image_id: Option<u64>,
    #[serde(default)]
    exclude_self: bool,
}

fn parse_num<T: std::str::FromStr>(field: &str, v: &str) -> Result<T> {
    v.trim()
        .parse()
        .map_err(|_| Error::InvalidArgument(format!("{field} must be a number, got {v:?}")))
}

/// `POST /api/search`: a multipart upload (part `image`), a raw image body
/// with the options in the query string, or JSON naming a stored image.
async fn search(
    State(gw): State<AppState>,
    Query(params): Query<std::collections::HashMap<String, String>>,
    request: Request,
) -> Result<Json<Value>> {
    allow(&gw, request.headers(), None, Role::Search)?;
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let limit = gw.cfg.limits.max_request_bytes;
    let mut req = pb::SearchRequest::default();
    let mut mode = String::new();
    let mut apply = |key: &str, value: &str, req: &mut pb::SearchRequest| -> Result<()> {
        match key {
            "collection" => req.collection = value.to_string(),
            "top_k" => req.top_k = parse_num("top_k", value)?,
            "mode" => mode = value.to_string(),
            "min_similarity" => req.min_similarity = parse_num("min_similarity", value)?,
            _ => {}
        }
        Ok(())
    };
    for (k, v) in &params {
        apply(k, v, &mut req)?;
    }
    if content_type.starts_with("multipart/form-data") {
        let mut mp = Multipart::from_request(request, &()).await.map_err(|e| {
            Error::InvalidArgument(format!("bad multipart upload: {}", e.body_text()))
        })?;
        while let Some(mut field) = mp
            .next_field()
            .await
            .map_err(|e| multipart_error(&e, limit))?
        {
            let name = field.name().unwrap_or_default().to_string();
            if name == "image" {
                let max = gw.cfg.limits.max_image_bytes;
                let data = read_part(&mut field, max, limit)
                    .await?
                    .ok_or_else(|| query_too_large(max))?;
                req.query = Some(pb::search_request::Query::Image(data));
            } else {
                let text = field.text().await.map_err(|e| multipart_error(&e, limit))?;
                apply(&name, &text, &mut req)?;
            }
        }
        if req.query.is_none() {
            return Err(Error::InvalidArgument(
                "no image in the upload: send the query as a multipart part named \"image\"".into(),
            ));
        }
    } else if content_type.starts_with("application/json") {
        let body = Bytes::from_request(request, &())
            .await
            .map_err(|e| multipart_error_plain(&e, limit))?;
        let b: SearchBody = parse_json_content(&body)?;
        let id = b.image_id.ok_or_else(|| {
            Error::InvalidArgument(
                "a JSON search names a stored image: {\"image_id\": N}; upload an image as multipart/form-data instead".into(),
            )
        })?;
        if !b.collection.is_empty() {
            req.collection = b.collection;
        }
        if b.top_k != 0 {
            req.top_k = b.top_k;
        }
        if !b.mode.is_empty() {
            mode = b.mode;
        }
        if b.min_similarity != 0.0 {
            req.min_similarity = b.min_similarity;
        }
        req.query = Some(pb::search_request::Query::Stored(pb::StoredImageQuery {
            collection: String::new(),
            id,
            exclude_self: b.exclude_self,
        }));
    } else if content_type.starts_with("image/") || content_type == "application/octet-stream" {
        let max = gw.cfg.limits.max_image_bytes;
        let body = axum::body::to_bytes(request.into_body(), max)
            .await
            .map_err(|e| {
                if crate::guard::timed_out(&e) {
                    Error::ClientTimeout(format!("the upload stopped: {e}"))
                } else if crate::guard::caused_by::<http_body_util::LengthLimitError>(&e) {
                    query_too_large(max)
                } else {
                    Error::InvalidArgument(format!("cannot read the request body: {e}"))
                }
            })?;
        req.query = Some(pb::search_request::Query::Image(body.to_vec()));
    } else {
        return Err(Error::UnsupportedMediaType(format!(
            "unsupported content type {content_type:?}: upload the image as multipart/form-data (part \"image\"), as a raw image/* body, or send JSON {{\"image_id\": N}}"
        )));
    }
    req.mode = parse_mode(&mode)? as i32;
    Ok(Json(search_json(gw.search(req).await?)))
}

/// A query image over `limits.max_image_bytes`, found while reading it.
fn query_too_large(max: usize) -> Error {
    Error::TooLarge(format!(
        "the query image has more than {max} bytes; the limit is {max} bytes (limits.max_image_bytes)"
    ))
}

fn multipart_error_plain(e: &axum::extract::rejection::BytesRejection, limit: usize) -> Error {
    let status = e.status();
    if crate::guard::timed_out(e) {
        return Error::ClientTimeout(format!("the upload stopped: {}", e.body_text()));
    }
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        Error::TooLarge(format!("the request is over the limit of {limit} bytes"))
    } else {
        Error::InvalidArgument(format!("cannot read the request body ({status})"))
    }
}
