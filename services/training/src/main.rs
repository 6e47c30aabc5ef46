use std::path::PathBuf;

use clap::Parser;

/// The cbir training service (gRPC).
#[derive(Parser)]
struct Args {
    /// TOML config file; TRAINING_* environment variables override it.
    #[arg(long, env = "TRAINING_CONFIG")]
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
    let cfg = cbir_training::Config::load(args.config.as_deref())?;
    if args.probe {
        return cbir_common::grpc::probe(&cfg.listen, "cbir.v1.TrainingService", &cfg.tls)
            .await
            .map_err(anyhow::Error::msg);
    }
    let telemetry = cbir_common::telemetry::init("cbir-training", &cfg.telemetry)?;
    let listener = tokio::net::TcpListener::bind(&cfg.listen).await?;
    let result = cbir_training::serve(cfg, listener, cbir_common::shutdown::signal()).await;
    telemetry.shutdown();
    result
}
