//! Near-duplicate pairs and their groups, on a collection's memory: free of
//! the database and the runtime, so that tests and measurements run it on
//! any set of vectors.

use std::collections::HashMap;

use crate::kernels::{self, distance_from_dot, similarity};
use crate::mem::{Filter, MemIndex, Mode, ProbeRule, Query};

/// How the neighbours of each image are looked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scan {
    /// The image's own partition first, then the cells nearest to it until
    /// the probe rule stops: near-copies have near-identical features, so
    /// they are almost always in the first cells read.
    Probe,
    /// Every vector: the reference the probe is measured against.
    Exact,
}

/// When two groups become one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Linkage {
    /// Any pair links them (union-find): a chain of near-copies can join
    /// two different images.
    Single,
    /// Only when every member of one is a near-duplicate of every member
    /// of the other: no chaining, but two copies degraded differently
    /// (a downscale and a crop) often fall below the threshold of each
    /// other, and their original's group splits.
    Complete,
    /// Only when every member of the joined group is a near-duplicate of
    /// its first (oldest) member, the one a user keeps: a chain reaches
    /// one step from it at most, and each member's listed similarity (to
    /// the first) is at least the threshold.
    Star,
}

#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub min_similarity: f32,
    /// Neighbours looked for per image: a group larger than this is still
    /// found whole, as its members' neighbour lists overlap.
    pub neighbours: usize,
    pub scan: Scan,
    pub linkage: Linkage,
}

/// Two images whose similarity is at least the threshold; `a < b`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pair {
    pub a: u64,
    pub b: u64,
    pub similarity: f32,
}

/// Members by id (oldest first), each with its similarity to the first.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    pub members: Vec<(u64, f32)>,
}

/// The largest distance of a near-duplicate: similarity 1/(1+d) >= s
/// means d <= 1/s - 1.
pub fn max_distance(min_similarity: f32) -> f32 {
    1.0 / min_similarity - 1.0
}

/// The near-duplicates of image `id`, each pair with its smaller id first:
/// a pair is looked for from both ends, so one the probe misses from one
/// end may still be found from the other ([`dedup_pairs`] merges them).
pub fn pairs_of(mem: &MemIndex, id: u64, opts: &Options, rule: ProbeRule) -> Vec<Pair> {
    let Some((class, feature)) = mem.feature(id) else {
        return Vec::new();
    };
    pairs_near(mem, id, class, &feature, opts, rule)
}

/// The near-duplicates in `mem` of image `id` (predicted `class`, unit
/// `feature`), which `mem` need not hold: on a sharded index every image
/// is also looked for among the other shards' partitions.
pub fn pairs_near(
    mem: &MemIndex,
    id: u64,
    class: i32,
    feature: &[f32],
    opts: &Options,
    rule: ProbeRule,
) -> Vec<Pair> {
    let (hits, _) = mem.search(
        &Query {
            vector: feature,
            predicted_class: Some(class),
            top_k: opts.neighbours,
            mode: match opts.scan {
                Scan::Probe => Mode::Probe,
                Scan::Exact => Mode::Exact,
            },
            min_similarity: opts.min_similarity,
            exclude_id: Some(id),
            filter: &Filter::default(),
        },
        rule,
    );
    // The search's distances are exact f32 (int8 only shortlists).
    hits.into_iter()
        .filter(|h| h.similarity >= opts.min_similarity)
        .map(|h| Pair {
            a: id.min(h.id),
            b: id.max(h.id),
            similarity: h.similarity,
        })
        .collect()
}

/// Every pair of the collection, deduplicated, by one call per id.
pub fn all_pairs(mem: &MemIndex, opts: &Options, rule: ProbeRule) -> Vec<Pair> {
    let mut ids = mem.ids();
    ids.sort_unstable();
    dedup_pairs(
        ids.iter()
            .flat_map(|&id| pairs_of(mem, id, opts, rule))
            .collect(),
    )
}

/// One entry per (a, b).
pub fn dedup_pairs(mut pairs: Vec<Pair>) -> Vec<Pair> {
    pairs.sort_by_key(|p| (p.a, p.b));
    pairs.dedup_by(|x, y| x.a == y.a && x.b == y.b);
    pairs
}

