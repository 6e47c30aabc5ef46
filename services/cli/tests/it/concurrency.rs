//! Concurrent writers through the whole system (issue 13, item 1): eight
//! uploaders into three collections through the REST API, a rebuild of one
//! of them and searches, for a minute, on SQLite and on MariaDB. No request
//! may fail, and every image an answer acknowledged is stored exactly once.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::sync::Mutex;

use serde_json::Value;

use crate::system::{shared_data, System};

const COLLECTIONS: [&str; 3] = ["cc0", "cc1", "cc2"];
const UPLOADERS: usize = 8;
const SEARCHERS: usize = 2;
const BATCH: usize = 4;
const RUN: Duration = Duration::from_secs(60);

/// Real photos: every flower of flowers5 and a few caltech101 classes,
/// sorted, so that each run sends the same files.
fn photos() -> Vec<PathBuf> {
    let root = shared_data();
    let mut out = Vec::new();
    let mut add_dir = |dir: PathBuf| {
        let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| cbir_gateway::index_jobs::is_image_path(p))
            .collect();
        names.sort();
        out.extend(names);
    };
    for class in ["daisy", "dandelion", "rose", "sunflower", "tulip"] {
        add_dir(root.join("flowers5").join(class));
    }
    for class in ["accordion", "airplanes", "anchor", "ant", "barrel", "bass"] {
        add_dir(root.join("caltech101").join(class));
    }
    out
}

#[derive(Default)]
struct Tally {
    /// collection -> content hashes of acknowledged images.
    acked: HashMap<String, HashSet<String>>,
    requests: u64,
    failures: Vec<String>,
    searches: u64,
}

fn form(files: &[(String, Vec<u8>)]) -> reqwest::multipart::Form {
    let mut form = reqwest::multipart::Form::new();
    for (name, data) in files {
        form = form.part(
            "files",
            reqwest::multipart::Part::bytes(data.clone())
                .file_name(name.clone())
                .mime_str("image/jpeg")
                .expect("mime"),
        );
    }
    form
}

/// Uploader `u` sends batches into its collection until `deadline`. The
/// uploaders of one collection walk the same photos a few apart, so that the
/// same image often arrives from two of them at once; every fifth batch is
/// sent a second time.
async fn uploader(
    u: usize,
    base: String,
    photos: Arc<Vec<PathBuf>>,
    tally: Arc<Mutex<Tally>>,
    deadline: Instant,
) {
    let http = reqwest::Client::new();
    let coll = COLLECTIONS[u % COLLECTIONS.len()];
    let share = photos.len() / COLLECTIONS.len();
    let mut next = (u % COLLECTIONS.len()) * share + (u / COLLECTIONS.len()) * 6;
    let mut round = 0;
    while Instant::now() < deadline {
        let files: Vec<(String, Vec<u8>)> = (0..BATCH)
            .map(|k| {
                let p = &photos[(next + k) % photos.len()];
                let class = p
                    .parent()
                    .and_then(|d| d.file_name())
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let name = p.file_name().expect("name").to_string_lossy().into_owned();
                (format!("{class}/{name}"), std::fs::read(p).expect("read"))
            })
            .collect();
        round += 1;
        if round % 5 != 0 {
            next += BATCH;
        }
        let r = http
            .post(format!("{base}/api/collections/{coll}/images?create=true"))
            .multipart(form(&files))
            .timeout(Duration::from_secs(120))
            .send()
            .await;
        let answer = match r {
            Ok(r) => {
                let status = r.status();
                Ok((status, r.json::<Value>().await.unwrap_or(Value::Null)))
            }
            Err(e) => Err(e.to_string()),
        };
        let mut t = tally.lock().expect("tally");
        t.requests += 1;
        let body = match answer {
            Ok((status, body)) if status == 200 => body,
            Ok((status, body)) => {
                t.failures
                    .push(format!("upload {u} into {coll}: {status} {body}"));
                continue;
            }
            Err(e) => {
                t.failures.push(format!("upload {u} into {coll}: {e}"));
                continue;
            }
        };
        let results = body["results"].as_array().cloned().unwrap_or_default();
        assert_eq!(results.len(), files.len(), "{body}");
        for (res, (name, data)) in results.iter().zip(&files) {
            let err = res["error"].as_str().unwrap_or_default();
            if err.is_empty() && res["id"].as_u64().unwrap_or(0) > 0 {
                t.acked
                    .entry(coll.to_string())
                    .or_default()
                    .insert(cbir_imaging::content_hash(data));
            } else {
                t.failures
                    .push(format!("upload {u} into {coll}: {name} failed: {res}"));
            }
        }
    }
}

