//! The storage layer on both backends.

use cbir_index::store::{decode_feature, encode_feature, NewImage, Store};
use sea_orm::{ConnectionTrait, DbBackend, Statement};

use crate::both_backends;

pub fn image(hash_seed: u32, class: i32, dims: usize) -> NewImage {
    let mut feature: Vec<f32> = (0..dims)
        .map(|i| ((i as u32 * 7 + hash_seed) % 13) as f32 + 0.5)
        .collect();
    let n: f32 = feature.iter().map(|x| x * x).sum::<f32>().sqrt();
    feature.iter_mut().for_each(|x| *x /= n);
    NewImage {
        content_hash: format!("{hash_seed:064x}"),
        predicted_class: class,
        file_name: format!("img{hash_seed}.jpg"),
        path: format!("/photos/img{hash_seed}.jpg"),
        label: format!("label{}", hash_seed % 3),
        feature,
        thumbnail: vec![0xFF, 0xD8, hash_seed as u8],
        source: vec![1, 2, 3, hash_seed as u8],
    }
}

#[test]
fn features_are_little_endian_blobs() {
    let v = vec![1.0f32, -2.5, 0.125];
    let b = encode_feature(&v);
    assert_eq!(&b[..4], &1.0f32.to_le_bytes());
    assert_eq!(b.len(), 12);
    assert_eq!(decode_feature(&b).expect("decode"), v);
    assert!(decode_feature(&b[..5]).is_err());
}

