//! Augmented vectors across shards, as the service computes them with
//! peers (`index::upkeep`): each shard's neighbours joined by those the
//! other shards find, the vectors summed from wherever they live, and the
//! changes a new or deleted image makes marked on the shard that holds
//! the neighbours. Three shards end with the augmented vectors one index
//! holding everything computes, through a load, inserts and deletes.

use std::collections::HashMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::tests::entry;
use super::*;
use crate::kernels;
use cbir_common::shard::shard_of;

const DIMS: usize = 32;
const SHARDS: u32 = 3;

/// A rule that reads every cell: neighbour lists are exact on both sides.
const ALL: ProbeRule = ProbeRule {
    min_partitions: usize::MAX,
    patience: usize::MAX,
    class_first_cells: 0,
};

/// 18 clusters over 9 classes: most neighbourhoods span two classes,
/// which land on different shards.
fn clustered(ids: std::ops::Range<u64>, seed: u64) -> Vec<Entry> {
    let mut rng = StdRng::seed_from_u64(7);
    let centres: Vec<Vec<f32>> = (0..18).map(|_| unit(&mut rng, None, 1.0)).collect();
    let mut rng = StdRng::seed_from_u64(seed);
    ids.map(|id| {
        let c = id as usize % centres.len();
        // Two classes per cluster: the classifier is unsure between them.
        let class = ((c + (id as usize / centres.len()) % 2) % 9) as i32;
        entry(id, class, unit(&mut rng, Some(&centres[c]), 0.15))
    })
    .collect()
}

fn unit(rng: &mut StdRng, centre: Option<&[f32]>, noise: f32) -> Vec<f32> {
    let mut v: Vec<f32> = (0..DIMS)
        .map(|i| centre.map_or(0.0, |c| c[i]) + rng.random_range(-1.0..1.0f32) * noise)
        .collect();
    assert!(kernels::normalize(&mut v));
    v
}

fn owner(e: &Entry) -> usize {
    shard_of(e.class, SHARDS) as usize
}

fn augmented(m: &MemIndex, id: u64) -> Vec<f32> {
    let (class, list, slot) = m.locate[&id];
    m.cells[&(class, list)].augmented(slot).to_vec()
}

/// What the upkeep of every shard does until nothing is stale: each
/// shard's stale entries with the neighbours of all shards, then the
/// changes new entries make marked where their neighbours live.
fn refresh_shards(shards: &mut [MemIndex]) {
    for _ in 0..4 {
        let mut changes: Vec<(usize, u64, (u64, f32))> = Vec::new();
        for s in 0..shards.len() {
            let ids = shards[s].stale_ids(usize::MAX);
            let started = shards[s].mark_counter();
            let mut done = Vec::new();
            for id in ids {
                let Some(mut p) = shards[s].augment_start(id, ALL) else {
                    continue;
                };
                let mut holder = HashMap::new();
                let mut remote = HashMap::new();
                for (o, other) in shards.iter().enumerate().filter(|(o, _)| *o != s) {
                    let near = other.raw_neighbours(&p.raw, p.want, ALL);
                    for (n, _) in &near {
                        holder.insert(*n, o);
                        remote.insert(*n, other.feature(*n).expect("held").1);
                    }
                    p.merge(&near);
                }
                done.push((shards[s].augment_finish(p, &remote), holder));
            }
            for (a, holder) in &done {
                shards[s].apply_augmented(a, started);
                for &(n, dot) in a.neighbours() {
                    if let Some(o) = holder.get(&n) {
                        changes.push((*o, a.id, (n, dot)));
                    }
                }
            }
        }
        for (o, id, near) in changes {
            shards[o].mark_changed_elsewhere(id, &[near]);
        }
        if shards.iter().all(|m| m.refine_state().stale == 0) {
            return;
        }
    }
    panic!("the shards' upkeep did not settle");
}

/// Every entry of every shard has the augmented vector of one node.
fn assert_like_one_node(one: &MemIndex, shards: &[MemIndex], when: &str) {
    assert_eq!(one.refine_state().stale, 0);
    let mut seen = 0;
    for (s, m) in shards.iter().enumerate() {
        for id in m.ids() {
            let (a, b) = (augmented(one, id), augmented(m, id));
            assert!(
                a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-5),
                "{when}: image {id} on shard {s}: one node {a:?}, shard {b:?}"
            );
            seen += 1;
        }
    }
    assert_eq!(seen, one.len(), "{when}: the shards hold every image");
}

