//! A cell's storage: ids, f32 vectors, int8 codes and metadata side by side,
//! so that a scan reads one contiguous buffer; beside them the augmented
//! (database-side augmentation) copies that refined searches rank by.

use super::Meta;
use crate::kernels;

/// One cell: a whole class partition, or a k-means part of a big one. Its
/// vectors sit in one contiguous buffer.
#[derive(Debug)]
pub struct Cell {
    pub class: i32,
    pub(super) dims: usize,
    /// Compact storage: no f32 vectors and no augmented copies here, only
    /// the int8 codes (exact vectors come from a [`super::VectorSource`]).
    pub(super) compact: bool,
    pub(super) ids: Vec<u64>,
    pub(super) vecs: Vec<f32>,
    pub(super) codes: Vec<i8>,
    pub(super) scales: Vec<f32>,
    pub(super) meta: Vec<Meta>,
    pub(super) sum: Vec<f32>,
    /// The centroid's int8 code and scale (it is kept only as a code):
    /// choosing the cells a probe search reads compares the query with
    /// every cell's centroid (about 5,000 at 10M), and the codes are a
    /// quarter of the bytes f32 would be.
    pub(super) centroid_code: Vec<i8>,
    pub(super) centroid_scale: f32,
    /// Augmented vectors (unit length), their int8 codes and scales. A new
    /// entry starts with its raw vector until its neighbours are known.
    pub(super) aug: Vec<f32>,
    pub(super) aug_codes: Vec<i8>,
    pub(super) aug_scales: Vec<f32>,
    /// The dot product of each entry with the last neighbour its augmented
    /// vector sums (`f32::NEG_INFINITY` until computed): a new vector
    /// closer than this changes that augmented vector.
    pub(super) kth: Vec<f32>,
}

impl Cell {
    pub(super) fn new(class: i32, dims: usize, compact: bool) -> Self {
        Self {
            class,
            dims,
            compact,
            ids: Vec::new(),
            vecs: Vec::new(),
            codes: Vec::new(),
            scales: Vec::new(),
            meta: Vec::new(),
            sum: vec![0.0; dims],
            centroid_code: vec![0; dims],
            centroid_scale: 1.0,
            aug: Vec::new(),
            aug_codes: Vec::new(),
            aug_scales: Vec::new(),
            kth: Vec::new(),
        }
    }

    /// Appends every entry of `other` (same class); returns the ids with
    /// their new slots.
    pub(super) fn append(&mut self, mut other: Cell) -> Vec<(u64, usize)> {
        let base = self.ids.len();
        let moved: Vec<(u64, usize)> = other
            .ids
            .iter()
            .enumerate()
            .map(|(i, id)| (*id, base + i))
            .collect();
        // Exactly: a load appends one half of a partition to the other, and
        // growth by doubling would leave up to half of it spare.
        self.reserve_exact(other.len());
        self.ids.append(&mut other.ids);
        self.vecs.append(&mut other.vecs);
        self.codes.append(&mut other.codes);
        self.scales.append(&mut other.scales);
        self.meta.append(&mut other.meta);
        self.aug.append(&mut other.aug);
        self.aug_codes.append(&mut other.aug_codes);
        self.aug_scales.append(&mut other.aug_scales);
        self.kth.append(&mut other.kth);
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

    /// Gives back the spare capacity growth left in every buffer.
    pub(super) fn shrink_to_fit(&mut self) {
        self.ids.shrink_to_fit();
        self.vecs.shrink_to_fit();
        self.codes.shrink_to_fit();
        self.scales.shrink_to_fit();
        self.meta.shrink_to_fit();
        self.aug.shrink_to_fit();
        self.aug_codes.shrink_to_fit();
        self.aug_scales.shrink_to_fit();
        self.kth.shrink_to_fit();
    }

    pub fn bytes(&self) -> usize {
        self.ids.len() * 8
            + self.vecs.len() * 4
            + self.codes.len()
            + self.scales.len() * 4
            + self.meta.len() * std::mem::size_of::<Meta>()
            + self.meta.iter().map(Meta::heap_bytes).sum::<usize>()
            + (self.sum.len() * 4 + self.centroid_code.len())
            + self.aug.len() * 4
            + self.aug_codes.len()
            + self.aug_scales.len() * 4
            + self.kth.len() * 4
    }

    /// Bytes of the augmented copies alone (what refined ranking adds).
    pub fn augmented_bytes(&self) -> usize {
        self.aug.len() * 4 + self.aug_codes.len() + self.aug_scales.len() * 4 + self.kth.len() * 4
    }

    /// The f32 vector of `slot`; full storage only (see `approx`).
    pub(super) fn vector(&self, slot: usize) -> &[f32] {
        debug_assert!(!self.compact, "compact cells hold no f32 vectors");
        &self.vecs[slot * self.dims..(slot + 1) * self.dims]
    }

    /// The vector of `slot` as stored here: exact in full storage, decoded
    /// from its int8 code in compact storage (error about 1e-3 per unit).
    pub(super) fn approx(&self, slot: usize) -> std::borrow::Cow<'_, [f32]> {
        if self.compact {
            let d = self.dims;
            let s = self.scales[slot];
            std::borrow::Cow::Owned(
                self.codes[slot * d..(slot + 1) * d]
                    .iter()
                    .map(|&c| f32::from(c) * s)
                    .collect(),
            )
        } else {
            std::borrow::Cow::Borrowed(self.vector(slot))
        }
    }

