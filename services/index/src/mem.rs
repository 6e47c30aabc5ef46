//! The in-memory side of a collection: each partition's vectors in one
//! contiguous buffer (f32 for exact distances, int8 codes for a fast first
//! pass over large partitions), with the searches over them.

mod cell;
mod compact;
mod expand;
mod filter;
mod meta;
mod refine;
mod search;
mod split;

use std::collections::HashMap;

pub use cell::Cell;
pub use compact::{ScanBatch, Shortlists, VectorSource};
pub use expand::{best_terms, terms_wanted, Expansion, Term};
pub use filter::Filter;
pub use meta::Meta;
pub use refine::{Augmented, Pending, Refine, RefineState, AFFECT_FACTOR};
use split::nearest;

use crate::kernels;

/// One vector to add; `feature` must already be unit length.
#[derive(Debug, Clone)]
pub struct Entry {
    pub id: u64,
    pub class: i32,
    pub feature: Vec<f32>,
    pub meta: Meta,
}

/// A class partition holding more vectors than this is split into cells by
/// k-means (an IVF inside the partition), so that probe searches read the
/// parts of a big partition near the query, not all of it.
const SPLIT_MIN: usize = 8192;
/// Aimed-for vectors per cell after a split.
const CELL_TARGET: usize = 2048;

/// Per-class bookkeeping: the k-means centroids new vectors are assigned
/// by, once the class was split, and the class's own centroid (int8 code
/// and scale; empty until its first refresh) that chooses which classes'
/// cells a probe of many cells ranks.
#[derive(Debug, Default)]
struct ClassInfo {
    count: usize,
    lists: Vec<Vec<f32>>,
    split_at: usize,
    centroid_code: Vec<i8>,
    centroid_scale: f32,
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

/// What a collection keeps in memory per vector.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Storage {
    /// f32 vectors, int8 codes and the augmented copies of refined ranking
    /// (about 13 KB per 1280-d vector): every distance from memory.
    #[default]
    Full,
    /// The int8 codes only (about 1.5 KB per 1280-d vector): scans rank by
    /// the codes and a short list is re-ranked with the f32 vectors read
    /// from a [`VectorSource`] (the database). Refined ranking expands the
    /// query over raw vectors, without augmented copies.
    Compact,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Partition,
    Probe,
    Exact,
    /// Probe over the augmented vectors with an expanded query.
    Refined,
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
    /// Only entries it admits are ranked.
    pub filter: &'a Filter,
}

#[derive(Debug, Clone)]
pub struct Hit {
    pub id: u64,
    /// Between the query and the stored (raw) vector, in every mode.
    pub distance: f32,
    /// 1/(1+distance): what a person is shown.
    pub similarity: f32,
    /// What ordered the hits, higher first: the similarity, or in refined
    /// mode the cosine of the expanded query and the augmented vector.
    pub score: f32,
    pub partition: i32,
    pub meta: Meta,
}

/// A search's answer: its hits, what it scanned, and for a refined
/// search asked for them ([`Expansion::TermsOnly`]) its expansion terms.
#[derive(Debug, Clone, Default)]
pub struct Searched {
    pub hits: Vec<Hit>,
    pub stats: Stats,
    pub terms: Vec<Term>,
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
/// nothing in the top k. With `class_first_cells` cells or more (0:
/// never), the order of promise ranks classes before cells
/// (`MemIndex::probe_order`).
#[derive(Debug, Clone, Copy)]
pub struct ProbeRule {
    pub min_partitions: usize,
    pub patience: usize,
    pub class_first_cells: usize,
}

impl Default for ProbeRule {
    fn default() -> Self {
        Self {
            min_partitions: 2,
            patience: 3,
            class_first_cells: search::CLASS_FIRST_MIN_CELLS,
        }
    }
}

/// All partitions of one collection, as cells.
#[derive(Debug)]
pub struct MemIndex {
    dims: usize,
    storage: Storage,
    cells: HashMap<(i32, u32), Cell>,
    classes: HashMap<i32, ClassInfo>,
    locate: HashMap<u64, (i32, u32, usize)>,
    dirty: Vec<i32>,
    refine: Refine,
    upkeep: refine::Upkeep,
}

impl MemIndex {
    pub fn new(dims: usize) -> Self {
        Self::with_storage(dims, Storage::Full)
    }

    pub fn with_storage(dims: usize, storage: Storage) -> Self {
        Self {
            dims,
            storage,
            cells: HashMap::new(),
            classes: HashMap::new(),
            locate: HashMap::new(),
            dirty: Vec::new(),
            refine: Refine::default(),
            upkeep: refine::Upkeep::default(),
        }
    }

    pub fn dims(&self) -> usize {
        self.dims
    }

    pub fn storage(&self) -> Storage {
        self.storage
    }

