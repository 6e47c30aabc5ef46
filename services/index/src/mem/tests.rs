use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::kernels;

pub(super) fn unit(rng: &mut StdRng, dims: usize, center: Option<&[f32]>) -> Vec<f32> {
    noisy(rng, dims, center, 0.5)
}

/// `center` plus uniform noise of amplitude `noise` per dimension, normalised.
pub(super) fn noisy(rng: &mut StdRng, dims: usize, center: Option<&[f32]>, noise: f32) -> Vec<f32> {
    let mut v: Vec<f32> = (0..dims)
        .map(|i| center.map_or(0.0, |c| c[i]) + rng.random_range(-1.0..1.0f32) * noise)
        .collect();
    assert!(kernels::normalize(&mut v));
    v
}

pub(super) fn entry(id: u64, class: i32, feature: Vec<f32>) -> Entry {
    Entry {
        id,
        class,
        feature,
        meta: Meta::new(
            &format!("h{id}"),
            &format!("f{id}.jpg"),
            "",
            &format!("l{class}"),
            id as i64,
        ),
    }
}

pub(super) fn brute(entries: &[Entry], q: &[f32], k: usize) -> Vec<(u64, f32)> {
    let mut all: Vec<(u64, f32)> = entries
        .iter()
        .map(|e| {
            let d: f32 = e
                .feature
                .iter()
                .zip(q)
                .map(|(a, b)| (a - b) * (a - b))
                .sum::<f32>()
                .sqrt();
            (e.id, d)
        })
        .collect();
    all.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
    all.truncate(k);
    all
}

static EVERYTHING: Filter = Filter {
    labels_in: Vec::new(),
    labels_not_in: Vec::new(),
    path_prefix: String::new(),
    created_from_ms: 0,
    created_to_ms: 0,
};

pub(super) fn query(v: &[f32], k: usize, mode: Mode) -> Query<'_> {
    Query {
        vector: v,
        predicted_class: None,
        top_k: k,
        mode,
        min_similarity: 0.0,
        exclude_id: None,
        filter: &EVERYTHING,
    }
}

/// Clustered data: `classes` centres, `per` vectors each, class = cluster;
/// members have a cosine of about 0.8 to their centre.
pub(super) fn clustered(rng: &mut StdRng, dims: usize, classes: i32, per: usize) -> Vec<Entry> {
    let centres: Vec<Vec<f32>> = (0..classes).map(|_| unit(rng, dims, None)).collect();
    let noise = 0.7 / (dims as f32 / 3.0).sqrt();
    let mut out = Vec::new();
    let mut id = 1;
    for c in 0..classes {
        for _ in 0..per {
            out.push(entry(
                id,
                c,
                noisy(rng, dims, Some(&centres[c as usize]), noise),
            ));
            id += 1;
        }
    }
    out
}

#[test]
fn exact_search_equals_brute_force() {
    let mut rng = StdRng::seed_from_u64(7);
    // One partition above the int8 threshold, others below it.
    let mut entries = clustered(&mut rng, 64, 3, 40);
    let big = unit(&mut rng, 64, None);
    for i in 0..3000 {
        entries.push(entry(10_000 + i, 9, unit(&mut rng, 64, Some(&big))));
    }
    let mut idx = MemIndex::new(64);
    idx.upsert(&entries);
    idx.refresh();
    for t in 0..20 {
        let q = if t % 2 == 0 {
            unit(&mut rng, 64, Some(&big))
        } else {
            unit(&mut rng, 64, None)
        };
        let (hits, stats) = idx.search(&query(&q, 10, Mode::Exact), ProbeRule::default());
        let want = brute(&entries, &q, 10);
        let got: Vec<u64> = hits.iter().map(|h| h.id).collect();
        let want_ids: Vec<u64> = want.iter().map(|w| w.0).collect();
        assert_eq!(got, want_ids, "query {t}");
        for (h, w) in hits.iter().zip(&want) {
            assert!((h.distance - w.1).abs() < 1e-4);
            assert_eq!(h.similarity, 1.0 / (1.0 + h.distance));
        }
        assert!(hits.windows(2).all(|w| w[0].distance <= w[1].distance));
        assert_eq!(stats.vectors_scanned, entries.len() as u64);
        assert_eq!(stats.partitions_searched, 4);
    }
}

