//! The index service: feature vectors in per-class partitions, stored in
//! SQLite or MySQL/MariaDB through sea-orm, searched from memory.

pub mod duplicates;
pub mod error;
pub mod index;
pub mod jobs;
pub mod kernels;
pub mod mem;
pub mod peers;
pub mod rebuild;
pub mod refine;
pub mod service;
pub mod store;

use std::future::Future;
use std::sync::Arc;

use cbir_api::v1::index_service_server::IndexServiceServer;
use cbir_common::service::{GrpcKit, Spec};
use cbir_common::telemetry::TelemetryConfig;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

pub use duplicates::DuplicatesConfig;
pub use error::{Error, Result};
pub use index::{Index, Layout, Limits};
pub use refine::RefinedConfig;
pub use store::Store;

/// The names the service kit needs (binary, environment, health check).
pub const SPEC: Spec = cbir_common::service_spec!("index", "INDEX_", "cbir.v1.IndexService");
pub const ENV_PREFIX: &str = SPEC.env_prefix;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ProbeConfig {
    /// Partitions always read before the stopping rule may end a search.
    pub min_partitions: usize,
    /// Stop after this many partitions in a row changed nothing in the top k.
    pub patience: usize,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        let r = mem::ProbeRule::default();
        Self {
            min_partitions: r.min_partitions,
            patience: r.patience,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub listen: String,
    /// `sqlite://data/index.db` (embedded default) or `mysql://user:pass@host/db`.
    pub database_url: String,
    pub max_connections: u32,
    /// The inference service, for rebuilds.
    pub inference_url: Option<String>,
    pub limits: Limits,
    pub probe: ProbeConfig,
    /// The mode of searches that name none: `refined` (default), `probe`,
    /// `exact` or `partition`.
    pub default_mode: mem::Mode,
    /// Refined ranking: its parameters and when its upkeep runs.
    pub refined: RefinedConfig,
    /// What memory keeps per vector: `full` (default; f32, int8 codes and
    /// augmented copies, about 13 KB per 1280-d vector) or `compact` (int8
    /// codes, about 1.5 KB; short lists re-ranked with vectors read from
    /// the database).
    pub storage: mem::Storage,
    /// Shard `id` of `count`: the class partitions this service loads and
    /// searches (the gateway sends each write to the owner). Default 0 of 1.
    pub shard: cbir_common::shard::Shard,
    /// A sharded index: every shard's replica URLs, shard i at position i
    /// (as the gateway's `index_shards`), so that refined ranking's
    /// augmented vectors (full storage) sum an image's nearest neighbours
    /// on every shard, as one node does, and near-duplicate runs see every
    /// shard's images. Empty: each shard within its own partitions, and no
    /// near-duplicate runs. In the environment:
    /// `INDEX_PEERS='[["http://index-0:50052"],["http://index-1:50052"]]'`.
    pub peers: Vec<Vec<String>>,
    /// Near-duplicate runs: the default threshold and the bounds.
    pub duplicates: DuplicatesConfig,
    pub max_message_bytes: usize,
    /// Address of the Prometheus `/metrics` endpoint; none when unset.
    pub metrics_listen: Option<String>,
    /// Replicas on one database: how often (ms) to pick up what the others
    /// wrote; 0 when this is the only index service of its database.
    pub follow_ms: u64,
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
            listen: "127.0.0.1:50052".into(),
            database_url: "sqlite://data/index.db".into(),
            max_connections: 8,
            inference_url: Some("http://127.0.0.1:50051".into()),
            limits: Limits::default(),
            probe: ProbeConfig::default(),
            default_mode: mem::Mode::Refined,
            storage: mem::Storage::Full,
            shard: cbir_common::shard::Shard::default(),
            peers: Vec::new(),
            refined: RefinedConfig::default(),
            duplicates: DuplicatesConfig::default(),
            max_message_bytes: cbir_common::grpc::DEFAULT_MAX_MESSAGE_BYTES,
            metrics_listen: None,
            follow_ms: 0,
            internal_token: None,
            tls: Default::default(),
            connections: Default::default(),
            telemetry: TelemetryConfig::default(),
        }
    }
}

cbir_common::service_config!(Config, ENV_PREFIX);

