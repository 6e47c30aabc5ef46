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

/// A class partition holding more vectors than this is split into cells by
/// k-means (an IVF inside the partition), so that probe searches read the
/// parts of a big partition near the query, not all of it.
const SPLIT_MIN: usize = 8192;
/// Aimed-for vectors per cell after a split.
const CELL_TARGET: usize = 2048;

/// One cell: a whole class partition, or a k-means part of a big one. Its
/// vectors sit in one contiguous buffer.
#[derive(Debug)]
pub struct Cell {
    pub class: i32,
    dims: usize,
    ids: Vec<u64>,
    vecs: Vec<f32>,
    codes: Vec<i8>,
    scales: Vec<f32>,
    meta: Vec<Arc<Meta>>,
    sum: Vec<f32>,
    centroid: Vec<f32>,
}

impl Cell {
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

    /// Appends every entry of `other` (same class); returns the ids with
    /// their new slots.
    fn append(&mut self, mut other: Cell) -> Vec<(u64, usize)> {
        let base = self.ids.len();
        let moved: Vec<(u64, usize)> = other
            .ids
            .iter()
            .enumerate()
            .map(|(i, id)| (*id, base + i))
            .collect();
        self.ids.append(&mut other.ids);
        self.vecs.append(&mut other.vecs);
        self.codes.append(&mut other.codes);
        self.scales.append(&mut other.scales);
        self.meta.append(&mut other.meta);
        for (a, b) in self.sum.iter_mut().zip(&other.sum) {
            *a += b;
        }
        moved
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
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
            + (self.sum.len() * 4 + self.centroid.len() * 4)
    }

    fn vector(&self, slot: usize) -> &[f32] {
        &self.vecs[slot * self.dims..(slot + 1) * self.dims]
    }

    fn refresh_centroid(&mut self) {
        let n = self.ids.len().max(1) as f32;
        let mut c: Vec<f32> = self.sum.iter().map(|s| s / n).collect();
        if !kernels::normalize(&mut c) {
            c.iter_mut().for_each(|x| *x = 0.0);
        }
        self.centroid = c;
    }

    fn push(&mut self, id: u64, feature: &[f32], meta: Arc<Meta>) -> usize {
        self.ids.push(id);
        self.vecs.extend_from_slice(feature);
        let s = kernels::quantize(feature, &mut self.codes);
        self.scales.push(s);
        self.meta.push(meta);
        for (acc, x) in self.sum.iter_mut().zip(feature) {
            *acc += *x;
        }
        self.ids.len() - 1
    }

    /// Copies entry `slot` of `other` (codes included, no re-quantising).
    fn push_from(&mut self, other: &Cell, slot: usize) -> usize {
        let d = self.dims;
        let v = other.vector(slot);
        self.ids.push(other.ids[slot]);
        self.vecs.extend_from_slice(v);
        self.codes
            .extend_from_slice(&other.codes[slot * d..(slot + 1) * d]);
        self.scales.push(other.scales[slot]);
        self.meta.push(other.meta[slot].clone());
        for (acc, x) in self.sum.iter_mut().zip(v) {
            *acc += *x;
        }
        self.ids.len() - 1
    }