/// Near-duplicates closer to each other than int8 can tell apart, in one
/// cell far above the shortlist's size: an int8 first pass keeps an
/// arbitrary part of them, so only a full f32 scan finds the true top 10.
/// Exact is what every recall is measured against: it must be that scan.
#[test]
fn exact_is_a_full_f32_scan_even_where_int8_cannot_rank() {
    let mut rng = StdRng::seed_from_u64(11);
    let center = unit(&mut rng, 64, None);
    let entries: Vec<Entry> = (0..4000)
        .map(|i| entry(i, 1, noisy(&mut rng, 64, Some(&center), 3e-3)))
        .collect();
    let mut idx = MemIndex::new(64);
    idx.upsert(&entries);
    idx.refresh();
    let mut probe_misses = 0;
    for t in 0..10 {
        let q = noisy(&mut rng, 64, Some(&center), 3e-3);
        let truth = brute(&entries, &q, 10);
        let want: Vec<u64> = truth.iter().map(|w| w.0).collect();
        let (hits, stats) = idx.search(&query(&q, 10, Mode::Exact), ProbeRule::default());
        assert_eq!(hits.len(), 10);
        assert_eq!(stats.vectors_scanned, 4000);
        // The index ranks by 2 - 2 dot, the truth by summed squares: near
        // duplicates may swap within rounding (about 3e-6 here), never by
        // more. An int8 shortlist's top 10 lies about 3e-3 further out.
        for (i, (h, w)) in hits.iter().zip(&truth).enumerate() {
            assert!(
                (h.distance - w.1).abs() < 2e-5,
                "query {t}, rank {i}: exact found distance {} where the truth is {}",
                h.distance,
                w.1
            );
        }
        // The approximate modes keep their shortlist (and may miss here).
        let (p, _) = idx.search(&query(&q, 10, Mode::Probe), ProbeRule::default());
        probe_misses += want
            .iter()
            .filter(|id| !p.iter().any(|h| h.id == **id))
            .count();
    }
    println!("probe missed {probe_misses} of 100 true neighbours among near-duplicates");
}

#[test]
fn partition_mode_reads_one_partition() {
    let mut rng = StdRng::seed_from_u64(1);
    let entries = clustered(&mut rng, 32, 5, 20);
    let mut idx = MemIndex::new(32);
    idx.upsert(&entries);
    idx.refresh();
    let q = entries[45].feature.clone();
    let mut qq = query(&q, 5, Mode::Partition);
    qq.predicted_class = Some(2);
    let (hits, stats) = idx.search(&qq, ProbeRule::default());
    assert_eq!(stats.partitions_searched, 1);
    assert_eq!(stats.vectors_scanned, 20);
    assert!(hits.iter().all(|h| h.partition == 2));
    assert_eq!(hits[0].id, entries[45].id);
    assert!(hits[0].distance < 1e-3);
    // A class with no partition finds nothing rather than failing.
    qq.predicted_class = Some(77);
    assert!(idx.search(&qq, ProbeRule::default()).0.is_empty());
}

#[test]
fn probe_matches_exact_on_clustered_data_and_reads_less() {
    let mut rng = StdRng::seed_from_u64(3);
    let entries = clustered(&mut rng, 64, 40, 50);
    let mut idx = MemIndex::new(64);
    idx.upsert(&entries);
    idx.refresh();
    let mut scanned = 0;
    let mut agree = 0;
    for i in 0..40 {
        let e = &entries[i * 50 + 3];
        let q = noisy(&mut rng, 64, Some(&e.feature), 0.05);
        let mut probe = query(&q, 10, Mode::Probe);
        probe.predicted_class = Some(e.class);
        let (p, stats) = idx.search(&probe, ProbeRule::default());
        let (x, _) = idx.search(&query(&q, 10, Mode::Exact), ProbeRule::default());
        agree += p.iter().filter(|h| x.iter().any(|y| y.id == h.id)).count();
        scanned += stats.vectors_scanned;
    }
    let recall = agree as f64 / 400.0;
    assert!(recall >= 0.95, "probe recall@10 {recall}");
    assert!(scanned < 40 * 2000 / 2, "probe read {scanned} vectors");
}

