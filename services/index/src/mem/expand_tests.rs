//! Refined ranking across shards: each shard's expansion terms, ranked
//! together and handed back, make the shards' merged answer the answer
//! of one node holding every image.

use rand::rngs::StdRng;
use rand::SeedableRng;

use super::compact_tests::Exact;
use super::tests::{clustered, entry, query};
use super::*;

const DIMS: usize = 32;
const SHARDS: i32 = 3;

/// A rule that reads every cell, so that one node and the shards scan
/// the same images (the probe's own stopping rule is per shard).
const ALL: ProbeRule = ProbeRule {
    min_partitions: usize::MAX,
    patience: usize::MAX,
    class_first_cells: 0,
};

/// Clustered vectors whose classes cut across the clusters, so that a
/// query's nearest images live on several shards.
fn data() -> Vec<Entry> {
    let mut rng = StdRng::seed_from_u64(18);
    clustered(&mut rng, DIMS, 6, 80)
        .into_iter()
        .map(|e| entry(e.id, (e.id % 9) as i32, e.feature))
        .collect()
}

fn index(entries: &[Entry], storage: Storage, refine: Refine) -> MemIndex {
    let mut m = MemIndex::with_storage(DIMS, storage);
    m.set_refine(refine);
    m.upsert(entries);
    m.refresh();
    m.mark_all_stale();
    m.augment_stale(ALL);
    m
}

/// What a sharded gateway answers: terms from every shard, the best of
/// all handed to every shard, hits by score after the nearest image.
fn sharded(shards: &[MemIndex], rows: &Exact, q: &Query<'_>) -> Vec<Hit> {
    let mut terms = Vec::new();
    let mut keep = 1;
    for s in shards {
        let found = s
            .search_expanding(q, ALL, rows, &Expansion::TermsOnly)
            .expect("terms");
        assert!(found.hits.is_empty(), "terms only, no hits");
        assert!(found.terms.len() <= terms_wanted(s.refine().qe_k));
        keep = keep.max(terms_wanted(s.refine().qe_k));
        terms.extend(found.terms);
    }
    let best = best_terms(terms, keep);
    let nearest = best.first().map(|t| t.id);
    let given = Expansion::Given(best);
    let mut hits: Vec<Hit> = shards
        .iter()
        .flat_map(|s| {
            s.search_expanding(q, ALL, rows, &given)
                .expect("search")
                .hits
        })
        .collect();
    hits.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.id.cmp(&b.id)));
    if let Some(pos) = nearest.and_then(|id| hits.iter().position(|h| h.id == id)) {
        let h = hits.remove(pos);
        hits.insert(0, h);
    }
    hits.truncate(q.top_k);
    hits
}

fn check(storage: Storage, refine: Refine) {
    let entries = data();
    // The exact vectors, as the database holds them for compact storage.
    let rows = Exact::new(&entries);
    let one = index(&entries, storage, refine);
    let shards: Vec<MemIndex> = (0..SHARDS)
        .map(|s| {
            let own: Vec<Entry> = entries
                .iter()
                .filter(|e| e.class % SHARDS == s)
                .cloned()
                .collect();
            index(&own, storage, refine)
        })
        .collect();
    let mut rng = StdRng::seed_from_u64(7);
    let mut spread = 0;
    for (i, e) in entries.iter().step_by(23).enumerate() {
        // Stored images and new ones near them.
        let v = if i % 2 == 0 {
            e.feature.clone()
        } else {
            super::tests::noisy(&mut rng, DIMS, Some(&e.feature), 0.3)
        };
        let q = query(&v, 10, Mode::Refined);
        let want = one
            .search_expanding(&q, ALL, &rows, &Expansion::Own)
            .expect("one");
        let got = sharded(&shards, &rows, &q);
        let ids = |h: &[Hit]| h.iter().map(|h| h.id).collect::<Vec<_>>();
        assert_eq!(ids(&got), ids(&want.hits), "{storage:?}, query {i}");
        for (g, w) in got.iter().zip(&want.hits) {
            assert!(
                (g.score - w.score).abs() < 1e-5,
                "{storage:?}, query {i}: scores"
            );
            assert!((g.distance - w.distance).abs() < 1e-5);
        }
        let classes: std::collections::HashSet<i32> =
            got.iter().map(|h| h.partition % SHARDS).collect();
        spread += usize::from(classes.len() > 1);
    }
    assert!(spread > 5, "the answers span shards ({spread} queries)");
}

#[test]
fn refined_over_shards_answers_like_one_node_in_compact_storage() {
    check(Storage::Compact, Refine::default());
}

#[test]
fn refined_over_shards_answers_like_one_node_without_database_side_augmentation() {
    // Full storage ranks augmented vectors, whose neighbours each shard
    // finds among its own images; with dba_k 1 they are the images.
    check(
        Storage::Full,
        Refine {
            dba_k: 1,
            ..Refine::default()
        },
    );
}

#[test]
fn one_shard_given_its_own_terms_answers_as_it_does_alone() {
    let entries = data();
    let rows = Exact::new(&[]);
    let m = index(&entries, Storage::Full, Refine::default());
    let v = entries[5].feature.clone();
    let q = query(&v, 10, Mode::Refined);
    let own = m
        .search_expanding(&q, ALL, &rows, &Expansion::Own)
        .expect("own");
    let terms = m
        .search_expanding(&q, ALL, &rows, &Expansion::TermsOnly)
        .expect("terms")
        .terms;
    assert_eq!(terms.len(), Refine::default().qe_k);
    assert_eq!(
        terms[0].id, entries[5].id,
        "the query's own image is nearest"
    );
    let given = m
        .search_expanding(&q, ALL, &rows, &Expansion::Given(terms.clone()))
        .expect("given");
    let ids = |h: &[Hit]| h.iter().map(|h| h.id).collect::<Vec<_>>();
    assert_eq!(ids(&given.hits), ids(&own.hits));
    // A shard that does not hold the nearest image leaves it out rather
    // than ranking it: its owner puts it first.
    let mut elsewhere = terms;
    elsewhere[0].id = u64::MAX;
    let other = m
        .search_expanding(&q, ALL, &rows, &Expansion::Given(elsewhere))
        .expect("given");
    assert!(other.hits.iter().all(|h| h.id != u64::MAX));
    assert_eq!(other.hits.len(), 10);
}
