//! Searches over a collection's cells: exact, one partition, or probing
//! cells in order of promise until the top k stops changing.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashSet};

use super::compact::{Decoded, VectorSource};
use super::expand::expand;
use super::{
    terms_wanted, Cell, Expansion, Hit, MemIndex, Mode, ProbeRule, Query, Searched, Stats, Term,
};
use crate::kernels::{self, distance_from_dot, similarity};

/// Total vectors above which an exact search is split over two threads.
const PARALLEL_MIN: usize = 200_000;

/// Cells from which on a probe ranks classes before cells (the default of
/// `ProbeRule::class_first_cells`); about 2M vectors.
pub(super) const CLASS_FIRST_MIN_CELLS: usize = 1024;
/// The share of all cells (1 / this) whose classes a probe ranks cell by
/// cell when it ranks classes first.
const CLASS_FIRST_SHARE: usize = 8;

/// Each cell with its centroid's similarity to the query (codes).
fn by_centroid<'a>(cells: Vec<&'a Cell>, qc: (&[i8], f32)) -> Vec<(f32, &'a Cell)> {
    cells.into_iter().map(|c| (c.centroid_dot(qc), c)).collect()
}

/// Cells most promising first (ties by class, for the same order on
/// every run).
fn by_promise(cells: &mut [(f32, &Cell)]) {
    cells.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.class.cmp(&b.1.class)));
}

/// Which copy of the vectors a scan ranks by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Space {
    /// The vectors as stored.
    Raw,
    /// The augmented copies (refined ranking).
    Augmented,
}

/// A candidate in the top-k heap, worst (largest distance) on top.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cand {
    pub(super) dist: f32,
    pub(super) id: u64,
    pub(super) class: i32,
    pub(super) slot: usize,
}

impl Eq for Cand {}

impl Ord for Cand {
    fn cmp(&self, other: &Self) -> Ordering {
        self.dist
            .total_cmp(&other.dist)
            .then(self.id.cmp(&other.id))
    }
}

impl PartialOrd for Cand {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

pub(super) struct TopK {
    pub(super) k: usize,
    max_dist: f32,
    pub(super) heap: BinaryHeap<Cand>,
}

impl TopK {
    pub(super) fn new(k: usize, min_similarity: f32) -> Self {
        // similarity >= s  <=>  distance <= 1/s - 1
        let max_dist = if min_similarity > 0.0 {
            1.0 / min_similarity - 1.0
        } else {
            f32::INFINITY
        };
        Self {
            k,
            max_dist,
            heap: BinaryHeap::with_capacity(k.min(4096) + 1),
        }
    }

    /// True when the candidate entered the top k.
    pub(super) fn offer(&mut self, c: Cand) -> bool {
        if self.k == 0 || c.dist > self.max_dist {
            return false;
        }
        if self.heap.len() < self.k {
            self.heap.push(c);
            return true;
        }
        if self.heap.peek().is_some_and(|w| c < *w) {
            self.heap.pop();
            self.heap.push(c);
            return true;
        }
        false
    }
}

/// What the scan of one cell did.
#[derive(Debug, Clone, Copy, Default)]
struct Scanned {
    /// The top k changed.
    changed: bool,
    /// Entries the filter admitted (each was offered, or shortlisted).
    admitted: u64,
}

impl MemIndex {
    /// Offers every vector of `c` that `filter` admits to `top`. Rejected
    /// entries are skipped before any distance, so they neither take a
    /// place in the int8 shortlist nor in the top k. Exact mode compares
    /// every admitted vector in f32; the other modes take an int8 shortlist
    /// of large cells first.
    fn scan(
        &self,
        c: &Cell,
        q: &Query<'_>,
        (qcode, qscale): (&[i8], f32),
        top: &mut TopK,
        space: Space,
    ) -> Scanned {
        let d = self.dims;
        let (vecs, codes, scales) = match space {
            Space::Raw => (&c.vecs, &c.codes, &c.scales),
            Space::Augmented => (&c.aug, &c.aug_codes, &c.aug_scales),
        };
        let vector = |slot: usize| &vecs[slot * d..(slot + 1) * d];
        let every = q.filter.is_empty();
        let exclude = q.exclude_id;
        let admits =
            |slot: usize| Some(c.ids[slot]) != exclude && (every || q.filter.admits(&c.meta[slot]));
        let mut out = Scanned::default();
        let mut offer = |slot: usize, dot: f32, top: &mut TopK| {
            out.changed |= top.offer(Cand {
                dist: distance_from_dot(dot),
                id: c.ids[slot],
                class: c.class,
                slot,
            });
        };
        if c.compact {
            // Codes only: the approximate distances rank, and the caller
            // re-ranks its short list with exact vectors.
            let mut admitted = 0;
            for slot in (0..c.len()).filter(|&s| admits(s)) {
                admitted += 1;
                let approx = kernels::dot_i8(qcode, &codes[slot * d..(slot + 1) * d]) as f32
                    * scales[slot]
                    * qscale;
                offer(slot, approx, top);
            }
            out.admitted = admitted;
            return out;
        }
        let want = top.k.saturating_mul(4).saturating_add(64);
        // Exact is the yardstick every other mode's recall is measured
        // against: no approximation in it, whatever the cell's size.
        if q.mode != Mode::Exact && c.len() > want.saturating_mul(2) {
            // An int8 first pass keeps a generous shortlist; exact f32
            // distances decide among it.
            let mut short: BinaryHeap<(std::cmp::Reverse<i64>, usize)> =
                BinaryHeap::with_capacity(want + 1);
            let mut admitted = 0;
            for slot in (0..c.len()).filter(|&s| admits(s)) {
                admitted += 1;
                let approx = i64::from(kernels::dot_i8(qcode, &codes[slot * d..(slot + 1) * d]));
                let key = (approx as f64 * f64::from(scales[slot]) * 1e6) as i64;
                if short.len() < want {
                    short.push((std::cmp::Reverse(key), slot));
                } else if short
                    .peek()
                    .is_some_and(|(std::cmp::Reverse(w), _)| key > *w)
                {
                    short.pop();
                    short.push((std::cmp::Reverse(key), slot));
                }
            }
            for (_, slot) in short {
                let dot = kernels::dot(q.vector, vector(slot));
                offer(slot, dot, top);
            }
            out.admitted = admitted;
        } else {
            let mut admitted = 0;
            for slot in (0..c.len()).filter(|&s| admits(s)) {
                admitted += 1;
                let dot = kernels::dot(q.vector, vector(slot));
                offer(slot, dot, top);
            }
            out.admitted = admitted;
        }
        out
    }

