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
        expansion: Vec::new(),
        expansion_k: 0,
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
    let top = merge_search(answers(), 5, 0, None);
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
    let page = merge_search(answers(), 5, 5, None);
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
        None,
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
    let r = merge_search(vec![a.clone(), b.clone()], 4, 0, None);
    assert_eq!(ids(&r), [1, 2, 5, 6]);
    assert_eq!(r.ranked_by, pb::RankedBy::RefinedScore as i32);
    assert!(r.has_more);
    // Known from the expansion terms, the nearest image goes first even
    // where another shard's first hit is nearer by the distance shown.
    let r = merge_search(vec![a, b], 4, 0, Some(5));
    assert_eq!(ids(&r), [5, 2, 6, 3]);
}

fn term(id: u64, rank: f32) -> pb::ExpansionTerm {
    pb::ExpansionTerm {
        id,
        rank,
        weight: 1.0,
        vector: vec![id as f32],
    }
}

fn terms_answer(terms: Vec<pb::ExpansionTerm>, k: u32) -> pb::IndexSearchResponse {
    pb::IndexSearchResponse {
        expansion: terms,
        expansion_k: k,
        ..answer(vec![], pb::RankedBy::RefinedScore)
    }
}

#[test]
fn expansion_terms_of_every_shard_rank_together() {
    // Three terms per shard asked (qe_k 3): the best three of all, by
    // rank then id, as one node would have found them.
    let got = expansion_of(&[
        terms_answer(vec![term(1, 0.1), term(2, 0.4), term(3, 0.5)], 3),
        terms_answer(vec![term(7, 0.2), term(5, 0.4), term(6, 0.9)], 3),
        terms_answer(vec![], 3),
    ])
    .expect("refined");
    let ids: Vec<u64> = got.iter().map(|t| t.id).collect();
    assert_eq!(ids, [1, 7, 2]);
    assert_eq!(got[1].vector, [7.0]);
    // With qe_k 0 each shard still sends its nearest image: one is kept.
    let got = expansion_of(&[
        terms_answer(vec![term(4, 0.3)], 0),
        terms_answer(vec![term(9, 0.2)], 0),
    ])
    .expect("refined");
    assert_eq!(got.iter().map(|t| t.id).collect::<Vec<_>>(), [9]);
}

#[test]
fn searches_without_terms_merge_as_answered() {
    // Another mode answered its hits at once.
    let by_distance = answer(vec![hit(1, 0.1, 0.0)], pb::RankedBy::Distance);
    assert!(expansion_of(&[by_distance.clone(), by_distance]).is_none());
    // Nothing found on any shard.
    assert!(expansion_of(&[terms_answer(vec![], 10), terms_answer(vec![], 10)]).is_none());
    // Shards of a version before expansion across shards answer refined
    // hits and no terms: those are merged.
    let old = answer(vec![hit(1, 0.1, 0.9)], pb::RankedBy::RefinedScore);
    assert!(expansion_of(&[old.clone(), old]).is_none());
}

#[test]
fn a_refined_search_asks_for_terms_first_and_others_do_not() {
    let q = |mode: pb::SearchMode| {
        asking_terms(pb::IndexSearchRequest {
            mode: mode as i32,
            ..Default::default()
        })
        .expansion_only
    };
    assert!(q(pb::SearchMode::Refined));
    assert!(
        q(pb::SearchMode::Unspecified),
        "the shards' default is refined"
    );
    assert!(!q(pb::SearchMode::Probe));
    assert!(!q(pb::SearchMode::Exact));
}

#[test]
fn batch_answers_split_by_query_and_keep_a_shard_error() {
    let item = |id: Option<u64>, err: bool| pb::IndexSearchBatchItem {
        response: id.map(|id| answer(vec![hit(id, 0.1, 0.0)], pb::RankedBy::Distance)),
        error: err.then(|| pb::ItemError {
            code: 3,
            message: "bad".into(),
        }),
    };
    let shard = |items| pb::IndexSearchBatchResponse { items };
    let got = per_query(
        vec![
            shard(vec![item(Some(1), false), item(Some(2), false)]),
            shard(vec![item(Some(3), false), item(None, true)]),
        ],
        2,
    );
    let first = got[0].as_ref().expect("answered");
    assert_eq!(first.len(), 2);
    assert_eq!(got[1].as_ref().expect_err("refused").message, "bad");
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
        None,
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

#[test]
fn the_second_pass_gets_what_is_left_of_the_timeout() {
    let t = Duration::from_secs(5);
    let started = std::time::Instant::now();
    let left = time_left(t, started).expect("time left");
    assert!(left <= t && left > Duration::from_secs(4), "{left:?}");
    let long_ago = std::time::Instant::now() - Duration::from_secs(6);
    let e = time_left(t, long_ago).expect_err("past the deadline");
    assert!(matches!(e, Error::DeadlineExceeded { .. }), "{e:?}");
    assert!(e.to_string().contains("5000 ms"), "{e}");
}
