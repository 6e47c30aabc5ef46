use std::path::PathBuf;

use clap::Parser;

/// The cbir inference service (gRPC).
#[derive(Parser)]
struct Args {
    /// TOML config file; INFERENCE_* environment variables override it.
    #[arg(long, env = "INFERENCE_CONFIG")]
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
    let cfg = cbir_inference::Config::load(args.config.as_deref())?;
    if args.probe {
        return cbir_common::grpc::probe(&cfg.listen, "cbir.v1.InferenceService", &cfg.tls)
            .await
            .map_err(anyhow::Error::msg);
    }
    let telemetry = cbir_common::telemetry::init("cbir-inference", &cfg.telemetry)?;
    let listener = tokio::net::TcpListener::bind(&cfg.listen).await?;
    let result = cbir_inference::serve(cfg, listener, cbir_common::shutdown::signal()).await;
    telemetry.shutdown();
    result
}