    pub(super) fn augmented(&self, slot: usize) -> &[f32] {
        &self.aug[slot * self.dims..(slot + 1) * self.dims]
    }

    /// Gives entry `slot` its augmented vector (unit length) and the dot
    /// product of its last neighbour.
    pub(super) fn set_augmented(&mut self, slot: usize, aug: &[f32], kth: f32) {
        let d = self.dims;
        self.aug[slot * d..(slot + 1) * d].copy_from_slice(aug);
        let mut code = Vec::with_capacity(d);
        self.aug_scales[slot] = kernels::quantize(aug, &mut code);
        self.aug_codes[slot * d..(slot + 1) * d].copy_from_slice(&code);
        self.kth[slot] = kth;
    }

    pub(super) fn refresh_centroid(&mut self) {
        let n = self.ids.len().max(1) as f32;
        let mut c: Vec<f32> = self.sum.iter().map(|s| s / n).collect();
        if !kernels::normalize(&mut c) {
            c.iter_mut().for_each(|x| *x = 0.0);
        }
        self.centroid_code.clear();
        self.centroid_scale = kernels::quantize(&c, &mut self.centroid_code);
    }

    /// The query's similarity to the centroid, from the codes (within about
    /// 1e-3 of the f32 dot product): what orders cells for a probe.
    pub(super) fn centroid_dot(&self, (code, scale): (&[i8], f32)) -> f32 {
        kernels::dot_i8(code, &self.centroid_code) as f32 * scale * self.centroid_scale
    }

    pub(super) fn push(&mut self, id: u64, feature: &[f32], meta: Meta) -> usize {
        self.ids.push(id);
        let n = self.codes.len();
        let s = kernels::quantize(feature, &mut self.codes);
        self.scales.push(s);
        self.meta.push(meta);
        if !self.compact {
            self.vecs.extend_from_slice(feature);
            self.aug.extend_from_slice(feature);
            self.aug_codes.extend_from_slice(&self.codes[n..]);
            self.aug_scales.push(s);
            self.kth.push(f32::NEG_INFINITY);
        }
        for (acc, x) in self.sum.iter_mut().zip(feature) {
            *acc += *x;
        }
        self.ids.len() - 1
    }

    /// Copies entry `slot` of `other` (codes included, no re-quantising).
    pub(super) fn push_from(&mut self, other: &Cell, slot: usize) -> usize {
        let d = self.dims;
        let v = other.approx(slot);
        self.ids.push(other.ids[slot]);
        self.codes
            .extend_from_slice(&other.codes[slot * d..(slot + 1) * d]);
        self.scales.push(other.scales[slot]);
        self.meta.push(other.meta[slot].clone());
        if !self.compact {
            self.vecs.extend_from_slice(&v);
            self.aug.extend_from_slice(other.augmented(slot));
            self.aug_codes
                .extend_from_slice(&other.aug_codes[slot * d..(slot + 1) * d]);
            self.aug_scales.push(other.aug_scales[slot]);
            self.kth.push(other.kth[slot]);
        }
        for (acc, x) in self.sum.iter_mut().zip(v.iter()) {
            *acc += *x;
        }
        self.ids.len() - 1
    }

    pub(super) fn reserve_exact(&mut self, n: usize) {
        self.ids.reserve_exact(n);
        self.codes.reserve_exact(n * self.dims);
        self.scales.reserve_exact(n);
        self.meta.reserve_exact(n);
        if !self.compact {
            self.vecs.reserve_exact(n * self.dims);
            self.aug.reserve_exact(n * self.dims);
            self.aug_codes.reserve_exact(n * self.dims);
            self.aug_scales.reserve_exact(n);
            self.kth.reserve_exact(n);
        }
    }

    /// Removes `slot` by moving the last entry into it; returns the id that
    /// moved there, if any.
    pub(super) fn swap_remove(&mut self, slot: usize) -> Option<u64> {
        let d = self.dims;
        let gone = self.approx(slot).into_owned();
        for (acc, x) in self.sum.iter_mut().zip(&gone) {
            *acc -= *x;
        }
        let last = self.ids.len() - 1;
        self.ids.swap_remove(slot);
        self.scales.swap_remove(slot);
        self.meta.swap_remove(slot);
        if slot != last {
            self.codes.copy_within(last * d..(last + 1) * d, slot * d);
        }
        self.codes.truncate(last * d);
        if !self.compact {
            self.aug_scales.swap_remove(slot);
            self.kth.swap_remove(slot);
            if slot != last {
                self.vecs.copy_within(last * d..(last + 1) * d, slot * d);
                self.aug.copy_within(last * d..(last + 1) * d, slot * d);
                self.aug_codes
                    .copy_within(last * d..(last + 1) * d, slot * d);
            }
            self.vecs.truncate(last * d);
            self.aug.truncate(last * d);
            self.aug_codes.truncate(last * d);
        }
        (slot != last).then(|| self.ids[slot])
    }
}
