//! Query expansion across shards. Refined ranking expands the query with
//! its nearest images, and on a sharded index those are spread over the
//! shards: a sharded gateway asks every shard for its best terms
//! ([`Expansion::TermsOnly`]), keeps the best of all as one node would
//! have found them, and hands them to every shard for the second pass
//! ([`Expansion::Given`]). Each shard then expands the query as one node
//! holding every image does, and the image nearest to the query stays
//! first wherever it lives.

use crate::kernels;

/// One of the query's nearest images, as it expands the query.
#[derive(Debug, Clone, PartialEq)]
pub struct Term {
    pub id: u64,
    /// Orders the terms, lower first, ties by id: the probe's distance in
    /// full storage, the negated exact similarity in compact storage.
    pub rank: f32,
    /// What the vector is multiplied by: its similarity to the query to
    /// the power `qe_alpha`.
    pub weight: f32,
    /// The augmented vector in full storage, the raw one in compact.
    pub vector: Vec<f32>,
}

/// Where a refined search takes the images that expand its query.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Expansion {
    /// Its own nearest images (one node holds every image).
    #[default]
    Own,
    /// Only find them: the answer holds the terms and no hits.
    TermsOnly,
    /// The best terms of every shard, best first (see [`best_terms`]).
    Given(Vec<Term>),
}

impl Expansion {
    /// The terms handed in, if any.
    pub(super) fn given(&self) -> Option<&[Term]> {
        match self {
            Expansion::Given(t) => Some(t),
            Expansion::Own | Expansion::TermsOnly => None,
        }
    }
}

/// How many terms a shard answers for `qe_k`: at least one, the nearest
/// image, which refined ranking keeps first even without expansion.
pub fn terms_wanted(qe_k: usize) -> usize {
    qe_k.max(1)
}

/// Every shard's terms ranked together, the best `keep`: what one node
/// holding all of them would have found.
pub fn best_terms(mut terms: Vec<Term>, keep: usize) -> Vec<Term> {
    terms.sort_by(|a, b| a.rank.total_cmp(&b.rank).then(a.id.cmp(&b.id)));
    terms.dedup_by_key(|t| t.id);
    terms.truncate(keep);
    terms
}

/// `query` plus the first `k` terms' vectors times their weights, to unit
/// length (`query` itself when the sum vanishes).
pub(super) fn expand(query: &[f32], terms: &[Term], k: usize) -> Vec<f32> {
    let mut expanded = query.to_vec();
    for t in terms.iter().take(k) {
        for (e, x) in expanded.iter_mut().zip(&t.vector) {
            *e += t.weight * x;
        }
    }
    if !kernels::normalize(&mut expanded) {
        expanded.copy_from_slice(query);
    }
    expanded
}
