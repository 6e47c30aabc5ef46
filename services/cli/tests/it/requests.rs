//! Malformed requests at the gateway: every error answer of the REST API
//! is the JSON error shape; collection names that no URL can address (or
//! that no collection can have) are refused with 400 and leave the index
//! healthy; an upload part is refused as soon as it passes the per-image
//! limit, not after it was buffered whole.

use std::time::Duration;

use cbir_api::v1 as pb;
use cbir_api::v1::search_service_client::SearchServiceClient;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::system::System;

/// Asserts the JSON error shape `{"error": {"code", "message", "service"}}`.
async fn json_error(what: &str, r: reqwest::Response, status: u16) -> Value {
    assert_eq!(r.status(), status, "{what}");
    let ct = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap_or("").to_string())
        .unwrap_or_default();
    assert!(
        ct.starts_with("application/json"),
        "{what}: content-type {ct:?}"
    );
    let text = r.text().await.expect("body");
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{what}: {e}: {text}"));
    let e = &v["error"];
    assert!(
        e["code"].as_str().is_some_and(|c| !c.is_empty()),
        "{what}: {v}"
    );
    assert!(
        e["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{what}: {v}"
    );
    assert!(e.get("service").is_some(), "{what}: {v}");
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rest_error_is_json() {
    let sys = System::start(|c| c.limits.max_request_bytes = 1 << 20).await;
    let (http, base) = (sys.http(), sys.url());
    http.post(format!("{base}/api/collections"))
        .json(&json!({"name": "c"}))
        .send()
        .await
        .expect("create");
    let get = |p: &str| http.get(format!("{base}{p}"));
    let post = |p: &str| http.post(format!("{base}{p}"));
    let cases: Vec<(&str, reqwest::RequestBuilder, u16, &str)> = vec![
        ("unknown API route", get("/api/nowhere"), 404, "not_found"),
        ("unknown page", get("/nowhere/at/all"), 404, "not_found"),
        (
            "method not allowed",
            http.put(format!("{base}/api/collections")),
            405,
            "method_not_allowed",
        ),
        (
            "method not allowed on a UI asset",
            post("/assets/app.js"),
            405,
            "method_not_allowed",
        ),
        (
            "path parameter of the wrong type",
            get("/api/collections/c/images/not-a-number/thumbnail"),
            400,
            "invalid_argument",
        ),
        (
            "query parameter of the wrong type",
            post("/api/collections/c/images?create=maybe"),
            400,
            "invalid_argument",
        ),
        (
            "JSON that is not JSON",
            post("/api/collections")
                .header("content-type", "application/json")
                .body("{nope"),
            400,
            "invalid_argument",
        ),
        (
            "JSON as text/plain",
            post("/api/collections")
                .header("content-type", "text/plain")
                .body(r#"{"name":"x"}"#),
            415,
            "unsupported_media_type",
        ),
        (
            "JSON with an unknown field",
            post("/api/collections").json(&json!({"name": "x", "nope": 1})),
            400,
            "invalid_argument",
        ),
        (
            "body over the request limit",
            post("/api/collections")
                .header("content-type", "application/json")
                .body(vec![b' '; 2 << 20]),
            413,
            "payload_too_large",
        ),
        (
            "upload that is not multipart",
            post("/api/collections/c/images")
                .header("content-type", "application/json")
                .body("{}"),
            415,
            "unsupported_media_type",
        ),
        (
            "broken multipart",
            post("/api/collections/c/images")
                .header("content-type", "multipart/form-data; boundary=X")
                .body("--X\r\nnonsense"),
            400,
            "invalid_argument",
        ),
        (
            "operation id of no operation",
            get(&format!("/api/operations/{}", "z".repeat(3000))),
            404,
            "not_found",
        ),
        (
            "URL over the length limit",
            get(&format!("/api/collections/{}", "a".repeat(9000))),
            400,
            "invalid_argument",
        ),
    ];
    let n = cases.len();
    for (what, req, status, code) in cases {
        let r = req.send().await.unwrap_or_else(|e| panic!("{what}: {e}"));
        let v = json_error(what, r, status).await;
        assert_eq!(v["error"]["code"], code, "{what}: {v}");
    }
    eprintln!("{n} malformed requests, each answered with the JSON error shape");
    sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_collection_names_are_400_and_the_index_stays_healthy() {
    let sys = System::start(|_| {}).await;
    let (http, base) = (sys.http(), sys.url());
    let long = "a".repeat(200);
    let huge = "b".repeat(20_000);
    for name in [".", "..", "...", "a/b", "tab\there", &long] {
        let r = http
            .post(format!("{base}/api/collections"))
            .json(&json!({"name": name}))
            .send()
            .await
            .expect("create");
        let v = json_error(name, r, 400).await;
        assert_eq!(v["error"]["code"], "invalid_argument", "{v}");
        let msg = v["error"]["message"].as_str().expect("message");
        assert!(msg.len() < 300, "the message echoes the name whole: {msg}");
    }
    // Reads, uploads and clears of names no collection can have.
    for (what, req) in [
        ("stats", http.get(format!("{base}/api/collections/{long}"))),
        (
            "clear",
            http.post(format!("{base}/api/collections/{long}/clear")),
        ),
        (
            "upload",
            http.post(format!("{base}/api/collections/{long}/images?create=true"))
                .multipart(reqwest::multipart::Form::new().part(
                    "files",
                    reqwest::multipart::Part::bytes(vec![1, 2, 3]).file_name("x.jpg"),
                )),
        ),
        (
            "rebuild",
            http.post(format!("{base}/api/collections/{long}/rebuild")),
        ),
    ] {
        let r = req.send().await.expect(what);
        let v = json_error(what, r, 400).await;
        assert!(
            v["error"]["message"]
                .as_str()
                .expect("message")
                .contains("at most 128 bytes"),
            "{what}: {v}"
        );
    }
    // The public gRPC API, with a name far over any header limit.
    let mut client = SearchServiceClient::new(
        tonic::transport::Channel::from_shared(base.clone())
            .expect("uri")
            .connect()
            .await
            .expect("connect"),
    );
    for name in [long.as_str(), huge.as_str()] {
        let s = client
            .get_stats(pb::StatsRequest {
                collection: name.to_string(),
            })
            .await
            .expect_err("refused");
        assert_eq!(s.code(), tonic::Code::InvalidArgument, "{s:?}");
        let s = client
            .create_collection(pb::CreateGatewayCollectionRequest {
                name: name.to_string(),
                ..Default::default()
            })
            .await
            .expect_err("refused");
        assert_eq!(s.code(), tonic::Code::InvalidArgument, "{s:?}");
    }
    for name in ["..", "..."] {
        let s = client
            .create_collection(pb::CreateGatewayCollectionRequest {
                name: name.to_string(),
                ..Default::default()
            })
            .await
            .expect_err("refused");
        assert_eq!(s.code(), tonic::Code::InvalidArgument, "{s:?}");
    }
    // The index took no harm: healthy, and names that work still do.
    let v: Value = http
        .get(format!("{base}/api/health"))
        .send()
        .await
        .expect("health")
        .json()
        .await
        .expect("json");
    assert_eq!(v["status"], "ok", "{v}");
    let r = http
        .post(format!("{base}/api/collections"))
        .json(&json!({"name": "a.b-c_1"}))
        .send()
        .await
        .expect("create");
    assert_eq!(r.status(), 201);
    sys.shutdown().await;
}

/// Sends an upload whose one part never ends (chunked, the connection kept
/// open): the answer must come once the part passes the per-image limit.
async fn endless_part(addr: std::net::SocketAddr, path: &str, part_name: &str) -> String {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: multipart/form-data; boundary=B\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.expect("head");
    let chunk = |data: &[u8]| {
        let mut c = format!("{:x}\r\n", data.len()).into_bytes();
        c.extend_from_slice(data);
        c.extend_from_slice(b"\r\n");
        c
    };
    let preamble = format!(
        "--B\r\nContent-Disposition: form-data; name=\"{part_name}\"; filename=\"big.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n"
    );
    s.write_all(&chunk(preamble.as_bytes()))
        .await
        .expect("part");
    // 192 KiB, three times the limit, and then nothing more. The gateway
    // may answer and close before all of it is written: a write refused
    // then (broken pipe) ends the sending, and the answer is read.
    for _ in 0..12 {
        if s.write_all(&chunk(&[0xAB; 16 * 1024])).await.is_err() {
            break;
        }
    }
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let read = async {
        // A reset after the answer ends what can be read.
        while let Ok(n) = s.read(&mut buf).await {
            out.extend_from_slice(&buf[..n]);
            if n == 0 || String::from_utf8_lossy(&out).contains("}}") {
                break;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("answered before the part ended");
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_part_is_refused_before_it_ends() {
    let sys = System::start(|c| c.limits.max_image_bytes = 64 * 1024).await;
    let http = sys.http();
    http.post(format!("{}/api/collections", sys.url()))
        .json(&json!({"name": "c"}))
        .send()
        .await
        .expect("create");
    let answer = endless_part(sys.gateway_addr, "/api/search?collection=c", "image").await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("limit is 65536 bytes"), "{answer}");
    // In a batch, the oversized file fails alone (read and dropped, not
    // kept), and the others are answered one by one.
    let form = reqwest::multipart::Form::new()
        .part(
            "files",
            reqwest::multipart::Part::bytes(vec![0xAB; 192 * 1024]).file_name("set/x/big.jpg"),
        )
        .part(
            "files",
            reqwest::multipart::Part::bytes(b"not an image".to_vec()).file_name("set/x/t.jpg"),
        );
    let r = http
        .post(format!("{}/api/collections/c/images", sys.url()))
        .multipart(form)
        .send()
        .await
        .expect("upload");
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["failed"], 2, "{v}");
    let first = v["results"][0]["error"].as_str().expect("error");
    assert!(
        first.contains("too large") && first.contains("65536"),
        "{v}"
    );
    assert_eq!(v["results"][0]["file_name"], "big.jpg", "{v}");
    sys.shutdown().await;
}

/// Writes a request head and the start of its body, then stalls; the
/// answer, which must come within 10 s.
async fn stalled_body(addr: std::net::SocketAddr, head: &str, start: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(head.as_bytes()).await.expect("head");
    s.write_all(start).await.expect("body");
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let read = async {
        loop {
            let n = s.read(&mut buf).await.unwrap_or(0);
            out.extend_from_slice(&buf[..n]);
            if n == 0 || String::from_utf8_lossy(&out).contains("}}") {
                break;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("answered while the body stalls");
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_request_body_is_answered_408() {
    let sys = System::start(|c| c.timeouts.request_body_ms = 500).await;
    let addr = sys.gateway_addr;
    let t = std::time::Instant::now();
    let answer = stalled_body(
        addr,
        &format!(
            "POST /api/collections HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
        ),
        br#"{"name": "#,
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");
    let answer = stalled_body(
        addr,
        &format!(
            "POST /api/collections/c/images?create=true HTTP/1.1\r\nHost: {addr}\r\nContent-Type: multipart/form-data; boundary=B\r\nContent-Length: 100000\r\n\r\n"
        ),
        b"--B\r\nContent-Disposition: form-data; name=\"files\"; filename=\"a.jpg\"\r\n\r\nabc",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(t.elapsed() < Duration::from_secs(8), "{:?}", t.elapsed());
    sys.shutdown().await;
}
