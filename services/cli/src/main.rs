//! `cbir`: run the system and talk to it.

mod backup;
mod bench;
mod classify;
mod client;
mod dupes;
mod eval;
mod image;
mod progress;
mod search;
mod train;
mod up;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cbir",
    version,
    about = "Content-based image retrieval on deep CNN features"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
struct GatewayArgs {
    /// The gateway (its gRPC API; the same address serves the web UI).
    #[arg(
        long,
        global = true,
        env = "CBIR_GATEWAY_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    gateway: String,
}

#[derive(Subcommand)]
enum Command {
    /// Benchmark ingest: each stage of `cbir index add` alone (rate and CPU
    /// per image), then the whole path through a running system.
    BenchIngest {
        #[command(flatten)]
        args: bench::BenchArgs,
        #[command(flatten)]
        gateway: GatewayArgs,
    },
    /// Start the whole system on embedded defaults and stay in the
    /// foreground until Ctrl-C.
    Up(up::UpArgs),
    /// Classify images with the served network (ImageNet classes by default).
    Classify {
        /// Image files.
        #[arg(required = true)]
        images: Vec<PathBuf>,
        /// One JSON object per image and line.
        #[arg(long)]
        json: bool,
        /// The inference service.
        #[arg(
            long,
            env = "CBIR_INFERENCE_URL",
            default_value = "http://127.0.0.1:50051"
        )]
        inference: String,
        /// The data folder of `cbir up`, whose internal token the call
        /// carries (unless CBIR_INTERNAL_TOKEN gives one).
        #[arg(long, env = "CBIR_DATA_DIR", default_value = "data")]
        data_dir: PathBuf,
    },
    /// Add images to a collection, list its stats, or clear it.
    Index {
        #[command(subcommand)]
        command: IndexCommand,
        #[command(flatten)]
        gateway: GatewayArgs,
    },
    /// One stored image: show it, delete images by id, or set its label.
    Image {
        #[command(subcommand)]
        command: image::ImageCommand,
        #[command(flatten)]
        gateway: GatewayArgs,
    },
    /// Group a collection's near-duplicate images (resized, recompressed or
    /// cropped copies); optionally keep the oldest of each group and delete
    /// the others.
    Dupes {
        #[command(flatten)]
        args: dupes::DupesArgs,
        #[command(flatten)]
        gateway: GatewayArgs,
    },
    /// Whole collections as files: export one, import one (also into
    /// another system or database backend).
    Collection {
        #[command(subcommand)]
        command: backup::CollectionCommand,
        #[command(flatten)]
        gateway: GatewayArgs,
    },
    /// Copy the index's SQLite database to FILE while it serves (online,
    /// consistent); on MySQL/MariaDB use mariadb-dump (docs/OPERATIONS.md).
    Backup {
        file: PathBuf,
        #[command(flatten)]
        gateway: GatewayArgs,
    },
    /// API keys for the gateway's access control.
    Key {
        #[command(subcommand)]
        command: KeyCommand,
    },
    /// Find the images most similar to each IMAGE (several: one batch
    /// search), optionally among those with some labels, under a path or
    /// added in a time range; --offset pages.
    Search {
        #[command(flatten)]
        args: search::SearchArgs,
        #[command(flatten)]
        gateway: GatewayArgs,
    },
    /// Fine-tune the network on a folder-per-class set: uploads DIR (or
    /// names it on the server with --server), follows the job with a
    /// progress bar and prints the registered model.
    Train {
        dir: PathBuf,
        /// The model's name; each job registers the next version.
        #[arg(long)]
        name: String,
        /// Epochs of fine-tuning (0: the service default).
        #[arg(long, default_value_t = 0)]
        epochs: u32,
        /// Fewest images a class may have (0: the service default, 100).
        #[arg(long, default_value_t = 0)]
        min_per_class: u32,
        /// DIR is a folder on the training service's machine (under its
        /// allowed roots) instead of one to upload.
        #[arg(long)]
        server: bool,
        /// Activate the model when it is registered and wait for the
        /// collections to be rebuilt.
        #[arg(long)]
        activate: bool,
        /// Job states as JSON lines on stdout instead of a progress bar.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        gateway: GatewayArgs,
    },
    /// The model registry: list, activate, delete.
    Model {
        #[command(subcommand)]
        command: ModelCmd,
        #[command(flatten)]
        gateway: GatewayArgs,
    },
    /// Uploaded training datasets: list them against the disk quota, delete
    /// one no job needs.
    Dataset {
        #[command(subcommand)]
        command: DatasetCmd,
        #[command(flatten)]
        gateway: GatewayArgs,
    },
    /// Retrieval quality of a labeled folder-per-class set: indexes DIR into
    /// a fresh collection and reports precision@K and mAP (leave-one-out
    /// over DIR unless --queries is given), overall and per class.
    Eval {
        dir: PathBuf,
        /// A folder-per-class set of queries; without it every image of DIR
        /// queries the others.
        #[arg(long)]
        queries: Option<PathBuf>,
        /// Cut-offs of precision@K.
        #[arg(short = 'k', value_delimiter = ',', default_value = "1,5,10")]
        k: Vec<usize>,
        /// Search modes to measure, comma-separated: refined, probe,
        /// exact, partition.
        #[arg(long, value_delimiter = ',', default_value = "refined")]
        mode: Vec<String>,
        /// Index into this collection instead of a fresh temporary one.
        #[arg(long)]
        collection: Option<String>,
        /// Keep the collection afterwards.
        #[arg(long)]
        keep: bool,
        /// One JSON object per mode and line.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        gateway: GatewayArgs,
    },
}

