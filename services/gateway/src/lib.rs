//! The gateway: the browser UI, the JSON REST API and the public gRPC
//! `SearchService`, all on one port. It embeds images through the inference
//! service and stores and searches them through the index service.

//!
//! # Layout
//! - `gateway`: the state every handler shares (`Gateway`), and naming helpers.
//! - `upstream`: clients of the inference, index and training services.
//! - `collections`: collection metadata, management, thumbnails, rebuilds.
//! - `images`: one stored image: get, delete by id, relabel.
//! - `duplicates`: near-duplicate runs, their groups, watching operations.
//! - `search`: searching by image, stored image or vector, filtered and paged.
//! - `search_batch`: many searches in one call, their images embedded together.
//! - `ingest`: adding images (uploads, gRPC `AddImages`, index jobs).
//! - `index_jobs`: indexing a server folder in the background.
//! - `training`: datasets, training jobs and the model registry.
//! - `backups`: collection export and import, the index database's copy.
//! - `http`: the REST API, one file per resource.
//! - `ui`: the web UI's files.
//! - `grpc`: the public gRPC `SearchService`.
//! - `auth`, `rate`, `guard`: API keys and roles, rate limits, request checks.
//! - `error`: the error type and its HTTP and gRPC mappings.

pub mod auth;
pub mod backups;
pub mod collections;
pub mod duplicates;
pub mod error;
pub mod gateway;
pub mod grpc;
pub mod guard;
pub mod http;
pub mod images;
pub mod index_jobs;
pub mod ingest;
pub mod rate;
pub mod search;
pub mod search_batch;
mod sharded;
pub mod training;
pub mod ui;
pub mod upstream;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cbir_api::v1::search_service_server::SearchServiceServer;
use cbir_common::telemetry::TelemetryConfig;
// Every list setting takes an array or a comma-separated string.
use cbir_common::config::list as path_list;
pub(crate) use cbir_common::config::list as url_list;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tower::ServiceExt;

pub use error::{Error, Result};
pub use gateway::Gateway;

/// Environment prefix: `GATEWAY_LIMITS__MAX_IMAGE_BYTES=1048576`.
pub const ENV_PREFIX: &str = "GATEWAY_";

/// The names the service kit needs (binary, environment, health check).
pub const SPEC: cbir_common::service::Spec = cbir_common::service::Spec {
    name: "gateway",
    binary: "cbir-gateway",
    about: "Web UI, REST API and public gRPC Search API of cbir",
    env_prefix: ENV_PREFIX,
    config_env: "GATEWAY_CONFIG",
    grpc_name: "cbir.v1.SearchService",
};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest image file accepted (upload or query).
    pub max_image_bytes: usize,
    /// Largest width x height, checked before decoding.
    pub max_pixels: u64,
    /// Most images in one AddImages call or upload request.
    pub max_files_per_request: usize,
    /// Largest request: an HTTP body, or a message of the public gRPC API.
    pub max_request_bytes: usize,
    /// Most results one search may ask for (offset + top_k when paging).
    pub max_top_k: usize,
    /// Most queries in one batch search.
    pub max_batch_queries: usize,
    /// Largest training dataset archive (streamed to the training service).
    pub max_dataset_bytes: u64,
    /// Largest collection export accepted by the REST import (streamed
    /// to the index, never held whole).
    pub max_import_bytes: u64,
    /// Bytes that the images decoded at once (thumbnails and renditions)
    /// may hold together, per process (shared with the other services of
    /// `cbir up`); one image needing more is refused.
    pub decode_memory_bytes: u64,
    /// Images decoded at once, per process; 0 = the number of cores.
    pub max_decodes: usize,
    /// How long an image waits for room in the decode budget before it is
    /// refused (RESOURCE_EXHAUSTED, retry).
    pub decode_wait_ms: u64,
}

