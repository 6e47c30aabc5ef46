//! Activation: the inference replicas load a model, the registry marks it
//! active and the collections on another model are rebuilt; the reconcile
//! loop brings back replicas that serve something else.

use std::sync::Arc;
use std::time::Duration;

use cbir_api::v1 as pb;
use cbir_api::v1::index_service_client::IndexServiceClient;
use cbir_api::v1::inference_service_client::InferenceServiceClient;
use tokio::sync::watch;
use tonic::transport::Channel;

use crate::error::{Error, Result};
use crate::training::{Training, BASE_NAME, BASE_VERSION};

/// Every address a URL's host resolves to, as URLs: each inference replica
/// must load an activated model.
async fn endpoints(url: &str) -> Result<Vec<String>> {
    let uri: tonic::codegen::http::Uri = url
        .parse()
        .map_err(|e| Error::Config(format!("bad url {url:?}: {e}")))?;
    let host = uri
        .host()
        .ok_or_else(|| Error::Config(format!("url {url:?} has no host")))?;
    let port = uri.port_u16().unwrap_or(80);
    let scheme = uri.scheme_str().unwrap_or("http");
    let addrs = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| Error::Unavailable(format!("cannot resolve {host}: {e}")))?;
    let mut out: Vec<String> = addrs.map(|a| format!("{scheme}://{a}")).collect();
    out.sort();
    out.dedup();
    Ok(out)
}

async fn channel(url: &str) -> Result<Channel> {
    cbir_common::tls::endpoint(url)
        .map_err(Error::Config)?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| Error::Unavailable(format!("{url} is unreachable: {e}")))
}

fn with_trace<T>(msg: T, timeout: Duration) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.set_timeout(timeout);
    cbir_common::telemetry::inject_context(r.metadata_mut());
    r
}

impl Training {
    /// Loads `model` into every inference replica, makes it active, and
    /// starts a rebuild of each collection bound to another model; returns
    /// the rebuild operation ids.
    pub async fn activate(&self, r: &pb::ModelRef) -> Result<(pb::RegisteredModel, Vec<String>)> {
        let _one = self.activating.lock().await;
        let meta = self.store.model(r).await?;
        self.push_to_inference(&meta, true).await?;
        self.store.set_active(r).await?;
        tracing::info!(model = %r.name, version = %r.version, "model activated");
        let mut ops = Vec::new();
        if let Some(url) = &self.cfg.index_url {
            let mut client = IndexServiceClient::new(channel(url).await.map_err(|e| {
                Error::Unavailable(format!(
                    "the model is active, but the index service is unreachable to rebuild the collections ({e}): rebuild them from the Maintenance page"
                ))
            })?)
            .max_decoding_message_size(self.cfg.max_message_bytes);
            let cols = client
                .list_collections(with_trace(
                    pb::ListCollectionsRequest {},
                    Duration::from_secs(30),
                ))
                .await
                .map_err(|s| Error::Unavailable(format!("index service: {}", s.message())))?
                .into_inner()
                .collections;
            for c in cols {
                let same = c
                    .model
                    .as_ref()
                    .is_some_and(|m| m.name == r.name && m.version == r.version);
                if same {
                    continue;
                }
                match client
                    .rebuild(with_trace(
                        pb::RebuildRequest {
                            collection: c.name.clone(),
                            model: Some(r.clone()),
                        },
                        Duration::from_secs(60),
                    ))
                    .await
                {
                    Ok(resp) => ops.push(resp.into_inner().operation_id),
                    Err(s) => {
                        tracing::warn!(collection = %c.name, error = %s.message(), "could not start a rebuild")
                    }
                }
            }
        }
        let meta = self.store.model(r).await?;
        Ok((meta, ops))
    }

