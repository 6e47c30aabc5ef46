use std::path::PathBuf;

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "cbir-gateway",
    version,
    about = "Web UI, REST API and public gRPC Search API of cbir"
)]
struct Args {
    /// TOML config file; GATEWAY_* environment variables override it.
    #[arg(long, env = "GATEWAY_CONFIG")]
    config: Option<PathBuf>,
    /// Check the health of the service running with this config (its
    /// listen address) and exit 0 when it is serving: the container health
    /// check.
    #[arg(long)]
    probe: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let cfg = cbir_gateway::Config::load(args.config.as_deref())?;
    if args.probe {
        return cbir_common::grpc::probe(&cfg.listen, "cbir.v1.SearchService", &cfg.tls)
            .await
            .map_err(anyhow::Error::msg);
    }
    let telemetry = cbir_common::telemetry::init("cbir-gateway", &cfg.telemetry)?;
    let listener = tokio::net::TcpListener::bind(&cfg.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", cfg.listen))?;
    let r = cbir_gateway::serve(cfg, listener, cbir_common::shutdown::signal()).await;
    telemetry.shutdown();
    r
}
