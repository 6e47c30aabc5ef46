//! Attacks on the gateway's HTTP side (issue 13, items 3 and 4): cross-site
//! writes through a user's browser, DNS rebinding, framing, metric-label
//! flooding, slowloris connections, anonymous floods and a key holder
//! leaving its key out.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use cbir_api::v1 as pb;
use cbir_api::v1::search_service_client::SearchServiceClient;
use cbir_gateway::auth::{hash_key, ApiKey, Role};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::report;
use crate::system::{flowers_subset, System};

const EVIL: &str = "http://evil.example";

/// Asserts a JSON error answer with `status` and `code`; its message.
async fn refused(r: reqwest::Response, status: u16, code: &str) -> String {
    assert_eq!(r.status(), status, "{:?}", r.headers());
    let v: Value = r.json().await.expect("a JSON error");
    assert_eq!(v["error"]["code"], code, "{v}");
    v["error"]["message"].as_str().expect("message").to_string()
}

async fn count(http: &reqwest::Client, base: &str, coll: &str) -> u64 {
    let v: Value = http
        .get(format!("{base}/api/collections/{coll}"))
        .send()
        .await
        .expect("stats")
        .json()
        .await
        .expect("json");
    v["count"].as_u64().expect("count")
}

async fn collection_names(http: &reqwest::Client, base: &str) -> Vec<String> {
    let v: Value = http
        .get(format!("{base}/api/collections"))
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    v["collections"]
        .as_array()
        .expect("collections")
        .iter()
        .map(|c| c["name"].as_str().expect("name").to_string())
        .collect()
}

/// A page on another site clears a collection through the user's browser:
/// a form-like POST (`text/plain` JSON, no preflight) with the browser's
/// `Origin` and `Sec-Fetch-Site`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_site_clear_with_text_plain_json_is_refused() {
    let sys = System::start(|_| {}).await;
    let (http, base) = (sys.http(), sys.url());
    let files = flowers_subset(&sys.dir.path().join("up"), &["daisy"], 2);
    let mut form = reqwest::multipart::Form::new();
    for f in &files {
        form = form.part(
            "files",
            reqwest::multipart::Part::bytes(std::fs::read(f).expect("read"))
                .file_name("daisy/a.jpg")
                .mime_str("image/jpeg")
                .expect("mime"),
        );
    }
    let r = http
        .post(format!("{base}/api/collections/victim/images?create=true"))
        .header("origin", base.as_str())
        .header("sec-fetch-site", "same-origin")
        .multipart(form)
        .send()
        .await
        .expect("upload from the UI's own origin");
    assert_eq!(r.status(), 200);
    assert_eq!(count(&http, &base, "victim").await, 2);

    let r = http
        .post(format!("{base}/api/collections/victim/clear"))
        .header("origin", EVIL)
        .header("sec-fetch-site", "cross-site")
        .header("content-type", "text/plain;charset=UTF-8")
        .body(r#"{"confirm": true}"#)
        .send()
        .await
        .expect("clear");
    let msg = refused(r, 403, "forbidden").await;
    assert!(msg.contains("cross-site request refused"), "{msg}");
    // A browser that sends only Sec-Fetch-Site (no Origin) is refused too.
    let r = http
        .post(format!("{base}/api/collections/victim/clear"))
        .header("sec-fetch-site", "cross-site")
        .send()
        .await
        .expect("clear");
    refused(r, 403, "forbidden").await;
    let r = http
        .delete(format!("{base}/api/collections/victim"))
        .header("origin", EVIL)
        .send()
        .await
        .expect("delete");
    refused(r, 403, "forbidden").await;
    assert_eq!(
        count(&http, &base, "victim").await,
        2,
        "nothing was cleared"
    );
    report(
        "cross-site clear and delete through a browser (text/plain, Origin of another site)",
        "403, the collection keeps its 2 images",
    );
    sys.shutdown().await;
}

