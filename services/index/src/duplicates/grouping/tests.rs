use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::mem::{Entry, Meta};

const DIMS: usize = 32;

fn entry(id: u64, class: i32, feature: Vec<f32>) -> Entry {
    Entry {
        id,
        class,
        feature,
        meta: Meta::new(&format!("h{id}"), &format!("f{id}.jpg"), "", "", 0),
    }
}

fn index(entries: &[Entry]) -> MemIndex {
    let mut m = MemIndex::new(DIMS);
    m.upsert(entries);
    m.refresh();
    m
}

/// A unit vector at `angle` radians from axis 0 towards axis `towards`.
fn at_angle(angle: f32, towards: usize) -> Vec<f32> {
    let mut v = vec![0.0; DIMS];
    v[0] = angle.cos();
    v[towards] = angle.sin();
    v
}

fn random_unit(rng: &mut StdRng) -> Vec<f32> {
    let mut v: Vec<f32> = (0..DIMS).map(|_| rng.random_range(-1.0..1.0f32)).collect();
    assert!(crate::kernels::normalize(&mut v));
    v
}

/// `base` moved by noise of amplitude `noise` per dimension, renormalised.
fn copy_of(rng: &mut StdRng, base: &[f32], noise: f32) -> Vec<f32> {
    let mut v: Vec<f32> = base
        .iter()
        .map(|x| x + rng.random_range(-1.0..1.0f32) * noise)
        .collect();
    assert!(crate::kernels::normalize(&mut v));
    v
}

fn opts(min_similarity: f32, linkage: Linkage, scan: Scan) -> Options {
    Options {
        min_similarity,
        neighbours: 32,
        scan,
        linkage,
    }
}

fn ids(groups: &[Group]) -> Vec<Vec<u64>> {
    groups
        .iter()
        .map(|g| g.members.iter().map(|m| m.0).collect())
        .collect()
}

/// Similarity of two unit vectors `angle` apart.
fn sim_at(angle: f32) -> f32 {
    1.0 / (1.0 + 2.0 * (angle / 2.0).sin())
}

#[test]
fn a_chain_joins_under_single_linkage_only() {
    // A -- B -- C, each step 0.2 rad: neighbours are near-duplicates, the
    // ends (0.4 rad apart) are not.
    let t = 0.8;
    assert!(sim_at(0.2) >= t && sim_at(0.4) < t);
    let m = index(&[
        entry(1, 0, at_angle(0.0, 1)),
        entry(2, 0, at_angle(0.2, 1)),
        entry(3, 0, at_angle(0.4, 1)),
        entry(4, 0, at_angle(1.5, 2)),
    ]);
    let rule = ProbeRule::default();
    let single = find_groups(&m, &opts(t, Linkage::Single, Scan::Exact), rule);
    assert_eq!(ids(&single), vec![vec![1, 2, 3]]);
    let complete = find_groups(&m, &opts(t, Linkage::Complete, Scan::Exact), rule);
    assert_eq!(ids(&complete), vec![vec![1, 2]]);
    let star = find_groups(&m, &opts(t, Linkage::Star, Scan::Exact), rule);
    assert_eq!(ids(&star), vec![vec![1, 2]]);
    // Similarities are to the first (oldest) member; the first has 1.
    let g = &complete[0].members;
    assert_eq!(g[0].1, 1.0);
    assert!((g[1].1 - sim_at(0.2)).abs() < 1e-4, "{}", g[1].1);
}

#[test]
fn the_threshold_decides_at_its_edge() {
    let t = 0.8;
    // Just inside and just outside the largest distance 1/t - 1.
    let inside = 2.0 * (max_distance(t) * 0.99 / 2.0).asin();
    let outside = 2.0 * (max_distance(t) * 1.01 / 2.0).asin();
    let m = index(&[
        entry(1, 0, at_angle(0.0, 1)),
        entry(2, 0, at_angle(inside, 1)),
        entry(3, 1, at_angle(1.5, 2)),
        entry(4, 1, at_angle(1.5 + outside, 2)),
    ]);
    let groups = find_groups(
        &m,
        &opts(t, Linkage::Complete, Scan::Probe),
        ProbeRule::default(),
    );
    assert_eq!(ids(&groups), vec![vec![1, 2]]);
    assert!(groups[0].members[1].1 >= t);
}

