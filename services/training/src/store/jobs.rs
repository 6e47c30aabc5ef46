//! Jobs and their performance curves.

use cbir_api::v1 as pb;
use sea_orm::{ConnectionTrait, QueryResult};

use super::{from_json, get, json, now_ms, JobRow, Store};
use crate::error::{Error, Result};

impl Store {
    #[tracing::instrument(name = "db.insert_job", skip_all)]
    pub async fn insert_job(&self, r: &JobRow) -> Result<()> {
        let j = &r.job;
        let model = j.model.clone().unwrap_or_default();
        self.write(
            "inserting a job",
                "INSERT INTO training_jobs (id, name, state, message, params, submitted_by, dataset, dataset_dir, created_at_ms, started_at_ms, finished_at_ms, class_names, train_images, validation_images, skipped, model_name, model_version, progress) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                vec![
                    j.id.clone().into(),
                    j.name.clone().into(),
                    j.state.into(),
                    j.message.clone().into(),
                    json(&params_json(j.params.as_ref())).into(),
                    j.submitted_by.clone().into(),
                    j.dataset.clone().into(),
                    r.dataset_dir.clone().into(),
                    j.created_at_ms.into(),
                    j.started_at_ms.into(),
                    j.finished_at_ms.into(),
                    json(&j.class_names).into(),
                    (j.train_images as i32).into(),
                    (j.validation_images as i32).into(),
                    json(&j.skipped).into(),
                    model.name.into(),
                    model.version.into(),
                    json(&progress_json(j.progress.as_ref())).into(),
                ],
        )
        .await?;
        Ok(())
    }

    /// Writes the job's mutable fields.
    #[tracing::instrument(name = "db.update_job", skip_all)]
    pub async fn update_job(&self, j: &pb::Job) -> Result<()> {
        let model = j.model.clone().unwrap_or_default();
        self.write(
            "updating a job",
                "UPDATE training_jobs SET state = ?, message = ?, started_at_ms = ?, finished_at_ms = ?, class_names = ?, train_images = ?, validation_images = ?, skipped = ?, model_name = ?, model_version = ?, progress = ? WHERE id = ?",
                vec![
                    j.state.into(),
                    j.message.clone().into(),
                    j.started_at_ms.into(),
                    j.finished_at_ms.into(),
                    json(&j.class_names).into(),
                    (j.train_images as i32).into(),
                    (j.validation_images as i32).into(),
                    json(&j.skipped).into(),
                    model.name.into(),
                    model.version.into(),
                    json(&progress_json(j.progress.as_ref())).into(),
                    j.id.clone().into(),
                ],
        )
        .await?;
        Ok(())
    }

    fn job_from_row(row: &QueryResult) -> Result<JobRow> {
        let model_name: String = get(row, "model_name")?;
        let model_version: String = get(row, "model_version")?;
        let params: ParamsJson = from_json(&get::<String>(row, "params")?);
        let progress: ProgressJson = from_json(&get::<String>(row, "progress")?);
        Ok(JobRow {
            job: pb::Job {
                id: get(row, "id")?,
                name: get(row, "name")?,
                state: get(row, "state")?,
                message: get(row, "message")?,
                params: Some(params.0),
                submitted_by: get(row, "submitted_by")?,
                created_at_ms: get(row, "created_at_ms")?,
                started_at_ms: get(row, "started_at_ms")?,
                finished_at_ms: get(row, "finished_at_ms")?,
                class_names: from_json(&get::<String>(row, "class_names")?),
                train_images: get::<i32>(row, "train_images")? as u32,
                validation_images: get::<i32>(row, "validation_images")? as u32,
                skipped: from_json(&get::<String>(row, "skipped")?),
                model: (!model_name.is_empty()).then_some(pb::ModelRef {
                    name: model_name,
                    version: model_version,
                }),
                progress: Some(progress.0),
                dataset: get(row, "dataset")?,
            },
            dataset_dir: get(row, "dataset_dir")?,
        })
    }

    pub async fn job(&self, id: &str) -> Result<JobRow> {
        let row = self
            .db
            .query_one(self.stmt("SELECT * FROM training_jobs WHERE id = ?", vec![id.into()]))
            .await?
            .ok_or_else(|| Error::NotFound(format!("no training job {id:?}")))?;
        Self::job_from_row(&row)
    }

    /// Newest first.
    pub async fn jobs(&self) -> Result<Vec<JobRow>> {
        let rows = self
            .db
            .query_all(self.stmt(
                "SELECT * FROM training_jobs ORDER BY created_at_ms DESC LIMIT 500",
                vec![],
            ))
            .await?;
        rows.iter().map(Self::job_from_row).collect()
    }

    /// The oldest queued job.
    pub async fn next_queued(&self) -> Result<Option<JobRow>> {
        let row = self
            .db
            .query_one(self.stmt(
                "SELECT * FROM training_jobs WHERE state = ? ORDER BY created_at_ms LIMIT 1",
                vec![(pb::JobState::Queued as i32).into()],
            ))
            .await?;
        row.as_ref().map(Self::job_from_row).transpose()
    }

    /// Moves a job from `from` to `to` only if it is still in `from`: a
    /// cancel and the queue taking the job cannot both win.
    pub async fn transition(
        &self,
        id: &str,
        from: pb::JobState,
        to: pb::JobState,
        message: &str,
    ) -> Result<bool> {
        let now = now_ms();
        let (started, finished) = if to == pb::JobState::Running {
            (now, 0)
        } else {
            (0, now)
        };
        let n = self.write(
            "moving a job to its next state",
                "UPDATE training_jobs SET state = ?, message = ?, started_at_ms = CASE WHEN ? > 0 THEN ? ELSE started_at_ms END, finished_at_ms = ? WHERE id = ? AND state = ?",
                vec![
                    (to as i32).into(),
                    message.into(),
                    started.into(),
                    started.into(),
                    finished.into(),
                    id.into(),
                    (from as i32).into(),
                ],
        )
        .await?;
        Ok(n == 1)
    }

    /// Marks jobs left running by a process that is gone as failed; returns
    /// how many.
    pub async fn fail_orphans(&self, reason: &str) -> Result<u64> {
        let n = self.write(
            "failing orphaned jobs",
                "UPDATE training_jobs SET state = ?, message = ?, finished_at_ms = ? WHERE state = ?",
                vec![
                    (pb::JobState::Failed as i32).into(),
                    reason.into(),
                    now_ms().into(),
                    (pb::JobState::Running as i32).into(),
                ],
        )
        .await?;
        Ok(n)
    }

    pub async fn add_curve(&self, job_id: &str, points: &[pb::CurvePoint]) -> Result<()> {
        if points.is_empty() {
            return Ok(());
        }
        let mut sql = String::from(
            "INSERT INTO training_curve (job_id, iteration, epoch, elapsed_seconds, loss, train_accuracy, validation_accuracy) VALUES ",
        );
        let mut values = Vec::with_capacity(points.len() * 7);
        for (i, p) in points.iter().enumerate() {
            if i > 0 {
                sql.push_str(", ");
            }
            sql.push_str("(?, ?, ?, ?, ?, ?, ?)");
            values.push(job_id.into());
            values.push((p.iteration as i64).into());
            values.push((p.epoch as i32).into());
            values.push(p.elapsed_seconds.into());
            values.push(finite(p.loss).into());
            values.push(finite(p.train_accuracy).into());
            values.push(
                (!p.validation_accuracy.is_nan())
                    .then_some(f64::from(p.validation_accuracy))
                    .into(),
            );
        }
        self.write("adding curve points", &sql, values).await?;
        Ok(())
    }

    pub async fn curve(&self, job_id: &str) -> Result<Vec<pb::CurvePoint>> {
        let rows = self
            .db
            .query_all(self.stmt(
                "SELECT * FROM training_curve WHERE job_id = ? ORDER BY id",
                vec![job_id.into()],
            ))
            .await?;
        rows.iter()
            .map(|r| {
                Ok(pb::CurvePoint {
                    iteration: get::<i64>(r, "iteration")? as u64,
                    epoch: get::<i32>(r, "epoch")? as u32,
                    elapsed_seconds: get(r, "elapsed_seconds")?,
                    loss: get::<f64>(r, "loss")? as f32,
                    train_accuracy: get::<f64>(r, "train_accuracy")? as f32,
                    validation_accuracy: get::<Option<f64>>(r, "validation_accuracy")?
                        .map_or(f32::NAN, |v| v as f32),
                })
            })
            .collect()
    }
}

