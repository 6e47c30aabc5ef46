//! Filtered search, paging and batch search (issue 15, items 3 and 4)
//! through the real services: REST (multipart, raw body with query
//! parameters, JSON), gRPC and the CLI; every JSON answer is checked
//! against openapi.json; a search without a valid key is refused.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;

use cbir_api::v1 as pb;
use cbir_api::v1::search_service_client::SearchServiceClient;
use cbir_gateway::auth::Role;
use cbir_gateway::http::openapi::{check_answer, document};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tonic::transport::Channel;

use crate::images::key;
use crate::system::{flowers_subset, System};

const READER: &str = "secret-reader";
const CLASSES: [&str; 3] = ["daisy", "rose", "tulip"];
const PER_CLASS: usize = 4;

struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    /// Sends `req` (with the reader's key unless `key` is None) and checks
    /// a JSON answer against openapi.json for `template`.
    async fn send(
        &self,
        template: &str,
        req: reqwest::RequestBuilder,
        key: Option<&str>,
    ) -> (StatusCode, Value) {
        let req = match key {
            Some(k) => req.header("x-api-key", k),
            None => req,
        };
        let r = req.send().await.expect("answer");
        let status = r.status();
        let v: Value = r.json().await.expect("a JSON answer");
        if let Err(e) = check_answer(&document(), "POST", template, status.as_u16(), &v) {
            panic!("POST {template} ({status}) answered {v}, against openapi.json: {e:#?}");
        }
        (status, v)
    }

    fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.http.post(format!("{}{path}", self.base))
    }

    async fn search_form(&self, form: reqwest::multipart::Form) -> (StatusCode, Value) {
        self.send(
            "/api/search",
            self.post("/api/search").multipart(form),
            Some(READER),
        )
        .await
    }

    async fn search_json(&self, body: Value) -> (StatusCode, Value) {
        self.send(
            "/api/search",
            self.post("/api/search").json(&body),
            Some(READER),
        )
        .await
    }
}

fn image_part(path: &PathBuf) -> reqwest::multipart::Part {
    reqwest::multipart::Part::bytes(std::fs::read(path).expect("read"))
        .file_name(
            path.file_name()
                .expect("name")
                .to_string_lossy()
                .to_string(),
        )
        .mime_str("image/jpeg")
        .expect("mime")
}

/// The ids of a search answer, in order.
fn ids(v: &Value) -> Vec<u64> {
    v["results"]
        .as_array()
        .unwrap_or_else(|| panic!("no results: {v}"))
        .iter()
        .map(|h| h["id"].as_u64().expect("id"))
        .collect()
}