pub fn sim(a: &[f32], b: &[f32]) -> f32 {
    similarity(distance_from_dot(kernels::dot(a, b)))
}

/// Groups the images of `pairs`. `features` holds the unit feature of
/// every id of a pair (complete linkage checks every cross pair exactly,
/// also those beyond the neighbour lists); an id without one is left out.
pub fn group(pairs: &[Pair], features: &HashMap<u64, Vec<f32>>, opts: &Options) -> Vec<Group> {
    let mut order: Vec<&Pair> = pairs
        .iter()
        .filter(|p| features.contains_key(&p.a) && features.contains_key(&p.b))
        .collect();
    // Most similar first: the closest copies form the core of a group
    // before a weaker link is considered.
    order.sort_by(|x, y| {
        y.similarity
            .total_cmp(&x.similarity)
            .then((x.a, x.b).cmp(&(y.a, y.b)))
    });
    let mut group_of: HashMap<u64, usize> = HashMap::new();
    let mut groups: Vec<Vec<u64>> = Vec::new();
    for p in order {
        let ga = *group_of.entry(p.a).or_insert_with(|| {
            groups.push(vec![p.a]);
            groups.len() - 1
        });
        let gb = *group_of.entry(p.b).or_insert_with(|| {
            groups.push(vec![p.b]);
            groups.len() - 1
        });
        if ga == gb {
            continue;
        }
        let joins = match opts.linkage {
            Linkage::Single => true,
            Linkage::Complete => groups[ga].iter().all(|x| {
                groups[gb]
                    .iter()
                    .all(|y| sim(&features[x], &features[y]) >= opts.min_similarity)
            }),
            Linkage::Star => {
                let all = || groups[ga].iter().chain(&groups[gb]);
                let first = all().min().copied().unwrap_or(p.a);
                all().all(|x| {
                    *x == first || sim(&features[&first], &features[x]) >= opts.min_similarity
                })
            }
        };
        if !joins {
            continue;
        }
        let (big, small) = if groups[ga].len() >= groups[gb].len() {
            (ga, gb)
        } else {
            (gb, ga)
        };
        let moved = std::mem::take(&mut groups[small]);
        for id in &moved {
            group_of.insert(*id, big);
        }
        groups[big].extend(moved);
    }
    let mut out: Vec<Group> = groups
        .into_iter()
        .filter(|g| g.len() >= 2)
        .map(|mut g| {
            g.sort_unstable();
            let first = &features[&g[0]];
            Group {
                members: g
                    .iter()
                    .enumerate()
                    .map(|(i, id)| {
                        let s = if i == 0 {
                            1.0
                        } else {
                            sim(first, &features[id])
                        };
                        (*id, s)
                    })
                    .collect(),
            }
        })
        .collect();
    sort_groups(&mut out);
    out
}

/// Largest first, then by first member (oldest first).
pub fn sort_groups(groups: &mut [Group]) {
    groups.sort_by(|x, y| {
        y.members
            .len()
            .cmp(&x.members.len())
            .then(x.members[0].0.cmp(&y.members[0].0))
    });
}

/// The ids of pairs whose features `group` needs, read from memory.
pub fn features_of(mem: &MemIndex, pairs: &[Pair]) -> HashMap<u64, Vec<f32>> {
    let mut out = HashMap::new();
    for p in pairs {
        for id in [p.a, p.b] {
            if let std::collections::hash_map::Entry::Vacant(e) = out.entry(id) {
                if let Some((_, f)) = mem.feature(id) {
                    e.insert(f);
                }
            }
        }
    }
    out
}

/// Groups of a whole collection in one call (tests and measurements).
pub fn find_groups(mem: &MemIndex, opts: &Options, rule: ProbeRule) -> Vec<Group> {
    let pairs = all_pairs(mem, opts, rule);
    let features = features_of(mem, &pairs);
    group(&pairs, &features, opts)
}

#[cfg(test)]
mod tests;