/// A page on another site creates a collection: JSON as `text/plain` (no
/// preflight), and as `application/json` from the other origin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_site_create_is_refused() {
    let sys = System::start(|_| {}).await;
    let (http, base) = (sys.http(), sys.url());
    let r = http
        .post(format!("{base}/api/collections"))
        .header("origin", EVIL)
        .header("sec-fetch-site", "cross-site")
        .header("content-type", "text/plain")
        .body(r#"{"name":"planted"}"#)
        .send()
        .await
        .expect("create");
    refused(r, 403, "forbidden").await;
    let r = http
        .post(format!("{base}/api/collections"))
        .header("origin", EVIL)
        .json(&json!({"name": "planted"}))
        .send()
        .await
        .expect("create");
    refused(r, 403, "forbidden").await;
    // Without a browser's headers, JSON still has to say it is JSON.
    let r = http
        .post(format!("{base}/api/collections"))
        .header("content-type", "text/plain")
        .body(r#"{"name":"planted"}"#)
        .send()
        .await
        .expect("create");
    let msg = refused(r, 415, "unsupported_media_type").await;
    assert!(msg.contains("application/json"), "{msg}");
    assert!(!collection_names(&http, &base)
        .await
        .contains(&"planted".to_string()));
    // The UI itself (same origin) and clients without browser headers
    // create collections as before.
    let r = http
        .post(format!("{base}/api/collections"))
        .header("origin", base.as_str())
        .header("sec-fetch-site", "same-origin")
        .json(&json!({"name": "mine"}))
        .send()
        .await
        .expect("create");
    assert_eq!(r.status(), 201);
    report(
        "cross-site create (text/plain JSON, and application/json from another origin)",
        "403 and 415, no collection created",
    );
    sys.shutdown().await;
}

/// A page whose DNS name was rebound to the gateway's address is the
/// gateway's origin for the browser; it names its own host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_rebinding_host_is_refused() {
    let sys = System::start(|_| {}).await;
    let (http, base) = (sys.http(), sys.url());
    let port = sys.gateway_addr.port();
    let rebound = format!("attacker.example:{port}");
    http.post(format!("{base}/api/collections"))
        .json(&json!({"name": "kept"}))
        .send()
        .await
        .expect("create");
    let r = http
        .get(format!("{base}/api/collections"))
        .header("host", rebound.as_str())
        .send()
        .await
        .expect("read");
    let msg = refused(r, 421, "misdirected_request").await;
    assert!(msg.contains("allowed_hosts"), "{msg}");
    let r = http
        .post(format!("{base}/api/collections/kept/clear"))
        .header("host", rebound.as_str())
        .header("origin", format!("http://{rebound}"))
        .header("sec-fetch-site", "same-origin")
        .send()
        .await
        .expect("clear");
    refused(r, 421, "misdirected_request").await;
    // gRPC names its host in :authority.
    let channel = tonic::transport::Endpoint::from_shared(base.clone())
        .expect("uri")
        .origin(format!("http://{rebound}").parse().expect("origin"))
        .connect()
        .await
        .expect("connect");
    let status = SearchServiceClient::new(channel)
        .list_collections(pb::ListCollectionsRequest {})
        .await
        .expect_err("refused");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    // The gateway's own names still work.
    for host in [format!("localhost:{port}"), format!("127.0.0.1:{port}")] {
        let r = http
            .get(format!("{base}/api/collections"))
            .header("host", host.as_str())
            .send()
            .await
            .expect("read");
        assert_eq!(r.status(), 200, "{host}");
    }
    assert!(collection_names(&http, &base)
        .await
        .contains(&"kept".to_string()));
    report(
        "DNS rebinding (Host of another name, REST and gRPC)",
        "421 / PERMISSION_DENIED",
    );
    sys.shutdown().await;
}

