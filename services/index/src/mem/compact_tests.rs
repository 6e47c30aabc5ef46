//! Compact storage: codes in memory, exact vectors from a source.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::kernels;

/// Exact vectors by id, counting what searches read, as the database does
/// in the service.
pub(super) struct Exact {
    vecs: HashMap<u64, Vec<f32>>,
    fetched: AtomicUsize,
    /// Reads (queries, in the service), whatever their length.
    reads: AtomicUsize,
    scans: AtomicUsize,
}

impl Exact {
    pub(super) fn new(entries: &[Entry]) -> Self {
        Self {
            vecs: entries.iter().map(|e| (e.id, e.feature.clone())).collect(),
            fetched: AtomicUsize::new(0),
            reads: AtomicUsize::new(0),
            scans: AtomicUsize::new(0),
        }
    }
}

impl VectorSource for Exact {
    fn fetch(&self, ids: &[u64]) -> Result<Vec<(u64, Vec<f32>)>, String> {
        self.fetched.fetch_add(ids.len(), Ordering::SeqCst);
        self.reads.fetch_add(1, Ordering::SeqCst);
        Ok(ids
            .iter()
            .filter_map(|id| Some((*id, self.vecs.get(id)?.clone())))
            .collect())
    }

    fn scan(&self, each: &mut ScanBatch<'_>) -> Result<(), String> {
        self.scans.fetch_add(1, Ordering::SeqCst);
        for (id, v) in &self.vecs {
            each(*id, v);
        }
        Ok(())
    }
}

struct Broken;

impl VectorSource for Broken {
    fn fetch(&self, _: &[u64]) -> Result<Vec<(u64, Vec<f32>)>, String> {
        Err("database gone".into())
    }
    fn scan(&self, _: &mut ScanBatch<'_>) -> Result<(), String> {
        Err("database gone".into())
    }
}

fn unit(rng: &mut StdRng, dims: usize, center: Option<&[f32]>, noise: f32) -> Vec<f32> {
    let mut v: Vec<f32> = (0..dims)
        .map(|i| center.map_or(0.0, |c| c[i]) + rng.random_range(-1.0..1.0f32) * noise)
        .collect();
    assert!(kernels::normalize(&mut v));
    v
}

fn data(rng: &mut StdRng, dims: usize, classes: i32, per: usize) -> Vec<Entry> {
    let centres: Vec<Vec<f32>> = (0..classes).map(|_| unit(rng, dims, None, 0.5)).collect();
    let noise = 0.7 / (dims as f32 / 3.0).sqrt();
    let mut id = 1;
    let mut out = Vec::new();
    for c in 0..classes {
        for _ in 0..per {
            out.push(super::tests::entry(
                id,
                c,
                unit(rng, dims, Some(&centres[c as usize]), noise),
            ));
            id += 1;
        }
    }
    out
}

fn q(v: &[f32], mode: Mode, class: Option<i32>) -> Query<'_> {
    static ALL: Filter = Filter {
        labels_in: Vec::new(),
        labels_not_in: Vec::new(),
        path_prefix: String::new(),
        created_from_ms: 0,
        created_to_ms: 0,
    };
    Query {
        vector: v,
        predicted_class: class,
        top_k: 10,
        mode,
        min_similarity: 0.0,
        exclude_id: None,
        filter: &ALL,
    }
}

fn both(entries: &[Entry], dims: usize) -> (MemIndex, MemIndex) {
    let mut full = MemIndex::new(dims);
    let mut compact = MemIndex::with_storage(dims, Storage::Compact);
    for idx in [&mut full, &mut compact] {
        idx.upsert(entries);
        idx.refresh();
    }
    (full, compact)
}

#[test]
fn compact_holds_a_fraction_of_the_memory() {
    let mut rng = StdRng::seed_from_u64(1);
    let entries = data(&mut rng, 256, 4, 200);
    let (full, compact) = both(&entries, 256);
    let (f, c) = (full.bytes() / 800, compact.bytes() / 800);
    // Codes (256) plus id, scale, metadata and the id map.
    assert!(c < 256 + 200, "compact {c} bytes per vector");
    assert!(f > 4 * c, "full {f} against compact {c}");
    assert_eq!(compact.augmented_bytes(), 0);
    assert_eq!(
        compact.refine_state().stale,
        0,
        "no augmented copies to keep"
    );
}

