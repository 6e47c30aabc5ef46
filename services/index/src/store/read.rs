//! Reads of images: pages for loading memory, single images with blobs.

use sea_orm::ConnectionTrait;

use super::{db_err, decode_feature, LoadedImage, Store, StoredImage};
use crate::error::Result;

/// Queries one short-list read is split into at most (see `features`).
const FETCH_PARALLEL: usize = 4;
/// Ids below which a query is not worth splitting further.
const FETCH_CHUNK_MIN: usize = 8;

impl Store {
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

    pub(super) fn loaded_from_row(r: &sea_orm::QueryResult) -> Result<LoadedImage> {
        let blob: Vec<u8> = r.try_get("", "feature").map_err(db_err("feature"))?;
        Ok(LoadedImage {
            id: r.try_get::<i64>("", "id").map_err(db_err("id"))? as u64,
            predicted_class: r.try_get("", "predicted_class").map_err(db_err("class"))?,
            content_hash: r.try_get("", "content_hash").map_err(db_err("hash"))?,
            file_name: r.try_get("", "file_name").map_err(db_err("file_name"))?,
            path: r.try_get("", "path").map_err(db_err("path"))?,
            label: r.try_get("", "label").map_err(db_err("label"))?,
            feature: decode_feature(&blob)?,
            created_at_ms: r.try_get("", "created_at_ms").map_err(db_err("created"))?,
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
                "SELECT id, predicted_class, content_hash, file_name, path, label, feature, created_at_ms FROM images WHERE collection_id = ? AND id > ? ORDER BY id LIMIT ?",
                vec![collection_id.into(), (after as i64).into(), (limit as i64).into()],
            ))
            .await
            .map_err(db_err("loading images"))?;
        rows.iter().map(Self::loaded_from_row).collect()
    }

    /// The stored features of `ids` (those of the collection; any order):
    /// what compact storage re-ranks by. A short list's rows are random
    /// reads wherever the file is larger than the page cache, each waiting
    /// on the disk (a network volume's 0.5–1 ms in a cluster): a long list
    /// is read as up to [`FETCH_PARALLEL`] queries at once, each on its own
    /// connection, so the disk serves them together.
    #[tracing::instrument(name = "db.features", skip_all, fields(n = ids.len()))]
    pub async fn features(&self, collection_id: i64, ids: &[u64]) -> Result<Vec<(u64, Vec<f32>)>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let per = ids.len().div_ceil(FETCH_PARALLEL).max(FETCH_CHUNK_MIN);
        let parts = futures::future::try_join_all(
            ids.chunks(per)
                .map(|chunk| self.features_once(collection_id, chunk)),
        )
        .await?;
        Ok(parts.into_iter().flatten().collect())
    }

    async fn features_once(&self, collection_id: i64, ids: &[u64]) -> Result<Vec<(u64, Vec<f32>)>> {
        let marks = vec!["?"; ids.len()].join(",");
        let mut values: Vec<sea_orm::Value> = vec![collection_id.into()];
        values.extend(ids.iter().map(|&id| sea_orm::Value::from(id as i64)));
        let rows = self
            .db
            .query_all(self.stmt(
                &format!(
                    "SELECT id, feature FROM images WHERE collection_id = ? AND id IN ({marks})"
                ),
                values,
            ))
            .await
            .map_err(db_err("reading features to re-rank"))?;
        rows.iter()
            .map(|r| {
                let id = r.try_get::<i64>("", "id").map_err(db_err("id"))? as u64;
                let blob: Vec<u8> = r.try_get("", "feature").map_err(db_err("feature"))?;
                Ok((id, decode_feature(&blob)?))
            })
            .collect()
    }

    /// Smallest and largest image id of a collection.
    /// Images per predicted class (an index-only scan): how much memory a
    /// load reserves for each partition.
    pub async fn class_counts(&self, collection_id: i64) -> Result<Vec<(i32, u64)>> {
        let rows = self
            .db
            .query_all(self.stmt(
                "SELECT predicted_class, COUNT(*) AS n FROM images WHERE collection_id = ? GROUP BY predicted_class",
                vec![collection_id.into()],
            ))
            .await
            .map_err(db_err("counting images per class"))?;
        rows.iter()
            .map(|r| {
                let class: i32 = r.try_get("", "predicted_class").map_err(db_err("class"))?;
                let n: i64 = r.try_get("", "n").map_err(db_err("n"))?;
                Ok((class, n as u64))
            })
            .collect()
    }

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
                "SELECT id, predicted_class, content_hash, file_name, path, label, feature, created_at_ms FROM images WHERE collection_id = ? AND id > ? AND id <= ? ORDER BY id LIMIT ?",
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
                "SELECT i.id, i.predicted_class, i.content_hash, i.file_name, i.path, i.label, i.feature, i.created_at_ms, COALESCE(b.source_bytes, 0) AS source_bytes FROM images i LEFT JOIN image_blobs b ON b.image_id = i.id WHERE i.collection_id = ? AND i.id = ?",
                vec![collection_id.into(), (id as i64).into()],
            ))
            .await
            .map_err(db_err("reading an image"))?
        else {
            return Ok(None);
        };
        let image = Self::loaded_from_row(&r)?;
        let created_at_ms = r.try_get("", "created_at_ms").map_err(db_err("created"))?;
        let source_bytes: i64 = r
            .try_get("", "source_bytes")
            .map_err(db_err("source_bytes"))?;
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
            has_source: source_bytes > 0,
        }))
    }
}
