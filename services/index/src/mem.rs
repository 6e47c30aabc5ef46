//! The in-memory side of a collection: each partition's vectors in one
//! contiguous buffer (f32 for exact distances, int8 codes for a fast first
//! pass over large partitions), with the searches over them.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;

use crate::kernels::{self, distance_from_dot, similarity};

/// What a result shows besides its distance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    pub content_hash: String,
    pub file_name: String,
    pub path: String,
    pub label: String,
}

/// One vector to add; `feature` must already be unit length.
#[derive(Debug, Clone)]
pub struct Entry {
    pub id: u64,
    pub class: i32,
    pub feature: Vec<f32>,
    pub meta: Arc<Meta>,
}

/// Partitions at least this large are scanned in int8 first, then the best
/// candidates re-ranked with exact f32 distances.
const QUANTIZED_SCAN_MIN: usize = 2048;

#[derive(Debug)]
pub struct Partition {
    pub class: i32,
    dims: usize,
    ids: Vec<u64>,
    vecs: Vec<f32>,
    codes: Vec<i8>,
    scales: Vec<f32>,
    meta: Vec<Arc<Meta>>,
    sum: Vec<f64>,
    centroid: Vec<f32>,
}

impl Partition {
    fn new(class: i32, dims: usize) -> Self {
        Self {
            class,
            dims,
            ids: Vec::new(),
            vecs: Vec::new(),
            codes: Vec::new(),
            scales: Vec::new(),
            meta: Vec::new(),
            sum: vec![0.0; dims],
            centroid: vec![0.0; dims],
        }
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    pub fn ids(&self) -> &[u64] {
        &self.ids
    }

    pub fn bytes(&self) -> usize {
        self.ids.len() * 8
            + self.vecs.len() * 4
            + self.codes.len()
            + self.scales.len() * 4
            + self.meta.len() * std::mem::size_of::<Arc<Meta>>()
            + self
                .meta
                .iter()
                .map(|m| {
                    std::mem::size_of::<Meta>()
                        + m.content_hash.len()
                        + m.file_name.len()
                        + m.path.len()
                        + m.label.len()
                })
                .sum::<usize>()
            + (self.sum.len() * 8 + self.centroid.len() * 4)
    }

    fn vector(&self, slot: usize) -> &[f32] {
        &self.vecs[slot * self.dims..(slot + 1) * self.dims]
    }

    fn refresh_centroid(&mut self) {
        let n = self.ids.len().max(1) as f64;
        let mut c: Vec<f32> = self.sum.iter().map(|s| (s / n) as f32).collect();
        if !kernels::normalize(&mut c) {
            c.iter_mut().for_each(|x| *x = 0.0);
        }
        self.centroid = c;
    }

    fn push(&mut self, e: &Entry) -> usize {
        self.ids.push(e.id);
        self.vecs.extend_from_slice(&e.feature);
        let s = kernels::quantize(&e.feature, &mut self.codes);
        self.scales.push(s);
        self.meta.push(e.meta.clone());
        for (acc, x) in self.sum.iter_mut().zip(&e.feature) {
            *acc += f64::from(*x);
        }
        self.ids.len() - 1
    }

    /// Removes `slot` by moving the last entry into it; returns the id that
    /// moved there, if any.
    fn swap_remove(&mut self, slot: usize) -> Option<u64> {
        let d = self.dims;
        for (acc, x) in self
            .sum
            .iter_mut()
            .zip(&self.vecs[slot * d..(slot + 1) * d])
        {
            *acc -= f64::from(*x);
        }
        let last = self.ids.len() - 1;
        self.ids.swap_remove(slot);
        self.scales.swap_remove(slot);
        self.meta.swap_remove(slot);
        if slot != last {
            self.vecs.copy_within(last * d..(last + 1) * d, slot * d);
            self.codes.copy_within(last * d..(last + 1) * d, slot * d);
        }
        self.vecs.truncate(last * d);
        self.codes.truncate(last * d);
        (slot != last).then(|| self.ids[slot])
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Partition,
    Probe,
    Exact,
}

#[derive(Debug, Clone)]
pub struct Query<'a> {
    /// Unit-length query feature.
    pub vector: &'a [f32],
    pub predicted_class: Option<i32>,
    pub top_k: usize,
    pub mode: Mode,
    pub min_similarity: f32,
    pub exclude_id: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct Hit {
    pub id: u64,
    pub distance: f32,
    pub similarity: f32,
    pub partition: i32,
    pub meta: Arc<Meta>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub partitions_searched: u32,
    pub partitions_total: u32,
    pub vectors_scanned: u64,
    pub vectors_total: u64,
}

/// The probe stopping rule: after at least `min_partitions`, stop once
/// `patience` partitions in a row, taken in order of promise, changed
/// nothing in the top k.
#[derive(Debug, Clone, Copy)]
pub struct ProbeRule {
    pub min_partitions: usize,
    pub patience: usize,
}

impl Default for ProbeRule {
    fn default() -> Self {
        Self {
            min_partitions: 2,
            patience: 3,
        }
    }
}

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

/// All partitions of one collection.
#[derive(Debug)]
pub struct MemIndex {
    dims: usize,
    partitions: HashMap<i32, Partition>,
    locate: HashMap<u64, (i32, usize)>,
    dirty_centroids: bool,
}

impl MemIndex {
    pub fn new(dims: usize) -> Self {
        Self {
            dims,
            partitions: HashMap::new(),
            locate: HashMap::new(),
            dirty_centroids: false,
        }
    }

    pub fn dims(&self) -> usize {
        self.dims
    }

    pub fn len(&self) -> usize {
        self.locate.len()
    }

    pub fn is_empty(&self) -> bool {
        self.locate.is_empty()
    }

    pub fn contains(&self, id: u64) -> bool {
        self.locate.contains_key(&id)
    }

    pub fn partitions(&self) -> impl Iterator<Item = &Partition> {
        self.partitions.values()
    }

    pub fn bytes(&self) -> usize {
        self.partitions
            .values()
            .map(Partition::bytes)
            .sum::<usize>()
            + self.locate.len() * (8 + 16 + 8)
    }

    /// Inserts or replaces entries (by id).
    pub fn upsert(&mut self, entries: &[Entry]) {
        for e in entries {
            debug_assert_eq!(e.feature.len(), self.dims);
            self.remove(e.id);
            let p = self
                .partitions
                .entry(e.class)
                .or_insert_with(|| Partition::new(e.class, self.dims));
            let slot = p.push(e);
            self.locate.insert(e.id, (e.class, slot));
        }
        self.dirty_centroids = true;
    }

    /// Removes `id`; false when it was not there.
    pub fn remove(&mut self, id: u64) -> bool {
        let Some((class, slot)) = self.locate.remove(&id) else {
            return false;
        };
        if let Some(p) = self.partitions.get_mut(&class) {
            if let Some(moved) = p.swap_remove(slot) {
                self.locate.insert(moved, (class, slot));
            }
            if p.is_empty() {
                self.partitions.remove(&class);
            }
        }
        self.dirty_centroids = true;
        true
    }

    pub fn clear(&mut self) {
        self.partitions.clear();
        self.locate.clear();
    }

    /// Brings partition centroids up to date (call after writes, under the
    /// write lock, so that searches need no mutation).
    pub fn refresh(&mut self) {
        if self.dirty_centroids {
            for p in self.partitions.values_mut() {
                p.refresh_centroid();
            }
            self.dirty_centroids = false;
        }
    }

    pub fn feature(&self, id: u64) -> Option<(i32, Vec<f32>)> {
        let (class, slot) = *self.locate.get(&id)?;
        let p = self.partitions.get(&class)?;
        Some((class, p.vector(slot).to_vec()))
    }

    fn scan(
        &self,
        p: &Partition,
        q: &[f32],
        qcode: &[i8],
        qscale: f32,
        top: &mut TopK,
        exclude: Option<u64>,
    ) -> bool {
        let d = self.dims;
        let mut changed = false;
        let mut offer = |slot: usize, dot: f32, top: &mut TopK| {
            let id = p.ids[slot];
            if Some(id) == exclude {
                return;
            }
            changed |= top.offer(Cand {
                dist: distance_from_dot(dot),
                id,
                class: p.class,
                slot,
            });
        };
        if p.len() >= QUANTIZED_SCAN_MIN {
            // First pass in int8 keeps a generous shortlist; exact f32
            // distances decide among it. The shortlist bound is the current
            // k-th distance loosened by the quantisation error.
            let want = (top.k * 4 + 64).min(p.len());
            let mut short: BinaryHeap<(std::cmp::Reverse<i64>, usize)> =
                BinaryHeap::with_capacity(want + 1);
            for slot in 0..p.len() {
                let approx = i64::from(kernels::dot_i8(qcode, &p.codes[slot * d..(slot + 1) * d]));
                let key = (approx as f64 * f64::from(p.scales[slot]) * 1e6) as i64;
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
            let _ = qscale;
            for (_, slot) in short {
                let dot = kernels::dot(q, p.vector(slot));
                offer(slot, dot, top);
            }
        } else {
            for slot in 0..p.len() {
                let dot = kernels::dot(q, p.vector(slot));
                offer(slot, dot, top);
            }
        }
        changed
    }

    /// Nearest neighbours of `q`, closest first.
    pub fn search(&self, q: &Query<'_>, rule: ProbeRule) -> (Vec<Hit>, Stats) {
        let mut stats = Stats {
            partitions_total: self.partitions.len() as u32,
            vectors_total: self.len() as u64,
            ..Stats::default()
        };
        let mut top = TopK::new(q.top_k, q.min_similarity);
        let mut qcode = Vec::with_capacity(self.dims);
        let qscale = kernels::quantize(q.vector, &mut qcode);
        let visit = |p: &Partition, top: &mut TopK, stats: &mut Stats| {
            stats.partitions_searched += 1;
            stats.vectors_scanned += p.len() as u64;
            self.scan(p, q.vector, &qcode, qscale, top, q.exclude_id)
        };
        match q.mode {
            Mode::Exact => {
                for p in self.partitions.values() {
                    visit(p, &mut top, &mut stats);
                }
            }
            Mode::Partition => {
                if let Some(p) = q.predicted_class.and_then(|c| self.partitions.get(&c)) {
                    visit(p, &mut top, &mut stats);
                }
            }
            Mode::Probe => {
                // Promise: the query's own class first, then partitions by
                // the similarity of their centroid to the query.
                let mut order: Vec<(f32, &Partition)> = self
                    .partitions
                    .values()
                    .map(|p| {
                        let s = if Some(p.class) == q.predicted_class {
                            f32::INFINITY
                        } else {
                            kernels::dot(q.vector, &p.centroid)
                        };
                        (s, p)
                    })
                    .collect();
                order.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.class.cmp(&b.1.class)));
                let mut quiet = 0;
                for (i, (_, p)) in order.iter().enumerate() {
                    let changed = visit(p, &mut top, &mut stats);
                    quiet = if changed { 0 } else { quiet + 1 };
                    if i + 1 >= rule.min_partitions && quiet >= rule.patience {
                        break;
                    }
                }
            }
        }
        let mut cands = top.heap.into_vec();
        cands.sort();
        let hits = cands
            .into_iter()
            .filter_map(|c| {
                let p = self.partitions.get(&c.class)?;
                Some(Hit {
                    id: c.id,
                    distance: c.dist,
                    similarity: similarity(c.dist),
                    partition: c.class,
                    meta: p.meta[c.slot].clone(),
                })
            })
            .collect();
        (hits, stats)
    }
}

#[cfg(test)]
mod tests;
