//! Refined ranking in memory: augmented vectors as defined, kept up to date
//! through inserts and deletes, unchanged by a refresh of an unchanged
//! index, and the searches that use them.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::tests::entry;
use super::*;
use crate::kernels;

const DIMS: usize = 32;

/// Vectors in 12 clusters (cosine ~0.8 to their centre), over 3 classes.
fn clustered(n: usize, seed: u64) -> Vec<Entry> {
    let mut rng = StdRng::seed_from_u64(seed);
    let centres: Vec<Vec<f32>> = (0..12).map(|_| unit(&mut rng, None, 1.0)).collect();
    (0..n)
        .map(|i| {
            let c = i % centres.len();
            entry(
                i as u64 + 1,
                (c % 3) as i32,
                unit(&mut rng, Some(&centres[c]), 0.12),
            )
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

/// A rule that reads every cell: the neighbour lists are exact.
const ALL: ProbeRule = ProbeRule {
    min_partitions: usize::MAX,
    patience: usize::MAX,
    class_first_cells: 0,
};

fn index(entries: &[Entry]) -> MemIndex {
    let mut m = MemIndex::new(DIMS);
    m.upsert(entries);
    m.refresh();
    m.mark_all_stale();
    m.augment_stale(ALL);
    m
}

/// Every entry's augmented vector, by id.
fn augmented(m: &MemIndex) -> Vec<(u64, Vec<f32>)> {
    let mut out: Vec<(u64, Vec<f32>)> = m
        .ids()
        .into_iter()
        .map(|id| {
            let (class, list, slot) = m.locate[&id];
            (id, m.cells[&(class, list)].augmented(slot).to_vec())
        })
        .collect();
    out.sort_by_key(|(id, _)| *id);
    out
}

/// The definition: the sum of the k nearest raw vectors (itself first),
/// each weighted by its cosine to the power alpha, normalised.
fn by_definition(entries: &[Entry], id: u64, r: Refine) -> Vec<f32> {
    let me = &entries.iter().find(|e| e.id == id).unwrap().feature;
    let mut near: Vec<(f32, &Entry)> = entries
        .iter()
        .map(|e| (kernels::dot(me, &e.feature), e))
        .collect();
    near.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.id.cmp(&b.1.id)));
    let mut v = vec![0.0f32; DIMS];
    for (dot, e) in near.iter().take(r.dba_k) {
        let w = dot.max(0.0).powf(r.dba_alpha);
        for (a, x) in v.iter_mut().zip(&e.feature) {
            *a += w * x;
        }
    }
    assert!(kernels::normalize(&mut v));
    v
}

fn close(a: &[f32], b: &[f32]) -> bool {
    a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-5)
}

#[test]
fn augmented_vectors_follow_their_definition() {
    let entries = clustered(300, 1);
    let m = index(&entries);
    assert_eq!(m.refine_state().stale, 0);
    for (id, aug) in augmented(&m) {
        assert!(
            close(&aug, &by_definition(&entries, id, m.refine())),
            "id {id}"
        );
    }
}

#[test]
fn a_refresh_of_an_unchanged_index_changes_nothing() {
    let entries = clustered(400, 2);
    let mut m = index(&entries);
    let before = augmented(&m);
    let query = |m: &MemIndex, q: &[f32]| {
        m.search(
            &Query {
                vector: q,
                predicted_class: None,
                top_k: 20,
                mode: Mode::Refined,
                min_similarity: 0.0,
                exclude_id: None,
                filter: &Filter::default(),
            },
            ProbeRule::default(),
        )
        .0
        .into_iter()
        .map(|h| (h.id, h.score.to_bits(), h.distance.to_bits()))
        .collect::<Vec<_>>()
    };
    let searches: Vec<_> = entries
        .iter()
        .step_by(17)
        .map(|e| query(&m, &e.feature))
        .collect();
    m.mark_all_stale();
    assert_eq!(m.refine_state().stale, 400);
    assert_eq!(m.augment_stale(ALL), 400);
    // Bit for bit: the same vectors, the same answers.
    assert_eq!(augmented(&m), before);
    let again: Vec<_> = entries
        .iter()
        .step_by(17)
        .map(|e| query(&m, &e.feature))
        .collect();
    assert_eq!(again, searches);
}

