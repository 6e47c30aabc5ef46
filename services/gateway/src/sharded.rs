//! A sharded index seen as one. Every shard stores into the same database
//! but holds in memory only the class partitions it owns, so searches ask
//! every shard and merge their hits, an image is written through the shard
//! that owns its partition, deletes and labels go to every shard, and
//! collection counts and statistics are summed. With one shard each of
//! these is the plain call.

use std::collections::HashMap;
use std::time::Duration;

use cbir_api::v1 as pb;

use crate::error::{Error, Result};
use crate::gateway::Gateway;

impl Gateway {
    /// One search over every shard (the owner alone for partition mode).
    pub(crate) async fn index_search(
        &self,
        msg: pb::IndexSearchRequest,
        timeout: Duration,
    ) -> Result<pb::IndexSearchResponse> {
        let search = |mut c: crate::upstream::IndexClient, r| async move { c.search(r).await };
        if !self.index.is_sharded() {
            return self.index_rpc("Search", timeout, msg, search).await;
        }
        if msg.mode == pb::SearchMode::Partition as i32 && msg.predicted_class >= 0 {
            let owner = self.index.owner(msg.predicted_class);
            return self.index_on(owner, "Search", timeout, msg, search).await;
        }
        let (top_k, offset) = (msg.top_k, msg.offset);
        let answers = self
            .index_each("Search", timeout, widened(msg), search)
            .await?;
        Ok(merge_search(answers, top_k, offset))
    }

    /// Many searches over every shard, each merged on its own; a query one
    /// shard refused fails with that shard's error.
    pub(crate) async fn index_search_batch(
        &self,
        req: pb::IndexSearchBatchRequest,
        timeout: Duration,
    ) -> Result<pb::IndexSearchBatchResponse> {
        let batch = |mut c: crate::upstream::IndexClient, r| async move { c.search_batch(r).await };
        if !self.index.is_sharded() {
            return self.index_rpc("SearchBatch", timeout, req, batch).await;
        }
        let pages: Vec<(u32, u32)> = req.queries.iter().map(|q| (q.top_k, q.offset)).collect();
        let wide = pb::IndexSearchBatchRequest {
            queries: req.queries.into_iter().map(widened).collect(),
        };
        let answers = self.index_each("SearchBatch", timeout, wide, batch).await?;
        let mut per_shard: Vec<_> = answers.into_iter().map(|a| a.items.into_iter()).collect();
        let items = pages
            .into_iter()
            .map(|(top_k, offset)| {
                let mut found = Vec::with_capacity(per_shard.len());
                for shard in &mut per_shard {
                    let item = shard.next().unwrap_or_default();
                    match (item.response, item.error) {
                        (_, Some(e)) => {
                            return pb::IndexSearchBatchItem {
                                response: None,
                                error: Some(e),
                            }
                        }
                        (Some(r), None) => found.push(r),
                        (None, None) => {}
                    }
                }
                pb::IndexSearchBatchItem {
                    response: Some(merge_search(found, top_k, offset)),
                    error: None,
                }
            })
            .collect();
        Ok(pb::IndexSearchBatchResponse { items })
    }

    /// Stores records, each batch through the shard that owns its
    /// records' partitions; the results in the order of `records`.
    pub(crate) async fn index_upsert(
        &self,
        msg: pb::UpsertRequest,
        timeout: Duration,
    ) -> Result<pb::UpsertResponse> {
        let upsert = |mut c: crate::upstream::IndexClient, r| async move { c.upsert(r).await };
        if !self.index.is_sharded() {
            return self.index_rpc("Upsert", timeout, msg, upsert).await;
        }
        let n = msg.records.len();
        let mut groups: HashMap<usize, (Vec<usize>, Vec<pb::ImageRecord>)> = HashMap::new();
        for (i, r) in msg.records.into_iter().enumerate() {
            let g = groups
                .entry(self.index.owner(r.predicted_class))
                .or_default();
            g.0.push(i);
            g.1.push(r);
        }
        let calls = groups.into_iter().map(|(shard, (at, records))| {
            let part = pb::UpsertRequest {
                collection: msg.collection.clone(),
                records,
                replace: msg.replace,
            };
            async move {
                let r = self
                    .index_on(shard, "Upsert", timeout, part, upsert)
                    .await?;
                if r.results.len() != at.len() {
                    return Err(Error::Internal(format!(
                        "index shard {shard} answered {} results for {} records",
                        r.results.len(),
                        at.len()
                    )));
                }
                Ok((at, r.results))
            }
        });
        let mut results = vec![pb::UpsertResult::default(); n];
        for (at, rs) in futures::future::try_join_all(calls).await? {
            for (i, r) in at.into_iter().zip(rs) {
                results[i] = r;
            }
        }
        Ok(pb::UpsertResponse { results })
    }

