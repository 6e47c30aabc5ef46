//! Writes: validation, upserts (database first, then memory), labels,
//! deletes.

use std::sync::Arc;

use super::{Collection, Index, Record};
use crate::error::{Error, Result};
use crate::kernels;
use crate::mem::{Entry, Meta};
use crate::store::{NewImage, Upserted};

impl Index {
    fn text_limits(&self) -> cbir_common::records::TextLimits {
        cbir_common::records::TextLimits {
            max_file_name: self.limits.max_name_len,
            max_path: self.limits.max_path_len,
            max_label: self.limits.max_label_len,
        }
    }

    pub fn validate(&self, coll: &Collection, r: &mut Record) -> Result<()> {
        let l = &self.limits;
        let hex =
            r.content_hash.len() == 64 && r.content_hash.chars().all(|c| c.is_ascii_hexdigit());
        if !hex {
            return Err(Error::InvalidArgument(format!(
                "content_hash of {:?} must be the 64 hex digits of the file's SHA-256",
                r.file_name
            )));
        }
        r.content_hash.make_ascii_lowercase();
        if r.feature.len() != coll.row.dims as usize {
            return Err(Error::InvalidArgument(format!(
                "feature of {:?} has {} dimensions, collection {} holds {}",
                r.file_name,
                r.feature.len(),
                coll.row.name,
                coll.row.dims
            )));
        }
        if !kernels::normalize(&mut r.feature) {
            return Err(Error::InvalidArgument(format!(
                "feature of {:?} is zero or not finite",
                r.file_name
            )));
        }
        // The same check as the gateway's, per file before its Upsert.
        cbir_common::records::check_text(&r.file_name, &r.path, &r.label, &self.text_limits())
            .map_err(Error::InvalidArgument)?;
        for (what, len, max) in [
            ("thumbnail", r.thumbnail.len(), l.max_thumbnail_bytes),
            ("source image", r.source.len(), l.max_source_bytes),
        ] {
            if len > max {
                return Err(Error::InvalidArgument(format!(
                    "{what} of {:?} is {len} bytes, the limit is {max}",
                    r.file_name
                )));
            }
        }
        if r.predicted_class < 0 {
            return Err(Error::InvalidArgument(format!(
                "predicted_class of {:?} is negative",
                r.file_name
            )));
        }
        Ok(())
    }

    /// Validates all records (nothing is written if one is bad), commits them
    /// in one transaction, then applies them to memory. Returns once both
    /// are done: an acknowledged upsert is durable and searchable. An image
    /// the collection holds already keeps its stored entry unless `replace`.
    pub async fn upsert(
        &self,
        name: &str,
        records: Vec<Record>,
        replace: bool,
    ) -> Result<Vec<Upserted>> {
        let mut model: Option<(String, String)> = None;
        loop {
            let coll = self.resolve(name)?;
            let now = (coll.row.model_name.clone(), coll.row.model_version.clone());
            if let Some(before) = model.as_ref().filter(|m| **m != now) {
                return Err(Error::FailedPrecondition(format!(
                    "collection {name:?} was rebuilt for model {}:{} while these images of \
                     model {}:{} were being added: embed them with {}:{} and send them again",
                    now.0, now.1, before.0, before.1, now.0, now.1
                )));
            }
            model = Some(now);
            let mut records = records.clone();
            self.check_batch(&coll, &mut records)?;
            let _w = coll.write.lock().await;
            if coll.retired() {
                // A rebuild switched the name (or the collection went) while
                // we waited: write where the name points now.
                continue;
            }
            return self.upsert_locked(&coll, records, replace).await;
        }
    }

    /// `upsert` on a physical collection (rebuilds write to one that no
    /// name points at yet).
    pub async fn upsert_into(
        &self,
        coll: &Arc<Collection>,
        mut records: Vec<Record>,
    ) -> Result<Vec<Upserted>> {
        self.check_batch(coll, &mut records)?;
        let _w = coll.write.lock().await;
        if coll.retired() {
            return Err(Error::NotFound(format!(
                "collection {} was dropped while writing to it",
                coll.row.name
            )));
        }
        self.upsert_locked(coll, records, false).await
    }

