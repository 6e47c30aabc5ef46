//! One image at a time (issue 15, item 1) through the real services: get
//! its metadata and thumbnail, relabel it, delete one or many, over REST,
//! gRPC and the CLI, with roles enforced and bad ids and labels refused
//! with a clear 4xx; each change shows in the next search.

use std::collections::HashMap;
use std::process::Command;

use cbir_api::v1 as pb;
use cbir_api::v1::search_service_client::SearchServiceClient;
use cbir_gateway::auth::{hash_key, ApiKey, Role};
use cbir_gateway::http::openapi::{check_answer, document};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tonic::transport::Channel;

use crate::system::{flowers_subset, System};

pub(crate) fn key(name: &str, role: Role) -> ApiKey {
    ApiKey {
        name: name.into(),
        sha256: hash_key(&format!("secret-{name}")),
        role,
    }
}

pub(crate) struct Api {
    pub http: reqwest::Client,
    pub base: String,
}

impl Api {
    /// `method path` with `body` as JSON and `key` as x-api-key; the
    /// answer (checked against openapi.json for `template`) and its status.
    pub async fn call(
        &self,
        method: Method,
        template: &str,
        path: &str,
        key: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self
            .http
            .request(method.clone(), format!("{}{path}", self.base));
        if let Some(k) = key {
            req = req.header("x-api-key", k);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.expect("answer");
        let status = r.status();
        let text = r.text().await.expect("body");
        let v: Value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|_| json!({ "text": text }))
        };
        if v.is_object() && v.get("text").is_none() {
            if let Err(e) =
                check_answer(&document(), method.as_str(), template, status.as_u16(), &v)
            {
                panic!("{method} {path} ({status}) answered {v}, against openapi.json: {e:#?}");
            }
        }
        (status, v)
    }

    /// Ids of the stored images an exact search from `id` finds, with labels.
    async fn search(&self, id: u64) -> HashMap<u64, String> {
        let q = json!({"collection": "img", "image_id": id, "top_k": 50, "mode": "exact"});
        let (status, v) = self
            .call(Method::POST, "/api/search", "/api/search", None, Some(q))
            .await;
        assert_eq!(status, 200, "{v}");
        v["results"]
            .as_array()
            .expect("results")
            .iter()
            .map(|h| {
                (
                    h["id"].as_u64().expect("id"),
                    h["label"].as_str().expect("label").to_string(),
                )
            })
            .collect()
    }
}