    /// Deletes images on every shard: the first to commit removes the
    /// rows, each drops them from its memory; the rows removed.
    pub(crate) async fn index_delete(
        &self,
        msg: pb::DeleteRequest,
        timeout: Duration,
    ) -> Result<u64> {
        let answers = self
            .index_each("Delete", timeout, msg, |mut c, r| async move {
                c.delete(r).await
            })
            .await?;
        Ok(answers.iter().map(|a| a.deleted).sum())
    }

    /// Empties a collection on every shard; the images removed.
    pub(crate) async fn index_clear(&self, name: &str, timeout: Duration) -> Result<u64> {
        let msg = pb::ClearRequest {
            collection: name.to_string(),
        };
        let answers = self
            .index_each(
                "Clear",
                timeout,
                msg,
                |mut c, r| async move { c.clear(r).await },
            )
            .await?;
        Ok(answers.iter().map(|a| a.removed).sum())
    }

    /// Creates a collection through the first shard (its answer is the
    /// caller's), then on the others, which take the one now stored.
    pub(crate) async fn index_create_collection(
        &self,
        msg: pb::CreateCollectionRequest,
        timeout: Duration,
    ) -> Result<pb::Collection> {
        let create =
            |mut c: crate::upstream::IndexClient, r| async move { c.create_collection(r).await };
        let first = self
            .index_on(0, "CreateCollection", timeout, msg.clone(), create)
            .await?
            .collection
            .ok_or_else(|| Error::Internal("CreateCollection answered without one".into()))?;
        self.announce_collection(&first, timeout).await?;
        Ok(first)
    }

    /// Makes every shard but the first load collection `c`, which the
    /// first created (or imported) in the shared database.
    pub(crate) async fn announce_collection(
        &self,
        c: &pb::Collection,
        timeout: Duration,
    ) -> Result<()> {
        let msg = pb::CreateCollectionRequest {
            name: c.name.clone(),
            model: c.model.clone(),
            dims: c.dims,
            description: c.description.clone(),
            if_not_exists: true,
        };
        let others = (1..self.index.count()).map(|shard| {
            self.index_on(
                shard,
                "CreateCollection",
                timeout,
                msg.clone(),
                |mut c, r| async move { c.create_collection(r).await },
            )
        });
        futures::future::try_join_all(others).await?;
        Ok(())
    }

    /// Deletes a collection through the first shard, then on the others
    /// (which may have dropped it already from the database).
    pub(crate) async fn index_delete_collection(
        &self,
        name: &str,
        timeout: Duration,
    ) -> Result<()> {
        let msg = pb::DeleteCollectionRequest {
            name: name.to_string(),
        };
        let delete =
            |mut c: crate::upstream::IndexClient, r| async move { c.delete_collection(r).await };
        self.index_on(0, "DeleteCollection", timeout, msg.clone(), delete)
            .await?;
        let others = (1..self.index.count()).map(|shard| {
            let msg = msg.clone();
            async move {
                match self
                    .index_on(shard, "DeleteCollection", timeout, msg, delete)
                    .await
                {
                    Err(Error::NotFound(_)) => Ok(()),
                    done => done.map(|_| ()),
                }
            }
        });
        futures::future::try_join_all(others).await?;
        Ok(())
    }

    /// Every collection with its images counted over all shards.
    pub(crate) async fn index_list_collections(
        &self,
        timeout: Duration,
    ) -> Result<Vec<pb::Collection>> {
        let answers = self
            .index_each(
                "ListCollections",
                timeout,
                pb::ListCollectionsRequest {},
                |mut c, r| async move { c.list_collections(r).await },
            )
            .await?;
        Ok(merge_collection_lists(
            answers.into_iter().map(|a| a.collections).collect(),
        ))
    }

    /// A collection with its images counted over all shards.
    pub(crate) async fn index_get_collection(
        &self,
        name: &str,
        timeout: Duration,
    ) -> Result<pb::Collection> {
        let msg = pb::GetCollectionRequest {
            name: name.to_string(),
        };
        let answers = self
            .index_each("GetCollection", timeout, msg, |mut c, r| async move {
                c.get_collection(r).await
            })
            .await?;
        let mut found = answers.into_iter().filter_map(|a| a.collection);
        let mut c = found
            .next()
            .ok_or_else(|| Error::Internal("GetCollection answered without a collection".into()))?;
        c.count += found.map(|o| o.count).sum::<u64>();
        Ok(c)
    }

    /// Statistics summed over the shards (each holds its own partitions).
    pub(crate) async fn index_stats(
        &self,
        name: &str,
        timeout: Duration,
    ) -> Result<pb::StatsResponse> {
        let msg = pb::StatsRequest {
            collection: name.to_string(),
        };
        let answers = self
            .index_each(
                "Stats",
                timeout,
                msg,
                |mut c, r| async move { c.stats(r).await },
            )
            .await?;
        let answers = answers
            .into_iter()
            .enumerate()
            .map(|(shard, mut a)| {
                if let Some(r) = &mut a.refinement {
                    r.operation_id = self
                        .index
                        .operation_id(shard, std::mem::take(&mut r.operation_id));
                }
                a
            })
            .collect();
        Ok(merge_stats(answers))
    }
}

