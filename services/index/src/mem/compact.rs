//! Compact storage's searches: the int8 codes rank a short list, exact
//! vectors read from a [`VectorSource`] (the database) decide within it.

use std::collections::HashMap;

use super::expand::expand;
use super::search::{Cand, Space, TopK};
use super::{
    terms_wanted, Expansion, Hit, MemIndex, Mode, ProbeRule, Query, Searched, Stats, Term,
};
use crate::kernels::{self, similarity};

/// Receives every (id, vector) of [`VectorSource::scan`], borrowed: a scan
/// of millions of vectors copies none of them.
pub type ScanBatch<'a> = dyn FnMut(u64, &[f32]) + 'a;

/// Where compact storage reads the exact (f32) vectors it re-ranks by:
/// the database in the service.
pub trait VectorSource: Sync {
    /// The stored unit vectors of `ids`, in any order; ids it does not
    /// hold are left out.
    fn fetch(&self, ids: &[u64]) -> Result<Vec<(u64, Vec<f32>)>, String>;
    /// Calls `each` with every stored vector (exact search).
    fn scan(&self, each: &mut ScanBatch<'_>) -> Result<(), String>;
    /// Where a search that runs more than once keeps the short lists it
    /// ranked, so that a later run of the same search reuses them.
    fn shortlists(&self) -> Option<&Shortlists> {
        None
    }
}

/// The short lists one search ranked, by the vector and depth asked. The
/// service runs a compact search twice: the first run only learns which
/// f32 vectors to read from the database (with the lock released), and
/// ranking the codes again in the second (choosing cells among thousands
/// by their centroids, then scanning them) was half of a search's time at
/// 10M. An entry written between the runs is not in a reused list, as if
/// the search had run before it; one deleted or changed meanwhile is left
/// out or checked again when the hits are made.
#[derive(Debug, Default)]
pub struct Shortlists(parking_lot::Mutex<Vec<Ranked>>);

/// A short list: the vector it was ranked for, its depth, and what ranked.
type Ranked = (Vec<f32>, usize, Vec<Cand>, Stats);

impl Shortlists {
    fn get(&self, vector: &[f32], k: usize) -> Option<(Vec<Cand>, Stats)> {
        self.0
            .lock()
            .iter()
            .find(|(v, depth, ..)| *depth == k && v.as_slice() == vector)
            .map(|(.., c, s)| (c.clone(), s.clone()))
    }

    fn put(&self, vector: &[f32], k: usize, found: &(Vec<Cand>, Stats)) {
        self.0
            .lock()
            .push((vector.to_vec(), k, found.0.clone(), found.1.clone()));
    }
}

/// The vectors decoded from memory's own codes: what `search` re-ranks by
/// in compact storage when no source is given (tools and tests).
pub(super) struct Decoded<'a>(pub(super) &'a MemIndex);

impl VectorSource for Decoded<'_> {
    fn fetch(&self, ids: &[u64]) -> Result<Vec<(u64, Vec<f32>)>, String> {
        Ok(ids
            .iter()
            .filter_map(|&id| self.0.feature(id).map(|(_, v)| (id, v)))
            .collect())
    }

    fn scan(&self, each: &mut ScanBatch<'_>) -> Result<(), String> {
        for c in self.0.cells.values() {
            for slot in 0..c.len() {
                each(c.ids[slot], &c.approx(slot));
            }
        }
        Ok(())
    }
}

/// Candidates compact storage re-ranks with exact vectors for a top k:
/// int8 distances are within about 1e-3 of the exact ones, so a margin of
/// k (at least 32, at most 1024) holds the true top k.
fn rerank_depth(k: usize) -> usize {
    k.saturating_add(k.clamp(32, 1024))
}

