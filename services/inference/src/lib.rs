//! The inference service: decodes images and runs EfficientNet-Lite0 with
//! dynamic batching, on the CPU or CUDA.

pub mod backend;
pub mod batcher;
pub mod engine;
pub mod error;
pub mod model;
pub mod onnx;
pub mod priority;
pub mod service;
pub mod swap;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use cbir_api::v1::inference_service_server::InferenceServiceServer;
use cbir_common::service::{GrpcKit, Spec};
use cbir_common::telemetry::TelemetryConfig;
use cbir_imaging::Limits;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

pub use backend::{build_backend, DeviceConfig, Engine, ModelSpec, TchBackend};
pub use batcher::{Backend, Batcher, BatcherConfig};
pub use engine::Inference;
pub use error::{Error, Result};
pub use onnx::OrtBackend;
pub use priority::Priority;

/// The names the service kit needs (binary, environment, health check).
pub const SPEC: Spec =
    cbir_common::service_spec!("inference", "INFERENCE_", "cbir.v1.InferenceService");
/// Environment prefix: `INFERENCE_BATCHER__MAX_BATCH_SIZE=64`.
pub const ENV_PREFIX: &str = SPEC.env_prefix;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    pub name: String,
    pub version: String,
    /// safetensors weights of EfficientNet-Lite0.
    pub weights: PathBuf,
    /// One class name per line; empty for the ImageNet classes.
    pub class_names_file: Option<PathBuf>,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            name: "efficientnet-lite0".into(),
            version: "imagenet".into(),
            weights: PathBuf::from("data/models/efficientnet-lite0-imagenet.safetensors"),
            class_names_file: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address `main` binds; tests pass their own listener.
    pub listen: String,
    pub model: ModelConfig,
    /// The only folder LoadModel may read weights from by path (links out
    /// of it refused); the folder of `model.weights` when unset. Weights
    /// sent as data need no folder.
    pub model_dir: Option<PathBuf>,
    pub device: DeviceConfig,
    pub batcher: BatcherConfig,
    pub limits: Limits,
    /// Most images in one Embed call.
    pub max_images_per_request: usize,
    /// Address of the Prometheus `/metrics` endpoint; none when unset.
    pub metrics_listen: Option<String>,
    /// Images decoded at once; 0 = twice the cores.
    pub decode_concurrency: usize,
    pub max_message_bytes: usize,
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
            listen: "127.0.0.1:50051".into(),
            model: ModelConfig::default(),
            model_dir: None,
            device: DeviceConfig::default(),
            batcher: BatcherConfig::default(),
            limits: Limits::default(),
            max_images_per_request: 256,
            metrics_listen: None,
            decode_concurrency: 0,
            max_message_bytes: cbir_common::grpc::DEFAULT_MAX_MESSAGE_BYTES,
            internal_token: None,
            tls: Default::default(),
            connections: Default::default(),
            telemetry: TelemetryConfig::default(),
        }
    }
}

cbir_common::service_config!(Config, ENV_PREFIX);

impl Config {
    /// For tests: the weights from `CBIR_WEIGHTS` or the repository's data
    /// folder, small queues, no waiting for fuller batches.
    pub fn for_test() -> Self {
        let mut cfg = Self::default();
        cfg.model.weights = test_weights_path();
        cfg
    }
}

/// `CBIR_WEIGHTS`, or `data/models/...` at the repository root.
pub fn test_weights_path() -> PathBuf {
    std::env::var_os("CBIR_WEIGHTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../../data/models/efficientnet-lite0-imagenet.safetensors")
        })
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Loads the configured model into the batcher's workers.
pub fn start_batcher(cfg: &Config) -> Result<(Arc<Batcher>, ModelSpec)> {
    if cfg.device.torch_threads > 0 {
        tch::set_num_threads(cfg.device.torch_threads as i32);
    }
    let class_names = match &cfg.model.class_names_file {
        Some(p) => std::fs::read_to_string(p)
            .map_err(|e| Error::Config(format!("cannot read class names {}: {e}", p.display())))?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect(),
        None => Vec::new(),
    };
    if !cfg.model.weights.is_file() {
        return Err(Error::Config(format!(
            "model weights {} not found: run scripts/setup.sh (it converts the pretrained \
             weights), or set INFERENCE_MODEL__WEIGHTS",
            cfg.model.weights.display()
        )));
    }
    let spec = ModelSpec {
        name: cfg.model.name.clone(),
        version: cfg.model.version.clone(),
        class_names,
        weights: cfg.model.weights.clone(),
    };
    let workers = cfg.batcher.workers.max(1);
    // Read once: every worker is built from the same (hashed) bytes.
    let weights = backend::read_weights(&spec.weights)?;
    let backends = (0..workers)
        .map(|_| build_backend(&spec, &weights, &cfg.device))
        .collect::<Result<Vec<_>>>()?;
    Ok((
        Arc::new(Batcher::start(cfg.batcher.clone(), backends)?),
        spec,
    ))
}

