//! Browsing a collection (issue 15, item 2) through the real services:
//! pages in every order over REST, gRPC and the CLI with filters, label
//! counts in the stats, kept originals with their media type, answers held
//! to openapi.json, keys required, and bad requests refused with a 400.

use std::collections::HashSet;

use cbir_api::v1 as pb;
use cbir_api::v1::index_service_client::IndexServiceClient;
use cbir_api::v1::search_service_client::SearchServiceClient;
use cbir_gateway::auth::Role;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use tonic::transport::Channel;

use crate::images::{cbir, key, upload, Api};
use crate::system::{flowers_subset, System};

const LIST: &str = "/api/collections/{name}/images";
const ORIGINAL: &str = "/api/collections/{name}/images/{id}/original";
const STATS: &str = "/api/collections/{name}";
const READER: Option<&str> = Some("secret-reader");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browse_a_collection_over_rest_grpc_and_the_cli() {
    let sys = System::start(|c| {
        c.auth.keys = vec![
            key("reader", Role::Search),
            key("indexer", Role::Index),
            key("root", Role::Admin),
        ];
        c.auth.search_requires_key = true;
    })
    .await;
    let api = Api {
        http: reqwest::Client::new(),
        base: sys.url(),
    };
    let files = flowers_subset(&sys.dir.path().join("up"), &["daisy", "rose", "tulip"], 4);
    let ids = upload(&api, &files).await;
    assert_eq!(ids.len(), 12);

    rest_pages(&api, &ids).await;
    rest_filters_and_refusals(&api).await;
    originals(&api, &sys, &files, &ids).await;
    label_counts(&api, ids[0]).await;
    grpc(&sys, &ids).await;
    cli(&sys, &ids).await;
    sys.shutdown().await;
}

/// Every page of `query` over REST (`limit` 5), checked against the
/// document; the images in order.
async fn rest_all(api: &Api, query: &str) -> (Vec<Value>, u64) {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    let mut total = None;
    for _ in 0..100 {
        let mut path = format!("/api/collections/img/images?limit=5&{query}");
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let (status, v) = api.call(Method::GET, LIST, &path, READER, None).await;
        assert_eq!(status, 200, "{path}: {v}");
        let images = v["images"].as_array().expect("images");
        assert!(images.len() <= 5);
        out.extend(images.iter().cloned());
        let t = v["total"].as_u64().expect("total");
        assert_eq!(
            *total.get_or_insert(t),
            t,
            "the total holds from page to page"
        );
        match v["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return (out, t),
        }
    }
    panic!("{query}: the cursor does not advance");
}

async fn rest_pages(api: &Api, ids: &[u64]) {
    let want: HashSet<u64> = ids.iter().copied().collect();
    for (sort, field) in [
        ("time", "created_at_ms"),
        ("name", "file_name"),
        ("label", "label"),
    ] {
        for order in ["asc", "desc"] {
            let (images, total) = rest_all(api, &format!("sort={sort}&order={order}")).await;
            assert_eq!(total, 12);
            let got: Vec<u64> = images
                .iter()
                .map(|i| i["id"].as_u64().expect("id"))
                .collect();
            assert_eq!(got.len(), 12, "{sort} {order}: each image once");
            assert_eq!(got.iter().copied().collect::<HashSet<_>>(), want);
            for w in images.windows(2) {
                let (a, b) = (&w[0][field], &w[1][field]);
                let ok = match (a.as_str(), b.as_str()) {
                    (Some(x), Some(y)) if order == "asc" => x <= y,
                    (Some(x), Some(y)) => x >= y,
                    _ if order == "asc" => a.as_i64() <= b.as_i64(),
                    _ => a.as_i64() >= b.as_i64(),
                };
                assert!(ok, "{sort} {order}: {a} then {b}");
            }
        }
    }
    let (status, v) = api
        .call(
            Method::GET,
            LIST,
            "/api/collections/img/images",
            READER,
            None,
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        v["images"].as_array().expect("images").len(),
        12,
        "limit 50 by default"
    );
    assert!(v["next_cursor"].is_null());
}

