//! The order of promise with many cells: classes ranked before cells.

use rand::rngs::StdRng;
use rand::SeedableRng;

use super::tests::{brute, clustered, query, unit};
use super::*;
use crate::kernels;

const DIMS: usize = 32;

/// Class-first from 64 cells: 200 one-cell classes rank 25 of them (an
/// eighth) cell by cell.
const CLASS_FIRST: ProbeRule = ProbeRule {
    min_partitions: 2,
    patience: 3,
    class_first_cells: 64,
};

const CELL_BY_CELL: ProbeRule = ProbeRule {
    class_first_cells: 0,
    ..CLASS_FIRST
};

fn index(entries: &[Entry]) -> MemIndex {
    let mut m = MemIndex::new(DIMS);
    m.upsert(entries);
    m.refresh();
    m
}

fn recall(hits: &[Hit], want: &[(u64, f32)]) -> usize {
    hits.iter()
        .filter(|h| want.iter().any(|w| w.0 == h.id))
        .count()
}

#[test]
fn ranking_classes_first_finds_what_ranking_every_cell_finds() {
    let mut rng = StdRng::seed_from_u64(21);
    let entries = clustered(&mut rng, DIMS, 200, 30);
    let idx = index(&entries);
    assert_eq!(idx.cells().count(), 200);
    let (mut found_first, mut found_all, mut same) = (0, 0, 0);
    for t in 0..60 {
        let e = &entries[(t * 97) % entries.len()];
        let v = super::tests::noisy(&mut rng, DIMS, Some(&e.feature), 0.05);
        let want = brute(&entries, &v, 10);
        let q = Query {
            predicted_class: Some(e.class),
            ..query(&v, 10, Mode::Probe)
        };
        let (a, _) = idx.search(&q, CLASS_FIRST);
        let (b, _) = idx.search(&q, CELL_BY_CELL);
        found_first += recall(&a, &want);
        found_all += recall(&b, &want);
        same += usize::from(a.iter().map(|h| h.id).eq(b.iter().map(|h| h.id)));
        // A query with no class: the order comes from the centroids alone.
        let blind = query(&v, 10, Mode::Probe);
        let (c, _) = idx.search(&blind, CLASS_FIRST);
        assert!(recall(&c, &want) >= 8, "query {t} without a class: {c:?}");
    }
    eprintln!("class-first {found_first}, cell by cell {found_all}, same {same}");
    assert!(
        found_first >= 570,
        "class-first recall {found_first} of 600"
    );
    assert!(
        found_first + 6 >= found_all,
        "{found_first} against {found_all}"
    );
    assert!(same >= 57, "{same} of 60 answers the same");
}

/// A filter that admits only a class far from the query: the cells of the
/// classes ranked first hold nothing it admits, so the search goes on into
/// the others and returns the filtered exact answer.
#[test]
fn a_search_unsettled_within_the_first_classes_goes_on_into_the_others() {
    let mut rng = StdRng::seed_from_u64(22);
    let entries = clustered(&mut rng, DIMS, 200, 30);
    let idx = index(&entries);
    for t in 0..10 {
        let v = unit(&mut rng, DIMS, Some(&entries[t * 300].feature));
        // The class least like the query.
        let far = (0..200)
            .min_by(|&a, &b| {
                let d = |c: i32| {
                    brute(&entries, &v, entries.len())
                        .iter()
                        .position(|x| entries[(x.0 - 1) as usize].class == c)
                };
                d(b).cmp(&d(a))
            })
            .expect("classes");
        let only = Filter {
            labels_in: vec![format!("l{far}")],
            ..Filter::default()
        };
        let q = Query {
            filter: &only,
            ..query(&v, 10, Mode::Probe)
        };
        let (hits, _) = idx.search(&q, CLASS_FIRST);
        let admitted: Vec<Entry> = entries.iter().filter(|e| e.class == far).cloned().collect();
        let want: Vec<u64> = brute(&admitted, &v, 10).into_iter().map(|w| w.0).collect();
        let got: Vec<u64> = hits.iter().map(|h| h.id).collect();
        assert_eq!(got, want, "query {t}, filtered to class {far}");
    }
}

/// A class written and not refreshed yet has no centroid: its cells are
/// among those ranked one by one, not left out.
#[test]
fn a_class_not_refreshed_yet_is_not_left_out() {
    let mut rng = StdRng::seed_from_u64(23);
    let entries = clustered(&mut rng, DIMS, 200, 30);
    let mut idx = index(&entries);
    let centre = unit(&mut rng, DIMS, None);
    let newcomers: Vec<Entry> = (0..5)
        .map(|i| super::tests::entry(100_000 + i, 500, unit(&mut rng, DIMS, Some(&centre))))
        .collect();
    idx.upsert(&newcomers);
    let v = &newcomers[0].feature;
    let mut code = Vec::new();
    let scale = kernels::quantize(v, &mut code);
    let (order, deferred) = idx.probe_order(&query(v, 1, Mode::Probe), (&code, scale), CLASS_FIRST);
    assert!(order.iter().any(|(_, c)| c.class == 500));
    assert_eq!(order.len() + deferred.len(), 201);
    assert!(order.len() < 40, "{} cells ranked", order.len());
}