#[test]
fn exact_in_compact_storage_is_the_f32_brute_force_of_full_storage() {
    let mut rng = StdRng::seed_from_u64(2);
    let entries = data(&mut rng, 64, 5, 120);
    let (full, compact) = both(&entries, 64);
    let src = Exact::new(&entries);
    for t in 0..10 {
        let v = unit(&mut rng, 64, Some(&entries[t * 50].feature), 0.05);
        let (a, _) = full.search(&q(&v, Mode::Exact, None), ProbeRule::default());
        let (b, stats) = compact
            .search_with(&q(&v, Mode::Exact, None), ProbeRule::default(), &src)
            .unwrap();
        let ids = |h: &[Hit]| h.iter().map(|h| (h.id, h.distance)).collect::<Vec<_>>();
        assert_eq!(ids(&a), ids(&b), "query {t}: same ids and distances");
        assert_eq!(stats.vectors_scanned, entries.len() as u64);
    }
    assert_eq!(src.scans.load(Ordering::SeqCst), 10);
}

#[test]
fn probe_and_partition_rerank_a_short_list_with_exact_distances() {
    let mut rng = StdRng::seed_from_u64(3);
    let entries = data(&mut rng, 128, 8, 1500);
    let (full, compact) = both(&entries, 128);
    let src = Exact::new(&entries);
    let (mut agree, mut hits_seen) = (0, 0);
    for t in 0..40 {
        let e = &entries[(t * 293) % entries.len()];
        let v = unit(&mut rng, 128, Some(&e.feature), 0.05);
        for mode in [Mode::Probe, Mode::Partition] {
            let (x, _) = full.search(&q(&v, Mode::Exact, None), ProbeRule::default());
            let before = src.fetched.load(Ordering::SeqCst);
            let (h, _) = compact
                .search_with(&q(&v, mode, Some(e.class)), ProbeRule::default(), &src)
                .unwrap();
            let read = src.fetched.load(Ordering::SeqCst) - before;
            assert!(read <= 10 + 32, "{mode:?} read {read} vectors to re-rank");
            assert_eq!(h.len(), 10);
            for hit in &h {
                let want = kernels::distance(&v, &src.vecs[&hit.id]);
                assert_eq!(hit.distance, want, "distances are exact");
            }
            assert!(h.windows(2).all(|w| w[0].distance <= w[1].distance));
            agree += h.iter().filter(|a| x.iter().any(|b| b.id == a.id)).count();
            hits_seen += 10;
        }
    }
    let recall = agree as f64 / hits_seen as f64;
    assert!(recall >= 0.95, "recall@10 against exact {recall}");
}

#[test]
fn refined_in_compact_storage_expands_the_query_over_exact_vectors() {
    let mut rng = StdRng::seed_from_u64(4);
    let entries = data(&mut rng, 64, 6, 300);
    let (_, compact) = both(&entries, 64);
    let src = Exact::new(&entries);
    for t in 0..10 {
        let e = &entries[t * 170];
        let v = unit(&mut rng, 64, Some(&e.feature), 0.05);
        let (probe, _) = compact
            .search_with(
                &q(&v, Mode::Probe, Some(e.class)),
                ProbeRule::default(),
                &src,
            )
            .unwrap();
        let before = src.fetched.load(Ordering::SeqCst);
        let reads = src.reads.load(Ordering::SeqCst);
        let (refined, _) = compact
            .search_with(
                &q(&v, Mode::Refined, Some(e.class)),
                ProbeRule::default(),
                &src,
            )
            .unwrap();
        // Two short lists (the query's, the expanded query's) of 10 + 32
        // each, the second's overlap with the first not read again; the
        // hits' raw distances come from what was read.
        let read = src.fetched.load(Ordering::SeqCst) - before;
        assert!(read <= 2 * (10 + 32), "refined read {read} vectors");
        let reads = src.reads.load(Ordering::SeqCst) - reads;
        assert_eq!(reads, 2, "one read per short list, none for the hits");
        assert_eq!(refined.len(), 10);
        assert_eq!(refined[0].id, probe[0].id, "the nearest image stays first");
        for h in &refined {
            assert_eq!(h.distance, kernels::distance(&v, &src.vecs[&h.id]));
        }
        assert!(refined[1..].windows(2).all(|w| w[0].score >= w[1].score));
    }
}

