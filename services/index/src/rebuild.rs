//! Rebuilding a collection for another model: every stored image is
//! re-embedded through the inference service into a new physical
//! collection; the name switches to it atomically at the end, so searches
//! never see a half-built index.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use cbir_api::v1 as pb;
use cbir_api::v1::inference_service_client::InferenceServiceClient;
use parking_lot::Mutex;
use tokio::sync::watch;
use tonic::transport::Channel;

use crate::error::{Error, Result};
use crate::index::{Collection, Index, Record};
use crate::store::now_ms;

/// Images per Embed call during a rebuild.
const BATCH: usize = 16;

/// A request to the inference service: the trace context and, when set,
/// the internal token.
fn outgoing<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    cbir_common::telemetry::inject_context(r.metadata_mut());
    r
}

pub struct Rebuilder {
    inference_url: Option<String>,
    ops: Mutex<HashMap<String, watch::Sender<pb::OperationProgress>>>,
    /// Collections being rebuilt: one rebuild at a time each.
    running: Mutex<std::collections::HashSet<String>>,
}

impl Rebuilder {
    pub fn new(inference_url: Option<String>) -> Self {
        Self {
            inference_url,
            ops: Mutex::new(HashMap::new()),
            running: Mutex::new(std::collections::HashSet::new()),
        }
    }

    pub fn watch(&self, id: &str) -> Result<watch::Receiver<pb::OperationProgress>> {
        self.ops
            .lock()
            .get(id)
            .map(watch::Sender::subscribe)
            .ok_or_else(|| Error::NotFound(format!("no operation {}", cbir_api::names::quoted(id))))
    }

    async fn client(&self) -> Result<InferenceServiceClient<Channel>> {
        let url = self.inference_url.as_deref().ok_or_else(|| {
            Error::FailedPrecondition(
                "rebuilding needs the inference service: set inference_url (INDEX_INFERENCE_URL)"
                    .into(),
            )
        })?;
        let channel = cbir_common::tls::endpoint(url)
            .map_err(|e| Error::Config(format!("inference_url: {e}")))?
            .connect()
            .await
            .map_err(|e| {
                Error::Unavailable(format!("inference service at {url} is unreachable: {e}"))
            })?;
        Ok(InferenceServiceClient::new(channel)
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20))
    }

    /// Checks the request, creates the target collection and starts the
    /// work in the background; returns the operation id to watch.
    pub async fn start(
        self: &Arc<Self>,
        index: Arc<Index>,
        alias: String,
        model_name: String,
        model_version: String,
    ) -> Result<String> {
        let old = index.resolve(&alias)?;
        if !self.running.lock().insert(alias.clone()) {
            return Err(Error::FailedPrecondition(format!(
                "collection {alias:?} is being rebuilt already: watch that operation"
            )));
        }
        let started = self
            .prepare(index, alias.clone(), old, model_name, model_version)
            .await;
        if started.is_err() {
            self.running.lock().remove(&alias);
        }
        started
    }

    async fn prepare(
        self: &Arc<Self>,
        index: Arc<Index>,
        alias: String,
        old: Arc<Collection>,
        model_name: String,
        model_version: String,
    ) -> Result<String> {
        let mut client = self.client().await?;
        let info = client
            .get_model_info(outgoing(pb::GetModelInfoRequest::default()))
            .await
            .map_err(|s| Error::Unavailable(format!("inference service: {}", s.message())))?
            .into_inner()
            .info
            .unwrap_or_default();
        let served = info.model.clone().unwrap_or_default();
        if served.name != model_name || served.version != model_version {
            return Err(Error::FailedPrecondition(format!(
                "the inference service serves {} {}, not {model_name} {model_version}: load that model first",
                served.name, served.version
            )));
        }
        let physical = format!("{alias}.r{}", now_ms());
        let new = index
            .create_physical(
                &physical,
                &model_name,
                &model_version,
                info.embedding_dim,
                &old.row.description,
            )
            .await?;
        let id = uuid::Uuid::new_v4().to_string();
        let now = now_ms();
        let (tx, _) = watch::channel(pb::OperationProgress {
            operation_id: id.clone(),
            state: pb::operation_progress::State::Running as i32,
            total: index.stored_count(&old).await?,
            started_at_ms: now,
            updated_at_ms: now,
            message: format!("re-embedding {alias} with {model_name} {model_version}"),
            ..Default::default()
        });
        self.ops.lock().insert(id.clone(), tx.clone());
        let me = self.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let r = run(&index, &mut client, &alias, &old, &new, &tx, started).await;
            match r {
                Ok(()) => {
                    if let Err(e) = index.drop_physical(&old).await {
                        tracing::warn!(error = %e, "dropping the replaced collection failed");
                    }
                    me.running.lock().remove(&alias);
                    tx.send_modify(|p| {
                        p.state = pb::operation_progress::State::Succeeded as i32;
                        p.message = format!("{alias} now uses {model_name} {model_version}");
                        p.updated_at_ms = now_ms();
                    });
                    tracing::info!(collection = %alias, "rebuild finished");
                }
                Err(e) => {
                    tracing::error!(collection = %alias, error = %e, "rebuild failed");
                    if let Err(e2) = index.drop_physical(&new).await {
                        tracing::warn!(error = %e2, "dropping the half-built collection failed");
                    }
                    me.running.lock().remove(&alias);
                    tx.send_modify(|p| {
                        p.state = pb::operation_progress::State::Failed as i32;
                        p.message = format!("rebuild failed, {alias} is unchanged: {e}");
                        p.updated_at_ms = now_ms();
                    });
                }
            }
        });
        Ok(id)
    }
}