    /// Sends the weights to every inference replica behind `inference_url`.
    async fn push_to_inference(
        &self,
        m: &pb::RegisteredModel,
        retain_previous: bool,
    ) -> Result<()> {
        let urls = endpoints(&self.cfg.inference_url).await?;
        if urls.is_empty() {
            return Err(Error::Unavailable(format!(
                "{} resolves to no address: is the inference service running?",
                self.cfg.inference_url
            )));
        }
        let weights = self
            .store
            .weights(m.model.as_ref().unwrap_or(&pb::ModelRef::default()))
            .await?;
        for url in urls {
            self.push_to_inference_one(&url, m, &weights, retain_previous)
                .await?;
        }
        Ok(())
    }

    /// Makes every inference replica serve the active model's weights:
    /// replicas that restarted come back with their configured model, and
    /// one whose weights differ from the registry's (by SHA-256) is
    /// reloaded whatever its model is called.
    pub async fn reconcile(&self) -> Result<()> {
        let Some(active) = self.store.active_model().await? else {
            return Ok(());
        };
        let r = active.model.clone().unwrap_or_default();
        let _one = self.activating.lock().await;
        // Read from the database only when some replica needs them.
        let mut weights = None;
        for url in endpoints(&self.cfg.inference_url).await? {
            let Ok(ch) = channel(&url).await else {
                continue;
            };
            let mut c = InferenceServiceClient::new(ch);
            let Ok(info) = c
                .get_model_info(with_trace(
                    pb::GetModelInfoRequest::default(),
                    Duration::from_secs(5),
                ))
                .await
            else {
                continue;
            };
            let info = info.into_inner().info.unwrap_or_default();
            let served = info.model.clone().unwrap_or_default();
            // The weights, not the name: a replica given other weights
            // under the active model's name is brought back too.
            if served.name == r.name
                && served.version == r.version
                && info.weights_sha256 == active.weights_sha256
            {
                continue;
            }
            tracing::warn!(
                %url,
                serves = %format!("{}:{}", served.name, served.version),
                serves_sha256 = %info.weights_sha256,
                active = %format!("{}:{}", r.name, r.version),
                active_sha256 = %active.weights_sha256,
                "an inference replica serves another model or other weights: loading the active one"
            );
            drop(c);
            // Retained so that collections still on the old model answer.
            if weights.is_none() {
                weights = Some(self.store.weights(&r).await?);
            }
            let w = weights.as_deref().unwrap_or_default();
            self.push_to_inference_one(&url, &active, w, true).await?;
        }
        Ok(())
    }

    async fn push_to_inference_one(
        &self,
        url: &str,
        m: &pb::RegisteredModel,
        weights: &[u8],
        retain_previous: bool,
    ) -> Result<()> {
        let r = m.model.clone().unwrap_or_default();
        let mut c = InferenceServiceClient::new(channel(url).await?)
            .max_decoding_message_size(self.cfg.max_message_bytes)
            .max_encoding_message_size(self.cfg.max_message_bytes);
        let class_names = if r.name == BASE_NAME && r.version == BASE_VERSION {
            Vec::new()
        } else {
            m.class_names.clone()
        };
        c.load_model(with_trace(
            pb::LoadModelRequest {
                model: Some(r.clone()),
                class_names,
                weights: Some(pb::load_model_request::Weights::Data(weights.to_vec())),
                retain_previous,
                // The registry's hash: inference refuses anything else.
                weights_sha256: m.weights_sha256.clone(),
            },
            Duration::from_secs(120),
        ))
        .await
        .map_err(|s| {
            Error::Unavailable(format!(
                "inference at {url} could not load {}:{}: {}",
                r.name,
                r.version,
                s.message()
            ))
        })?;
        Ok(())
    }

    /// Checks every `every_ms` that the inference replicas serve the active
    /// model until `stop` fires.
    pub fn spawn_reconcile(self: &Arc<Self>, every_ms: u64, stop: &watch::Receiver<bool>) {
        let weak = Arc::downgrade(self);
        let mut stop = stop.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(every_ms)) => {}
                    _ = stop.changed() => return,
                }
                let Some(t) = weak.upgrade() else { return };
                if let Err(e) = t.reconcile().await {
                    tracing::warn!(error = %e, "could not bring the inference replicas to the active model; retrying");
                }
            }
        });
    }
}