/// Another site frames the UI (clickjacking) or gets a response sniffed as
/// another type.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn framing_and_sniffing_headers_are_sent() {
    let sys = System::start(|_| {}).await;
    let (http, base) = (sys.http(), sys.url());
    for path in ["/", "/assets/app.js", "/api/collections", "/api/nowhere"] {
        let r = http.get(format!("{base}{path}")).send().await.expect("get");
        let h = r.headers();
        let csp = h["content-security-policy"].to_str().expect("csp");
        assert!(csp.contains("frame-ancestors 'none'"), "{path}: {csp}");
        assert!(csp.contains("script-src 'self'"), "{path}: {csp}");
        assert!(!csp.contains("unsafe-inline"), "{path}: {csp}");
        assert_eq!(h["x-frame-options"], "DENY", "{path}");
        assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(h["referrer-policy"], "no-referrer", "{path}");
    }
    report(
        "framing the UI from another site, content sniffing",
        "CSP frame-ancestors 'none', X-Frame-Options DENY, nosniff, no-referrer",
    );
    sys.shutdown().await;
}

async fn metrics_len(http: &reqwest::Client, url: &str) -> usize {
    http.get(url)
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text")
        .len()
}

/// Every unknown URL path and gRPC method became a new metrics label.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metric_label_flooding_leaves_metrics_bounded() {
    let sys = System::start(|c| c.auth.anonymous_rate_per_second = 0.0).await;
    let (http, base) = (sys.http(), sys.url());
    let gw_metrics = format!("{base}/metrics");
    let idx_metrics = format!("http://{}/metrics", sys.index_metrics_addr);
    // Warm every label a normal client uses once.
    for _ in 0..3 {
        http.get(format!("{base}/api/collections"))
            .send()
            .await
            .expect("list");
        http.get(format!("{base}/api/nowhere"))
            .send()
            .await
            .expect("404");
    }
    let before = (
        metrics_len(&http, &gw_metrics).await,
        metrics_len(&http, &idx_metrics).await,
    );
    let index = tonic::transport::Channel::from_shared(format!("http://{}", sys.index_addr))
        .expect("uri")
        .connect()
        .await
        .expect("index");
    let gateway = tonic::transport::Channel::from_shared(base.clone())
        .expect("uri")
        .connect()
        .await
        .expect("gateway");
    let mut sent = 0;
    for i in 0..1000u32 {
        let junk = format!("{:08x}", i.wrapping_mul(2_654_435_761));
        for path in [
            format!("/{junk}"),
            format!("/api/{junk}"),
            format!("/api/collections/{junk}/x/{junk}"),
        ] {
            let _ = http.get(format!("{base}{path}")).send().await;
            sent += 1;
        }
        if i % 4 == 0 {
            for ch in [&index, &gateway] {
                let mut grpc = tonic::client::Grpc::new(ch.clone());
                grpc.ready().await.expect("ready");
                let path: http::uri::PathAndQuery = format!("/cbir.v1.IndexService/M{junk}")
                    .parse()
                    .expect("path");
                let _ = grpc
                    .unary::<_, (), _>(tonic::Request::new(()), path, tonic_prost_codec())
                    .await;
                sent += 1;
            }
        }
    }
    let after = (
        metrics_len(&http, &gw_metrics).await,
        metrics_len(&http, &idx_metrics).await,
    );
    assert!(
        after.0 < before.0 + 8_000 && after.1 < before.1 + 8_000,
        "{sent} requests to random paths and methods grew the metrics from {before:?} to {after:?} bytes"
    );
    report(
        &format!("metric-label flooding ({sent} random paths and gRPC methods)"),
        &format!(
            "labelled `other`: gateway /metrics {} -> {} bytes, index {} -> {} bytes",
            before.0, after.0, before.1, after.1
        ),
    );
    sys.shutdown().await;
}

/// A codec that sends and receives empty messages.
fn tonic_prost_codec() -> tonic_prost::ProstCodec<(), ()> {
    tonic_prost::ProstCodec::default()
}

/// Writes `bytes` one at a time, `every` apart, until the peer closes;
/// the time that took, or `None` when all was sent.
async fn trickle(mut s: TcpStream, bytes: Vec<u8>, every: Duration) -> Option<Duration> {
    let t = Instant::now();
    for b in bytes {
        if s.write_all(&[b]).await.is_err() {
            return Some(t.elapsed());
        }
        tokio::time::sleep(every).await;
    }
    // Everything was sent: wait for the close.
    let mut buf = [0u8; 64];
    match tokio::time::timeout(Duration::from_secs(30), s.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => Some(t.elapsed()),
        _ => None,
    }
}