impl Limits {
    /// What the imaging crate checks and budgets.
    pub fn imaging(&self) -> cbir_imaging::Limits {
        cbir_imaging::Limits {
            max_bytes: self.max_image_bytes,
            max_pixels: self.max_pixels,
            decode_memory_bytes: self.decode_memory_bytes,
            max_decodes: self.max_decodes,
            decode_wait_ms: self.decode_wait_ms,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_image_bytes: 32 << 20,
            max_pixels: 64 << 20,
            max_files_per_request: 64,
            max_request_bytes: 256 << 20,
            max_top_k: 10_000,
            max_batch_queries: 64,
            max_dataset_bytes: 4 << 30,
            max_import_bytes: 64 << 30,
            decode_memory_bytes: cbir_imaging::Limits::default().decode_memory_bytes,
            max_decodes: 0,
            decode_wait_ms: cbir_imaging::Limits::default().decode_wait_ms,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// Deadline of an interactive search, embedding included.
    pub search_ms: u64,
    /// Deadline of one batch of indexing (embedding or upsert).
    pub bulk_ms: u64,
    /// Deadline of collection management calls.
    pub admin_ms: u64,
    pub connect_ms: u64,
    /// A server-folder indexing job whose gateway has not saved its
    /// progress (every second) for this long is answered as failed by
    /// every replica: its gateway stopped. At least 3000.
    pub job_lease_ms: u64,
    /// Longest pause while a client sends a request body (a stalled
    /// upload is answered 408 and its buffers freed); 0 for none.
    pub request_body_ms: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            search_ms: 10_000,
            bulk_ms: 120_000,
            admin_ms: 30_000,
            connect_ms: 2_000,
            job_lease_ms: 30_000,
            request_body_ms: 60_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// HTTP (UI and REST) and gRPC on one address.
    pub listen: String,
    /// Inference endpoints: a list, or one DNS name resolving to several
    /// pods (a headless Kubernetes service). Comma-separated in the
    /// environment: `GATEWAY_INFERENCE_URLS=http://a:50051,http://b:50051`.
    #[serde(deserialize_with = "url_list")]
    pub inference_urls: Vec<String>,
    /// Index endpoints, as above.
    #[serde(deserialize_with = "url_list")]
    pub index_urls: Vec<String>,
    /// A sharded index: shard i's endpoints (its replicas) at position i,
    /// each index service started with `shard.id = i` and `shard.count`
    /// the number of lists. Searches go to every shard, writes to the shard
    /// that owns the image's partition. Empty: one shard, `index_urls`. In
    /// the environment:
    /// `GATEWAY_INDEX_SHARDS='[["http://index-0:50052"],["http://index-1:50052"]]'`.
    pub index_shards: Vec<Vec<String>>,
    /// Training endpoints, as above (one replica trains; the others serve
    /// the registry from the same database).
    #[serde(deserialize_with = "url_list")]
    pub training_urls: Vec<String>,
    /// The collection used when a request names none.
    pub default_collection: String,
    /// Server folders that may be indexed (with everything under them);
    /// empty disables indexing server paths.
    #[serde(deserialize_with = "path_list")]
    pub allowed_roots: Vec<PathBuf>,
    /// The names this gateway answers to in the `Host` header (`name` for
    /// any port, `name:port`); others get 421, so that a page whose DNS
    /// name was rebound to this address cannot use it. Empty: the listen
    /// address, `localhost`, `127.0.0.1` and `[::1]`, with the listen port.
    /// `*` accepts any host. Comma-separated in the environment.
    #[serde(deserialize_with = "url_list")]
    pub allowed_hosts: Vec<String>,
    /// Pages on other origins (`https://app.example.com`) allowed to send
    /// state-changing requests; the gateway's own origin always is.
    #[serde(deserialize_with = "url_list")]
    pub allowed_origins: Vec<String>,
    pub limits: Limits,
    pub timeouts: Timeouts,
    /// Extra attempts of an idempotent call that failed in transport.
    pub retries: u32,
    /// Seconds between DNS resolutions of the service URLs.
    pub dns_refresh_s: u64,
    /// Largest gRPC message to and from the internal services: the same
    /// value as theirs. Uploads are forwarded in calls cut to fit, so one
    /// image must fit in it (`limits.max_image_bytes` is checked at start);
    /// the public gRPC API takes messages up to `limits.max_request_bytes`.
    pub max_message_bytes: usize,
    /// API keys and rate limits; no keys means no access control.
    pub auth: auth::AuthConfig,
    /// The internal services' shared secret, sent on every call to them
    /// (`x-internal-token`); set the same in inference, index and training.
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
            listen: "127.0.0.1:8080".into(),
            inference_urls: vec!["http://127.0.0.1:50051".into()],
            index_urls: vec!["http://127.0.0.1:50052".into()],
            index_shards: Vec::new(),
            training_urls: vec!["http://127.0.0.1:50053".into()],
            default_collection: "default".into(),
            allowed_roots: Vec::new(),
            allowed_hosts: Vec::new(),
            allowed_origins: Vec::new(),
            limits: Limits::default(),
            timeouts: Timeouts::default(),
            retries: 2,
            dns_refresh_s: 10,
            max_message_bytes: cbir_common::grpc::DEFAULT_MAX_MESSAGE_BYTES,
            auth: auth::AuthConfig::default(),
            internal_token: None,
            tls: Default::default(),
            connections: Default::default(),
            telemetry: TelemetryConfig::default(),
        }
    }
}

cbir_common::service_config!(Config, ENV_PREFIX);

