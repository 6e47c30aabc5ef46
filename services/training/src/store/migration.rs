//! The schema of the training tables, for SQLite and MySQL.

use sea_orm::DbBackend;
use sea_orm_migration::prelude::*;

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
