//! With an internal token configured, the internal services answer only
//! callers that carry it (the gateway, training, the index's rebuilds);
//! health checks stay open for probes.

use cbir_api::v1 as pb;
use cbir_api::v1::index_service_client::IndexServiceClient;
use cbir_api::v1::inference_service_client::InferenceServiceClient;
use cbir_api::v1::training_service_client::TrainingServiceClient;
use tonic::transport::Channel;

use crate::system::{flowers_subset, System};

fn channel(addr: std::net::SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect_lazy()
}

fn with_token<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("x-internal-token", token.parse().expect("ascii"));
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_services_answer_only_callers_with_the_token() {
    let sys = System::start_with_token(Some("s3cret-internal"), |_| {}).await;
    let mut inf = InferenceServiceClient::new(channel(sys.inference_addr));
    let mut idx = IndexServiceClient::new(channel(sys.index_addr));
    let mut trn = TrainingServiceClient::new(channel(sys.training_addr));

    // Without the token, or with another: refused, saying what to do.
    let s = inf
        .get_model_info(pb::GetModelInfoRequest::default())
        .await
        .expect_err("no token");
    assert_eq!(s.code(), tonic::Code::Unauthenticated);
    assert!(s.message().contains("internal_token"), "{}", s.message());
    let s = idx
        .list_collections(with_token(pb::ListCollectionsRequest {}, "guess"))
        .await
        .expect_err("wrong token");
    assert_eq!(s.code(), tonic::Code::Unauthenticated);
    let s = trn
        .list_models(pb::ListModelsRequest {})
        .await
        .expect_err("no token");
    assert_eq!(s.code(), tonic::Code::Unauthenticated);
    // With it: answered.
    inf.get_model_info(with_token(
        pb::GetModelInfoRequest::default(),
        "s3cret-internal",
    ))
    .await
    .expect("inference with the token");
    // Health checks need no token (container and Kubernetes probes).
    let mut health =
        tonic_health::pb::health_client::HealthClient::new(channel(sys.inference_addr));
    let h = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "cbir.v1.InferenceService".into(),
        })
        .await
        .expect("health");
    assert_eq!(h.into_inner().status, 1);

    // Through the gateway everything works: it sends the token.
    let http = reqwest::Client::new();
    let base = sys.url();
    let files = flowers_subset(&sys.dir.path().join("up"), &["rose", "tulip"], 3);
    let mut form = reqwest::multipart::Form::new();
    for f in &files {
        let class = f
            .parent()
            .and_then(|p| p.file_name())
            .expect("class")
            .to_string_lossy();
        let name = f.file_name().expect("name").to_string_lossy();
        form = form.part(
            "files",
            reqwest::multipart::Part::bytes(std::fs::read(f).expect("read"))
                .file_name(format!("{class}/{name}")),
        );
    }
    let r = http
        .post(format!("{base}/api/collections/c/images?create=true"))
        .multipart(form)
        .send()
        .await
        .expect("upload");
    assert_eq!(r.status(), 200);
    let r = http
        .post(format!("{base}/api/search"))
        .json(&serde_json::json!({"collection": "c", "image_id": 1}))
        .send()
        .await
        .expect("search");
    assert_eq!(r.status(), 200);
    let r = http
        .get(format!("{base}/api/models"))
        .send()
        .await
        .expect("models");
    assert_eq!(r.status(), 200);
    // The index's rebuild calls inference with the token too.
    let r = http
        .post(format!("{base}/api/collections/c/rebuild"))
        .send()
        .await
        .expect("rebuild");
    assert_eq!(r.status(), 200);
    let op: serde_json::Value = r.json().await.expect("json");
    let id = op["operation_id"].as_str().expect("id").to_string();
    let mut rebuilt = false;
    for _ in 0..200 {
        let o: serde_json::Value = http
            .get(format!("{base}/api/operations/{id}"))
            .send()
            .await
            .expect("op")
            .json()
            .await
            .expect("json");
        match o["state"].as_str() {
            Some("succeeded") => {
                assert_eq!(o["done"], 6, "{o}");
                rebuilt = true;
                break;
            }
            Some("running" | "pending") => {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            _ => panic!("rebuild failed: {o}"),
        }
    }
    assert!(rebuilt, "the rebuild did not finish in 20 s");
    sys.shutdown().await;
}

fn health_client(
    addr: std::net::SocketAddr,
) -> tonic_health::pb::health_client::HealthClient<Channel> {
    tonic_health::pb::health_client::HealthClient::new(channel(addr))
}