/// Searches a collection with a photo, over and over, until `deadline`.
async fn searcher(
    s: usize,
    base: String,
    photos: Arc<Vec<PathBuf>>,
    tally: Arc<Mutex<Tally>>,
    deadline: Instant,
) {
    let http = reqwest::Client::new();
    let mut i = s * 97;
    while Instant::now() < deadline {
        i += 1;
        let coll = COLLECTIONS[i % COLLECTIONS.len()];
        let data = std::fs::read(&photos[(i * 31) % photos.len()]).expect("read");
        let form = reqwest::multipart::Form::new()
            .part(
                "image",
                reqwest::multipart::Part::bytes(data)
                    .file_name("q.jpg")
                    .mime_str("image/jpeg")
                    .expect("mime"),
            )
            .text("collection", coll.to_string())
            .text("top_k", "5");
        let r = http
            .post(format!("{base}/api/search"))
            .multipart(form)
            .timeout(Duration::from_secs(60))
            .send()
            .await;
        let outcome = match r {
            Ok(r) if r.status() == 200 => Ok(()),
            Ok(r) => {
                let status = r.status();
                Err(format!("{status} {}", r.text().await.unwrap_or_default()))
            }
            Err(e) => Err(e.to_string()),
        };
        let mut t = tally.lock().expect("tally");
        t.searches += 1;
        if let Err(e) = outcome {
            t.failures.push(format!("search {s} in {coll}: {e}"));
        }
    }
}

