//! Jobs, their curves and the model registry in SQLite or MySQL through
//! sea-orm. Weights are stored in chunks so that any pod with the database
//! can serve them, and no row comes near MySQL's packet limit.

use cbir_api::v1 as pb;
use cbir_common::db::{WriteTx, Writer};
use sea_orm::{
    ConnectionTrait, Database, DatabaseConnection, DbBackend, QueryResult, Statement, Value,
};
use sea_orm_migration::prelude::*;
use sha2::Digest;

use crate::error::{Error, Result};

/// Bytes per weights chunk.
pub const CHUNK_BYTES: usize = 1 << 20;

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![Box::new(Initial)]
    }

    // The index keeps its own migrations in the same database; sharing
    // `seaql_migrations` would make each refuse the other's entries.
    fn migration_table_name() -> DynIden {
        Alias::new("training_migrations").into_iden()
    }
}

struct Initial;

impl MigrationName for Initial {
    fn name(&self) -> &str {
        "m20261128_000001_training"
    }
}

const MYSQL: &[&str] = &[
    "CREATE TABLE training_jobs (
        id VARCHAR(64) NOT NULL PRIMARY KEY,
        name VARCHAR(255) NOT NULL,
        state INT NOT NULL,
        message TEXT NOT NULL,
        params TEXT NOT NULL,
        submitted_by VARCHAR(255) NOT NULL,
        dataset TEXT NOT NULL,
        dataset_dir TEXT NOT NULL,
        created_at_ms BIGINT NOT NULL,
        started_at_ms BIGINT NOT NULL,
        finished_at_ms BIGINT NOT NULL,
        class_names LONGTEXT NOT NULL,
        train_images INT NOT NULL,
        validation_images INT NOT NULL,
        skipped LONGTEXT NOT NULL,
        model_name VARCHAR(255) NOT NULL,
        model_version VARCHAR(255) NOT NULL,
        progress TEXT NOT NULL,
        KEY idx_jobs_state (state, created_at_ms)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
    "CREATE TABLE training_curve (
        id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
        job_id VARCHAR(64) NOT NULL,
        iteration BIGINT NOT NULL,
        epoch INT NOT NULL,
        elapsed_seconds DOUBLE NOT NULL,
        loss DOUBLE NOT NULL,
        train_accuracy DOUBLE NOT NULL,
        validation_accuracy DOUBLE NULL,
        KEY idx_curve_job (job_id, id)
    ) ENGINE=InnoDB",
    "CREATE TABLE models (
        id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
        name VARCHAR(255) NOT NULL,
        version VARCHAR(255) NOT NULL,
        trained_by VARCHAR(255) NOT NULL,
        created_at_ms BIGINT NOT NULL,
        duration_seconds DOUBLE NOT NULL,
        iterations BIGINT NOT NULL,
        epochs INT NOT NULL,
        validation_accuracy DOUBLE NOT NULL,
        per_class LONGTEXT NOT NULL,
        class_names LONGTEXT NOT NULL,
        base_name VARCHAR(255) NOT NULL,
        base_version VARCHAR(255) NOT NULL,
        job_id VARCHAR(64) NOT NULL,
        weights_bytes BIGINT NOT NULL,
        weights_sha256 CHAR(64) NOT NULL,
        active INT NOT NULL,
        UNIQUE KEY uq_models_ref (name, version)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
    "CREATE TABLE model_chunks (
        model_id BIGINT NOT NULL,
        seq INT NOT NULL,
        data LONGBLOB NOT NULL,
        PRIMARY KEY (model_id, seq)
    ) ENGINE=InnoDB",
];

const SQLITE: &[&str] = &[
    "CREATE TABLE training_jobs (
        id TEXT NOT NULL PRIMARY KEY,
        name TEXT NOT NULL,
        state INTEGER NOT NULL,
        message TEXT NOT NULL,
        params TEXT NOT NULL,
        submitted_by TEXT NOT NULL,
        dataset TEXT NOT NULL,
        dataset_dir TEXT NOT NULL,
        created_at_ms INTEGER NOT NULL,
        started_at_ms INTEGER NOT NULL,
        finished_at_ms INTEGER NOT NULL,
        class_names TEXT NOT NULL,
        train_images INTEGER NOT NULL,
        validation_images INTEGER NOT NULL,
        skipped TEXT NOT NULL,
        model_name TEXT NOT NULL,
        model_version TEXT NOT NULL,
        progress TEXT NOT NULL
    )",
    "CREATE INDEX idx_jobs_state ON training_jobs (state, created_at_ms)",
    "CREATE TABLE training_curve (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        job_id TEXT NOT NULL,
        iteration INTEGER NOT NULL,
        epoch INTEGER NOT NULL,
        elapsed_seconds REAL NOT NULL,
        loss REAL NOT NULL,
        train_accuracy REAL NOT NULL,
        validation_accuracy REAL NULL
    )",
    "CREATE INDEX idx_curve_job ON training_curve (job_id, id)",
    "CREATE TABLE models (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL,
        version TEXT NOT NULL,
        trained_by TEXT NOT NULL,
        created_at_ms INTEGER NOT NULL,
        duration_seconds REAL NOT NULL,
        iterations INTEGER NOT NULL,
        epochs INTEGER NOT NULL,
        validation_accuracy REAL NOT NULL,
        per_class TEXT NOT NULL,
        class_names TEXT NOT NULL,
        base_name TEXT NOT NULL,
        base_version TEXT NOT NULL,
        job_id TEXT NOT NULL,
        weights_bytes INTEGER NOT NULL,
        weights_sha256 TEXT NOT NULL,
        active INTEGER NOT NULL,
        UNIQUE (name, version)
    )",
    "CREATE TABLE model_chunks (
        model_id INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        data BLOB NOT NULL,
        PRIMARY KEY (model_id, seq)
    )",
];

