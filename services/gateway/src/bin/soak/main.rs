//! Soak test of the whole system (a command, not a test): starts the four
//! service binaries as separate processes on loopback (SQLite, an internal
//! token), fills a collection with real images, then for `--seconds` runs
//! steady open-loop searches by uploaded JPEG plus `--uploaders` concurrent
//! indexing clients writing into `--churn-collections` other collections
//! (several writers at once into one database is what breaks an embedded
//! store), each collection cleared whenever it reaches `--churn-size` (so
//! that the data, and with it the expected memory, stays bounded).
//!
//! Every `--window-s` it prints the searches, errors, p50/p99 latency (from
//! the scheduled send time) and the resident memory of each service; at
//! the end a summary. Exit status 1 when any request failed or a service's
//! memory grew by more than `--max-growth-pct` from the end of the warm-up.

mod fleet;
mod load;
mod report;

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use rand::{Rng, SeedableRng};
use serde_json::json;

use load::{post_json, upload, Span};

#[derive(Parser)]
pub struct Args {
    /// Folder holding cbir-inference, cbir-index, cbir-training and
    /// cbir-gateway (a release build); this program's folder by default.
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    #[arg(
        long,
        env = "CBIR_WEIGHTS",
        default_value = "data/models/efficientnet-lite0-imagenet.safetensors"
    )]
    weights: PathBuf,
    /// A folder-per-class image set: indexed images and queries.
    #[arg(long, default_value = "../shared/data/caltech101")]
    images: PathBuf,
    /// Length of the measured run, after the warm-up.
    #[arg(long, default_value_t = 600)]
    seconds: u64,
    /// The same load before the measured run; memory growth counts from
    /// its end.
    #[arg(long, default_value_t = 90)]
    warmup_seconds: u64,
    /// Searches per second (open loop).
    #[arg(long, default_value_t = 4.0)]
    search_rate: f64,
    /// Images in the searched collection.
    #[arg(long, default_value_t = 500)]
    collection_size: usize,
    /// Images per indexing request, and seconds between one uploader's
    /// requests.
    #[arg(long, default_value_t = 8)]
    index_batch: usize,
    #[arg(long, default_value_t = 2.0)]
    index_every_s: f64,
    /// Concurrent indexing clients; uploader k writes into collection
    /// `churn-{k mod churn_collections}`.
    #[arg(long, default_value_t = 4)]
    uploaders: usize,
    #[arg(long, default_value_t = 3)]
    churn_collections: usize,
    /// An indexing collection is cleared when it holds this many.
    #[arg(long, default_value_t = 400)]
    churn_size: u64,
    #[arg(long, default_value_t = 30)]
    window_s: u64,
    #[arg(long, default_value_t = 10.0)]
    max_growth_pct: f64,
    /// Also write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// Every image of the set in a fixed, shuffled order: the searched set,
/// then the churn set.
fn shuffled_images(args: &Args) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = cbir_gateway::index_jobs::walk_images(&args.images)
        .with_context(|| format!("cannot read the image set {}", args.images.display()))?;
    if files.len() < args.collection_size + args.index_batch * 4 {
        bail!(
            "{} holds {} images; the soak needs more than --collection-size {}",
            args.images.display(),
            files.len(),
            args.collection_size
        );
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    files.sort();
    for i in (1..files.len()).rev() {
        files.swap(i, rng.random_range(0..=i));
    }
    Ok(files)
}

/// Creates the collections and fills the searched one.
async fn fill(
    args: &Args,
    http: &reqwest::Client,
    base: &str,
    churn_names: &[String],
    searched: &[PathBuf],
) -> anyhow::Result<()> {
    for coll in std::iter::once("soak").chain(churn_names.iter().map(String::as_str)) {
        post_json(
            http,
            format!("{base}/api/collections"),
            json!({"name": coll, "if_not_exists": true}),
        )
        .await
        .map_err(anyhow::Error::msg)?;
    }
    let t0 = Instant::now();
    for chunk in searched.chunks(16) {
        upload(http, base, "soak", chunk)
            .await
            .map_err(anyhow::Error::msg)?;
    }
    eprintln!(
        "soak: {} images indexed in {:.1} s; {} s warm-up, then {} s measured at {} searches/s \
         + {} uploaders into {} collections, each {} images every {} s",
        searched.len(),
        t0.elapsed().as_secs_f64(),
        args.warmup_seconds,
        args.seconds,
        args.search_rate,
        args.uploaders.max(1),
        churn_names.len(),
        args.index_batch,
        args.index_every_s
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let files = shuffled_images(&args)?;
    let (searched, rest) = files.split_at(args.collection_size);
    let churn: Vec<PathBuf> = rest.to_vec();

    let (mut fleet, base) = fleet::start(&args)?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()?;
    eprintln!(
        "soak: services starting (logs in {})",
        fleet.dir.path().display()
    );
    fleet::wait_healthy(&http, &base, &mut fleet).await?;
    let churn_names: Vec<String> = (0..args.churn_collections.max(1))
        .map(|k| format!("churn-{k}"))
        .collect();
    fill(&args, &http, &base, &churn_names, searched).await?;

    let queries: Arc<Vec<PathBuf>> = Arc::new(files.clone());
    let start = Instant::now() + Duration::from_millis(200);
    let span = Span {
        start,
        end: start + Duration::from_secs(args.warmup_seconds + args.seconds),
    };
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let searches = load::spawn_searches(&args, &http, &base, queries, span, &tx);
    let uploaders = load::spawn_uploaders(&args, &http, &base, churn, &churn_names, span, &tx);
    drop(tx);

    let rec = report::collect(&args, &mut fleet, rx, span).await?;
    searches.await?;
    for h in uploaders.handles {
        h.await?;
    }
    let indexed = uploaders.indexed_total.load(Ordering::Relaxed);
    if !report::summarize(&args, &fleet, rec, indexed, churn_names.len())? {
        // exit() skips destructors: stop the services first, or they outlive
        // the soak and hold their memory and ports.
        drop(fleet);
        std::process::exit(1);
    }
    eprintln!("soak: passed");
    Ok(())
}