    fn reserve(&mut self, n: usize) {
        self.ids.reserve(n);
        self.vecs.reserve(n * self.dims);
        self.codes.reserve(n * self.dims);
        self.scales.reserve(n);
        self.meta.reserve(n);
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
            *acc -= *x;
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

/// Per-class bookkeeping: the k-means centroids new vectors are assigned
/// by, once the class was split.
#[derive(Debug, Default)]
struct ClassInfo {
    count: usize,
    lists: Vec<Vec<f32>>,
    split_at: usize,
}

/// New cells for one class: computed without the write lock.
#[derive(Debug)]
pub struct SplitPlan {
    class: i32,
    lists: Vec<Vec<f32>>,
    /// The new cell of every vector the class held when planned.
    assign: HashMap<u64, u32>,
}

/// What `stats` shows of one class partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionSummary {
    pub class: i32,
    pub len: usize,
    pub cells: usize,
    pub bytes: usize,
}

/// Spherical k-means on `data` (rows of `dims`), seeded by evenly spaced
/// rows, `iters` rounds over a sample; returns unit centroids.
fn kmeans(data: &[f32], dims: usize, k: usize, iters: usize) -> Vec<Vec<f32>> {
    let n = data.len() / dims;
    // A sample of about 8192 rows: enough for cells good for probing
    // (4096 with 5 rounds cost 0.02 of recall@10 at 1M).
    let step = (n / 8192).max(1);
    let sample: Vec<usize> = (0..n).step_by(step).collect();
    let mut cents: Vec<Vec<f32>> = (0..k)
        .map(|i| data[sample[i * sample.len() / k] * dims..][..dims].to_vec())
        .collect();
    for _ in 0..iters {
        let mut sums = vec![vec![0f32; dims]; k];
        let mut counts = vec![0usize; k];
        for &r in &sample {
            let v = &data[r * dims..(r + 1) * dims];
            let best = nearest(&cents, v);
            counts[best] += 1;
            for (s, x) in sums[best].iter_mut().zip(v) {
                *s += x;
            }
        }
        for (j, s) in sums.into_iter().enumerate() {
            if counts[j] > 0 {
                let mut c = s;
                if kernels::normalize(&mut c) {
                    cents[j] = c;
                }
            }
        }
    }
    cents
}

fn nearest(cents: &[Vec<f32>], v: &[f32]) -> usize {
    let mut best = 0;
    let mut best_dot = f32::NEG_INFINITY;
    for (j, c) in cents.iter().enumerate() {
        let d = kernels::dot(v, c);
        if d > best_dot {
            best_dot = d;
            best = j;
        }
    }
    best
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

/// The probe stopping rule: after at least `min_partitions` cells, stop
/// once `patience` cells in a row, taken in order of promise, changed
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

/// All partitions of one collection, as cells.
#[derive(Debug)]
pub struct MemIndex {
    dims: usize,
    cells: HashMap<(i32, u32), Cell>,
    classes: HashMap<i32, ClassInfo>,
    locate: HashMap<u64, (i32, u32, usize)>,
    dirty: Vec<i32>,
}

/// Total vectors above which an exact search is split over two threads.
const PARALLEL_MIN: usize = 200_000;

impl MemIndex {
    pub fn new(dims: usize) -> Self {
        Self {
            dims,
            cells: HashMap::new(),
            classes: HashMap::new(),
            locate: HashMap::new(),
            dirty: Vec::new(),
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

    pub fn cells(&self) -> impl Iterator<Item = &Cell> {
        self.cells.values()
    }

    /// Every id, in no particular order.
    pub fn ids(&self) -> Vec<u64> {
        self.locate.keys().copied().collect()
    }

    pub fn partitions(&self) -> Vec<PartitionSummary> {
        let mut by: HashMap<i32, PartitionSummary> = HashMap::new();
        for c in self.cells.values() {
            let e = by.entry(c.class).or_insert(PartitionSummary {
                class: c.class,
                len: 0,
                cells: 0,
                bytes: 0,
            });
            e.len += c.len();
            e.cells += 1;
            e.bytes += c.bytes();
        }
        let mut out: Vec<PartitionSummary> = by.into_values().collect();
        out.sort_by_key(|p| p.class);
        out
    }

    pub fn bytes(&self) -> usize {
        self.cells.values().map(Cell::bytes).sum::<usize>()
            + self.locate.len() * (8 + 16 + 8)
            + self
                .classes
                .values()
                .map(|c| c.lists.len() * self.dims * 4)
                .sum::<usize>()
    }

    /// Inserts or replaces entries (by id).
    pub fn upsert(&mut self, entries: &[Entry]) {
        for e in entries {
            debug_assert_eq!(e.feature.len(), self.dims);
            self.remove(e.id);
            let info = self.classes.entry(e.class).or_insert_with(|| ClassInfo {
                split_at: SPLIT_MIN,
                ..ClassInfo::default()
            });
            let list = if info.lists.is_empty() {
                0
            } else {
                nearest(&info.lists, &e.feature) as u32
            };
            info.count += 1;
            let dims = self.dims;
            let cell = self
                .cells
                .entry((e.class, list))
                .or_insert_with(|| Cell::new(e.class, dims));
            let slot = cell.push(e.id, &e.feature, e.meta.clone());
            self.locate.insert(e.id, (e.class, list, slot));
            self.dirty.push(e.class);
        }
    }

    /// Removes `id`; false when it was not there.
    pub fn remove(&mut self, id: u64) -> bool {
        let Some((class, list, slot)) = self.locate.remove(&id) else {
            return false;
        };
        if let Some(c) = self.cells.get_mut(&(class, list)) {
            if let Some(moved) = c.swap_remove(slot) {
                self.locate.insert(moved, (class, list, slot));
            }
            if c.is_empty() {
                self.cells.remove(&(class, list));
            }
        }
        if let Some(info) = self.classes.get_mut(&class) {
            info.count = info.count.saturating_sub(1);
            if info.count == 0 {
                self.classes.remove(&class);
            }
        }
        self.dirty.push(class);
        true
    }

    pub fn clear(&mut self) {
        self.cells.clear();
        self.classes.clear();
        self.locate.clear();
        self.dirty.clear();
    }

    /// Moves everything of `other` (built from disjoint ids, not yet
    /// refreshed) into this index; used to load in parallel.
    pub fn merge(&mut self, other: MemIndex) {
        let MemIndex { cells, classes, .. } = other;
        for ((class, list), cell) in cells {
            // Unsplit indexes have one cell per class: list 0.
            let dims = self.dims;
            let target = self
                .cells
                .entry((class, list))
                .or_insert_with(|| Cell::new(class, dims));
            for (id, slot) in target.append(cell) {
                self.locate.insert(id, (class, list, slot));
            }
            self.dirty.push(class);
        }
        for (class, info) in classes {
            let mine = self.classes.entry(class).or_insert_with(|| ClassInfo {
                split_at: SPLIT_MIN,
                ..ClassInfo::default()
            });
            mine.count += info.count;
        }
    }

    /// Splits classes that grew past their threshold and brings centroids
    /// up to date. Call after writes, under the write lock, so that
    /// searches need no mutation.
    pub fn refresh(&mut self) {
        let plans = self.plan_splits();
        self.apply_splits(plans);
        self.refresh_centroids();
    }

    /// Brings the centroids of changed classes up to date (cheap).
    pub fn refresh_centroids(&mut self) {
        let mut dirty = std::mem::take(&mut self.dirty);
        dirty.sort_unstable();
        dirty.dedup();
        for class in dirty {
            for (_, c) in self.cells.iter_mut().filter(|((k, _), _)| *k == class) {
                c.refresh_centroid();
            }
        }
    }

    /// True when some class grew past its split threshold.
    pub fn needs_split(&self) -> bool {
        self.classes.values().any(|i| i.count >= i.split_at)
    }

    /// The k-means centroids of every class due for a split. Read-only (the
    /// expensive part), so writers run it under a read lock while searches
    /// go on, then `apply_splits` under the write lock.
    pub fn plan_splits(&self) -> Vec<SplitPlan> {
        let to_split: Vec<i32> = self
            .classes
            .iter()
            .filter(|(_, i)| i.count >= i.split_at)
            .map(|(c, _)| *c)
            .collect();
        let dims = self.dims;
        // k-means of different classes is independent: two at a time.
        std::thread::scope(|s| {
            let cells = &self.cells;
            let work = |classes: &[i32]| -> Vec<SplitPlan> {
                classes
                    .iter()
                    .map(|&class| {
                        let mut data = Vec::new();
                        for c in cells.values().filter(|c| c.class == class) {
                            data.extend_from_slice(&c.vecs);
                        }
                        let n = data.len() / dims;
                        let lists = kmeans(&data, dims, (n / CELL_TARGET).max(2), 6);
                        // Assignment on the int8 codes: twice as fast as
                        // f32 and as good for choosing a coarse cell.
                        let mut list_codes = Vec::new();
                        let list_scales: Vec<f32> = lists
                            .iter()
                            .map(|l| kernels::quantize(l, &mut list_codes))
                            .collect();
                        let mut assign = HashMap::with_capacity(n);
                        for c in cells.values().filter(|c| c.class == class) {
                            for slot in 0..c.len() {
                                let code = &c.codes[slot * dims..(slot + 1) * dims];
                                let mut best = (0u32, f32::NEG_INFINITY);
                                for (j, ls) in list_scales.iter().enumerate() {
                                    let d = kernels::dot_i8(
                                        code,
                                        &list_codes[j * dims..(j + 1) * dims],
                                    ) as f32
                                        * ls;
                                    if d > best.1 {
                                        best = (j as u32, d);
                                    }
                                }
                                assign.insert(c.ids[slot], best.0);
                            }
                        }
                        SplitPlan {
                            class,
                            lists,
                            assign,
                        }
                    })
                    .collect()
            };
            let (a, b) = to_split.split_at(to_split.len() / 2);
            let h = s.spawn(move || work(b));
            let mut out = work(a);
            out.extend(h.join().unwrap_or_default());
            out
        })
    }

    /// Re-distributes the planned classes over their new cells.
    pub fn apply_splits(&mut self, plans: Vec<SplitPlan>) {
        for p in plans {
            if self.classes.contains_key(&p.class) && !p.lists.is_empty() {
                self.split(p.class, p.lists, &p.assign);
                self.dirty.push(p.class);
            }
        }
    }

    /// Re-distributes one class over the cells of `lists` (its k-means
    /// centroids, about count / CELL_TARGET of them).
    fn split(&mut self, class: i32, lists: Vec<Vec<f32>>, assign: &HashMap<u64, u32>) {
        let keys: Vec<(i32, u32)> = self
            .cells
            .keys()
            .filter(|(k, _)| *k == class)
            .copied()
            .collect();
        let old: Vec<Cell> = keys.iter().filter_map(|k| self.cells.remove(k)).collect();
        let n: usize = old.iter().map(Cell::len).sum();
        let dims = self.dims;
        // Where each vector goes; vectors added since the plan was made are
        // placed now.
        let targets: Vec<Vec<u32>> = old
            .iter()
            .map(|c| {
                (0..c.len())
                    .map(|slot| {
                        assign
                            .get(&c.ids[slot])
                            .copied()
                            .unwrap_or_else(|| nearest(&lists, c.vector(slot)) as u32)
                    })
                    .collect()
            })
            .collect();
        let mut sizes: HashMap<u32, usize> = HashMap::new();
        for t in targets.iter().flatten() {
            *sizes.entry(*t).or_default() += 1;
        }
        for (list, size) in sizes {
            let cell = self
                .cells
                .entry((class, list))
                .or_insert_with(|| Cell::new(class, dims));
            cell.reserve(size);
        }
        for (c, t) in old.iter().zip(&targets) {
            for (slot, &list) in t.iter().enumerate() {
                let cell = self
                    .cells
                    .entry((class, list))
                    .or_insert_with(|| Cell::new(class, dims));
                let new_slot = cell.push_from(c, slot);
                self.locate.insert(c.ids[slot], (class, list, new_slot));
            }
        }
        if let Some(info) = self.classes.get_mut(&class) {
            info.lists = lists;
            info.split_at = n * 2;
        }
    }

    pub fn feature(&self, id: u64) -> Option<(i32, Vec<f32>)> {
        let (class, list, slot) = *self.locate.get(&id)?;
        let c = self.cells.get(&(class, list))?;
        Some((class, c.vector(slot).to_vec()))
    }

    /// Offers every vector of `c` to `top`; true when the top k changed.
    fn scan(
        &self,
        c: &Cell,
        q: &[f32],
        qcode: &[i8],
        top: &mut TopK,
        exclude: Option<u64>,
    ) -> bool {
        let d = self.dims;
        let mut changed = false;
        let mut offer = |slot: usize, dot: f32, top: &mut TopK| {
            let id = c.ids[slot];
            if Some(id) == exclude {
                return;
            }
            changed |= top.offer(Cand {
                dist: distance_from_dot(dot),
                id,
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
            for slot in 0..c.len() {
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
                let dot = kernels::dot(q, c.vector(slot));
                offer(slot, dot, top);
            }
        } else {
            for slot in 0..c.len() {
                let dot = kernels::dot(q, c.vector(slot));
                offer(slot, dot, top);
            }
        }
        changed
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
            let mut quiet = 0;
            for (i, (_, c)) in order.iter().enumerate() {
                let changed = self.scan(c, q.vector, &qcode, &mut top, q.exclude_id);
                stats.vectors_scanned += c.len() as u64;
                touched.push(c.class);
                quiet = if changed { 0 } else { quiet + 1 };
                if i + 1 >= rule.min_partitions && quiet >= rule.patience {
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
                            self.scan(c, q.vector, &qcode, &mut t, q.exclude_id);
                        }
                        t
                    });
                    for c in a {
                        self.scan(c, q.vector, &qcode, &mut top, q.exclude_id);
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
                            self.scan(c, q.vector, &qcode, &mut top, q.exclude_id);
                        }
                    }
                }
            } else {
                for c in &chosen {
                    self.scan(c, q.vector, &qcode, &mut top, q.exclude_id);
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

#[cfg(test)]
mod tests;