    /// Nearest neighbours of `q`, closest first. Refined mode ranks by
    /// alpha query expansion over the augmented vectors; its hits show the
    /// raw query-to-image distance, and `score` is what ordered them.
    pub fn search(&self, q: &Query<'_>, rule: ProbeRule) -> (Vec<Hit>, Stats) {
        // Decoding never fails.
        self.search_with(q, rule, &Decoded(self))
            .unwrap_or_default()
    }

    /// `search`, with the exact vectors of compact storage read from
    /// `source` (full storage holds its own and ignores it).
    pub fn search_with(
        &self,
        q: &Query<'_>,
        rule: ProbeRule,
        source: &dyn VectorSource,
    ) -> Result<(Vec<Hit>, Stats), String> {
        self.search_expanding(q, rule, source, &Expansion::Own)
            .map(|s| (s.hits, s.stats))
    }

    /// `search_with`, a refined search expanding its query as `expansion`
    /// says (the other modes ignore it).
    pub fn search_expanding(
        &self,
        q: &Query<'_>,
        rule: ProbeRule,
        source: &dyn VectorSource,
        expansion: &Expansion,
    ) -> Result<Searched, String> {
        if self.compact() {
            return self.search_compact(q, rule, source, expansion);
        }
        Ok(self.search_full(q, rule, expansion))
    }

    /// What a search scanned before it scanned anything.
    pub(super) fn no_stats(&self) -> Stats {
        Stats {
            partitions_total: self.classes.len() as u32,
            vectors_total: self.len() as u64,
            ..Stats::default()
        }
    }

