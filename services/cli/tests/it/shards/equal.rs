//! One node against three shards, and resharding.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use cbir_api::v1 as pb;

use super::{
    add, answers, client, compare, held_partitions, index_stats, same, search, search_results,
    shard_config, start_gateway, start_index, start_peered_shards, start_shard, Ranked, CLASSES,
    COLLECTION,
};
use crate::system::{subset, System};

/// The collection's statistics through the gateway.
async fn stats(
    c: &mut cbir_api::v1::search_service_client::SearchServiceClient<tonic::transport::Channel>,
) -> pb::StatsResponse {
    c.get_stats(pb::StatsRequest {
        collection: COLLECTION.into(),
    })
    .await
    .expect("stats")
    .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_shards_answer_like_one_node() {
    let mut sys = System::start(|_| {}).await;
    let files = subset("caltech101", &sys.dir.path().join("up"), CLASSES, 5);
    let (first, later) = files.split_at(40);
    let one = sys.url();
    add(&one, first).await;
    // Queries: images of the collection and images it does not hold.
    let queries: Vec<PathBuf> = first
        .iter()
        .step_by(7)
        .chain(later.iter().step_by(3))
        .cloned()
        .collect();
    let single = answers(&one, &queries).await;

    let db = sys.index_database_url.clone();
    let mut shards = Vec::new();
    for id in 0..3 {
        shards.push(start_shard(&db, id, 3).await);
    }
    let gw = start_gateway(
        &sys,
        &shards.iter().map(|s| vec![s.addr]).collect::<Vec<_>>(),
    )
    .await;
    let sharded = answers(&gw.url, &queries).await;
    compare("one node against three shards", &single, &sharded);

    // Each shard holds only its own partitions, and together all of them.
    let mut all = BTreeSet::new();
    for (id, s) in shards.iter().enumerate() {
        for class in held_partitions(s.addr).await {
            assert_eq!(
                cbir_common::shard::shard_of(class, 3) as usize,
                id,
                "shard {id} holds partition {class}"
            );
            assert!(all.insert(class));
        }
    }
    assert!(all.len() >= 3, "the data spans several partitions: {all:?}");
    let used: BTreeSet<u32> = all
        .iter()
        .map(|c| cbir_common::shard::shard_of(*c, 3))
        .collect();
    assert_eq!(used.len(), 3, "every shard holds a partition: {all:?}");

    // Writes through the sharded gateway: new images go to their owners,
    // a delete and a label reach whichever shard holds the image.
    let added = add(&gw.url, later).await;
    let mut c = client(&gw.url).await;
    let counted = stats(&mut c).await;
    assert_eq!(counted.count, 50, "counted over the shards");
    assert_eq!(counted.partitions.iter().map(|p| p.count).sum::<u64>(), 50);
    let gone = added[0].id;
    let r = c
        .delete_images(pb::DeleteRequest {
            collection: COLLECTION.into(),
            ids: vec![gone],
        })
        .await
        .expect("delete")
        .into_inner();
    assert_eq!(r.deleted, 1);
    let labelled = added[1].id;
    c.update_label(pb::UpdateLabelRequest {
        collection: COLLECTION.into(),
        id: labelled,
        label: "relabelled".into(),
    })
    .await
    .expect("label");
    let query = |id| {
        pb::search_request::Query::Stored(pb::StoredImageQuery {
            id,
            ..Default::default()
        })
    };
    let hits = search(&gw.url, query(labelled), pb::SearchMode::Exact).await;
    assert_eq!(hits[0].0, labelled, "the image finds itself first");
    let r = c
        .search(pb::SearchRequest {
            query: Some(query(labelled)),
            collection: COLLECTION.into(),
            top_k: 1,
            mode: pb::SearchMode::Exact as i32,
            ..Default::default()
        })
        .await
        .expect("search")
        .into_inner();
    assert_eq!(r.results[0].label, "relabelled");
    let everything = search(&gw.url, query(labelled), pb::SearchMode::Exact).await;
    assert!(
        everything.iter().all(|h| h.0 != gone),
        "deleted image found"
    );

    // One node restarted on the same database sees what the shards wrote,
    // and ranks it as they do.
    sys.stop_index().await;
    sys.start_index().await;
    sys.wait_healthy().await;
    let queries: Vec<PathBuf> = later.iter().step_by(2).cloned().collect();
    let single = answers(&one, &queries).await;
    let sharded = answers(&gw.url, &queries).await;
    compare("after writes through the shards", &single, &sharded);

    // Refined ranking runs on every shard: each keeps its augmented
    // vectors up to date, and the merged answer starts with the image
    // nearest to the query, as one node's does.
    for q in queries.iter().take(3) {
        let data = std::fs::read(q).expect("read");
        let exact = search(
            &gw.url,
            pb::search_request::Query::Image(data.clone()),
            pb::SearchMode::Exact,
        )
        .await;
        let refined = search(
            &gw.url,
            pb::search_request::Query::Image(data),
            pb::SearchMode::Refined,
        )
        .await;
        assert_eq!(refined.len(), 10);
        assert_eq!(
            refined[0].0, exact[0].0,
            "refined starts with the nearest image"
        );
        let scores: Vec<f32> = refined[1..].iter().map(|h| h.2).collect();
        assert!(
            scores.windows(2).all(|w| w[0] >= w[1]),
            "refined hits by score: {scores:?}"
        );
    }
    let op = c
        .refine_collection(pb::RefineCollectionRequest {
            collection: COLLECTION.into(),
        })
        .await
        .expect("refine")
        .into_inner()
        .operation_id;
    assert!(op.starts_with("0."), "a shard's operation: {op}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = stats(&mut c).await;
        let r = s.refinement.expect("refinement");
        if r.stale == 0 && r.operation_id.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "refresh did not finish: {r:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Near-duplicates need every shard's images: without peers shard 0
    // refuses, saying what to set.
    let e = c
        .find_duplicates(pb::FindDuplicatesRequest {
            collection: COLLECTION.into(),
            ..Default::default()
        })
        .await
        .expect_err("near-duplicates on shards");
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    assert!(e.message().contains("set peers"), "{}", e.message());

    // Resharding, three shards to two (docs/OPERATIONS.md): the new set
    // starts on the same database, a gateway on it answers as before, then
    // the old set stops.
    let before = answers(&gw.url, &queries).await;
    let mut two = Vec::new();
    for id in 0..2 {
        two.push(start_shard(&db, id, 2).await);
    }
    let gw2 = start_gateway(&sys, &two.iter().map(|s| vec![s.addr]).collect::<Vec<_>>()).await;
    let after = answers(&gw2.url, &queries).await;
    let single = answers(&one, &queries).await;
    compare("one node against two shards", &single, &after);
    for (q, (a, b)) in before.chunks(3).zip(after.chunks(3)).enumerate() {
        assert!(
            same(&a[2].1, &b[2].1),
            "resharded, query {q}: three shards {a:?}, two {b:?}"
        );
    }
    gw.stop().await;
    for s in shards {
        s.stop().await;
    }
    let (gw, shards) = (gw2, two);
    let mut c = client(&gw.url).await;

    // Collections are created and dropped on every shard.
    c.delete_collection(pb::DeleteCollectionRequest {
        name: COLLECTION.into(),
    })
    .await
    .expect("drop");
    let listed = c
        .list_collections(pb::ListCollectionsRequest {})
        .await
        .expect("list")
        .into_inner();
    assert!(listed.collections.iter().all(|c| c.name != COLLECTION));
    // Created again through the sharded gateway: every shard serves it at
    // once (no follow delay), each with its own partitions.
    add(&gw.url, later).await;
    assert_eq!(stats(&mut c).await.count, 10);
    let data = std::fs::read(&later[0]).expect("read");
    let hits = search(
        &gw.url,
        pb::search_request::Query::Image(data),
        pb::SearchMode::Exact,
    )
    .await;
    assert_eq!(hits.len(), 10, "both shards answer");
    gw.stop().await;
    for s in shards {
        s.stop().await;
    }
    sys.shutdown().await;
}

/// Refined ranking over shards expands each query with the nearest images
/// of every shard: the gateway gathers each shard's expansion terms, then
/// every shard ranks with the best of all. In compact storage (no
/// augmented vectors, whose neighbours each shard finds among its own
/// images), with a probe that reads every partition (its stopping rule
/// runs per shard), three shards answer as one node, in refined mode and
/// in the default mode, which is refined.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refined_ranking_over_three_compact_shards_answers_like_one_node() {
    let sys = System::start(|_| {}).await;
    let files = subset("caltech101", &sys.dir.path().join("up"), CLASSES, 5);
    let (stored, unseen) = files.split_at(40);
    add(&sys.url(), stored).await;
    let db = sys.index_database_url.clone();
    let compact = |id, count| cbir_index::Config {
        storage: cbir_index::mem::Storage::Compact,
        probe: cbir_index::ProbeConfig {
            min_partitions: 1000,
            patience: 1000,
        },
        ..shard_config(&db, id, count)
    };
    let one = start_index(compact(0, 1)).await;
    let mut shards = Vec::new();
    for id in 0..3 {
        shards.push(start_index(compact(id, 3)).await);
    }
    let gw_one = start_gateway(&sys, &[vec![one.addr]]).await;
    let gw = start_gateway(
        &sys,
        &shards.iter().map(|s| vec![s.addr]).collect::<Vec<_>>(),
    )
    .await;
    let queries: Vec<&PathBuf> = stored
        .iter()
        .step_by(6)
        .chain(unseen.iter().step_by(2))
        .collect();
    let mut from_other_shards = 0;
    for (i, q) in queries.iter().enumerate() {
        let data = std::fs::read(q).expect("read");
        for mode in [pb::SearchMode::Refined, pb::SearchMode::Unspecified] {
            let query = || pb::search_request::Query::Image(data.clone());
            let a = search(&gw_one.url, query(), mode).await;
            let b = search(&gw.url, query(), mode).await;
            assert_eq!(a.len(), 10, "query {i} {mode:?}: {a:?}");
            assert!(
                same(&a, &b) && a.iter().zip(&b).all(|(x, y)| (x.2 - y.2).abs() < 1e-5),
                "query {i} {mode:?}: one node {a:?}, three shards {b:?}"
            );
        }
        let partitions: Vec<i32> = search_results(
            &gw.url,
            pb::search_request::Query::Image(data),
            pb::SearchMode::Refined,
        )
        .await
        .iter()
        .map(|h| h.partition)
        .collect();
        from_other_shards += usize::from(partitions.iter().any(|p| {
            cbir_common::shard::shard_of(*p, 3) != cbir_common::shard::shard_of(partitions[0], 3)
        }));
    }
    assert!(
        from_other_shards >= queries.len() / 2,
        "the answers span shards: {from_other_shards} of {} queries",
        queries.len()
    );
    gw.stop().await;
    gw_one.stop().await;
    for s in shards {
        s.stop().await;
    }
    one.stop().await;
    sys.shutdown().await;
}

/// Waits until each index service at `addrs` holds `count` images of the
/// collection with no augmented vector stale.
async fn settled(addrs: &[std::net::SocketAddr], count: u64) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut held = 0;
        let mut stale = 0;
        for a in &addrs[1..] {
            let s = index_stats(*a).await;
            held += s.count;
            stale += s.refinement.map_or(0, |r| r.stale);
        }
        let one = index_stats(addrs[0]).await;
        let one_stale = one.refinement.map_or(0, |r| r.stale);
        // Two looks in a row: a mark sent by a peer arrives just after the
        // refresh it follows.
        if held == count && one.count == count && stale == 0 && one_stale == 0 {
            tokio::time::sleep(Duration::from_millis(600)).await;
            let again: u64 = {
                let mut n = index_stats(addrs[0])
                    .await
                    .refinement
                    .map_or(0, |r| r.stale);
                for a in &addrs[1..] {
                    n += index_stats(*a).await.refinement.map_or(0, |r| r.stale);
                }
                n
            };
            if again == 0 {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "not settled: shards hold {held} of {count} images with {stale} stale, one node {} with {one_stale}",
            one.count
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Refined and default-mode answers of one node and of the shards, query
/// by query: the same images in the same order, the same scores.
async fn refined_alike(what: &str, one: &str, sharded: &str, queries: &[&PathBuf]) {
    for (i, q) in queries.iter().enumerate() {
        let data = std::fs::read(q).expect("read");
        for mode in [pb::SearchMode::Refined, pb::SearchMode::Unspecified] {
            let query = || pb::search_request::Query::Image(data.clone());
            let a: Ranked = search(one, query(), mode).await;
            let b: Ranked = search(sharded, query(), mode).await;
            assert_eq!(a.len(), 10, "{what}, query {i} {mode:?}: {a:?}");
            assert!(
                same(&a, &b) && a.iter().zip(&b).all(|(x, y)| (x.2 - y.2).abs() < 1e-4),
                "{what}, query {i} {mode:?}: one node {a:?}, three shards {b:?}"
            );
        }
    }
}

/// Refined ranking in full storage: each image's augmented vector sums its
/// nearest neighbours on every shard (the shards ask their peers), and a
/// new or deleted image marks stale the vectors it changes on any shard.
/// Three shards that name each other as peers answer refined searches as
/// one node through the load, concurrent inserts and deletes through the
/// gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refined_ranking_over_three_full_shards_with_peers_answers_like_one_node() {
    let sys = System::start(|_| {}).await;
    let files = subset("caltech101", &sys.dir.path().join("up"), CLASSES, 5);
    let (stored, later) = files.split_at(40);
    add(&sys.url(), stored).await;
    let db = sys.index_database_url.clone();
    // A probe that reads every partition: neighbour lists are exact on
    // both sides (its stopping rule runs per shard).
    let full = |id, count| cbir_index::Config {
        probe: cbir_index::ProbeConfig {
            min_partitions: 1000,
            patience: 1000,
        },
        ..shard_config(&db, id, count)
    };
    let one = start_index(full(0, 1)).await;
    let shards = start_peered_shards(|id| full(id, 3)).await;
    let gw_one = start_gateway(&sys, &[vec![one.addr]]).await;
    let gw = start_gateway(
        &sys,
        &shards.iter().map(|s| vec![s.addr]).collect::<Vec<_>>(),
    )
    .await;
    let mut addrs = vec![one.addr];
    addrs.extend(shards.iter().map(|s| s.addr));
    let queries: Vec<&PathBuf> = stored
        .iter()
        .step_by(6)
        .chain(later.iter().step_by(3))
        .collect();

    settled(&addrs, 40).await;
    refined_alike("after the load", &gw_one.url, &gw.url, &queries).await;

    // New images through the sharded gateway, two writers at once (each
    // owner marks the other shards' vectors while they write); one node
    // follows the database.
    let (a, b) = later.split_at(later.len() / 2);
    let (mut added, more) = tokio::join!(add(&gw.url, a), add(&gw.url, b));
    added.extend(more);
    settled(&addrs, 50).await;
    refined_alike("after inserts", &gw_one.url, &gw.url, &queries).await;

    let gone: Vec<u64> = added.iter().step_by(4).map(|r| r.id).collect();
    let r = client(&gw.url)
        .await
        .delete_images(pb::DeleteRequest {
            collection: COLLECTION.into(),
            ids: gone.clone(),
        })
        .await
        .expect("delete")
        .into_inner();
    assert_eq!(r.deleted, gone.len() as u64);
    settled(&addrs, 50 - gone.len() as u64).await;
    refined_alike("after deletes", &gw_one.url, &gw.url, &queries).await;

    gw.stop().await;
    gw_one.stop().await;
    for s in shards {
        s.stop().await;
    }
    one.stop().await;
    sys.shutdown().await;
}

/// A near-duplicate run through the gateway at `url`, followed to its end;
/// the groups it stored (ids, oldest first) and their members' classes.
async fn duplicate_groups(url: &str) -> (Vec<Vec<u64>>, Vec<Vec<i32>>) {
    let mut c = client(url).await;
    let op = c
        .find_duplicates(pb::FindDuplicatesRequest {
            collection: COLLECTION.into(),
            min_similarity: 0.0,
        })
        .await
        .unwrap_or_else(|e| panic!("near-duplicates on {url}: {e}"))
        .into_inner()
        .operation_id;
    let mut s = c
        .watch_operation(pb::WatchOperationRequest { operation_id: op })
        .await
        .expect("watch")
        .into_inner();
    let mut last = None;
    while let Some(p) = s.message().await.expect("progress") {
        last = Some(p);
    }
    let last = last.expect("progress");
    assert_eq!(
        last.state,
        pb::operation_progress::State::Succeeded as i32,
        "{}",
        last.message
    );
    assert_eq!(last.done, last.total);
    let groups = c
        .list_duplicates(pb::ListDuplicatesRequest {
            collection: COLLECTION.into(),
        })
        .await
        .expect("list")
        .into_inner()
        .groups;
    let members = |g: &pb::DuplicateGroup| -> Vec<(u64, i32)> {
        g.members
            .iter()
            .map(|m| m.image.as_ref().expect("present"))
            .map(|i| (i.id, i.predicted_class))
            .collect()
    };
    groups
        .iter()
        .map(|g| members(g).into_iter().unzip())
        .unzip()
}

/// Near-duplicates on a sharded index: shard 0 runs the search over every
/// shard's images through its peers (copies predicted as another shard's
/// class included) and stores the groups one node finds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn near_duplicates_over_shards_with_peers_group_as_one_node() {
    use crate::dupes::{make_copy, KINDS};
    let sys = System::start(|_| {}).await;
    let up = sys.dir.path().join("up");
    let originals = subset("caltech101", &up, CLASSES, 3);
    let copies_dir = sys.dir.path().join("copies");
    std::fs::create_dir_all(&copies_dir).expect("mkdir");
    // Copies sit in their original's class folder (the label), made
    // resized, recompressed or cropped in turn.
    let copies: Vec<PathBuf> = originals
        .iter()
        .step_by(2)
        .enumerate()
        .map(|(i, f)| {
            let dir = copies_dir.join(f.parent().and_then(|d| d.file_name()).expect("class"));
            std::fs::create_dir_all(&dir).expect("mkdir");
            make_copy(f, KINDS[i % KINDS.len()], &dir)
        })
        .collect();
    add(&sys.url(), &originals).await;
    add(&sys.url(), &copies).await;
    let db = sys.index_database_url.clone();
    let one = start_index(shard_config(&db, 0, 1)).await;
    let shards = start_peered_shards(|id| shard_config(&db, id, 3)).await;
    let gw_one = start_gateway(&sys, &[vec![one.addr]]).await;
    let gw = start_gateway(
        &sys,
        &shards.iter().map(|s| vec![s.addr]).collect::<Vec<_>>(),
    )
    .await;
    let mut addrs = vec![one.addr];
    addrs.extend(shards.iter().map(|s| s.addr));
    let total = (originals.len() + copies.len()) as u64;
    settled(&addrs, total).await;

    // One run per collection is kept: one node's first, then the shards'.
    let (single, _) = duplicate_groups(&gw_one.url).await;
    let (sharded, classes) = duplicate_groups(&gw.url).await;
    assert!(
        single.len() >= copies.len() / 2,
        "one node groups most copies with their originals: {single:?}"
    );
    assert_eq!(single, sharded, "one node against three shards");
    // Groups spanning shards: a copy predicted as another shard's class
    // than its original's (the peers find those).
    let spanning = classes
        .iter()
        .filter(|g| {
            g.iter().any(|c| {
                cbir_common::shard::shard_of(*c, 3) != cbir_common::shard::shard_of(g[0], 3)
            })
        })
        .count();
    eprintln!("{} groups, {spanning} spanning shards", sharded.len());

    gw.stop().await;
    gw_one.stop().await;
    for s in shards {
        s.stop().await;
    }
    one.stop().await;
    sys.shutdown().await;
}