async fn rest_filters_and_refusals(api: &Api) {
    for (query, n) in [
        ("label=daisy&label=rose", 8),
        ("not_label=daisy", 8),
        ("label=Daisy", 0),
        ("path_prefix=tulip/", 4),
        ("path_prefix=TULIP/", 0),
        ("from_ms=1", 12),
        ("to_ms=1", 0),
        ("label=daisy&sort=name&order=desc", 4),
    ] {
        let (images, total) = rest_all(api, query).await;
        assert_eq!((images.len(), total), (n, n as u64), "{query}");
        let labels: HashSet<&str> = images.iter().filter_map(|i| i["label"].as_str()).collect();
        match query {
            "label=daisy&label=rose" => assert_eq!(labels, HashSet::from(["daisy", "rose"])),
            "not_label=daisy" => assert_eq!(labels, HashSet::from(["rose", "tulip"])),
            q if q.starts_with("label=daisy&") => assert_eq!(labels, HashSet::from(["daisy"])),
            _ => {}
        }
    }
    let (_, first) = api
        .call(
            Method::GET,
            LIST,
            "/api/collections/img/images?sort=name&limit=2",
            READER,
            None,
        )
        .await;
    let cursor = first["next_cursor"].as_str().expect("a cursor").to_string();
    let bad = [
        ("sort=size", "sort must be time, name or label"),
        ("order=up", "order must be asc or desc"),
        ("limit=0", "limit must be 1 to 500"),
        ("limit=501", "limit must be 1 to 500"),
        ("from_ms=soon", "from_ms must be a whole number"),
        ("colour=red", "unknown parameter"),
        ("cursor=xyz", "cursor"),
        (&format!("sort=time&cursor={cursor}"), "made for sort name"),
        (
            &format!("sort=name&order=desc&cursor={cursor}"),
            "made for sort name ascending",
        ),
    ];
    for (query, says) in bad {
        let path = format!("/api/collections/img/images?{query}");
        let (status, v) = api.call(Method::GET, LIST, &path, READER, None).await;
        assert_eq!(status, 400, "{query}: {v}");
        let msg = v["error"]["message"].as_str().expect("message");
        assert!(msg.contains(says), "{query}: {msg}");
    }
    let (status, v) = api
        .call(
            Method::GET,
            LIST,
            "/api/collections/nope/images",
            READER,
            None,
        )
        .await;
    assert_eq!(status, 404, "{v}");
    for key in [None, Some("wrong")] {
        let (status, v) = api
            .call(Method::GET, LIST, "/api/collections/img/images", key, None)
            .await;
        assert_eq!(status, 401, "{key:?}: {v}");
    }
}

