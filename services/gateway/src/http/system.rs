//! The OpenAPI document, health, configuration and the
//! served model.

use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Json;
use serde::Serialize;

use super::openapi::OPENAPI_JSON;
use super::{AppState, Route};
use crate::error::{Error, Result};

pub(super) fn routes() -> Vec<Route> {
    vec![
        (
            "/api/openapi.json",
            get(|| async { asset("application/json", OPENAPI_JSON) }),
        ),
        ("/api/health", get(health)),
        ("/api/config", get(config)),
        ("/api/model", get(model)),
    ]
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

#[derive(Serialize)]
struct Health {
    status: &'static str,
    services: Services,
}

#[derive(Serialize)]
struct Services {
    inference: ServiceHealth,
    index: ServiceHealth,
}

#[derive(Serialize)]
struct ServiceHealth {
    ok: bool,
    detail: String,
}

impl From<std::result::Result<String, Error>> for ServiceHealth {
    fn from(r: std::result::Result<String, Error>) -> Self {
        match r {
            Ok(detail) => Self { ok: true, detail },
            Err(e) => Self {
                ok: false,
                detail: e.to_string(),
            },
        }
    }
}

async fn health(State(gw): State<AppState>) -> Json<Health> {
    let t = Duration::from_millis(1500);
    let (inf, idx) = tokio::join!(gw.model_info(t), gw.ping_index(t));
    let ok = inf.is_ok() && idx.is_ok();
    let inf = inf.map(|m| {
        m.info
            .and_then(|i| i.model)
            .map_or_else(String::new, |m| format!("serving {}:{}", m.name, m.version))
    });
    Json(Health {
        status: if ok { "ok" } else { "degraded" },
        services: Services {
            inference: inf.into(),
            index: idx.into(),
        },
    })
}

/// What the UI needs to know of the gateway's settings.
#[derive(Serialize)]
struct PublicConfig {
    max_image_bytes: usize,
    max_files_per_request: usize,
    max_request_bytes: usize,
    max_top_k: usize,
    default_top_k: u32,
    default_collection: String,
    allowed_roots: Vec<String>,
}

async fn config(State(gw): State<AppState>) -> Json<PublicConfig> {
    let c = &gw.cfg;
    Json(PublicConfig {
        max_image_bytes: c.limits.max_image_bytes,
        max_files_per_request: c.limits.max_files_per_request,
        max_request_bytes: c.limits.max_request_bytes,
        max_top_k: c.limits.max_top_k,
        default_top_k: 20,
        default_collection: c.default_collection.clone(),
        allowed_roots: c
            .allowed_roots
            .iter()
            .map(|p| p.display().to_string())
            .collect(),
    })
}

#[derive(Serialize)]
struct ServedModel {
    name: String,
    version: String,
    architecture: String,
    embedding_dim: u32,
    num_classes: u32,
    device: String,
}

async fn model(State(gw): State<AppState>) -> Result<Json<ServedModel>> {
    let r = gw.model_info(gw.admin_timeout()).await?;
    let i = r.info.unwrap_or_default();
    let m = i.model.unwrap_or_default();
    Ok(Json(ServedModel {
        name: m.name,
        version: m.version,
        architecture: i.architecture,
        embedding_dim: i.embedding_dim,
        num_classes: i.num_classes,
        device: i.device,
    }))
}
