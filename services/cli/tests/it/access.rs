//! Access control at the gateway: API keys with roles, over REST, gRPC and
//! the CLI; a rate limit per key.

use cbir_api::v1 as pb;
use cbir_api::v1::search_service_client::SearchServiceClient;
use cbir_gateway::auth::Role;
use serde_json::{json, Value};
use tonic::transport::Channel;

use crate::images::key;
use crate::system::{flowers_subset, System};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_with_roles_guard_every_protocol() {
    let sys = System::start(|c| {
        c.auth.keys = vec![
            key("reader", Role::Search),
            key("indexer", Role::Index),
            key("root", Role::Admin),
        ];
        c.auth.rate_per_second = 1.0;
        c.auth.burst = 40;
    })
    .await;
    let base = sys.url();
    let http = reqwest::Client::new();
    let files = flowers_subset(&sys.dir.path().join("up"), &["rose"], 3);
    let upload = |k: Option<&'static str>| {
        let http = http.clone();
        let url = format!("{base}/api/collections/c/images?create=true");
        let f = files[0].clone();
        async move {
            let form = reqwest::multipart::Form::new().part(
                "files",
                reqwest::multipart::Part::bytes(std::fs::read(&f).expect("read"))
                    .file_name("rose/a.jpg"),
            );
            let mut r = http.post(url).multipart(form);
            if let Some(k) = k {
                r = r.header("x-api-key", k);
            }
            r.send().await.expect("upload")
        }
    };
    // Indexing needs a key with the index role.
    let r = upload(None).await;
    assert_eq!(r.status(), 401);
    let e: Value = r.json().await.expect("json");
    assert_eq!(e["error"]["code"], "unauthenticated");
    assert!(
        e["error"]["message"]
            .as_str()
            .expect("m")
            .contains("index role"),
        "{e}"
    );
    let r = upload(Some("secret-reader")).await;
    assert_eq!(r.status(), 403);
    let r = upload(Some("wrong")).await;
    assert_eq!(r.status(), 401);
    let r = upload(Some("secret-indexer")).await;
    assert_eq!(r.status(), 200);
    // Searching is open by default; Bearer works as well as x-api-key.
    let r = http
        .post(format!("{base}/api/search"))
        .json(&json!({"collection": "c", "image_id": 1}))
        .send()
        .await
        .expect("search");
    assert_eq!(r.status(), 200);
    let thumb = http
        .get(format!("{base}/api/collections/c/images/1/thumbnail"))
        .send()
        .await
        .expect("thumb");
    assert_eq!(thumb.status(), 200);
    // Clearing needs admin.
    let r = http
        .post(format!("{base}/api/collections/c/clear"))
        .header("authorization", "Bearer secret-indexer")
        .send()
        .await
        .expect("clear");
    assert_eq!(r.status(), 403);
    let e: Value = r.json().await.expect("json");
    assert!(
        e["error"]["message"]
            .as_str()
            .expect("m")
            .contains("needs admin"),
        "{e}"
    );

    // Training, the registry's changes and rebuilds need admin; reading the
    // registry needs no more than search.
    for (method, path, body) in [
        (
            "POST",
            "/api/training/jobs",
            Some(json!({"name": "m", "server_path": "/tmp"})),
        ),
        ("POST", "/api/training/datasets?file_name=a.tar", None),
        (
            "POST",
            "/api/models/efficientnet-lite0/imagenet/activate",
            None,
        ),
        ("DELETE", "/api/models/efficientnet-lite0/imagenet", None),
        ("POST", "/api/collections/c/rebuild", None),
    ] {
        let req = |k: &str| {
            let r = match method {
                "DELETE" => http.delete(format!("{base}{path}")),
                _ => http.post(format!("{base}{path}")),
            };
            let r = r.header("x-api-key", k.to_string());
            match &body {
                Some(b) => r.json(b),
                None => r.body(Vec::new()),
            }
        };
        let r = req("secret-indexer").send().await.expect("request");
        assert_eq!(r.status(), 403, "{method} {path} with an index key");
    }
    let r = http
        .get(format!("{base}/api/models"))
        .header("x-api-key", "secret-reader")
        .send()
        .await
        .expect("models");
    assert_eq!(r.status(), 200);
    // Admin may: the rebuild of `c` starts.
    let r = http
        .post(format!("{base}/api/collections/c/rebuild"))
        .header("x-api-key", "secret-root")
        .send()
        .await
        .expect("rebuild");
    assert_eq!(r.status(), 200);

    // gRPC: the same rules through metadata.
    let ch = Channel::from_shared(base.clone())
        .expect("uri")
        .connect_lazy();
    let mut g = SearchServiceClient::new(ch);
    let s = g
        .clear_collection(pb::ClearRequest {
            collection: "c".into(),
        })
        .await
        .expect_err("no key");
    assert_eq!(s.code(), tonic::Code::Unauthenticated);
    let mut req = tonic::Request::new(pb::ClearRequest {
        collection: "c".into(),
    });
    req.metadata_mut()
        .insert("x-api-key", "secret-reader".parse().expect("ascii"));
    assert_eq!(
        g.clear_collection(req).await.expect_err("reader").code(),
        tonic::Code::PermissionDenied
    );
    let stats = g
        .get_stats(pb::StatsRequest {
            collection: "c".into(),
        })
        .await
        .expect("stats are open to search")
        .into_inner();
    assert_eq!(stats.count, 1);

    // The CLI sends CBIR_API_KEY.
    let add = |key: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_cbir"))
            .args(["index", "add", "-c", "c", "--json"])
            .arg(&files[1])
            .env("CBIR_GATEWAY_URL", &base)
            .env("CBIR_API_KEY", key)
            .output()
            .expect("cbir runs")
    };
    let out = tokio::task::block_in_place(|| add("secret-reader"));
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("PermissionDenied"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = tokio::task::block_in_place(|| add("secret-root"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // One key over its rate gets 429; another key is not affected.
    let mut limited = 0;
    for _ in 0..60 {
        let r = http
            .get(format!("{base}/api/collections/c"))
            .header("x-api-key", "secret-reader")
            .send()
            .await
            .expect("stats");
        if r.status() == 429 {
            limited += 1;
        }
    }
    assert!(limited > 0, "60 calls at once exceed a burst of 40");
    let r = http
        .get(format!("{base}/api/collections/c"))
        .header("x-api-key", "secret-root")
        .send()
        .await
        .expect("stats");
    assert_eq!(r.status(), 200);
    sys.shutdown().await;
}
