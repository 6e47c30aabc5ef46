//! The durable side: collections, aliases, images and their blobs in SQLite
//! or MySQL/MariaDB through sea-orm. The database is the source of truth;
//! memory is rebuilt from it at start.

pub mod browse;
mod catalog;
mod duplicates;
mod images;
mod read;
mod transfer;

pub use duplicates::{DuplicateRun, RunStart, RUN_LEASE_MS};

use cbir_common::db::{WriteTx, Writer};
use cbir_index_migration::{Migrator, MigratorTrait};
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, DbBackend, DbErr, Statement, Value};

use crate::error::{Error, Result};

pub use browse::{ImageFilter, ListPage, ListQuery, ListedImage, Sort, MAX_PAGE_SIZE};
pub use transfer::{ExportedImage, Snapshot};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CollectionRow {
    pub id: i64,
    /// Physical name.
    pub name: String,
    pub model_name: String,
    pub model_version: String,
    pub dims: u32,
    pub description: String,
    pub created_at_ms: i64,
}

/// An image as written by an upsert.
#[derive(Debug, Clone)]
pub struct NewImage {
    pub content_hash: String,
    pub predicted_class: i32,
    pub file_name: String,
    pub path: String,
    pub label: String,
    pub feature: Vec<f32>,
    pub thumbnail: Vec<u8>,
    pub source: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Upserted {
    pub id: u64,
    pub created: bool,
    /// The class the entry had before, when it existed.
    pub previous_class: Option<i32>,
    /// When the entry was first stored (kept by a replace).
    pub created_at_ms: i64,
}

/// An image as loaded into memory.
#[derive(Debug, Clone)]
pub struct LoadedImage {
    pub id: u64,
    pub predicted_class: i32,
    pub content_hash: String,
    pub file_name: String,
    pub path: String,
    pub label: String,
    pub feature: Vec<f32>,
    pub created_at_ms: i64,
}

#[derive(Debug, Clone)]
pub struct StoredImage {
    pub image: LoadedImage,
    pub created_at_ms: i64,
    pub thumbnail: Option<Vec<u8>>,
    pub source: Option<Vec<u8>>,
    /// The entry keeps a source image (known without reading it).
    pub has_source: bool,
}

pub fn encode_feature(v: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len() * 4);
    for x in v {
        out.extend_from_slice(&x.to_le_bytes());
    }
    out
}

pub fn decode_feature(b: &[u8]) -> Result<Vec<f32>> {
    if !b.len().is_multiple_of(4) {
        return Err(Error::Corrupt(format!(
            "feature blob of {} bytes is not a whole number of f32",
            b.len()
        )));
    }
    Ok(b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

pub use cbir_common::time::now_ms;

/// Rows per multi-row statement, and bytes of blobs per statement (under
/// MySQL's default 16 MiB packet limit with room to spare).
const ROWS_PER_STATEMENT: usize = 200;
const BLOB_BYTES_PER_STATEMENT: usize = 4 << 20;

#[derive(Clone)]
pub struct Store {
    db: DatabaseConnection,
    backend: DbBackend,
    writer: Writer,
}

pub(crate) fn db_err(context: &str) -> impl Fn(DbErr) -> Error + '_ {
    move |e| {
        if cbir_common::db::unreachable(&e) {
            Error::Unavailable(format!(
                "the database is unreachable ({context}: {e}); retry when it is back"
            ))
        } else if cbir_common::db::busy(&e) {
            Error::Busy(format!(
                "the database is busy with other writes ({context}: {e}); retry in a moment"
            ))
        } else {
            Error::Database(format!("{context}: {e}"))
        }
    }
}

/// On SQLite, the first statement of every write transaction: it changes
/// nothing but takes the write lock before any read (see cbir_common::db).
const CLAIM: &str = "UPDATE collections SET write_seq = write_seq WHERE 0";

/// Runs a whole write transaction again while the database answers busy.
pub(crate) async fn retried<T, F, Fut>(what: &str, attempt: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    cbir_common::db::retry(what, |e: &Error| matches!(e, Error::Busy(_)), attempt).await
}

impl Store {
    /// Connects and migrates. `sqlite://PATH` (created, WAL) or
    /// `mysql://user:pass@host/db`.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self> {
        let url = cbir_common::config::database_url(url).map_err(Error::Config)?;
        // 16 KiB pages (taking effect on a new file only) keep a 1280-d
        // feature (5 KiB) inside its row instead of overflow pages, which
        // makes loading at start several times faster.
        let opts =
            cbir_common::db::connect_options(url, max_connections, &[("page_size", "16384")]);
        // Another replica creating the same new file may hold it while it
        // switches the file to WAL.
        let opts = &opts;
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
            Migrator::up(conn, None)
                .await
                .map_err(db_err("migrating the schema"))
        })
        .await?;
        Ok(Self {
            db,
            backend,
            writer: Writer::new(backend, CLAIM),
        })
    }

    /// A write transaction: on SQLite, this process's turn and the write lock.
    pub(crate) async fn begin(&self) -> Result<WriteTx> {
        self.writer.begin(&self.db).await.map_err(db_err("begin"))
    }

    pub fn backend(&self) -> DbBackend {
        self.backend
    }

    pub fn connection(&self) -> &DatabaseConnection {
        &self.db
    }

    pub(crate) fn stmt(&self, sql: &str, values: Vec<Value>) -> Statement {
        Statement::from_sql_and_values(self.backend, sql, values)
    }
}
