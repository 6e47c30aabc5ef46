//! How an index service holds vectors: compact storage (codes in memory,
//! exact vectors re-read from the database) and shards (a subset of the
//! class partitions), each against a plain single service on the same
//! database.

use std::collections::{BTreeMap, HashSet};

use cbir_api::v1 as pb;
use cbir_api::v1::index_service_client::IndexServiceClient;
use cbir_common::shard::{shard_of, Shard};
use cbir_index::mem::Storage;
use tonic::transport::Channel;

use crate::both_backends;
use crate::service::{create, record, search, unit, Server};

const DIMS: usize = 48;
const CLASSES: i32 = 9;

async fn fill(c: &mut IndexServiceClient<Channel>, n: u64) {
    create(c, "photos", DIMS as u32).await;
    for chunk in (0..n).collect::<Vec<_>>().chunks(200) {
        let records = chunk
            .iter()
            .map(|&i| record(i, (i % CLASSES as u64) as i32, DIMS))
            .collect();
        c.upsert(pb::UpsertRequest {
            replace: false,
            collection: "photos".into(),
            records,
        })
        .await
        .expect("upsert");
    }
}

async fn hits(
    c: &IndexServiceClient<Channel>,
    v: &[f32],
    mode: pb::SearchMode,
    class: i32,
) -> Vec<(u64, f32)> {
    let mut req = search("photos", v.to_vec(), 10, mode);
    req.predicted_class = class;
    c.clone()
        .search(req)
        .await
        .expect("search")
        .into_inner()
        .hits
        .into_iter()
        .map(|h| (h.id, h.distance))
        .collect()
}

async fn stats(c: &IndexServiceClient<Channel>) -> pb::StatsResponse {
    c.clone()
        .stats(pb::StatsRequest {
            collection: "photos".into(),
        })
        .await
        .expect("stats")
        .into_inner()
}

async fn compact_storage_answers_like_full_storage(url: &str) {
    let full = Server::start(url).await;
    let mut c = full.client.clone();
    fill(&mut c, 900).await;
    let compact = Server::start_with(url, |c| c.storage = Storage::Compact).await;
    let (f, k) = (stats(&full.client).await, stats(&compact.client).await);
    assert_eq!(f.count, k.count);
    assert!(
        k.bytes_in_memory * 2 < f.bytes_in_memory,
        "compact {} bytes against full {}",
        k.bytes_in_memory,
        f.bytes_in_memory
    );
    let mut agree = 0;
    for t in 0..12u64 {
        let v = unit(10_000 + t, DIMS);
        let class = (t % CLASSES as u64) as i32;
        // Exact reads every vector from the database: the very brute force.
        let want = hits(&full.client, &v, pb::SearchMode::Exact, class).await;
        assert_eq!(
            hits(&compact.client, &v, pb::SearchMode::Exact, class).await,
            want
        );
        for mode in [pb::SearchMode::Probe, pb::SearchMode::Partition] {
            let got = hits(&compact.client, &v, mode, class).await;
            let same = hits(&full.client, &v, mode, class).await;
            assert_eq!(got.len(), 10);
            // Distances come from the stored f32 vectors, as in full storage.
            for (id, d) in &got {
                if let Some((_, fd)) = same.iter().find(|(i, _)| i == id) {
                    assert_eq!(d, fd, "{mode:?}: the distance of {id}");
                }
            }
            agree += got.iter().filter(|h| same.contains(h)).count();
        }
        let refined = hits(&compact.client, &v, pb::SearchMode::Refined, class).await;
        assert_eq!(refined.len(), 10);
    }
    assert!(agree >= 12 * 2 * 10 * 95 / 100, "{agree} of 240 hits agree");
    // A write is searchable at once, exactly.
    let mut kc = compact.client.clone();
    let r = record(77_777, 3, DIMS);
    let v = r.feature.clone();
    kc.upsert(pb::UpsertRequest {
        replace: false,
        collection: "photos".into(),
        records: vec![r],
    })
    .await
    .expect("upsert into compact");
    let top = hits(&compact.client, &v, pb::SearchMode::Probe, 3).await;
    assert_eq!(
        top[0].1, 0.0,
        "the new image is its own nearest, at distance 0"
    );
    compact.stop().await;
    full.stop().await;
}
both_backends!(compact_storage, compact_storage_answers_like_full_storage);