impl MemIndex {
    /// Compact storage: the codes rank a short list, exact vectors from
    /// `source` decide within it. Exact mode reads every vector there.
    pub(super) fn search_compact(
        &self,
        q: &Query<'_>,
        rule: ProbeRule,
        source: &dyn VectorSource,
        expansion: &Expansion,
    ) -> Result<Searched, String> {
        let max_dist = if q.min_similarity > 0.0 {
            1.0 / q.min_similarity - 1.0
        } else {
            f32::INFINITY
        };
        if q.mode == Mode::Refined {
            let (mut scored, stats, terms) = self.refined_compact(q, rule, source, expansion)?;
            scored.truncate(q.top_k);
            // Refined scores by the expanded query; the distance shown is
            // the raw one.
            let hits = scored
                .into_iter()
                .filter_map(|(id, score, d)| {
                    (d <= max_dist).then(|| self.admitted_hit(q, id, d, score))?
                })
                .collect();
            return Ok(Searched { hits, stats, terms });
        }
        let (mut near, stats) = if q.mode == Mode::Exact {
            self.exact_from(q, source)?
        } else {
            let (cands, stats) = self.shortlist(q, q.vector, q.top_k, rule, source);
            let vecs = fetch_map(source, &cands)?;
            let near = cands
                .iter()
                .filter_map(|c| Some((c.id, kernels::distance(q.vector, vecs.get(&c.id)?))))
                .collect();
            (near, stats)
        };
        near.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
        near.truncate(q.top_k);
        let hits = near
            .into_iter()
            .filter_map(|(id, d)| {
                (d <= max_dist).then(|| self.admitted_hit(q, id, d, similarity(d)))?
            })
            .collect();
        Ok(Searched {
            hits,
            stats,
            terms: Vec::new(),
        })
    }

    /// The hit of `id` if the filter still admits it: a reused short list
    /// was ranked before the lock was last released.
    fn admitted_hit(&self, q: &Query<'_>, id: u64, d: f32, score: f32) -> Option<Hit> {
        let h = self.hit(id, d, score)?;
        (q.filter.is_empty() || q.filter.admits(&h.meta)).then_some(h)
    }

    /// The codes' nearest `k` (plus the re-rank margin) to `vector`, by
    /// the mode of `q`, without a similarity bound (that applies to exact
    /// distances).
    fn shortlist(
        &self,
        q: &Query<'_>,
        vector: &[f32],
        k: usize,
        rule: ProbeRule,
        source: &dyn VectorSource,
    ) -> (Vec<Cand>, Stats) {
        let memo = source.shortlists();
        if let Some(found) = memo.and_then(|m| m.get(vector, k)) {
            return found;
        }
        let wide = Query {
            vector,
            top_k: rerank_depth(k),
            min_similarity: 0.0,
            mode: if q.mode == Mode::Partition {
                Mode::Partition
            } else {
                Mode::Probe
            },
            ..q.clone()
        };
        let found = self.ranked(&wide, rule, Space::Raw);
        if let Some(m) = memo {
            m.put(vector, k, &found);
        }
        found
    }

    /// A true brute force over the source's f32 vectors of the entries
    /// held here: (id, distance), nearest first.
    fn exact_from(
        &self,
        q: &Query<'_>,
        source: &dyn VectorSource,
    ) -> Result<(Vec<(u64, f32)>, Stats), String> {
        let mut top = TopK::new(q.top_k, 0.0);
        let every = q.filter.is_empty();
        let mut scanned = 0u64;
        let mut touched = std::collections::HashSet::new();
        source.scan(&mut |id, v| {
            // The source may hold more than this index (other shards).
            let Some(&(class, list, slot)) = self.locate.get(&id) else {
                return;
            };
            if Some(id) == q.exclude_id {
                return;
            }
            let Some(cell) = self.cells.get(&(class, list)) else {
                return;
            };
            if !every && !q.filter.admits(&cell.meta[slot]) {
                return;
            }
            scanned += 1;
            touched.insert(class);
            top.offer(Cand {
                dist: kernels::distance(q.vector, v),
                id,
                class,
                slot,
            });
        })?;
        let mut cands = top.heap.into_vec();
        cands.sort();
        let stats = Stats {
            partitions_searched: touched.len() as u32,
            partitions_total: self.classes.len() as u32,
            vectors_scanned: scanned,
            vectors_total: self.len() as u64,
        };
        Ok((cands.into_iter().map(|c| (c.id, c.dist)).collect(), stats))
    }

