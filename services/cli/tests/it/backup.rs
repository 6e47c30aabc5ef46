//! Back up and restore (issue 15, item 6) through the real services: a
//! collection of real images exported by the CLI from a system on SQLite
//! and imported into a system whose index runs on MariaDB answers 100
//! searches with the same top 10 (by content hash) and distances, and the
//! way back over REST does too; exports of unknown models, truncated and
//! corrupt files are refused and leave nothing behind; roles hold; and the
//! online SQLite backup taken while writers upload opens, passes
//! `PRAGMA integrity_check` and holds every image acknowledged before it.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use cbir_api::export_file::{encode, Decoder, MAGIC};
use cbir_api::v1 as pb;
use cbir_api::v1::search_service_client::SearchServiceClient;
use cbir_gateway::auth::{hash_key, ApiKey, Role};
use cbir_gateway::http::openapi::{check_answer, document};
use reqwest::StatusCode;
use serde_json::Value;
use tonic::transport::Channel;

use crate::concurrency::MariaDb;
use crate::system::{flowers_subset, shared_data, System};

const CLASSES: [&str; 5] = ["daisy", "dandelion", "rose", "sunflower", "tulip"];

fn keys(c: &mut cbir_gateway::Config) {
    let key = |name: &str, role| ApiKey {
        name: name.into(),
        sha256: hash_key(&format!("secret-{name}")),
        role,
    };
    c.auth.keys = vec![
        key("reader", Role::Search),
        key("indexer", Role::Index),
        key("root", Role::Admin),
    ];
}

fn cbir(sys: &System, key: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cbir"))
        .args(args)
        .env("CBIR_GATEWAY_URL", sys.url())
        .env("CBIR_API_KEY", format!("secret-{key}"))
        .output()
        .expect("cbir runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// The chunks of an export file.
fn chunks_of(bytes: &[u8]) -> Vec<pb::ExportChunk> {
    let mut d = Decoder::new(64 << 20);
    d.push(bytes);
    let mut out = Vec::new();
    while let Some(c) = d.next_chunk().expect("a valid export") {
        out.push(c);
    }
    d.finish().expect("a whole export");
    out
}

fn file_of(chunks: &[pb::ExportChunk]) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    for c in chunks {
        out.extend(encode(c));
    }
    out
}

/// The header and the records (by content hash) of an export.
fn records(chunks: &[pb::ExportChunk]) -> (pb::ExportHeader, HashMap<String, pb::ImageRecord>) {
    let Some(pb::export_chunk::Chunk::Header(h)) = chunks[0].chunk.clone() else {
        panic!("no header first");
    };
    let mut out = HashMap::new();
    for c in &chunks[1..] {
        let Some(pb::export_chunk::Chunk::Images(b)) = &c.chunk else {
            panic!("a second header");
        };
        for r in &b.records {
            assert!(
                out.insert(r.content_hash.clone(), r.clone()).is_none(),
                "an image twice"
            );
        }
    }
    (h, out)
}

async fn grpc(sys: &System) -> SearchServiceClient<Channel> {
    SearchServiceClient::connect(sys.url())
        .await
        .expect("connect")
        .max_decoding_message_size(256 << 20)
}

fn keyed<T>(msg: T, key: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("x-api-key", format!("secret-{key}").parse().expect("ascii"));
    r
}

/// A collection's export over the public gRPC API.
async fn export_grpc(sys: &System, name: &str) -> Vec<pb::ExportChunk> {
    let mut c = grpc(sys).await;
    let mut s = c
        .export_collection(keyed(
            pb::ExportCollectionRequest {
                collection: name.into(),
                batch_size: 0,
            },
            "root",
        ))
        .await
        .expect("export")
        .into_inner();
    let mut out = Vec::new();
    while let Some(chunk) = s.message().await.expect("chunk") {
        out.push(chunk);
    }
    out
}

/// An exact top 10 of `collection` as (content hash, distance).
async fn top10(
    c: &mut SearchServiceClient<Channel>,
    collection: &str,
    query: pb::search_request::Query,
    hashes: &HashMap<u64, String>,
) -> Vec<(String, f32)> {
    let r = c
        .search(keyed(
            pb::SearchRequest {
                query: Some(query),
                collection: collection.into(),
                top_k: 10,
                mode: pb::SearchMode::Exact as i32,
                ..Default::default()
            },
            "reader",
        ))
        .await
        .expect("search")
        .into_inner();
    assert_eq!(r.results.len(), 10);
    r.results
        .iter()
        .map(|h| (hashes[&h.id].clone(), h.distance))
        .collect()
}

fn same_top10(a: &[(String, f32)], b: &[(String, f32)], what: &str) {
    let ha: HashSet<&String> = a.iter().map(|(h, _)| h).collect();
    let hb: HashSet<&String> = b.iter().map(|(h, _)| h).collect();
    assert_eq!(ha, hb, "{what}: other images");
    let db: HashMap<&String, f32> = b.iter().map(|(h, d)| (h, *d)).collect();
    for (h, d) in a {
        assert!(
            (d - db[h]).abs() <= 1e-6,
            "{what}: {h} at {d} and {}",
            db[h]
        );
    }
}

async fn rest(
    sys: &System,
    method: reqwest::Method,
    template: &str,
    path: &str,
    key: &str,
    body: Option<Vec<u8>>,
) -> (StatusCode, Vec<u8>) {
    let mut req = reqwest::Client::new()
        .request(method.clone(), format!("{}{path}", sys.url()))
        .header("x-api-key", format!("secret-{key}"));
    if let Some(b) = body {
        req = req
            .header("content-type", "application/octet-stream")
            .body(b);
    }
    let r = req.send().await.expect("answer");
    let status = r.status();
    let bytes = r.bytes().await.expect("body").to_vec();
    if let Ok(v) = serde_json::from_slice::<Value>(&bytes) {
        if let Err(e) = check_answer(&document(), method.as_str(), template, status.as_u16(), &v) {
            panic!("{method} {path} ({status}) answered {v}, against openapi.json: {e:#?}");
        }
    }
    (status, bytes)
}

fn message(bytes: &[u8]) -> String {
    let v: Value = serde_json::from_slice(bytes).expect("a JSON error");
    v["error"]["message"].as_str().expect("message").to_string()
}

/// Query files of flowers5 that are not in the collection (after the
/// first `skip` of each class).
fn unseen_queries(skip: usize, per_class: usize) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for class in CLASSES {
        let mut names: Vec<PathBuf> = std::fs::read_dir(shared_data().join("flowers5").join(class))
            .expect("class dir")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        names.sort();
        out.extend(names.into_iter().skip(skip).take(per_class));
    }
    out
}

