use std::path::PathBuf;

use cbir_api::v1::inference_service_client::InferenceServiceClient;
use tokio::sync::oneshot;
use tonic::transport::Channel;

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `CBIR_SHARED_DATA`, or `../shared/data` beside the repository.
pub fn shared_data() -> PathBuf {
    let dir = std::env::var_os("CBIR_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("../shared/data"));
    assert!(
        dir.join("imagenet-sample-300/labels.csv").is_file(),
        "the shared image sets are not at {}: set CBIR_SHARED_DATA to the folder holding \
         imagenet-sample-300/ and flowers5/",
        dir.display()
    );
    dir
}

pub fn weights() -> PathBuf {
    let w = cbir_inference::test_weights_path();
    assert!(
        w.is_file(),
        "weights {} missing: run scripts/setup.sh (converts the pretrained weights) or set CBIR_WEIGHTS",
        w.display()
    );
    w
}

/// Hex SHA-256 of `bytes`: what LoadModel requests must name.
pub fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

pub fn sha256_file(path: &std::path::Path) -> String {
    sha256(&std::fs::read(path).expect("read weights"))
}

pub fn read(rel: &str) -> Vec<u8> {
    let p = shared_data().join(rel);
    std::fs::read(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

/// `(relative path, ImageNet index)` of the 300 labelled images.
pub fn imagenet_labels() -> Vec<(String, i32)> {
    let csv = std::fs::read_to_string(shared_data().join("imagenet-sample-300/labels.csv"))
        .expect("labels.csv");
    csv.lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let cols: Vec<&str> = l.split(',').collect();
            (
                format!("imagenet-sample-300/{}", cols[0]),
                cols[2].parse().expect("class index"),
            )
        })
        .collect()
}

pub struct Server {
    pub client: InferenceServiceClient<Channel>,
    pub channel: Channel,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Server {
    pub async fn start(mut cfg: cbir_inference::Config) -> Self {
        cbir_common::telemetry::init_for_tests();
        cfg.model.weights = weights();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(cbir_inference::serve(cfg, listener, async move {
            let _ = rx.await;
        }));
        // The socket listens already; the service answers once the model is in.
        let channel = Channel::from_shared(format!("http://{addr}"))
            .expect("uri")
            .connect_lazy();
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
        let service = "cbir.v1.InferenceService".to_string();
        for _ in 0..600 {
            if let Ok(r) = health
                .check(tonic_health::pb::HealthCheckRequest {
                    service: service.clone(),
                })
                .await
            {
                if r.into_inner().status
                    == tonic_health::pb::health_check_response::ServingStatus::Serving as i32
                {
                    break;
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let client = InferenceServiceClient::new(channel.clone())
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20);
        Self {
            client,
            channel,
            stop: Some(stop),
            handle: Some(handle),
        }
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(h) = self.handle.take() {
            h.await.expect("join").expect("serve");
        }
    }
}
