//! `openapi.json` against the answers of a running system: collections,
//! stats, uploads, searches, index jobs, models and errors, each checked
//! against the schema the document gives for its route and status (the
//! routes themselves are checked in `services/gateway/tests/openapi.rs`).

use std::time::Duration;

use cbir_gateway::http::openapi::{check_answer, document};
use reqwest::Method;
use serde_json::{json, Value};

use crate::system::{flowers_subset, System};

/// Sends `method url` (with `body` as JSON when given) and checks the
/// answer against the document's schema for `template`.
async fn checked(
    sys: &System,
    method: Method,
    template: &str,
    url: &str,
    body: Option<Value>,
) -> Value {
    let mut req = reqwest::Client::new().request(method.clone(), format!("{}{url}", sys.url()));
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.expect("answer");
    let status = r.status().as_u16();
    let v: Value = r.json().await.expect("json");
    if let Err(e) = check_answer(&document(), method.as_str(), template, status, &v) {
        panic!("{method} {url} ({status}) answered {v}, against openapi.json: {e:#?}");
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_answers_fit_the_document() {
    let dir = tempfile::tempdir().expect("tmp");
    let files = flowers_subset(dir.path(), &["daisy", "rose"], 3);
    let root = dir.path().to_path_buf();
    let sys = System::start(move |c| c.allowed_roots = vec![root]).await;
    sys.wait_healthy().await;
    let new = json!({"name": "spec", "if_not_exists": true});
    checked(
        &sys,
        Method::POST,
        "/api/collections",
        "/api/collections",
        Some(new),
    )
    .await;
    let mut form = reqwest::multipart::Form::new();
    for f in &files {
        let part = reqwest::multipart::Part::bytes(std::fs::read(f).expect("read"))
            .file_name(f.display().to_string())
            .mime_str("image/jpeg")
            .expect("mime");
        form = form.part("files", part);
    }
    let r = reqwest::Client::new()
        .post(format!("{}/api/collections/spec/images", sys.url()))
        .multipart(form)
        .send()
        .await
        .expect("upload");
    let status = r.status().as_u16();
    let added: Value = r.json().await.expect("json");
    let template = "/api/collections/{name}/images";
    check_answer(&document(), "post", template, status, &added).expect("the upload's answer");
    let id = added["results"][0]["id"].as_u64().expect("an id");
    for (template, url) in [
        ("/api/health", "/api/health"),
        ("/api/config", "/api/config"),
        ("/api/model", "/api/model"),
        ("/api/collections", "/api/collections"),
        ("/api/collections/{name}", "/api/collections/spec"),
        ("/api/collections/{name}", "/api/collections/missing"),
        ("/api/models", "/api/models"),
        ("/api/training/jobs", "/api/training/jobs"),
    ] {
        checked(&sys, Method::GET, template, url, None).await;
    }
    let search = json!({"collection": "spec", "image_id": id, "top_k": 3});
    let found = checked(
        &sys,
        Method::POST,
        "/api/search",
        "/api/search",
        Some(search),
    )
    .await;
    assert!(!found["results"].as_array().expect("results").is_empty());
    let bad = json!({"collection": "spec", "image_id": id, "mode": "sideways"});
    checked(&sys, Method::POST, "/api/search", "/api/search", Some(bad)).await;
    let job = json!({"path": dir.path().display().to_string()});
    let started = checked(
        &sys,
        Method::POST,
        "/api/collections/{name}/index-jobs",
        "/api/collections/spec/index-jobs",
        Some(job),
    )
    .await;
    let job_url = format!("/api/jobs/{}", started["id"].as_str().expect("job id"));
    for _ in 0..300 {
        let j = checked(&sys, Method::GET, "/api/jobs/{id}", &job_url, None).await;
        if j["state"] != "running" && j["state"] != "pending" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    checked(&sys, Method::GET, "/api/jobs", "/api/jobs", None).await;
    let cleared = "/api/collections/{name}/clear";
    checked(
        &sys,
        Method::POST,
        cleared,
        "/api/collections/spec/clear",
        None,
    )
    .await;
    sys.shutdown().await;
}
