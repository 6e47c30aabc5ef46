//! The gateway against real inference and index services: REST and gRPC
//! agree, outages give clear errors and recover, limits refuse bad input.

use std::path::PathBuf;
use std::time::Duration;

use cbir_api::v1 as pb;
use cbir_api::v1::search_service_client::SearchServiceClient;
use serde_json::{json, Value};
use tonic::transport::Channel;

use crate::system::{flowers_subset, System};

async fn grpc(sys: &System) -> SearchServiceClient<Channel> {
    let ch = Channel::from_shared(sys.url()).expect("uri").connect_lazy();
    SearchServiceClient::new(ch)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20)
}

fn file_part(path: &std::path::Path, name: &str) -> reqwest::multipart::Part {
    reqwest::multipart::Part::bytes(std::fs::read(path).expect("read"))
        .file_name(name.to_string())
        .mime_str("image/jpeg")
        .expect("mime")
}

/// Uploads `files` (labels = parent folder) as the browser does.
async fn upload(http: &reqwest::Client, base: &str, coll: &str, files: &[PathBuf]) -> Value {
    let mut form = reqwest::multipart::Form::new();
    for f in files {
        let class = f
            .parent()
            .and_then(|p| p.file_name())
            .expect("class")
            .to_string_lossy();
        let name = f.file_name().expect("name").to_string_lossy();
        form = form.part("files", file_part(f, &format!("set/{class}/{name}")));
    }
    let r = http
        .post(format!("{base}/api/collections/{coll}/images"))
        .multipart(form)
        .send()
        .await
        .expect("upload");
    assert_eq!(r.status(), 200);
    r.json().await.expect("json")
}

async fn rest_search(
    http: &reqwest::Client,
    base: &str,
    coll: &str,
    image: &std::path::Path,
    k: u32,
) -> reqwest::Response {
    let form = reqwest::multipart::Form::new()
        .part("image", file_part(image, "q.jpg"))
        .text("collection", coll.to_string())
        .text("top_k", k.to_string());
    http.post(format!("{base}/api/search"))
        .multipart(form)
        .send()
        .await
        .expect("search request")
}

/// Asserts an error answer: its status, and a message containing `needle`.
async fn expect_error(r: reqwest::Response, status: u16, needle: &str) -> Value {
    assert_eq!(r.status(), status);
    let e: Value = r.json().await.expect("json");
    let msg = e["error"]["message"].as_str().expect("message");
    assert!(msg.contains(needle), "{e}");
    e
}

