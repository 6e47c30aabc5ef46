//! The service root: the state every part of the training service shares
//! (config, store, live jobs, the activation lock), opened once at start.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;

use cbir_api::v1 as pb;
use parking_lot::Mutex;
use tokio::sync::{watch, Notify};

use crate::error::{Error, Result};
use crate::store::Store;
use crate::Config;

/// The pretrained network every fine-tune starts from.
pub const BASE_NAME: &str = "efficientnet-lite0";
pub const BASE_VERSION: &str = "imagenet";
const MAX_NAME: usize = 100;

pub struct Training {
    pub cfg: Config,
    pub store: Store,
    pub(crate) live: Mutex<HashMap<String, watch::Sender<pb::Job>>>,
    pub(crate) running: Mutex<Option<(String, Arc<AtomicBool>)>>,
    pub(crate) wake: Notify,
    /// One activation at a time: two would race on what inference serves.
    pub(crate) activating: tokio::sync::Mutex<()>,
    /// Bytes of the uploads streaming in now, counted against
    /// `max_datasets_bytes` before they are on disk whole.
    pub(crate) uploading: AtomicU64,
    pub metrics: crate::metrics::TrainingMetrics,
}

pub fn is_terminal(state: i32) -> bool {
    state == pb::JobState::Succeeded as i32
        || state == pb::JobState::Failed as i32
        || state == pb::JobState::Cancelled as i32
}

pub fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(Error::InvalidArgument(format!(
            "a model name needs 1 to {MAX_NAME} characters"
        )));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(Error::InvalidArgument(format!(
            "model name {name:?} may hold only letters, digits, '-', '_' and '.'"
        )));
    }
    if name == BASE_NAME {
        return Err(Error::InvalidArgument(format!(
            "{BASE_NAME} is the pretrained model's name: pick another"
        )));
    }
    Ok(())
}

pub fn state_name(state: i32) -> &'static str {
    match pb::JobState::try_from(state).unwrap_or(pb::JobState::Unspecified) {
        pb::JobState::Unspecified => "unknown",
        pb::JobState::Queued => "queued",
        pb::JobState::Running => "running",
        pb::JobState::Succeeded => "succeeded",
        pb::JobState::Failed => "failed",
        pb::JobState::Cancelled => "cancelled",
    }
}

impl Training {
    pub async fn open(cfg: Config) -> Result<Arc<Self>> {
        let store = Store::connect(&cfg.database_url).await?;
        let orphans = store
            .fail_orphans("the training service stopped while the job was running (crash or restart): submit it again")
            .await?;
        if orphans > 0 {
            tracing::warn!(
                jobs = orphans,
                "jobs left running by a previous process marked failed"
            );
        }
        let me = Arc::new(Self {
            cfg,
            store,
            live: Mutex::new(HashMap::new()),
            running: Mutex::new(None),
            wake: Notify::new(),
            activating: tokio::sync::Mutex::new(()),
            uploading: Default::default(),
            metrics: crate::metrics::TrainingMetrics::new()
                .map_err(|e| Error::Internal(e.to_string()))?,
        });
        me.seed_registry().await?;
        Ok(me)
    }
}