/// Uploads the images into collection `f` (label = class folder, path =
/// `class/file`); id -> label.
async fn upload(api: &Api, files: &[PathBuf]) -> HashMap<u64, String> {
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
        .post("/api/collections/f/images?create=true")
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
        .map(|r| {
            (
                r["id"].as_u64().unwrap_or_else(|| panic!("{v}")),
                // The label is the class folder the path starts with.
                r["path"]
                    .as_str()
                    .and_then(|p| p.split('/').next())
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filtered_paged_and_batch_search_over_rest_grpc_and_cli() {
    let sys = System::start(|c| {
        c.auth.keys = vec![key("reader", Role::Search), key("indexer", Role::Index)];
        c.auth.search_requires_key = true;
    })
    .await;
    let api = Api {
        http: reqwest::Client::new(),
        base: sys.url(),
    };
    let files = flowers_subset(&sys.dir.path().join("up"), &CLASSES, PER_CLASS);
    let labels = upload(&api, &files).await;
    assert_eq!(labels.len(), CLASSES.len() * PER_CLASS);
    let query = files[0].clone();

    rest_filters(&api, &query, &labels).await;
    rest_paging(&api, &labels).await;
    rest_batch(&api, &sys, &files, &labels).await;
    grpc(&sys, &query, &labels).await;
    cli(&sys, &files).await;
    sys.shutdown().await;
}

/// A filter returns the k best matching images: those of an unfiltered
/// exact search that match, in its order.
async fn rest_filters(api: &Api, query: &PathBuf, labels: &HashMap<u64, String>) {
    let form = || {
        reqwest::multipart::Form::new()
            .part("image", image_part(query))
            .text("collection", "f")
            .text("mode", "exact")
    };
    let (status, all) = api.search_form(form().text("top_k", "50")).await;
    assert_eq!(status, 200, "{all}");
    let all = ids(&all);
    assert_eq!(all.len(), labels.len());
    for mode in ["exact", "probe"] {
        let (status, v) = api
            .search_form(
                form()
                    .text("mode", mode)
                    .text("top_k", "10")
                    .text("label", "rose")
                    .text("label", "tulip")
                    .text("not_label", "tulip"),
            )
            .await;
        assert_eq!(status, 200, "{v}");
        let got = ids(&v);
        assert_eq!(got.len(), PER_CLASS, "{mode}: {v}");
        assert!(got.iter().all(|id| labels[id] == "rose"), "{v}");
        if mode == "exact" {
            let want: Vec<u64> = all
                .iter()
                .copied()
                .filter(|id| labels[id] == "rose")
                .collect();
            assert_eq!(got, want, "exact search + filter");
        }
        assert_eq!(v["has_more"], false);
        for (i, h) in v["results"].as_array().expect("results").iter().enumerate() {
            assert_eq!(h["rank"], i + 1);
            assert!(h["created_at_ms"].as_i64().expect("created") > 0, "{h}");
            let original = h["original_url"].as_str().expect("original_url");
            assert!(
                original.ends_with(&format!("/images/{}/original", h["id"])),
                "{h}"
            );
        }
    }
    // A raw body with the options in the query string (labels repeat).
    let (status, v) = api
        .send(
            "/api/search",
            api.post("/api/search?collection=f&mode=exact&top_k=20&label=daisy&label=tulip&path_prefix=tulip/")
                .header("content-type", "image/jpeg")
                .body(std::fs::read(query).expect("read")),
            Some(READER),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(ids(&v).len(), PER_CLASS, "{v}");
    assert!(ids(&v).iter().all(|id| labels[id] == "tulip"));
    // A time range: everything was added before now, nothing after.
    let now = cbir_common::time::now_ms();
    for (from, to, n) in [(1, now + 1, labels.len()), (now + 1, 0, 0)] {
        let (status, v) = api
            .search_form(
                form()
                    .text("top_k", "50")
                    .text("from_ms", from.to_string())
                    .text("to_ms", to.to_string()),
            )
            .await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(ids(&v).len(), n, "from {from} to {to}: {v}");
    }
    for (extra, says) in [
        (("offset", "9995"), "offset + top_k must be at most 10000"),
        (
            ("from_ms", "20"),
            "filter.created_from_ms (20) is after filter.created_to_ms (10)",
        ),
        (("offset", "x"), "offset must be a number"),
    ] {
        let f = form()
            .text("top_k", "10")
            .text("to_ms", "10")
            .text(extra.0, extra.1);
        let (status, v) = api.search_form(f).await;
        assert_eq!(status, 400, "{v}");
        let msg = v["error"]["message"].as_str().unwrap_or_default();
        assert!(msg.contains(says), "{msg:?} lacks {says:?}");
    }
    let too_many: Vec<String> = (0..101).map(|i| format!("l{i}")).collect();
    let (status, v) = api
        .search_json(json!({"collection": "f", "image_id": all[0], "labels": too_many}))
        .await;
    assert_eq!(status, 400, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("filter.labels_in holds 101 labels"),
        "{v}"
    );
}

/// Pages by `offset` concatenate to one search; `has_more` says when
/// another page follows; ranks count the offset.
async fn rest_paging(api: &Api, labels: &HashMap<u64, String>) {
    let first = *labels.keys().min().expect("an id");
    let one = json!({"collection": "f", "id": first, "mode": "exact", "top_k": 9, "not_labels": ["daisy"]});
    let (status, whole) = api.search_json(one.clone()).await;
    assert_eq!(status, 200, "{whole}");
    assert_eq!(ids(&whole).len(), 2 * PER_CLASS);
    assert_eq!(whole["has_more"], false);
    let mut pages = Vec::new();
    for p in 0..3u64 {
        let mut body = one.clone();
        body["top_k"] = json!(3);
        body["offset"] = json!(p * 3);
        let (status, v) = api.search_json(body).await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["has_more"], p < 2, "page {p}: {v}");
        assert_eq!(v["results"][0]["rank"], p * 3 + 1, "{v}");
        pages.extend(ids(&v));
    }
    assert_eq!(pages, ids(&whole));
}

/// Images of a batch are embedded in one Embed call (the inference
/// service's request counter), a corrupt image fails only its item, and
/// each answered item equals the single search.
async fn rest_batch(api: &Api, sys: &System, files: &[PathBuf], labels: &HashMap<u64, String>) {
    let counts = || async {
        let text = reqwest::get(format!("http://{}/metrics", sys.inference_metrics_addr))
            .await
            .expect("scrape")
            .text()
            .await
            .expect("text");
        let count = |method: &str| -> f64 {
            text.lines()
                .filter(|l| {
                    l.starts_with("cbir_requests_total{")
                        && l.contains(&format!("method=\"/cbir.v1.InferenceService/{method}\""))
                })
                .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
                .sum()
        };
        (count("Embed"), count("EmbedImage"))
    };
    let picked = [&files[1], &files[5], &files[9]];
    let mut form = reqwest::multipart::Form::new()
        .text("collection", "f")
        .text("mode", "exact")
        .text("top_k", "3");
    for (i, f) in picked.iter().enumerate() {
        form = form.part("image", image_part(f));
        if i == 1 {
            let corrupt =
                reqwest::multipart::Part::bytes(b"\xFF\xD8\xFFnot a jpeg at all".to_vec())
                    .file_name("corrupt.jpg")
                    .mime_str("image/jpeg")
                    .expect("mime");
            form = form.part("image", corrupt);
        }
    }
    form = form.text("label", "tulip");
    let before = counts().await;
    let (status, v) = api
        .send(
            "/api/search/batch",
            api.post("/api/search/batch").multipart(form),
            Some(READER),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let after = counts().await;
    assert_eq!(
        after.0 - before.0,
        1.0,
        "one Embed call for the batch's images"
    );
    assert_eq!(after.1, before.1, "no single-image embeds");
    let items = v["items"].as_array().expect("items");
    assert_eq!(items.len(), 4, "{v}");
    assert_eq!(items[2]["file_name"], "corrupt.jpg");
    assert!(items[2]["response"].is_null());
    assert!(
        !items[2]["error"].as_str().expect("an error").is_empty(),
        "{v}"
    );
    for (item, f) in [&items[0], &items[1], &items[3]].into_iter().zip(picked) {
        assert!(item["error"].is_null(), "{item}");
        assert_eq!(
            item["file_name"],
            f.file_name().expect("name").to_string_lossy().as_ref()
        );
        let got = ids(&item["response"]);
        assert_eq!(got.len(), 3);
        assert!(got.iter().all(|id| labels[id] == "tulip"), "{item}");
        // The same as a single search with the same options.
        let single = reqwest::multipart::Form::new()
            .part("image", image_part(f))
            .text("collection", "f")
            .text("mode", "exact")
            .text("top_k", "3")
            .text("label", "tulip");
        let (_, one) = api.search_form(single).await;
        assert_eq!(got, ids(&one));
    }
    // Stored images by id, one unknown; the role is checked first.
    let known = *labels.keys().max().expect("id");
    let body = json!({"collection": "f", "queries": [{"id": known}, {"id": 987_654}], "top_k": 2, "mode": "exact"});
    for (k, want) in [
        (None, StatusCode::UNAUTHORIZED),
        (Some("secret-wrong"), StatusCode::UNAUTHORIZED),
    ] {
        let (status, v) = api
            .send(
                "/api/search/batch",
                api.post("/api/search/batch").json(&body),
                k,
            )
            .await;
        assert_eq!(status, want, "{v}");
    }
    let (status, v) = api
        .send(
            "/api/search/batch",
            api.post("/api/search/batch").json(&body),
            Some(READER),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["items"][0]["id"], known);
    assert_eq!(
        ids(&v["items"][0]["response"])[0],
        known,
        "an image finds itself first"
    );
    assert!(v["items"][1]["response"].is_null());
    assert!(
        v["items"][1]["error"]
            .as_str()
            .expect("error")
            .contains("987654"),
        "{v}"
    );
    let many: Vec<Value> = (0..65).map(|_| json!({"id": known})).collect();
    let (status, v) = api
        .send(
            "/api/search/batch",
            api.post("/api/search/batch")
                .json(&json!({"collection": "f", "queries": many})),
            Some(READER),
        )
        .await;
    assert_eq!(status, 400, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("max_batch_queries"),
        "{v}"
    );
}

async fn grpc(sys: &System, query: &PathBuf, labels: &HashMap<u64, String>) {
    let ch = Channel::from_shared(sys.url()).expect("uri").connect_lazy();
    let data = std::fs::read(query).expect("read");
    let req = |offset: u32| {
        let mut r = tonic::Request::new(pb::SearchRequest {
            collection: "f".into(),
            top_k: 2,
            mode: pb::SearchMode::Exact as i32,
            query: Some(pb::search_request::Query::Image(data.clone())),
            filter: Some(pb::ImageFilter {
                labels_in: vec!["daisy".into()],
                ..Default::default()
            }),
            offset,
            ..Default::default()
        });
        r.metadata_mut()
            .insert("x-api-key", READER.parse().expect("ascii"));
        r
    };
    let mut c = SearchServiceClient::new(ch);
    let first = c.search(req(0)).await.expect("search").into_inner();
    let second = c.search(req(2)).await.expect("search").into_inner();
    assert!(first.has_more && !second.has_more);
    let ranks: Vec<u32> = first
        .results
        .iter()
        .chain(&second.results)
        .map(|r| r.rank)
        .collect();
    assert_eq!(ranks, [1, 2, 3, 4]);
    assert!(first
        .results
        .iter()
        .chain(&second.results)
        .all(|r| labels[&r.id] == "daisy" && r.created_at_ms > 0));
    // Without a key: refused.
    let mut anon = req(0);
    anon.metadata_mut().remove("x-api-key");
    assert_eq!(
        c.search(anon).await.expect_err("no key").code(),
        tonic::Code::Unauthenticated
    );

    let image = |data: Vec<u8>| pb::SearchRequest {
        top_k: 3,
        query: Some(pb::search_request::Query::Image(data)),
        ..Default::default()
    };
    let stored = pb::SearchRequest {
        top_k: 3,
        query: Some(pb::search_request::Query::Stored(pb::StoredImageQuery {
            id: first.results[0].id,
            ..Default::default()
        })),
        ..Default::default()
    };
    let mut batch = tonic::Request::new(pb::SearchBatchRequest {
        queries: vec![image(data.clone()), image(b"garbage".to_vec()), stored],
        collection: "f".into(),
    });
    batch
        .metadata_mut()
        .insert("x-api-key", READER.parse().expect("ascii"));
    let items = c
        .search_batch(batch)
        .await
        .expect("batch")
        .into_inner()
        .items;
    assert_eq!(items.len(), 3);
    assert_eq!(
        items[0].response.as_ref().expect("answered").results[0].id,
        first.results[0].id
    );
    let e = items[1]
        .error
        .as_ref()
        .expect("a corrupt image fails its item");
    assert_eq!(e.code, tonic::Code::InvalidArgument as i32, "{e:?}");
    assert_eq!(
        items[2].response.as_ref().expect("answered").results[0].id,
        first.results[0].id
    );
    let anon = tonic::Request::new(pb::SearchBatchRequest::default());
    assert_eq!(
        c.search_batch(anon).await.expect_err("no key").code(),
        tonic::Code::Unauthenticated
    );
}

fn cbir(sys: &System, args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cbir"))
        .args(args)
        .env("CBIR_GATEWAY_URL", sys.url())
        .env("CBIR_API_KEY", READER)
        .output()
        .expect("cbir runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

async fn cli(sys: &System, files: &[PathBuf]) {
    let corrupt = sys.dir.path().join("corrupt.jpg");
    std::fs::write(&corrupt, b"not an image").expect("write");
    let (a, b, bad) = (
        files[0].display().to_string(),
        files[4].display().to_string(),
        corrupt.display().to_string(),
    );
    tokio::task::block_in_place(|| {
        let args = [
            "search",
            &a,
            "-c",
            "f",
            "--mode",
            "exact",
            "-k",
            "2",
            "--label",
            "rose",
            "--label",
            "daisy",
            "--not-label",
            "daisy",
            "--since",
            "2020-01-01T00:00:00Z",
            "--until",
            "4102444800000",
            "--offset",
            "1",
            "--json",
        ];
        let (code, out, err) = cbir(sys, &args);
        assert_eq!(code, Some(0), "{err}");
        let v: Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
        assert_eq!(v["results"][0]["rank"], 2, "{v}");
        assert!(
            v["results"]
                .as_array()
                .expect("results")
                .iter()
                .all(|h| h["label"] == "rose"),
            "{v}"
        );
        assert_eq!(v["has_more"], true);

        let (code, _, err) = cbir(sys, &["search", &a, "-c", "f", "--since", "last week"]);
        assert_eq!(code, Some(1));
        assert!(err.contains("--since") && err.contains("RFC 3339"), "{err}");

        let (code, out, err) = cbir(
            sys,
            &["search", &a, &bad, &b, "-c", "f", "-k", "3", "--json"],
        );
        assert_eq!(code, Some(2), "a failed query: exit 2; {err}");
        let v: Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
        let items = v["items"].as_array().expect("items");
        assert_eq!(items.len(), 3);
        assert!(
            items[1]["error"].is_string() && items[1]["response"].is_null(),
            "{v}"
        );
        assert_eq!(ids(&items[0]["response"]).len(), 3);
        assert_eq!(ids(&items[2]["response"]).len(), 3);
        let (code, out, err) = cbir(sys, &["search", &a, &b, "-c", "f", "-k", "2"]);
        assert_eq!(code, Some(0), "{err}");
        assert_eq!(out.matches("== ").count(), 2, "{out}");
    });
}
