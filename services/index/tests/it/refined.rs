//! Refined ranking through the index service on both backends: the
//! default mode; an added image is found at once with its raw similarity;
//! a refresh of an unchanged collection changes no answer; searches during
//! a refresh (with writers adding and deleting) all answer in full.

use cbir_api::v1 as pb;
use cbir_api::v1::index_service_client::IndexServiceClient;
use pb::operation_progress::State;
use tonic::transport::Channel;

use crate::both_backends;
use crate::service::{create, record, search, unit, Server};

const DIMS: usize = 24;

/// Images in 20 look-alike families, 5 classes.
fn family_record(i: u64) -> pb::ImageRecord {
    let centre = unit(10_000 + i % 20, DIMS);
    let noise = unit(i, DIMS);
    let mut r = record(i, (i % 5) as i32, DIMS);
    r.feature = centre
        .iter()
        .zip(&noise)
        .map(|(c, n)| c + 0.35 * n)
        .collect();
    r
}

async fn upsert(c: &mut IndexServiceClient<Channel>, records: Vec<pb::ImageRecord>) -> Vec<u64> {
    c.upsert(pb::UpsertRequest {
        collection: "r".into(),
        records,
        replace: false,
    })
    .await
    .expect("upsert")
    .into_inner()
    .results
    .iter()
    .map(|r| r.id)
    .collect()
}

async fn refresh(c: &mut IndexServiceClient<Channel>) -> pb::OperationProgress {
    let id = c
        .refine_collection(pb::RefineCollectionRequest {
            collection: "r".into(),
        })
        .await
        .expect("refine")
        .into_inner()
        .operation_id;
    let mut s = c
        .watch_operation(pb::WatchOperationRequest { operation_id: id })
        .await
        .expect("watch")
        .into_inner();
    let mut last = None;
    while let Some(p) = s.message().await.expect("progress") {
        assert!(p.done <= p.total);
        last = Some(p);
    }
    let last = last.expect("some progress");
    assert_eq!(last.state, State::Succeeded as i32, "{}", last.message);
    last
}

async fn stats(c: &mut IndexServiceClient<Channel>) -> pb::Refinement {
    c.stats(pb::StatsRequest {
        collection: "r".into(),
    })
    .await
    .expect("stats")
    .into_inner()
    .refinement
    .expect("refinement")
}

/// (id, score bits, distance bits) of a default-mode search.
async fn answer(c: &mut IndexServiceClient<Channel>, v: Vec<f32>) -> Vec<(u64, u32, u32)> {
    c.search(search("r", v, 15, pb::SearchMode::Unspecified))
        .await
        .expect("search")
        .into_inner()
        .hits
        .iter()
        .map(|h| (h.id, h.score.to_bits(), h.distance.to_bits()))
        .collect()
}

async fn refined(url: &str) {
    let server = Server::start(url).await;
    let mut c = server.client.clone();
    create(&mut c, "r", DIMS as u32).await;
    let ids = upsert(&mut c, (0..400).map(family_record).collect()).await;
    // The upkeep may have begun its own refresh of the 400 new images:
    // the request joins it, and every vector is done when it ends.
    let r = refresh(&mut c).await;
    assert_eq!(r.done, r.total);
    assert!(r.total >= 400, "{} of 400 refreshed", r.total);
    let s = stats(&mut c).await;
    assert_eq!(s.stale, 0);
    // The augmented copy: f32 vector, int8 codes, scale and one float more.
    assert_eq!(s.bytes, 400 * (DIMS as u64 * 5 + 8));

    // The default mode is refined; hits show the raw similarity.
    let probe = family_record(7).feature;
    let res = c
        .search(search("r", probe.clone(), 10, pb::SearchMode::Unspecified))
        .await
        .expect("search")
        .into_inner();
    assert_eq!(res.mode, pb::SearchMode::Refined as i32);
    assert_eq!(res.ranked_by, pb::RankedBy::RefinedScore as i32);
    assert_eq!(res.hits.len(), 10);
    assert_eq!(res.hits[0].id, ids[7]);
    assert!(res.hits[0].distance < 1e-3 && res.hits[0].similarity > 0.999);
    for h in &res.hits {
        assert!((h.similarity - 1.0 / (1.0 + h.distance)).abs() < 1e-6);
    }
    let exact = c
        .search(search("r", probe, 10, pb::SearchMode::Exact))
        .await
        .expect("search")
        .into_inner();
    assert_eq!(exact.ranked_by, pb::RankedBy::Distance as i32);
    assert!(exact.hits.iter().all(|h| h.score == h.similarity));

    // An added image is found at once, with its augmented vector computed
    // at insert time; the neighbours it changes wait for a refresh.
    let mut added = family_record(5_003);
    added.feature = unit(777, DIMS);
    let new_id = upsert(&mut c, vec![added.clone()]).await[0];
    let hit = &c
        .search(search(
            "r",
            added.feature.clone(),
            5,
            pb::SearchMode::Refined,
        ))
        .await
        .expect("search")
        .into_inner()
        .hits[0];
    assert_eq!(hit.id, new_id);
    assert!(hit.similarity > 0.999, "{}", hit.similarity);

    // A refresh of a collection that did not change changes nothing.
    refresh(&mut c).await;
    let queries: Vec<Vec<f32>> = (0..12).map(|i| unit(900 + i, DIMS)).collect();
    let mut before = Vec::new();
    for q in &queries {
        before.push(answer(&mut c, q.clone()).await);
    }
    let r = refresh(&mut c).await;
    assert_eq!(r.done, 401);
    for (q, b) in queries.iter().zip(&before) {
        assert_eq!(&answer(&mut c, q.clone()).await, b);
    }

    // Searches during a refresh, while writers add and delete: every one
    // answers in full, the query's own image first.
    let searcher = {
        let mut c = c.clone();
        tokio::spawn(async move {
            for round in 0..60u64 {
                let i = (round * 13) % 400;
                let res = c
                    .search(search(
                        "r",
                        family_record(i).feature,
                        10,
                        pb::SearchMode::Refined,
                    ))
                    .await
                    .expect("search during a refresh")
                    .into_inner();
                assert_eq!(res.hits.len(), 10);
                assert!(res.hits[0].similarity > 0.999);
            }
        })
    };
    let writer = {
        let mut c = c.clone();
        tokio::spawn(async move {
            for b in 0..6u64 {
                let recs: Vec<pb::ImageRecord> =
                    (0..20).map(|i| family_record(1_000 + b * 20 + i)).collect();
                let got = upsert(&mut c, recs).await;
                c.delete(pb::DeleteRequest {
                    collection: "r".into(),
                    ids: got[..5].to_vec(),
                })
                .await
                .expect("delete");
            }
        })
    };
    refresh(&mut c).await;
    searcher.await.expect("searcher");
    writer.await.expect("writer");
    // 120 new images and 30 deletions changed far over 5% of the
    // collection: the upkeep refreshes by itself until under that share.
    let mut settled = None;
    let mut last = None;
    for _ in 0..400 {
        let s = stats(&mut c).await;
        if s.operation_id.is_empty() && s.stale * 20 < 491 {
            settled = Some(s.stale);
            break;
        }
        last = Some(s);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(
        settled.is_some(),
        "stale augmented vectors are refreshed on their own; last: {last:?}"
    );
    server.stop().await;
}
both_backends!(refined_ranking_is_kept_up_to_date, refined);