    pub fn compact(&self) -> bool {
        self.storage == Storage::Compact
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

    /// Bytes of the augmented copies (part of `bytes`).
    pub fn augmented_bytes(&self) -> usize {
        self.cells.values().map(Cell::augmented_bytes).sum()
    }

    /// Inserts or replaces entries (by id); each is fresh until its
    /// augmented vector is computed.
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
            let (dims, compact) = (self.dims, self.compact());
            let cell = self
                .cells
                .entry((e.class, list))
                .or_insert_with(|| Cell::new(e.class, dims, compact));
            let slot = cell.push(e.id, &e.feature, e.meta.clone());
            self.locate.insert(e.id, (e.class, list, slot));
            self.dirty.push(e.class);
            // Compact storage keeps no augmented copies to bring up to date.
            if !compact {
                self.upkeep.mark(e.id, true);
            }
        }
    }

    /// Removes `id`; false when it was not there.
    pub fn remove(&mut self, id: u64) -> bool {
        let Some((class, list, slot)) = self.locate.remove(&id) else {
            return false;
        };
        self.upkeep.forget(id);
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
        self.upkeep.clear();
    }

    /// Moves everything of `other` (built from disjoint ids, not yet
    /// refreshed) into this index; used to load in parallel.
    pub fn merge(&mut self, other: MemIndex) {
        debug_assert_eq!(self.storage, other.storage);
        let MemIndex {
            cells,
            classes,
            upkeep,
            ..
        } = other;
        for (id, _) in upkeep.stale {
            self.upkeep.mark(id, upkeep.fresh.contains_key(&id));
        }
        for ((class, list), cell) in cells {
            // Unsplit indexes have one cell per class: list 0.
            let (dims, compact) = (self.dims, self.compact());
            let target = self
                .cells
                .entry((class, list))
                .or_insert_with(|| Cell::new(class, dims, compact));
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

    /// Gives back the spare capacity of every buffer (growth by doubling,
    /// or a reservation larger than what came), and drops the cells a
    /// reservation made for classes that never came.
    pub fn shrink_to_fit(&mut self) {
        let classes = &self.classes;
        self.cells
            .retain(|(class, _), c| !c.is_empty() || classes.contains_key(class));
        for c in self.cells.values_mut() {
            c.shrink_to_fit();
        }
        self.locate.shrink_to_fit();
    }

    /// Room for `n` more entries of unsplit partition `class`, exactly: a
    /// load that knows each partition's size reserves it rather than grow
    /// by doubling (up to twice the memory at its peak).
    pub fn reserve_class(&mut self, class: i32, n: usize) {
        if self
            .classes
            .get(&class)
            .is_some_and(|i| !i.lists.is_empty())
        {
            return;
        }
        let (dims, compact) = (self.dims, self.compact());
        self.cells
            .entry((class, 0))
            .or_insert_with(|| Cell::new(class, dims, compact))
            .reserve_exact(n);
        self.locate.reserve(n);
    }

    /// Brings the centroids of changed classes up to date (cheap).
    pub fn refresh_centroids(&mut self) {
        let mut dirty = std::mem::take(&mut self.dirty);
        dirty.sort_unstable();
        dirty.dedup();
        let dims = self.dims;
        for class in dirty {
            let mut sum = vec![0f32; dims];
            for (_, c) in self.cells.iter_mut().filter(|((k, _), _)| *k == class) {
                c.refresh_centroid();
                for (s, x) in sum.iter_mut().zip(&c.sum) {
                    *s += x;
                }
            }
            if let Some(info) = self.classes.get_mut(&class) {
                info.centroid_code.clear();
                if kernels::normalize(&mut sum) {
                    info.centroid_scale = kernels::quantize(&sum, &mut info.centroid_code);
                }
            }
        }
    }

    /// True when some class grew past its split threshold.
    pub fn needs_split(&self) -> bool {
        self.classes.values().any(|i| i.count >= i.split_at)
    }

    pub fn meta(&self, id: u64) -> Option<Meta> {
        let (class, list, slot) = *self.locate.get(&id)?;
        self.cells.get(&(class, list))?.meta.get(slot).cloned()
    }

    /// Gives `id` the label `label`; false when it is not here. Searches
    /// that hold the old metadata finish with it.
    pub fn set_label(&mut self, id: u64, label: &str) -> bool {
        let Some(&(class, list, slot)) = self.locate.get(&id) else {
            return false;
        };
        let Some(meta) = self
            .cells
            .get_mut(&(class, list))
            .and_then(|c| c.meta.get_mut(slot))
        else {
            return false;
        };
        *meta = meta.with_label(label);
        true
    }

    /// Images per label.
    pub fn label_counts(&self) -> HashMap<String, u64> {
        let mut out: HashMap<&str, u64> = HashMap::new();
        for c in self.cells.values() {
            for m in &c.meta {
                *out.entry(m.label()).or_default() += 1;
            }
        }
        out.into_iter().map(|(l, n)| (l.to_string(), n)).collect()
    }

    /// The class and vector of `id` as memory holds it: exact in full
    /// storage, decoded from the int8 code in compact storage.
    pub fn feature(&self, id: u64) -> Option<(i32, Vec<f32>)> {
        let (class, list, slot) = *self.locate.get(&id)?;
        let c = self.cells.get(&(class, list))?;
        Some((class, c.approx(slot).into_owned()))
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod refine_tests;

#[cfg(test)]
mod compact_tests;

#[cfg(test)]
mod probe_tests;

#[cfg(test)]
mod expand_tests;

#[cfg(test)]
mod peers_tests;
