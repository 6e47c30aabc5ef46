//! Writes of images: upserts by content hash, labels, deletes, clears.

use std::collections::HashMap;

use sea_orm::{ConnectionTrait, DatabaseTransaction, Value};

use super::{
    db_err, encode_feature, now_ms, retried, NewImage, Store, Upserted, BLOB_BYTES_PER_STATEMENT,
    ROWS_PER_STATEMENT,
};
use crate::error::{Error, Result};

impl Store {
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
            let Some(&(id, class, created_at_ms)) = existing.get(hash) else {
                fresh.push(img);
                continue;
            };
            if replace {
                self.replace_image(&tx, id, class, img).await?;
            }
            outcome.insert(
                hash,
                Upserted {
                    id,
                    created: false,
                    previous_class: Some(class),
                    created_at_ms,
                },
            );
        }
        // Sorted for a deterministic id order.
        fresh.sort_by_key(|img| last[img.content_hash.as_str()]);
        let created_at = vec![now; fresh.len()];
        self.insert_images(&tx, collection_id, &fresh, &created_at)
            .await?;
        if !fresh.is_empty() {
            let new_hashes: Vec<&str> = fresh.iter().map(|i| i.content_hash.as_str()).collect();
            let ids = self.ids_by_hash(&*tx, collection_id, &new_hashes).await?;
            let mut blob_rows: Vec<(i64, &NewImage)> = Vec::new();
            for img in &fresh {
                let &(id, _, created_at_ms) =
                    ids.get(img.content_hash.as_str()).ok_or_else(|| {
                        Error::Database("an inserted image cannot be read back".into())
                    })?;
                outcome.insert(
                    img.content_hash.as_str(),
                    Upserted {
                        id,
                        created: true,
                        previous_class: None,
                        created_at_ms,
                    },
                );
                blob_rows.push((id as i64, img));
            }
            self.insert_blobs(&tx, collection_id, &blob_rows).await?;
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

    /// Overwrites a stored image's metadata, feature and blobs.
    async fn replace_image(
        &self,
        tx: &DatabaseTransaction,
        id: u64,
        class: i32,
        img: &NewImage,
    ) -> Result<()> {
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
            "UPDATE image_blobs SET thumbnail = ?, source = ?, source_bytes = ? WHERE image_id = ?",
            vec![
                img.thumbnail.clone().into(),
                img.source.clone().into(),
                (img.source.len() as i64).into(),
                (id as i64).into(),
            ],
        ))
        .await
        .map_err(db_err("updating an image's blobs"))?;
        Ok(())
    }

    /// The rows of new images, many per statement; `created_at[i]` is
    /// the creation time of `fresh[i]`.
    pub(super) async fn insert_images(
        &self,
        tx: &DatabaseTransaction,
        collection_id: i64,
        fresh: &[&NewImage],
        created_at: &[i64],
    ) -> Result<()> {
        for (chunk, times) in fresh
            .chunks(ROWS_PER_STATEMENT)
            .zip(created_at.chunks(ROWS_PER_STATEMENT))
        {
            let mut sql = String::from(
                "INSERT INTO images (collection_id, predicted_class, content_hash, file_name, path, label, feature, created_at_ms) VALUES ",
            );
            let mut values = Vec::with_capacity(chunk.len() * 8);
            for (i, (img, created)) in chunk.iter().zip(times).enumerate() {
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
                    (*created).into(),
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
        Ok(())
    }

    /// The blobs of new images `(image id, image)`, in statements bounded by
    /// rows and by bytes.
    pub(super) async fn insert_blobs(
        &self,
        tx: &DatabaseTransaction,
        collection_id: i64,
        blob_rows: &[(i64, &NewImage)],
    ) -> Result<()> {
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
                "INSERT INTO image_blobs (image_id, collection_id, thumbnail, source, source_bytes) VALUES ",
            );
            let mut values = Vec::new();
            for (i, (id, img)) in blob_rows[start..end].iter().enumerate() {
                if i > 0 {
                    sql.push(',');
                }
                sql.push_str("(?, ?, ?, ?, ?)");
                values.extend([
                    (*id).into(),
                    collection_id.into(),
                    img.thumbnail.clone().into(),
                    img.source.clone().into(),
                    (img.source.len() as i64).into(),
                ]);
            }
            tx.execute(self.stmt(&sql, values))
                .await
                .map_err(db_err("inserting image blobs"))?;
            start = end;
        }
        Ok(())
    }

    pub(super) async fn ids_by_hash<C: ConnectionTrait>(
        &self,
        conn: &C,
        collection_id: i64,
        hashes: &[&str],
    ) -> Result<HashMap<String, (u64, i32, i64)>> {
        let mut out = HashMap::new();
        for chunk in hashes.chunks(ROWS_PER_STATEMENT * 2) {
            let marks = vec!["?"; chunk.len()].join(",");
            let mut values: Vec<Value> = vec![collection_id.into()];
            values.extend(chunk.iter().map(|h| Value::from(*h)));
            let rows = conn
                .query_all(self.stmt(
                    &format!(
                        "SELECT id, content_hash, predicted_class, created_at_ms FROM images WHERE collection_id = ? AND content_hash IN ({marks})"
                    ),
                    values,
                ))
                .await
                .map_err(db_err("looking up content hashes"))?;
            for r in rows {
                let id: i64 = r.try_get("", "id").map_err(db_err("id"))?;
                let hash: String = r.try_get("", "content_hash").map_err(db_err("hash"))?;
                let class: i32 = r.try_get("", "predicted_class").map_err(db_err("class"))?;
                let at: i64 = r.try_get("", "created_at_ms").map_err(db_err("created"))?;
                out.insert(hash, (id as u64, class, at));
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

    /// Sets the label of image `id`; false when the collection lacks it.
    #[tracing::instrument(name = "db.update_label", skip_all)]
    pub async fn update_label(&self, collection_id: i64, id: u64, label: &str) -> Result<bool> {
        retried("updating a label", || {
            self.update_label_once(collection_id, id, label)
        })
        .await
    }

    async fn update_label_once(&self, collection_id: i64, id: u64, label: &str) -> Result<bool> {
        let tx = self.begin().await?;
        // Found rows, not changed ones: MySQL counts an unchanged row as
        // not affected.
        let found = tx
            .query_one(self.stmt(
                "SELECT id FROM images WHERE collection_id = ? AND id = ?",
                vec![collection_id.into(), (id as i64).into()],
            ))
            .await
            .map_err(db_err("finding the image to relabel"))?
            .is_some();
        if found {
            self.bump_seq(&tx, collection_id).await?;
            tx.execute(self.stmt(
                "UPDATE images SET label = ? WHERE collection_id = ? AND id = ?",
                vec![label.into(), collection_id.into(), (id as i64).into()],
            ))
            .await
            .map_err(db_err("updating a label"))?;
        }
        tx.commit().await.map_err(db_err("commit"))?;
        Ok(found)
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
        // Counted, not taken from the DELETE's affected rows: a Spider
        // table partitioned over several servers (docs/OPERATIONS.md,
        // "Sharding the image table") deletes the rows but reports none.
        // The collection's row, locked above, holds off every other writer.
        let n: i64 = tx
            .query_one(self.stmt(
                "SELECT COUNT(*) AS n FROM images WHERE collection_id = ?",
                vec![collection_id.into()],
            ))
            .await
            .map_err(db_err("counting images"))?
            .map(|r| r.try_get("", "n"))
            .transpose()
            .map_err(db_err("count"))?
            .unwrap_or(0);
        tx.execute(self.stmt(
            "DELETE FROM images WHERE collection_id = ?",
            vec![collection_id.into()],
        ))
        .await
        .map_err(db_err("clearing images"))?;
        tx.commit().await.map_err(db_err("commit"))?;
        Ok(n as u64)
    }
}