fn finite(v: f32) -> f64 {
    if v.is_finite() {
        f64::from(v)
    } else {
        0.0
    }
}

/// JSON forms of the proto messages kept in text columns (prost types have
/// no serde).
#[derive(serde::Serialize, serde::Deserialize, Default)]
struct ParamsJson(#[serde(with = "params_serde")] pb::TrainingParams);

fn params_json(p: Option<&pb::TrainingParams>) -> ParamsJson {
    ParamsJson(p.cloned().unwrap_or_default())
}

mod params_serde {
    use cbir_api::v1 as pb;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(p: &pb::TrainingParams, s: S) -> Result<S::Ok, S::Error> {
        crate::trainer::Params {
            epochs: p.epochs,
            batch_size: p.batch_size,
            learning_rate: f64::from(p.learning_rate),
            fine_tune_backbone: p.fine_tune_backbone,
            validation_fraction: f64::from(p.validation_fraction),
            seed: p.seed,
            min_images_per_class: p.min_images_per_class,
            early_stopping_patience: p.early_stopping_patience,
            tune_blocks: p.tune_blocks,
            augment_views: p.augment_views,
            head_epochs: p.head_epochs,
            embedding_dim: p.embedding_dim,
        }
        .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<pb::TrainingParams, D::Error> {
        Ok(crate::trainer::Params::deserialize(d)?.to_proto())
    }
}

#[derive(serde::Serialize, serde::Deserialize, Default)]
struct ProgressJson(#[serde(with = "progress_serde")] pb::JobProgress);

fn progress_json(p: Option<&pb::JobProgress>) -> ProgressJson {
    ProgressJson(p.cloned().unwrap_or_default())
}

mod progress_serde {
    use cbir_api::v1 as pb;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    type Tuple = (String, u32, u32, u64, u64, f32, f32, f32, f64, f64, f64);

    pub fn serialize<S: Serializer>(p: &pb::JobProgress, s: S) -> Result<S::Ok, S::Error> {
        let clean = |v: f32| if v.is_finite() { v } else { 0.0 };
        let t: Tuple = (
            p.phase.clone(),
            p.epoch,
            p.epochs,
            p.iteration,
            p.iterations,
            clean(p.loss),
            clean(p.train_accuracy),
            clean(p.validation_accuracy),
            p.images_per_second,
            p.eta_seconds,
            p.elapsed_seconds,
        );
        t.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<pb::JobProgress, D::Error> {
        let t = Tuple::deserialize(d)?;
        Ok(pb::JobProgress {
            phase: t.0,
            epoch: t.1,
            epochs: t.2,
            iteration: t.3,
            iterations: t.4,
            loss: t.5,
            train_accuracy: t.6,
            validation_accuracy: t.7,
            images_per_second: t.8,
            eta_seconds: t.9,
            elapsed_seconds: t.10,
        })
    }
}
