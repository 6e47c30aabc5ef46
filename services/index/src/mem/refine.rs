//! Database-side augmentation (DBA): every vector gets an augmented copy,
//! the sum of its nearest raw neighbours (itself first) weighted by
//! similarity^alpha, which refined searches rank by (Radenović, Tolias and
//! Chum, TPAMI 2018). Raw vectors stay the truth; augmented copies are
//! recomputed from them. What is out of date is tracked per id: `stale`
//! entries need their augmented vector computed again, `fresh` ones are new
//! and may also change their neighbours' vectors.

use std::collections::HashMap;

use super::search::Space;
use super::{Filter, MemIndex, Mode, ProbeRule, Query};
use crate::kernels;

/// The parameters of refined ranking.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Refine {
    /// Neighbours summed into an augmented vector, the vector itself
    /// included (1 leaves vectors as they are).
    pub dba_k: usize,
    pub dba_alpha: f32,
    /// Neighbours of the query summed into the expanded query (0: none).
    pub qe_k: usize,
    pub qe_alpha: f32,
}

/// Chosen by leave-one-out on caltech101 (train part) and flowers5, with
/// the query taken out of its neighbours' augmented vectors: mAP rose on
/// both for dba_k 7 to 20 and qe_k 5 to 15 with alpha 2 or 3, and the
/// middle of that plateau is taken (docs/BENCHMARKS.md, "Refined ranking").
impl Default for Refine {
    fn default() -> Self {
        Self {
            dba_k: 10,
            dba_alpha: 3.0,
            qe_k: 10,
            qe_alpha: 3.0,
        }
    }
}

/// Neighbours looked at, per changed vector, for augmented vectors it
/// changes: a neighbour's list holds `dba_k` entries, and a vector can be
/// among them without being among its own nearest few.
pub const AFFECT_FACTOR: usize = 4;

/// An augmented vector computed under the read lock, applied under the
/// write lock if its entry did not change meanwhile.
#[derive(Debug, Clone)]
pub struct Augmented {
    pub id: u64,
    raw: Vec<f32>,
    aug: Vec<f32>,
    kth: f32,
    /// Raw neighbours (id, dot), nearest first, for the vectors this one
    /// changes when it is new.
    neighbours: Vec<(u64, f32)>,
}

/// An augmented vector begun: the entry's raw vector and its raw
/// neighbours (id, dot) found so far, nearest first.
#[derive(Debug, Clone)]
pub struct Pending {
    pub id: u64,
    pub raw: Vec<f32>,
    /// New: its neighbours are also the vectors it may change.
    pub fresh: bool,
    /// Neighbours wanted: `dba_k`, more for a fresh entry.
    pub want: usize,
    pub neighbours: Vec<(u64, f32)>,
}

impl Pending {
    /// Adds neighbours found elsewhere (other shards): all of them ranked
    /// together as one index ranks its own, nearest first (ties by id),
    /// the best `want` kept.
    pub fn merge(&mut self, more: &[(u64, f32)]) {
        self.neighbours.extend_from_slice(more);
        self.neighbours
            .sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        self.neighbours.dedup_by_key(|n| n.0);
        self.neighbours.truncate(self.want);
    }

    /// The neighbours the augmented vector sums (the rest only tell which
    /// vectors a fresh entry changes).
    pub fn summed(&self) -> impl Iterator<Item = u64> + '_ {
        self.neighbours.iter().take(self.want_summed()).map(|n| n.0)
    }

    fn want_summed(&self) -> usize {
        if self.fresh {
            self.want / AFFECT_FACTOR
        } else {
            self.want
        }
    }
}

impl Augmented {
    /// For a new entry, its raw neighbours (id, dot): those whose
    /// augmented vector it joins go stale once it is applied.
    pub fn neighbours(&self) -> &[(u64, f32)] {
        &self.neighbours
    }
}

/// Where refined ranking of a collection stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RefineState {
    /// Entries whose augmented vector is out of date.
    pub stale: usize,
    /// Entries whose effect on their neighbours is not accounted for yet.
    pub fresh: usize,
    /// Changes (stale marks) since the last refresh started.
    pub changed: usize,
}

#[derive(Debug, Default)]
pub(super) struct Upkeep {
    /// Stale id -> the mark counter when it was last marked.
    pub(super) stale: HashMap<u64, u64>,
    pub(super) fresh: HashMap<u64, u64>,
    marks: u64,
    changed: usize,
}

impl Upkeep {
    pub(super) fn mark(&mut self, id: u64, fresh: bool) {
        self.marks += 1;
        if self.stale.insert(id, self.marks).is_none() {
            self.changed += 1;
        }
        if fresh {
            self.fresh.insert(id, self.marks);
        }
    }

    pub(super) fn forget(&mut self, id: u64) {
        self.stale.remove(&id);
        self.fresh.remove(&id);
    }

    pub(super) fn clear(&mut self) {
        *self = Self::default();
    }
}

impl MemIndex {
    pub fn refine(&self) -> Refine {
        self.refine
    }

    pub fn set_refine(&mut self, r: Refine) {
        self.refine = r;
    }