async fn originals(api: &Api, sys: &System, files: &[std::path::PathBuf], ids: &[u64]) {
    let one = format!("/api/collections/img/images/{}", ids[0]);
    let (status, v) = api
        .call(
            Method::GET,
            "/api/collections/{name}/images/{id}",
            &one,
            READER,
            None,
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let url = v["original_url"].as_str().expect("an original is kept");
    assert_eq!(url, format!("{one}/original"));
    // As an <img> would fetch it: the key in the query string.
    let r = api
        .http
        .get(format!("{}{url}?api_key=secret-reader", api.base))
        .send()
        .await
        .expect("original");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "image/jpeg");
    let body = r.bytes().await.expect("bytes");
    let file = std::fs::read(&files[0]).expect("read");
    if file.len() <= cbir_imaging::KEEP_ORIGINAL_BYTES {
        assert_eq!(&body[..], &file[..], "a small file is kept as it is");
    } else {
        assert!(body.starts_with(&[0xFF, 0xD8]), "a JPEG rendition");
    }
    let r = api
        .http
        .get(format!("{}{url}", api.base))
        .send()
        .await
        .expect("original");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "a key is needed");

    // An entry stored without a source (written straight to the index):
    // no original_url, and its original is a 404 naming why.
    let ch = Channel::from_shared(format!("http://{}", sys.index_addr))
        .expect("uri")
        .connect_lazy();
    let mut index = IndexServiceClient::new(ch);
    let stored = index
        .get_image(pb::GetImageRequest {
            collection: "img".into(),
            id: ids[0],
            include_feature: true,
            include_thumbnail: true,
            ..Default::default()
        })
        .await
        .expect("get")
        .into_inner()
        .image
        .expect("image");
    assert!(stored.has_source);
    let bare = index
        .upsert(pb::UpsertRequest {
            collection: "img".into(),
            records: vec![pb::ImageRecord {
                content_hash: "ab".repeat(32),
                file_name: "bare.jpg".into(),
                path: "bare/bare.jpg".into(),
                label: "bare".into(),
                ..stored
            }],
            replace: false,
        })
        .await
        .expect("upsert")
        .into_inner()
        .results[0]
        .id;
    let path = format!("/api/collections/img/images/{bare}");
    let (status, v) = api
        .call(
            Method::GET,
            "/api/collections/{name}/images/{id}",
            &path,
            READER,
            None,
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert!(v["original_url"].is_null(), "{v}");
    let (status, v) = api
        .call(
            Method::GET,
            ORIGINAL,
            &format!("{path}/original"),
            READER,
            None,
        )
        .await;
    assert_eq!(status, 404, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .expect("message")
            .contains("no kept original"),
        "{v}"
    );
    let (status, v) = api
        .call(
            Method::GET,
            ORIGINAL,
            "/api/collections/img/images/987654/original",
            READER,
            None,
        )
        .await;
    assert_eq!(status, 404, "{v}");
    let (_, v) = api
        .call(
            Method::GET,
            LIST,
            "/api/collections/img/images?label=bare",
            READER,
            None,
        )
        .await;
    assert_eq!(v["images"][0]["id"], bare);
    assert!(v["images"][0]["original_url"].is_null(), "{v}");
    let gone = index
        .delete(pb::DeleteRequest {
            collection: "img".into(),
            ids: vec![bare],
        })
        .await
        .expect("delete")
        .into_inner();
    assert_eq!(gone.deleted, 1);
}

async fn label_counts(api: &Api, id: u64) {
    let counts = |v: &Value| -> Vec<(String, u64)> {
        v["labels"]
            .as_array()
            .expect("labels")
            .iter()
            .map(|l| {
                (
                    l["label"].as_str().expect("label").to_string(),
                    l["count"].as_u64().expect("count"),
                )
            })
            .collect()
    };
    let (status, v) = api
        .call(Method::GET, STATS, "/api/collections/img", READER, None)
        .await;
    assert_eq!(status, 200, "{v}");
    let mut got = counts(&v);
    got.sort();
    assert_eq!(
        got,
        vec![("daisy".into(), 4), ("rose".into(), 4), ("tulip".into(), 4)]
    );
    let r = api
        .http
        .patch(format!("{}/api/collections/img/images/{id}", api.base))
        .header("x-api-key", "secret-indexer")
        .json(&serde_json::json!({"label": "rose"}))
        .send()
        .await
        .expect("relabel");
    assert_eq!(r.status(), 200);
    let (_, v) = api
        .call(Method::GET, STATS, "/api/collections/img", READER, None)
        .await;
    assert_eq!(counts(&v)[0], ("rose".into(), 5), "most first: {v}");
    let r = api
        .http
        .patch(format!("{}/api/collections/img/images/{id}", api.base))
        .header("x-api-key", "secret-indexer")
        .json(&serde_json::json!({"label": "daisy"}))
        .send()
        .await
        .expect("relabel back");
    assert_eq!(r.status(), 200);
}