#[test]
fn inserts_and_deletes_keep_augmented_vectors_as_a_fresh_build() {
    let all = clustered(500, 3);
    let (first, later) = all.split_at(350);
    let mut m = index(first);
    let mut live: Vec<Entry> = first.to_vec();
    let mut rng = StdRng::seed_from_u64(4);
    for batch in later.chunks(30) {
        // Inserts: each new vector gets its own at once (as the service
        // does at insert time); the neighbours it changes go stale.
        m.upsert(batch);
        m.refresh_centroids();
        let started = m.mark_counter();
        let done: Vec<Augmented> = batch.iter().filter_map(|e| m.augment(e.id, ALL)).collect();
        for a in &done {
            m.apply_augmented(a, started);
        }
        for e in batch {
            let (class, list, slot) = m.locate[&e.id];
            assert!(close(
                m.cells[&(class, list)].augmented(slot),
                &by_definition(&[live.as_slice(), batch].concat(), e.id, m.refine())
            ));
        }
        live.extend_from_slice(batch);
        // Deletes: found by their neighbours before they go.
        for _ in 0..10 {
            let gone = live.remove(rng.random_range(0..live.len()));
            let near = m.affected_by_removal(gone.id, ALL);
            assert!(m.remove(gone.id));
            m.mark_removed(gone.id, &near);
        }
        m.refresh_centroids();
    }
    assert!(m.refine_state().stale > 0, "neighbours of changes go stale");
    m.augment_stale(ALL);
    assert_eq!((m.refine_state().stale, m.refine_state().fresh), (0, 0));
    let rebuilt = index(&live);
    for ((id, a), (id2, b)) in augmented(&m).into_iter().zip(augmented(&rebuilt)) {
        assert_eq!(id, id2);
        assert!(close(&a, &b), "id {id} differs from a fresh build");
    }
}

#[test]
fn refined_search_keeps_the_nearest_first_and_shows_raw_similarity() {
    let entries = clustered(600, 5);
    let m = index(&entries);
    let mut rng = StdRng::seed_from_u64(6);
    let every = Filter::default();
    for e in entries.iter().step_by(37) {
        let q = unit(&mut rng, Some(&e.feature), 0.05);
        let ask = |mode| Query {
            vector: &q,
            predicted_class: Some(e.class),
            top_k: 10,
            mode,
            min_similarity: 0.0,
            exclude_id: None,
            filter: &every,
        };
        let (refined, stats) = m.search(&ask(Mode::Refined), ALL);
        let (exact, _) = m.search(&ask(Mode::Exact), ALL);
        assert_eq!(refined.len(), 10);
        assert_eq!(refined[0].id, exact[0].id, "the nearest image stays first");
        assert!(stats.vectors_scanned >= 600, "three passes over everything");
        for h in &refined {
            let (_, f) = m.feature(h.id).unwrap();
            let d = kernels::distance_from_dot(kernels::dot(&q, &f));
            assert!((h.distance - d).abs() < 1e-5);
            assert_eq!(h.similarity, kernels::similarity(h.distance));
        }
        // After the first, the refined score orders the list.
        for w in refined[1..].windows(2) {
            assert!(w[0].score >= w[1].score);
        }
    }
}

#[test]
fn refined_search_honours_filters_paging_and_exclusion() {
    let entries = clustered(600, 7);
    let m = index(&entries);
    let only = Filter {
        labels_in: vec!["l1".into()],
        ..Filter::default()
    };
    let q = &entries[4].feature;
    let ask = |top_k, exclude_id, filter| Query {
        vector: q,
        predicted_class: None,
        top_k,
        mode: Mode::Refined,
        min_similarity: 0.0,
        exclude_id,
        filter,
    };
    let (hits, _) = m.search(&ask(30, Some(entries[4].id), &only), ProbeRule::default());
    assert_eq!(hits.len(), 30);
    assert!(hits
        .iter()
        .all(|h| h.meta.label() == "l1" && h.id != entries[4].id));
    let every = Filter::default();
    let (all, _) = m.search(&ask(30, None, &every), ProbeRule::default());
    assert_eq!(all[0].id, entries[4].id, "the image itself first");
    // A longer list starts with the shorter one (pages agree).
    let (short, _) = m.search(&ask(10, None, &every), ProbeRule::default());
    let ids = |h: &[Hit]| h.iter().map(|h| h.id).collect::<Vec<_>>();
    assert_eq!(ids(&short), ids(&all[..10]));
}
