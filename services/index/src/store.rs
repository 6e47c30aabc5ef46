//! The durable side: collections, aliases, images and their blobs in SQLite
//! or MySQL/MariaDB through sea-orm. The database is the source of truth;
//! memory is rebuilt from it at start.

use std::collections::HashMap;

use cbir_common::db::{WriteTx, Writer};
use cbir_index_migration::{Migrator, MigratorTrait};
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, DbBackend, DbErr, Statement, Value};

use crate::error::{Error, Result};

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
}

#[derive(Debug, Clone)]
pub struct StoredImage {
    pub image: LoadedImage,
    pub created_at_ms: i64,
    pub thumbnail: Option<Vec<u8>>,
    pub source: Option<Vec<u8>>,
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

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

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

    #[tracing::instrument(name = "db.create_collection", skip_all)]
    pub async fn create_collection(
        &self,
        alias: &str,
        physical: &str,
        model_name: &str,
        model_version: &str,
        dims: u32,
        description: &str,
    ) -> Result<CollectionRow> {
        retried("creating a collection", || {
            self.create_collection_once(
                alias,
                physical,
                model_name,
                model_version,
                dims,
                description,
            )
        })
        .await
    }

    async fn create_collection_once(
        &self,
        alias: &str,
        physical: &str,
        model_name: &str,
        model_version: &str,
        dims: u32,
        description: &str,
    ) -> Result<CollectionRow> {
        let tx = self.begin().await?;
        let now = now_ms();
        tx.execute(self.stmt(
            "INSERT INTO collections (name, model_name, model_version, dims, description, created_at_ms) VALUES (?, ?, ?, ?, ?, ?)",
            vec![
                physical.into(),
                model_name.into(),
                model_version.into(),
                (dims as i32).into(),
                description.into(),
                now.into(),
            ],
        ))
        .await
        .map_err(|e| conflict_or(e, format!("collection {physical} exists already")))?;
        let row = tx
            .query_one(self.stmt(
                "SELECT id FROM collections WHERE name = ?",
                vec![physical.into()],
            ))
            .await
            .map_err(db_err("reading the new collection"))?
            .ok_or_else(|| Error::Database("the new collection vanished".into()))?;
        let id: i64 = row.try_get("", "id").map_err(db_err("collection id"))?;
        if !alias.is_empty() {
            tx.execute(self.stmt(
                "INSERT INTO aliases (alias, collection_id, updated_at_ms) VALUES (?, ?, ?)",
                vec![alias.into(), id.into(), now.into()],
            ))
            .await
            .map_err(|e| conflict_or(e, format!("collection {alias} exists already")))?;
        }
        tx.commit().await.map_err(db_err("commit"))?;
        Ok(CollectionRow {
            id,
            name: physical.into(),
            model_name: model_name.into(),
            model_version: model_version.into(),
            dims,
            description: description.into(),
            created_at_ms: now,
        })
    }

    fn collection_from_row(row: &sea_orm::QueryResult) -> Result<CollectionRow> {
        let g = |c: &str| Error::Database(format!("reading column {c}"));
        Ok(CollectionRow {
            id: row.try_get("", "id").map_err(|_| g("id"))?,
            name: row.try_get("", "name").map_err(|_| g("name"))?,
            model_name: row.try_get("", "model_name").map_err(|_| g("model_name"))?,
            model_version: row
                .try_get("", "model_version")
                .map_err(|_| g("model_version"))?,
            dims: row.try_get::<i32>("", "dims").map_err(|_| g("dims"))? as u32,
            description: row
                .try_get("", "description")
                .map_err(|_| g("description"))?,
            created_at_ms: row
                .try_get("", "created_at_ms")
                .map_err(|_| g("created_at_ms"))?,
        })
    }

    pub async fn collections(&self) -> Result<Vec<CollectionRow>> {
        let rows = self
            .db
            .query_all(self.stmt(
                "SELECT id, name, model_name, model_version, dims, description, created_at_ms FROM collections ORDER BY id",
                vec![],
            ))
            .await
            .map_err(db_err("listing collections"))?;
        rows.iter().map(Self::collection_from_row).collect()
    }

