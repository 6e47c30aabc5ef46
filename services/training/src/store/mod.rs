//! Jobs, their curves and the model registry in SQLite or MySQL through
//! sea-orm. Weights are stored in chunks so that any pod with the database
//! can serve them, and no row comes near MySQL's packet limit.

mod jobs;
mod migration;
mod models;

use cbir_api::v1 as pb;
use cbir_common::db::{WriteTx, Writer};
use sea_orm::{
    ConnectionTrait, Database, DatabaseConnection, DbBackend, QueryResult, Statement, Value,
};
use sea_orm_migration::MigratorTrait;

use crate::error::{Error, Result};

/// Bytes per weights chunk.
pub const CHUNK_BYTES: usize = 1 << 20;

pub use cbir_common::time::now_ms;

pub use migration::Migrator;

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
}