/// The service's metrics: requests (by the server layer), and vectors and
/// memory per collection and partition, read at each scrape.
fn index_metrics(index: &Arc<Index>) -> anyhow::Result<Arc<cbir_common::metrics::Metrics>> {
    use prometheus::{IntGaugeVec, Opts};
    let m = cbir_common::metrics::Metrics::new("index");
    let vectors = IntGaugeVec::new(
        Opts::new(
            "index_vectors",
            "Vectors in memory, by collection and partition",
        ),
        &["collection", "partition"],
    )?;
    let bytes = IntGaugeVec::new(
        Opts::new(
            "index_bytes_in_memory",
            "Bytes of vectors in memory, by collection",
        ),
        &["collection"],
    )?;
    m.registry.register(Box::new(vectors.clone()))?;
    m.registry.register(Box::new(bytes.clone()))?;
    let idx = Arc::downgrade(index);
    m.on_collect(move || {
        let Some(idx) = idx.upgrade() else { return };
        // Collections come and go: start from a clean slate each scrape.
        vectors.reset();
        bytes.reset();
        for (name, _) in idx.collections() {
            let Ok(s) = idx.stats(&name) else { continue };
            bytes.with_label_values(&[&name]).set(s.bytes as i64);
            for p in s.partitions {
                vectors
                    .with_label_values(&[name.as_str(), &p.class.to_string()])
                    .set(p.count as i64);
            }
        }
    });
    Ok(m)
}

/// Connects, migrates, loads every collection into memory, then serves.
pub async fn serve(
    cfg: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let kit = GrpcKit::check(&SPEC, &cfg, &listener)?;
    cfg.duplicates.check()?;
    cfg.refined.check()?;
    let peers = peers::Peers::new(cfg.shard, &cfg.peers)?.map(Arc::new);
    let store = Store::connect(&cfg.database_url, cfg.max_connections).await?;
    let mut index = Index::open(
        store,
        cfg.limits,
        mem::ProbeRule {
            min_partitions: cfg.probe.min_partitions,
            patience: cfg.probe.patience,
            ..Default::default()
        },
        cfg.refined.params(),
        index::Layout {
            storage: cfg.storage,
            shard: cfg.shard,
        },
    )
    .await?;
    index.default_mode = cfg.default_mode;
    index.peers = peers;
    if index.peers.is_some() && cfg.storage == mem::Storage::Compact {
        tracing::info!(
            "compact storage keeps no augmented vectors: the peers serve near-duplicate runs only"
        );
    }
    let index = Arc::new(index);
    let refresher = refine::Refresher::start(&index, &cfg.refined);
    if cfg.follow_ms > 0 {
        let weak = Arc::downgrade(&index);
        let every = std::time::Duration::from_millis(cfg.follow_ms);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(index) = weak.upgrade() else { return };
                if let Err(e) = index.follow_once().await {
                    tracing::warn!(error = %e, "following the other replicas' writes failed; retrying");
                }
            }
        });
    } else if !cfg.shard.is_whole() {
        tracing::warn!(
            shard = cfg.shard.id,
            shards = cfg.shard.count,
            "follow_ms is 0 on a sharded index: collections imported or rebuilt through another shard stay unknown here until a restart; set follow_ms (1000, say)"
        );
    }
    let metrics = index_metrics(&index)?;
    let _metrics_server =
        cbir_common::metrics::start_if(cfg.metrics_listen.as_deref(), &metrics).await;
    let grpc = service::IndexGrpc {
        duplicates: Arc::new(duplicates::Duplicates::new(
            index.clone(),
            cfg.duplicates.clone(),
        )?),
        index,
        refresher,
        rebuilder: Arc::new(rebuild::Rebuilder::new(cfg.inference_url.clone())),
    };
    let svc = IndexServiceServer::new(grpc)
        .max_decoding_message_size(cfg.max_message_bytes)
        .max_encoding_message_size(cfg.max_message_bytes);
    tracing::info!(kernels = kernels::kernel_name(), "index kernels");
    kit.serve(listener, svc, metrics, shutdown).await
}

#[cfg(test)]
mod tests {
    #[test]
    fn default_config_deserialises() {
        let cfg: super::Config =
            cbir_common::config::load("INDEX_TEST_NONE_", None).expect("defaults load");
        assert_eq!(cfg, super::Config::default());
    }

    #[test]
    fn shipped_config_file_loads() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/config/index.toml");
        let cfg = super::Config::load(Some(&path)).expect("deploy/config/index.toml loads");
        assert_eq!(cfg.listen, "0.0.0.0:50052");
        assert_eq!(cfg.limits, super::Limits::default());
        assert_eq!(cfg.probe, super::ProbeConfig::default());
        assert_eq!(cfg.duplicates, super::DuplicatesConfig::default());
        assert_eq!(cfg.refined, super::RefinedConfig::default());
        assert_eq!(cfg.default_mode, super::mem::Mode::Refined);
        assert_eq!(cfg.storage, super::mem::Storage::Full);
        assert_eq!(cfg.shard, cbir_common::shard::Shard::default());
    }

    #[test]
    #[allow(clippy::result_large_err)]
    fn storage_and_shard_come_from_the_environment() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("INDEX_STORAGE", "compact");
            jail.set_env("INDEX_SHARD__ID", "1");
            jail.set_env("INDEX_SHARD__COUNT", "3");
            let cfg = super::Config::load(None).expect("loads");
            assert_eq!(cfg.storage, super::mem::Storage::Compact);
            assert_eq!(cfg.shard, cbir_common::shard::Shard { id: 1, count: 3 });
            Ok(())
        });
    }
}
