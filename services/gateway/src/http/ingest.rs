//! Uploads: `POST /api/collections/{name}/images`, multipart parts named
//! `files`, each image checked against the per-image limit as it streams.

use axum::extract::multipart::{Field, MultipartError};
use axum::extract::{FromRequest, Multipart, Path, Query, Request, State};
use axum::http::StatusCode;
use axum::Json;
use cbir_api::v1 as pb;
use serde::{Deserialize, Serialize};

use super::extract::Writer;
use super::{AppState, Route};
use crate::error::{Error, Result};
use crate::gateway::{file_name_of, label_from_path};

pub(super) fn routes() -> Vec<Route> {
    // One path, two resources: the listing lives with the images.
    vec![(
        "/api/collections/{name}/images",
        super::images::list_route().post(add_images),
    )]
}

pub(super) fn multipart_error(e: &MultipartError, limit: usize) -> Error {
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
pub(super) async fn read_part(
    field: &mut Field<'_>,
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

#[derive(Deserialize, Default)]
struct AddQuery {
    #[serde(default)]
    create: bool,
    /// Overwrite the stored path, file name and label of images the
    /// collection holds already.
    #[serde(default)]
    replace: bool,
}

/// The files of an upload; parts over the per-image limit, with their
/// place among the files, are answered as failed without being read whole
/// or sent on.
struct Upload {
    images: Vec<pb::NewImage>,
    oversized: Vec<(usize, String)>,
}

async fn read_upload(request: Request, limits: &crate::Limits) -> Result<Upload> {
    let limit = limits.max_request_bytes;
    let mut mp = Multipart::from_request(request, &()).await.map_err(|e| {
        Error::UnsupportedMediaType(format!(
            "send the images as multipart/form-data parts named \"files\" ({})",
            e.body_text()
        ))
    })?;
    let mut up = Upload {
        images: Vec::new(),
        oversized: Vec::new(),
    };
    while let Some(mut field) = mp
        .next_field()
        .await
        .map_err(|e| multipart_error(&e, limit))?
    {
        if field.name() != Some("files") {
            continue;
        }
        let path = field.file_name().unwrap_or_default().to_string();
        match read_part(&mut field, limits.max_image_bytes, limit).await? {
            Some(data) => up.images.push(pb::NewImage {
                file_name: file_name_of(&path),
                label: label_from_path(&path),
                path,
                data,
            }),
            None => up
                .oversized
                .push((up.images.len() + up.oversized.len(), path)),
        }
        if up.images.len() + up.oversized.len() > limits.max_files_per_request {
            return Err(Error::TooLarge(format!(
                "more than {} files in one request: send them in smaller batches",
                limits.max_files_per_request
            )));
        }
    }
    if up.images.is_empty() && up.oversized.is_empty() {
        return Err(Error::InvalidArgument(
            "no files in the upload: send multipart parts named \"files\"".into(),
        ));
    }
    Ok(up)
}

#[derive(Serialize)]
struct Added {
    results: Vec<AddedImage>,
    added: u64,
    failed: u64,
}

#[derive(Serialize)]
struct AddedImage {
    file_name: String,
    path: String,
    id: u64,
    created: bool,
    predicted_class: i32,
    predicted_name: String,
    error: String,
}

async fn add_images(
    State(gw): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<AddQuery>,
    _: Writer,
    request: Request,
) -> Result<Json<Added>> {
    let Upload { images, oversized } = read_upload(request, &gw.cfg.limits).await?;
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
                error: too_large_image(gw.cfg.limits.max_image_bytes),
                ..Default::default()
            },
        );
        r.failed += 1;
    }
    Ok(Json(Added {
        results: r
            .results
            .into_iter()
            .map(|i| AddedImage {
                file_name: i.file_name,
                path: i.path,
                id: i.id,
                created: i.created,
                predicted_class: i.predicted_class,
                predicted_name: i.predicted_name,
                error: i.error,
            })
            .collect(),
        added: r.added,
        failed: r.failed,
    }))
}
