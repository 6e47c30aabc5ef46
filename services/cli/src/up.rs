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
    /// Address of the index service.
    #[arg(long, env = "CBIR_INDEX_LISTEN", default_value = "127.0.0.1:50052")]
    index_listen: String,
    /// Index config file (TOML); INDEX_* variables override it.
    #[arg(long, env = "INDEX_CONFIG")]
    index_config: Option<PathBuf>,
    /// Address of the gateway: the web UI, the REST API and the public gRPC API.
    #[arg(long, env = "CBIR_GATEWAY_LISTEN", default_value = "127.0.0.1:8080")]
    gateway_listen: String,
    /// Gateway config file (TOML); GATEWAY_* variables override it.
    #[arg(long, env = "GATEWAY_CONFIG")]
    gateway_config: Option<PathBuf>,
    /// Address of the training service.
    #[arg(long, env = "CBIR_TRAINING_LISTEN", default_value = "127.0.0.1:50053")]
    training_listen: String,
    /// Training config file (TOML); TRAINING_* variables override it.
    #[arg(long, env = "TRAINING_CONFIG")]
    training_config: Option<PathBuf>,
}

/// The four services' settings, as `cbir up` runs them together.
struct Configs {
    inference: cbir_inference::Config,
    index: cbir_index::Config,
    gateway: cbir_gateway::Config,
    training: cbir_training::Config,
}

pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    let cfg = cbir_inference::Config::load(args.inference_config.as_deref())?;
    let telemetry = cbir_common::telemetry::init("cbir", &cfg.telemetry)?;
    let mut c = configure(&args, cfg)?;
    let token = internal_token(
        &args.data_dir,
        [
            &mut c.inference.internal_token,
            &mut c.index.internal_token,
            &mut c.gateway.internal_token,
            &mut c.training.internal_token,
        ],
    )?;
    // The services of this process share one outgoing token: set it before
    // any of them starts (the first one set wins).
    cbir_common::grpc::set_outgoing_internal_token(Some(&token)).map_err(anyhow::Error::msg)?;
    let bind = |addr: String| async move {
        tokio::net::TcpListener::bind(&addr)
            .await
            .with_context(|| format!("cannot listen on {addr} (is cbir already up?)"))
    };
    let listeners = Listeners {
        inference: bind(c.inference.listen.clone()).await?,
        index: bind(c.index.listen.clone()).await?,
        gateway: bind(c.gateway.listen.clone()).await?,
        training: bind(c.training.listen.clone()).await?,
    };
    tracing::info!(
        ui = %format!("http://{}/", c.gateway.listen),
        inference = %c.inference.listen,
        index = %c.index.listen,
        training = %c.training.listen,
        database = %c.index.database_url,
        data = %args.data_dir.display(),
        internal_token = %cbir_common::token::path(&args.data_dir).display(),
        "starting cbir; press Ctrl-C to stop"
    );
    let (failed, result) = serve_all(c, listeners).await;
    telemetry.shutdown();
    if let (Some(name), Ok(())) = (failed, &result) {
        anyhow::bail!("the {name} service stopped on its own");
    }
    result
}

/// Fills in what `cbir up` decides for the services (addresses, the data
/// folder's files, one another's URLs) wherever config and environment
/// leave the default.
fn configure(args: &UpArgs, mut cfg: cbir_inference::Config) -> anyhow::Result<Configs> {
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
    let mut index_cfg = cbir_index::Config::load(args.index_config.as_deref())?;
    if index_cfg.database_url == cbir_index::Config::default().database_url {
        index_cfg.database_url = format!("sqlite://{}", args.data_dir.join("index.db").display());
    }
    if std::env::var_os("INDEX_LISTEN").is_none() {
        index_cfg.listen = args.index_listen.clone();
    }
    if std::env::var_os("INDEX_INFERENCE_URL").is_none() {
        index_cfg.inference_url = Some(format!("http://{}", cfg.listen));
    }
    let mut gateway_cfg = cbir_gateway::Config::load(args.gateway_config.as_deref())?;
    if std::env::var_os("GATEWAY_LISTEN").is_none() {
        gateway_cfg.listen = args.gateway_listen.clone();
    }
    if std::env::var_os("GATEWAY_INFERENCE_URLS").is_none() {
        gateway_cfg.inference_urls = vec![format!("http://{}", cfg.listen)];
    }
    if std::env::var_os("GATEWAY_INDEX_URLS").is_none() {
        gateway_cfg.index_urls = vec![format!("http://{}", index_cfg.listen)];
    }
    let mut training_cfg = cbir_training::Config::load(args.training_config.as_deref())?;
    let training_defaults = cbir_training::Config::default();
    if training_cfg.database_url == training_defaults.database_url {
        training_cfg.database_url =
            format!("sqlite://{}", args.data_dir.join("training.db").display());
    }
    if training_cfg.data_dir == training_defaults.data_dir {
        training_cfg.data_dir = args.data_dir.join("training");
    }
    if training_cfg.base_weights == training_defaults.base_weights {
        training_cfg.base_weights = cfg.model.weights.clone();
    }
    if std::env::var_os("TRAINING_LISTEN").is_none() {
        training_cfg.listen = args.training_listen.clone();
    }
    if std::env::var_os("TRAINING_INFERENCE_URL").is_none() {
        training_cfg.inference_url = format!("http://{}", cfg.listen);
    }
    if std::env::var_os("TRAINING_INDEX_URL").is_none() {
        training_cfg.index_url = Some(format!("http://{}", index_cfg.listen));
    }
    if std::env::var_os("GATEWAY_TRAINING_URLS").is_none() {
        gateway_cfg.training_urls = vec![format!("http://{}", training_cfg.listen)];
    }
    // One process, one decode budget (cbir_imaging::budget): the inference
    // config's settings, whichever service decodes first.
    let l = cfg.limits;
    gateway_cfg.limits.decode_memory_bytes = l.decode_memory_bytes;
    gateway_cfg.limits.max_decodes = l.max_decodes;
    gateway_cfg.limits.decode_wait_ms = l.decode_wait_ms;
    training_cfg.image_limits.decode_memory_bytes = l.decode_memory_bytes;
    training_cfg.image_limits.max_decodes = l.max_decodes;
    training_cfg.image_limits.decode_wait_ms = l.decode_wait_ms;
    // Server folders the gateway may index may also be trained on.
    if training_cfg.allowed_roots.is_empty() {
        training_cfg.allowed_roots = gateway_cfg.allowed_roots.clone();
    }
    Ok(Configs {
        inference: cfg,
        index: index_cfg,
        gateway: gateway_cfg,
        training: training_cfg,
    })
}

