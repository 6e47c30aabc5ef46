//! Augmented vectors across shards: with peers (`crate::peers`), an
//! image's augmented vector sums its nearest raw neighbours on every shard,
//! and a new or deleted image marks stale the augmented vectors it changes
//! on every shard, as on one node holding every partition.

use std::collections::HashMap;
use std::sync::Arc;

use super::{augment_now, Change, Collection, Index};
use crate::error::{Error, Result};
use crate::mem::{Augmented, Pending};
use crate::peers::{Remote, MAX_K, MAX_QUERIES};

impl Index {
    /// Gives entries `ids` their augmented vectors (new entries, or stale
    /// ones in a refresh) and marks stale those the new ones change, here
    /// and, with peers, on the other shards. Fails when a peer shard cannot
    /// answer: the entries stay stale for the upkeep to retry.
    pub(crate) async fn augment_ids(&self, coll: &Arc<Collection>, ids: &[u64]) -> Result<()> {
        let rule = self.probe;
        let Some(peers) = self.peers.clone() else {
            let (c, ids) = (coll.clone(), ids.to_vec());
            return tokio::task::spawn_blocking(move || augment_now(&c, &ids, rule))
                .await
                .map_err(|e| Error::Internal(format!("augment task: {e}")));
        };
        let (c, wanted) = (coll.clone(), ids.to_vec());
        let (started, mut pending) = tokio::task::spawn_blocking(move || {
            let mem = c.mem.read();
            let pending: Vec<Pending> = wanted
                .iter()
                .filter_map(|id| mem.augment_start(*id, rule))
                .collect();
            (mem.mark_counter(), pending)
        })
        .await
        .map_err(|e| Error::Internal(format!("augment task: {e}")))?;
        if pending.is_empty() {
            return Ok(());
        }
        let want = pending.iter().map(|p| p.want).max().unwrap_or(1);
        let remote = {
            let raws: Vec<&[f32]> = pending.iter().map(|p| p.raw.as_slice()).collect();
            peers.neighbours(coll.row.id, want, &raws).await?
        };
        let mut shard_of: HashMap<u64, u32> = HashMap::new();
        for (p, near) in pending.iter_mut().zip(&remote) {
            shard_of.extend(near.iter().map(|n| (n.0, n.2)));
            let pairs: Vec<(u64, f32)> = near.iter().map(|n| (n.0, n.1)).collect();
            p.merge(&pairs);
        }
        // The vectors summed that another shard holds: from the database
        // every shard shares.
        let mut elsewhere: Vec<u64> = pending
            .iter()
            .flat_map(|p| p.summed())
            .filter(|id| shard_of.contains_key(id))
            .collect();
        elsewhere.sort_unstable();
        elsewhere.dedup();
        let vectors: HashMap<u64, Vec<f32>> = if elsewhere.is_empty() {
            HashMap::new()
        } else {
            self.store
                .features(coll.row.id, &elsewhere)
                .await?
                .into_iter()
                .collect()
        };
        let c = coll.clone();
        let changes = tokio::task::spawn_blocking(move || {
            let done: Vec<Augmented> = {
                let mem = c.mem.read();
                pending
                    .into_iter()
                    .map(|p| mem.augment_finish(p, &vectors))
                    .collect()
            };
            let mut mem = c.mem.write();
            let mut changes: Vec<(u64, Vec<Remote>)> = Vec::new();
            for a in &done {
                mem.apply_augmented(a, started);
                let near: Vec<Remote> = a
                    .neighbours()
                    .iter()
                    .filter_map(|&(id, dot)| Some((id, dot, *shard_of.get(&id)?)))
                    .collect();
                if !near.is_empty() {
                    changes.push((a.id, near));
                }
            }
            changes
        })
        .await
        .map_err(|e| Error::Internal(format!("augment task: {e}")))?;
        if !changes.is_empty() {
            peers.mark_stale(coll.row.id, &changes).await;
        }
        Ok(())
    }