async fn serving(addr: std::net::SocketAddr, service: &str) -> bool {
    let mut h = health_client(addr);
    for _ in 0..300 {
        if let Ok(r) = h
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
        {
            if r.into_inner().status == 1 {
                return true;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    false
}

/// Bound to every interface: what a container or a LAN host listens on.
async fn bind_all() -> (tokio::net::TcpListener, std::net::SocketAddr) {
    let l = tokio::net::TcpListener::bind("0.0.0.0:0")
        .await
        .expect("bind");
    let port = l.local_addr().expect("addr").port();
    (l, std::net::SocketAddr::from(([127, 0, 0, 1], port)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_services_refuse_to_listen_beyond_loopback_without_a_token_or_mutual_tls() {
    cbir_common::telemetry::init_for_tests();
    let dir = tempfile::tempdir().expect("tmp");
    let index_cfg = || cbir_index::Config {
        database_url: format!("sqlite://{}", dir.path().join("index.db").display()),
        inference_url: None,
        ..Default::default()
    };
    let training_cfg = cbir_training::Config {
        database_url: format!("sqlite://{}", dir.path().join("training.db").display()),
        data_dir: dir.path().join("training"),
        base_weights: cbir_inference::test_weights_path(),
        index_url: None,
        reconcile_ms: 0,
        ..Default::default()
    };
    let never = std::future::pending::<()>;
    let (l, _) = bind_all().await;
    let e = cbir_inference::serve(cbir_inference::Config::for_test(), l, never())
        .await
        .expect_err("open inference starts");
    let e = e.to_string();
    assert!(
        e.contains("INFERENCE_INTERNAL_TOKEN") && e.contains("tls.client_ca"),
        "{e}"
    );
    let (l, _) = bind_all().await;
    let e = cbir_index::serve(index_cfg(), l, never())
        .await
        .expect_err("open index starts")
        .to_string();
    assert!(
        e.contains("INDEX_INTERNAL_TOKEN") && e.contains("tls.client_ca"),
        "{e}"
    );
    let (l, _) = bind_all().await;
    let e = cbir_training::serve(training_cfg.clone(), l, never())
        .await
        .expect_err("open training starts")
        .to_string();
    assert!(e.contains("TRAINING_INTERNAL_TOKEN"), "{e}");
    assert!(
        !dir.path().join("index.db").exists(),
        "refused before touching the database"
    );

    // With mutual TLS: serves to clients with a certificate. (First: the
    // process keeps the first client TLS settings a service installs.)
    let tls = crate::system::TestTls::generate(dir.path());
    let (l, addr) = bind_all().await;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(cbir_index::serve(
        cbir_index::Config {
            tls: tls.internal(),
            ..index_cfg()
        },
        l,
        async move {
            let _ = stopped.await;
        },
    ));
    let mut last = Err(String::new());
    for _ in 0..100 {
        assert!(!task.is_finished(), "index with mutual TLS stopped");
        last = cbir_common::grpc::probe(&addr.to_string(), "cbir.v1.IndexService", &tls.internal())
            .await;
        if last.is_ok() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    last.expect("index with mutual TLS serves");
    let _ = stop.send(());
    task.await
        .expect("join")
        .expect("index with mutual TLS ran");
    // With a token instead: serves, and only to callers with it.
    let (l, addr) = bind_all().await;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(cbir_index::serve(
        cbir_index::Config {
            internal_token: Some("0123456789abcdef0123456789abcdef".into()),
            ..index_cfg()
        },
        l,
        async move {
            let _ = stopped.await;
        },
    ));
    assert!(
        serving(addr, "cbir.v1.IndexService").await,
        "index with a token"
    );
    let s = IndexServiceClient::new(channel(addr))
        .list_collections(pb::ListCollectionsRequest {})
        .await
        .expect_err("no token");
    assert_eq!(s.code(), tonic::Code::Unauthenticated);
    let _ = stop.send(());
    task.await.expect("join").expect("index with a token ran");
}

/// `cbir up`, a child process stopped (SIGTERM, then SIGKILL) when dropped.
struct Up(std::process::Child);

impl Drop for Up {
    fn drop(&mut self) {
        let pid = self.0.id().to_string();
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status();
        for _ in 0..300 {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cbir_up_makes_a_private_token_and_its_services_demand_it() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tmp");
    let data = dir.path().join("data");
    let ports: Vec<u16> = (0..4).map(|_| free_port()).collect();
    let addr = |i: usize| std::net::SocketAddr::from(([127, 0, 0, 1], ports[i]));
    let log = std::fs::File::create(dir.path().join("up.log")).expect("log");
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_cbir"));
    cmd.arg("up")
        .arg("--data-dir")
        .arg(&data)
        .args(["--inference-listen", &addr(0).to_string()])
        .args(["--index-listen", &addr(1).to_string()])
        .args(["--gateway-listen", &addr(2).to_string()])
        .args(["--training-listen", &addr(3).to_string()])
        .env(
            "INFERENCE_MODEL__WEIGHTS",
            cbir_inference::test_weights_path(),
        )
        .stdout(std::process::Stdio::null())
        .stderr(log);
    for v in [
        "CBIR_INTERNAL_TOKEN",
        "INFERENCE_INTERNAL_TOKEN",
        "INDEX_INTERNAL_TOKEN",
        "GATEWAY_INTERNAL_TOKEN",
        "TRAINING_INTERNAL_TOKEN",
    ] {
        cmd.env_remove(v);
    }
    let _up = Up(cmd.spawn().expect("cbir up starts"));
    let http = reqwest::Client::new();
    let gateway = format!("http://{}", addr(2));
    let mut healthy = false;
    for _ in 0..1200 {
        if let Ok(r) = http.get(format!("{gateway}/api/health")).send().await {
            if let Ok(v) = r.json::<serde_json::Value>().await {
                if v["status"] == "ok" {
                    healthy = true;
                    break;
                }
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        healthy,
        "cbir up did not become healthy: {}",
        std::fs::read_to_string(dir.path().join("up.log")).unwrap_or_default()
    );

    // The token: 256 random bits as hex, readable by the owner only.
    let file = data.join("internal-token");
    let token = std::fs::read_to_string(&file)
        .expect("token file")
        .trim()
        .to_string();
    assert_eq!(token.len(), 64, "{token}");
    assert!(token.bytes().all(|b| b.is_ascii_hexdigit()), "{token}");
    let mode = std::fs::metadata(&file).expect("meta").permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "mode {:o}", mode & 0o777);

    // Raw calls without it are refused by every internal service.
    let s = IndexServiceClient::new(channel(addr(1)))
        .clear(pb::ClearRequest {
            collection: "default".into(),
        })
        .await
        .expect_err("index without the token");
    assert_eq!(s.code(), tonic::Code::Unauthenticated, "{s:?}");
    let s = InferenceServiceClient::new(channel(addr(0)))
        .get_model_info(pb::GetModelInfoRequest::default())
        .await
        .expect_err("inference without the token");
    assert_eq!(s.code(), tonic::Code::Unauthenticated, "{s:?}");
    let s = TrainingServiceClient::new(channel(addr(3)))
        .list_models(pb::ListModelsRequest {})
        .await
        .expect_err("training without the token");
    assert_eq!(s.code(), tonic::Code::Unauthenticated, "{s:?}");
    // With it: answered.
    IndexServiceClient::new(channel(addr(1)))
        .list_collections(with_token(pb::ListCollectionsRequest {}, &token))
        .await
        .expect("index with the token");

    // The gateway has it: its pages reach all three.
    for path in ["/api/collections", "/api/models", "/api/model"] {
        let r = http
            .get(format!("{gateway}{path}"))
            .send()
            .await
            .expect(path);
        assert_eq!(r.status(), 200, "{path}");
    }

    // cbir classify calls inference directly, with the data folder's token.
    let image =
        crate::system::shared_data().join("imagenet-sample-300/n01440764/n01440764_tench.JPEG");
    let classify = |data_dir: &std::path::Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_cbir"))
            .args(["classify", "--json", "--inference"])
            .arg(format!("http://{}", addr(0)))
            .arg(&image)
            .env("CBIR_DATA_DIR", data_dir)
            .env_remove("CBIR_INTERNAL_TOKEN")
            .output()
            .expect("cbir classify runs")
    };
    let out = tokio::task::block_in_place(|| classify(&data));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("tench"));
    let out = tokio::task::block_in_place(|| classify(dir.path()));
    assert!(!out.status.success(), "classify without the token");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("internal_token"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_reloads_a_replica_whose_weights_differ_from_the_registry() {
    let token = "reconcile-test-token-0123456789";
    let sys = System::start_with_token(Some(token), |_| {}).await;
    let registry = TrainingServiceClient::new(channel(sys.training_addr))
        .get_model(with_token(
            pb::GetModelRequest {
                model: Some(pb::ModelRef {
                    name: "efficientnet-lite0".into(),
                    version: "imagenet".into(),
                }),
            },
            token,
        ))
        .await
        .expect("registry")
        .into_inner()
        .model
        .expect("model");
    assert_eq!(registry.weights_sha256.len(), 64);
    let mut inf = InferenceServiceClient::new(channel(sys.inference_addr))
        .max_encoding_message_size(64 << 20);
    let info = |inf: &mut InferenceServiceClient<Channel>| {
        let mut inf = inf.clone();
        async move {
            inf.get_model_info(with_token(pb::GetModelInfoRequest::default(), token))
                .await
                .expect("info")
                .into_inner()
                .info
                .expect("info")
        }
    };
    assert_eq!(info(&mut inf).await.weights_sha256, registry.weights_sha256);
    // Other weights under the active model's name (a replica given them by
    // hand, or by anyone with the token).
    let mut other = std::fs::read(cbir_inference::test_weights_path()).expect("weights");
    let n = other.len();
    other[n - 3] ^= 0x40;
    let other_sha = cbir_inference::backend::sha256_hex(&other);
    inf.load_model(with_token(
        pb::LoadModelRequest {
            model: registry.model.clone(),
            weights: Some(pb::load_model_request::Weights::Data(other)),
            weights_sha256: other_sha.clone(),
            ..Default::default()
        },
        token,
    ))
    .await
    .expect("other weights load");
    let served = info(&mut inf).await;
    assert_eq!(served.weights_sha256, other_sha);
    assert_eq!(served.model, registry.model, "same name");
    // The reconcile loop (every second here) compares hashes, not names.
    let mut back = false;
    for _ in 0..200 {
        if info(&mut inf).await.weights_sha256 == registry.weights_sha256 {
            back = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(back, "the registry's weights were not reloaded in 20 s");
    assert_eq!(info(&mut inf).await.model, registry.model);
    sys.shutdown().await;
}
