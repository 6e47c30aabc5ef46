//! Concurrent writers on one database (issue 13, item 1): many writers on
//! different collections of one service, and two replicas on one database,
//! mixing upserts, deletes, clears and collection creates and deletes. No
//! call may fail, and the database holds exactly what the answers said.

use std::collections::HashMap;

use cbir_api::v1 as pb;
use cbir_api::v1::index_service_client::IndexServiceClient;
use tonic::transport::Channel;

use crate::both_backends;
use crate::service::{create, record, Server};

const DIMS: usize = 16;
const WRITERS: u64 = 8;
const ROUNDS: u64 = 24;

/// Content hash -> id of what a collection must hold.
type Expected = HashMap<String, u64>;

/// One writer's rounds on its collection: a batch of new images plus one
/// sent before (it must stay one entry with its id), deletes, a clear now
/// and then, and a scratch collection created, filled and deleted.
async fn writer(mut c: IndexServiceClient<Channel>, coll: String, t: u64) -> Expected {
    let mut expect = Expected::new();
    for round in 0..ROUNDS {
        let base = t * 1_000_000 + round * 10;
        let mut recs: Vec<pb::ImageRecord> = (base..base + 10)
            .map(|s| record(s, (s % 4) as i32, DIMS))
            .collect();
        if round > 0 {
            recs.push(record(base - 10, ((base - 10) % 4) as i32, DIMS));
        }
        let out = c
            .upsert(pb::UpsertRequest {
                collection: coll.clone(),
                records: recs.clone(),
                replace: false,
            })
            .await
            .unwrap_or_else(|s| panic!("upsert into {coll}, round {round}: {s:?}"))
            .into_inner();
        assert_eq!(out.results.len(), recs.len());
        for (r, res) in recs.iter().zip(&out.results) {
            if let Some(&id) = expect.get(&r.content_hash) {
                assert_eq!(res.id, id, "a stored image keeps its id");
                assert!(!res.created);
            }
            expect.insert(r.content_hash.clone(), res.id);
        }
        if round % 3 == 2 {
            let mut gone: Vec<(String, u64)> =
                expect.iter().map(|(h, id)| (h.clone(), *id)).collect();
            gone.sort();
            gone.truncate(3);
            let n = c
                .delete(pb::DeleteRequest {
                    collection: coll.clone(),
                    ids: gone.iter().map(|g| g.1).collect(),
                })
                .await
                .unwrap_or_else(|s| panic!("delete in {coll}, round {round}: {s:?}"))
                .into_inner()
                .deleted;
            assert_eq!(n, gone.len() as u64);
            for (h, _) in gone {
                expect.remove(&h);
            }
        }
        if round % 8 == 5 {
            c.clear(pb::ClearRequest {
                collection: coll.clone(),
            })
            .await
            .unwrap_or_else(|s| panic!("clear of {coll}, round {round}: {s:?}"));
            expect.clear();
        }
        if round % 4 == 3 {
            let scratch = format!("{coll}-tmp{round}");
            create(&mut c, &scratch, DIMS as u32).await;
            c.upsert(pb::UpsertRequest {
                collection: scratch.clone(),
                records: (0..3).map(|k| record(base + k, 0, DIMS)).collect(),
                replace: false,
            })
            .await
            .unwrap_or_else(|s| panic!("upsert into {scratch}: {s:?}"));
            c.delete_collection(pb::DeleteCollectionRequest {
                name: scratch.clone(),
            })
            .await
            .unwrap_or_else(|s| panic!("delete of {scratch}: {s:?}"));
        }
    }
    expect
}

/// What the database holds in each collection: content hash -> ids.
async fn stored(url: &str) -> HashMap<String, HashMap<String, Vec<u64>>> {
    let store = cbir_index::Store::connect(url, 2).await.expect("store");
    let aliases = store.aliases().await.expect("aliases");
    let mut out = HashMap::new();
    for (name, id) in aliases {
        let mut by_hash: HashMap<String, Vec<u64>> = HashMap::new();
        let mut after = 0;
        loop {
            let page = store.load_page(id, after, 1000).await.expect("page");
            let Some(last) = page.last() else { break };
            after = last.id;
            for img in page {
                by_hash.entry(img.content_hash).or_default().push(img.id);
            }
        }
        out.insert(name, by_hash);
    }
    out
}

fn assert_holds(stored: &HashMap<String, Vec<u64>>, expect: &Expected, coll: &str) {
    for (hash, id) in expect {
        assert_eq!(
            stored.get(hash),
            Some(&vec![*id]),
            "{coll}: an acknowledged image is not stored once under its id"
        );
    }
    assert_eq!(stored.len(), expect.len(), "{coll}: images nobody stored");
}