#[derive(Subcommand)]
enum ModelCmd {
    /// Every registered model; the active one is starred.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Serve this model and rebuild the collections for it.
    Activate {
        name: String,
        version: String,
        /// Return once activated, without waiting for the rebuilds.
        #[arg(long)]
        no_wait: bool,
    },
    /// Remove a model that is not active.
    Delete { name: String, version: String },
}

#[derive(Subcommand)]
enum DatasetCmd {
    /// Every uploaded dataset: size, jobs using it, expiry; and the quota.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Delete a dataset no queued or running job uses.
    Rm { id: String },
}

#[derive(Subcommand)]
enum KeyCommand {
    /// Make a new random API key: prints the key (give it to its holder,
    /// who sets CBIR_API_KEY or sends it as x-api-key) and the entry for the
    /// gateway config, which keeps only its SHA-256.
    New {
        /// Who holds the key.
        #[arg(long)]
        name: String,
        /// search, index or admin.
        #[arg(long, default_value = "search")]
        role: String,
    },
}

#[derive(Subcommand)]
enum IndexCommand {
    /// Add image files and folders (recursively; label = parent folder name).
    Add {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        #[arg(long, short = 'c', default_value = "default")]
        collection: String,
        #[arg(long)]
        json: bool,
    },
    /// Count per partition, memory, model.
    Stats {
        #[arg(long, short = 'c', default_value = "default")]
        collection: String,
        #[arg(long)]
        json: bool,
    },
    /// Remove every image of the collection (the collection stays).
    Clear {
        #[arg(long, short = 'c', default_value = "default")]
        collection: String,
    },
}

fn main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    // Direct calls to the internal services (cbir classify) carry the
    // internal token: CBIR_INTERNAL_TOKEN, else the one `cbir up` keeps in
    // its data folder. `cbir up` picks its own.
    if let Command::Classify { data_dir, .. } = &cli.command {
        let token = match std::env::var("CBIR_INTERNAL_TOKEN") {
            Ok(t) => Some(t),
            Err(_) => cbir_common::token::read(data_dir).map_err(anyhow::Error::msg)?,
        };
        cbir_common::grpc::set_outgoing_internal_token(token.as_deref())
            .map_err(anyhow::Error::msg)?;
    }
    // https:// server URLs signed by a private CA.
    if let Some(ca) = std::env::var_os("CBIR_TLS_CA") {
        cbir_common::tls::TlsConfig {
            ca: Some(ca.into()),
            ..Default::default()
        }
        .install_client()
        .map_err(anyhow::Error::msg)?;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(cli.command))
}