    fn check_batch(&self, coll: &Collection, records: &mut [Record]) -> Result<()> {
        if records.is_empty() {
            return Err(Error::InvalidArgument("no records to upsert".into()));
        }
        if records.len() > self.limits.max_records_per_upsert {
            return Err(Error::InvalidArgument(format!(
                "{} records in one upsert, the limit is {}: send smaller batches",
                records.len(),
                self.limits.max_records_per_upsert
            )));
        }
        for r in records.iter_mut() {
            self.validate(coll, r)?;
        }
        Ok(())
    }

    pub(super) async fn upsert_locked(
        &self,
        coll: &Arc<Collection>,
        records: Vec<Record>,
        replace: bool,
    ) -> Result<Vec<Upserted>> {
        let new: Vec<NewImage> = records
            .iter()
            .map(|r| NewImage {
                content_hash: r.content_hash.clone(),
                predicted_class: r.predicted_class,
                file_name: r.file_name.clone(),
                path: r.path.clone(),
                label: r.label.clone(),
                feature: r.feature.clone(),
                thumbnail: r.thumbnail.clone(),
                source: r.source.clone(),
            })
            .collect();
        let outcome = self.store.upsert(coll.row.id, &new, replace).await?;
        coll.seen_seq
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        // Entries that existed and were kept stay as memory has them. A
        // partition of another shard is stored, and held there: that shard
        // follows the database (the gateway routes writes to the owner).
        let elsewhere: Vec<u64> = records
            .iter()
            .zip(&outcome)
            .filter(|(r, o)| (o.created || replace) && !self.shard.owns(r.predicted_class))
            .map(|(_, o)| o.id)
            .collect();
        let entries: Vec<Entry> = records
            .into_iter()
            .zip(&outcome)
            .filter(|(r, o)| (o.created || replace) && self.shard.owns(r.predicted_class))
            .map(|(r, o)| Entry {
                id: o.id,
                class: r.predicted_class,
                feature: r.feature,
                meta: Meta::new(
                    &r.content_hash,
                    &r.file_name,
                    &r.path,
                    &r.label,
                    o.created_at_ms,
                ),
            })
            .collect();
        let ids: Vec<u64> = entries.iter().map(|e| e.id).collect();
        let c = coll.clone();
        tokio::task::spawn_blocking(move || {
            // A short write lock per batch: append and refresh centroids.
            let split = {
                let mut mem = c.mem.write();
                // A replaced image whose class moved to another shard.
                for id in &elsewhere {
                    mem.remove(*id);
                }
                mem.upsert(&entries);
                mem.refresh_centroids();
                mem.needs_split()
            };
            // Splitting a grown partition runs k-means: under the read lock,
            // so searches go on; only the redistribution takes the write
            // lock. The collection's writer mutex keeps other writes out.
            if split {
                let plans = c.mem.read().plan_splits();
                let mut mem = c.mem.write();
                mem.apply_splits(plans);
                mem.refresh_centroids();
            }
        })
        .await
        .map_err(|e| Error::Internal(format!("memory update task: {e}")))?;
        // The images are stored and searchable; a peer shard that cannot
        // answer now leaves their augmented vectors to the upkeep's retry.
        if let Err(e) = self.augment_ids(coll, &ids).await {
            tracing::warn!(collection = %coll.row.name, images = ids.len(), error = %e, "new images' augmented vectors wait for the upkeep");
        }
        Ok(outcome)
    }

    pub async fn delete(&self, name: &str, ids: &[u64]) -> Result<u64> {
        let coll = self.resolve(name)?;
        if ids.is_empty() {
            return Ok(0);
        }
        let _w = coll.write.lock().await;
        if coll.retired() {
            // Ids belong to one physical collection: after a rebuild the
            // same images have other ids.
            self.resolve(name)?;
            return Err(Error::FailedPrecondition(format!(
                "collection {name:?} was rebuilt while deleting, and its image ids changed: look the images up again"
            )));
        }
        self.delete_locked(&coll, ids).await
    }

