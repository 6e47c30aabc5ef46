//! The gateway's state, whatever the protocol: REST (`http`) and gRPC
//! (`grpc`) handlers are thin translations onto its methods, so both give
//! the same answers. Each resource's methods live in that resource's
//! module (`collections`, `search`, `ingest`, `index_jobs`, `training`);
//! the calls to the backing services in `upstream`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cbir_api::v1 as pb;
use parking_lot::Mutex;

use crate::error::{Error, Result, Upstream};
use crate::upstream::{IndexShards, Pool, PoolConfig};
use crate::Config;

pub struct Gateway {
    pub(crate) cfg: Arc<Config>,
    /// The process's decode budget (see `cbir_imaging::budget`).
    pub(crate) decode_budget: Arc<cbir_imaging::budget::Budget>,
    pub(crate) inference: Arc<Pool>,
    /// The index's shards (one unless `index_shards` names several).
    pub(crate) index: IndexShards,
    pub(crate) training: Arc<Pool>,
    /// Collection metadata by name, with when it was read (see
    /// `collections::COLLECTION_TTL`).
    pub(crate) collections: Mutex<HashMap<String, (Instant, pb::Collection)>>,
    /// The served model's class names, to name partitions.
    pub(crate) class_names: Mutex<Option<(pb::ModelRef, Arc<Vec<String>>)>>,
    pub auth: crate::auth::Auth,
}

pub(crate) fn same_model(a: Option<&pb::ModelRef>, b: Option<&pb::ModelRef>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a.name == b.name && a.version == b.version,
        _ => false,
    }
}

pub(crate) fn model_label(m: Option<&pb::ModelRef>) -> String {
    m.map_or_else(|| "unknown".into(), |m| format!("{}:{}", m.name, m.version))
}

/// The label of an image from its path: the parent folder's name, as in a
/// folder-per-class data set.
pub fn label_from_path(path: &str) -> String {
    let mut parts = path.rsplit(['/', '\\']).filter(|s| !s.is_empty());
    let _file = parts.next();
    parts.next().unwrap_or_default().to_string()
}

pub fn file_name_of(path: &str) -> String {
    path.rsplit(['/', '\\'])
        .find(|s| !s.is_empty())
        .unwrap_or(path)
        .to_string()
}

impl Gateway {
    pub async fn new(cfg: Arc<Config>) -> Result<Arc<Self>> {
        let pool = |service, urls: &[String]| PoolConfig {
            service,
            urls: urls.to_vec(),
            retries: cfg.retries,
            connect_timeout: Duration::from_millis(cfg.timeouts.connect_ms),
            refresh: Duration::from_secs(cfg.dns_refresh_s.max(1)),
        };
        let inference = Pool::new(pool(Upstream::Inference, &cfg.inference_urls)).await?;
        let index =
            IndexShards::new(&cfg.index_shard_urls(), |urls| pool(Upstream::Index, urls)).await?;
        let training = Pool::new(pool(Upstream::Training, &cfg.training_urls)).await?;
        let auth = crate::auth::Auth::new(cfg.auth.clone())?;
        let imaging = cfg.limits.imaging();
        let decode_budget = cbir_imaging::budget::Budget::shared(&imaging);
        if !decode_budget.made_from(&imaging) {
            tracing::warn!(
                decode_memory_bytes = decode_budget.memory_bytes(),
                "another service of this process set the decode budget first: its settings apply"
            );
        }
        Ok(Arc::new(Self {
            cfg,
            decode_budget,
            inference,
            index,
            training,
            collections: Mutex::new(HashMap::new()),
            class_names: Mutex::new(None),
            auth,
        }))
    }

    /// The collection a request names (the default one when it names
    /// none); refused when no collection can have that name, so that an
    /// unbounded name never travels to the index.
    pub fn collection_name(&self, name: &str) -> Result<String> {
        let n = name.trim();
        if n.is_empty() {
            return Ok(self.cfg.default_collection.clone());
        }
        cbir_api::names::check_lookup(n).map_err(Error::InvalidArgument)?;
        Ok(n.to_string())
    }
}
