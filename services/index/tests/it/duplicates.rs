//! Near-duplicates (issue 15, item 5) through the index service on both
//! backends: a run started on one replica is followed and listed from
//! another, deleted images leave the listing, one run per collection at a
//! time even with concurrent starters, and bad requests are refused.

use std::collections::HashSet;

use cbir_api::v1 as pb;
use cbir_api::v1::index_service_client::IndexServiceClient;
use pb::operation_progress::State;
use tonic::transport::Channel;
use tonic::Code;

use crate::both_backends;
use crate::service::{create, record, unit, wait_for_collection, Server};

const DIMS: usize = 16;

/// `base` moved a little (a near-copy), renormalised.
fn near(base: &[f32], seed: u64) -> Vec<f32> {
    let noise = unit(seed, DIMS);
    let mut v: Vec<f32> = base.iter().zip(&noise).map(|(a, n)| a + 0.02 * n).collect();
    let n: f32 = v.iter().map(|a| a * a).sum::<f32>().sqrt();
    v.iter_mut().for_each(|a| *a /= n);
    v
}

/// 8 originals with 1 to 3 near-copies each (every third copy predicted
/// as another class), and 12 unrelated images. Returns the expected
/// families as upserted ids, largest first.
async fn fill(c: &mut IndexServiceClient<Channel>, name: &str) -> Vec<Vec<u64>> {
    let mut records = Vec::new();
    let mut families: Vec<Vec<usize>> = Vec::new();
    for i in 0..8u64 {
        let class = (i % 3) as i32;
        let orig = record(1000 + i, class, DIMS);
        let mut family = vec![records.len()];
        records.push(orig.clone());
        for k in 0..(1 + i % 3) {
            let mut copy = record(
                2000 + i * 10 + k,
                if k == 2 { class + 1 } else { class },
                DIMS,
            );
            copy.feature = near(&orig.feature, 3000 + i * 10 + k);
            family.push(records.len());
            records.push(copy);
        }
        families.push(family);
    }
    for i in 0..12u64 {
        records.push(record(5000 + i, (i % 3) as i32, DIMS));
    }
    let ids: Vec<u64> = c
        .upsert(pb::UpsertRequest {
            collection: name.into(),
            records,
            replace: false,
        })
        .await
        .expect("upsert")
        .into_inner()
        .results
        .iter()
        .map(|r| r.id)
        .collect();
    let mut out: Vec<Vec<u64>> = families
        .iter()
        .map(|f| f.iter().map(|&i| ids[i]).collect())
        .collect();
    out.sort_by(|a, b| b.len().cmp(&a.len()).then(a[0].cmp(&b[0])));
    out
}

async fn start(c: &mut IndexServiceClient<Channel>, name: &str, min: f32) -> String {
    c.find_duplicates(pb::FindDuplicatesRequest {
        collection: name.into(),
        min_similarity: min,
    })
    .await
    .expect("find duplicates")
    .into_inner()
    .operation_id
}

/// Every progress message of the operation until it ends.
async fn watch(c: &mut IndexServiceClient<Channel>, id: &str) -> Vec<pb::OperationProgress> {
    let mut s = c
        .watch_operation(pb::WatchOperationRequest {
            operation_id: id.into(),
        })
        .await
        .expect("watch")
        .into_inner();
    let mut seen = Vec::new();
    while let Some(p) = s.message().await.expect("progress") {
        seen.push(p);
    }
    seen
}

async fn list(c: &mut IndexServiceClient<Channel>, name: &str) -> pb::ListDuplicatesResponse {
    c.list_duplicates(pb::ListDuplicatesRequest {
        collection: name.into(),
    })
    .await
    .expect("list duplicates")
    .into_inner()
}

fn member_ids(r: &pb::ListDuplicatesResponse) -> Vec<Vec<u64>> {
    r.groups
        .iter()
        .map(|g| {
            g.members
                .iter()
                .map(|m| m.image.as_ref().unwrap().id)
                .collect()
        })
        .collect()
}

