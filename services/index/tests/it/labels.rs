//! Relabelling stored images (issue 15, item 1): concurrent relabels,
//! upserts and deletes on one collection from two replicas on one
//! database; the database and both replicas' searches end with the last
//! acknowledged label of each image.

use std::collections::HashMap;

use cbir_api::v1 as pb;
use cbir_api::v1::index_service_client::IndexServiceClient;
use tonic::transport::Channel;

use crate::both_backends;
use crate::service::{create, record, unit, wait_for_collection, Server};

const DIMS: usize = 16;
const WRITERS: u64 = 6;
const ROUNDS: u64 = 8;
const IMAGES: u64 = 48;

async fn relabel(c: &mut IndexServiceClient<Channel>, id: u64, label: &str) {
    c.update_label(pb::UpdateLabelRequest {
        collection: "c".into(),
        id,
        label: label.into(),
    })
    .await
    .unwrap_or_else(|s| panic!("relabel of {id} to {label}: {s:?}"));
}

/// Writer `t` relabels its share of the images round after round; returns
/// the last label it set on each.
async fn writer(mut c: IndexServiceClient<Channel>, ids: Vec<u64>, t: u64) -> HashMap<u64, String> {
    let mut last = HashMap::new();
    for round in 0..ROUNDS {
        for (i, &id) in ids.iter().enumerate() {
            if i as u64 % WRITERS == t {
                let label = format!("w{t} r{round} é");
                relabel(&mut c, id, &label).await;
                last.insert(id, label);
            }
        }
    }
    last
}

/// Upserts and deletes other images of the collection meanwhile.
async fn churn(mut c: IndexServiceClient<Channel>) {
    for round in 0..ROUNDS {
        let recs: Vec<pb::ImageRecord> = (0..5)
            .map(|k| record(10_000 + round * 10 + k, (k % 3) as i32, DIMS))
            .collect();
        let out = c
            .upsert(pb::UpsertRequest {
                collection: "c".into(),
                records: recs,
                replace: false,
            })
            .await
            .unwrap_or_else(|s| panic!("upsert, round {round}: {s:?}"))
            .into_inner();
        c.delete(pb::DeleteRequest {
            collection: "c".into(),
            ids: vec![out.results[0].id, out.results[1].id],
        })
        .await
        .unwrap_or_else(|s| panic!("delete, round {round}: {s:?}"));
    }
}

/// The label each image of the seed set shows in an exact search for it.
async fn searched_labels(c: &mut IndexServiceClient<Channel>, ids: &[u64]) -> HashMap<u64, String> {
    let mut out = HashMap::new();
    for (seed, &id) in ids.iter().enumerate() {
        let hits = c
            .search(pb::IndexSearchRequest {
                collection: "c".into(),
                vector: unit(seed as u64, DIMS),
                predicted_class: (seed % 4) as i32,
                top_k: 1,
                mode: pb::SearchMode::Exact as i32,
                ..Default::default()
            })
            .await
            .expect("search")
            .into_inner()
            .hits;
        assert_eq!(hits[0].id, id, "an image is its own nearest neighbour");
        out.insert(id, hits[0].label.clone());
    }
    out
}

async fn relabels(url: &str) {
    let follow = |c: &mut cbir_index::Config| c.follow_ms = 100;
    let a = Server::start_with(url, follow).await;
    let b = Server::start_with(url, follow).await;
    let mut c = a.client.clone();
    create(&mut c, "c", DIMS as u32).await;
    let ids: Vec<u64> = c
        .upsert(pb::UpsertRequest {
            collection: "c".into(),
            records: (0..IMAGES)
                .map(|s| record(s, (s % 4) as i32, DIMS))
                .collect(),
            replace: false,
        })
        .await
        .expect("upsert")
        .into_inner()
        .results
        .iter()
        .map(|r| r.id)
        .collect();
    // B must know the collection before writing to it.
    wait_for_collection(&b.client, "c", 0).await;
    let mut tasks = Vec::new();
    for t in 0..WRITERS {
        let server = if t % 2 == 0 { &a } else { &b };
        let client = server.client.clone();
        tasks.push(tokio::spawn(writer(client, ids.clone(), t)));
    }
    let churn = tokio::spawn(churn(b.client.clone()));
    let mut expect = HashMap::new();
    for t in tasks {
        expect.extend(t.await.expect("writer"));
    }
    churn.await.expect("churn");
    assert_eq!(expect.len(), IMAGES as usize);

    let store = cbir_index::Store::connect(url, 2).await.expect("store");
    let coll = store.aliases().await.expect("aliases")["c"];
    let page = store.load_page(coll, 0, 1000).await.expect("page");
    let db: HashMap<u64, String> = page.into_iter().map(|i| (i.id, i.label)).collect();
    for (id, label) in &expect {
        assert_eq!(db.get(id), Some(label), "the database holds the last label");
    }
    // The replica that wrote last shows it at once; the other follows.
    for server in [&a, &b] {
        let mut c = server.client.clone();
        let mut got = HashMap::new();
        for _ in 0..100 {
            got = searched_labels(&mut c, &ids).await;
            if got == expect {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert_eq!(got, expect, "searches show the last labels");
    }
    refusals(&mut c, ids[0]).await;
    a.stop().await;
    b.stop().await;
}
both_backends!(concurrent_relabels_on_two_replicas, relabels);

/// Over-long and control-character labels, unknown ids and collections.
async fn refusals(c: &mut IndexServiceClient<Channel>, id: u64) {
    for (coll, id, label, code, says) in [
        (
            "c",
            id,
            "x".repeat(513),
            tonic::Code::InvalidArgument,
            "513 bytes",
        ),
        (
            "c",
            id,
            "a\nb".into(),
            tonic::Code::InvalidArgument,
            "control character",
        ),
        (
            "c",
            999_999,
            "ok".into(),
            tonic::Code::NotFound,
            "no image 999999",
        ),
        ("nope", id, "ok".into(), tonic::Code::NotFound, "nope"),
    ] {
        let e = c
            .update_label(pb::UpdateLabelRequest {
                collection: coll.into(),
                id,
                label: label.clone(),
            })
            .await
            .expect_err("refused");
        assert_eq!(e.code(), code, "{label:.20}: {e:?}");
        assert!(e.message().contains(says), "{e:?}");
    }
    let img = c
        .get_image(pb::GetImageRequest {
            collection: "c".into(),
            id,
            ..Default::default()
        })
        .await
        .expect("get")
        .into_inner()
        .image
        .expect("image");
    assert!(
        img.label.starts_with('w'),
        "a refused label changes nothing"
    );
}
