//! The training service: fine-tunes EfficientNet-Lite0 on a user's labeled
//! folders, keeps the model registry in the database and activates models
//! (inference hot swap, then a rebuild of the collections).

pub mod activation;
pub mod augment;
pub use cbir_dataset as dataset;
pub mod datasets;
pub mod error;
pub mod metrics;
pub mod queue;
pub mod registry;
pub mod service;
pub mod store;
pub mod trainer;
pub mod training;

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use cbir_api::v1::training_service_server::TrainingServiceServer;
use cbir_common::service::{GrpcKit, Spec};
use cbir_common::telemetry::TelemetryConfig;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

pub use error::{Error, Result};
pub use training::Training;

/// The names the service kit needs (binary, environment, health check).
pub const SPEC: Spec =
    cbir_common::service_spec!("training", "TRAINING_", "cbir.v1.TrainingService");
/// Environment prefix: `TRAINING_DATABASE_URL=mysql://...`.
pub const ENV_PREFIX: &str = SPEC.env_prefix;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub listen: String,
    /// sqlite://PATH or mysql://user:password@host:3306/database (may be the
    /// index's database: the tables do not collide).
    pub database_url: String,
    /// Uploaded archives and their unpacked datasets.
    pub data_dir: PathBuf,
    /// The pretrained weights every fine-tune starts from; registered as
    /// efficientnet-lite0:imagenet on first start.
    pub base_weights: PathBuf,
    /// Server folders that jobs may read (links resolved); none by default.
    #[serde(deserialize_with = "cbir_common::config::list")]
    pub allowed_roots: Vec<PathBuf>,
    /// The inference service: a URL whose host may resolve to several
    /// replicas, each gets an activated model.
    pub inference_url: String,
    /// The index service, to rebuild collections on activation.
    pub index_url: Option<String>,
    /// `cpu`, `cuda`, `cuda:N` or `auto` (CUDA when present).
    pub device: String,
    /// libtorch threads of the training thread; 0 leaves libtorch's default.
    pub threads: usize,
    /// Niceness of the training thread (0..19): searches come first.
    pub nice: i32,
    /// Defaults of job parameters a request leaves at zero.
    pub defaults: trainer::Params,
    pub archive: dataset::ArchiveLimits,
    pub max_upload_bytes: u64,
    /// Disk quota of the uploaded datasets (unpacked) and the uploads in
    /// progress together: an upload that would go over it is refused
    /// (RESOURCE_EXHAUSTED, 507 at the gateway).
    pub max_datasets_bytes: u64,
    /// An uploaded dataset no job has used is deleted after this long; one
    /// a job used is deleted when its last job ends.
    pub dataset_ttl_s: u64,
    pub image_limits: cbir_imaging::Limits,
    /// How often every inference replica is checked to serve the active
    /// model (a restarted replica comes back with its configured one); 0 off.
    pub reconcile_ms: u64,
    pub max_message_bytes: usize,
    pub metrics_listen: Option<String>,
    /// The internal services' shared secret; see
    /// [`ServiceConfig::internal_token`](cbir_common::service::ServiceConfig::internal_token).
    pub internal_token: Option<String>,
    /// TLS of this service's port and of its calls to `https://` URLs;
    /// off unless `tls.cert` is set.
    pub tls: cbir_common::tls::TlsConfig,
    /// Connection cap and timeouts of this service's port.
    pub connections: cbir_common::conn::ConnectionConfig,
    pub telemetry: TelemetryConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:50053".into(),
            database_url: "sqlite://data/training.db".into(),
            data_dir: PathBuf::from("data/training"),
            base_weights: PathBuf::from("data/models/efficientnet-lite0-imagenet.safetensors"),
            allowed_roots: Vec::new(),
            inference_url: "http://127.0.0.1:50051".into(),
            index_url: Some("http://127.0.0.1:50052".into()),
            device: "auto".into(),
            threads: 0,
            nice: 10,
            defaults: trainer::Params::default(),
            archive: dataset::ArchiveLimits::default(),
            max_upload_bytes: 4 << 30,
            max_datasets_bytes: 16 << 30,
            dataset_ttl_s: 24 * 3600,
            image_limits: cbir_imaging::Limits::default(),
            reconcile_ms: 10_000,
            max_message_bytes: cbir_common::grpc::DEFAULT_MAX_MESSAGE_BYTES,
            metrics_listen: None,
            internal_token: None,
            tls: Default::default(),
            connections: Default::default(),
            telemetry: TelemetryConfig::default(),
        }
    }
}

cbir_common::service_config!(Config, ENV_PREFIX);

/// The libtorch device named by the config.
pub fn device(name: &str) -> Result<tch::Device> {
    match name.trim() {
        "cpu" => Ok(tch::Device::Cpu),
        "auto" => Ok(tch::Device::cuda_if_available()),
        "cuda" => Ok(tch::Device::Cuda(0)),
        other => other
            .strip_prefix("cuda:")
            .and_then(|n| n.parse().ok())
            .map(tch::Device::Cuda)
            .ok_or_else(|| {
                Error::Config(format!(
                    "unknown device {other:?}: use cpu, cuda, cuda:N or auto"
                ))
            }),
    }
}

/// Connects, migrates, registers the pretrained model, starts the job queue
/// and the inference reconcile loop, then serves gRPC until `shutdown`; a
/// running job is cancelled (and marked so) at shutdown.
pub async fn serve(
    cfg: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let kit = GrpcKit::check(&SPEC, &cfg, &listener)?;
    device(&cfg.device)?;
    let reconcile_every = cfg.reconcile_ms;
    // Expired datasets are looked for twice per lifetime, at most every
    // minute.
    let sweep_every = Duration::from_secs((cfg.dataset_ttl_s / 2).clamp(1, 60));
    let max_message = cfg.max_message_bytes;
    let metrics_listen = cfg.metrics_listen.clone();
    let training = Training::open(cfg).await?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let queue = tokio::spawn(training.clone().run_queue(stop_rx.clone()));
    if reconcile_every > 0 {
        training.spawn_reconcile(reconcile_every, &stop_rx);
    }
    training.spawn_sweeper(sweep_every, &stop_rx);
    let metrics = training.metrics.metrics.clone();
    let _metrics_server = cbir_common::metrics::start_if(metrics_listen.as_deref(), &metrics).await;
    let svc = TrainingServiceServer::new(service::TrainingGrpc(training.clone()))
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(max_message);
    kit.serve(listener, svc, metrics, shutdown).await?;
    let _ = stop_tx.send(true);
    let _ = queue.await;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn default_config_deserialises() {
        let cfg: super::Config =
            cbir_common::config::load("TRAINING_TEST_NONE_", None).expect("defaults load");
        assert_eq!(cfg, super::Config::default());
    }

    #[test]
    fn shipped_config_file_loads() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../deploy/config/training.toml");
        let cfg = super::Config::load(Some(&path)).expect("deploy/config/training.toml loads");
        assert_eq!(cfg.listen, "0.0.0.0:50053");
        assert_eq!(cfg.defaults, super::trainer::Params::default());
    }
}