async fn run_and_list(url: &str) {
    let follow = |c: &mut cbir_index::Config| c.follow_ms = 100;
    let a = Server::start_with(url, follow).await;
    let b = Server::start_with(url, follow).await;
    let (mut ca, mut cb) = (a.client.clone(), b.client.clone());
    create(&mut ca, "dups", DIMS as u32).await;
    // Before any run: no operation, the default threshold.
    let none = list(&mut ca, "dups").await;
    assert!(none.operation.is_none() && none.groups.is_empty());
    assert_eq!(
        none.min_similarity,
        cbir_index::DuplicatesConfig::default().min_similarity
    );
    let families = fill(&mut ca, "dups").await;

    let op = start(&mut ca, "dups", 0.9).await;
    // B did not run it, yet follows it to the end from the database.
    let seen = watch(&mut cb, &op).await;
    wait_for_collection(&cb, "dups", 35).await;
    let last = seen.last().expect("some progress");
    assert_eq!(last.state, State::Succeeded as i32, "{}", last.message);
    assert_eq!((last.done, last.total), (35, 35));
    assert!(last.message.contains("8 groups"), "{}", last.message);
    for p in &seen {
        assert!(p.done <= p.total && p.operation_id == op);
    }

    let listed = list(&mut cb, "dups").await;
    assert_eq!(listed.operation.as_ref().unwrap().operation_id, op);
    assert!((listed.min_similarity - 0.9).abs() < 1e-6);
    assert_eq!(member_ids(&listed), families);
    assert_eq!(listed.total_groups, 8);
    for g in &listed.groups {
        assert_eq!(g.members[0].similarity, 1.0);
        for m in &g.members[1..] {
            assert!(
                m.similarity >= 0.9 && m.similarity < 1.0,
                "{}",
                m.similarity
            );
        }
        let img = g.members[0].image.as_ref().unwrap();
        assert!(!img.thumbnail.is_empty() && img.feature.is_empty());
        assert!(img.created_at_ms > 0 && img.file_name.starts_with("img"));
    }

    // A deleted copy leaves its group; a group of one is no group.
    let two = families.iter().find(|f| f.len() == 2).unwrap().clone();
    let four = families[0].clone();
    ca.delete(pb::DeleteRequest {
        collection: "dups".into(),
        ids: vec![two[1], four[0]],
    })
    .await
    .expect("delete");
    let mut expect: Vec<Vec<u64>> = families
        .iter()
        .filter(|f| **f != two)
        .map(|f| f.iter().copied().filter(|id| *id != four[0]).collect())
        .collect();
    expect.sort_by(|a, b| b.len().cmp(&a.len()).then(a[0].cmp(&b[0])));
    assert_eq!(member_ids(&list(&mut ca, "dups").await), expect);
    let mut seen_on_b = false;
    for _ in 0..200 {
        if member_ids(&list(&mut cb, "dups").await) == expect {
            seen_on_b = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(seen_on_b, "B still lists deleted images");
    // The first member left is the reference of the similarities.
    let g = list(&mut ca, "dups").await;
    let first = g.groups.iter().find(|g| g.members.len() == 3).unwrap();
    assert_eq!(first.members[0].similarity, 1.0);

    // A new run replaces the old one; a deleted collection has none.
    let op2 = start(&mut cb, "dups", 0.0).await;
    assert_ne!(op2, op);
    let last = watch(&mut ca, &op2).await.pop().unwrap();
    assert_eq!(last.state, State::Succeeded as i32);
    let l2 = list(&mut ca, "dups").await;
    assert_eq!(l2.operation.unwrap().operation_id, op2);
    let old = ca
        .watch_operation(pb::WatchOperationRequest {
            operation_id: op.clone(),
        })
        .await;
    assert_eq!(old.err().map(|s| s.code()), Some(Code::NotFound));
    ca.delete_collection(pb::DeleteCollectionRequest {
        name: "dups".into(),
    })
    .await
    .expect("delete collection");
    create(&mut ca, "dups", DIMS as u32).await;
    assert!(list(&mut ca, "dups").await.operation.is_none());
    a.stop().await;
    b.stop().await;
}
both_backends!(duplicates_found_and_listed, run_and_list);

async fn refusals(url: &str) {
    let s = Server::start(url).await;
    let mut c = s.client.clone();
    create(&mut c, "d", DIMS as u32).await;
    for bad in [1.5, -0.1, f32::NAN] {
        let e = c
            .find_duplicates(pb::FindDuplicatesRequest {
                collection: "d".into(),
                min_similarity: bad,
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{bad}");
        assert!(e.message().contains("min_similarity"), "{}", e.message());
    }
    for e in [
        c.find_duplicates(pb::FindDuplicatesRequest {
            collection: "nope".into(),
            min_similarity: 0.0,
        })
        .await
        .unwrap_err(),
        c.list_duplicates(pb::ListDuplicatesRequest {
            collection: "nope".into(),
        })
        .await
        .unwrap_err(),
        c.watch_operation(pb::WatchOperationRequest {
            operation_id: "no-such-op".into(),
        })
        .await
        .err()
        .unwrap(),
    ] {
        assert_eq!(e.code(), Code::NotFound, "{}", e.message());
    }
    // An empty collection: a run that finds nothing.
    let op = start(&mut c, "d", 0.0).await;
    let last = watch(&mut c, &op).await.pop().unwrap();
    assert_eq!(last.state, State::Succeeded as i32);
    assert!(list(&mut c, "d").await.groups.is_empty());
    s.stop().await;
}
both_backends!(duplicates_refusals, refusals);

/// Starters racing on one collection, through the store: exactly one run
/// starts, every other starter is answered that run.
async fn one_run_at_a_time(url: &str) {
    let s = Server::start(url).await;
    let mut c = s.client.clone();
    create(&mut c, "race", DIMS as u32).await;
    let store = cbir_index::Store::connect(url, 8).await.expect("store");
    let coll = store
        .collections()
        .await
        .unwrap()
        .into_iter()
        .find(|r| r.name == "race")
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let p = pb::OperationProgress {
                operation_id: format!("op-{i}"),
                state: State::Running as i32,
                started_at_ms: 1,
                ..Default::default()
            };
            let r = store.start_duplicate_run(coll.id, 0.8, &p).await.unwrap();
            (format!("op-{i}"), r)
        }));
    }
    let mut started = Vec::new();
    let mut answered = HashSet::new();
    for t in tasks {
        let (id, r) = t.await.unwrap();
        match r {
            cbir_index::store::RunStart::Started => started.push(id),
            cbir_index::store::RunStart::Running(other) => {
                answered.insert(other);
            }
        }
    }
    assert_eq!(started.len(), 1, "{started:?}");
    assert!(answered.iter().all(|a| *a == started[0]), "{answered:?}");
    // The service answers the running run's id rather than starting one.
    assert_eq!(start(&mut c, "race", 0.0).await, started[0]);
    s.stop().await;
}
both_backends!(duplicates_one_run_at_a_time, one_run_at_a_time);