fn rate(stdout: &str) -> String {
    stdout
        .split(['(', ')'])
        .find(|s| s.ends_with("images/s"))
        .unwrap_or("?")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn export_from_sqlite_import_into_mariadb_gives_the_same_searches() {
    let a = System::start(keys).await;
    let set = a.dir.path().join("set");
    let files = flowers_subset(&set, &CLASSES, 30);
    assert_eq!(files.len(), 150);
    let set_arg = set.to_string_lossy().to_string();
    let (ok, out, err) = cbir(&a, "indexer", &["index", "add", &set_arg, "-c", "flowers"]);
    assert!(ok, "{out}{err}");

    // Export with the CLI: admin only.
    let file = a.dir.path().join("flowers.cbir");
    let file_arg = file.to_string_lossy().to_string();
    let (ok, _, err) = cbir(
        &a,
        "reader",
        &["collection", "export", "flowers", &file_arg],
    );
    assert!(!ok && err.contains("PermissionDenied"), "{err}");
    assert!(!file.exists());
    let started = Instant::now();
    let (ok, out, err) = cbir(&a, "root", &["collection", "export", "flowers", &file_arg]);
    let export_s = started.elapsed().as_secs_f64();
    assert!(ok, "{out}{err}");
    assert!(out.contains("exported 150 images of flowers"), "{out}");
    let export_rate = rate(&out);
    let bytes = std::fs::read(&file).expect("export file");
    let exported = chunks_of(&bytes);
    let (header, from_a) = records(&exported);
    assert_eq!(header.count, 150);
    let model = header
        .collection
        .clone()
        .and_then(|c| c.model)
        .expect("model");
    assert_eq!(model.name, "efficientnet-lite0");
    for r in from_a.values() {
        assert!(CLASSES.contains(&r.label.as_str()), "{r:?}");
        assert!(!r.thumbnail.is_empty() && r.created_at_ms > 0);
    }

    // Import into a system on MariaDB with the CLI.
    let db = MariaDb::create().await;
    let b = System::start_on_index_database(db.url.clone(), keys).await;
    let started = Instant::now();
    let (ok, out, err) = cbir(&b, "root", &["collection", "import", &file_arg]);
    let import_s = started.elapsed().as_secs_f64();
    assert!(ok, "{out}{err}");
    assert!(out.contains("imported 150 images into flowers"), "{out}");
    println!(
        "BACKUP 150 images, {} bytes: CLI export from SQLite {export_s:.2} s ({}), CLI import into MariaDB {import_s:.2} s ({})",
        bytes.len(),
        export_rate,
        rate(&out)
    );
    let (ok, _, err) = cbir(&b, "root", &["collection", "import", &file_arg]);
    assert!(!ok && err.contains("exists already"), "{err}");

    // Every record came across whole: labels, paths, times, renditions.
    let (_, from_b) = records(&export_grpc(&b, "flowers").await);
    assert_eq!(from_b.len(), 150);
    for (hash, ra) in &from_a {
        let rb = &from_b[hash];
        assert_eq!(
            (
                &ra.label,
                &ra.path,
                &ra.file_name,
                ra.created_at_ms,
                ra.predicted_class
            ),
            (
                &rb.label,
                &rb.path,
                &rb.file_name,
                rb.created_at_ms,
                rb.predicted_class
            )
        );
        assert_eq!(ra.thumbnail, rb.thumbnail);
        assert_eq!(ra.source_image, rb.source_image);
        let d = ra
            .feature
            .iter()
            .zip(&rb.feature)
            .map(|(x, y)| (x - y).abs());
        assert!(d.fold(0f32, f32::max) <= 1e-6);
    }
    let ids_a: HashMap<u64, String> = from_a.iter().map(|(h, r)| (r.id, h.clone())).collect();
    let ids_b: HashMap<u64, String> = from_b.iter().map(|(h, r)| (r.id, h.clone())).collect();

    // 100 searches: 60 by stored image, 40 by image files not stored.
    let (mut ca, mut cb) = (grpc(&a).await, grpc(&b).await);
    let mut stored: Vec<&String> = from_a.keys().collect();
    stored.sort();
    for hash in stored.into_iter().take(60) {
        let q = |id| {
            pb::search_request::Query::Stored(pb::StoredImageQuery {
                id,
                ..Default::default()
            })
        };
        let ta = top10(&mut ca, "flowers", q(from_a[hash].id), &ids_a).await;
        let tb = top10(&mut cb, "flowers", q(from_b[hash].id), &ids_b).await;
        same_top10(&ta, &tb, &format!("stored {hash}"));
    }
    let queries = unseen_queries(30, 8);
    assert_eq!(queries.len(), 40);
    for f in &queries {
        let q = pb::search_request::Query::Image(std::fs::read(f).expect("query"));
        let ta = top10(&mut ca, "flowers", q.clone(), &ids_a).await;
        let tb = top10(&mut cb, "flowers", q, &ids_b).await;
        same_top10(&ta, &tb, &f.display().to_string());
    }

    // The way back over REST: MariaDB to SQLite, under another name.
    let ex = "/api/collections/{name}/export";
    let im = "/api/collections/{name}/import";
    let get = reqwest::Method::GET;
    let post = reqwest::Method::POST;
    let (status, _) = rest(
        &b,
        get.clone(),
        ex,
        "/api/collections/flowers/export",
        "reader",
        None,
    )
    .await;
    assert_eq!(status, 403);
    let (status, back) = rest(
        &b,
        get.clone(),
        ex,
        "/api/collections/flowers/export",
        "root",
        None,
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = rest(
        &a,
        post.clone(),
        im,
        "/api/collections/back/import",
        "indexer",
        Some(back.clone()),
    )
    .await;
    assert_eq!(status, 403);
    let (status, v) = rest(
        &a,
        post.clone(),
        im,
        "/api/collections/back/import",
        "root",
        Some(back),
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&v));
    let v: Value = serde_json::from_slice(&v).expect("json");
    assert_eq!(
        (v["imported"].as_u64(), v["collection"]["name"].as_str()),
        (Some(150), Some("back"))
    );
    let (_, back_a) = records(&export_grpc(&a, "back").await);
    let ids_back: HashMap<u64, String> = back_a.iter().map(|(h, r)| (r.id, h.clone())).collect();
    for f in queries.iter().step_by(4) {
        let q = pb::search_request::Query::Image(std::fs::read(f).expect("query"));
        let t1 = top10(&mut ca, "flowers", q.clone(), &ids_a).await;
        let t2 = top10(&mut ca, "back", q, &ids_back).await;
        same_top10(&t1, &t2, "round trip");
    }

    refusals(&b, &exported).await;
    // Two imports of one name at once: one wins, the other is refused and
    // leaves nothing.
    let twin = |_| {
        rest(
            &b,
            reqwest::Method::POST,
            im,
            "/api/collections/twin/import",
            "root",
            Some(bytes.clone()),
        )
    };
    let (r1, r2) = tokio::join!(twin(1), twin(2));
    let mut got = [r1.0.as_u16(), r2.0.as_u16()];
    got.sort_unstable();
    assert_eq!(
        got,
        [200, 409],
        "{} / {}",
        String::from_utf8_lossy(&r1.1),
        String::from_utf8_lossy(&r2.1)
    );
    let (status, v) = rest(&b, get, "/api/backup", "/api/backup", "root", None).await;
    assert_eq!(status, 409);
    assert!(message(&v).contains("mariadb-dump"), "{}", message(&v));

    // Nothing half made is left in MariaDB: flowers and twin, 150 images each.
    {
        use sea_orm::ConnectionTrait;
        let conn = sea_orm::Database::connect(db.url.clone())
            .await
            .expect("db");
        for (sql, want) in [
            ("SELECT COUNT(*) AS n FROM collections", 2),
            ("SELECT COUNT(*) AS n FROM images", 300),
            ("SELECT COUNT(*) AS n FROM image_blobs", 300),
        ] {
            let row = conn
                .query_one(sea_orm::Statement::from_string(
                    sea_orm::DbBackend::MySql,
                    sql,
                ))
                .await
                .expect("query")
                .expect("row");
            assert_eq!(row.try_get::<i64>("", "n").expect("n"), want, "{sql}");
        }
    }
    a.shutdown().await;
    b.shutdown().await;
    db.drop_db().await;
}

/// Exports that must be refused, each leaving no collection behind.
async fn refusals(b: &System, exported: &[pb::ExportChunk]) {
    let dir = b.dir.path();
    let write = |name: &str, bytes: &[u8]| {
        let p = dir.join(name);
        std::fs::write(&p, bytes).expect("write");
        p.to_string_lossy().to_string()
    };
    let whole = file_of(exported);
    let mut unknown = exported.to_vec();
    if let Some(pb::export_chunk::Chunk::Header(h)) = &mut unknown[0].chunk {
        h.collection.as_mut().expect("collection").model = Some(pb::ModelRef {
            name: "never-trained".into(),
            version: "7".into(),
        });
    }
    let unknown = file_of(&unknown);
    let header_only = file_of(&exported[..1]);
    let mut foreign = whole.clone();
    foreign[..8].copy_from_slice(b"PK\x03\x04zip!");
    let cut = whole[..whole.len() * 2 / 3].to_vec();
    let cases: [(&str, &[u8], &str, u16); 4] = [
        ("unknown", &unknown, "not in the model registry", 409),
        ("header_only", &header_only, "truncated", 400),
        ("foreign", &foreign, "not a cbir export file", 400),
        ("cut", &cut, "truncated", 400),
    ];
    let im = "/api/collections/{name}/import";
    for (name, bytes, why, status) in cases {
        let path = write(name, bytes);
        let (ok, out, err) = cbir(b, "root", &["collection", "import", &path, "--name", name]);
        assert!(!ok && err.contains(why), "{name}: {out}{err}");
        let (got, v) = rest(
            b,
            reqwest::Method::POST,
            im,
            &format!("/api/collections/{name}/import"),
            "root",
            Some(bytes.to_vec()),
        )
        .await;
        assert_eq!(
            got.as_u16(),
            status,
            "{name}: {}",
            String::from_utf8_lossy(&v)
        );
        assert!(message(&v).contains(why), "{name}: {}", message(&v));
        let (got, _) = rest(
            b,
            reqwest::Method::GET,
            "/api/collections/{name}",
            &format!("/api/collections/{name}"),
            "root",
            None,
        )
        .await;
        assert_eq!(got, 404, "{name} was left behind");
    }
}

/// Uploads `files` one at a time until `stop`; each id once acknowledged.
async fn writer(
    sys_url: String,
    files: Vec<PathBuf>,
    acked: Arc<std::sync::Mutex<Vec<u64>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    let mut c = SearchServiceClient::connect(sys_url)
        .await
        .expect("connect");
    for f in files {
        if stop.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        let label = f.parent().and_then(Path::file_name).expect("class");
        let r = c
            .add_images(keyed(
                pb::AddImagesRequest {
                    collection: "live".into(),
                    images: vec![pb::NewImage {
                        file_name: f.file_name().expect("name").to_string_lossy().into(),
                        path: f.to_string_lossy().into(),
                        label: label.to_string_lossy().into(),
                        data: std::fs::read(&f).expect("read"),
                    }],
                    create_collection: true,
                    replace: false,
                },
                "indexer",
            ))
            .await
            .expect("add")
            .into_inner();
        assert_eq!(r.failed, 0, "{r:?}");
        acked.lock().expect("lock").push(r.results[0].id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_backup_while_writers_upload_holds_every_acknowledged_image() {
    let sys = System::start(keys).await;
    let files = flowers_subset(&sys.dir.path().join("set"), &CLASSES, 60);
    let acked = Arc::new(std::sync::Mutex::new(Vec::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = files
        .chunks(100)
        .map(|part| {
            let (acked, stop) = (acked.clone(), stop.clone());
            tokio::spawn(writer(sys.url(), part.to_vec(), acked, stop))
        })
        .collect();
    while acked.lock().expect("lock").len() < 15 {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let before: Vec<u64> = acked.lock().expect("lock").clone();
    let file = sys.dir.path().join("copy.db");
    let file_arg = file.to_string_lossy().to_string();
    let (ok, _, err) = cbir(&sys, "indexer", &["backup", &file_arg]);
    assert!(!ok && err.contains("PermissionDenied"), "{err}");
    let (ok, out, err) = cbir(&sys, "root", &["backup", &file_arg]);
    assert!(ok, "{out}{err}");
    let during = acked.lock().expect("lock").len();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for w in writers {
        w.await.expect("writer");
    }
    assert!(
        during > before.len() && during < files.len(),
        "no upload was acknowledged while the backup ran ({} before, {during} at its end)",
        before.len()
    );

    use sea_orm::ConnectionTrait;
    let conn = sea_orm::Database::connect(format!("sqlite://{}?mode=ro", file.display()))
        .await
        .expect("the copy opens");
    let q = |sql: &str| sea_orm::Statement::from_string(sea_orm::DbBackend::Sqlite, sql);
    let check = conn
        .query_one(q("PRAGMA integrity_check"))
        .await
        .expect("integrity check")
        .expect("row");
    assert_eq!(check.try_get_by_index::<String>(0).expect("text"), "ok");
    let ids: HashSet<u64> = conn
        .query_all(q("SELECT id FROM images"))
        .await
        .expect("images")
        .iter()
        .map(|r| r.try_get::<i64>("", "id").expect("id") as u64)
        .collect();
    for id in &before {
        assert!(
            ids.contains(id),
            "image {id}, acknowledged before the backup, is missing"
        );
    }
    // The temporary copy beside the database is gone.
    let left: Vec<_> = std::fs::read_dir(sys.dir.path())
        .expect("dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".backup-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");

    // Over REST too: admin only, an SQLite file.
    let url = format!("{}/api/backup", sys.url());
    let http = reqwest::Client::new();
    let r = http
        .get(&url)
        .header("x-api-key", "secret-reader")
        .send()
        .await
        .expect("answer");
    assert_eq!(r.status(), 403);
    let r = http
        .get(&url)
        .header("x-api-key", "secret-root")
        .send()
        .await
        .expect("answer");
    assert_eq!(r.status(), 200);
    let body = r.bytes().await.expect("body");
    assert!(body.starts_with(b"SQLite format 3\0"));
    println!(
        "BACKUP online copy of {} bytes while {} writers uploaded ({} images before, {during} by its end)",
        std::fs::metadata(&file).expect("copy").len(),
        files.chunks(100).len(),
        before.len()
    );
    sys.shutdown().await;
}