/// Builds the domain object from a running batcher serving `spec`.
pub fn build_inference(cfg: &Config, batcher: Arc<Batcher>, spec: ModelSpec) -> Arc<Inference> {
    let decode = if cfg.decode_concurrency == 0 {
        cores() * 2
    } else {
        cfg.decode_concurrency
    };
    let model_dir = cfg.model_dir.clone().unwrap_or_else(|| {
        spec.weights
            .parent()
            .map(std::path::Path::to_path_buf)
            .unwrap_or_default()
    });
    Arc::new(
        Inference::new(
            batcher,
            spec,
            cfg.limits,
            cfg.max_images_per_request,
            cfg.device.clone(),
            decode,
        )
        .with_model_dir(&model_dir),
    )
}

/// The service's metrics: requests (by the server layer) and the batcher's
/// queue depth (what the autoscaler follows), batches and images.
fn batcher_metrics(
    batcher: &Arc<Batcher>,
    max_batch_size: usize,
    capacity: usize,
) -> anyhow::Result<Arc<cbir_common::metrics::Metrics>> {
    use prometheus::{IntCounter, IntGauge, IntGaugeVec, Opts};
    let m = cbir_common::metrics::Metrics::new("inference");
    let depth = IntGauge::new("inference_queue_depth", "Images waiting for a forward pass")?;
    let by_priority = IntGaugeVec::new(
        Opts::new(
            "inference_queue_depth_by_priority",
            "Images waiting, by priority",
        ),
        &["priority"],
    )?;
    let cap = IntGauge::new("inference_queue_capacity", "Images the queue holds at most")?;
    let max_batch = IntGauge::new(
        "inference_max_batch_size",
        "Largest batch of a forward pass",
    )?;
    let batches = IntCounter::new("inference_batches_total", "Forward passes run")?;
    let images = IntCounter::new(
        "inference_images_total",
        "Images embedded (batch size = rate of this / rate of batches)",
    )?;
    let abandoned = IntCounter::new(
        "inference_abandoned_total",
        "Queued images skipped because their caller had gone (cancelled or past its deadline)",
    )?;
    for c in [
        Box::new(depth.clone()) as Box<dyn prometheus::core::Collector>,
        Box::new(abandoned.clone()),
        Box::new(by_priority.clone()),
        Box::new(cap.clone()),
        Box::new(max_batch.clone()),
        Box::new(batches.clone()),
        Box::new(images.clone()),
    ] {
        m.registry.register(c)?;
    }
    cap.set(capacity as i64);
    max_batch.set(max_batch_size as i64);
    let b = Arc::downgrade(batcher);
    m.on_collect(move || {
        let Some(b) = b.upgrade() else { return };
        let s = b.stats();
        depth.set((s.queued_interactive + s.queued_bulk) as i64);
        by_priority
            .with_label_values(&["interactive"])
            .set(s.queued_interactive as i64);
        by_priority
            .with_label_values(&["bulk"])
            .set(s.queued_bulk as i64);
        batches.inc_by(s.batches.saturating_sub(batches.get()));
        images.inc_by(s.images.saturating_sub(images.get()));
        abandoned.inc_by(s.abandoned.saturating_sub(abandoned.get()));
    });
    Ok(m)
}

/// Loads the model, then serves gRPC (inference, health, reflection) on
/// `listener` until `shutdown` resolves; queued work is finished first.
pub async fn serve(
    cfg: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let kit = GrpcKit::check(&SPEC, &cfg, &listener)?;
    let cfg2 = cfg.clone();
    let (batcher, spec) = tokio::task::spawn_blocking(move || start_batcher(&cfg2)).await??;
    tracing::info!(
        model = %spec.name,
        version = %spec.version,
        weights = %spec.weights.display(),
        device = %cfg.device.device,
        "model loaded"
    );
    let inference = build_inference(&cfg, batcher.clone(), spec);
    let svc = InferenceServiceServer::new(service::InferenceGrpc(inference.clone()))
        .max_decoding_message_size(cfg.max_message_bytes)
        .max_encoding_message_size(cfg.max_message_bytes);
    let metrics = batcher_metrics(
        &batcher,
        // What the batcher forms: the engine may cap the configured size.
        batcher.config().max_batch_size,
        cfg.batcher.max_queue_interactive + cfg.batcher.max_queue_bulk,
    )?;
    let _metrics_server =
        cbir_common::metrics::start_if(cfg.metrics_listen.as_deref(), &metrics).await;
    kit.serve(listener, svc, metrics, shutdown).await?;
    // In-flight requests were drained by tonic; let the workers (of the
    // retained model too) finish as well.
    tokio::task::spawn_blocking(move || inference.shutdown()).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn default_config_deserialises() {
        let cfg: super::Config =
            cbir_common::config::load("INFERENCE_TEST_NONE_", None).expect("defaults load");
        assert_eq!(cfg, super::Config::default());
    }

    #[test]
    fn shipped_config_file_loads() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../deploy/config/inference.toml");
        let cfg = super::Config::load(Some(&path)).expect("deploy/config/inference.toml loads");
        assert_eq!(cfg.listen, "0.0.0.0:50051");
        assert_eq!(cfg.batcher, super::BatcherConfig::default());
        assert_eq!(cfg.device, super::DeviceConfig::default());
    }
}