#[test]
fn writes_removes_and_splits_keep_compact_storage_consistent() {
    let mut rng = StdRng::seed_from_u64(5);
    let mut entries = data(&mut rng, 32, 1, 9000);
    let mut idx = MemIndex::with_storage(32, Storage::Compact);
    idx.upsert(&entries);
    assert!(idx.needs_split());
    idx.refresh();
    assert!(
        idx.cells().count() > 1,
        "a big class splits in compact storage too"
    );
    for id in (1..=9000).step_by(3) {
        assert!(idx.remove(id));
    }
    entries.retain(|e| e.id % 3 != 1);
    let src = Exact::new(&entries);
    assert_eq!(idx.len(), entries.len());
    for e in entries.iter().step_by(500) {
        let (h, _) = idx
            .search_with(
                &q(&e.feature, Mode::Probe, Some(0)),
                ProbeRule::default(),
                &src,
            )
            .unwrap();
        assert_eq!(h[0].id, e.id, "a stored vector finds itself");
        assert_eq!(h[0].distance, 0.0);
        let (_, f) = idx.feature(e.id).unwrap();
        assert!(
            kernels::distance(&f, &e.feature) < 0.02,
            "decoded close to the stored"
        );
    }
}

#[test]
fn a_failing_source_fails_the_search_instead_of_guessing() {
    let mut rng = StdRng::seed_from_u64(6);
    let entries = data(&mut rng, 32, 2, 50);
    let (_, compact) = both(&entries, 32);
    for mode in [Mode::Exact, Mode::Probe, Mode::Refined] {
        let err = compact
            .search_with(
                &q(&entries[0].feature, mode, Some(0)),
                ProbeRule::default(),
                &Broken,
            )
            .unwrap_err();
        assert!(err.contains("database gone"));
    }
}

/// A source that keeps its searches' short lists, as the service's does.
struct Remembering(Exact, Shortlists);

impl VectorSource for Remembering {
    fn fetch(&self, ids: &[u64]) -> Result<Vec<(u64, Vec<f32>)>, String> {
        self.0.fetch(ids)
    }
    fn scan(&self, each: &mut ScanBatch<'_>) -> Result<(), String> {
        self.0.scan(each)
    }
    fn shortlists(&self) -> Option<&Shortlists> {
        Some(&self.1)
    }
}

#[test]
fn a_second_run_reuses_the_ranking_and_drops_what_changed_meanwhile() {
    let mut rng = StdRng::seed_from_u64(6);
    let entries = data(&mut rng, 64, 6, 300);
    let (_, mut compact) = both(&entries, 64);
    let e = &entries[450];
    let v = unit(&mut rng, 64, Some(&e.feature), 0.05);
    for mode in [Mode::Probe, Mode::Partition, Mode::Refined] {
        let mut src = Remembering(Exact::new(&entries), Shortlists::default());
        let query = q(&v, mode, Some(e.class));
        let (first, _) = compact
            .search_with(&query, ProbeRule::default(), &src)
            .unwrap();
        assert_eq!(first.len(), 10);
        // What a write between the runs does: the second hit deleted, the
        // third relabelled out of the filter, a new image nearer than all.
        let (gone, moved) = (first[1].id, first[2].id);
        assert!(compact.remove(gone));
        assert!(compact.set_label(moved, "elsewhere"));
        let newcomer = super::tests::entry(9_999, e.class, v.clone());
        compact.upsert(std::slice::from_ref(&newcomer));
        src.0.vecs.insert(9_999, v.clone());
        let keep = Filter {
            labels_not_in: vec!["elsewhere".into()],
            ..Filter::default()
        };
        let again = Query {
            filter: &keep,
            ..query.clone()
        };
        let (second, _) = compact
            .search_with(&again, ProbeRule::default(), &src)
            .unwrap();
        let ids: Vec<u64> = second.iter().map(|h| h.id).collect();
        assert!(!ids.contains(&gone), "{mode:?}: a deleted image came back");
        assert!(
            !ids.contains(&moved),
            "{mode:?}: the filter was not checked"
        );
        assert!(
            !ids.contains(&9_999),
            "{mode:?}: the ranking was not reused (it saw the newcomer)"
        );
        let expect: Vec<u64> = first
            .iter()
            .map(|h| h.id)
            .filter(|id| *id != gone && *id != moved)
            .collect();
        assert_eq!(ids, expect, "{mode:?}: the rest as the first run ranked it");
        // A fresh search sees the write.
        let mut exact = Exact::new(&entries);
        exact.vecs.insert(9_999, v.clone());
        let (third, _) = compact
            .search_with(
                &again,
                ProbeRule::default(),
                &Remembering(exact, Shortlists::default()),
            )
            .unwrap();
        assert_eq!(third[0].id, 9_999, "{mode:?}");
        // Put the index back for the next mode.
        assert!(compact.remove(9_999));
        let back = entries.iter().find(|x| x.id == gone).cloned().unwrap();
        compact.upsert(&[back]);
        let orig = entries.iter().find(|x| x.id == moved).unwrap();
        assert!(compact.set_label(moved, orig.meta.label()));
    }
}