    pub(super) async fn delete_locked(&self, coll: &Arc<Collection>, ids: &[u64]) -> Result<u64> {
        let gone = self.store.delete(coll.row.id, ids).await?;
        coll.seen_seq
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let (c, rule) = (coll.clone(), self.probe);
        // Every requested id leaves memory, not only those this call took
        // out of the database: on a sharded index the gateway sends a
        // delete to every shard, and the first one to commit removes the
        // rows the others still hold in memory.
        let requested = ids.to_vec();
        let with_peers = self.peers.is_some();
        let removed = tokio::task::spawn_blocking(move || {
            // The augmented vectors that summed a deleted image go stale:
            // found by its neighbours before it leaves memory.
            let affected: Vec<(u64, Vec<(u64, f32)>)> = {
                let mem = c.mem.read();
                requested
                    .iter()
                    .filter(|id| mem.contains(**id))
                    .map(|id| (*id, mem.affected_by_removal(*id, rule)))
                    .collect()
            };
            let mut mem = c.mem.write();
            // With peers, their raw vectors find the neighbours on the
            // other shards too.
            let removed: Vec<(u64, Vec<f32>)> = if with_peers && !mem.compact() {
                affected
                    .iter()
                    .filter_map(|(id, _)| Some((*id, mem.feature(*id)?.1)))
                    .collect()
            } else {
                Vec::new()
            };
            for (id, near) in &affected {
                mem.remove(*id);
                mem.mark_removed(*id, near);
            }
            mem.refresh_centroids();
            removed
        })
        .await
        .map_err(|e| Error::Internal(format!("memory update task: {e}")))?;
        self.removed_elsewhere(coll, &removed).await;
        Ok(gone.len() as u64)
    }

    /// Sets the label of image `id`, in the database and then in memory:
    /// searches show it once this returns.
    pub async fn update_label(&self, name: &str, id: u64, label: &str) -> Result<()> {
        cbir_common::records::check_text(&format!("image {id}"), "", label, &self.text_limits())
            .map_err(Error::InvalidArgument)?;
        let coll = self.resolve(name)?;
        let _w = coll.write.lock().await;
        if coll.retired() {
            // Ids belong to one physical collection, as for deletes.
            self.resolve(name)?;
            return Err(Error::FailedPrecondition(format!(
                "collection {name:?} was rebuilt while relabelling, and its image ids changed: look the image up again"
            )));
        }
        if !self.store.update_label(coll.row.id, id, label).await? {
            return Err(Error::NotFound(format!(
                "no image {id} in collection {name:?}"
            )));
        }
        coll.seen_seq
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        coll.mem.write().set_label(id, label);
        Ok(())
    }

    pub async fn clear(&self, name: &str) -> Result<u64> {
        loop {
            let coll = self.resolve(name)?;
            let _w = coll.write.lock().await;
            if coll.retired() {
                continue;
            }
            let n = self.store.clear(coll.row.id).await?;
            coll.seen_seq
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            coll.mem.write().clear();
            return Ok(n);
        }
    }
}

/// Gives the entries `ids` (just added) their augmented vectors: one
/// neighbour search each under the read lock, then a short write lock.
/// The neighbours they change are marked stale for the next refresh.
pub(crate) fn augment_now(c: &Collection, ids: &[u64], rule: crate::mem::ProbeRule) {
    let (started, done) = {
        let mem = c.mem.read();
        let started = mem.mark_counter();
        let done: Vec<crate::mem::Augmented> =
            ids.iter().filter_map(|id| mem.augment(*id, rule)).collect();
        (started, done)
    };
    let mut mem = c.mem.write();
    for a in &done {
        mem.apply_augmented(a, started);
    }
}
