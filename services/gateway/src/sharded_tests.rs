use super::*;

fn hit(id: u64, distance: f32, score: f32) -> pb::SearchHit {
    pb::SearchHit {
        id,
        distance,
        similarity: 1.0 / (1.0 + distance),
        score,
        ..Default::default()
    }
}

fn answer(hits: Vec<pb::SearchHit>, ranked_by: pb::RankedBy) -> pb::IndexSearchResponse {
    pb::IndexSearchResponse {
        hits,
        stats: Some(pb::SearchStats {
            partitions_searched: 2,
            partitions_total: 3,
            vectors_scanned: 10,
            vectors_total: 20,
            took_us: 5,
        }),
        mode: pb::SearchMode::Exact as i32,
        has_more: false,
        ranked_by: ranked_by as i32,
    }
}

fn ids(r: &pb::IndexSearchResponse) -> Vec<u64> {
    r.hits.iter().map(|h| h.id).collect()
}

#[test]
fn hits_by_distance_merge_into_the_one_node_order_and_page() {
    // One node's ranking of eight images, dealt over three shards.
    let all: Vec<pb::SearchHit> = (0..8).map(|i| hit(10 + i, 0.1 * i as f32, 0.0)).collect();
    let deal = |shard: usize| -> Vec<pb::SearchHit> {
        all.iter()
            .enumerate()
            .filter(|(i, _)| i % 3 == shard)
            .map(|(_, h)| h.clone())
            .collect()
    };
    let answers = || {
        (0..3)
            .map(|s| answer(deal(s), pb::RankedBy::Distance))
            .collect::<Vec<_>>()
    };
    let top = merge_search(answers(), 5, 0);
    assert_eq!(ids(&top), [10, 11, 12, 13, 14]);
    assert!(top.has_more, "eight found, five asked");
    let stats = top.stats.expect("stats");
    assert_eq!(
        (
            stats.partitions_searched,
            stats.partitions_total,
            stats.vectors_total,
            stats.took_us
        ),
        (6, 9, 60, 5)
    );
    let page = merge_search(answers(), 5, 5);
    assert_eq!(ids(&page), [15, 16, 17]);
    assert!(!page.has_more);
    // Equal distances rank by id, as on one node.
    let tied = merge_search(
        vec![
            answer(vec![hit(7, 0.5, 0.0)], pb::RankedBy::Distance),
            answer(vec![hit(3, 0.5, 0.0)], pb::RankedBy::Distance),
        ],
        2,
        0,
    );
    assert_eq!(ids(&tied), [3, 7]);
}

#[test]
fn refined_hits_merge_by_score_after_the_nearest_image() {
    // Shard 0's nearest (id 1) is nearer than shard 1's (id 5); the rest
    // rank by score, the nearest stays first whatever its score.
    let a = answer(
        vec![hit(1, 0.2, 0.70), hit(2, 0.6, 0.95), hit(3, 0.7, 0.80)],
        pb::RankedBy::RefinedScore,
    );
    let b = answer(
        vec![hit(5, 0.3, 0.90), hit(6, 0.9, 0.85)],
        pb::RankedBy::RefinedScore,
    );
    let r = merge_search(vec![a, b], 4, 0);
    assert_eq!(ids(&r), [1, 2, 5, 6]);
    assert_eq!(r.ranked_by, pb::RankedBy::RefinedScore as i32);
    assert!(r.has_more);
}

#[test]
fn a_search_with_no_hits_anywhere_is_empty() {
    let r = merge_search(
        vec![
            answer(vec![], pb::RankedBy::Distance),
            answer(vec![], pb::RankedBy::Distance),
        ],
        10,
        0,
    );
    assert!(r.hits.is_empty() && !r.has_more);
    assert_eq!(r.mode, pb::SearchMode::Exact as i32);
}

#[test]
fn widened_asks_each_shard_for_the_page_and_all_before_it() {
    let q = widened(pb::IndexSearchRequest {
        top_k: 10,
        offset: 30,
        ..Default::default()
    });
    assert_eq!((q.top_k, q.offset), (40, 0));
}

fn coll(name: &str, count: u64) -> pb::Collection {
    pb::Collection {
        name: name.into(),
        count,
        dims: 4,
        ..Default::default()
    }
}

#[test]
fn collection_lists_sum_counts_by_name() {
    let merged = merge_collection_lists(vec![
        vec![coll("a", 3), coll("b", 1)],
        vec![coll("b", 4), coll("a", 2)],
        vec![coll("c", 7)],
    ]);
    let got: Vec<(&str, u64)> = merged.iter().map(|c| (c.name.as_str(), c.count)).collect();
    assert_eq!(got, [("a", 5), ("b", 5), ("c", 7)]);
}

#[test]
fn statistics_sum_over_shards() {
    let stats =
        |shard: i32, count: u64, labels: &[(&str, u64)], stale: u64, op: &str| pb::StatsResponse {
            collection: Some(coll("a", count)),
            partitions: vec![pb::PartitionStats {
                class_index: 10 - shard,
                count,
                bytes_in_memory: 100 * count,
                ..Default::default()
            }],
            bytes_in_memory: 100 * count,
            dims: 4,
            count,
            labels: labels
                .iter()
                .map(|(l, n)| pb::LabelCount {
                    label: l.to_string(),
                    count: *n,
                })
                .collect(),
            refinement: Some(pb::Refinement {
                stale,
                operation_id: op.into(),
                bytes: 10,
            }),
        };
    let s = merge_stats(vec![
        stats(0, 3, &[("cat", 2), ("", 1)], 1, ""),
        stats(1, 5, &[("dog", 4), ("cat", 1)], 2, "1.op"),
    ]);
    assert_eq!(s.count, 8);
    assert_eq!(s.collection.expect("collection").count, 8);
    assert_eq!(s.bytes_in_memory, 800);
    let parts: Vec<i32> = s.partitions.iter().map(|p| p.class_index).collect();
    assert_eq!(parts, [9, 10]);
    let labels: Vec<(&str, u64)> = s
        .labels
        .iter()
        .map(|l| (l.label.as_str(), l.count))
        .collect();
    assert_eq!(labels, [("dog", 4), ("cat", 3), ("", 1)]);
    let r = s.refinement.expect("refinement");
    assert_eq!((r.stale, r.bytes, r.operation_id.as_str()), (3, 20, "1.op"));
}