fn add(m: &mut MemIndex, entries: &[Entry]) {
    m.upsert(entries);
    m.refresh_centroids();
}

#[test]
fn shards_with_peers_augment_as_one_node_through_load_inserts_and_deletes() {
    let entries = clustered(1..601, 1);
    let mut one = MemIndex::new(DIMS);
    add(&mut one, &entries);
    one.mark_all_stale();
    one.augment_stale(ALL);
    let mut shards: Vec<MemIndex> = (0..SHARDS).map(|_| MemIndex::new(DIMS)).collect();
    for (s, m) in shards.iter_mut().enumerate() {
        let mine: Vec<Entry> = entries.iter().filter(|e| owner(e) == s).cloned().collect();
        assert!(!mine.is_empty(), "shard {s} holds images");
        add(m, &mine);
        m.mark_all_stale();
    }
    // Without the other shards' neighbours the vectors differ: what the
    // peers change is not nothing.
    let mut alone: Vec<MemIndex> = (0..SHARDS).map(|_| MemIndex::new(DIMS)).collect();
    for (s, m) in alone.iter_mut().enumerate() {
        let mine: Vec<Entry> = entries.iter().filter(|e| owner(e) == s).cloned().collect();
        add(m, &mine);
        m.mark_all_stale();
        m.augment_stale(ALL);
    }
    let differ = entries
        .iter()
        .filter(|e| {
            let (a, b) = (augmented(&one, e.id), augmented(&alone[owner(e)], e.id));
            a.iter().zip(&b).any(|(x, y)| (x - y).abs() > 1e-4)
        })
        .count();
    assert!(
        differ > entries.len() / 4,
        "{differ} of {} differ alone",
        entries.len()
    );

    refresh_shards(&mut shards);
    assert_like_one_node(&one, &shards, "after the load");

    // New images: fresh on their owner, whose neighbours elsewhere go stale.
    let new = clustered(601..661, 2);
    add(&mut one, &new);
    one.augment_stale(ALL);
    for (s, m) in shards.iter_mut().enumerate() {
        let mine: Vec<Entry> = new.iter().filter(|e| owner(e) == s).cloned().collect();
        add(m, &mine);
    }
    refresh_shards(&mut shards);
    assert_like_one_node(&one, &shards, "after inserts");

    // Deleted images: the vectors that summed them, on any shard, go stale.
    let gone: Vec<&Entry> = entries.iter().step_by(37).collect();
    for e in &gone {
        let near = one.affected_by_removal(e.id, ALL);
        one.remove(e.id);
        one.mark_removed(e.id, &near);
    }
    one.refresh_centroids();
    one.augment_stale(ALL);
    for e in &gone {
        let s = owner(e);
        let raw = shards[s].feature(e.id).expect("held").1;
        let near = shards[s].affected_by_removal(e.id, ALL);
        shards[s].remove(e.id);
        shards[s].mark_removed(e.id, &near);
        let want = shards[s].refine().dba_k * AFFECT_FACTOR;
        for o in (0..shards.len()).filter(|o| *o != s) {
            let elsewhere = shards[o].raw_neighbours(&raw, want, ALL);
            shards[o].mark_changed_elsewhere(e.id, &elsewhere);
        }
    }
    for m in &mut shards {
        m.refresh_centroids();
    }
    refresh_shards(&mut shards);
    assert_like_one_node(&one, &shards, "after deletes");
}

#[test]
fn merged_neighbours_rank_as_one_list() {
    let mut p = Pending {
        id: 1,
        raw: vec![1.0, 0.0],
        fresh: false,
        want: 3,
        neighbours: vec![(1, 1.0), (5, 0.5), (7, 0.2)],
    };
    p.merge(&[(9, 0.7), (3, 0.5), (5, 0.5)]);
    assert_eq!(p.neighbours, vec![(1, 1.0), (9, 0.7), (3, 0.5)]);
    assert_eq!(p.summed().collect::<Vec<_>>(), vec![1, 9, 3]);
}
