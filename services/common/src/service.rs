//! The skeleton every service binary shares: arguments, config, the
//! `--probe` health check, telemetry and the listener ([`run_main`]); and
//! the gRPC server of the internal services with its guard rails
//! (closed-by-default check, TLS, internal token, health, reflection,
//! connection limits, graceful shutdown: [`GrpcKit`]).

use std::convert::Infallible;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use clap::{CommandFactory, FromArgMatches, Parser};
use tokio::net::TcpListener;
use tonic_health::ServingStatus;

use crate::conn::ConnectionConfig;
use crate::telemetry::TelemetryConfig;
use crate::tls::TlsConfig;

/// What names a service: its binary, its environment prefix and the gRPC
/// service its health check reports on.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    /// `index`: log lines and error messages.
    pub name: &'static str,
    /// `cbir-index`: the binary and the telemetry service name.
    pub binary: &'static str,
    /// The `--help` summary.
    pub about: &'static str,
    /// `INDEX_`: every setting's environment variable starts with it.
    pub env_prefix: &'static str,
    /// `INDEX_CONFIG`: the environment variable of `--config`.
    pub config_env: &'static str,
    /// `cbir.v1.IndexService`: what `--probe` asks the health service about.
    pub grpc_name: &'static str,
}

/// The settings the skeleton reads from every service's config; implement
/// it with [`service_config!`](crate::service_config).
pub trait ServiceConfig {
    fn listen(&self) -> &str;
    fn tls(&self) -> &TlsConfig;
    fn telemetry(&self) -> &TelemetryConfig;
    /// Shared secret of the internal services: when set, calls without it
    /// (as `x-internal-token`) are refused, and this service sends it on
    /// its own calls. The same value in every service; none by default,
    /// but a service listening beyond loopback refuses to start without it
    /// (or mutual TLS: `tls.client_ca`). `cbir up` makes one.
    fn internal_token(&self) -> Option<&str>;
    fn connections(&self) -> &ConnectionConfig;
}

/// The [`Spec`] of a gRPC service named by the project's convention:
/// `service_spec!("index", "INDEX_", "cbir.v1.IndexService")` is the binary
/// `cbir-index` configured by `INDEX_CONFIG` and `INDEX_*`.
#[macro_export]
macro_rules! service_spec {
    ($name:literal, $prefix:literal, $grpc:literal) => {
        $crate::service::Spec {
            name: $name,
            binary: concat!("cbir-", $name),
            about: concat!("The cbir ", $name, " service (gRPC)"),
            env_prefix: $prefix,
            config_env: concat!($prefix, "CONFIG"),
            grpc_name: $grpc,
        }
    };
}

/// Implements [`ServiceConfig`] for a config struct with the usual fields
/// (`listen`, `tls`, `telemetry`, `internal_token`, `connections`), and
/// its `load`: defaults, then the file, then the environment under
/// `$prefix` (see [`config::load`](crate::config::load)).
#[macro_export]
macro_rules! service_config {
    ($ty:ty, $prefix:expr) => {
        impl $ty {
            pub fn load(file: Option<&std::path::Path>) -> $crate::Result<Self> {
                $crate::config::load($prefix, file)
            }
        }

        impl $crate::service::ServiceConfig for $ty {
            fn listen(&self) -> &str {
                &self.listen
            }
            fn tls(&self) -> &$crate::tls::TlsConfig {
                &self.tls
            }
            fn telemetry(&self) -> &$crate::telemetry::TelemetryConfig {
                &self.telemetry
            }
            fn internal_token(&self) -> Option<&str> {
                self.internal_token.as_deref()
            }
            fn connections(&self) -> &$crate::conn::ConnectionConfig {
                &self.connections
            }
        }
    };
}

/// The future that ends a service: SIGINT or SIGTERM in `main`, a oneshot
/// in tests.
pub type Shutdown = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

#[derive(Parser)]
struct Args {
    /// TOML config file (help and environment variable set per service).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Check the health of the service running with this config (its
    /// listen address) and exit 0 when it is serving: the container health
    /// check.
    #[arg(long)]
    probe: bool,
}