/// Reads until the peer closes; how long that took.
async fn closed_within(addr: SocketAddr, limit: Duration) -> Duration {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let t = Instant::now();
    let mut buf = [0u8; 64];
    loop {
        match tokio::time::timeout(limit, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return t.elapsed(),
            Ok(Ok(_)) => {}
            Err(_) => panic!("a silent connection to {addr} was still open after {limit:?}"),
        }
    }
}

/// Slowloris: connections that send their headers byte by byte hold every
/// slot of the gateway; a silent one holds a slot of the index.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_connections_are_dropped_and_others_answered() {
    let sys = System::start(|c| {
        c.connections.max_connections = 6;
        c.connections.header_read_timeout_ms = 1_000;
    })
    .await;
    let (http, base) = (sys.http(), sys.url());
    let headers = format!(
        "GET /api/collections HTTP/1.1\r\nHost: {}\r\nX-Pad: {}\r\n",
        sys.gateway_addr,
        "a".repeat(200)
    )
    .into_bytes();
    let mut slow = Vec::new();
    for _ in 0..6 {
        let s = TcpStream::connect(sys.gateway_addr).await.expect("connect");
        slow.push(tokio::spawn(trickle(
            s,
            headers.clone(),
            Duration::from_millis(100),
        )));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Every slot is taken: a normal client waits for one, then is answered.
    let t = Instant::now();
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        reqwest::Client::new()
            .get(format!("{base}/api/collections"))
            .send(),
    )
    .await
    .expect("answered while the slow clients hold the slots")
    .expect("request");
    assert_eq!(r.status(), 200);
    let waited = t.elapsed();
    let mut dropped = Vec::new();
    for task in slow {
        let d = task
            .await
            .expect("join")
            .expect("the slow client was dropped before its headers ended");
        assert!(d < Duration::from_secs(3), "dropped after {d:?}");
        dropped.push(d);
    }
    // The index (a tonic server): a connection that sends nothing is
    // dropped at its header-read deadline (10 s by default) while calls
    // on other connections go on.
    let idx = sys.index_addr;
    let silent = tokio::spawn(closed_within(idx, Duration::from_secs(20)));
    let mut client = cbir_api::v1::index_service_client::IndexServiceClient::new(
        tonic::transport::Channel::from_shared(format!("http://{idx}"))
            .expect("uri")
            .connect()
            .await
            .expect("index"),
    );
    client
        .list_collections(pb::ListCollectionsRequest {})
        .await
        .expect("index answers");
    let idx_dropped = silent.await.expect("join");
    assert!(
        idx_dropped >= Duration::from_secs(8) && idx_dropped < Duration::from_secs(15),
        "{idx_dropped:?}"
    );
    let r = http
        .get(format!("{base}/api/health"))
        .send()
        .await
        .expect("health");
    assert_eq!(r.status(), 200);
    report(
        "slowloris (6 connections sending headers byte by byte = every slot; a silent one at the index)",
        &format!(
            "gateway dropped them after {:.1}-{:.1} s, a normal client was answered after {:.1} s; index dropped its silent connection after {:.1} s",
            dropped.iter().min().expect("some").as_secs_f64(),
            dropped.iter().max().expect("some").as_secs_f64(),
            waited.as_secs_f64(),
            idx_dropped.as_secs_f64()
        ),
    );
    sys.shutdown().await;
}

fn key(name: &str, role: Role) -> ApiKey {
    ApiKey {
        name: name.into(),
        sha256: hash_key(&format!("secret-{name}")),
        role,
    }
}