async fn shards_hold_their_partitions_and_merge_to_one_node(url: &str) {
    let single = Server::start(url).await;
    let mut c = single.client.clone();
    fill(&mut c, 900).await;
    let shards = [
        Server::start_with(url, |c| c.shard = Shard { id: 0, count: 2 }).await,
        Server::start_with(url, |c| c.shard = Shard { id: 1, count: 2 }).await,
    ];
    // Each loads its own partitions only, and together all of them.
    let mut seen: BTreeMap<i32, u32> = BTreeMap::new();
    let mut total = 0;
    for (i, s) in shards.iter().enumerate() {
        let st = stats(&s.client).await;
        total += st.count;
        for p in st.partitions {
            assert_eq!(
                shard_of(p.class_index, 2),
                i as u32,
                "class {}",
                p.class_index
            );
            assert!(seen.insert(p.class_index, i as u32).is_none());
        }
    }
    assert_eq!(total, 900);
    assert_eq!(seen.len(), CLASSES as usize);
    for t in 0..10u64 {
        let v = unit(20_000 + t, DIMS);
        for mode in [pb::SearchMode::Exact, pb::SearchMode::Probe] {
            let want = hits(&single.client, &v, mode, -1).await;
            let mut merged = Vec::new();
            for s in &shards {
                merged.extend(hits(&s.client, &v, mode, -1).await);
            }
            merged.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
            merged.truncate(10);
            if mode == pb::SearchMode::Exact {
                assert_eq!(merged, want, "query {t}");
            } else {
                let want: HashSet<u64> = want.iter().map(|h| h.0).collect();
                let same = merged.iter().filter(|h| want.contains(&h.0)).count();
                assert!(same >= 9, "probe query {t}: {same} of 10");
            }
        }
    }
    // A write to the owner is in its memory at once; the other shard
    // does not hold it.
    let class = (0..CLASSES).find(|&k| shard_of(k, 2) == 1).unwrap();
    let before: Vec<u64> = [
        stats(&shards[0].client).await.count,
        stats(&shards[1].client).await.count,
    ]
    .to_vec();
    let mut owner = shards[1].client.clone();
    owner
        .upsert(pb::UpsertRequest {
            replace: false,
            collection: "photos".into(),
            records: vec![record(55_555, class, DIMS)],
        })
        .await
        .expect("upsert to the owner");
    assert_eq!(stats(&shards[1].client).await.count, before[1] + 1);
    assert_eq!(stats(&shards[0].client).await.count, before[0]);
    // A write sent to the wrong shard is stored, not held there.
    let mut wrong = shards[0].client.clone();
    wrong
        .upsert(pb::UpsertRequest {
            replace: false,
            collection: "photos".into(),
            records: vec![record(55_556, class, DIMS)],
        })
        .await
        .expect("upsert to another shard");
    assert_eq!(stats(&shards[0].client).await.count, before[0]);
    let [a, b] = shards;
    a.stop().await;
    b.stop().await;
    single.stop().await;
}
both_backends!(shards, shards_hold_their_partitions_and_merge_to_one_node);

#[test]
fn a_shard_outside_its_count_is_refused() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let db = crate::db::TestDb::sqlite().await;
        let mut cfg = cbir_index::Config::default();
        cfg.database_url = db.url.clone();
        cfg.inference_url = None;
        cfg.shard = Shard { id: 2, count: 2 };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let err = cbir_index::serve(cfg, listener, async {})
            .await
            .expect_err("shard 2 of 2 does not exist");
        assert!(err.to_string().contains("shard.id"), "{err}");
        db.drop_db().await;
    });
}