struct Listeners {
    inference: tokio::net::TcpListener,
    index: tokio::net::TcpListener,
    gateway: tokio::net::TcpListener,
    training: tokio::net::TcpListener,
}

/// Runs the services until Ctrl-C or until one stops on its own (its name
/// is returned), then stops them all.
async fn serve_all(c: Configs, l: Listeners) -> (Option<&'static str>, anyhow::Result<()>) {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let services: Vec<(&str, tokio::task::JoinHandle<anyhow::Result<()>>)> = vec![
        (
            "inference",
            tokio::spawn(cbir_inference::serve(c.inference, l.inference, stopped())),
        ),
        (
            "index",
            tokio::spawn(cbir_index::serve(c.index, l.index, stopped())),
        ),
        (
            "training",
            tokio::spawn(cbir_training::serve(c.training, l.training, stopped())),
        ),
        (
            "gateway",
            tokio::spawn(cbir_gateway::serve(c.gateway, l.gateway, stopped())),
        ),
    ];
    let failed = tokio::select! {
        () = cbir_common::shutdown::signal() => None,
        name = first_to_stop(&services) => Some(name),
    };
    let _ = stop_tx.send(true);
    let mut result = Ok(());
    for (name, h) in services {
        match h.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!(service = name, error = %e, "service failed");
                result = Err(e.context(format!("the {name} service failed")));
            }
            Err(e) => result = Err(anyhow::anyhow!("the {name} service panicked: {e}")),
        }
    }
    (failed, result)
}

/// Resolves with the name of the first service that ended on its own (it
/// failed to start, say): then the whole system stops.
async fn first_to_stop(
    services: &[(&'static str, tokio::task::JoinHandle<anyhow::Result<()>>)],
) -> &'static str {
    loop {
        if let Some((name, _)) = services.iter().find(|(_, h)| h.is_finished()) {
            return name;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// The internal token every service of this system checks and sends: the
/// one configured (it must be the same wherever it is set), else
/// CBIR_INTERNAL_TOKEN, else the data folder's (made on first start). It
/// is filled into each service that has none, so that nothing listens
/// without one, even on loopback: other users of the machine reach
/// loopback too.
fn internal_token(
    data_dir: &std::path::Path,
    configured: [&mut Option<String>; 4],
) -> anyhow::Result<String> {
    let given: Vec<String> = configured
        .iter()
        .filter_map(|t| t.as_deref().map(str::trim).filter(|t| !t.is_empty()))
        .map(String::from)
        .collect();
    let token = match given.first() {
        Some(t) => {
            anyhow::ensure!(
                given.iter().all(|g| g == t),
                "the services' internal_token settings differ: set one value in all four (or none, \
                 and cbir up uses {})",
                cbir_common::token::path(data_dir).display()
            );
            t.clone()
        }
        None => match std::env::var("CBIR_INTERNAL_TOKEN")
            .ok()
            .filter(|t| !t.trim().is_empty())
        {
            Some(t) => t.trim().to_string(),
            None => cbir_common::token::load_or_create(data_dir).map_err(anyhow::Error::msg)?,
        },
    };
    for slot in configured {
        if slot.as_deref().is_none_or(|t| t.trim().is_empty()) {
            *slot = Some(token.clone());
        }
    }
    Ok(token)
}
