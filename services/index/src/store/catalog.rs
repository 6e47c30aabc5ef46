//! Collections, their names (aliases) and write counters.

use std::collections::HashMap;

use sea_orm::{ConnectionTrait, DbErr};

use super::{db_err, now_ms, retried, CollectionRow, Store};
use crate::error::{Error, Result};

impl Store {
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
    pub(super) async fn bump_seq(
        &self,
        tx: &sea_orm::DatabaseTransaction,
        collection_id: i64,
    ) -> Result<()> {
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
            "DELETE FROM duplicate_runs WHERE collection_id = ?",
            "DELETE FROM duplicate_members WHERE collection_id = ?",
        ] {
            tx.execute(self.stmt(sql, vec![collection_id.into()]))
                .await
                .map_err(db_err("deleting a collection"))?;
        }
        tx.commit().await.map_err(db_err("commit"))
    }
}

fn conflict_or(e: DbErr, msg: String) -> Error {
    if cbir_common::db::unique_violation(&e) {
        Error::AlreadyExists(msg)
    } else {
        db_err("writing")(e)
    }
}
