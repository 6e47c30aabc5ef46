//! A sharded index seen as one. Every shard stores into the same database
//! but holds in memory only the class partitions it owns, so searches ask
//! every shard and merge their hits, an image is written through the shard
//! that owns its partition, deletes and labels go to every shard, and
//! collection counts and statistics are summed. With one shard each of
//! these is the plain call.

use std::collections::HashMap;
use std::time::{Duration, Instant};

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
        let started = Instant::now();
        let (top_k, offset) = (msg.top_k, msg.offset);
        let wide = widened(msg);
        let first = self
            .index_each("Search", timeout, asking_terms(wide.clone()), search)
            .await?;
        let Some(terms) = expansion_of(&first) else {
            return Ok(merge_search(first, top_k, offset, None));
        };
        // Refined: the second pass on every shard with the best terms of
        // all, as one node holding every image expands the query.
        let nearest = terms.first().map(|t| t.id);
        let scanned = vectors_scanned(&first);
        let second = pb::IndexSearchRequest {
            expansion: terms,
            ..wide
        };
        let left = time_left(timeout, started)?;
        let answers = self.index_each("Search", left, second, search).await?;
        let mut out = merge_search(answers, top_k, offset, nearest);
        if let Some(s) = out.stats.as_mut() {
            s.vectors_scanned += scanned;
        }
        Ok(out)
    }

    /// Many searches over every shard, each merged on its own (refined
    /// ones in two passes, like a single search); a query one shard
    /// refused fails with that shard's error.
    pub(crate) async fn index_search_batch(
        &self,
        req: pb::IndexSearchBatchRequest,
        timeout: Duration,
    ) -> Result<pb::IndexSearchBatchResponse> {
        let batch = |mut c: crate::upstream::IndexClient, r| async move { c.search_batch(r).await };
        if !self.index.is_sharded() {
            return self.index_rpc("SearchBatch", timeout, req, batch).await;
        }
        let started = Instant::now();
        let n = req.queries.len();
        let pages: Vec<(u32, u32)> = req.queries.iter().map(|q| (q.top_k, q.offset)).collect();
        let wide: Vec<pb::IndexSearchRequest> = req.queries.into_iter().map(widened).collect();
        let ask = pb::IndexSearchBatchRequest {
            queries: wide.iter().cloned().map(asking_terms).collect(),
        };
        let mut found = per_query(
            self.index_each("SearchBatch", timeout, ask, batch).await?,
            n,
        );
        let mut nearest = vec![None; n];
        let mut scanned = vec![0; n];
        let (mut again, mut second) = (Vec::new(), Vec::new());
        for (i, (answers, q)) in found.iter().zip(wide).enumerate() {
            let Some(terms) = answers.as_ref().ok().and_then(|a| expansion_of(a)) else {
                continue;
            };
            nearest[i] = terms.first().map(|t| t.id);
            scanned[i] = answers.as_ref().map_or(0, |a| vectors_scanned(a));
            again.push(i);
            second.push(pb::IndexSearchRequest {
                expansion: terms,
                ..q
            });
        }
        if !second.is_empty() {
            let wide = pb::IndexSearchBatchRequest { queries: second };
            let left = time_left(timeout, started)?;
            let answers = self.index_each("SearchBatch", left, wide, batch).await?;
            for (i, a) in again.iter().zip(per_query(answers, again.len())) {
                found[*i] = a;
            }
        }
        let items = found
            .into_iter()
            .zip(pages)
            .enumerate()
            .map(|(i, (answers, (top_k, offset)))| match answers {
                Err(e) => pb::IndexSearchBatchItem {
                    response: None,
                    error: Some(e),
                },
                Ok(answers) => {
                    let mut r = merge_search(answers, top_k, offset, nearest[i]);
                    if let Some(s) = r.stats.as_mut() {
                        s.vectors_scanned += scanned[i];
                    }
                    pb::IndexSearchBatchItem {
                        response: Some(r),
                        error: None,
                    }
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

/// What is left of a search's `timeout` for its second pass: both passes
/// share the one deadline the caller gave.
fn time_left(timeout: Duration, started: Instant) -> Result<Duration> {
    let left = timeout.saturating_sub(started.elapsed());
    if left.is_zero() {
        return Err(Error::DeadlineExceeded {
            service: crate::error::Upstream::Index,
            detail: format!(
                "a refined search over the shards took over {} ms before its second pass",
                timeout.as_millis()
            ),
        });
    }
    Ok(left)
}

/// A search that may rank refined (its mode, or the shards' default)
/// first asks every shard for its expansion terms; others are answered.
fn asking_terms(mut q: pb::IndexSearchRequest) -> pb::IndexSearchRequest {
    let mode = q.mode;
    q.expansion_only =
        mode == pb::SearchMode::Refined as i32 || mode == pb::SearchMode::Unspecified as i32;
    q
}

/// The shards' terms ranked together, the best `expansion_k` (at least
/// the nearest image); None when the shards ranked otherwise and answered
/// their hits, when they found nothing, or when they answered refined
/// hits without terms (versions before expansion across shards), all of
/// which merge as they are.
fn expansion_of(answers: &[pb::IndexSearchResponse]) -> Option<Vec<pb::ExpansionTerm>> {
    let refined = answers
        .iter()
        .any(|a| a.ranked_by == pb::RankedBy::RefinedScore as i32);
    let keep = answers.iter().map(|a| a.expansion_k).max()?.max(1) as usize;
    let mut terms: Vec<pb::ExpansionTerm> = answers
        .iter()
        .flat_map(|a| a.expansion.iter().cloned())
        .collect();
    if !refined || terms.is_empty() {
        return None;
    }
    terms.sort_by(|a, b| a.rank.total_cmp(&b.rank).then(a.id.cmp(&b.id)));
    terms.dedup_by_key(|t| t.id);
    terms.truncate(keep);
    Some(terms)
}

fn vectors_scanned(answers: &[pb::IndexSearchResponse]) -> u64 {
    answers
        .iter()
        .filter_map(|a| a.stats.as_ref())
        .map(|s| s.vectors_scanned)
        .sum()
}

/// The shards' batch answers, query by query: every shard's answer, or
/// the first error a shard gave.
fn per_query(
    answers: Vec<pb::IndexSearchBatchResponse>,
    n: usize,
) -> Vec<std::result::Result<Vec<pb::IndexSearchResponse>, pb::ItemError>> {
    let mut out: Vec<_> = (0..n).map(|_| Ok(Vec::new())).collect();
    for shard in answers {
        for (slot, item) in out.iter_mut().zip(shard.items) {
            match (slot.as_mut(), item.response, item.error) {
                (Err(_), ..) => {}
                (Ok(_), _, Some(e)) => *slot = Err(e),
                (Ok(found), Some(r), None) => found.push(r),
                (Ok(_), None, None) => {}
            }
        }
    }
    out
}

/// The page `offset .. offset + top_k` of the shards' hits ranked together,
/// as one node ranks them: by distance, or for refined ranking by score
/// after the one image nearest to the query (`nearest`, known from the
/// expansion terms; else the nearest of the shards' first hits).
pub(crate) fn merge_search(
    answers: Vec<pb::IndexSearchResponse>,
    top_k: u32,
    offset: u32,
    nearest: Option<u64>,
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
        let nearest = nearest.or_else(|| {
            hits.iter()
                .filter(|h| firsts.contains(&h.id))
                .min_by(|a, b| by_distance(a, b))
                .map(|h| h.id)
        });
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