#[test]
fn asking_for_everything_returns_everything() {
    let mut rng = StdRng::seed_from_u64(4);
    let entries = clustered(&mut rng, 16, 6, 10);
    let mut idx = MemIndex::new(16);
    idx.upsert(&entries);
    idx.refresh();
    let q = unit(&mut rng, 16, None);
    let (p, _) = idx.search(&query(&q, 60, Mode::Probe), ProbeRule::default());
    let (x, _) = idx.search(&query(&q, 60, Mode::Exact), ProbeRule::default());
    assert_eq!(p.len(), 60);
    assert_eq!(
        p.iter().map(|h| h.id).collect::<Vec<_>>(),
        x.iter().map(|h| h.id).collect::<Vec<_>>()
    );
}

#[test]
fn replace_remove_exclude_and_min_similarity() {
    let mut rng = StdRng::seed_from_u64(5);
    let entries = clustered(&mut rng, 16, 2, 5);
    let mut idx = MemIndex::new(16);
    idx.upsert(&entries);
    idx.refresh();
    assert_eq!(idx.len(), 10);
    // Replacing id 1 with a new vector in another class moves it.
    let moved = entry(1, 1, entries[7].feature.clone());
    idx.upsert(&[moved]);
    idx.refresh();
    assert_eq!(idx.len(), 10);
    assert_eq!(idx.feature(1).map(|f| f.0), Some(1));
    // Removing keeps every other id findable (swap_remove bookkeeping).
    assert!(idx.remove(3));
    assert!(!idx.remove(3));
    idx.refresh();
    for e in &entries {
        if e.id == 3 {
            continue;
        }
        let f = idx.feature(e.id).expect("still there").1;
        let (hits, _) = idx.search(&query(&f, 1, Mode::Exact), ProbeRule::default());
        assert!(hits[0].distance < 1e-3, "id {}", e.id);
    }
    let q = entries[4].feature.clone();
    let mut qq = query(&q, 3, Mode::Exact);
    qq.exclude_id = Some(5);
    assert!(idx
        .search(&qq, ProbeRule::default())
        .0
        .iter()
        .all(|h| h.id != 5));
    qq.exclude_id = None;
    qq.min_similarity = 0.99;
    let (hits, _) = idx.search(&qq, ProbeRule::default());
    assert!(hits.iter().all(|h| h.similarity >= 0.99));
    assert_eq!(hits.len(), 1);
    idx.clear();
    assert!(idx.is_empty());
    assert!(idx.search(&qq, ProbeRule::default()).0.is_empty());
}

#[test]
fn big_partitions_split_into_cells_and_stay_consistent() {
    let mut rng = StdRng::seed_from_u64(9);
    let dims = 32;
    let noise = 0.7 / (dims as f32 / 3.0).sqrt();
    let centres: Vec<Vec<f32>> = (0..8).map(|_| unit(&mut rng, dims, None)).collect();
    // One class partition of 20000 vectors drawn from 8 modes: past the
    // split threshold twice.
    let entries: Vec<Entry> = (0..20_000u64)
        .map(|i| {
            let c = &centres[(i % 8) as usize];
            entry(i + 1, 5, noisy(&mut rng, dims, Some(c), noise))
        })
        .collect();
    let mut idx = MemIndex::new(dims);
    for chunk in entries.chunks(2500) {
        idx.upsert(chunk);
        idx.refresh();
    }
    let parts = idx.partitions();
    assert_eq!(parts.len(), 1);
    assert_eq!(parts[0].len, 20_000);
    assert!(
        parts[0].cells >= 6,
        "a 20000-vector partition was not split"
    );
    assert_eq!(idx.cells().map(Cell::len).sum::<usize>(), 20_000);
    // Every id is still where `locate` says.
    for e in entries.iter().step_by(97) {
        assert_eq!(idx.feature(e.id).map(|f| f.1), Some(e.feature.clone()));
    }
    // Exact stays exact; probe reads less and still finds the neighbours.
    let mut agree = 0;
    let mut read = 0;
    for t in 0..20 {
        let q = noisy(&mut rng, dims, Some(&centres[t % 8]), noise);
        let (x, _) = idx.search(&query(&q, 10, Mode::Exact), ProbeRule::default());
        assert_eq!(
            x.iter().map(|h| h.id).collect::<Vec<_>>(),
            brute(&entries, &q, 10)
                .iter()
                .map(|b| b.0)
                .collect::<Vec<_>>()
        );
        let mut pq = query(&q, 10, Mode::Probe);
        pq.predicted_class = Some(5);
        let (p, stats) = idx.search(&pq, ProbeRule::default());
        agree += p.iter().filter(|h| x.iter().any(|y| y.id == h.id)).count();
        read += stats.vectors_scanned;
        assert_eq!(stats.partitions_searched, 1);
    }
    assert!(
        agree as f64 / 200.0 >= 0.95,
        "probe recall {}",
        agree as f64 / 200.0
    );
    assert!(read < 20 * 20_000 * 3 / 4, "probe read {read} vectors");
    // Deleting across cells keeps the bookkeeping right.
    for e in entries.iter().take(10_000) {
        assert!(idx.remove(e.id));
    }
    idx.refresh();
    assert_eq!(idx.len(), 10_000);
    assert_eq!(idx.cells().map(Cell::len).sum::<usize>(), 10_000);
    for e in entries.iter().skip(10_000).step_by(101) {
        assert_eq!(idx.feature(e.id).map(|f| f.1), Some(e.feature.clone()));
    }
}

