//! The model registry: metadata rows, weights in chunks, the one active
//! model.

use cbir_api::v1 as pb;
use sea_orm::{ConnectionTrait, QueryResult};
use sha2::Digest;

use super::{from_json, get, json, retried, NewModel, Store, CHUNK_BYTES};
use crate::error::{Error, Result};

impl Store {
    /// Registers a model and its weights in one transaction.
    #[tracing::instrument(name = "db.register_model", skip_all)]
    pub async fn register_model(&self, m: &NewModel) -> Result<pb::RegisteredModel> {
        retried("registering a model", || self.register_model_once(m)).await?;
        self.model(&m.meta.model.clone().unwrap_or_default()).await
    }

    async fn register_model_once(&self, m: &NewModel) -> Result<()> {
        let meta = &m.meta;
        let r = meta.model.clone().unwrap_or_default();
        let base = meta.base_model.clone().unwrap_or_default();
        let sha = hex::encode(sha2::Sha256::digest(&m.weights));
        let tx = self.begin().await?;
        tx.execute(self.stmt(
            "INSERT INTO models (name, version, trained_by, created_at_ms, duration_seconds, iterations, epochs, validation_accuracy, per_class, class_names, base_name, base_version, job_id, weights_bytes, weights_sha256, active) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            vec![
                r.name.clone().into(),
                r.version.clone().into(),
                meta.trained_by.clone().into(),
                meta.created_at_ms.into(),
                meta.duration_seconds.into(),
                (meta.iterations as i64).into(),
                (meta.epochs as i32).into(),
                f64::from(meta.validation_accuracy).into(),
                json(&per_class_json(&meta.per_class)).into(),
                json(&meta.class_names).into(),
                base.name.into(),
                base.version.into(),
                meta.job_id.clone().into(),
                (m.weights.len() as i64).into(),
                sha.into(),
                i32::from(meta.active).into(),
            ],
        ))
        .await
        .map_err(|e| {
            if cbir_common::db::unique_violation(&e) {
                Error::FailedPrecondition(format!("model {}:{} exists already", r.name, r.version))
            } else {
                Error::from(e)
            }
        })?;
        let id: i64 = get(
            &tx.query_one(self.stmt(
                "SELECT id FROM models WHERE name = ? AND version = ?",
                vec![r.name.clone().into(), r.version.clone().into()],
            ))
            .await?
            .ok_or_else(|| Error::Database("the new model row vanished".into()))?,
            "id",
        )?;
        for (seq, chunk) in m.weights.chunks(CHUNK_BYTES).enumerate() {
            tx.execute(self.stmt(
                "INSERT INTO model_chunks (model_id, seq, data) VALUES (?, ?, ?)",
                vec![id.into(), (seq as i32).into(), chunk.to_vec().into()],
            ))
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    fn model_from_row(row: &QueryResult) -> Result<pb::RegisteredModel> {
        let base_name: String = get(row, "base_name")?;
        Ok(pb::RegisteredModel {
            model: Some(pb::ModelRef {
                name: get(row, "name")?,
                version: get(row, "version")?,
            }),
            trained_by: get(row, "trained_by")?,
            created_at_ms: get(row, "created_at_ms")?,
            duration_seconds: get(row, "duration_seconds")?,
            iterations: get::<i64>(row, "iterations")? as u64,
            epochs: get::<i32>(row, "epochs")? as u32,
            validation_accuracy: get::<f64>(row, "validation_accuracy")? as f32,
            per_class: from_json::<Vec<ClassAccJson>>(&get::<String>(row, "per_class")?)
                .into_iter()
                .map(|c| pb::ClassAccuracy {
                    class_name: c.0,
                    accuracy: c.1,
                    images: c.2,
                })
                .collect(),
            class_names: from_json(&get::<String>(row, "class_names")?),
            base_model: (!base_name.is_empty()).then(|| pb::ModelRef {
                name: base_name,
                version: get(row, "base_version").unwrap_or_default(),
            }),
            active: get::<i32>(row, "active")? != 0,
            job_id: get(row, "job_id")?,
            weights_bytes: get::<i64>(row, "weights_bytes")? as u64,
            weights_sha256: get(row, "weights_sha256")?,
        })
    }

    pub async fn model(&self, r: &pb::ModelRef) -> Result<pb::RegisteredModel> {
        let row = self.model_row(&self.db, "*", r).await?;
        Self::model_from_row(&row)
    }

    /// The `columns` of model `r`'s row, read through `conn` (a transaction
    /// or the pool); NotFound when the registry lacks it.
    async fn model_row(
        &self,
        conn: &impl ConnectionTrait,
        columns: &str,
        r: &pb::ModelRef,
    ) -> Result<QueryResult> {
        conn.query_one(self.stmt(
            &format!("SELECT {columns} FROM models WHERE name = ? AND version = ?"),
            vec![r.name.clone().into(), r.version.clone().into()],
        ))
        .await?
        .ok_or_else(|| not_found(r))
    }

    /// Newest first.
    pub async fn models(&self) -> Result<Vec<pb::RegisteredModel>> {
        let rows = self
            .db
            .query_all(self.stmt("SELECT * FROM models ORDER BY id DESC", vec![]))
            .await?;
        rows.iter().map(Self::model_from_row).collect()
    }

    pub async fn active_model(&self) -> Result<Option<pb::RegisteredModel>> {
        let row = self
            .db
            .query_one(self.stmt("SELECT * FROM models WHERE active = 1 LIMIT 1", vec![]))
            .await?;
        row.as_ref().map(Self::model_from_row).transpose()
    }

    /// The next free version of `name`: "1", "2", ...
    pub async fn next_version(&self, name: &str) -> Result<String> {
        let rows = self
            .db
            .query_all(self.stmt(
                "SELECT version FROM models WHERE name = ?",
                vec![name.into()],
            ))
            .await?;
        let max = rows
            .iter()
            .filter_map(|r| get::<String>(r, "version").ok())
            .filter_map(|v| v.parse::<u64>().ok())
            .max()
            .unwrap_or(0);
        Ok((max + 1).to_string())
    }

    /// The weights, checked against their stored hash.
    pub async fn weights(&self, r: &pb::ModelRef) -> Result<Vec<u8>> {
        let row = self
            .model_row(&self.db, "id, weights_bytes, weights_sha256", r)
            .await?;
        let id: i64 = get(&row, "id")?;
        let sha: String = get(&row, "weights_sha256")?;
        let rows = self
            .db
            .query_all(self.stmt(
                "SELECT data FROM model_chunks WHERE model_id = ? ORDER BY seq",
                vec![id.into()],
            ))
            .await?;
        let mut out = Vec::with_capacity(get::<i64>(&row, "weights_bytes")?.max(0) as usize);
        for r in &rows {
            out.extend_from_slice(&get::<Vec<u8>>(r, "data")?);
        }
        if hex::encode(sha2::Sha256::digest(&out)) != sha {
            return Err(Error::Database(format!(
                "the stored weights of {}:{} do not match their hash: register the model again",
                r.name, r.version
            )));
        }
        Ok(out)
    }

    /// Makes `r` the only active model.
    pub async fn set_active(&self, r: &pb::ModelRef) -> Result<()> {
        retried("activating a model", || self.set_active_once(r)).await
    }

    async fn set_active_once(&self, r: &pb::ModelRef) -> Result<()> {
        let tx = self.begin().await?;
        tx.execute(self.stmt("UPDATE models SET active = 0 WHERE active <> 0", vec![]))
            .await?;
        let n = tx
            .execute(self.stmt(
                "UPDATE models SET active = 1 WHERE name = ? AND version = ?",
                vec![r.name.clone().into(), r.version.clone().into()],
            ))
            .await?
            .rows_affected();
        if n != 1 {
            return Err(not_found(r));
        }
        tx.commit().await?;
        Ok(())
    }

    /// Deletes a model that is not active (checked in the same transaction).
    pub async fn delete_model(&self, r: &pb::ModelRef) -> Result<()> {
        retried("deleting a model", || self.delete_model_once(r)).await
    }

    async fn delete_model_once(&self, r: &pb::ModelRef) -> Result<()> {
        let tx = self.begin().await?;
        let row = self.model_row(&*tx, "id, active", r).await?;
        if get::<i32>(&row, "active")? != 0 {
            return Err(Error::FailedPrecondition(format!(
                "model {}:{} is the active model and cannot be deleted: activate another model first",
                r.name, r.version
            )));
        }
        let id: i64 = get(&row, "id")?;
        tx.execute(self.stmt(
            "DELETE FROM model_chunks WHERE model_id = ?",
            vec![id.into()],
        ))
        .await?;
        tx.execute(self.stmt("DELETE FROM models WHERE id = ?", vec![id.into()]))
            .await?;
        tx.commit().await?;
        Ok(())
    }
}

fn not_found(r: &pb::ModelRef) -> Error {
    Error::NotFound(format!("no model {}:{} in the registry", r.name, r.version))
}

type ClassAccJson = (String, f32, u32);

fn per_class_json(v: &[pb::ClassAccuracy]) -> Vec<ClassAccJson> {
    v.iter()
        .map(|c| (c.class_name.clone(), c.accuracy, c.images))
        .collect()
}
