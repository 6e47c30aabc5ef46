//! Rebuilding a collection for another model through the inference service,
//! with searches answered throughout and the name switched atomically.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use cbir_api::v1 as pb;
use cbir_api::v1::index_service_client::IndexServiceClient;
use cbir_api::v1::inference_service_client::InferenceServiceClient;
use tonic::transport::Channel;

use crate::system::shared_data;

async fn channel(addr: std::net::SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect_lazy()
}

type Inference = InferenceServiceClient<Channel>;

/// Inference and an index on a temporary SQLite file, with collection
/// `flowers`: 36 real flowers embedded by the served model, in the order
/// of the records returned.
async fn flowers_index() -> (
    tempfile::TempDir,
    Inference,
    IndexServiceClient<Channel>,
    Vec<pb::ImageRecord>,
    String,
) {
    cbir_common::telemetry::init_for_tests();
    let dir = tempfile::tempdir().expect("tempdir");
    // Inference.
    let mut icfg = cbir_inference::Config::for_test();
    icfg.batcher.max_queue_delay_us = 2_000;
    let il = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let iaddr = il.local_addr().expect("addr");
    tokio::spawn(cbir_inference::serve(icfg, il, std::future::pending()));
    // Index, pointing at it.
    let xcfg = cbir_index::Config {
        database_url: format!("sqlite://{}", dir.path().join("index.db").display()),
        inference_url: Some(format!("http://{iaddr}")),
        ..Default::default()
    };
    let xl = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let xaddr = xl.local_addr().expect("addr");
    tokio::spawn(cbir_index::serve(xcfg, xl, std::future::pending()));

    let mut inf = InferenceServiceClient::new(channel(iaddr).await)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
    let mut idx = IndexServiceClient::new(channel(xaddr).await);
    for _ in 0..400 {
        if inf
            .get_model_info(pb::GetModelInfoRequest::default())
            .await
            .is_ok()
            && idx
                .list_collections(pb::ListCollectionsRequest {})
                .await
                .is_ok()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A small collection of real flowers, embedded by the served model.
    idx.create_collection(pb::CreateCollectionRequest {
        name: "flowers".into(),
        model: Some(pb::ModelRef {
            name: "efficientnet-lite0".into(),
            version: "imagenet".into(),
        }),
        dims: 1280,
        ..Default::default()
    })
    .await
    .expect("create");
    let root = shared_data().join("flowers5");
    let mut files = Vec::new();
    for class in ["daisy", "rose", "tulip"] {
        let mut names: Vec<PathBuf> = std::fs::read_dir(root.join(class))
            .expect("class dir")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        names.sort();
        files.extend(names.into_iter().take(12).map(|p| (class.to_string(), p)));
    }
    let images: Vec<pb::ImageInput> = files
        .iter()
        .map(|(_, p)| pb::ImageInput {
            id: p.display().to_string(),
            data: std::fs::read(p).expect("read"),
        })
        .collect();
    let embedded = inf
        .embed(pb::EmbedRequest {
            include_renditions: false,
            images: images.clone(),
            priority: pb::Priority::Bulk as i32,
            include_probabilities: false,
            ..Default::default()
        })
        .await
        .expect("embed")
        .into_inner();
    let records: Vec<pb::ImageRecord> = files
        .iter()
        .zip(&images)
        .zip(&embedded.results)
        .map(|(((label, path), img), r)| {
            let Some(pb::embed_result::Outcome::Embedding(e)) = &r.outcome else {
                panic!("{} did not embed", path.display());
            };
            let decoded = cbir_imaging::decode(&img.data, &Default::default()).expect("decode");
            pb::ImageRecord {
                content_hash: cbir_imaging::content_hash(&img.data),
                file_name: path
                    .file_name()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                path: path.display().to_string(),
                label: label.clone(),
                predicted_class: e.predicted_class,
                feature: e.feature.clone(),
                thumbnail: cbir_imaging::thumbnail(&decoded.image).expect("thumbnail"),
                source_image: img.data.clone(),
                ..Default::default()
            }
        })
        .collect();
    idx.upsert(pb::UpsertRequest {
        replace: false,
        collection: "flowers".into(),
        records: records.clone(),
    })
    .await
    .expect("upsert");

    (dir, inf, idx, records, format!("http://{iaddr}"))
}

/// Serves "v2": the same weights under a new version.
async fn load_v2(inf: &mut Inference) {
    inf.load_model(pb::LoadModelRequest {
        model: Some(pb::ModelRef {
            name: "efficientnet-lite0".into(),
            version: "v2".into(),
        }),
        class_names: vec![],
        weights: Some(pb::load_model_request::Weights::Path(
            cbir_inference::test_weights_path().display().to_string(),
        )),
        weights_sha256: cbir_inference::backend::sha256_hex(
            &std::fs::read(cbir_inference::test_weights_path()).expect("weights"),
        ),
        ..Default::default()
    })
    .await
    .expect("load v2");
}

/// A rebuild for "v2" of `flowers`; its operation id.
async fn start_rebuild(idx: &mut IndexServiceClient<Channel>) -> String {
    idx.rebuild(pb::RebuildRequest {
        collection: "flowers".into(),
        model: Some(pb::ModelRef {
            name: "efficientnet-lite0".into(),
            version: "v2".into(),
        }),
    })
    .await
    .expect("rebuild")
    .into_inner()
    .operation_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuild_switches_model_while_searches_keep_working() {
    let (_dir, mut inf, mut idx, records, _) = flowers_index().await;
    // Rebuilding for a model the inference service does not serve is refused.
    let err = idx
        .rebuild(pb::RebuildRequest {
            collection: "flowers".into(),
            model: Some(pb::ModelRef {
                name: "efficientnet-lite0".into(),
                version: "v2".into(),
            }),
        })
        .await
        .expect_err("model not served");
    assert_eq!(
        err.code(),
        tonic::Code::FailedPrecondition,
        "{}",
        err.message()
    );

    // Serve "v2" (the same weights under a new version), then rebuild.
    load_v2(&mut inf).await;
    let before = idx
        .get_collection(pb::GetCollectionRequest {
            name: "flowers".into(),
        })
        .await
        .expect("get")
        .into_inner()
        .collection
        .expect("collection");
    let op = start_rebuild(&mut idx).await;
    // Searches keep answering, with complete results, during the rebuild.
    let mut searcher = idx.clone();
    let query = records[0].feature.clone();
    let searches = tokio::spawn(async move {
        let mut n = 0;
        for _ in 0..40 {
            let r = searcher
                .search(pb::IndexSearchRequest {
                    collection: "flowers".into(),
                    vector: query.clone(),
                    predicted_class: -1,
                    top_k: 100,
                    mode: pb::SearchMode::Exact as i32,
                    ..Default::default()
                })
                .await
                .expect("search during rebuild")
                .into_inner();
            assert_eq!(r.hits.len(), 36, "a search saw a half-built collection");
            n += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        n
    });
    let mut watch = idx
        .watch_operation(pb::WatchOperationRequest {
            operation_id: op.clone(),
        })
        .await
        .expect("watch")
        .into_inner();
    let mut last = None;
    while let Some(p) = watch.message().await.expect("progress") {
        last = Some(p);
    }
    let last = last.expect("progress reported");
    assert_eq!(
        last.state,
        pb::operation_progress::State::Succeeded as i32,
        "{}",
        last.message
    );
    assert_eq!(last.done, 36);
    assert_eq!(searches.await.expect("searches"), 40);
    let after = idx
        .get_collection(pb::GetCollectionRequest {
            name: "flowers".into(),
        })
        .await
        .expect("get")
        .into_inner()
        .collection
        .expect("collection");
    assert_eq!(after.model.as_ref().map(|m| m.version.as_str()), Some("v2"));
    assert_ne!(after.physical_name, before.physical_name);
    assert_eq!(after.count, 36);
    // The rebuilt index answers like the old one (same weights).
    let r = idx
        .search(pb::IndexSearchRequest {
            collection: "flowers".into(),
            vector: records[5].feature.clone(),
            predicted_class: -1,
            top_k: 3,
            mode: pb::SearchMode::Probe as i32,
            ..Default::default()
        })
        .await
        .expect("search after rebuild")
        .into_inner();
    assert_eq!(r.hits[0].content_hash, records[5].content_hash);
    assert!(r.hits[0].distance < 1e-3);
    // The old physical collection is gone.
    let names: Vec<String> = idx
        .list_collections(pb::ListCollectionsRequest {})
        .await
        .expect("list")
        .into_inner()
        .collections
        .into_iter()
        .map(|c| c.physical_name)
        .collect();
    assert_eq!(names, vec![after.physical_name.clone()]);
}

/// Labels set while a rebuild runs are the rebuilt collection's: set before
/// an image is copied they travel with it, set after it they are carried
/// over at the switch (`carry_labels`); once the name points at the new
/// collection the old ids are gone, which ends the relabelling.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labels_set_during_a_rebuild_survive_it() {
    let (_dir, mut inf, mut idx, records, _) = flowers_index().await;
    load_v2(&mut inf).await;
    let listed = idx
        .list_images(pb::ListImagesRequest {
            collection: "flowers".into(),
            page_size: 100,
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    let ids: Vec<(u64, String)> = listed
        .images
        .iter()
        .map(|i| (i.id, i.content_hash.clone()))
        .collect();
    assert_eq!(ids.len(), 36);
    let op = start_rebuild(&mut idx).await;
    let mut relabeler = idx.clone();
    let relabels = tokio::spawn(async move {
        // Content hash -> the last label acknowledged.
        let mut last: HashMap<String, String> = HashMap::new();
        let mut rounds = 0;
        loop {
            for (id, hash) in &ids {
                let label = format!("round {rounds}");
                match relabeler
                    .update_label(pb::UpdateLabelRequest {
                        collection: "flowers".into(),
                        id: *id,
                        label: label.clone(),
                    })
                    .await
                {
                    Ok(_) => {
                        last.insert(hash.clone(), label);
                    }
                    // The name points at the rebuilt collection now: the
                    // old ids are gone (or changed under a waiting write).
                    Err(s)
                        if matches!(
                            s.code(),
                            tonic::Code::NotFound | tonic::Code::FailedPrecondition
                        ) =>
                    {
                        return (last, rounds)
                    }
                    Err(s) => panic!("relabel of {id}: {s:?}"),
                }
            }
            rounds += 1;
        }
    });
    let mut watch = idx
        .watch_operation(pb::WatchOperationRequest { operation_id: op })
        .await
        .expect("watch")
        .into_inner();
    let mut state = 0;
    while let Some(p) = watch.message().await.expect("progress") {
        state = p.state;
    }
    assert_eq!(state, pb::operation_progress::State::Succeeded as i32);
    let (last, rounds) = relabels.await.expect("relabeller");
    assert!(
        rounds >= 1,
        "every image was relabelled at least once during the rebuild"
    );
    // The database of the rebuilt collection...
    let after = idx
        .list_images(pb::ListImagesRequest {
            collection: "flowers".into(),
            page_size: 100,
            ..Default::default()
        })
        .await
        .expect("list after")
        .into_inner();
    assert_eq!(after.images.len(), 36);
    for img in &after.images {
        assert_eq!(
            Some(&img.label),
            last.get(&img.content_hash),
            "image {} lost its last label",
            img.file_name
        );
    }
    // ...and its memory, which searches read.
    for r in &records {
        let hit = idx
            .search(pb::IndexSearchRequest {
                collection: "flowers".into(),
                vector: r.feature.clone(),
                predicted_class: -1,
                top_k: 1,
                mode: pb::SearchMode::Exact as i32,
                ..Default::default()
            })
            .await
            .expect("search")
            .into_inner()
            .hits
            .remove(0);
        assert_eq!(hit.content_hash, r.content_hash);
        assert_eq!(Some(&hit.label), last.get(&r.content_hash));
    }
}

/// A sharded index rebuilds too: shard 0 re-embeds every image from the
/// database (it holds only its own partitions in memory) into the new
/// collection, keeping in memory those its partitions own; the other
/// shards load the new collection as they follow, and a query embedded
/// with the new model is answered by every shard as soon as the name
/// switched (a shard not yet following takes the new name from the
/// database).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sharded_index_rebuilds_over_every_shard() {
    let (dir, mut inf, _one, records, inference_url) = flowers_index().await;
    let database_url = format!("sqlite://{}", dir.path().join("index.db").display());
    let mut shards = Vec::new();
    for id in 0..3 {
        let cfg = cbir_index::Config {
            database_url: database_url.clone(),
            inference_url: Some(inference_url.clone()),
            shard: cbir_common::shard::Shard { id, count: 3 },
            follow_ms: 200,
            ..Default::default()
        };
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        tokio::spawn(cbir_index::serve(cfg, l, std::future::pending()));
        shards.push(IndexServiceClient::new(channel(addr).await));
    }
    // Each shard loaded its partitions: 36 images together.
    let held = |mut c: IndexServiceClient<Channel>| async move {
        c.stats(pb::StatsRequest {
            collection: "flowers".into(),
        })
        .await
        .map(|r| r.into_inner().count)
        .unwrap_or(0)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let mut n = 0;
        for c in &shards {
            n += held(c.clone()).await;
        }
        if n == 36 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "shards hold {n} of 36"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    load_v2(&mut inf).await;
    let op = start_rebuild(&mut shards[0]).await;
    let mut watch = shards[0]
        .watch_operation(pb::WatchOperationRequest { operation_id: op })
        .await
        .expect("watch")
        .into_inner();
    let mut last = None;
    while let Some(p) = watch.message().await.expect("progress") {
        last = Some(p);
    }
    let last = last.expect("progress reported");
    assert_eq!(
        last.state,
        pb::operation_progress::State::Succeeded as i32,
        "{}",
        last.message
    );
    assert_eq!(last.done, 36, "every shard's images re-embedded");

    // At once: a query embedded with v2 on every shard, each answering
    // from the rebuilt collection (its own partitions of it).
    let v2 = Some(pb::ModelRef {
        name: "efficientnet-lite0".into(),
        version: "v2".into(),
    });
    let hits_on_every_shard = |shards: Vec<IndexServiceClient<Channel>>, when: &'static str| {
        let (vector, model) = (records[5].feature.clone(), v2.clone());
        async move {
            let mut found = 0;
            for (i, mut c) in shards.into_iter().enumerate() {
                found += c
                    .search(pb::IndexSearchRequest {
                        collection: "flowers".into(),
                        vector: vector.clone(),
                        predicted_class: -1,
                        top_k: 100,
                        mode: pb::SearchMode::Exact as i32,
                        model: model.clone(),
                        ..Default::default()
                    })
                    .await
                    .unwrap_or_else(|e| panic!("shard {i} {when}: {e}"))
                    .into_inner()
                    .hits
                    .len();
            }
            found
        }
    };
    let found = hits_on_every_shard(shards.clone(), "right after the switch").await;
    assert!(found <= 36);
    // Once they follow, the shards hold all 36 of the new collection.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let mut n = 0;
        let mut v2_everywhere = true;
        for c in &shards {
            n += held(c.clone()).await;
            let coll = c
                .clone()
                .get_collection(pb::GetCollectionRequest {
                    name: "flowers".into(),
                })
                .await
                .expect("get")
                .into_inner()
                .collection
                .expect("collection");
            v2_everywhere &= coll.model.as_ref().map(|m| m.version.as_str()) == Some("v2");
        }
        if n == 36 && v2_everywhere {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "after the rebuild the shards hold {n} of 36 (v2 everywhere: {v2_everywhere})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let found = hits_on_every_shard(shards.clone(), "once followed").await;
    assert_eq!(found, 36, "the shards together answer with every image");
}