    fn search_full(&self, q: &Query<'_>, rule: ProbeRule, expansion: &Expansion) -> Searched {
        if q.mode != Mode::Refined {
            let (cands, stats) = self.ranked(q, rule, Space::Raw);
            let mut hits: Vec<Hit> = cands
                .into_iter()
                .filter_map(|c| {
                    let cell = self.cells.get(&self.cell_key(c.id))?;
                    let d = kernels::distance(q.vector, cell.vector(c.slot));
                    self.hit(c.id, d, similarity(d))
                })
                .collect();
            // The exact distances may swap neighbours the dot ranked within
            // its rounding.
            hits.sort_by(|a, b| a.distance.total_cmp(&b.distance).then(a.id.cmp(&b.id)));
            return Searched {
                hits,
                stats,
                terms: Vec::new(),
            };
        }
        let r = self.refine;
        let (own, mut stats) = match expansion.given() {
            Some(_) => (Vec::new(), self.no_stats()),
            None => self.terms_full(q, rule),
        };
        if *expansion == Expansion::TermsOnly {
            return Searched {
                hits: Vec::new(),
                stats,
                terms: own,
            };
        }
        let terms = expansion.given().unwrap_or(&own);
        let expanded = expand(q.vector, terms, r.qe_k);
        // Pass 2: the expanded query against the augmented vectors.
        let second = Query {
            vector: &expanded,
            mode: Mode::Probe,
            min_similarity: 0.0,
            ..q.clone()
        };
        let (mut ranked, s2) = self.ranked(&second, rule, Space::Augmented);
        stats.vectors_scanned += s2.vectors_scanned;
        stats.partitions_searched = stats.partitions_searched.max(s2.partitions_searched);
        // The nearest image by distance stays first: expansion lifts the
        // many images like the query's neighbours, but the one closest to
        // the query itself is the best single answer (P@1 stays probe's).
        // With terms from every shard, only the shard holding it puts it
        // first.
        if let Some(nearest) = terms.first() {
            ranked.retain(|c| c.id != nearest.id);
            if let Some(&(class, list, slot)) = self.locate.get(&nearest.id) {
                if let Some(cell) = self.cells.get(&(class, list)) {
                    let score = kernels::dot(&expanded, cell.augmented(slot));
                    ranked.insert(
                        0,
                        Cand {
                            dist: distance_from_dot(score),
                            id: nearest.id,
                            class,
                            slot,
                        },
                    );
                }
            }
            ranked.truncate(q.top_k);
        }
        let max_dist = if q.min_similarity > 0.0 {
            1.0 / q.min_similarity - 1.0
        } else {
            f32::INFINITY
        };
        let hits = ranked
            .into_iter()
            .filter_map(|c| {
                let cell = self.cells.get(&self.cell_key(c.id))?;
                let raw = kernels::distance(q.vector, cell.vector(c.slot));
                // The user's threshold is on the similarity they see.
                (raw <= max_dist)
                    .then(|| self.hit(c.id, raw, kernels::dot_from_distance(c.dist)))?
            })
            .collect();
        Searched {
            hits,
            stats,
            terms: Vec::new(),
        }
    }

    /// Pass 1 of refined ranking, raw vectors, as a probe search for the
    /// same results: the nearest image by distance, and the neighbours
    /// that expand the query (the images the filter admits: a filtered
    /// search expands within what it may return), with their augmented
    /// vectors.
    fn terms_full(&self, q: &Query<'_>, rule: ProbeRule) -> (Vec<Term>, Stats) {
        let r = self.refine;
        let first = Query {
            mode: Mode::Probe,
            top_k: q.top_k.max(r.qe_k),
            min_similarity: 0.0,
            ..q.clone()
        };
        let (near, stats) = self.ranked(&first, rule, Space::Raw);
        let terms = near
            .iter()
            .take(terms_wanted(r.qe_k))
            .filter_map(|c| {
                let cell = self.cells.get(&self.cell_key(c.id))?;
                let a = cell.augmented(c.slot);
                Some(Term {
                    id: c.id,
                    rank: c.dist,
                    weight: kernels::dot(q.vector, a).max(0.0).powf(r.qe_alpha),
                    vector: a.to_vec(),
                })
            })
            .collect();
        (terms, stats)
    }

    fn cell_key(&self, id: u64) -> (i32, u32) {
        self.locate
            .get(&id)
            .map_or((i32::MIN, 0), |&(class, list, _)| (class, list))
    }

    pub(super) fn hit(&self, id: u64, distance: f32, score: f32) -> Option<Hit> {
        let (class, list, slot) = *self.locate.get(&id)?;
        let cell = self.cells.get(&(class, list))?;
        Some(Hit {
            id,
            distance,
            similarity: similarity(distance),
            score,
            partition: class,
            meta: cell.meta[slot].clone(),
        })
    }