async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Up(args) => up::run(args).await.map(|()| ExitCode::SUCCESS),
        Command::Classify {
            images,
            json,
            inference,
            data_dir: _,
        } => classify::run(&inference, &images, json).await,
        Command::Index { command, gateway } => index(command, &gateway.gateway).await,
        Command::Image { command, gateway } => image::run(&gateway.gateway, command).await,
        Command::Dupes { args, gateway } => dupes::run(&gateway.gateway, args).await,
        Command::Collection { command, gateway } => {
            backup::collection(&gateway.gateway, command).await
        }
        Command::Backup { file, gateway } => backup::backup(&gateway.gateway, &file).await,
        Command::Key {
            command: KeyCommand::New { name, role },
        } => new_key(&name, role),
        Command::Search { args, gateway } => search::run(&gateway.gateway, &args).await,
        Command::Train {
            dir,
            name,
            epochs,
            min_per_class,
            server,
            activate,
            json,
            gateway,
        } => {
            train::train(train::TrainArgs {
                gateway: gateway.gateway,
                dir,
                name,
                epochs,
                min_per_class,
                server,
                activate,
                json,
            })
            .await
        }
        Command::Model { command, gateway } => train::model(&gateway.gateway, command.into()).await,
        Command::Dataset { command, gateway } => {
            train::dataset(&gateway.gateway, command.into()).await
        }
        Command::BenchIngest { args, gateway } => {
            bench::run(&gateway.gateway, args).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Eval {
            dir,
            queries,
            k,
            mode,
            collection,
            keep,
            json,
            gateway,
        } => {
            eval::run(eval::EvalArgs {
                gateway: gateway.gateway,
                dir,
                queries,
                ks: k,
                modes: mode,
                collection,
                keep,
                json,
            })
            .await
        }
    }
}

async fn index(command: IndexCommand, gateway: &str) -> anyhow::Result<ExitCode> {
    match command {
        IndexCommand::Add {
            paths,
            collection,
            json,
        } => client::index_add(gateway, &collection, &paths, json).await,
        IndexCommand::Stats { collection, json } => client::stats(gateway, &collection, json).await,
        IndexCommand::Clear { collection } => client::clear(gateway, &collection).await,
    }
}

/// A new random API key, and the gateway config entry that admits it.
fn new_key(name: &str, role: String) -> anyhow::Result<ExitCode> {
    let role = match role.as_str() {
        "search" | "index" | "admin" => role,
        other => anyhow::bail!("unknown role {other:?}: use search, index or admin"),
    };
    let key = format!(
        "cbir_{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    println!("key (shown once): {key}");
    println!("gateway config (gateway.toml):");
    println!("[[auth.keys]]");
    println!("name = {name:?}");
    println!("sha256 = \"{}\"", cbir_gateway::auth::hash_key(&key));
    println!("role = \"{role}\"");
    Ok(ExitCode::SUCCESS)
}

impl From<ModelCmd> for train::ModelCommand {
    fn from(c: ModelCmd) -> Self {
        match c {
            ModelCmd::List { json } => Self::List { json },
            ModelCmd::Activate {
                name,
                version,
                no_wait,
            } => Self::Activate {
                name,
                version,
                no_wait,
            },
            ModelCmd::Delete { name, version } => Self::Delete { name, version },
        }
    }
}

impl From<DatasetCmd> for train::DatasetCommand {
    fn from(c: DatasetCmd) -> Self {
        match c {
            DatasetCmd::List { json } => Self::List { json },
            DatasetCmd::Rm { id } => Self::Rm { id },
        }
    }
}
