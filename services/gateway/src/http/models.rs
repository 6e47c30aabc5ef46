//! The model registry: trained models, deleting them, and activating one
//! (which starts a rebuild of every collection for it).

use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::Json;
use cbir_api::v1 as pb;
use serde::Serialize;

use super::extract::{Admin, LinkReader};
use super::{AppState, ModelJson, Route};
use crate::error::Result;

pub(super) fn routes() -> Vec<Route> {
    vec![
        ("/api/models", get(list_models)),
        (
            "/api/models/{name}/{version}",
            get(get_model).delete(delete_model),
        ),
        (
            "/api/models/{name}/{version}/activate",
            post(activate_model),
        ),
    ]
}

#[derive(Serialize)]
struct ClassAccuracyJson {
    class_name: String,
    accuracy: f64,
    images: u32,
}

#[derive(Serialize)]
struct RegisteredJson {
    name: String,
    version: String,
    trained_by: String,
    created_at_ms: i64,
    duration_seconds: f64,
    iterations: u64,
    epochs: u32,
    validation_accuracy: f64,
    per_class: Vec<ClassAccuracyJson>,
    class_names: Vec<String>,
    /// `name:version`, empty for the pretrained model.
    base_model: String,
    active: bool,
    job_id: String,
    weights_bytes: u64,
}

impl From<pb::RegisteredModel> for RegisteredJson {
    fn from(m: pb::RegisteredModel) -> Self {
        let r = m.model.unwrap_or_default();
        Self {
            name: r.name,
            version: r.version,
            trained_by: m.trained_by,
            created_at_ms: m.created_at_ms,
            duration_seconds: m.duration_seconds,
            iterations: m.iterations,
            epochs: m.epochs,
            validation_accuracy: f64::from(m.validation_accuracy),
            per_class: m
                .per_class
                .into_iter()
                .map(|c| ClassAccuracyJson {
                    class_name: c.class_name,
                    accuracy: f64::from(c.accuracy),
                    images: c.images,
                })
                .collect(),
            class_names: m.class_names,
            base_model: m
                .base_model
                .map_or_else(String::new, |b| format!("{}:{}", b.name, b.version)),
            active: m.active,
            job_id: m.job_id,
            weights_bytes: m.weights_bytes,
        }
    }
}

#[derive(Serialize)]
struct ModelList {
    models: Vec<RegisteredJson>,
}

async fn list_models(State(gw): State<AppState>, _: LinkReader) -> Result<Json<ModelList>> {
    let models = gw.models().await?;
    Ok(Json(ModelList {
        models: models.into_iter().map(Into::into).collect(),
    }))
}

async fn get_model(
    State(gw): State<AppState>,
    Path((name, version)): Path<(String, String)>,
    _: LinkReader,
) -> Result<Json<RegisteredJson>> {
    Ok(Json(gw.model(name, version).await?.into()))
}

#[derive(Serialize)]
struct ModelDeleted {
    deleted: ModelJson,
}

async fn delete_model(
    State(gw): State<AppState>,
    Path((name, version)): Path<(String, String)>,
    _: Admin,
) -> Result<Json<ModelDeleted>> {
    gw.delete_model(name.clone(), version.clone()).await?;
    Ok(Json(ModelDeleted {
        deleted: pb::ModelRef { name, version }.into(),
    }))
}

#[derive(Serialize)]
struct Activated {
    model: RegisteredJson,
    rebuild_operation_ids: Vec<String>,
}

async fn activate_model(
    State(gw): State<AppState>,
    Path((name, version)): Path<(String, String)>,
    _: Admin,
) -> Result<Json<Activated>> {
    let r = gw.activate_model(name, version).await?;
    Ok(Json(Activated {
        model: r.model.unwrap_or_default().into(),
        rebuild_operation_ids: r.rebuild_operation_ids,
    }))
}