pub(crate) fn cbir(sys: &System, key: Option<&str>, args: &[&str]) -> (bool, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cbir"));
    cmd.args(args).env("CBIR_GATEWAY_URL", sys.url());
    match key {
        Some(k) => cmd.env("CBIR_API_KEY", k),
        None => cmd.env_remove("CBIR_API_KEY"),
    };
    let out = cmd.output().expect("cbir runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// Uploads `files` into collection `img`; their ids, in order.
pub(crate) async fn upload(api: &Api, files: &[std::path::PathBuf]) -> Vec<u64> {
    let mut form = reqwest::multipart::Form::new();
    for f in files {
        let class = f.parent().and_then(|p| p.file_name()).expect("class");
        let name = format!(
            "{}/{}",
            class.to_string_lossy(),
            f.file_name().expect("name").to_string_lossy()
        );
        let part = reqwest::multipart::Part::bytes(std::fs::read(f).expect("read"))
            .file_name(name)
            .mime_str("image/jpeg")
            .expect("mime");
        form = form.part("files", part);
    }
    let r = api
        .http
        .post(format!(
            "{}/api/collections/img/images?create=true",
            api.base
        ))
        .header("x-api-key", "secret-indexer")
        .multipart(form)
        .send()
        .await
        .expect("upload");
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.expect("json");
    v["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| r["id"].as_u64().unwrap_or_else(|| panic!("{v}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_relabel_and_delete_images_one_at_a_time() {
    let sys = System::start(|c| {
        c.auth.keys = vec![
            key("reader", Role::Search),
            key("indexer", Role::Index),
            key("root", Role::Admin),
        ];
    })
    .await;
    let api = Api {
        http: reqwest::Client::new(),
        base: sys.url(),
    };
    let files = flowers_subset(&sys.dir.path().join("up"), &["daisy", "rose", "tulip"], 3);
    let ids = upload(&api, &files).await;
    assert_eq!(ids.len(), 9);

    get(&api, &sys, ids[0]).await;
    relabel(&api, ids[1]).await;
    refusals(&api, ids[1]).await;
    delete(&api, &ids).await;
    cli(&sys, &ids).await;
    sys.shutdown().await;
}

const ONE: &str = "/api/collections/{name}/images/{id}";
const MANY: &str = "/api/collections/{name}/images/delete";

async fn get(api: &Api, sys: &System, id: u64) {
    let path = format!("/api/collections/img/images/{id}");
    let (status, v) = api.call(Method::GET, ONE, &path, None, None).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["id"], id);
    assert_eq!(v["collection"], "img");
    assert_eq!(v["label"], "daisy");
    assert!(
        v["path"].as_str().expect("path").starts_with("daisy/"),
        "{v}"
    );
    assert!(
        !v["predicted_name"].as_str().expect("name").is_empty(),
        "{v}"
    );
    assert_eq!(v["content_hash"].as_str().expect("hash").len(), 64);
    assert!(v["created_at_ms"].as_i64().expect("created") > 0);
    let thumb = api
        .http
        .get(format!(
            "{}{}",
            api.base,
            v["thumbnail_url"].as_str().expect("url")
        ))
        .send()
        .await
        .expect("thumbnail");
    assert_eq!(thumb.status(), 200);

    // gRPC: the same image, with its thumbnail.
    let ch = Channel::from_shared(sys.url()).expect("uri").connect_lazy();
    let img = SearchServiceClient::new(ch)
        .get_image(pb::GetStoredImageRequest {
            collection: "img".into(),
            id,
            include_thumbnail: true,
            ..Default::default()
        })
        .await
        .expect("GetImage")
        .into_inner();
    assert_eq!((img.id, img.label.as_str()), (id, "daisy"));
    assert_eq!(img.predicted_name, v["predicted_name"]);
    assert!(img.thumbnail.starts_with(&[0xFF, 0xD8]), "a JPEG thumbnail");
}

async fn relabel(api: &Api, id: u64) {
    let path = format!("/api/collections/img/images/{id}");
    let body = json!({"label": "bellis perennis ✓"});
    for (key, want) in [
        (None, StatusCode::UNAUTHORIZED),
        (Some("secret-reader"), StatusCode::FORBIDDEN),
    ] {
        let (status, v) = api
            .call(Method::PATCH, ONE, &path, key, Some(body.clone()))
            .await;
        assert_eq!(status, want, "{key:?}: {v}");
    }
    let (status, v) = api
        .call(
            Method::PATCH,
            ONE,
            &path,
            Some("secret-indexer"),
            Some(body),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["label"], "bellis perennis ✓");
    assert_eq!(v["id"], id);
    // The next search shows it.
    assert_eq!(api.search(id).await[&id], "bellis perennis ✓");
}

async fn refusals(api: &Api, id: u64) {
    let k = Some("secret-indexer");
    for (path, body, want, says) in [
        (
            format!("/api/collections/img/images/{id}"),
            json!({"label": "two\nlines"}),
            StatusCode::BAD_REQUEST,
            "control character",
        ),
        (
            format!("/api/collections/img/images/{id}"),
            json!({"label": "x".repeat(513)}),
            StatusCode::BAD_REQUEST,
            "513 bytes, the limit is 512",
        ),
        (
            format!("/api/collections/img/images/{id}"),
            json!({"labels": "x"}),
            StatusCode::BAD_REQUEST,
            "unknown field",
        ),
        (
            "/api/collections/img/images/0".into(),
            json!({"label": "x"}),
            StatusCode::BAD_REQUEST,
            "ids start at 1",
        ),
        (
            "/api/collections/img/images/987654".into(),
            json!({"label": "x"}),
            StatusCode::NOT_FOUND,
            "no image 987654",
        ),
        (
            format!("/api/collections/nope/images/{id}"),
            json!({"label": "x"}),
            StatusCode::NOT_FOUND,
            "nope",
        ),
    ] {
        let (status, v) = api.call(Method::PATCH, ONE, &path, k, Some(body)).await;
        assert_eq!(status, want, "{path}: {v}");
        let msg = v["error"]["message"].as_str().unwrap_or_default();
        assert!(msg.contains(says), "{path}: {v}");
    }
    // Not a number: axum's own 400.
    let (status, v) = api
        .call(
            Method::GET,
            ONE,
            "/api/collections/img/images/abc",
            None,
            None,
        )
        .await;
    assert_eq!(status, 400, "{v}");
    let (status, v) = api
        .call(
            Method::GET,
            ONE,
            "/api/collections/img/images/987654",
            None,
            None,
        )
        .await;
    assert_eq!(status, 404, "{v}");
    // A refused label changed nothing.
    assert_eq!(api.search(id).await[&id], "bellis perennis ✓");
}

async fn delete(api: &Api, ids: &[u64]) {
    let path = "/api/collections/img/images/delete";
    let gone = json!({"ids": [ids[2], ids[3], 987654]});
    let (status, _) = api
        .call(
            Method::POST,
            MANY,
            path,
            Some("secret-indexer"),
            Some(gone.clone()),
        )
        .await;
    assert_eq!(status, 403, "deleting needs the admin role");
    for (body, says) in [
        (json!({"ids": []}), "no image ids"),
        (json!({"ids": [0]}), "ids start at 1"),
        (json!({"ids": ["a"]}), "bad JSON"),
    ] {
        let (status, v) = api
            .call(Method::POST, MANY, path, Some("secret-root"), Some(body))
            .await;
        assert_eq!(status, 400, "{v}");
        assert!(
            v["error"]["message"].as_str().expect("m").contains(says),
            "{v}"
        );
    }
    let (status, v) = api
        .call(Method::POST, MANY, path, Some("secret-root"), Some(gone))
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["deleted"], 2, "an unknown id is skipped");
    let found = api.search(ids[0]).await;
    assert!(
        !found.contains_key(&ids[2]) && !found.contains_key(&ids[3]),
        "deleted images are gone from searches at once: {found:?}"
    );
    assert_eq!(found.len(), ids.len() - 2);

    let one = format!("/api/collections/img/images/{}", ids[4]);
    let (status, _) = api
        .call(Method::DELETE, ONE, &one, Some("secret-indexer"), None)
        .await;
    assert_eq!(status, 403);
    let (status, v) = api
        .call(Method::DELETE, ONE, &one, Some("secret-root"), None)
        .await;
    assert_eq!(status, 204, "{v}");
    let (status, v) = api
        .call(Method::DELETE, ONE, &one, Some("secret-root"), None)
        .await;
    assert_eq!(status, 404, "{v}");
    let (status, v) = api.call(Method::GET, ONE, &one, None, None).await;
    assert_eq!(status, 404, "{v}");
    assert!(!api.search(ids[0]).await.contains_key(&ids[4]));
}

async fn cli(sys: &System, ids: &[u64]) {
    let id = ids[5].to_string();
    tokio::task::block_in_place(|| {
        let (ok, out, err) = cbir(sys, None, &["image", "get", &id, "-c", "img", "--json"]);
        assert!(ok, "{err}");
        let v: Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
        assert_eq!(v["id"], ids[5]);
        assert_eq!(v["label"], "rose");
        let thumb = sys.dir.path().join("t.jpg");
        let t = thumb.display().to_string();
        let (ok, out, err) = cbir(
            sys,
            None,
            &["image", "get", &id, "-c", "img", "--thumbnail", &t],
        );
        assert!(ok, "{err}");
        assert!(out.contains("label      rose"), "{out}");
        assert!(std::fs::read(&thumb)
            .expect("thumbnail")
            .starts_with(&[0xFF, 0xD8]));

        let (ok, _, err) = cbir(
            sys,
            Some("secret-reader"),
            &["image", "label", &id, "x", "-c", "img"],
        );
        assert!(!ok);
        assert!(err.contains("PermissionDenied"), "{err}");
        let (ok, out, err) = cbir(
            sys,
            Some("secret-indexer"),
            &["image", "label", &id, "rosa", "-c", "img", "--json"],
        );
        assert!(ok, "{err}");
        let v: Value = serde_json::from_str(out.trim()).expect("json");
        assert_eq!(v["label"], "rosa");
        let (ok, _, err) = cbir(
            sys,
            Some("secret-indexer"),
            &["image", "label", &id, "a\tb", "-c", "img"],
        );
        assert!(!ok);
        assert!(err.contains("control character"), "{err}");

        let rm = ["image", "rm", &id, "-c", "img"];
        let (ok, _, err) = cbir(sys, Some("secret-indexer"), &rm);
        assert!(!ok);
        assert!(err.contains("needs admin"), "{err}");
        let (ok, out, err) = cbir(sys, Some("secret-root"), &rm);
        assert!(ok, "{err}");
        assert!(out.contains("1 of 1 images deleted"), "{out}");
        let (ok, out, err) = cbir(sys, Some("secret-root"), &rm);
        assert!(!ok, "an id the collection lacks fails the command");
        assert!(out.contains("0 of 1"), "{out} {err}");
        let (ok, _, err) = cbir(sys, None, &["image", "get", &id, "-c", "img"]);
        assert!(!ok);
        assert!(err.contains("NotFound"), "{err}");
    });
}
