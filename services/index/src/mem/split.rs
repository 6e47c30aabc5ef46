//! Splitting a grown class partition into k-means cells: planned under the
//! read lock (the expensive part), applied under the write lock.

use std::collections::HashMap;

use super::{Cell, MemIndex, SplitPlan, CELL_TARGET};
use crate::kernels;

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

pub(super) fn nearest(cents: &[Vec<f32>], v: &[f32]) -> usize {
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

impl MemIndex {
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
                            for slot in 0..c.len() {
                                data.extend_from_slice(&c.approx(slot));
                            }
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
        let (dims, compact) = (self.dims, self.compact());
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
                            .unwrap_or_else(|| nearest(&lists, &c.approx(slot)) as u32)
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
                .or_insert_with(|| Cell::new(class, dims, compact));
            cell.reserve_exact(size);
        }
        for (c, t) in old.iter().zip(&targets) {
            for (slot, &list) in t.iter().enumerate() {
                let cell = self
                    .cells
                    .entry((class, list))
                    .or_insert_with(|| Cell::new(class, dims, compact));
                let new_slot = cell.push_from(c, slot);
                self.locate.insert(c.ids[slot], (class, list, new_slot));
            }
        }
        if let Some(info) = self.classes.get_mut(&class) {
            info.lists = lists;
            info.split_at = n * 2;
        }
    }
}
