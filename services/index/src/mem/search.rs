//! Searches over a collection's cells: exact, one partition, or probing
//! cells in order of promise until the top k stops changing.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use super::{Cell, Hit, MemIndex, Mode, ProbeRule, Query, Stats};
use crate::kernels::{self, distance_from_dot, similarity};

/// Total vectors above which an exact search is split over two threads.
const PARALLEL_MIN: usize = 200_000;

/// A candidate in the top-k heap, worst (largest distance) on top.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Cand {
    dist: f32,
    id: u64,
    class: i32,
    slot: usize,
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

struct TopK {
    k: usize,
    max_dist: f32,
    heap: BinaryHeap<Cand>,
}

impl TopK {
    fn new(k: usize, min_similarity: f32) -> Self {
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
    fn offer(&mut self, c: Cand) -> bool {
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
    /// place in the int8 shortlist nor in the top k.
    fn scan(&self, c: &Cell, q: &Query<'_>, qcode: &[i8], top: &mut TopK) -> Scanned {
        let d = self.dims;
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
        let want = top.k.saturating_mul(4).saturating_add(64);
        if c.len() > want.saturating_mul(2) {
            // An int8 first pass keeps a generous shortlist; exact f32
            // distances decide among it.
            let mut short: BinaryHeap<(std::cmp::Reverse<i64>, usize)> =
                BinaryHeap::with_capacity(want + 1);
            let mut admitted = 0;
            for slot in (0..c.len()).filter(|&s| admits(s)) {
                admitted += 1;
                let approx = i64::from(kernels::dot_i8(qcode, &c.codes[slot * d..(slot + 1) * d]));
                let key = (approx as f64 * f64::from(c.scales[slot]) * 1e6) as i64;
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
                let dot = kernels::dot(q.vector, c.vector(slot));
                offer(slot, dot, top);
            }
            out.admitted = admitted;
        } else {
            let mut admitted = 0;
            for slot in (0..c.len()).filter(|&s| admits(s)) {
                admitted += 1;
                let dot = kernels::dot(q.vector, c.vector(slot));
                offer(slot, dot, top);
            }
            out.admitted = admitted;
        }
        out
    }

    /// Nearest neighbours of `q`, closest first.
    pub fn search(&self, q: &Query<'_>, rule: ProbeRule) -> (Vec<Hit>, Stats) {
        let mut stats = Stats {
            partitions_total: self.classes.len() as u32,
            vectors_total: self.len() as u64,
            ..Stats::default()
        };
        let mut qcode = Vec::with_capacity(self.dims);
        kernels::quantize(q.vector, &mut qcode);
        let mut touched: Vec<i32> = Vec::new();
        let chosen: Vec<&Cell> = match q.mode {
            Mode::Exact => self.cells.values().collect(),
            Mode::Partition => self
                .cells
                .values()
                .filter(|c| Some(c.class) == q.predicted_class)
                .collect(),
            Mode::Probe => Vec::new(),
        };
        let mut top = TopK::new(q.top_k, q.min_similarity);
        if q.mode == Mode::Probe {
            // Promise: the query's own class's nearest cell first, then cells
            // by the similarity of their centroid to the query.
            let mut order: Vec<(f32, &Cell)> = self
                .cells
                .values()
                .map(|c| (kernels::dot(q.vector, &c.centroid), c))
                .collect();
            if let Some(best_own) = order
                .iter_mut()
                .filter(|(_, c)| Some(c.class) == q.predicted_class)
                .max_by(|a, b| a.0.total_cmp(&b.0))
            {
                best_own.0 = f32::INFINITY;
            }
            order.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.class.cmp(&b.1.class)));
            // Cells without admitted entries change nothing, so "quiet"
            // alone would stop a filtered search before it found k: it
            // also waits until k admitted entries were seen.
            let (mut quiet, mut admitted) = (0, 0u64);
            for (i, (_, c)) in order.iter().enumerate() {
                let scanned = self.scan(c, q, &qcode, &mut top);
                stats.vectors_scanned += c.len() as u64;
                admitted += scanned.admitted;
                touched.push(c.class);
                quiet = if scanned.changed { 0 } else { quiet + 1 };
                if i + 1 >= rule.min_partitions
                    && quiet >= rule.patience
                    && admitted >= top.k as u64
                {
                    break;
                }
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
                            self.scan(c, q, &qcode, &mut t);
                        }
                        t
                    });
                    for c in a {
                        self.scan(c, q, &qcode, &mut top);
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
                            self.scan(c, q, &qcode, &mut top);
                        }
                    }
                }
            } else {
                for c in &chosen {
                    self.scan(c, q, &qcode, &mut top);
                }
            }
        }
        touched.sort_unstable();
        touched.dedup();
        stats.partitions_searched = touched.len() as u32;
        let mut cands = top.heap.into_vec();
        cands.sort();
        let hits = cands
            .into_iter()
            .filter_map(|c| {
                let (class, list, slot) = *self.locate.get(&c.id)?;
                let cell = self.cells.get(&(class, list))?;
                Some(Hit {
                    id: c.id,
                    distance: c.dist,
                    similarity: similarity(c.dist),
                    partition: class,
                    meta: cell.meta[slot].clone(),
                })
            })
            .collect();
        (hits, stats)
    }
}