    /// The cells a probe reads, most promising first: the query's own
    /// class's nearest cell, then cells by the similarity of their
    /// centroid to the query. With many cells (thousands at 10M) ranking
    /// every centroid was a good part of a search: the classes are ranked
    /// first by their own centroids, and only the cells of the most
    /// promising classes (an eighth of all cells, at least a quarter of
    /// `rule.class_first_cells`, always the query's own class) are ranked.
    /// The others come back, unranked, for a search that has not settled
    /// within those.
    pub(super) fn probe_order<'a>(
        &'a self,
        q: &Query<'_>,
        qc: (&[i8], f32),
        rule: ProbeRule,
    ) -> (Vec<(f32, &'a Cell)>, Vec<&'a Cell>) {
        let (chosen, deferred) =
            if rule.class_first_cells == 0 || self.cells.len() < rule.class_first_cells {
                (self.cells.values().collect::<Vec<_>>(), Vec::new())
            } else {
                // At least a quarter of the threshold: 256 cells by default.
                let budget = (self.cells.len() / CLASS_FIRST_SHARE).max(rule.class_first_cells / 4);
                let mut classes: Vec<(f32, i32, usize)> = self
                    .classes
                    .iter()
                    .map(|(&class, info)| {
                        // A class not refreshed yet has no code: kept.
                        let dot = if Some(class) == q.predicted_class
                            || info.centroid_code.len() != qc.0.len()
                        {
                            f32::INFINITY
                        } else {
                            kernels::dot_i8(qc.0, &info.centroid_code) as f32
                                * qc.1
                                * info.centroid_scale
                        };
                        (dot, class, info.lists.len().max(1))
                    })
                    .collect();
                classes.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
                let mut keep = HashSet::new();
                let mut covered = 0;
                for (_, class, cells) in classes {
                    if covered >= budget {
                        break;
                    }
                    keep.insert(class);
                    covered += cells;
                }
                self.cells.values().partition(|c| keep.contains(&c.class))
            };
        let mut order = by_centroid(chosen, qc);
        if let Some(best_own) = order
            .iter_mut()
            .filter(|(_, c)| Some(c.class) == q.predicted_class)
            .max_by(|a, b| a.0.total_cmp(&b.0))
        {
            best_own.0 = f32::INFINITY;
        }
        by_promise(&mut order);
        (order, deferred)
    }

    /// The candidates nearest `q` in `space`, closest first (`q.mode` is
    /// exact, partition or probe).
    pub(super) fn ranked(
        &self,
        q: &Query<'_>,
        rule: ProbeRule,
        space: Space,
    ) -> (Vec<Cand>, Stats) {
        let mut stats = Stats {
            partitions_total: self.classes.len() as u32,
            vectors_total: self.len() as u64,
            ..Stats::default()
        };
        let mut qcode = Vec::with_capacity(self.dims);
        let qscale = kernels::quantize(q.vector, &mut qcode);
        let qc = (qcode.as_slice(), qscale);
        let mut touched: Vec<i32> = Vec::new();
        let chosen: Vec<&Cell> = match q.mode {
            Mode::Exact => self.cells.values().collect(),
            Mode::Partition => self
                .cells
                .values()
                .filter(|c| Some(c.class) == q.predicted_class)
                .collect(),
            Mode::Probe | Mode::Refined => Vec::new(),
        };
        let mut top = TopK::new(q.top_k, q.min_similarity);
        if q.mode != Mode::Exact && q.mode != Mode::Partition {
            // Cells by promise; cells of less promising classes only when
            // those run out before the search settles.
            let (order, deferred) = self.probe_order(q, qc, rule);
            // Cells without admitted entries change nothing, so "quiet"
            // alone would stop a filtered search before it found k: it
            // also waits until k admitted entries were seen.
            let (mut quiet, mut admitted, mut seen) = (0, 0u64, 0usize);
            let mut visit = |c: &Cell, top: &mut TopK| {
                let scanned = self.scan(c, q, qc, top, space);
                stats.vectors_scanned += c.len() as u64;
                admitted += scanned.admitted;
                touched.push(c.class);
                seen += 1;
                quiet = if scanned.changed { 0 } else { quiet + 1 };
                seen >= rule.min_partitions && quiet >= rule.patience && admitted >= top.k as u64
            };
            let settled = order.iter().any(|(_, c)| visit(c, &mut top));
            if !settled && !deferred.is_empty() {
                let mut rest = by_centroid(deferred, qc);
                by_promise(&mut rest);
                let _ = rest.iter().any(|(_, c)| visit(c, &mut top));
            }
        } else {
            let total: usize = chosen.iter().map(|c| c.len()).sum();
            stats.vectors_scanned = total as u64;
            touched.extend(chosen.iter().map(|c| c.class));
            if total >= PARALLEL_MIN && chosen.len() > 1 {
                // Two halves on two threads, merged.
                let mid = chosen.len() / 2;
                let (a, b) = chosen.split_at(mid);
                let other = std::thread::scope(|s| {
                    let h = s.spawn(|| {
                        let mut t = TopK::new(q.top_k, q.min_similarity);
                        for c in b {
                            self.scan(c, q, qc, &mut t, space);
                        }
                        t
                    });
                    for c in a {
                        self.scan(c, q, qc, &mut top, space);
                    }
                    h.join()
                });
                match other {
                    Ok(t) => {
                        for c in t.heap {
                            top.offer(c);
                        }
                    }
                    Err(_) => {
                        for c in b {
                            self.scan(c, q, qc, &mut top, space);
                        }
                    }
                }
            } else {
                for c in &chosen {
                    self.scan(c, q, qc, &mut top, space);
                }
            }
        }
        touched.sort_unstable();
        touched.dedup();
        stats.partitions_searched = touched.len() as u32;
        let mut cands = top.heap.into_vec();
        cands.sort();
        (cands, stats)
    }
}