/// A search as one shard must answer it for the merge: the best
/// `offset + top_k` hits, from the first.
fn widened(mut q: pb::IndexSearchRequest) -> pb::IndexSearchRequest {
    q.top_k = q.top_k.saturating_add(q.offset);
    q.offset = 0;
    q
}

/// The page `offset .. offset + top_k` of the shards' hits ranked together,
/// as one node ranks them: by distance, or for refined ranking by score
/// after the one image nearest to the query.
pub(crate) fn merge_search(
    answers: Vec<pb::IndexSearchResponse>,
    top_k: u32,
    offset: u32,
) -> pb::IndexSearchResponse {
    let refined = answers
        .iter()
        .any(|a| a.ranked_by == pb::RankedBy::RefinedScore as i32);
    let mut out = pb::IndexSearchResponse {
        stats: Some(pb::SearchStats::default()),
        ..Default::default()
    };
    let mut firsts = Vec::new();
    let mut hits = Vec::new();
    for a in answers {
        if out.mode == 0 {
            out.mode = a.mode;
        }
        if out.ranked_by == 0 {
            out.ranked_by = a.ranked_by;
        }
        out.has_more |= a.has_more;
        if let (Some(total), Some(s)) = (out.stats.as_mut(), a.stats) {
            total.partitions_searched += s.partitions_searched;
            total.partitions_total += s.partitions_total;
            total.vectors_scanned += s.vectors_scanned;
            total.vectors_total += s.vectors_total;
            total.took_us = total.took_us.max(s.took_us);
        }
        if let Some(first) = a.hits.first() {
            firsts.push(first.id);
        }
        hits.extend(a.hits);
    }
    let by_distance = |a: &pb::SearchHit, b: &pb::SearchHit| {
        a.distance.total_cmp(&b.distance).then(a.id.cmp(&b.id))
    };
    if refined {
        let nearest = hits
            .iter()
            .filter(|h| firsts.contains(&h.id))
            .min_by(|a, b| by_distance(a, b))
            .map(|h| h.id);
        hits.sort_by(|a, b| b.score.total_cmp(&a.score).then_with(|| by_distance(a, b)));
        if let Some(pos) = nearest.and_then(|id| hits.iter().position(|h| h.id == id)) {
            let h = hits.remove(pos);
            hits.insert(0, h);
        }
    } else {
        hits.sort_by(by_distance);
    }
    let want = offset as usize + top_k as usize;
    out.has_more |= hits.len() > want;
    out.hits = hits
        .into_iter()
        .skip(offset as usize)
        .take(top_k as usize)
        .collect();
    out
}

/// The shards' collection lists as one: in the first shard's order, each
/// collection's images counted over all shards.
fn merge_collection_lists(lists: Vec<Vec<pb::Collection>>) -> Vec<pb::Collection> {
    let mut out: Vec<pb::Collection> = Vec::new();
    let mut at: HashMap<String, usize> = HashMap::new();
    for list in lists {
        for c in list {
            match at.get(&c.name) {
                Some(&i) => out[i].count += c.count,
                None => {
                    at.insert(c.name.clone(), out.len());
                    out.push(c);
                }
            }
        }
    }
    out
}

/// The shards' statistics as one collection's: partitions side by side,
/// counts, bytes, labels and stale entries summed.
fn merge_stats(answers: Vec<pb::StatsResponse>) -> pb::StatsResponse {
    let mut it = answers.into_iter();
    let mut out = it.next().unwrap_or_default();
    let mut labels: HashMap<String, u64> =
        out.labels.drain(..).map(|l| (l.label, l.count)).collect();
    for a in it {
        if let (Some(c), Some(o)) = (out.collection.as_mut(), a.collection) {
            c.count += o.count;
        }
        out.partitions.extend(a.partitions);
        out.bytes_in_memory += a.bytes_in_memory;
        out.count += a.count;
        for l in a.labels {
            *labels.entry(l.label).or_default() += l.count;
        }
        match (out.refinement.as_mut(), a.refinement) {
            (Some(r), Some(o)) => {
                r.stale += o.stale;
                r.bytes += o.bytes;
                if r.operation_id.is_empty() {
                    r.operation_id = o.operation_id;
                }
            }
            (None, o) => out.refinement = o,
            (Some(_), None) => {}
        }
    }
    out.partitions.sort_by_key(|p| p.class_index);
    let mut labels: Vec<pb::LabelCount> = labels
        .into_iter()
        .map(|(label, count)| pb::LabelCount { label, count })
        .collect();
    labels.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.label.cmp(&b.label)));
    out.labels = labels;
    out
}

#[cfg(test)]
#[path = "sharded_tests.rs"]
mod tests;