/// A run while writers add and delete images: it succeeds, and the
/// listing never shows an image deleted before it was asked for.
async fn run_under_writes(url: &str) {
    let s = Server::start(url).await;
    let mut c = s.client.clone();
    create(&mut c, "busy", DIMS as u32).await;
    let families = fill(&mut c, "busy").await;
    let writers: Vec<_> = (0..2u64)
        .map(|w| {
            let mut c = s.client.clone();
            tokio::spawn(async move {
                for i in 0..20u64 {
                    let r = record(10_000 + w * 100 + i, (i % 3) as i32, DIMS);
                    let id = c
                        .upsert(pb::UpsertRequest {
                            collection: "busy".into(),
                            records: vec![r],
                            replace: false,
                        })
                        .await
                        .expect("upsert")
                        .into_inner()
                        .results[0]
                        .id;
                    if i % 2 == 0 {
                        c.delete(pb::DeleteRequest {
                            collection: "busy".into(),
                            ids: vec![id],
                        })
                        .await
                        .expect("delete");
                    }
                }
            })
        })
        .collect();
    let mut ops = Vec::new();
    for _ in 0..3 {
        let op = start(&mut c, "busy", 0.9).await;
        let last = watch(&mut c, &op).await.pop().expect("progress");
        assert_eq!(last.state, State::Succeeded as i32, "{}", last.message);
        ops.push(op);
    }
    for w in writers {
        w.await.expect("writer");
    }
    // Deleted in the middle of the run or before: gone from the listing.
    let first = families[0][1];
    c.delete(pb::DeleteRequest {
        collection: "busy".into(),
        ids: vec![first],
    })
    .await
    .expect("delete");
    let listed = member_ids(&list(&mut c, "busy").await);
    assert!(listed.iter().flatten().all(|id| *id != first));
    let op = start(&mut c, "busy", 0.9).await;
    assert!(!ops.contains(&op));
    assert_eq!(
        watch(&mut c, &op).await.pop().expect("progress").state,
        State::Succeeded as i32
    );
    assert_eq!(list(&mut c, "busy").await.groups.len(), families.len());
    s.stop().await;
}
both_backends!(duplicates_under_concurrent_writes, run_under_writes);