impl Config {
    /// Each index shard's URLs: `index_shards`, or `index_urls` as the one
    /// shard.
    pub fn index_shard_urls(&self) -> Vec<Vec<String>> {
        if self.index_shards.is_empty() {
            vec![self.index_urls.clone()]
        } else {
            self.index_shards.clone()
        }
    }

    /// The size limits follow one rule: an image fits in one message to
    /// the internal services (a request limit below the image limit is a
    /// smaller image limit in effect).
    pub fn check_sizes(&self) -> Result<()> {
        let one_image = ingest::max_image_in_message(self.max_message_bytes);
        if self.limits.max_image_bytes > one_image {
            return Err(Error::Config(format!(
                "limits.max_image_bytes ({}) must fit in one message to the internal services: at most {one_image} with max_message_bytes = {} (raise max_message_bytes here and in inference and index alike, or lower the image limit)",
                self.limits.max_image_bytes, self.max_message_bytes
            )));
        }
        Ok(())
    }
}

/// The whole HTTP + gRPC application: requests with a gRPC content type go
/// to the gRPC services, everything else to the REST API and the UI.
pub async fn app(cfg: Config) -> anyhow::Result<(axum::Router, Arc<Gateway>)> {
    let local = cfg.listen.parse().ok();
    app_on(cfg, local).await
}

/// [`app`] for a gateway listening on `local` (the default allowed hosts
/// name its port).
async fn app_on(
    cfg: Config,
    local: Option<std::net::SocketAddr>,
) -> anyhow::Result<(axum::Router, Arc<Gateway>)> {
    cfg.check_sizes()?;
    let guard = Arc::new(guard::Guard::new(&cfg, local)?);
    // Public messages are requests like an HTTP upload: bounded alike.
    let max = cfg.limits.max_request_bytes;
    let gateway = Gateway::new(Arc::new(cfg)).await?;
    let (reporter, health) = cbir_common::grpc::health();
    reporter
        .set_serving::<SearchServiceServer<grpc::SearchGrpc>>()
        .await;
    let search = SearchServiceServer::new(grpc::SearchGrpc {
        gateway: gateway.clone(),
    })
    .max_decoding_message_size(max)
    .max_encoding_message_size(max);
    let grpc_router = tonic::service::Routes::new(search)
        .add_service(health)
        .add_service(cbir_common::grpc::reflection()?)
        .into_axum_router()
        .layer(axum::middleware::from_fn(
            move |req: axum::extract::Request, next: axum::middleware::Next| {
                grpc::refuse_oversized_message(max, req, next)
            },
        ));
    let rest_router = http::router(gateway.clone());
    let rate = Arc::new(rate::RateState {
        anonymous: rate::AnonymousLimiter::new(&gateway.cfg.auth)?,
        gateway: gateway.clone(),
    });
    let metrics = cbir_common::metrics::Metrics::new("gateway");
    let app = cbir_common::metrics::router(metrics.clone())
        .fallback_service(tower::service_fn(move |req: axum::extract::Request| {
            let is_grpc = req
                .headers()
                .get(::http::header::CONTENT_TYPE)
                .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
            let target = if is_grpc {
                grpc_router.clone()
            } else {
                rest_router.clone()
            };
            target.oneshot(req)
        }))
        .layer(axum::middleware::from_fn_with_state(
            Duration::from_millis(gateway.cfg.timeouts.request_body_ms),
            guard::body_timeout,
        ))
        .layer(axum::middleware::from_fn_with_state(rate, rate::limit))
        .layer(axum::middleware::from_fn_with_state(guard, guard::check))
        .layer(axum::middleware::from_fn(guard::json_errors))
        .layer(axum::middleware::from_fn(guard::security_headers))
        .layer(cbir_common::telemetry::RequestLayer(metrics));
    Ok((app, gateway))
}