#[test]
fn a_filter_applies_inside_the_scan_in_every_mode() {
    let mut rng = StdRng::seed_from_u64(11);
    let dims = 32;
    let noise = 0.7 / (dims as f32 / 3.0).sqrt();
    let centres: Vec<Vec<f32>> = (0..8).map(|_| unit(&mut rng, dims, None)).collect();
    // One partition split into cells (each above the int8 threshold) and
    // small ones; every entry's label is l<class>, created_at_ms its id.
    let mut entries: Vec<Entry> = (0..12_000u64)
        .map(|i| {
            entry(
                i + 1,
                5,
                noisy(&mut rng, dims, Some(&centres[(i % 8) as usize]), noise),
            )
        })
        .collect();
    entries.extend(clustered(&mut rng, dims, 4, 50).into_iter().map(|mut e| {
        e.id += 100_000;
        e
    }));
    // Three rare ones far from most queries.
    for (i, e) in entries.iter_mut().step_by(3001).take(3).enumerate() {
        e.meta = Meta::new(
            &e.meta.content_hash(),
            e.meta.file_name(),
            &format!("rare/{i}.jpg"),
            "rare",
            e.meta.created_at_ms,
        );
    }
    let mut idx = MemIndex::new(dims);
    idx.upsert(&entries);
    idx.refresh();
    assert!(idx.partitions().iter().any(|p| p.cells > 1));
    let filters = [
        Filter {
            labels_in: vec!["rare".into()],
            ..Filter::default()
        },
        Filter {
            path_prefix: "rare/".into(),
            ..Filter::default()
        },
        Filter {
            labels_not_in: vec!["l5".into()],
            ..Filter::default()
        },
        Filter {
            created_from_ms: 5_000,
            created_to_ms: 5_040,
            ..Filter::default()
        },
        Filter {
            labels_in: vec!["l5".into(), "l1".into()],
            created_from_ms: 11_990,
            ..Filter::default()
        },
    ];
    for (t, f) in filters.iter().enumerate() {
        let matching: Vec<Entry> = entries
            .iter()
            .filter(|e| f.admits(&e.meta))
            .cloned()
            .collect();
        for k in [1, 10, 60] {
            let q = noisy(&mut rng, dims, Some(&centres[t % 8]), noise);
            let want: Vec<u64> = brute(&matching, &q, k).iter().map(|b| b.0).collect();
            let mut qq = query(&q, k, Mode::Exact);
            qq.filter = f;
            let (x, _) = idx.search(&qq, ProbeRule::default());
            assert_eq!(
                x.iter().map(|h| h.id).collect::<Vec<_>>(),
                want,
                "exact, filter {t}, k {k}"
            );
            qq.mode = Mode::Probe;
            qq.predicted_class = Some(5);
            let (p, _) = idx.search(&qq, ProbeRule::default());
            assert_eq!(p.len(), k.min(matching.len()), "probe, filter {t}, k {k}");
            assert!(p.iter().all(|h| f.admits(&h.meta)));
            qq.mode = Mode::Partition;
            let in_part = matching.iter().filter(|e| e.class == 5).count();
            let (c, _) = idx.search(&qq, ProbeRule::default());
            assert_eq!(c.len(), k.min(in_part), "partition, filter {t}, k {k}");
            assert!(c.iter().all(|h| f.admits(&h.meta) && h.partition == 5));
        }
    }
}
