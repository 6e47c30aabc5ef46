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