    /// With peers, after images (`removed`: id and raw vector) left this
    /// shard: the augmented vectors on other shards that summed them are
    /// marked stale there. A peer that cannot answer is logged.
    pub(crate) async fn removed_elsewhere(&self, coll: &Collection, removed: &[(u64, Vec<f32>)]) {
        let Some(peers) = self.peers.clone() else {
            return;
        };
        if removed.is_empty() {
            return;
        }
        let want = self.refine.dba_k.max(1) * crate::mem::AFFECT_FACTOR;
        let raws: Vec<&[f32]> = removed.iter().map(|(_, v)| v.as_slice()).collect();
        match peers.neighbours(coll.row.id, want, &raws).await {
            Ok(near) => {
                let changes: Vec<(u64, Vec<Remote>)> =
                    removed.iter().map(|(id, _)| *id).zip(near).collect();
                peers.mark_stale(coll.row.id, &changes).await;
            }
            Err(e) => tracing::warn!(
                collection = %coll.row.name,
                error = %e,
                "deleted images' neighbours on other shards are not marked stale: their refined scores stay older until those shards refresh"
            ),
        }
    }

    /// `Neighbours` of a peer shard: the `k` nearest raw neighbours here of
    /// each vector, nearest first.
    pub async fn neighbours(
        &self,
        collection_id: i64,
        k: usize,
        vectors: Vec<Vec<f32>>,
    ) -> Result<Vec<Vec<(u64, f32)>>> {
        if vectors.len() > MAX_QUERIES {
            return Err(Error::InvalidArgument(format!(
                "{} vectors in one neighbours call, the limit is {MAX_QUERIES}",
                vectors.len()
            )));
        }
        if k == 0 || k > MAX_K {
            return Err(Error::InvalidArgument(format!(
                "k is {k}: ask for 1 to {MAX_K} neighbours"
            )));
        }
        let coll = self.by_id(collection_id)?;
        let dims = coll.row.dims as usize;
        if let Some(v) = vectors.iter().find(|v| v.len() != dims) {
            return Err(Error::InvalidArgument(format!(
                "a vector has {} dimensions, collection {:?} has {dims}",
                v.len(),
                coll.row.name
            )));
        }
        let rule = self.probe;
        tokio::task::spawn_blocking(move || {
            let mem = coll.mem.read();
            vectors
                .iter()
                .map(|v| mem.raw_neighbours(v, k, rule))
                .collect()
        })
        .await
        .map_err(|e| Error::Internal(format!("neighbours task: {e}")))
    }

    /// `MarkStale` of a peer shard: for each change (an image added to or
    /// deleted from another shard, with its raw neighbours here), the
    /// augmented vectors it enters or leaves go stale. Answers how many.
    pub async fn mark_stale(&self, collection_id: i64, changes: Vec<Change>) -> Result<u64> {
        if changes.len() > MAX_QUERIES {
            return Err(Error::InvalidArgument(format!(
                "{} changes in one call, the limit is {MAX_QUERIES}",
                changes.len()
            )));
        }
        let coll = self.by_id(collection_id)?;
        // The log lock before the memory lock, as the follow loop's swap.
        let mut reloading = coll.reloading.lock();
        let marked = {
            let mut mem = coll.mem.write();
            changes
                .iter()
                .map(|(id, near)| mem.mark_changed_elsewhere(*id, near) as u64)
                .sum()
        };
        if let Some(log) = reloading.as_mut() {
            log.extend(changes);
        }
        Ok(marked)
    }

    /// A physical collection by its database id (peers name collections so:
    /// an alias may point elsewhere on a shard that follows later).
    fn by_id(&self, collection_id: i64) -> Result<Arc<Collection>> {
        self.catalog
            .read()
            .collections
            .get(&collection_id)
            .cloned()
            .ok_or_else(|| {
                Error::NotFound(format!(
                    "no collection with id {collection_id} here yet: this shard loads it when it follows the database"
                ))
            })
    }
}