    /// Refined ranking in compact storage: alpha query expansion over the
    /// exact raw vectors of the query's nearest images, then the expanded
    /// query ranks (there are no augmented copies). (id, score, raw
    /// distance to the query), best first, the nearest image by distance
    /// kept first, and the terms when `expansion` asks only for them. The
    /// distances come from the vectors the ranking read: the hits cost no
    /// second read of the database.
    fn refined_compact(
        &self,
        q: &Query<'_>,
        rule: ProbeRule,
        source: &dyn VectorSource,
        expansion: &Expansion,
    ) -> Result<(Vec<Scored>, Stats, Vec<Term>), String> {
        let r = self.refine;
        let (own, mut stats, mut vecs) = match expansion.given() {
            Some(_) => (Vec::new(), self.no_stats(), HashMap::new()),
            None => {
                let (cands, stats) = self.shortlist(q, q.vector, q.top_k.max(r.qe_k), rule, source);
                let vecs = fetch_map(source, &cands)?;
                let mut near: Vec<(u64, f32)> = cands
                    .iter()
                    .filter_map(|c| Some((c.id, kernels::dot(q.vector, vecs.get(&c.id)?))))
                    .collect();
                near.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
                let terms = near
                    .iter()
                    .take(terms_wanted(r.qe_k))
                    .map(|&(id, dot)| Term {
                        id,
                        rank: -dot,
                        weight: dot.max(0.0).powf(r.qe_alpha),
                        vector: vecs[&id].clone(),
                    })
                    .collect();
                (terms, stats, vecs)
            }
        };
        if *expansion == Expansion::TermsOnly {
            return Ok((Vec::new(), stats, own));
        }
        let terms = expansion.given().unwrap_or(&own);
        let expanded = expand(q.vector, terms, r.qe_k);
        let (second, s2) = self.shortlist(q, &expanded, q.top_k, rule, source);
        stats.vectors_scanned += s2.vectors_scanned;
        stats.partitions_searched = stats.partitions_searched.max(s2.partitions_searched);
        let missing: Vec<Cand> = second
            .iter()
            .filter(|c| !vecs.contains_key(&c.id))
            .copied()
            .collect();
        vecs.extend(fetch_map(source, &missing)?);
        let scored = |id: u64, v: &[f32]| {
            (
                id,
                kernels::dot(&expanded, v),
                kernels::distance(q.vector, v),
            )
        };
        let mut ranked: Vec<Scored> = second
            .iter()
            .filter_map(|c| Some(scored(c.id, vecs.get(&c.id)?)))
            .collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        // The nearest image stays first; with terms from every shard, only
        // the shard holding it puts it there (a term's vector is its raw
        // vector here).
        if let Some(nearest) = terms.first() {
            ranked.retain(|c| c.0 != nearest.id);
            if self.locate.contains_key(&nearest.id) {
                ranked.insert(0, scored(nearest.id, &nearest.vector));
            }
        }
        Ok((ranked, stats, Vec::new()))
    }
}

/// A refined hit: (id, score by the expanded query, raw distance to the
/// query).
type Scored = (u64, f32, f32);

/// The source's vectors of `cands`, by id.
fn fetch_map(source: &dyn VectorSource, cands: &[Cand]) -> Result<HashMap<u64, Vec<f32>>, String> {
    let ids: Vec<u64> = cands.iter().map(|c| c.id).collect();
    Ok(source.fetch(&ids)?.into_iter().collect())
}
