//! The same image uploaded again (issue 13, item 5): it stays one entry
//! with its id, and keeps its stored path, file name and label unless the
//! request asks to replace them.

use cbir_api::v1 as pb;

use crate::both_backends;
use crate::service::{create, record, Server};

async fn stored_meta(
    c: &mut cbir_api::v1::index_service_client::IndexServiceClient<tonic::transport::Channel>,
    id: u64,
) -> (String, String, String) {
    let img = c
        .get_image(pb::GetImageRequest {
            collection: "photos".into(),
            id,
            ..Default::default()
        })
        .await
        .expect("get image")
        .into_inner()
        .image
        .expect("image");
    (img.file_name, img.path, img.label)
}

async fn hit_meta(
    c: &mut cbir_api::v1::index_service_client::IndexServiceClient<tonic::transport::Channel>,
    feature: Vec<f32>,
) -> (u64, String, String, String) {
    let hits = c
        .search(pb::IndexSearchRequest {
            collection: "photos".into(),
            vector: feature,
            predicted_class: -1,
            top_k: 1,
            mode: pb::SearchMode::Exact as i32,
            ..Default::default()
        })
        .await
        .expect("search")
        .into_inner()
        .hits;
    let h = &hits[0];
    (h.id, h.file_name.clone(), h.path.clone(), h.label.clone())
}

async fn reupload(url: &str) {
    let server = Server::start(url).await;
    let mut c = server.client.clone();
    create(&mut c, "photos", 16).await;
    let mut first = record(7, 1, 16);
    first.path = "/alice/holiday/beach.jpg".into();
    first.file_name = "beach.jpg".into();
    first.label = "beach".into();
    let id = c
        .upsert(pb::UpsertRequest {
            collection: "photos".into(),
            records: vec![first.clone()],
            replace: false,
        })
        .await
        .expect("upsert")
        .into_inner()
        .results[0]
        .id;

    // Another user sends the same bytes under other names.
    let mut again = first.clone();
    again.path = "/bob/junk/x.jpg".into();
    again.file_name = "x.jpg".into();
    again.label = "junk".into();
    let r = c
        .upsert(pb::UpsertRequest {
            collection: "photos".into(),
            records: vec![again.clone()],
            replace: false,
        })
        .await
        .expect("upsert again")
        .into_inner()
        .results;
    assert_eq!((r[0].id, r[0].created), (id, false));
    let kept = (
        "beach.jpg".to_string(),
        "/alice/holiday/beach.jpg".to_string(),
        "beach".to_string(),
    );
    assert_eq!(stored_meta(&mut c, id).await, kept, "the database kept it");
    let hit = hit_meta(&mut c, first.feature.clone()).await;
    assert_eq!((hit.1, hit.2, hit.3), kept, "searches show what is stored");
    // The stored entry survives a restart unchanged too.
    server.stop().await;
    let server = Server::start(url).await;
    let mut c = server.client.clone();
    assert_eq!(stored_meta(&mut c, id).await, kept);

    // Asked explicitly, the entry takes the new metadata.
    let r = c
        .upsert(pb::UpsertRequest {
            collection: "photos".into(),
            records: vec![again],
            replace: true,
        })
        .await
        .expect("replace")
        .into_inner()
        .results;
    assert_eq!((r[0].id, r[0].created), (id, false));
    let replaced = (
        "x.jpg".to_string(),
        "/bob/junk/x.jpg".to_string(),
        "junk".to_string(),
    );
    assert_eq!(stored_meta(&mut c, id).await, replaced);
    let hit = hit_meta(&mut c, first.feature.clone()).await;
    assert_eq!(
        (hit.0, hit.1, hit.2, hit.3),
        (id, replaced.0, replaced.1, replaced.2)
    );
    let count = c
        .stats(pb::StatsRequest {
            collection: "photos".into(),
        })
        .await
        .expect("stats")
        .into_inner()
        .count;
    assert_eq!(count, 1);
    server.stop().await;
}
both_backends!(reupload_keeps_metadata_unless_replace, reupload);