/// A search answer's results in the order its `ranked_by` names:
/// distance, or (refined) the nearest first and then by score.
fn assert_ranked(answer: &Value) {
    let results = answer["results"].as_array().expect("results");
    let by_score = match answer["ranked_by"].as_str() {
        Some("distance") => false,
        Some("refined_score") => true,
        other => panic!("ranked_by {other:?}"),
    };
    let d = |r: &Value| r["distance"].as_f64().expect("distance");
    let score = |r: &Value| r["score"].as_f64().expect("score");
    for r in results {
        let s = r["similarity"].as_f64().expect("similarity");
        assert!(
            (s - 1.0 / (1.0 + d(r))).abs() < 1e-5,
            "similarity {s} = 1/(1+{})",
            d(r)
        );
    }
    if by_score {
        assert!(
            results.iter().all(|r| d(r) >= d(&results[0]) - 1e-6),
            "the nearest first"
        );
        for w in results[1..].windows(2) {
            assert!(
                score(&w[0]) >= score(&w[1]) - 1e-6,
                "sorted by score: {:?}",
                w
            );
        }
    } else {
        for w in results.windows(2) {
            assert!(d(&w[1]) >= d(&w[0]) - 1e-6, "sorted by distance: {:?}", w);
            assert_eq!(
                score(&w[0]),
                w[0]["similarity"].as_f64().expect("similarity")
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_and_grpc_agree_and_server_folders_index() {
    let roots = tempfile::tempdir().expect("tmp");
    let root_path = roots.path().to_path_buf();
    let sys = System::start(|c| c.allowed_roots = vec![root_path]).await;
    let base = sys.url();
    let http = reqwest::Client::new();
    let files = flowers_subset(&sys.dir.path().join("up"), &["daisy", "rose", "tulip"], 8);

    let r = http
        .post(format!("{base}/api/collections"))
        .json(&json!({"name": "flowers", "description": "test"}))
        .send()
        .await
        .expect("create");
    assert_eq!(r.status(), 201);
    let created: Value = r.json().await.expect("json");
    assert_eq!(created["dims"], 1280);
    assert_eq!(created["model"]["name"], "efficientnet-lite0");

    let up = upload(&http, &base, "flowers", &files).await;
    assert_eq!(up["added"], 24, "{up}");
    assert_eq!(up["failed"], 0);
    assert_eq!(up["results"][0]["error"], "");
    // The same images again: one entry each.
    let again = upload(&http, &base, "flowers", &files[..4]).await;
    assert!(again["results"]
        .as_array()
        .expect("results")
        .iter()
        .all(|r| r["created"] == false));
    let stats: Value = http
        .get(format!("{base}/api/collections/flowers"))
        .send()
        .await
        .expect("stats")
        .json()
        .await
        .expect("json");
    assert_eq!(stats["count"], 24, "{stats}");
    assert!(stats["partitions"]
        .as_array()
        .expect("parts")
        .iter()
        .all(|p| !p["class_name"].as_str().unwrap_or("").is_empty()));

    // REST upload and gRPC bytes give the same ranking.
    let query = &files[9];
    let r = rest_search(&http, &base, "flowers", query, 10).await;
    assert_eq!(r.status(), 200);
    let rest: Value = r.json().await.expect("json");
    let rest_hits = rest["results"].as_array().expect("results").clone();
    assert_eq!(rest_hits.len(), 10);
    assert_eq!(rest["mode"], "refined", "the default mode");
    assert_ranked(&rest);
    assert_eq!(rest_hits[0]["similarity"], 1.0, "the image itself first");
    assert!(!rest["query"]["predicted_name"]
        .as_str()
        .expect("name")
        .is_empty());
    let mut client = grpc(&sys).await;
    let g = client
        .search(pb::SearchRequest {
            query: Some(pb::search_request::Query::Image(
                std::fs::read(query).expect("read"),
            )),
            collection: "flowers".into(),
            top_k: 10,
            ..Default::default()
        })
        .await
        .expect("grpc search")
        .into_inner();
    assert_eq!(g.results.len(), rest_hits.len());
    for (a, b) in g.results.iter().zip(&rest_hits) {
        assert_eq!(a.id, b["id"].as_u64().expect("id"));
        assert!((f64::from(a.distance) - b["distance"].as_f64().expect("d")).abs() < 1e-6);
        assert_eq!(a.label, b["label"].as_str().expect("label"));
    }

    // The container health check (`cbir-gateway --probe`).
    cbir_common::grpc::probe(
        &sys.gateway_addr.to_string(),
        "cbir.v1.SearchService",
        &Default::default(),
    )
    .await
    .expect("probe");
    let free = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let nothing = free.local_addr().expect("addr").to_string();
    drop(free);
    let err = cbir_common::grpc::probe(&nothing, "cbir.v1.SearchService", &Default::default())
        .await
        .expect_err("nothing listens");
    assert!(err.contains("nothing answers"), "{err}");

    // gRPC health and reflection share the port with HTTP.
    let ch = Channel::from_shared(sys.url()).expect("uri").connect_lazy();
    let status = tonic_health::pb::health_client::HealthClient::new(ch.clone())
        .check(tonic_health::pb::HealthCheckRequest {
            service: "cbir.v1.SearchService".into(),
        })
        .await
        .expect("health")
        .into_inner()
        .status;
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    let mut refl =
        tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient::new(ch);
    let req = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            tonic_reflection::pb::v1::server_reflection_request::MessageRequest::ListServices(
                String::new(),
            ),
        ),
    };
    let mut answers = refl
        .server_reflection_info(futures::stream::iter(vec![req]))
        .await
        .expect("reflection")
        .into_inner();
    let answer = answers
        .message()
        .await
        .expect("answer")
        .expect("one answer");
    let listed = format!("{:?}", answer.message_response);
    assert!(listed.contains("cbir.v1.SearchService"), "{listed}");

    // Searching with a stored image (a click on a result), both ways.
    let id = rest_hits[3]["id"].as_u64().expect("id");
    let stored: Value = http
        .post(format!("{base}/api/search"))
        .json(&json!({"collection": "flowers", "image_id": id, "top_k": 5, "mode": "exact"}))
        .send()
        .await
        .expect("stored search")
        .json()
        .await
        .expect("json");
    let g = client
        .search(pb::SearchRequest {
            query: Some(pb::search_request::Query::Stored(pb::StoredImageQuery {
                collection: String::new(),
                id,
                exclude_self: false,
            })),
            collection: "flowers".into(),
            top_k: 5,
            mode: pb::SearchMode::Exact as i32,
            ..Default::default()
        })
        .await
        .expect("grpc stored")
        .into_inner();
    let ids: Vec<u64> = stored["results"]
        .as_array()
        .expect("r")
        .iter()
        .map(|r| r["id"].as_u64().expect("id"))
        .collect();
    assert_eq!(ids, g.results.iter().map(|r| r.id).collect::<Vec<_>>());
    assert_eq!(ids[0], id);
    assert_eq!(stored["mode"], "exact");

    // Thumbnails come back as JPEG.
    let t = http
        .get(format!(
            "{base}{}",
            rest_hits[0]["thumbnail_url"].as_str().expect("url")
        ))
        .send()
        .await
        .expect("thumb");
    assert_eq!(t.status(), 200);
    assert_eq!(t.headers()["content-type"], "image/jpeg");
    let bytes = t.bytes().await.expect("bytes");
    assert_eq!(&bytes[..2], &[0xFF, 0xD8]);

    // Prometheus metrics of every service.
    let scrape = |url: String| {
        let http = http.clone();
        async move {
            http.get(url)
                .send()
                .await
                .expect("scrape")
                .text()
                .await
                .expect("text")
        }
    };
    let gw = scrape(format!("{base}/metrics")).await;
    assert!(
        gw.contains(r#"cbir_requests_total{code="200",method="/api/search",service="gateway"}"#),
        "{gw}"
    );
    assert!(gw.contains("cbir_request_duration_seconds_bucket"), "{gw}");
    let inf = scrape(format!("http://{}/metrics", sys.inference_metrics_addr)).await;
    assert!(
        inf.contains(r#"cbir_inference_queue_depth{service="inference"} 0"#),
        "{inf}"
    );
    assert!(
        inf.contains(r#"method="/cbir.v1.InferenceService/EmbedImage",service="inference"}"#),
        "{inf}"
    );
    let images: f64 = inf
        .lines()
        .find(|l| l.starts_with("cbir_inference_images_total"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .expect("images counter");
    assert!(images >= 24.0, "{images}");
    let idx = scrape(format!("http://{}/metrics", sys.index_metrics_addr)).await;
    let stored: i64 = idx
        .lines()
        .filter(|l| l.starts_with(r#"cbir_index_vectors{collection="flowers""#))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<i64>().ok()))
        .sum();
    assert_eq!(stored, 24, "{idx}");

    // A server folder under the allowed roots, in the background.
    let folder = roots.path().join("more");
    let more = flowers_subset(&folder, &["sunflower"], 6);
    std::fs::write(folder.join("sunflower/notes.jpg"), b"not an image").expect("write");
    let r = http
        .post(format!("{base}/api/collections/flowers/index-jobs"))
        .json(&json!({"path": folder}))
        .send()
        .await
        .expect("job");
    assert_eq!(r.status(), 202);
    let job: Value = r.json().await.expect("json");
    let id = job["id"].as_str().expect("id").to_string();
    let mut last = Value::Null;
    for _ in 0..300 {
        last = http
            .get(format!("{base}/api/jobs/{id}"))
            .send()
            .await
            .expect("poll")
            .json()
            .await
            .expect("json");
        if last["state"] != "running" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(last["state"], "succeeded", "{last}");
    assert_eq!(last["done"], more.len() as u64);
    assert_eq!(last["failed"], 1);
    let reason = last["failures"][0]["reason"].as_str().expect("reason");
    assert!(reason.contains("not an image"), "{reason}");
    // Outside the roots: refused, nothing indexed.
    let r = http
        .post(format!("{base}/api/collections/flowers/index-jobs"))
        .json(&json!({"path": sys.dir.path()}))
        .send()
        .await
        .expect("job");
    expect_error(r, 403, "outside the allowed roots").await;
    let g = client
        .get_stats(pb::StatsRequest {
            collection: "flowers".into(),
        })
        .await
        .expect("stats")
        .into_inner();
    assert_eq!(g.count, 30);
    sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_service_down_gives_a_clear_error_then_recovers() {
    let mut sys = System::start(|_| {}).await;
    let base = sys.url();
    let http = reqwest::Client::new();
    let files = flowers_subset(&sys.dir.path().join("up"), &["daisy", "tulip"], 5);
    let up = {
        let r = http
            .post(format!("{base}/api/collections/f/images?create=true"))
            .multipart(files.iter().fold(reqwest::multipart::Form::new(), |f, p| {
                f.part(
                    "files",
                    file_part(
                        p,
                        &format!("x/{}", p.file_name().expect("n").to_string_lossy()),
                    ),
                )
            }))
            .send()
            .await
            .expect("upload");
        assert_eq!(r.status(), 200);
        r.json::<Value>().await.expect("json")
    };
    assert_eq!(up["added"], 10, "{up}");
    let query = &files[0];
    let mut client = grpc(&sys).await;
    let grpc_search = |client: &mut SearchServiceClient<Channel>| {
        let mut c = client.clone();
        let data = std::fs::read(query).expect("read");
        async move {
            c.search(pb::SearchRequest {
                query: Some(pb::search_request::Query::Image(data)),
                collection: "f".into(),
                top_k: 3,
                ..Default::default()
            })
            .await
        }
    };

    for service in ["inference", "index"] {
        if service == "inference" {
            sys.stop_inference().await;
        } else {
            sys.stop_index().await;
        }
        let r = rest_search(&http, &base, "f", query, 3).await;
        assert_eq!(r.status(), 503, "{service} down");
        let e: Value = r.json().await.expect("json");
        assert_eq!(e["error"]["code"], "unavailable");
        assert_eq!(e["error"]["service"], service);
        let msg = e["error"]["message"].as_str().expect("message");
        assert!(
            msg.contains(&format!("the {service} service is unavailable")),
            "{msg}"
        );
        let status = grpc_search(&mut client).await.expect_err("down");
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
        assert!(status.message().contains(service), "{}", status.message());
        let health: Value = http
            .get(format!("{base}/api/health"))
            .send()
            .await
            .expect("health")
            .json()
            .await
            .expect("json");
        assert_eq!(health["status"], "degraded");
        assert_eq!(health["services"][service]["ok"], false);
        if service == "inference" {
            // Stored-image searches need no inference.
            let r = http
                .post(format!("{base}/api/search"))
                .json(&json!({"collection": "f", "image_id": up["results"][0]["id"]}))
                .send()
                .await
                .expect("stored");
            assert_eq!(r.status(), 200);
            sys.start_inference().await;
        } else {
            sys.start_index().await;
        }
        sys.wait_healthy().await;
        let r = rest_search(&http, &base, "f", query, 3).await;
        assert_eq!(r.status(), 200, "{service} back");
        let ok: Value = r.json().await.expect("json");
        assert_eq!(ok["results"].as_array().expect("r").len(), 3);
        // The query is the first uploaded image; batch and single forward
        // passes differ in the last float bits.
        assert_eq!(ok["results"][0]["id"], up["results"][0]["id"]);
        assert!(ok["results"][0]["similarity"].as_f64().expect("s") > 0.999);
        let g = grpc_search(&mut client)
            .await
            .expect("grpc after recovery")
            .into_inner();
        assert_eq!(g.results.len(), 3);
    }
    sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_non_image_uploads_are_refused_clearly() {
    let sys = System::start(|c| {
        c.limits.max_image_bytes = 64 * 1024;
        c.limits.max_request_bytes = 1 << 20;
        c.limits.max_top_k = 100;
    })
    .await;
    let base = sys.url();
    let http = reqwest::Client::new();
    let dir = sys.dir.path().join("up");
    let files = flowers_subset(&dir, &["rose"], 12);
    let small: Vec<&PathBuf> = files
        .iter()
        .filter(|p| std::fs::metadata(p).expect("m").len() < 64 * 1024)
        .collect();
    let big = dir.join("big.jpg");
    {
        // A real JPEG over the per-image limit: the query re-encoded larger.
        let img = image_of(small[0]);
        let mut out = Vec::new();
        let enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 100);
        image::imageops::resize(&img, 900, 900, image::imageops::FilterType::Triangle)
            .write_with_encoder(enc)
            .expect("encode");
        assert!(out.len() > 64 * 1024);
        std::fs::write(&big, out).expect("write");
    }
    let text = dir.join("notes.jpg");
    std::fs::write(&text, b"hello, I am not an image").expect("write");

    // Empty and unknown collections first.
    let r = rest_search(&http, &base, "nowhere", small[0], 5).await;
    expect_error(r, 404, "create it first").await;
    http.post(format!("{base}/api/collections"))
        .json(&json!({"name": "c"}))
        .send()
        .await
        .expect("create");
    let r = rest_search(&http, &base, "c", small[0], 5).await;
    expect_error(r, 409, "is empty").await;

    // Per-image failures inside a batch; the good images still go in.
    let mut form = reqwest::multipart::Form::new();
    for p in [small[0], small[1], &big, &text] {
        form = form.part(
            "files",
            file_part(
                p,
                &format!("rose/{}", p.file_name().expect("n").to_string_lossy()),
            ),
        );
    }
    let r = http
        .post(format!("{base}/api/collections/c/images"))
        .multipart(form)
        .send()
        .await
        .expect("upload");
    assert_eq!(r.status(), 200);
    let up: Value = r.json().await.expect("json");
    assert_eq!(up["added"], 2, "{up}");
    assert_eq!(up["failed"], 2);
    let errs: Vec<&str> = up["results"]
        .as_array()
        .expect("r")
        .iter()
        .map(|r| r["error"].as_str().expect("e"))
        .collect();
    assert!(
        errs[2].contains("too large") && errs[2].contains("65536"),
        "{errs:?}"
    );
    assert!(errs[3].contains("not an image"), "{errs:?}");

    // Queries: too large, not an image, over the request limit, wrong type, bad top_k.
    let r = rest_search(&http, &base, "c", &big, 5).await;
    expect_error(r, 413, "limit is 65536 bytes").await;
    let r = rest_search(&http, &base, "c", &text, 5).await;
    expect_error(r, 400, "not an image").await;
    let huge = vec![0u8; 2 << 20];
    let r = http
        .post(format!("{base}/api/search"))
        .multipart(reqwest::multipart::Form::new().part(
            "image",
            reqwest::multipart::Part::bytes(huge).file_name("h.jpg"),
        ))
        .send()
        .await
        .expect("huge");
    assert_eq!(r.status(), 413);
    let e: Value = r.json().await.expect("json");
    assert_eq!(e["error"]["code"], "payload_too_large");
    let msg = e["error"]["message"].as_str().expect("message");
    assert!(msg.contains("over the limit of 1048576 bytes"), "{msg}");
    let r = http
        .post(format!("{base}/api/search"))
        .body("x")
        .header("content-type", "text/plain")
        .send()
        .await
        .expect("text");
    assert_eq!(r.status(), 415);
    let r = rest_search(&http, &base, "c", small[0], 101).await;
    expect_error(r, 400, "top_k 101 is over the limit of 100").await;
    let r = http
        .post(format!("{base}/api/collections"))
        .body("{nope")
        .header("content-type", "application/json")
        .send()
        .await
        .expect("bad json");
    assert_eq!(r.status(), 400);

    // gRPC gets the same refusals.
    let mut client = grpc(&sys).await;
    let s = client
        .search(pb::SearchRequest {
            query: Some(pb::search_request::Query::Image(b"nope".to_vec())),
            collection: "c".into(),
            ..Default::default()
        })
        .await
        .expect_err("not an image");
    assert_eq!(s.code(), tonic::Code::InvalidArgument);

    // Nothing was lost or half written: exactly the two good images.
    let r = rest_search(&http, &base, "c", small[0], 10).await;
    assert_eq!(r.status(), 200);
    let ok: Value = r.json().await.expect("json");
    assert_eq!(ok["results"].as_array().expect("r").len(), 2);
    sys.shutdown().await;
}

fn image_of(p: &std::path::Path) -> image::RgbImage {
    cbir_imaging::decode(
        &std::fs::read(p).expect("read"),
        &cbir_imaging::Limits::default(),
    )
    .expect("decode")
    .image
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn searches_balance_over_inference_replicas_and_survive_losing_one() {
    // A second inference replica on a port chosen before the gateway starts.
    let reserved = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    reserved.set_nonblocking(true).expect("nonblocking");
    let second = reserved.local_addr().expect("addr");
    let sys = System::start(|c| c.inference_urls.push(format!("http://{second}"))).await;
    let mut cfg = cbir_inference::Config::for_test();
    cfg.batcher.max_queue_delay_us = 2_000;
    let listener = tokio::net::TcpListener::from_std(reserved).expect("listener");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let replica = tokio::spawn(cbir_inference::serve(cfg, listener, async move {
        let _ = stopped.await;
    }));
    let base = sys.url();
    let http = reqwest::Client::new();
    let files = flowers_subset(&sys.dir.path().join("up"), &["daisy", "rose"], 6);
    let up = {
        let form = files.iter().fold(reqwest::multipart::Form::new(), |f, p| {
            f.part(
                "files",
                file_part(
                    p,
                    &format!("x/{}", p.file_name().expect("n").to_string_lossy()),
                ),
            )
        });
        let r = http
            .post(format!("{base}/api/collections/r/images?create=true"))
            .multipart(form)
            .send()
            .await
            .expect("upload");
        r.json::<Value>().await.expect("json")
    };
    assert_eq!(up["added"], 12, "{up}");

    let served = |addr: std::net::SocketAddr| async move {
        let ch = Channel::from_shared(format!("http://{addr}"))
            .expect("uri")
            .connect_lazy();
        cbir_api::v1::inference_service_client::InferenceServiceClient::new(ch)
            .get_model_info(pb::GetModelInfoRequest::default())
            .await
            .expect("model info")
            .into_inner()
            .batcher
            .expect("batcher stats")
            .images
    };
    let start = (served(sys.inference_addr).await, served(second).await);
    // Searches in four streams; the replica goes away a third of the way in.
    let mut streams = Vec::new();
    for s in 0..4 {
        let (http, base, files) = (http.clone(), base.clone(), files.clone());
        streams.push(tokio::spawn(async move {
            let mut statuses = Vec::new();
            for i in 0..15 {
                let r = rest_search(&http, &base, "r", &files[(s * 3 + i) % files.len()], 5).await;
                let status = r.status().as_u16();
                if status != 200 {
                    eprintln!("search failed: {}", r.text().await.unwrap_or_default());
                }
                statuses.push(status);
            }
            statuses
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = (served(sys.inference_addr).await, served(second).await);
    let _ = stop.send(());
    let mut statuses = Vec::new();
    for s in streams {
        statuses.extend(s.await.expect("stream"));
    }
    assert_eq!(statuses.len(), 60);
    assert!(
        statuses.iter().all(|&s| s == 200),
        "every search answered: {statuses:?}"
    );
    assert!(
        before.0 > start.0 && before.1 > start.1,
        "both replicas served searches: {start:?} then {before:?}"
    );
    let _ = tokio::time::timeout(Duration::from_secs(10), replica).await;
    sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_finishes_the_searches_in_flight() {
    let mut sys = System::start(|_| {}).await;
    let base = sys.url();
    let http = reqwest::Client::new();
    let files = flowers_subset(&sys.dir.path().join("up"), &["tulip"], 4);
    let form = files.iter().fold(reqwest::multipart::Form::new(), |f, p| {
        f.part(
            "files",
            file_part(
                p,
                &format!("t/{}", p.file_name().expect("n").to_string_lossy()),
            ),
        )
    });
    let r = http
        .post(format!("{base}/api/collections/g/images?create=true"))
        .multipart(form)
        .send()
        .await
        .expect("upload");
    assert_eq!(r.status(), 200);
    // Open the connections first, so that every search below is accepted
    // before the stop.
    let clients: Vec<reqwest::Client> = (0..24).map(|_| reqwest::Client::new()).collect();
    for c in &clients {
        let r = c
            .get(format!("{base}/api/config"))
            .send()
            .await
            .expect("warm");
        assert_eq!(r.status(), 200);
    }
    let mut searches = Vec::new();
    for (i, c) in clients.into_iter().enumerate() {
        let (base, f) = (base.clone(), files[i % files.len()].clone());
        searches.push(tokio::spawn(async move {
            let r = rest_search(&c, &base, "g", &f, 3).await;
            (r.status().as_u16(), std::time::Instant::now())
        }));
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    let stop_at = std::time::Instant::now();
    sys.stop_gateway().await;
    let mut after_stop = 0;
    for s in searches {
        let (status, done) = s.await.expect("search task");
        assert_eq!(status, 200, "a search in flight was cut by the stop");
        after_stop += usize::from(done > stop_at);
    }
    eprintln!("{after_stop} of 24 searches finished after the stop began");
    assert!(
        after_stop > 0,
        "no search was still running at the stop: the test proves nothing"
    );
    // Stopped means stopped: new requests are refused.
    assert!(http.get(format!("{base}/api/config")).send().await.is_err());
    sys.shutdown().await;
}
