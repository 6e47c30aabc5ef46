use std::path::PathBuf;

use clap::Parser;

/// The cbir index service (gRPC).
#[derive(Parser)]
struct Args {
    /// TOML config file; INDEX_* environment variables override it.
    #[arg(long, env = "INDEX_CONFIG")]
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
    let cfg = cbir_index::Config::load(args.config.as_deref())?;
    if args.probe {
        return cbir_common::grpc::probe(&cfg.listen, "cbir.v1.IndexService", &cfg.tls)
            .await
            .map_err(anyhow::Error::msg);
    }
    let telemetry = cbir_common::telemetry::init("cbir-index", &cfg.telemetry)?;
    let listener = tokio::net::TcpListener::bind(&cfg.listen).await?;
    let result = cbir_index::serve(cfg, listener, cbir_common::shutdown::signal()).await;
    telemetry.shutdown();
    result
}