pub async fn serve(
    cfg: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let tls = cbir_common::tls::prepare(&cfg.tls).map_err(anyhow::Error::msg)?;
    cbir_common::grpc::set_outgoing_internal_token(cfg.internal_token.as_deref())
        .map_err(anyhow::Error::msg)?;
    let local = listener.local_addr()?;
    let (app, gateway) = app_on(cfg, Some(local)).await?;
    tracing::info!(
        addr = %listener.local_addr()?,
        inference = ?gateway.cfg.inference_urls,
        index = ?gateway.cfg.index_shard_urls(),
        "gateway listening (web UI, REST and gRPC)"
    );
    let conns = cbir_common::conn::Listener::new(listener, &gateway.cfg.connections);
    if let Some(tls) = tls {
        tracing::info!(
            mutual = gateway.cfg.tls.client_ca.is_some(),
            "TLS on: https:// for the UI and REST, TLS for gRPC"
        );
        let listener = cbir_common::tls::TlsListener::new(conns, tls)?;
        axum::serve(listener, cbir_common::conn::make_tracked(app))
            .with_graceful_shutdown(shutdown)
            .await?;
        return Ok(());
    }
    axum::serve(conns, cbir_common::conn::make_tracked(app))
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_deserialises() {
        let cfg: Config = cbir_common::config::load("GATEWAY_TEST_NONE_", None).expect("defaults");
        assert_eq!(cfg, Config::default());
    }

    #[test]
    fn shipped_config_file_loads() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../deploy/config/gateway.toml");
        let cfg = Config::load(Some(&path)).expect("deploy/config/gateway.toml loads");
        assert_eq!(cfg.listen, "0.0.0.0:8080");
        assert_eq!(cfg.limits, Limits::default());
    }

    #[test]
    // figment::Jail fixes the closure's error type.
    #[allow(clippy::result_large_err)]
    fn environment_overrides_like_compose_and_helm_set_them() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("GATEWAY_INFERENCE_URLS", "http://a:50051,http://b:50051");
            jail.set_env("GATEWAY_INDEX_URLS", "http://index:50052");
            jail.set_env("GATEWAY_ALLOWED_ROOTS", "/images");
            jail.set_env("GATEWAY_LIMITS__MAX_TOP_K", "50");
            let cfg = Config::load(None).expect("loads");
            assert_eq!(cfg.inference_urls, ["http://a:50051", "http://b:50051"]);
            assert_eq!(cfg.index_urls, ["http://index:50052"]);
            assert_eq!(cfg.allowed_roots, [PathBuf::from("/images")]);
            assert_eq!(cfg.limits.max_top_k, 50);
            assert_eq!(cfg.index_shard_urls(), [["http://index:50052"]]);
            jail.set_env(
                "GATEWAY_INDEX_SHARDS",
                r#"[["http://index-0:50052", "http://index-0b:50052"], ["http://index-1:50052"]]"#,
            );
            let cfg = Config::load(None).expect("loads");
            assert_eq!(
                cfg.index_shard_urls(),
                [
                    vec!["http://index-0:50052", "http://index-0b:50052"],
                    vec!["http://index-1:50052"]
                ]
            );
            Ok(())
        });
    }

    #[test]
    fn an_image_must_fit_in_one_message_to_the_internal_services() {
        Config::default()
            .check_sizes()
            .expect("the defaults follow the rule");
        let mut cfg = Config {
            max_message_bytes: 16 << 20,
            ..Default::default()
        };
        let e = cfg
            .check_sizes()
            .expect_err("32 MiB images, 16 MiB messages");
        let msg = e.to_string();
        assert!(
            msg.contains("limits.max_image_bytes (33554432)") && msg.contains("max_message_bytes"),
            "{msg}"
        );
        cfg.limits.max_image_bytes = 8 << 20;
        cfg.check_sizes().expect("8 MiB images fit");
    }

    #[test]
    fn url_lists_come_comma_separated_or_as_arrays() {
        #[derive(Deserialize)]
        struct T {
            #[serde(deserialize_with = "url_list")]
            u: Vec<String>,
        }
        let t: T = serde_json::from_str(r#"{"u":"http://a:1, http://b:2"}"#).expect("string");
        assert_eq!(t.u, ["http://a:1", "http://b:2"]);
        let t: T = serde_json::from_str(r#"{"u":["http://a:1"]}"#).expect("array");
        assert_eq!(t.u, ["http://a:1"]);
    }

    #[test]
    fn openapi_documents_every_route() {
        let doc: serde_json::Value =
            serde_json::from_str(http::OPENAPI_JSON).expect("openapi.json is JSON");
        let paths = doc["paths"].as_object().expect("paths");
        for p in [
            "/api/health",
            "/api/config",
            "/api/model",
            "/api/collections",
            "/api/collections/{name}",
            "/api/collections/{name}/clear",
            "/api/collections/{name}/images",
            "/api/collections/{name}/index-jobs",
            "/api/collections/{name}/images/{id}/thumbnail",
            "/api/jobs",
            "/api/jobs/{id}",
            "/api/search",
            "/api/training/datasets",
            "/api/training/datasets/{id}",
            "/api/training/jobs",
            "/api/training/jobs/{id}",
            "/api/training/jobs/{id}/cancel",
            "/api/training/jobs/{id}/events",
            "/api/training/jobs/{id}/curve",
            "/api/models",
            "/api/models/{name}/{version}",
            "/api/models/{name}/{version}/activate",
            "/api/operations/{id}",
            "/api/collections/{name}/rebuild",
        ] {
            assert!(paths.contains_key(p), "openapi.json lacks {p}");
        }
    }
}