#[test]
fn groups_larger_than_the_neighbour_lists_stay_whole() {
    let mut rng = StdRng::seed_from_u64(7);
    let base = random_unit(&mut rng);
    let mut entries: Vec<Entry> = (1..=12)
        .map(|id| entry(id, 0, copy_of(&mut rng, &base, 0.01)))
        .collect();
    for id in 13..40 {
        entries.push(entry(id, 0, random_unit(&mut rng)));
    }
    let m = index(&entries);
    for linkage in [Linkage::Single, Linkage::Complete, Linkage::Star] {
        let mut o = opts(0.9, linkage, Scan::Probe);
        o.neighbours = 4;
        let groups = find_groups(&m, &o, ProbeRule::default());
        assert_eq!(
            ids(&groups),
            vec![(1..=12).collect::<Vec<u64>>()],
            "{linkage:?}"
        );
    }
}

#[test]
fn groups_come_largest_first() {
    let mut rng = StdRng::seed_from_u64(3);
    let mut entries = Vec::new();
    let mut id = 0;
    // Originals with 1, 3 and 2 copies, ids in that order.
    for copies in [1, 3, 2] {
        let base = random_unit(&mut rng);
        id += 1;
        entries.push(entry(id, 0, base.clone()));
        for _ in 0..copies {
            id += 1;
            entries.push(entry(id, 0, copy_of(&mut rng, &base, 0.01)));
        }
    }
    let m = index(&entries);
    let groups = find_groups(
        &m,
        &opts(0.9, Linkage::Complete, Scan::Probe),
        ProbeRule::default(),
    );
    assert_eq!(
        ids(&groups),
        vec![vec![3, 4, 5, 6], vec![7, 8, 9], vec![1, 2]]
    );
}

/// Originals spread over many partitions (classes), each with copies that
/// sometimes land in another partition (the network's top class flips on
/// a crop): the probe must find what the exact scan finds.
#[test]
fn the_probe_finds_what_the_exact_scan_finds() {
    let mut rng = StdRng::seed_from_u64(11);
    let classes = 40;
    let class_centres: Vec<Vec<f32>> = (0..classes).map(|_| random_unit(&mut rng)).collect();
    let mut entries = Vec::new();
    let mut truth: Vec<Vec<u64>> = Vec::new();
    let mut id = 0;
    for i in 0..400 {
        let class = i % classes;
        let base = copy_of(&mut rng, &class_centres[class as usize], 0.25);
        id += 1;
        let mut family = vec![id];
        entries.push(entry(id, class, base.clone()));
        if i % 2 == 0 {
            for c in 0..(1 + i % 3) {
                id += 1;
                family.push(id);
                // Every third copy is predicted as a neighbouring class.
                let copy_class = if c == 2 { (class + 1) % classes } else { class };
                entries.push(entry(id, copy_class, copy_of(&mut rng, &base, 0.01)));
            }
            truth.push(family);
        }
    }
    let m = index(&entries);
    let rule = ProbeRule::default();
    let exact = find_groups(&m, &opts(0.8, Linkage::Complete, Scan::Exact), rule);
    let probe = find_groups(&m, &opts(0.8, Linkage::Complete, Scan::Probe), rule);
    truth.sort_by(|a, b| b.len().cmp(&a.len()).then(a[0].cmp(&b[0])));
    assert_eq!(ids(&exact), truth);
    assert_eq!(ids(&probe), truth);
}

#[test]
fn deleted_features_are_left_out() {
    let pairs = vec![
        Pair {
            a: 1,
            b: 2,
            similarity: 0.9,
        },
        Pair {
            a: 2,
            b: 3,
            similarity: 0.9,
        },
    ];
    let mut features = HashMap::new();
    features.insert(1, at_angle(0.0, 1));
    features.insert(2, at_angle(0.01, 1));
    // 3 was deleted: no feature.
    let groups = group(&pairs, &features, &opts(0.8, Linkage::Single, Scan::Exact));
    assert_eq!(ids(&groups), vec![vec![1, 2]]);
}

/// An original with a copy on each side of it: the copies are near the
/// original but not near each other. Complete linkage splits the family,
/// the star around the original (the oldest) keeps it whole.
#[test]
fn the_star_keeps_copies_degraded_two_ways() {
    let t = 0.8;
    assert!(sim_at(0.2) >= t && sim_at(0.4) < t);
    let m = index(&[
        entry(1, 0, at_angle(0.0, 1)),
        entry(2, 0, at_angle(0.2, 1)),
        entry(3, 0, at_angle(-0.2, 1)),
    ]);
    let rule = ProbeRule::default();
    let star = find_groups(&m, &opts(t, Linkage::Star, Scan::Exact), rule);
    assert_eq!(ids(&star), vec![vec![1, 2, 3]]);
    assert!(star[0].members[1..].iter().all(|m| m.1 >= t));
    let complete = find_groups(&m, &opts(t, Linkage::Complete, Scan::Exact), rule);
    assert_eq!(complete[0].members.len(), 2);
}