#[async_trait::async_trait]
impl MigrationTrait for Initial {
    async fn up(&self, manager: &SchemaManager) -> std::result::Result<(), DbErr> {
        let db = manager.get_connection();
        let sql = match db.get_database_backend() {
            DbBackend::MySql => MYSQL,
            _ => SQLITE,
        };
        for s in sql {
            db.execute_unprepared(s).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> std::result::Result<(), DbErr> {
        let db = manager.get_connection();
        for t in ["model_chunks", "models", "training_curve", "training_jobs"] {
            db.execute_unprepared(&format!("DROP TABLE {t}")).await?;
        }
        Ok(())
    }
}

/// A job as stored; `dataset_dir` is where its images are on this service.
#[derive(Debug, Clone)]
pub struct JobRow {
    pub job: pb::Job,
    pub dataset_dir: String,
}

/// What registering a model writes besides the weights.
#[derive(Debug, Clone)]
pub struct NewModel {
    pub meta: pb::RegisteredModel,
    pub weights: Vec<u8>,
}

pub struct Store {
    db: DatabaseConnection,
    backend: DbBackend,
    writer: Writer,
}

/// On SQLite, the first statement of every write transaction: it changes
/// nothing but takes the write lock before any read (see cbir_common::db).
const CLAIM: &str = "UPDATE training_jobs SET state = state WHERE 0";

/// Runs a whole write transaction again while the database answers busy.
async fn retried<T, F, Fut>(what: &str, attempt: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    cbir_common::db::retry(what, |e: &Error| matches!(e, Error::Busy(_)), attempt).await
}

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".into())
}

fn get<T: sea_orm::TryGetable>(row: &QueryResult, col: &str) -> Result<T> {
    row.try_get("", col)
        .map_err(|e| Error::Database(format!("reading column {col}: {e}")))
}

fn from_json<T: serde::de::DeserializeOwned + Default>(s: &str) -> T {
    serde_json::from_str(s).unwrap_or_default()
}

impl Store {
    pub async fn connect(url: &str) -> Result<Self> {
        let url = cbir_common::config::database_url(url).map_err(Error::Config)?;
        let opts = &cbir_common::db::connect_options(url, 4, &[]);
        // Another service creating the same new file may hold it while it
        // switches the file to WAL.
        let db = retried("connecting", || async move {
            Database::connect(opts.clone()).await.map_err(|e| {
                if cbir_common::db::busy(&e) {
                    Error::Busy(format!("the database file is busy: {e}"))
                } else {
                    Error::Unavailable(format!("cannot connect to the database: {e}"))
                }
            })
        })
        .await?;
        let backend = db.get_database_backend();
        let conn = &db;
        retried("migrating the schema", || async move {
            Migrator::up(conn, None).await.map_err(Error::from)
        })
        .await?;
        Ok(Self {
            db,
            backend,
            writer: Writer::new(backend, CLAIM),
        })
    }

    /// A write transaction: on SQLite, this process's turn and the write lock.
    async fn begin(&self) -> Result<WriteTx> {
        Ok(self.writer.begin(&self.db).await?)
    }

    /// Runs one write statement in its own write transaction, retried while
    /// the database is busy; returns the rows it changed.
    async fn write(&self, what: &str, sql: &str, values: Vec<Value>) -> Result<u64> {
        retried(what, || async {
            let tx = self.begin().await?;
            let n = tx
                .execute(self.stmt(sql, values.clone()))
                .await?
                .rows_affected();
            tx.commit().await?;
            Ok(n)
        })
        .await
    }

    fn stmt(&self, sql: &str, values: Vec<Value>) -> Statement {
        Statement::from_sql_and_values(self.backend, sql, values)
    }

    // ----- jobs ---------------------------------------------------------------

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

    // ----- models -------------------------------------------------------------

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
        let row = self
            .db
            .query_one(self.stmt(
                "SELECT * FROM models WHERE name = ? AND version = ?",
                vec![r.name.clone().into(), r.version.clone().into()],
            ))
            .await?
            .ok_or_else(|| {
                Error::NotFound(format!("no model {}:{} in the registry", r.name, r.version))
            })?;
        Self::model_from_row(&row)
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
            .db
            .query_one(self.stmt(
                "SELECT id, weights_bytes, weights_sha256 FROM models WHERE name = ? AND version = ?",
                vec![r.name.clone().into(), r.version.clone().into()],
            ))
            .await?
            .ok_or_else(|| {
                Error::NotFound(format!("no model {}:{} in the registry", r.name, r.version))
            })?;
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
            return Err(Error::NotFound(format!(
                "no model {}:{} in the registry",
                r.name, r.version
            )));
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
        let row = tx
            .query_one(self.stmt(
                "SELECT id, active FROM models WHERE name = ? AND version = ?",
                vec![r.name.clone().into(), r.version.clone().into()],
            ))
            .await?
            .ok_or_else(|| {
                Error::NotFound(format!("no model {}:{} in the registry", r.name, r.version))
            })?;
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

type ClassAccJson = (String, f32, u32);

fn per_class_json(v: &[pb::ClassAccuracy]) -> Vec<ClassAccJson> {
    v.iter()
        .map(|c| (c.class_name.clone(), c.accuracy, c.images))
        .collect()
}