/// Re-embeds stored images of `old` (by id) into records for `new`, with
/// `new`'s model.
async fn reembed(
    index: &Index,
    client: &mut InferenceServiceClient<Channel>,
    old: &Collection,
    new: &Collection,
    ids: &[u64],
) -> Result<(Vec<(u64, Record)>, u64)> {
    let mut stored = Vec::with_capacity(ids.len());
    for &id in ids {
        if let Some(s) = index.store().get_image(old.row.id, id, true).await? {
            stored.push(s);
        }
    }
    let images: Vec<pb::ImageInput> = stored
        .iter()
        .map(|s| pb::ImageInput {
            id: s.image.id.to_string(),
            // The source rendition when kept, else the thumbnail.
            data: match &s.source {
                Some(src) if !src.is_empty() => src.clone(),
                _ => s.thumbnail.clone().unwrap_or_default(),
            },
        })
        .collect();
    if images.is_empty() {
        return Ok((Vec::new(), 0));
    }
    let model = pb::ModelRef {
        name: new.row.model_name.clone(),
        version: new.row.model_version.clone(),
    };
    let resp = client
        .embed(outgoing(pb::EmbedRequest {
            include_renditions: false,
            images,
            priority: pb::Priority::Bulk as i32,
            include_probabilities: false,
            // Named, so that a swap to yet another model during the rebuild
            // cannot slip features of that one into the new collection.
            model: Some(model.clone()),
        }))
        .await
        .map_err(|s| Error::Unavailable(format!("inference service: {}", s.message())))?
        .into_inner();
    let used = resp.model.unwrap_or_default();
    if used != model {
        return Err(Error::FailedPrecondition(format!(
            "the inference service embedded with {} {} instead of {} {}: the model changed \
             during the rebuild; load {} {} again and rebuild",
            used.name, used.version, model.name, model.version, model.name, model.version
        )));
    }
    let mut out = Vec::new();
    let mut failed = 0;
    for (s, r) in stored.into_iter().zip(resp.results) {
        match r.outcome {
            Some(pb::embed_result::Outcome::Embedding(e)) => out.push((
                s.image.id,
                Record {
                    content_hash: s.image.content_hash,
                    file_name: s.image.file_name,
                    path: s.image.path,
                    label: s.image.label,
                    predicted_class: e.predicted_class,
                    feature: e.feature,
                    thumbnail: s.thumbnail.unwrap_or_default(),
                    source: s.source.unwrap_or_default(),
                },
            )),
            _ => {
                tracing::warn!(id = s.image.id, "image could not be re-embedded; left out");
                failed += 1;
            }
        }
    }
    Ok((out, failed))
}

async fn run(
    index: &Arc<Index>,
    client: &mut InferenceServiceClient<Channel>,
    alias: &str,
    old: &Arc<Collection>,
    new: &Arc<Collection>,
    tx: &watch::Sender<pb::OperationProgress>,
    started: Instant,
) -> Result<()> {
    let ids = index.stored_ids(old).await?;
    let mut copied: HashMap<u64, u64> = HashMap::new();
    let mut done = 0u64;
    let mut failed = 0u64;
    for chunk in ids.chunks(BATCH) {
        let (records, f) = reembed(index, client, old, new, chunk).await?;
        failed += f;
        if !records.is_empty() {
            let (old_ids, recs): (Vec<u64>, Vec<Record>) = records.into_iter().unzip();
            let out = index.upsert_into(new, recs).await?;
            for (o, n) in old_ids.into_iter().zip(out) {
                copied.insert(o, n.id);
            }
        }
        done += chunk.len() as u64;
        let rate = done as f64 / started.elapsed().as_secs_f64().max(1e-3);
        tx.send_modify(|p| {
            p.done = done;
            p.failed = failed;
            p.items_per_second = rate;
            p.updated_at_ms = now_ms();
        });
    }
    let idx = index.clone();
    let mut c2 = client.clone();
    let old2 = old.clone();
    let new2 = new.clone();
    index
        .finish_rebuild(alias, old, new, &mut copied, move |missing| async move {
            let mut all = Vec::new();
            for chunk in missing.chunks(BATCH) {
                all.extend(reembed(&idx, &mut c2, &old2, &new2, chunk).await?.0);
            }
            Ok(all)
        })
        .await
}
