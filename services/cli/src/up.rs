use std::path::PathBuf;

use anyhow::Context;

#[derive(clap::Args)]
pub struct UpArgs {
    /// Where the system keeps its data (models, databases).
    #[arg(long, env = "CBIR_DATA_DIR", default_value = "data")]
    data_dir: PathBuf,
    /// Address of the inference service.
    #[arg(long, env = "CBIR_INFERENCE_LISTEN", default_value = "127.0.0.1:50051")]
    inference_listen: String,
    /// Inference config file (TOML); INFERENCE_* variables override it.
    #[arg(long, env = "INFERENCE_CONFIG")]
    inference_config: Option<PathBuf>,
}

pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    let mut cfg = cbir_inference::Config::load(args.inference_config.as_deref())?;
    let telemetry = cbir_common::telemetry::init("cbir", &cfg.telemetry)?;
    // The data folder is the embedded default unless config or environment
    // point the model elsewhere.
    if cfg.model.weights == cbir_inference::ModelConfig::default().weights {
        cfg.model.weights = args
            .data_dir
            .join("models/efficientnet-lite0-imagenet.safetensors");
    }
    if std::env::var_os("INFERENCE_LISTEN").is_none() {
        cfg.listen = args.inference_listen.clone();
    }
    let listener = tokio::net::TcpListener::bind(&cfg.listen)
        .await
        .with_context(|| format!("cannot listen on {} (is cbir already up?)", cfg.listen))?;
    tracing::info!(
        inference = %cfg.listen,
        data = %args.data_dir.display(),
        "starting cbir; press Ctrl-C to stop"
    );
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let inference = tokio::spawn(cbir_inference::serve(cfg, listener, async move {
        let mut rx = stop_rx;
        let _ = rx.wait_for(|s| *s).await;
    }));
    tokio::select! {
        () = cbir_common::shutdown::signal() => {}
        r = inference_done(&inference) => {
            telemetry.shutdown();
            return r;
        }
    }
    let _ = stop_tx.send(true);
    let r = inference.await.context("inference task")?;
    telemetry.shutdown();
    r
}

/// Resolves when the service ended on its own (it failed to start, say).
async fn inference_done(h: &tokio::task::JoinHandle<anyhow::Result<()>>) -> anyhow::Result<()> {
    loop {
        if h.is_finished() {
            anyhow::bail!("the inference service stopped; see the log above");
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}