/// Starts a rebuild of `coll` once it holds images and waits for its end;
/// returns a failure, if any.
async fn rebuild(base: String, coll: &str) -> Option<String> {
    let http = reqwest::Client::new();
    let count = |v: &Value| v["count"].as_u64().unwrap_or(0);
    for _ in 0..600 {
        let r = http
            .get(format!("{base}/api/collections/{coll}"))
            .send()
            .await
            .ok()?;
        if r.status() == 200 && count(&r.json().await.unwrap_or(Value::Null)) >= 40 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = http
        .post(format!("{base}/api/collections/{coll}/rebuild"))
        .send()
        .await
        .expect("rebuild request");
    let status = r.status();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    if status != 200 {
        return Some(format!("rebuild of {coll}: {status} {body}"));
    }
    let id = body["operation_id"]
        .as_str()
        .expect("operation id")
        .to_string();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(300) {
        let o: Value = http
            .get(format!("{base}/api/operations/{id}"))
            .send()
            .await
            .expect("operation")
            .json()
            .await
            .expect("json");
        match o["state"].as_str() {
            Some("succeeded") => return None,
            Some("running" | "pending") => tokio::time::sleep(Duration::from_millis(200)).await,
            _ => return Some(format!("rebuild of {coll}: {o}")),
        }
    }
    Some(format!("rebuild of {coll} did not end in 300 s"))
}

async fn writers_readers_and_a_rebuild(sys: &System) {
    let base = sys.url();
    let photos = Arc::new(photos());
    assert!(photos.len() > 1000, "{} photos", photos.len());
    let tally = Arc::new(Mutex::new(Tally::default()));
    let started = Instant::now();
    let deadline = started + RUN;
    let mut tasks = Vec::new();
    for u in 0..UPLOADERS {
        tasks.push(tokio::spawn(uploader(
            u,
            base.clone(),
            photos.clone(),
            tally.clone(),
            deadline,
        )));
    }
    // The first uploads create the collections; searches start once each
    // holds an image (an empty collection refuses searches).
    for coll in COLLECTIONS {
        let http = reqwest::Client::new();
        let mut found = false;
        for _ in 0..1200 {
            let r = http
                .get(format!("{base}/api/collections/{coll}"))
                .send()
                .await
                .expect("stats");
            if r.status() == 200 {
                let v: Value = r.json().await.expect("json");
                if v["count"].as_u64().unwrap_or(0) > 0 {
                    found = true;
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(found, "the uploaders did not fill {coll}");
    }
    for s in 0..SEARCHERS {
        tasks.push(tokio::spawn(searcher(
            s,
            base.clone(),
            photos.clone(),
            tally.clone(),
            deadline,
        )));
    }
    let rebuilt = tokio::spawn(rebuild(base.clone(), COLLECTIONS[0]));
    for t in tasks {
        t.await.expect("task");
    }
    let rebuild_failure = rebuilt.await.expect("rebuild task");
    let took = started.elapsed();

    // What is stored, read from the database: each collection's images by
    // content hash.
    let store = cbir_index::Store::connect(&sys.index_database_url, 2)
        .await
        .expect("open the index database");
    let aliases = store.aliases().await.expect("aliases");
    let mut t = std::mem::take(&mut *tally.lock().expect("tally"));
    if let Some(f) = rebuild_failure {
        t.failures.push(f);
    }
    let mut stored_total = 0;
    let mut missing_total = 0;
    let mut duplicates_total = 0;
    let mut acked_total = 0;
    for coll in COLLECTIONS {
        let id = aliases[coll];
        let mut stored: HashMap<String, u32> = HashMap::new();
        let mut after = 0;
        loop {
            let page = store.load_page(id, after, 1000).await.expect("page");
            let Some(last) = page.last() else { break };
            after = last.id;
            for img in page {
                *stored.entry(img.content_hash).or_default() += 1;
            }
        }
        let acked = t.acked.get(coll).cloned().unwrap_or_default();
        let missing = acked.iter().filter(|h| !stored.contains_key(*h)).count();
        let duplicates = stored.values().filter(|&&n| n > 1).count();
        println!(
            "{coll}: {} acknowledged, {} stored, {missing} missing, {duplicates} stored twice",
            acked.len(),
            stored.len()
        );
        stored_total += stored.len();
        missing_total += missing;
        duplicates_total += duplicates;
        acked_total += acked.len();
        // Through the API too: the count a client sees.
        let v: Value = reqwest::get(format!("{base}/api/collections/{coll}"))
            .await
            .expect("stats")
            .json()
            .await
            .expect("json");
        assert_eq!(
            v["count"].as_u64(),
            Some(stored.values().map(|&n| u64::from(n)).sum::<u64>()),
            "{coll}: {v}"
        );
    }
    println!(
        "CONCURRENCY | {} | {:.0} s | {} upload requests, {} searches, {} failed | {acked_total} images acknowledged, {stored_total} stored, {missing_total} missing, {duplicates_total} stored twice",
        if sys.index_database_url.starts_with("mysql") { "mariadb" } else { "sqlite" },
        took.as_secs_f64(),
        t.requests,
        t.searches,
        t.failures.len(),
    );
    // Failures by kind: the request and the answer's status and code.
    let mut kinds: HashMap<String, usize> = HashMap::new();
    for f in &t.failures {
        let kind: String = f
            .split_whitespace()
            .filter(|w| !w.chars().all(|c| c.is_ascii_digit()) || w.len() == 3)
            .take(6)
            .collect::<Vec<_>>()
            .join(" ");
        *kinds.entry(kind).or_default() += 1;
    }
    for (kind, n) in &kinds {
        println!("  {n} x {kind}");
    }
    for f in t.failures.iter().take(10) {
        println!("  failed: {f}");
    }
    assert!(t.requests >= 40, "only {} upload requests", t.requests);
    assert!(
        t.failures.is_empty(),
        "{} failed requests",
        t.failures.len()
    );
    assert_eq!(missing_total, 0, "acknowledged images are missing");
    assert_eq!(duplicates_total, 0, "images are stored twice");
}

/// Searches wait behind eight uploaders' embeddings on a few shared CPU
/// cores: what is measured here is the database, not latency.
fn patient(c: &mut cbir_gateway::Config) {
    c.timeouts.search_ms = 60_000;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_uploads_rebuild_and_searches_on_sqlite() {
    let sys = System::start(patient).await;
    writers_readers_and_a_rebuild(&sys).await;
    sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_uploads_rebuild_and_searches_on_mariadb() {
    let db = MariaDb::create().await;
    let sys = System::start_on_index_database(db.url.clone(), patient).await;
    writers_readers_and_a_rebuild(&sys).await;
    sys.shutdown().await;
    db.drop_db().await;
}

/// A fresh database on the test MariaDB (`CBIR_TEST_MYSQL_URL`, default
/// mysql://root@127.0.0.1:3306), dropped at the end.
pub struct MariaDb {
    pub url: String,
    name: String,
}

fn mysql_base() -> String {
    std::env::var("CBIR_TEST_MYSQL_URL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".into())
}

impl MariaDb {
    pub async fn create() -> Self {
        use sea_orm::ConnectionTrait;
        let base = mysql_base();
        let admin = sea_orm::Database::connect(format!("{base}/mysql"))
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "MariaDB at {base} is not reachable ({e}): scripts/test.sh starts it; \
                     or set CBIR_TEST_MYSQL_URL"
                )
            });
        let name = format!("cbir_test_{}", uuid::Uuid::new_v4().simple());
        admin
            .execute_unprepared(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create database");
        Self {
            url: format!("{base}/{name}"),
            name,
        }
    }

    pub async fn drop_db(self) {
        use sea_orm::ConnectionTrait;
        if let Ok(admin) = sea_orm::Database::connect(format!("{}/mysql", mysql_base())).await {
            let _ = admin
                .execute_unprepared(&format!("DROP DATABASE IF EXISTS {}", self.name))
                .await;
        }
    }
}
