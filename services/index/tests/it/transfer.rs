//! Export, import and backup on both backends: an export is one snapshot
//! while writers go on, an import is whole or nothing (also when its client
//! goes away midway), and the SQLite backup is a database file.

use std::time::Duration;

use cbir_api::v1 as pb;
use cbir_api::v1::index_service_client::IndexServiceClient;
use sea_orm::{ConnectionTrait, Database};
use tonic::transport::Channel;
use tonic::Code;

use crate::both_backends;
use crate::service::{create, record, Server};

async fn upsert(c: &mut IndexServiceClient<Channel>, name: &str, seeds: std::ops::Range<u64>) {
    let records = seeds
        .map(|i| {
            let mut r = record(i, (i % 5) as i32, 32);
            r.path = format!("set/{i}.jpg");
            r
        })
        .collect();
    c.upsert(pb::UpsertRequest {
        collection: name.into(),
        records,
        replace: false,
    })
    .await
    .expect("upsert");
}

async fn import(
    c: &mut IndexServiceClient<Channel>,
    chunks: Vec<pb::ExportChunk>,
) -> Result<pb::ImportCollectionResponse, tonic::Status> {
    c.import_collection(futures::stream::iter(chunks))
        .await
        .map(tonic::Response::into_inner)
}

fn header(chunks: &[pb::ExportChunk], target: &str, count: u64) -> pb::ExportChunk {
    let mut h = chunks[0].clone();
    h.target_name = target.into();
    if let Some(pb::export_chunk::Chunk::Header(x)) = &mut h.chunk {
        x.count = count;
    }
    h
}

async fn physical_collections(url: &str) -> i64 {
    let db = Database::connect(url).await.expect("db");
    let row = db
        .query_one(sea_orm::Statement::from_string(
            db.get_database_backend(),
            "SELECT COUNT(*) AS n FROM collections",
        ))
        .await
        .expect("count")
        .expect("row");
    row.try_get::<i64>("", "n").expect("n")
}