async fn writers_on_one_service(url: &str) {
    let server = Server::start(url).await;
    let mut c = server.client.clone();
    for t in 0..WRITERS {
        create(&mut c, &format!("w{t}"), DIMS as u32).await;
    }
    let tasks: Vec<_> = (0..WRITERS)
        .map(|t| tokio::spawn(writer(server.client.clone(), format!("w{t}"), t)))
        .collect();
    let mut expected = Vec::new();
    for t in tasks {
        expected.push(t.await.expect("writer"));
    }
    let db = stored(url).await;
    assert_eq!(db.len(), WRITERS as usize, "scratch collections are gone");
    for (t, expect) in expected.iter().enumerate() {
        let coll = format!("w{t}");
        assert_holds(&db[&coll], expect, &coll);
        let count = c
            .stats(pb::StatsRequest {
                collection: coll.clone(),
            })
            .await
            .expect("stats")
            .into_inner()
            .count;
        assert_eq!(count, expect.len() as u64, "{coll}: memory");
    }
    server.stop().await;
}
both_backends!(concurrent_writers_on_one_service, writers_on_one_service);

/// Two replicas on one database (following each other) write at once:
/// each its own collections, and both into one shared collection with
/// the same images.
async fn writers_on_two_replicas(url: &str) {
    let follow = |c: &mut cbir_index::Config| c.follow_ms = 100;
    let a = Server::start_with(url, follow).await;
    let b = Server::start_with(url, follow).await;
    let mut ca = a.client.clone();
    for t in 0..WRITERS {
        create(&mut ca, &format!("w{t}"), DIMS as u32).await;
    }
    create(&mut ca, "shared", DIMS as u32).await;
    // B writes only once it knows every collection.
    for _ in 0..200 {
        let n = b
            .client
            .clone()
            .list_collections(pb::ListCollectionsRequest {})
            .await
            .expect("list")
            .into_inner()
            .collections
            .len();
        if n == WRITERS as usize + 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let mut tasks = Vec::new();
    for t in 0..WRITERS {
        let client = if t % 2 == 0 {
            a.client.clone()
        } else {
            b.client.clone()
        };
        tasks.push(tokio::spawn(writer(client, format!("w{t}"), t)));
    }
    // The same 200 images into the shared collection from both replicas.
    let mut shared = Vec::new();
    for client in [a.client.clone(), b.client.clone()] {
        shared.push(tokio::spawn(async move {
            let mut c = client;
            let mut ids = HashMap::new();
            for batch in 0..20u64 {
                let recs: Vec<pb::ImageRecord> = (batch * 10..batch * 10 + 10)
                    .map(|s| record(900_000_000 + s, (s % 3) as i32, DIMS))
                    .collect();
                let out = c
                    .upsert(pb::UpsertRequest {
                        collection: "shared".into(),
                        records: recs.clone(),
                        replace: false,
                    })
                    .await
                    .unwrap_or_else(|s| panic!("upsert into shared: {s:?}"))
                    .into_inner();
                for (r, res) in recs.iter().zip(out.results) {
                    ids.insert(r.content_hash.clone(), res.id);
                }
            }
            ids
        }));
    }
    let mut expected = Vec::new();
    for t in tasks {
        expected.push(t.await.expect("writer"));
    }
    let ids_a = shared.remove(0).await.expect("shared on A");
    let ids_b = shared.remove(0).await.expect("shared on B");
    assert_eq!(ids_a, ids_b, "both replicas were told the same ids");
    let db = stored(url).await;
    for (t, expect) in expected.iter().enumerate() {
        let coll = format!("w{t}");
        assert_holds(&db[&coll], expect, &coll);
    }
    assert_holds(&db["shared"], &ids_a, "shared");
    // Both replicas' memory converges on the database.
    for (name, server) in [("A", &a), ("B", &b)] {
        let mut c = server.client.clone();
        let mut last = Vec::new();
        let mut same = false;
        for _ in 0..200 {
            last.clear();
            for t in 0..WRITERS {
                let coll = format!("w{t}");
                let count = c
                    .stats(pb::StatsRequest {
                        collection: coll.clone(),
                    })
                    .await
                    .expect("stats")
                    .into_inner()
                    .count;
                last.push((coll, count, expected[t as usize].len() as u64));
            }
            let count = c
                .stats(pb::StatsRequest {
                    collection: "shared".into(),
                })
                .await
                .expect("stats")
                .into_inner()
                .count;
            last.push(("shared".into(), count, ids_a.len() as u64));
            if last.iter().all(|(_, got, want)| got == want) {
                same = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert!(same, "replica {name} does not converge: {last:?}");
    }
    a.stop().await;
    b.stop().await;
}
both_backends!(concurrent_writers_on_two_replicas, writers_on_two_replicas);