    pub fn refine_state(&self) -> RefineState {
        RefineState {
            stale: self.upkeep.stale.len(),
            fresh: self.upkeep.fresh.len(),
            changed: self.upkeep.changed,
        }
    }

    /// The mark counter now: ids marked after it stay stale when applied.
    pub fn mark_counter(&self) -> u64 {
        self.upkeep.marks
    }

    /// Stale ids (fresh ones first, as their neighbours wait on them), at
    /// most `max`.
    pub fn stale_ids(&self, max: usize) -> Vec<u64> {
        let mut out: Vec<u64> = self.upkeep.fresh.keys().copied().take(max).collect();
        out.sort_unstable();
        if out.len() < max {
            let mut rest: Vec<u64> = self
                .upkeep
                .stale
                .keys()
                .filter(|id| !self.upkeep.fresh.contains_key(id))
                .copied()
                .collect();
            rest.sort_unstable();
            rest.truncate(max - out.len());
            out.extend(rest);
        }
        out
    }

    /// Marks every entry stale, none fresh (after a load or a rebuild, or
    /// on demand): computing each from all the others accounts for all.
    pub fn mark_all_stale(&mut self) {
        self.upkeep.fresh.clear();
        if self.compact() {
            return;
        }
        let ids = self.ids();
        for id in ids {
            self.upkeep.mark(id, false);
        }
    }

    /// Starts counting changes for the next refresh.
    pub fn reset_changed(&mut self) {
        self.upkeep.changed = 0;
    }

    /// Computes every stale augmented vector here and now (tools and
    /// tests; the service does it in steps, off the write lock). Returns
    /// how many were computed.
    pub fn augment_stale(&mut self, rule: ProbeRule) -> usize {
        let mut n = 0;
        // New entries mark their neighbours stale: a second round at most.
        for _ in 0..3 {
            let ids = self.stale_ids(usize::MAX);
            if ids.is_empty() {
                break;
            }
            let started = self.mark_counter();
            let done: Vec<Augmented> = ids
                .iter()
                .filter_map(|id| self.augment(*id, rule))
                .collect();
            for a in &done {
                self.apply_augmented(a, started);
            }
            n += done.len();
        }
        n
    }

    /// Raw neighbours of `v` (id, dot), nearest first, by the probe rule.
    pub fn raw_neighbours(&self, v: &[f32], n: usize, rule: ProbeRule) -> Vec<(u64, f32)> {
        let every = Filter::default();
        let (cands, _) = self.ranked(
            &Query {
                vector: v,
                predicted_class: None,
                top_k: n,
                mode: Mode::Probe,
                min_similarity: 0.0,
                exclude_id: None,
                filter: &every,
            },
            rule,
            Space::Raw,
        );
        cands
            .into_iter()
            .map(|c| (c.id, kernels::dot_from_distance(c.dist)))
            .collect()
    }

    /// The augmented vector of stored entry `id`; None when it is gone.
    pub fn augment(&self, id: u64, rule: ProbeRule) -> Option<Augmented> {
        let p = self.augment_start(id, rule)?;
        Some(self.augment_finish(p, &HashMap::new()))
    }

    /// The first half of [`augment`](Self::augment): the entry's raw
    /// vector and its raw neighbours here. On a sharded index the
    /// neighbours other shards hold join them ([`Pending::merge`]) before
    /// [`augment_finish`](Self::augment_finish) sums them.
    pub fn augment_start(&self, id: u64, rule: ProbeRule) -> Option<Pending> {
        if self.compact() {
            return None;
        }
        let (_, raw) = self.feature(id)?;
        let fresh = self.upkeep.fresh.contains_key(&id);
        let k = self.refine.dba_k.max(1);
        let want = if fresh { k * AFFECT_FACTOR } else { k };
        let neighbours = self.raw_neighbours(&raw, want, rule);
        Some(Pending {
            id,
            raw,
            fresh,
            want,
            neighbours,
        })
    }

    /// The augmented vector of what `augment_start` began: the first
    /// `dba_k` neighbours summed, their vectors from memory or, for
    /// neighbours other shards hold, from `remote`.
    pub fn augment_finish(&self, p: Pending, remote: &HashMap<u64, Vec<f32>>) -> Augmented {
        let Pending {
            id,
            raw,
            fresh,
            mut neighbours,
            ..
        } = p;
        let k = self.refine.dba_k.max(1);
        // Ties at distance 0 may rank a copy before the vector itself: the
        // vector is always its own first neighbour.
        if let Some(pos) = neighbours.iter().position(|(n, _)| *n == id) {
            let own = neighbours.remove(pos);
            neighbours.insert(0, (own.0, 1.0));
        }
        let mut aug = vec![0.0f32; raw.len()];
        let used = neighbours.len().min(k);
        for &(n, dot) in &neighbours[..used] {
            let here = self.feature(n).map(|(_, v)| v);
            let Some(v) = here
                .as_deref()
                .or_else(|| remote.get(&n).map(Vec::as_slice))
            else {
                continue;
            };
            let w = dot.max(0.0).powf(self.refine.dba_alpha);
            for (a, x) in aug.iter_mut().zip(v) {
                *a += w * x;
            }
        }
        if !kernels::normalize(&mut aug) {
            aug.copy_from_slice(&raw);
        }
        // With fewer than k neighbours any newcomer joins the list.
        let kth = if used >= k {
            neighbours[used - 1].1
        } else {
            f32::NEG_INFINITY
        };
        if !fresh {
            neighbours.clear();
        }
        Augmented {
            id,
            raw,
            aug,
            kth,
            neighbours,
        }
    }

