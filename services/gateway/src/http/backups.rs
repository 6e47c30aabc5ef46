//! Backups: a collection's export file (download), importing one (upload),
//! and the copy of the index's SQLite database. Bodies stream both ways;
//! nothing holds a whole file.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Json;
use futures::StreamExt;
use serde::Serialize;

use super::collections::CollectionJson;
use super::extract::{Admin, LinkAdmin};
use super::{AppState, Route};
use crate::error::{Error, Result, Upstream};

pub(super) fn routes() -> Vec<Route> {
    vec![
        ("/api/collections/{name}/export", get(export_collection)),
        ("/api/collections/{name}/import", post(import_collection)),
        ("/api/backup", get(backup_database)),
    ]
}

/// An octet-stream download saved as `file_name`.
fn download(file_name: &str, body: Body) -> Response {
    let disposition = HeaderValue::from_str(&format!("attachment; filename=\"{file_name}\""))
        .unwrap_or_else(|_| HeaderValue::from_static("attachment"));
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            ),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        body,
    )
        .into_response()
}

async fn export_collection(
    State(gw): State<AppState>,
    Path(name): Path<String>,
    _: LinkAdmin,
) -> Result<Response> {
    let bytes = gw.export_file(&name).await?;
    // Collection names are path segments: no quotes or slashes to escape.
    Ok(download(&format!("{name}.cbir"), Body::from_stream(bytes)))
}

#[derive(Serialize)]
struct Imported {
    collection: CollectionJson,
    imported: u64,
}

async fn import_collection(
    State(gw): State<AppState>,
    Path(name): Path<String>,
    _: Admin,
    body: Body,
) -> Result<Json<Imported>> {
    let name = gw.collection_name(&name)?;
    let chunks = gw.import_body(name, body);
    let r = gw.import_collection(chunks).await?;
    Ok(Json(Imported {
        collection: r.collection.unwrap_or_default().into(),
        imported: r.imported,
    }))
}

async fn backup_database(State(gw): State<AppState>, _: LinkAdmin) -> Result<Response> {
    let chunks = gw.backup_database().await?;
    let bytes = chunks.map(|c| {
        c.map(|c| c.data)
            .map_err(|s| Error::upstream(Upstream::Index, s))
    });
    Ok(download("index-backup.db", Body::from_stream(bytes)))
}