async fn export_import_backup(url: &str) {
    let server = Server::start(url).await;
    let mut c = server.client.clone();
    create(&mut c, "src", 32).await;
    upsert(&mut c, "src", 0..600).await;

    // Writers go on during the export: it holds the 600 of its snapshot.
    let mut s = c
        .export_collection(pb::ExportCollectionRequest {
            collection: "src".into(),
            batch_size: 100,
        })
        .await
        .expect("export")
        .into_inner();
    let first = s.message().await.expect("header").expect("header");
    upsert(&mut c, "src", 600..650).await;
    let mut chunks = vec![first];
    while let Some(chunk) = s.message().await.expect("chunk") {
        chunks.push(chunk);
    }
    let Some(pb::export_chunk::Chunk::Header(h)) = &chunks[0].chunk else {
        panic!("header first");
    };
    assert_eq!((h.version, h.count), (1, 600));
    let mut ids = Vec::new();
    for ch in &chunks[1..] {
        let Some(pb::export_chunk::Chunk::Images(b)) = &ch.chunk else {
            panic!("images after the header");
        };
        assert!(b.records.len() <= 100);
        for r in &b.records {
            assert!(r.created_at_ms > 0 && !r.thumbnail.is_empty() && r.feature.len() == 32);
            ids.push(r.id);
        }
    }
    assert_eq!(ids.len(), 600);
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "id order");

    // A whole import answers as the source does.
    let mut whole = chunks.clone();
    whole[0].target_name = "dst".into();
    let r = import(&mut c, whole).await.expect("import");
    assert_eq!(r.imported, 600);
    assert_eq!(r.collection.expect("collection").count, 600);
    let again = import(&mut c, chunks.clone()).await.unwrap_err();
    assert_eq!(again.code(), Code::AlreadyExists, "{again:?}");
    for seed in [3u64, 42, 333] {
        let q = record(seed, 0, 32).feature;
        let hits = |name: &str| pb::IndexSearchRequest {
            collection: name.into(),
            vector: q.clone(),
            predicted_class: -1,
            top_k: 10,
            mode: pb::SearchMode::Exact as i32,
            ..Default::default()
        };
        let a = c
            .search(hits("src"))
            .await
            .expect("search")
            .into_inner()
            .hits;
        let b = c
            .search(hits("dst"))
            .await
            .expect("search")
            .into_inner()
            .hits;
        let key = |h: &pb::SearchHit| (h.content_hash.clone(), h.path.clone(), h.label.clone());
        assert_eq!(a[0].content_hash, format!("{seed:064x}"));
        // src gained 50 images after the export; they are not in dst.
        let exported =
            |h: &&pb::SearchHit| u64::from_str_radix(&h.content_hash, 16).is_ok_and(|s| s < 600);
        let a: Vec<_> = a.iter().filter(exported).map(key).collect();
        let b: Vec<_> = b.iter().map(key).take(a.len()).collect();
        assert_eq!(a, b);
    }

    // Refused imports leave nothing: short, doubled, second header.
    let n = physical_collections(url).await;
    let short = vec![header(&chunks, "short", 600), chunks[1].clone()];
    let e = import(&mut c, short).await.unwrap_err();
    assert!(
        e.code() == Code::InvalidArgument && e.message().contains("truncated"),
        "{e:?}"
    );
    let mut doubled = vec![header(&chunks, "doubled", 200), chunks[1].clone()];
    doubled.push(chunks[1].clone());
    let e = import(&mut c, doubled).await.unwrap_err();
    assert!(e.message().contains("appears twice"), "{e:?}");
    let twice = vec![header(&chunks, "twice", 600), chunks[0].clone()];
    let e = import(&mut c, twice).await.unwrap_err();
    assert!(e.message().contains("second header"), "{e:?}");

    // A client that goes away midway: the half-made collection is dropped.
    let (tx, rx) = futures::channel::mpsc::unbounded();
    tx.unbounded_send(header(&chunks, "gone", 600))
        .expect("send");
    tx.unbounded_send(chunks[1].clone()).expect("send");
    let mut c2 = c.clone();
    let call = tokio::spawn(async move { c2.import_collection(rx).await });
    let mut grew = false;
    for _ in 0..200 {
        if physical_collections(url).await > n {
            grew = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(grew, "the import never started");
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Cancelled, not ended: the stream breaks rather than looking short.
    call.abort();
    let mut left = -1;
    for _ in 0..200 {
        left = physical_collections(url).await;
        if left == n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(left, n, "an abandoned import was left behind");
    let names: Vec<String> = c
        .list_collections(pb::ListCollectionsRequest {})
        .await
        .expect("list")
        .into_inner()
        .collections
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(names, ["dst", "src"]);
    drop(tx);

    // The backup: a SQLite file, or a pointer to mariadb-dump.
    match c.backup_database(pb::BackupDatabaseRequest {}).await {
        Ok(s) => {
            assert!(url.starts_with("sqlite"));
            let mut s = s.into_inner();
            let mut bytes = Vec::new();
            let mut total = 0;
            while let Some(ch) = s.message().await.expect("chunk") {
                total = ch.total_bytes;
                bytes.extend(ch.data);
            }
            assert_eq!(bytes.len() as u64, total);
            assert!(bytes.starts_with(b"SQLite format 3\0"));
            let dir = std::path::Path::new(url.trim_start_matches("sqlite://"))
                .parent()
                .expect("dir")
                .to_path_buf();
            let tmp: Vec<_> = std::fs::read_dir(dir)
                .expect("dir")
                .filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().contains(".backup-"))
                .collect();
            assert!(tmp.is_empty(), "{tmp:?}");
        }
        Err(e) => {
            assert!(url.starts_with("mysql"), "{e:?}");
            assert_eq!(e.code(), Code::FailedPrecondition);
            assert!(e.message().contains("mariadb-dump"), "{e:?}");
        }
    }
    server.stop().await;
}

both_backends!(export_import_and_backup, export_import_backup);