fn args(spec: &Spec) -> Args {
    let config_help = format!(
        "TOML config file; {}* environment variables override it",
        spec.env_prefix
    );
    let cmd = Args::command()
        .name(spec.binary)
        .about(spec.about)
        .version(env!("CARGO_PKG_VERSION"))
        .mut_arg("config", |a| a.env(spec.config_env).help(config_help));
    let matches = cmd.get_matches();
    Args::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

/// The whole `main` of a service binary: parse the arguments, load the
/// config, answer `--probe`, or start telemetry, bind the listen address
/// and `serve` until SIGINT or SIGTERM.
pub async fn run_main<C, F, Fut>(
    spec: &Spec,
    load: fn(Option<&Path>) -> crate::Result<C>,
    serve: F,
) -> anyhow::Result<()>
where
    C: ServiceConfig,
    F: FnOnce(C, TcpListener, Shutdown) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let args = args(spec);
    let cfg = load(args.config.as_deref())?;
    if args.probe {
        return crate::grpc::probe(cfg.listen(), spec.grpc_name, cfg.tls())
            .await
            .map_err(anyhow::Error::msg);
    }
    let telemetry = crate::telemetry::init(spec.binary, cfg.telemetry())?;
    let listen = cfg.listen().to_string();
    let listener = TcpListener::bind(&listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
    let result = serve(cfg, listener, Box::pin(crate::shutdown::signal())).await;
    telemetry.shutdown();
    result
}

/// The gRPC server of an internal service in two steps around the
/// service's own start-up: [`GrpcKit::check`] refuses what must not run
/// before anything is opened; [`GrpcKit::serve`] mounts the service with
/// health and reflection and serves until `shutdown`.
pub struct GrpcKit {
    spec: Spec,
    internal_token: Option<String>,
    tls: TlsConfig,
    connections: ConnectionConfig,
}

impl GrpcKit {
    /// Refuses to serve where anyone could call the service without a
    /// secret, checks and installs TLS, and makes this process's own calls
    /// carry the internal token.
    pub fn check(
        spec: &Spec,
        cfg: &impl ServiceConfig,
        listener: &TcpListener,
    ) -> anyhow::Result<Self> {
        crate::grpc::require_closed(
            spec.name,
            spec.env_prefix.trim_end_matches('_'),
            listener.local_addr()?,
            cfg.internal_token(),
            cfg.tls(),
        )
        .map_err(anyhow::Error::msg)?;
        crate::tls::prepare(cfg.tls()).map_err(anyhow::Error::msg)?;
        crate::grpc::set_outgoing_internal_token(cfg.internal_token())
            .map_err(anyhow::Error::msg)?;
        Ok(Self {
            spec: *spec,
            internal_token: cfg.internal_token().map(str::to_string),
            tls: cfg.tls().clone(),
            connections: cfg.connections().clone(),
        })
    }

    /// Serves `svc` behind the internal token, with health (SERVING until
    /// `shutdown` resolves) and reflection, request metrics, and the
    /// connection limits; returns when in-flight requests are drained.
    pub async fn serve<S>(
        self,
        listener: TcpListener,
        svc: S,
        metrics: Arc<crate::metrics::Metrics>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()>
    where
        S: tower::Service<
                http::Request<tonic::body::Body>,
                Response = http::Response<tonic::body::Body>,
                Error = Infallible,
            > + tonic::server::NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        let (reporter, health) = crate::grpc::health();
        let name = self.spec.grpc_name;
        reporter
            .set_service_status(name, ServingStatus::NotServing)
            .await;
        let svc = tonic::service::interceptor::InterceptedService::new(
            svc,
            crate::grpc::internal_auth(self.internal_token),
        );
        reporter
            .set_service_status(name, ServingStatus::Serving)
            .await;
        tracing::info!(addr = %listener.local_addr()?, "{} service listening", self.spec.name);
        crate::tls::server_builder(&self.tls)
            .map_err(anyhow::Error::msg)?
            .layer(crate::telemetry::RequestLayer(metrics))
            .add_service(health)
            .add_service(crate::grpc::reflection()?)
            .add_service(svc)
            .serve_with_incoming_shutdown(
                crate::grpc::incoming(listener, &self.connections),
                async move {
                    shutdown.await;
                    reporter
                        .set_service_status(name, ServingStatus::NotServing)
                        .await;
                },
            )
            .await?;
        Ok(())
    }
}