    /// Counts a committed write of the collection (inside its transaction),
    /// so that replicas on the same database see that it changed. Refuses
    /// the write when the collection is gone (deleted by another replica):
    /// its rows would be orphans that no name reaches.
    async fn bump_seq(&self, tx: &sea_orm::DatabaseTransaction, collection_id: i64) -> Result<()> {
        let n = tx
            .execute(self.stmt(
                "UPDATE collections SET write_seq = write_seq + 1 WHERE id = ?",
                vec![collection_id.into()],
            ))
            .await
            .map_err(db_err("counting the write"))?
            .rows_affected();
        if n == 0 {
            return Err(Error::NotFound(
                "the collection was deleted while writing to it".into(),
            ));
        }
        Ok(())
    }

    /// collection id -> writes committed so far.
    pub async fn write_seqs(&self) -> Result<HashMap<i64, i64>> {
        let rows = self
            .db
            .query_all(self.stmt("SELECT id, write_seq FROM collections", vec![]))
            .await
            .map_err(db_err("reading write counters"))?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get::<i64>("", "id").map_err(db_err("id"))?,
                    r.try_get::<i64>("", "write_seq")
                        .map_err(db_err("write_seq"))?,
                ))
            })
            .collect()
    }

    /// alias -> physical collection id.
    pub async fn aliases(&self) -> Result<HashMap<String, i64>> {
        let rows = self
            .db
            .query_all(self.stmt("SELECT alias, collection_id FROM aliases", vec![]))
            .await
            .map_err(db_err("listing aliases"))?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("", "alias").map_err(db_err("alias"))?,
                    r.try_get("", "collection_id")
                        .map_err(db_err("collection_id"))?,
                ))
            })
            .collect()
    }

    /// Points `alias` at `collection_id` in one transaction; returns the
    /// collection it pointed at before.
    #[tracing::instrument(name = "db.switch_alias", skip_all)]
    pub async fn switch_alias(&self, alias: &str, collection_id: i64) -> Result<Option<i64>> {
        retried("switching an alias", || {
            self.switch_alias_once(alias, collection_id)
        })
        .await
    }

    async fn switch_alias_once(&self, alias: &str, collection_id: i64) -> Result<Option<i64>> {
        let tx = self.begin().await?;
        let old = tx
            .query_one(self.stmt(
                "SELECT collection_id FROM aliases WHERE alias = ?",
                vec![alias.into()],
            ))
            .await
            .map_err(db_err("reading alias"))?
            .map(|r| r.try_get::<i64>("", "collection_id"))
            .transpose()
            .map_err(db_err("alias target"))?;
        if old.is_some() {
            tx.execute(self.stmt(
                "UPDATE aliases SET collection_id = ?, updated_at_ms = ? WHERE alias = ?",
                vec![collection_id.into(), now_ms().into(), alias.into()],
            ))
            .await
            .map_err(db_err("switching alias"))?;
        } else {
            tx.execute(self.stmt(
                "INSERT INTO aliases (alias, collection_id, updated_at_ms) VALUES (?, ?, ?)",
                vec![alias.into(), collection_id.into(), now_ms().into()],
            ))
            .await
            .map_err(db_err("creating alias"))?;
        }
        tx.commit().await.map_err(db_err("commit"))?;
        Ok(old)
    }

    /// Drops a physical collection with its images and any alias to it.
    #[tracing::instrument(name = "db.delete_collection", skip_all)]
    pub async fn delete_collection(&self, collection_id: i64) -> Result<()> {
        retried("deleting a collection", || {
            self.delete_collection_once(collection_id)
        })
        .await
    }

    async fn delete_collection_once(&self, collection_id: i64) -> Result<()> {
        let tx = self.begin().await?;
        // The collection's row first, as every write to the collection
        // locks it first (fewer deadlocks on MariaDB).
        for sql in [
            "DELETE FROM collections WHERE id = ?",
            "DELETE FROM aliases WHERE collection_id = ?",
            "DELETE FROM images WHERE collection_id = ?",
            "DELETE FROM image_blobs WHERE collection_id = ?",
        ] {
            tx.execute(self.stmt(sql, vec![collection_id.into()]))
                .await
                .map_err(db_err("deleting a collection"))?;
        }
        tx.commit().await.map_err(db_err("commit"))
    }

    /// Inserts `images` (identified by content hash) in one transaction.
    /// An image the collection holds already keeps its entry as it is,
    /// unless `replace` asks to overwrite it (metadata, feature and blobs).
    /// Returns one outcome per input, in order; the same hash twice in one
    /// call is one entry (the last wins).
    #[tracing::instrument(name = "db.upsert", skip_all)]
    pub async fn upsert(
        &self,
        collection_id: i64,
        images: &[NewImage],
        replace: bool,
    ) -> Result<Vec<Upserted>> {
        if images.is_empty() {
            return Ok(Vec::new());
        }
        retried("upserting images", || {
            self.upsert_once(collection_id, images, replace)
        })
        .await
    }

    async fn upsert_once(
        &self,
        collection_id: i64,
        images: &[NewImage],
        replace: bool,
    ) -> Result<Vec<Upserted>> {
        let mut last: HashMap<&str, usize> = HashMap::new();
        for (i, img) in images.iter().enumerate() {
            last.insert(img.content_hash.as_str(), i);
        }
        let tx = self.begin().await?;
        self.bump_seq(&tx, collection_id).await?;
        let hashes: Vec<&str> = last.keys().copied().collect();
        let existing = self.ids_by_hash(&*tx, collection_id, &hashes).await?;
        let now = now_ms();
        let mut outcome: HashMap<&str, Upserted> = HashMap::new();
        let mut fresh: Vec<&NewImage> = Vec::new();
        for (&hash, &i) in &last {
            let img = &images[i];
            match existing.get(hash) {
                Some(&(id, class)) if !replace => {
                    outcome.insert(
                        hash,
                        Upserted {
                            id,
                            created: false,
                            previous_class: Some(class),
                        },
                    );
                }
                Some(&(id, class)) => {
                    tx.execute(self.stmt(
                        "UPDATE images SET predicted_class = ?, file_name = ?, path = ?, label = ?, feature = ? WHERE id = ? AND predicted_class = ?",
                        vec![
                            img.predicted_class.into(),
                            img.file_name.as_str().into(),
                            img.path.as_str().into(),
                            img.label.as_str().into(),
                            encode_feature(&img.feature).into(),
                            (id as i64).into(),
                            class.into(),
                        ],
                    ))
                    .await
                    .map_err(db_err("updating an image"))?;
                    tx.execute(self.stmt(
                        "UPDATE image_blobs SET thumbnail = ?, source = ? WHERE image_id = ?",
                        vec![
                            img.thumbnail.clone().into(),
                            img.source.clone().into(),
                            (id as i64).into(),
                        ],
                    ))
                    .await
                    .map_err(db_err("updating an image's blobs"))?;
                    outcome.insert(
                        hash,
                        Upserted {
                            id,
                            created: false,
                            previous_class: Some(class),
                        },
                    );
                }
                None => fresh.push(img),
            }
        }
        // Sorted for a deterministic id order.
        fresh.sort_by_key(|img| last[img.content_hash.as_str()]);
        for chunk in fresh.chunks(ROWS_PER_STATEMENT) {
            let mut sql = String::from(
                "INSERT INTO images (collection_id, predicted_class, content_hash, file_name, path, label, feature, created_at_ms) VALUES ",
            );
            let mut values = Vec::with_capacity(chunk.len() * 8);
            for (i, img) in chunk.iter().enumerate() {
                if i > 0 {
                    sql.push(',');
                }
                sql.push_str("(?, ?, ?, ?, ?, ?, ?, ?)");
                values.extend([
                    collection_id.into(),
                    img.predicted_class.into(),
                    img.content_hash.as_str().into(),
                    img.file_name.as_str().into(),
                    img.path.as_str().into(),
                    img.label.as_str().into(),
                    encode_feature(&img.feature).into(),
                    now.into(),
                ]);
            }
            tx.execute(self.stmt(&sql, values)).await.map_err(|e| {
                // Another replica inserted one of these images since we
                // looked (MariaDB): the next attempt finds it.
                if cbir_common::db::unique_violation(&e) {
                    Error::Busy(format!(
                        "another writer stored the same image at the same moment ({e}); retry"
                    ))
                } else {
                    db_err("inserting images")(e)
                }
            })?;
        }
        if !fresh.is_empty() {
            let new_hashes: Vec<&str> = fresh.iter().map(|i| i.content_hash.as_str()).collect();
            let ids = self.ids_by_hash(&*tx, collection_id, &new_hashes).await?;
            let mut blob_rows: Vec<(i64, &NewImage)> = Vec::new();
            for img in &fresh {
                let &(id, _) = ids.get(img.content_hash.as_str()).ok_or_else(|| {
                    Error::Database("an inserted image cannot be read back".into())
                })?;
                outcome.insert(
                    img.content_hash.as_str(),
                    Upserted {
                        id,
                        created: true,
                        previous_class: None,
                    },
                );
                blob_rows.push((id as i64, img));
            }
            let mut start = 0;
            while start < blob_rows.len() {
                let mut end = start;
                let mut bytes = 0;
                while end < blob_rows.len()
                    && (end == start || bytes < BLOB_BYTES_PER_STATEMENT)
                    && end - start < ROWS_PER_STATEMENT
                {
                    bytes += blob_rows[end].1.thumbnail.len() + blob_rows[end].1.source.len();
                    end += 1;
                }
                let mut sql = String::from(
                    "INSERT INTO image_blobs (image_id, collection_id, thumbnail, source) VALUES ",
                );
                let mut values = Vec::new();
                for (i, (id, img)) in blob_rows[start..end].iter().enumerate() {
                    if i > 0 {
                        sql.push(',');
                    }
                    sql.push_str("(?, ?, ?, ?)");
                    values.extend([
                        (*id).into(),
                        collection_id.into(),
                        img.thumbnail.clone().into(),
                        img.source.clone().into(),
                    ]);
                }
                tx.execute(self.stmt(&sql, values))
                    .await
                    .map_err(db_err("inserting image blobs"))?;
                start = end;
            }
        }
        tx.commit().await.map_err(db_err("commit"))?;
        images
            .iter()
            .map(|img| {
                outcome
                    .get(img.content_hash.as_str())
                    .copied()
                    .ok_or_else(|| Error::Database("an upserted image has no outcome".into()))
            })
            .collect()
    }

    async fn ids_by_hash<C: ConnectionTrait>(
        &self,
        conn: &C,
        collection_id: i64,
        hashes: &[&str],
    ) -> Result<HashMap<String, (u64, i32)>> {
        let mut out = HashMap::new();
        for chunk in hashes.chunks(ROWS_PER_STATEMENT * 2) {
            let marks = vec!["?"; chunk.len()].join(",");
            let mut values: Vec<Value> = vec![collection_id.into()];
            values.extend(chunk.iter().map(|h| Value::from(*h)));
            let rows = conn
                .query_all(self.stmt(
                    &format!(
                        "SELECT id, content_hash, predicted_class FROM images WHERE collection_id = ? AND content_hash IN ({marks})"
                    ),
                    values,
                ))
                .await
                .map_err(db_err("looking up content hashes"))?;
            for r in rows {
                let id: i64 = r.try_get("", "id").map_err(db_err("id"))?;
                let hash: String = r.try_get("", "content_hash").map_err(db_err("hash"))?;
                let class: i32 = r.try_get("", "predicted_class").map_err(db_err("class"))?;
                out.insert(hash, (id as u64, class));
            }
        }
        Ok(out)
    }

    /// Deletes `ids`; returns the (id, class) of those that existed.
    #[tracing::instrument(name = "db.delete", skip_all)]
    pub async fn delete(&self, collection_id: i64, ids: &[u64]) -> Result<Vec<(u64, i32)>> {
        retried("deleting images", || self.delete_once(collection_id, ids)).await
    }

    async fn delete_once(&self, collection_id: i64, ids: &[u64]) -> Result<Vec<(u64, i32)>> {
        let tx = self.begin().await?;
        self.bump_seq(&tx, collection_id).await?;
        let mut gone = Vec::new();
        for chunk in ids.chunks(ROWS_PER_STATEMENT * 2) {
            let marks = vec!["?"; chunk.len()].join(",");
            let mut values: Vec<Value> = vec![collection_id.into()];
            values.extend(chunk.iter().map(|id| Value::from(*id as i64)));
            let rows = tx
                .query_all(self.stmt(
                    &format!("SELECT id, predicted_class FROM images WHERE collection_id = ? AND id IN ({marks})"),
                    values.clone(),
                ))
                .await
                .map_err(db_err("finding images to delete"))?;
            for r in rows {
                let id: i64 = r.try_get("", "id").map_err(db_err("id"))?;
                let class: i32 = r.try_get("", "predicted_class").map_err(db_err("class"))?;
                gone.push((id as u64, class));
            }
            tx.execute(self.stmt(
                &format!("DELETE FROM images WHERE collection_id = ? AND id IN ({marks})"),
                values.clone(),
            ))
            .await
            .map_err(db_err("deleting images"))?;
            tx.execute(self.stmt(
                &format!(
                    "DELETE FROM image_blobs WHERE collection_id = ? AND image_id IN ({marks})"
                ),
                values,
            ))
            .await
            .map_err(db_err("deleting image blobs"))?;
        }
        tx.commit().await.map_err(db_err("commit"))?;
        Ok(gone)
    }

    /// Removes every image of a collection; returns how many.
    #[tracing::instrument(name = "db.clear", skip_all)]
    pub async fn clear(&self, collection_id: i64) -> Result<u64> {
        retried("clearing a collection", || self.clear_once(collection_id)).await
    }

    async fn clear_once(&self, collection_id: i64) -> Result<u64> {
        let tx = self.begin().await?;
        self.bump_seq(&tx, collection_id).await?;
        tx.execute(self.stmt(
            "DELETE FROM image_blobs WHERE collection_id = ?",
            vec![collection_id.into()],
        ))
        .await
        .map_err(db_err("clearing blobs"))?;
        let n = tx
            .execute(self.stmt(
                "DELETE FROM images WHERE collection_id = ?",
                vec![collection_id.into()],
            ))
            .await
            .map_err(db_err("clearing images"))?
            .rows_affected();
        tx.commit().await.map_err(db_err("commit"))?;
        Ok(n)
    }

    pub async fn count(&self, collection_id: i64) -> Result<u64> {
        let row = self
            .db
            .query_one(self.stmt(
                "SELECT COUNT(*) AS n FROM images WHERE collection_id = ?",
                vec![collection_id.into()],
            ))
            .await
            .map_err(db_err("counting images"))?;
        Ok(row
            .map(|r| r.try_get::<i64>("", "n"))
            .transpose()
            .map_err(db_err("count"))?
            .unwrap_or(0) as u64)
    }

    fn loaded_from_row(r: &sea_orm::QueryResult) -> Result<LoadedImage> {
        let blob: Vec<u8> = r.try_get("", "feature").map_err(db_err("feature"))?;
        Ok(LoadedImage {
            id: r.try_get::<i64>("", "id").map_err(db_err("id"))? as u64,
            predicted_class: r.try_get("", "predicted_class").map_err(db_err("class"))?,
            content_hash: r.try_get("", "content_hash").map_err(db_err("hash"))?,
            file_name: r.try_get("", "file_name").map_err(db_err("file_name"))?,
            path: r.try_get("", "path").map_err(db_err("path"))?,
            label: r.try_get("", "label").map_err(db_err("label"))?,
            feature: decode_feature(&blob)?,
        })
    }

    /// One page of a collection's images with id > `after`, by id.
    pub async fn load_page(
        &self,
        collection_id: i64,
        after: u64,
        limit: u64,
    ) -> Result<Vec<LoadedImage>> {
        let rows = self
            .db
            .query_all(self.stmt(
                "SELECT id, predicted_class, content_hash, file_name, path, label, feature FROM images WHERE collection_id = ? AND id > ? ORDER BY id LIMIT ?",
                vec![collection_id.into(), (after as i64).into(), (limit as i64).into()],
            ))
            .await
            .map_err(db_err("loading images"))?;
        rows.iter().map(Self::loaded_from_row).collect()
    }

    /// Smallest and largest image id of a collection.
    pub async fn id_range(&self, collection_id: i64) -> Result<Option<(u64, u64)>> {
        let row = self
            .db
            .query_one(self.stmt(
                "SELECT MIN(id) AS lo, MAX(id) AS hi FROM images WHERE collection_id = ?",
                vec![collection_id.into()],
            ))
            .await
            .map_err(db_err("reading the id range"))?;
        let Some(r) = row else { return Ok(None) };
        let lo: Option<i64> = r.try_get("", "lo").map_err(db_err("lo"))?;
        let hi: Option<i64> = r.try_get("", "hi").map_err(db_err("hi"))?;
        Ok(lo.zip(hi).map(|(a, b)| (a as u64, b as u64)))
    }

    /// One page of images with `after < id <= upto`, by id.
    #[tracing::instrument(name = "db.load_range", skip_all)]
    pub async fn load_range(
        &self,
        collection_id: i64,
        after: u64,
        upto: u64,
        limit: u64,
    ) -> Result<Vec<LoadedImage>> {
        let rows = self
            .db
            .query_all(self.stmt(
                "SELECT id, predicted_class, content_hash, file_name, path, label, feature FROM images WHERE collection_id = ? AND id > ? AND id <= ? ORDER BY id LIMIT ?",
                vec![
                    collection_id.into(),
                    (after as i64).into(),
                    (upto as i64).into(),
                    (limit as i64).into(),
                ],
            ))
            .await
            .map_err(db_err("loading images"))?;
        rows.iter().map(Self::loaded_from_row).collect()
    }

    /// Ids in one class partition (MySQL reads one partition for this).
    pub async fn ids_in_class(&self, collection_id: i64, class: i32) -> Result<Vec<u64>> {
        let rows = self
            .db
            .query_all(self.stmt(
                "SELECT id FROM images WHERE collection_id = ? AND predicted_class = ? ORDER BY id",
                vec![collection_id.into(), class.into()],
            ))
            .await
            .map_err(db_err("reading a partition"))?;
        rows.iter()
            .map(|r| Ok(r.try_get::<i64>("", "id").map_err(db_err("id"))? as u64))
            .collect()
    }

    #[tracing::instrument(name = "db.get_image", skip_all)]
    pub async fn get_image(
        &self,
        collection_id: i64,
        id: u64,
        with_blobs: bool,
    ) -> Result<Option<StoredImage>> {
        let Some(r) = self
            .db
            .query_one(self.stmt(
                "SELECT id, predicted_class, content_hash, file_name, path, label, feature, created_at_ms FROM images WHERE collection_id = ? AND id = ?",
                vec![collection_id.into(), (id as i64).into()],
            ))
            .await
            .map_err(db_err("reading an image"))?
        else {
            return Ok(None);
        };
        let image = Self::loaded_from_row(&r)?;
        let created_at_ms = r.try_get("", "created_at_ms").map_err(db_err("created"))?;
        let (thumbnail, source) = if with_blobs {
            match self
                .db
                .query_one(self.stmt(
                    "SELECT thumbnail, source FROM image_blobs WHERE image_id = ?",
                    vec![(id as i64).into()],
                ))
                .await
                .map_err(db_err("reading image blobs"))?
            {
                Some(b) => (
                    Some(b.try_get("", "thumbnail").map_err(db_err("thumbnail"))?),
                    Some(b.try_get("", "source").map_err(db_err("source"))?),
                ),
                None => (None, None),
            }
        } else {
            (None, None)
        };
        Ok(Some(StoredImage {
            image,
            created_at_ms,
            thumbnail,
            source,
        }))
    }
}

fn conflict_or(e: DbErr, msg: String) -> Error {
    if cbir_common::db::unique_violation(&e) {
        Error::AlreadyExists(msg)
    } else {
        db_err("writing")(e)
    }
}