    /// Applies what `augment` computed (when `started` is the mark counter
    /// at that time): the entry's augmented vector, and for a new entry the
    /// neighbours it changes marked stale. An entry replaced or marked
    /// again since stays stale. Returns the entries marked stale.
    pub fn apply_augmented(&mut self, a: &Augmented, started: u64) -> usize {
        let Some(&(class, list, slot)) = self.locate.get(&a.id) else {
            return 0;
        };
        let Some(cell) = self.cells.get_mut(&(class, list)) else {
            return 0;
        };
        if cell.compact || cell.vector(slot) != a.raw.as_slice() {
            return 0;
        }
        cell.set_augmented(slot, &a.aug, a.kth);
        if self.upkeep.stale.get(&a.id).is_some_and(|m| *m <= started) {
            self.upkeep.stale.remove(&a.id);
        }
        let mut marked = 0;
        if self.upkeep.fresh.get(&a.id).is_some_and(|m| *m <= started) {
            self.upkeep.fresh.remove(&a.id);
            marked = self.mark_changed_by(a.id, &a.neighbours);
        }
        marked
    }

    /// Marks stale the entries among `neighbours` (of `id`) whose augmented
    /// vector would hold `id`: it is closer to them than their last one.
    fn mark_changed_by(&mut self, id: u64, neighbours: &[(u64, f32)]) -> usize {
        let mut marked = 0;
        for &(n, dot) in neighbours {
            if n == id {
                continue;
            }
            let Some(&(class, list, slot)) = self.locate.get(&n) else {
                continue;
            };
            let Some(kth) = self.cells.get(&(class, list)).map(|c| c.kth[slot]) else {
                continue;
            };
            if dot >= kth {
                self.upkeep.mark(n, false);
                marked += 1;
            }
        }
        marked
    }

    /// Before `id` is removed: the entries whose augmented vector holds it
    /// (found by its raw neighbours), to mark stale once it is gone.
    pub fn affected_by_removal(&self, id: u64, rule: ProbeRule) -> Vec<(u64, f32)> {
        if self.compact() {
            return Vec::new();
        }
        let Some((_, raw)) = self.feature(id) else {
            return Vec::new();
        };
        let n = self.refine.dba_k.max(1) * AFFECT_FACTOR;
        self.raw_neighbours(&raw, n, rule)
            .into_iter()
            .filter(|(other, _)| *other != id)
            .collect()
    }

    /// Marks stale, of `neighbours` (here) of image `id` that another shard
    /// added or deleted, those whose augmented vector it enters or leaves.
    pub fn mark_changed_elsewhere(&mut self, id: u64, neighbours: &[(u64, f32)]) -> usize {
        self.mark_changed_by(id, neighbours)
    }

    /// Marks stale what `affected_by_removal` found for the removed `id`.
    pub fn mark_removed(&mut self, id: u64, affected: &[(u64, f32)]) -> usize {
        self.mark_changed_by(id, affected)
    }

    /// Takes over the augmented vectors of `old` (the same collection
    /// before a reload) for entries whose raw vector did not change; new or
    /// changed entries are marked fresh, and the neighbours of entries gone
    /// since (`removed`, from `old.affected_by_removal`) stale.
    pub fn adopt_augmented(&mut self, old: &MemIndex, removed: &[(u64, Vec<(u64, f32)>)]) {
        self.upkeep.clear();
        if self.compact() || old.compact() {
            return;
        }
        self.upkeep.marks = old.upkeep.marks;
        let ids = self.ids();
        for id in ids {
            let (class, list, slot) = self.locate[&id];
            let kept = old.locate.get(&id).and_then(|&(oc, ol, os)| {
                let o = old.cells.get(&(oc, ol))?;
                let c = self.cells.get(&(class, list))?;
                (o.vector(os) == c.vector(slot)).then(|| (o.augmented(os).to_vec(), o.kth[os]))
            });
            match kept {
                Some((aug, kth)) => {
                    if let Some(c) = self.cells.get_mut(&(class, list)) {
                        c.set_augmented(slot, &aug, kth);
                    }
                    if let Some(m) = old.upkeep.stale.get(&id) {
                        self.upkeep.stale.insert(id, *m);
                        self.upkeep
                            .fresh
                            .extend(old.upkeep.fresh.get(&id).map(|m| (id, *m)));
                    }
                }
                None => self.upkeep.mark(id, true),
            }
        }
        self.upkeep.changed += old.upkeep.changed;
        for (id, affected) in removed {
            self.mark_changed_by(*id, affected);
        }
    }
}
