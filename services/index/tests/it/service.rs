//! The gRPC service on both backends.

use cbir_api::v1 as pb;
use cbir_api::v1::index_service_client::IndexServiceClient;
use tokio::sync::oneshot;
use tonic::transport::Channel;
use tonic::Code;

use crate::both_backends;

pub struct Server {
    pub client: IndexServiceClient<Channel>,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Server {
    pub async fn start(url: &str) -> Self {
        Self::start_with(url, |_| {}).await
    }

    pub async fn start_with(url: &str, tweak: impl FnOnce(&mut cbir_index::Config)) -> Self {
        cbir_common::telemetry::init_for_tests();
        let mut cfg = cbir_index::Config::default();
        cfg.database_url = url.to_string();
        cfg.inference_url = None;
        tweak(&mut cfg);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(cbir_index::serve(cfg, listener, async move {
            let _ = rx.await;
        }));
        let channel = Channel::from_shared(format!("http://{addr}"))
            .expect("uri")
            .connect_lazy();
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
        for _ in 0..400 {
            if let Ok(r) = health
                .check(tonic_health::pb::HealthCheckRequest {
                    service: "cbir.v1.IndexService".into(),
                })
                .await
            {
                if r.into_inner().status == 1 {
                    break;
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        Self {
            client: IndexServiceClient::new(channel),
            stop: Some(stop),
            handle: Some(handle),
        }
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(h) = self.handle.take() {
            h.await.expect("join").expect("serve");
        }
    }
}

pub fn unit(seed: u64, dims: usize) -> Vec<f32> {
    // A cheap deterministic pseudo-random unit vector.
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut v: Vec<f32> = (0..dims)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((x >> 33) as f32 / (1u64 << 31) as f32) - 0.5
        })
        .collect();
    let n: f32 = v.iter().map(|a| a * a).sum::<f32>().sqrt();
    v.iter_mut().for_each(|a| *a /= n);
    v
}

pub fn record(seed: u64, class: i32, dims: usize) -> pb::ImageRecord {
    pb::ImageRecord {
        content_hash: format!("{seed:064x}"),
        file_name: format!("img{seed}.jpg"),
        label: format!("label{class}"),
        predicted_class: class,
        feature: unit(seed, dims),
        thumbnail: vec![0xFF, 0xD8, 0xFF],
        ..Default::default()
    }
}

pub async fn create(client: &mut IndexServiceClient<Channel>, name: &str, dims: u32) {
    client
        .create_collection(pb::CreateCollectionRequest {
            name: name.into(),
            model: Some(pb::ModelRef {
                name: "efficientnet-lite0".into(),
                version: "imagenet".into(),
            }),
            dims,
            description: String::new(),
            if_not_exists: false,
        })
        .await
        .expect("create collection");
}

/// Waits until a replica that follows the database holds `name` with at
/// least `count` images in memory: replicas catch up every `follow_ms`,
/// and a loaded CI machine can take a while.
pub async fn wait_for_collection(c: &IndexServiceClient<Channel>, name: &str, count: u64) {
    let mut last = None;
    for _ in 0..400 {
        let got = c
            .clone()
            .get_collection(pb::GetCollectionRequest { name: name.into() })
            .await
            .ok()
            .and_then(|r| r.into_inner().collection)
            .map(|c| c.count);
        if got.is_some_and(|n| n >= count) {
            return;
        }
        last = got;
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("after 20 s the replica holds {name:?} with {last:?} images, not {count}");
}

pub fn search(
    collection: &str,
    vector: Vec<f32>,
    k: u32,
    mode: pb::SearchMode,
) -> pb::IndexSearchRequest {
    pb::IndexSearchRequest {
        collection: collection.into(),
        vector,
        predicted_class: -1,
        class_probabilities: vec![],
        top_k: k,
        mode: mode as i32,
        min_similarity: 0.0,
        exclude_id: 0,
        ..Default::default()
    }
}

async fn upsert_search_delete(url: &str) {
    let server = Server::start(url).await;
    let mut c = server.client.clone();
    create(&mut c, "photos", 32).await;
    let records: Vec<pb::ImageRecord> = (0..300).map(|i| record(i, (i % 7) as i32, 32)).collect();
    let out = c
        .upsert(pb::UpsertRequest {
            replace: false,
            collection: "photos".into(),
            records: records.clone(),
        })
        .await
        .expect("upsert")
        .into_inner();
    assert_eq!(out.results.len(), 300);
    // The same image twice is one entry.
    let again = c
        .upsert(pb::UpsertRequest {
            replace: false,
            collection: "photos".into(),
            records: vec![records[5].clone()],
        })
        .await
        .expect("upsert again")
        .into_inner();
    assert_eq!(again.results[0].id, out.results[5].id);
    assert!(!again.results[0].created);
    let stats = c
        .stats(pb::StatsRequest {
            collection: "photos".into(),
        })
        .await
        .expect("stats")
        .into_inner();
    assert_eq!(stats.count, 300);
    assert_eq!(stats.dims, 32);
    assert_eq!(stats.partitions.len(), 7);
    assert_eq!(stats.partitions.iter().map(|p| p.count).sum::<u64>(), 300);
    assert!(stats.bytes_in_memory >= 300 * 32 * 4);

    for mode in [
        pb::SearchMode::Exact,
        pb::SearchMode::Probe,
        pb::SearchMode::Unspecified,
    ] {
        let q = records[42].feature.clone();
        let r = c
            .search(search("photos", q, 10, mode))
            .await
            .expect("search")
            .into_inner();
        assert_eq!(r.hits.len(), 10);
        assert_eq!(
            r.hits[0].id, out.results[42].id,
            "{mode:?}: the image finds itself"
        );
        assert!(r.hits[0].distance < 1e-3);
        assert_eq!(r.hits[0].file_name, "img42.jpg");
        assert_eq!(r.hits[0].label, "label0");
        if r.ranked_by == pb::RankedBy::Distance as i32 {
            assert!(r.hits.windows(2).all(|w| w[0].distance <= w[1].distance));
        } else {
            // The default, refined: the nearest first, then by score.
            assert_eq!(r.mode, pb::SearchMode::Refined as i32);
            assert!(r.hits[1..].windows(2).all(|w| w[0].score >= w[1].score));
        }
        for h in &r.hits {
            assert_eq!(
                h.similarity,
                1.0 / (1.0 + h.distance),
                "similarity = 1/(1+d) exactly"
            );
        }
    }
    // Partition mode needs a class and reads one partition.
    let mut p = search(
        "photos",
        records[42].feature.clone(),
        10,
        pb::SearchMode::Partition,
    );
    let err = c.search(p.clone()).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    p.predicted_class = 0;
    let r = c.search(p).await.expect("partition").into_inner();
    let st = r.stats.expect("stats");
    assert_eq!(st.partitions_searched, 1);
    assert!(r.hits.iter().all(|h| h.partition == 0));

    // Delete removes from search at once.
    let victim = out.results[42].id;
    let d = c
        .delete(pb::DeleteRequest {
            collection: "photos".into(),
            ids: vec![victim],
        })
        .await
        .expect("delete")
        .into_inner();
    assert_eq!(d.deleted, 1);
    let r = c
        .search(search(
            "photos",
            records[42].feature.clone(),
            300,
            pb::SearchMode::Exact,
        ))
        .await
        .expect("search")
        .into_inner();
    assert_eq!(r.hits.len(), 299);
    assert!(r.hits.iter().all(|h| h.id != victim));
    let err = c
        .get_image(pb::GetImageRequest {
            collection: "photos".into(),
            id: victim,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    // Restart: everything acknowledged is there.
    server.stop().await;
    let server = Server::start(url).await;
    let mut c = server.client.clone();
    let stats = c
        .stats(pb::StatsRequest {
            collection: "photos".into(),
        })
        .await
        .expect("stats")
        .into_inner();
    assert_eq!(stats.count, 299);
    let img = c
        .get_image(pb::GetImageRequest {
            collection: "photos".into(),
            id: out.results[7].id,
            include_feature: true,
            include_thumbnail: true,
            include_source: false,
        })
        .await
        .expect("get")
        .into_inner()
        .image
        .expect("image");
    assert_eq!(img.thumbnail, vec![0xFF, 0xD8, 0xFF]);
    assert_eq!(img.feature.len(), 32);
    let cleared = c
        .clear(pb::ClearRequest {
            collection: "photos".into(),
        })
        .await
        .expect("clear")
        .into_inner();
    assert_eq!(cleared.removed, 299);
    let r = c
        .search(search(
            "photos",
            records[1].feature.clone(),
            10,
            pb::SearchMode::Exact,
        ))
        .await
        .expect("search empty")
        .into_inner();
    assert!(r.hits.is_empty());
    server.stop().await;
}
both_backends!(upsert_search_delete_restart, upsert_search_delete);

async fn bad_requests(url: &str) {
    let server = Server::start(url).await;
    let mut c = server.client.clone();
    create(&mut c, "photos", 16).await;
    let err = c
        .create_collection(pb::CreateCollectionRequest {
            name: "photos".into(),
            model: Some(pb::ModelRef {
                name: "m".into(),
                version: "v".into(),
            }),
            dims: 16,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    let long_name = "n".repeat(129);
    for (name, dims) in [
        ("bad name!", 16),
        ("", 16),
        ("ok", 0),
        (long_name.as_str(), 16),
    ] {
        let err = c
            .create_collection(pb::CreateCollectionRequest {
                name: name.into(),
                model: Some(pb::ModelRef {
                    name: "m".into(),
                    version: "v".into(),
                }),
                dims,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{name:?} {dims}");
    }
    let err = c
        .create_collection(pb::CreateCollectionRequest {
            name: "described".into(),
            model: Some(pb::ModelRef {
                name: "m".into(),
                version: "v".into(),
            }),
            dims: 16,
            description: "d".repeat(5000),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("description"), "{}", err.message());
    let good = record(1, 0, 16);
    // Over-long strings: each refused, naming the field and its limit.
    for (field, build) in [
        (
            "file_name",
            (|r: &mut pb::ImageRecord| r.file_name = "f".repeat(1025)) as fn(&mut _),
        ),
        ("path", |r| r.path = "p".repeat(4097)),
        ("label", |r| r.label = "l".repeat(513)),
    ] {
        let mut bad = record(9, 0, 16);
        build(&mut bad);
        let err = c
            .upsert(pb::UpsertRequest {
                replace: false,
                collection: "photos".into(),
                records: vec![good.clone(), bad],
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
        assert!(
            err.message().contains(field) && err.message().contains("the limit is"),
            "{}",
            err.message()
        );
    }
    let mut wrong_dims = record(2, 0, 16);
    wrong_dims.feature.pop();
    let mut zero = record(3, 0, 16);
    zero.feature = vec![0.0; 16];
    let mut nan = record(4, 0, 16);
    nan.feature[0] = f32::NAN;
    let mut bad_hash = record(5, 0, 16);
    bad_hash.content_hash = "xyz".into();
    for bad in [wrong_dims, zero, nan, bad_hash] {
        // A bad record refuses the whole batch: nothing half-written.
        let err = c
            .upsert(pb::UpsertRequest {
                replace: false,
                collection: "photos".into(),
                records: vec![good.clone(), bad],
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    }
    let stats = c
        .stats(pb::StatsRequest {
            collection: "photos".into(),
        })
        .await
        .expect("stats")
        .into_inner();
    assert_eq!(stats.count, 0);
    let err = c
        .upsert(pb::UpsertRequest {
            replace: false,
            collection: "nope".into(),
            records: vec![good.clone()],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.message().contains("nope"), "{}", err.message());
    for k in [0, 1_000_000] {
        let err = c
            .search(search(
                "photos",
                good.feature.clone(),
                k,
                pb::SearchMode::Exact,
            ))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
    }
    let err = c
        .search(search("photos", vec![1.0; 3], 5, pb::SearchMode::Exact))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("3 dimensions"), "{}", err.message());
    // Still serving.
    c.upsert(pb::UpsertRequest {
        replace: false,
        collection: "photos".into(),
        records: vec![good],
    })
    .await
    .expect("good upsert");
    server.stop().await;
}
both_backends!(bad_requests_are_refused_whole, bad_requests);

/// A query that names the model of its vector is refused by a collection
/// bound to another one: after a rebuild switched the name to a new model,
/// an old-model vector must not be compared with new-model features.
async fn search_for_another_model(url: &str) {
    let server = Server::start(url).await;
    let mut c = server.client.clone();
    create(&mut c, "photos", 16).await;
    let records: Vec<pb::ImageRecord> = (0..10).map(|i| record(i, 0, 16)).collect();
    c.upsert(pb::UpsertRequest {
        replace: false,
        collection: "photos".into(),
        records: records.clone(),
    })
    .await
    .expect("upsert");
    let model = |name: &str, version: &str| {
        Some(pb::ModelRef {
            name: name.into(),
            version: version.into(),
        })
    };
    let mut q = search(
        "photos",
        records[3].feature.clone(),
        5,
        pb::SearchMode::Exact,
    );
    // No model named, or the collection's own: searched.
    for m in [None, model("efficientnet-lite0", "imagenet")] {
        q.model = m;
        let r = c.search(q.clone()).await.expect("search").into_inner();
        assert_eq!(r.hits[0].file_name, "img3.jpg");
    }
    // Another name or only another version: refused, naming both models.
    for (name, version) in [("flowers", "1"), ("efficientnet-lite0", "tuned-2")] {
        q.model = model(name, version);
        let err = c.search(q.clone()).await.unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
        let msg = err.message();
        assert!(msg.contains("efficientnet-lite0:imagenet"), "{msg}");
        assert!(msg.contains(&format!("{name}:{version}")), "{msg}");
        assert!(msg.contains("rebuilt for another model"), "{msg}");
    }
    server.stop().await;
}
both_backends!(
    search_naming_another_model_is_refused,
    search_for_another_model
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_searches_and_upserts() {
    let db = crate::db::TestDb::sqlite().await;
    let server = Server::start(&db.url).await;
    let mut c = server.client.clone();
    create(&mut c, "photos", 64).await;
    let mut writers = Vec::new();
    for w in 0..3u64 {
        let mut c = c.clone();
        writers.push(tokio::spawn(async move {
            for b in 0..10u64 {
                let recs = (0..20)
                    .map(|i| record(w * 10_000 + b * 100 + i, (i % 4) as i32, 64))
                    .collect();
                c.upsert(pb::UpsertRequest {
                    replace: false,
                    collection: "photos".into(),
                    records: recs,
                })
                .await
                .expect("concurrent upsert");
            }
        }));
    }
    let mut readers = Vec::new();
    for r in 0..3u64 {
        let mut c = c.clone();
        readers.push(tokio::spawn(async move {
            for i in 0..30 {
                c.search(search(
                    "photos",
                    unit(r * 100 + i, 64),
                    10,
                    pb::SearchMode::Probe,
                ))
                .await
                .expect("concurrent search");
            }
        }));
    }
    for t in writers.into_iter().chain(readers) {
        t.await.expect("task");
    }
    let stats = c
        .stats(pb::StatsRequest {
            collection: "photos".into(),
        })
        .await
        .expect("stats")
        .into_inner();
    assert_eq!(stats.count, 600);
    server.stop().await;
    db.drop_db().await;
}

/// Polls `check` every 50 ms for up to 10 s.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..200 {
        if check().await {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("{what} did not happen within 10 s");
}

async fn replicas_follow(url: &str) {
    let follow = |c: &mut cbir_index::Config| c.follow_ms = 100;
    let a = Server::start_with(url, follow).await;
    let b = Server::start_with(url, follow).await;
    let (mut ca, mut cb) = (a.client.clone(), b.client.clone());
    create(&mut ca, "shared", 16).await;
    // B picks up the collection A created, then A's writes.
    eventually("B sees the new collection", || {
        let mut cb = cb.clone();
        async move {
            cb.get_collection(pb::GetCollectionRequest {
                name: "shared".into(),
            })
            .await
            .is_ok()
        }
    })
    .await;
    let records: Vec<pb::ImageRecord> = (0..20).map(|i| record(i, (i % 3) as i32, 16)).collect();
    let ids: Vec<u64> = ca
        .upsert(pb::UpsertRequest {
            replace: false,
            collection: "shared".into(),
            records: records.clone(),
        })
        .await
        .expect("upsert on A")
        .into_inner()
        .results
        .iter()
        .map(|r| r.id)
        .collect();
    let query = records[7].feature.clone();
    eventually("B finds what A wrote", || {
        let mut cb = cb.clone();
        let q = search("shared", query.clone(), 1, pb::SearchMode::Exact);
        let want = ids[7];
        async move {
            cb.search(q)
                .await
                .map(|r| r.into_inner().hits.first().map(|h| h.id) == Some(want))
                .unwrap_or(false)
        }
    })
    .await;
    // A delete on B disappears from A.
    cb.delete(pb::DeleteRequest {
        collection: "shared".into(),
        ids: vec![ids[7]],
    })
    .await
    .expect("delete on B");
    eventually("A stops returning what B deleted", || {
        let mut ca = ca.clone();
        let q = search("shared", query.clone(), 1, pb::SearchMode::Exact);
        let gone = ids[7];
        async move {
            ca.search(q)
                .await
                .map(|r| r.into_inner().hits.first().map(|h| h.id) != Some(gone))
                .unwrap_or(false)
        }
    })
    .await;
    let stats = ca
        .stats(pb::StatsRequest {
            collection: "shared".into(),
        })
        .await
        .expect("stats")
        .into_inner();
    assert_eq!(stats.count, 19);
    // Each replica's own writes stay visible at once, without a reload.
    ca.upsert(pb::UpsertRequest {
        replace: false,
        collection: "shared".into(),
        records: vec![record(99, 1, 16)],
    })
    .await
    .expect("upsert on A");
    let hit = ca
        .search(search(
            "shared",
            record(99, 1, 16).feature,
            1,
            pb::SearchMode::Exact,
        ))
        .await
        .expect("search A")
        .into_inner()
        .hits;
    assert_eq!(hit[0].file_name, "img99.jpg");
    // Clear on A empties B; deleting the collection removes it from B.
    ca.clear(pb::ClearRequest {
        collection: "shared".into(),
    })
    .await
    .expect("clear");
    eventually("B is empty after A cleared", || {
        let mut cb = cb.clone();
        async move {
            cb.stats(pb::StatsRequest {
                collection: "shared".into(),
            })
            .await
            .map(|r| r.into_inner().count == 0)
            .unwrap_or(false)
        }
    })
    .await;
    ca.delete_collection(pb::DeleteCollectionRequest {
        name: "shared".into(),
    })
    .await
    .expect("delete collection");
    eventually("B forgets the deleted collection", || {
        let mut cb = cb.clone();
        async move {
            cb.get_collection(pb::GetCollectionRequest {
                name: "shared".into(),
            })
            .await
            .is_err_and(|s| s.code() == Code::NotFound)
        }
    })
    .await;
    a.stop().await;
    b.stop().await;
}
both_backends!(replicas_on_one_database_follow_each_other, replicas_follow);

/// A stop while upserts are in flight: each accepted upsert is answered and
/// stored (found after a restart), then the service exits.
async fn graceful_stop_finishes_upserts(url: &str) {
    let server = Server::start(url).await;
    let mut c = server.client.clone();
    create(&mut c, "drain", 32).await;
    let mut calls = Vec::new();
    for b in 0..16u64 {
        let mut c = server.client.clone();
        calls.push(tokio::spawn(async move {
            c.upsert(pb::UpsertRequest {
                replace: false,
                collection: "drain".into(),
                records: (b * 25..b * 25 + 25)
                    .map(|s| record(s, (s % 5) as i32, 32))
                    .collect(),
            })
            .await
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    server.stop().await;
    let mut acked = 0;
    for call in calls {
        // Requests that had not reached the server before it stopped fail in
        // transport; none fails any other way.
        match call.await.expect("task") {
            Ok(r) => acked += r.into_inner().results.len() as u64,
            Err(e) => assert_eq!(e.code(), Code::Unavailable, "{e:?}"),
        }
    }
    assert!(acked > 0, "some upserts were in flight");
    let server = Server::start(url).await;
    let stats = server
        .client
        .clone()
        .stats(pb::StatsRequest {
            collection: "drain".into(),
        })
        .await
        .expect("stats")
        .into_inner();
    assert!(
        stats.count >= acked,
        "{} stored, {acked} acknowledged",
        stats.count
    );
    assert_eq!(stats.count % 25, 0, "no upsert half stored");
    server.stop().await;
}
both_backends!(graceful_stop, graceful_stop_finishes_upserts);