/// Sends `n` reads from `client_ip` (through the trusted proxy's
/// X-Forwarded-For), with `api_key` when given; how many were answered 200
/// and how many 429 (each with a Retry-After).
async fn burst(
    http: &reqwest::Client,
    base: &str,
    client_ip: &str,
    api_key: Option<&str>,
    n: usize,
) -> (usize, usize) {
    let (mut ok, mut limited) = (0, 0);
    for _ in 0..n {
        let mut req = http
            .get(format!("{base}/api/collections"))
            .header("x-forwarded-for", client_ip);
        if let Some(k) = api_key {
            req = req.header("x-api-key", k);
        }
        let r = req.send().await.expect("request");
        match r.status().as_u16() {
            200 => ok += 1,
            429 => {
                let retry: u64 = r.headers()["retry-after"]
                    .to_str()
                    .expect("ascii")
                    .parse()
                    .expect("seconds");
                assert!(retry >= 1, "{retry}");
                let msg = refused(r, 429, "resource_exhausted").await;
                assert!(msg.contains("retry in"), "{msg}");
                limited += 1;
            }
            s => panic!("unexpected status {s}"),
        }
    }
    (ok, limited)
}

/// One address floods the gateway without a key; another address is not
/// slowed by it. Clients come through a trusted proxy (X-Forwarded-For).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_flood_is_limited_per_address() {
    let sys = System::start(|c| {
        c.auth.anonymous_rate_per_second = 2.0;
        c.auth.anonymous_burst = 10;
        c.auth.trusted_proxies = vec!["127.0.0.1".into()];
    })
    .await;
    let (http, base) = (sys.http(), sys.url());
    let (ok, limited) = burst(&http, &base, "203.0.113.7", None, 100).await;
    assert!(
        ok <= 15 && limited >= 85,
        "{ok} answered, {limited} limited"
    );
    let (other_ok, _) = burst(&http, &base, "203.0.113.8", None, 5).await;
    assert_eq!(other_ok, 5, "another address is not limited by the flood");
    // The proxy's own address (this machine) is not limited either, and
    // a client cannot claim it through the proxy.
    let mut local_ok = 0;
    for _ in 0..30 {
        let r = http
            .get(format!("{base}/api/collections"))
            .send()
            .await
            .expect("local");
        local_ok += usize::from(r.status() == 200);
    }
    assert_eq!(local_ok, 30, "loopback clients are the machine's own");
    let (spoofed, _) = burst(&http, &base, "127.0.0.1, 203.0.113.7", None, 5).await;
    assert_eq!(spoofed, 0, "the nearest untrusted address counts");
    // The gRPC API answers RESOURCE_EXHAUSTED to the flooding address.
    let mut client = SearchServiceClient::new(
        tonic::transport::Channel::from_shared(base.clone())
            .expect("uri")
            .connect()
            .await
            .expect("connect"),
    );
    let mut req = tonic::Request::new(pb::ListCollectionsRequest {});
    req.metadata_mut()
        .insert("x-forwarded-for", "203.0.113.7".parse().expect("value"));
    let status = client.list_collections(req).await.expect_err("limited");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    report(
        "anonymous flood from one address (100 requests, limit 2/s burst 10)",
        &format!("{limited} answered 429 with Retry-After; another address answered 5 of 5"),
    );
    sys.shutdown().await;
}

/// A key holder over its key's rate leaves the key out to get more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_less_bypass_of_a_key_limit_is_refused() {
    let sys = System::start(|c| {
        c.auth.keys = vec![key("reader", Role::Search)];
        c.auth.rate_per_second = 1.0;
        c.auth.burst = 5;
        c.auth.anonymous_rate_per_second = 1.0;
        c.auth.anonymous_burst = 5;
        c.auth.trusted_proxies = vec!["127.0.0.1".into()];
    })
    .await;
    let (http, base) = (sys.http(), sys.url());
    let holder = "198.51.100.20";
    let (with_key, limited) = burst(&http, &base, holder, Some("secret-reader"), 30).await;
    assert!(
        with_key <= 8 && limited >= 22,
        "{with_key} answered with the key"
    );
    let (without_key, limited_anon) = burst(&http, &base, holder, None, 30).await;
    assert!(
        without_key <= 8 && limited_anon >= 22,
        "{without_key} answered once the key was left out"
    );
    report(
        "key holder over its rate leaving the key out (30 + 30 requests, both limits 1/s burst 5)",
        &format!("{with_key} + {without_key} answered, the rest 429 with Retry-After"),
    );
    sys.shutdown().await;
}
