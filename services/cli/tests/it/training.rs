//! Fine-tuning end to end through the gateway: upload, validation, a real
//! short fine-tune with live progress, the registry, activation with the
//! collection rebuilt while searches keep answering, cancel, and refusals.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::system::{flowers_subset, System};

const CLASSES: [&str; 5] = ["daisy", "dandelion", "rose", "sunflower", "tulip"];

fn tar_of(dir: &Path) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    b.append_dir_all("set", dir).expect("tar");
    b.into_inner().expect("tar")
}

async fn post_archive(
    http: &reqwest::Client,
    base: &str,
    name: &str,
    data: Vec<u8>,
) -> reqwest::Response {
    http.post(format!("{base}/api/training/datasets?file_name={name}"))
        .body(data)
        .send()
        .await
        .expect("upload")
}

async fn ok_json(r: reqwest::Response) -> Value {
    let status = r.status();
    let v: Value = r.json().await.expect("json");
    assert!(status.is_success(), "{status}: {v}");
    v
}

async fn error_of(r: reqwest::Response, status: u16) -> String {
    assert_eq!(r.status(), status);
    let v: Value = r.json().await.expect("json");
    v["error"]["message"].as_str().expect("message").to_string()
}

async fn upload_dir(http: &reqwest::Client, base: &str, dir: &Path) -> String {
    let v = ok_json(post_archive(http, base, "set.tar", tar_of(dir)).await).await;
    v["dataset_id"].as_str().expect("id").to_string()
}

async fn submit(http: &reqwest::Client, base: &str, body: Value) -> reqwest::Response {
    http.post(format!("{base}/api/training/jobs"))
        .json(&body)
        .send()
        .await
        .expect("submit")
}

/// Reads the job's server-sent events until the job ends; returns every
/// job state seen.
async fn follow(http: &reqwest::Client, base: &str, id: &str) -> Vec<Value> {
    let mut r = http
        .get(format!("{base}/api/training/jobs/{id}/events"))
        .send()
        .await
        .expect("events");
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .expect("ct")
        .starts_with("text/event-stream"));
    let mut buf = String::new();
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(600);
    while let Some(chunk) = tokio::time::timeout_at(deadline.into(), r.chunk())
        .await
        .expect("the job ended within 10 minutes")
        .expect("stream")
    {
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find('\n') {
            let line: String = buf.drain(..=end).collect();
            if let Some(d) = line.trim_end().strip_prefix("data:") {
                seen.push(serde_json::from_str::<Value>(d.trim()).expect("job json"));
            }
        }
    }
    seen
}

async fn search(http: &reqwest::Client, base: &str, coll: &str, image: &Path) -> reqwest::Response {
    let part = reqwest::multipart::Part::bytes(std::fs::read(image).expect("read"))
        .file_name("q.jpg")
        .mime_str("image/jpeg")
        .expect("mime");
    let form = reqwest::multipart::Form::new()
        .part("image", part)
        .text("collection", coll.to_string())
        .text("top_k", "10");
    http.post(format!("{base}/api/search"))
        .multipart(form)
        .send()
        .await
        .expect("search")
}