async fn grpc(sys: &System, ids: &[u64]) {
    let ch = Channel::from_shared(sys.url()).expect("uri").connect_lazy();
    let mut c = SearchServiceClient::new(ch);
    let mut req = tonic::Request::new(pb::ListImagesRequest {
        collection: "img".into(),
        page_size: 5,
        ..Default::default()
    });
    let s = c.list_images(req).await.expect_err("no key");
    assert_eq!(s.code(), tonic::Code::Unauthenticated, "{s:?}");
    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        req = tonic::Request::new(pb::ListImagesRequest {
            collection: "img".into(),
            sort: pb::ImageSort::Name as i32,
            descending: true,
            page_size: 5,
            cursor: cursor.clone(),
            include_thumbnail: true,
            ..Default::default()
        });
        req.metadata_mut()
            .insert("x-api-key", "secret-reader".parse().expect("ascii"));
        let page = c.list_images(req).await.expect("ListImages").into_inner();
        assert_eq!(page.total, 12);
        for img in &page.images {
            assert!(
                img.thumbnail.starts_with(&[0xFF, 0xD8]),
                "thumbnails when asked"
            );
            assert!(img.has_source && img.source_image.is_empty());
            assert!(!img.predicted_name.is_empty());
            assert_eq!(img.collection, "img");
        }
        seen.extend(page.images);
        if page.next_cursor.is_empty() {
            break;
        }
        cursor = page.next_cursor;
    }
    let got: HashSet<u64> = seen.iter().map(|i| i.id).collect();
    assert_eq!(got, ids.iter().copied().collect::<HashSet<_>>());
    assert!(seen.windows(2).all(|w| w[0].file_name >= w[1].file_name));

    let mut req = tonic::Request::new(pb::GetStoredImageRequest {
        collection: "img".into(),
        id: ids[1],
        include_source: true,
        ..Default::default()
    });
    req.metadata_mut()
        .insert("x-api-key", "secret-reader".parse().expect("ascii"));
    let img = c.get_image(req).await.expect("GetImage").into_inner();
    assert!(img.source_image.starts_with(&[0xFF, 0xD8]), "the original");
    assert!(img.has_source);
}

async fn cli(sys: &System, ids: &[u64]) {
    let out_file = sys.dir.path().join("original.jpg");
    let o = out_file.display().to_string();
    let id = ids[2].to_string();
    tokio::task::block_in_place(|| {
        let ls = [
            "image", "ls", "img", "--sort", "name", "--limit", "5", "--all", "--json",
        ];
        let (ok, _, err) = cbir(sys, None, &ls);
        assert!(!ok, "a key is needed");
        assert!(err.contains("Unauthenticated"), "{err}");
        let (ok, out, err) = cbir(sys, READER, &ls);
        assert!(ok, "{err}");
        let lines: Vec<Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        assert_eq!(lines.len(), 12, "every page: {out}");
        assert!(lines
            .windows(2)
            .all(|w| w[0]["file_name"].as_str() <= w[1]["file_name"].as_str()));
        let (ok, out, err) = cbir(sys, READER, &["image", "ls", "img", "--label", "tulip"]);
        assert!(ok, "{err}");
        assert_eq!(out.lines().count(), 4, "{out}");
        assert!(err.contains("4 of 4 images"), "{err}");
        let (ok, out, err) = cbir(sys, READER, &["image", "ls", "img", "--limit", "5"]);
        assert!(ok, "{err}");
        assert_eq!(out.lines().count(), 5, "{out}");
        assert!(
            err.contains("5 of 12 images") && err.contains("--cursor"),
            "{err}"
        );
        let (ok, _, err) = cbir(sys, READER, &["image", "ls", "img", "--limit", "900"]);
        assert!(!ok);
        assert!(err.contains("page_size is 900"), "{err}");

        let (ok, _, err) = cbir(
            sys,
            READER,
            &["image", "get", &id, "-c", "img", "--original", &o],
        );
        assert!(ok, "{err}");
        assert!(std::fs::read(&out_file)
            .expect("original written")
            .starts_with(&[0xFF, 0xD8]));
    });
}