async fn roundtrip(url: &str) {
    let store = Store::connect(url, 4).await.expect("connect");
    // Migrations are idempotent: a second connect migrates nothing.
    let store2 = Store::connect(url, 2).await.expect("reconnect");
    let c = store
        .create_collection(
            "photos",
            "photos",
            "efficientnet-lite0",
            "imagenet",
            8,
            "test",
        )
        .await
        .expect("create");
    let err = store2
        .create_collection("photos", "photos", "m", "v", 8, "")
        .await
        .unwrap_err();
    assert!(
        matches!(err, cbir_index::Error::AlreadyExists(_)),
        "{err:?}"
    );

    let batch: Vec<NewImage> = (0..450).map(|i| image(i, (i % 5) as i32, 8)).collect();
    let out = store.upsert(c.id, &batch, false).await.expect("upsert");
    assert_eq!(out.len(), 450);
    assert!(out.iter().all(|o| o.created));
    let mut ids: Vec<u64> = out.iter().map(|o| o.id).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 450, "ids are distinct");
    assert_eq!(store.count(c.id).await.expect("count"), 450);

    // Same images again (one twice in the batch), asking to replace: one
    // entry each, same ids, the last metadata.
    let mut again = vec![image(3, 0, 8), image(3, 0, 8), image(10, 0, 8)];
    again[1].label = "relabelled".into();
    let out2 = store.upsert(c.id, &again, true).await.expect("re-upsert");
    assert!(out2.iter().all(|o| !o.created));
    assert_eq!(out2[0].id, out[3].id);
    assert_eq!(out2[1].id, out[3].id);
    assert_eq!(out2[2].id, out[10].id);
    assert_eq!(store.count(c.id).await.expect("count"), 450);
    let got = store
        .get_image(c.id, out[3].id, true)
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(got.image.label, "relabelled");
    assert_eq!(got.image.feature, image(3, 0, 8).feature);
    assert_eq!(got.thumbnail.as_deref(), Some(&[0xFF, 0xD8, 3][..]));
    assert_eq!(got.source.as_deref(), Some(&[1, 2, 3, 3][..]));

    // Paging loads everything exactly once, in id order.
    let mut seen = Vec::new();
    let mut after = 0;
    loop {
        let page = store.load_page(c.id, after, 100).await.expect("page");
        let Some(last) = page.last() else { break };
        after = last.id;
        seen.extend(page.iter().map(|p| p.id));
    }
    assert_eq!(seen, ids);

    let in_class = store.ids_in_class(c.id, 2).await.expect("class");
    assert_eq!(in_class.len(), 90);

    let gone = store
        .delete(c.id, &[out[0].id, out[1].id, 999_999_999])
        .await
        .expect("delete");
    assert_eq!(gone.len(), 2);
    assert_eq!(store.count(c.id).await.expect("count"), 448);
    assert!(store
        .get_image(c.id, out[0].id, true)
        .await
        .expect("get")
        .is_none());

    // A short list long enough to be read as parallel queries: every
    // stored id once, with its own vector; deleted and unknown ids left out.
    let mut asked: Vec<u64> = ids[..60].to_vec();
    asked.push(999_999_999);
    let mut got = store.features(c.id, &asked).await.expect("features");
    got.sort_by_key(|g| g.0);
    let kept: Vec<u64> = ids[..60]
        .iter()
        .copied()
        .filter(|id| *id != out[0].id && *id != out[1].id)
        .collect();
    assert_eq!(got.iter().map(|g| g.0).collect::<Vec<_>>(), kept);
    let by_id: std::collections::HashMap<u64, usize> =
        out.iter().enumerate().map(|(i, o)| (o.id, i)).collect();
    for (id, v) in &got {
        assert_eq!(v, &image(by_id[id] as u32, 0, 8).feature, "feature of {id}");
    }
    assert!(store.features(c.id, &[]).await.expect("nothing").is_empty());

    // Aliases switch atomically and report the previous target.
    let c2 = store
        .create_collection("", "photos.r1", "m", "v2", 8, "")
        .await
        .expect("physical");
    assert_eq!(store.aliases().await.expect("aliases")["photos"], c.id);
    let old = store.switch_alias("photos", c2.id).await.expect("switch");
    assert_eq!(old, Some(c.id));
    assert_eq!(store.aliases().await.expect("aliases")["photos"], c2.id);

    assert_eq!(store.clear(c.id).await.expect("clear"), 448);
    assert_eq!(store.count(c.id).await.expect("count"), 0);
    store.delete_collection(c.id).await.expect("drop");
    let names: Vec<String> = store
        .collections()
        .await
        .expect("list")
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(names, vec!["photos.r1".to_string()]);
}
both_backends!(store_roundtrip, roundtrip);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_reads_one_partition_for_one_class() {
    let db = crate::db::TestDb::mysql().await;
    let store = Store::connect(&db.url, 2).await.expect("connect");
    assert_eq!(store.backend(), DbBackend::MySql);
    let c = store
        .create_collection("p", "p", "m", "v", 8, "")
        .await
        .expect("create");
    let batch: Vec<NewImage> = (0..200).map(|i| image(i, (i % 20) as i32, 8)).collect();
    store.upsert(c.id, &batch, false).await.expect("upsert");
    let conn = store.connection();
    // The table really is partitioned by the class column.
    let parts = conn
        .query_all(Statement::from_string(
            DbBackend::MySql,
            "SELECT PARTITION_NAME, PARTITION_METHOD, PARTITION_EXPRESSION, TABLE_ROWS \
             FROM information_schema.PARTITIONS \
             WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'images'",
        ))
        .await
        .expect("partitions");
    assert_eq!(parts.len(), cbir_index_migration::MYSQL_PARTITIONS as usize);
    let method: String = parts[0].try_get("", "PARTITION_METHOD").expect("method");
    let expr: String = parts[0].try_get("", "PARTITION_EXPRESSION").expect("expr");
    assert_eq!(method, "HASH");
    assert!(expr.contains("predicted_class"), "{expr}");
    // A one-class query is pruned to that class's partition.
    let explain = conn
        .query_all(Statement::from_string(
            DbBackend::MySql,
            format!(
                "EXPLAIN PARTITIONS SELECT id, feature FROM images WHERE collection_id = {} AND predicted_class = 7",
                c.id
            ),
        ))
        .await
        .expect("explain");
    let partitions: String = explain[0]
        .try_get("", "partitions")
        .expect("partitions column");
    assert_eq!(
        partitions, "p7",
        "a one-class query reads only partition p7"
    );
    // Without the class it reads them all.
    let explain = conn
        .query_all(Statement::from_string(
            DbBackend::MySql,
            format!(
                "EXPLAIN PARTITIONS SELECT id FROM images WHERE collection_id = {}",
                c.id
            ),
        ))
        .await
        .expect("explain");
    let partitions: String = explain[0]
        .try_get("", "partitions")
        .expect("partitions column");
    assert_eq!(
        partitions.split(',').count(),
        cbir_index_migration::MYSQL_PARTITIONS as usize
    );
    db.drop_db().await;
}