async fn add_images(http: &reqwest::Client, base: &str, coll: &str, files: &[PathBuf]) {
    for chunk in files.chunks(32) {
        let mut form = reqwest::multipart::Form::new();
        for f in chunk {
            let class = f
                .parent()
                .and_then(|p| p.file_name())
                .expect("class")
                .to_string_lossy();
            let name = f.file_name().expect("name").to_string_lossy();
            let part = reqwest::multipart::Part::bytes(std::fs::read(f).expect("read"))
                .file_name(format!("set/{class}/{name}"))
                .mime_str("image/jpeg")
                .expect("mime");
            form = form.part("files", part);
        }
        let r = http
            .post(format!("{base}/api/collections/{coll}/images"))
            .multipart(form)
            .send()
            .await
            .expect("add");
        assert_eq!(r.status(), 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fine_tune_register_activate_and_rebuild_while_searching() {
    let sys = System::start(|_| {}).await;
    let base = sys.url();
    let http = reqwest::Client::new();

    // A collection on the pretrained model, searched during the rebuild.
    let indexed = flowers_subset(&sys.dir.path().join("indexed"), &CLASSES, 24);
    ok_json(
        http.post(format!("{base}/api/collections"))
            .json(&json!({"name": "flowers"}))
            .send()
            .await
            .expect("create"),
    )
    .await;
    add_images(&http, &base, "flowers", &indexed).await;

    // The registry starts with the pretrained model, active.
    let models = ok_json(
        http.get(format!("{base}/api/models"))
            .send()
            .await
            .expect("models"),
    )
    .await;
    let ms = models["models"].as_array().expect("models");
    assert_eq!(ms.len(), 1);
    assert_eq!(ms[0]["name"], "efficientnet-lite0");
    assert_eq!(ms[0]["active"], true);

    // A small labeled set, uploaded as a tar archive.
    let train_dir = sys.dir.path().join("train");
    flowers_subset(&train_dir, &CLASSES, 14);
    let dataset = upload_dir(&http, &base, &train_dir).await;
    let job = ok_json(
        submit(
            &http,
            &base,
            json!({
                "name": "flowers-ft",
                "dataset_id": dataset,
                "params": {"epochs": 1, "head_epochs": 1, "min_images_per_class": 5,
                           "augment_views": 1, "batch_size": 16, "validation_fraction": 0.2},
            }),
        )
        .await,
    )
    .await;
    assert_eq!(job["class_names"], json!(CLASSES));
    assert_eq!(
        job["train_images"].as_u64().expect("n") + job["validation_images"].as_u64().expect("n"),
        70
    );
    let id = job["id"].as_str().expect("id").to_string();

    // Live progress until the end.
    let events = follow(&http, &base, &id).await;
    let last = events.last().expect("events");
    assert_eq!(last["state"], "succeeded", "{last}");
    assert!(events.iter().any(|e| e["state"] == "running"
        && e["progress"]["phase"]
            .as_str()
            .is_some_and(|p| p.starts_with("extracting features"))));
    assert!(events
        .iter()
        .any(|e| e["progress"]["iteration"].as_u64() > Some(0)));
    let model = last["model"].clone();
    assert_eq!(model["name"], "flowers-ft");
    assert_eq!(model["version"], "1");

    // The curve: one point per step plus one per epoch end.
    let curve = ok_json(
        http.get(format!("{base}/api/training/jobs/{id}/curve"))
            .send()
            .await
            .expect("curve"),
    )
    .await;
    let points = curve["points"].as_array().expect("points");
    assert!(points.len() >= 4, "{curve}");
    assert!(points.iter().any(|p| p["validation_accuracy"].is_number()));
    assert!(points
        .iter()
        .all(|p| p["loss"].as_f64().is_some_and(f64::is_finite)));

    // Registered with its metadata.
    let m = ok_json(
        http.get(format!("{base}/api/models/flowers-ft/1"))
            .send()
            .await
            .expect("model"),
    )
    .await;
    assert_eq!(m["class_names"], json!(CLASSES));
    assert_eq!(m["per_class"].as_array().expect("per class").len(), 5);
    assert_eq!(m["active"], false);
    assert_eq!(m["base_model"], "efficientnet-lite0:imagenet");
    assert!(m["weights_bytes"].as_u64() > Some(1_000_000));
    assert!(m["validation_accuracy"]
        .as_f64()
        .is_some_and(|a| (0.0..=1.0).contains(&a)));

    // Activate: inference swaps, the collection is rebuilt, and searches
    // answer the whole time.
    let act = ok_json(
        http.post(format!("{base}/api/models/flowers-ft/1/activate"))
            .send()
            .await
            .expect("activate"),
    )
    .await;
    let ops: Vec<String> = act["rebuild_operation_ids"]
        .as_array()
        .expect("ops")
        .iter()
        .map(|v| v.as_str().expect("op").to_string())
        .collect();
    assert_eq!(ops.len(), 1, "{act}");
    let (mut during, mut answered) = (0, 0);
    let query = &indexed[3];
    loop {
        let op = ok_json(
            http.get(format!("{base}/api/operations/{}", ops[0]))
                .send()
                .await
                .expect("op"),
        )
        .await;
        let state = op["state"].as_str().expect("state").to_string();
        let r = search(&http, &base, "flowers", query).await;
        let status = r.status();
        let body: Value = r.json().await.expect("json");
        assert_eq!(status, 200, "search during the rebuild failed: {body}");
        assert_eq!(body["results"].as_array().expect("results").len(), 10);
        answered += 1;
        if state == "running" {
            during += 1;
        } else {
            assert_eq!(state, "succeeded", "{op}");
            break;
        }
    }
    assert!(
        during >= 1,
        "no search overlapped the rebuild ({answered} answered)"
    );
    // Now on the fine-tuned model: its classes name the query.
    let stats = ok_json(
        http.get(format!("{base}/api/collections/flowers"))
            .send()
            .await
            .expect("stats"),
    )
    .await;
    assert!(stats.to_string().contains("flowers-ft"), "{stats}");
    let r = ok_json(search(&http, &base, "flowers", query).await).await;
    assert!(
        CLASSES.contains(&r["query"]["predicted_name"].as_str().unwrap_or_default()),
        "{r}"
    );
    let models = ok_json(
        http.get(format!("{base}/api/models"))
            .send()
            .await
            .expect("models"),
    )
    .await;
    let active: Vec<&Value> = models["models"]
        .as_array()
        .expect("m")
        .iter()
        .filter(|m| m["active"] == true)
        .collect();
    assert_eq!(active.len(), 1);
    assert_eq!(active[0]["name"], "flowers-ft");

    // The active model cannot be deleted.
    let msg = error_of(
        http.delete(format!("{base}/api/models/flowers-ft/1"))
            .send()
            .await
            .expect("delete"),
        409,
    )
    .await;
    assert!(msg.contains("active"), "{msg}");
    sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_datasets_are_refused_and_jobs_can_be_cancelled() {
    let sys = System::start(|_| {}).await;
    let base = sys.url();
    let http = reqwest::Client::new();

    // One class.
    let one = sys.dir.path().join("one");
    flowers_subset(&one, &["daisy"], 6);
    let id = upload_dir(&http, &base, &one).await;
    let msg = error_of(
        submit(
            &http,
            &base,
            json!({"name": "x", "dataset_id": id, "params": {"min_images_per_class": 2}}),
        )
        .await,
        400,
    )
    .await;
    assert!(msg.contains("at least 2"), "{msg}");

    // Too few images in a class (the default minimum is 100).
    let few = sys.dir.path().join("few");
    flowers_subset(&few, &["daisy", "rose"], 6);
    let id = upload_dir(&http, &base, &few).await;
    let msg = error_of(
        submit(&http, &base, json!({"name": "x", "dataset_id": id})).await,
        400,
    )
    .await;
    assert!(
        msg.contains("at least 100 readable images") && msg.contains("daisy (6)"),
        "{msg}"
    );

    // An archive entry escaping its folder: refused, nothing written outside.
    let mut b = tar::Builder::new(Vec::new());
    let data = std::fs::read(
        few.join("daisy")
            .read_dir()
            .expect("dir")
            .next()
            .expect("f")
            .expect("f")
            .path(),
    )
    .expect("read");
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    let name = b"../../escaped.jpg";
    h.as_old_mut().name[..name.len()].copy_from_slice(name);
    h.set_cksum();
    b.append(&h, data.as_slice()).expect("append");
    let msg = error_of(
        post_archive(&http, &base, "evil.tar", b.into_inner().expect("tar")).await,
        400,
    )
    .await;
    assert!(msg.contains("outside its folder"), "{msg}");
    assert!(!sys.training_cfg.data_dir.join("escaped.jpg").exists());
    assert!(!sys
        .training_cfg
        .data_dir
        .parent()
        .expect("p")
        .join("escaped.jpg")
        .exists());

    // Bad names and sources.
    let msg = error_of(
        submit(&http, &base, json!({"name": "a b", "dataset_id": id})).await,
        400,
    )
    .await;
    assert!(msg.contains("letters, digits"), "{msg}");
    let msg = error_of(
        submit(&http, &base, json!({"name": "x", "server_path": "/etc"})).await,
        403,
    )
    .await;
    assert!(msg.contains("outside the allowed roots"), "{msg}");

    // Cancel a running job: it ends cancelled and registers nothing.
    let set = sys.dir.path().join("set");
    flowers_subset(&set, &["daisy", "rose", "tulip"], 20);
    let id = upload_dir(&http, &base, &set).await;
    let job = ok_json(submit(&http, &base, json!({"name": "long", "dataset_id": id, "params": {"epochs": 50, "early_stopping_patience": 50, "min_images_per_class": 5}})).await).await;
    let jid = job["id"].as_str().expect("id").to_string();
    // Wait until it runs, then cancel.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let j = ok_json(
            http.get(format!("{base}/api/training/jobs/{jid}"))
                .send()
                .await
                .expect("job"),
        )
        .await;
        if j["state"] == "running" {
            break;
        }
        assert!(Instant::now() < deadline, "the job never ran: {j}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ok_json(
        http.post(format!("{base}/api/training/jobs/{jid}/cancel"))
            .send()
            .await
            .expect("cancel"),
    )
    .await;
    let events = follow(&http, &base, &jid).await;
    assert_eq!(events.last().expect("end")["state"], "cancelled");
    let models = ok_json(
        http.get(format!("{base}/api/models"))
            .send()
            .await
            .expect("models"),
    )
    .await;
    assert_eq!(models["models"].as_array().expect("m").len(), 1, "{models}");
    // An ended job cannot be cancelled again.
    error_of(
        http.post(format!("{base}/api/training/jobs/{jid}/cancel"))
            .send()
            .await
            .expect("cancel"),
        409,
    )
    .await;
    // A queued job is cancelled before it starts.
    let a = ok_json(submit(&http, &base, json!({"name": "a", "dataset_id": upload_dir(&http, &base, &set).await, "params": {"epochs": 50, "early_stopping_patience": 50, "min_images_per_class": 5}})).await).await;
    let b = ok_json(submit(&http, &base, json!({"name": "b", "dataset_id": upload_dir(&http, &base, &set).await, "params": {"min_images_per_class": 5}})).await).await;
    let bid = b["id"].as_str().expect("id");
    let c = ok_json(
        http.post(format!("{base}/api/training/jobs/{bid}/cancel"))
            .send()
            .await
            .expect("cancel"),
    )
    .await;
    assert_eq!(c["state"], "cancelled", "{c}");
    let aid = a["id"].as_str().expect("id");
    ok_json(
        http.post(format!("{base}/api/training/jobs/{aid}/cancel"))
            .send()
            .await
            .expect("cancel"),
    )
    .await;
    sys.shutdown().await;
}
