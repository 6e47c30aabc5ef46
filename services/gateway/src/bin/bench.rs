//! End-to-end benchmark of a running system (`cbir up`): searches by
//! uploaded JPEG through the gateway's REST API against a large collection,
//! at a steady open-loop rate (latency counted from the scheduled send time,
//! so a slow answer cannot hide the queue behind it), then rising rates to
//! find the highest one with p99 under a bound; and the indexing rate of a
//! folder through the gateway.
//!
//! The large collection is seeded with real images indexed through the
//! gateway, plus synthetic neighbours of their features written straight to
//! the index service (embedding 100k real images would take half an hour on
//! two cores); every query is a real JPEG embedded by the real network.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use cbir_api::v1 as pb;
use cbir_api::v1::index_service_client::IndexServiceClient;
use cbir_api::v1::search_service_client::SearchServiceClient;
use clap::Parser;
use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng};
use serde_json::json;

#[derive(Parser)]
struct Args {
    /// The gateway (REST and gRPC).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    gateway: String,
    /// The index service, for seeding synthetic vectors.
    #[arg(long, default_value = "http://127.0.0.1:50052")]
    index: String,
    /// The data folder of `cbir up`, whose internal token the seeding
    /// calls to the index service carry (CBIR_INTERNAL_TOKEN overrides it).
    #[arg(long, default_value = "data")]
    data_dir: PathBuf,
    /// A folder-per-class image set: queries and seed images.
    #[arg(long, default_value = "../shared/data/caltech101")]
    images: PathBuf,
    #[arg(long, default_value = "bench100k")]
    collection: String,
    /// Vectors in the searched collection.
    #[arg(long, default_value_t = 100_000)]
    size: usize,
    /// Real images indexed through the gateway as seeds.
    #[arg(long, default_value_t = 1000)]
    seeds: usize,
    /// Steady rate (requests/s) and duration of the main measurement.
    #[arg(long, default_value_t = 10.0)]
    rate: f64,
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    #[arg(long, default_value_t = 20)]
    top_k: u32,
    #[arg(long, default_value = "probe")]
    mode: String,
    /// Then raise the rate step by step to find the highest one with p99
    /// under --p99-bound-ms.
    #[arg(long)]
    find_max: bool,
    #[arg(long, default_value_t = 250.0)]
    p99_bound_ms: f64,
    #[arg(long, default_value_t = 20)]
    step_seconds: u64,
    /// Also measure the indexing rate of this many images of --images.
    #[arg(long, default_value_t = 0)]
    index_images: usize,
}

struct Run {
    rate: f64,
    sent: u64,
    errors: u64,
    hist: Histogram<u64>,
    first_error: Option<String>,
    achieved: f64,
}

fn q(h: &Histogram<u64>, p: f64) -> f64 {
    h.value_at_quantile(p) as f64 / 1000.0
}

async fn steady(
    http: &reqwest::Client,
    args: &Args,
    queries: &Arc<Vec<Vec<u8>>>,
    rate: f64,
    seconds: u64,
) -> Run {
    let n = (rate * seconds as f64).round() as u64;
    let start = Instant::now() + Duration::from_millis(100);
    let mut tasks = Vec::with_capacity(n as usize);
    for i in 0..n {
        let at = start + Duration::from_secs_f64(i as f64 / rate);
        let http = http.clone();
        let url = format!("{}/api/search", args.gateway);
        let data = queries[i as usize % queries.len()].clone();
        let (coll, k, mode) = (args.collection.clone(), args.top_k, args.mode.clone());
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(at.into()).await;
            let form = reqwest::multipart::Form::new()
                .part(
                    "image",
                    reqwest::multipart::Part::bytes(data)
                        .file_name("q.jpg")
                        .mime_str("image/jpeg")
                        .expect("mime"),
                )
                .text("collection", coll)
                .text("top_k", k.to_string())
                .text("mode", mode);
            let r = http.post(url).multipart(form).send().await;
            let result = match r {
                Ok(r) if r.status().is_success() => match r.bytes().await {
                    Ok(_) => Ok(()),
                    Err(e) => Err(e.to_string()),
                },
                Ok(r) => Err(format!(
                    "HTTP {}: {}",
                    r.status(),
                    r.text().await.unwrap_or_default()
                )),
                Err(e) => Err(e.to_string()),
            };
            (at.elapsed(), result)
        }));
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 120_000_000, 3).expect("histogram");
    let mut errors = 0;
    let mut first_error = None;
    for t in tasks {
        let (lat, r) = t.await.expect("task");
        match r {
            Ok(()) => {
                let _ = hist.record(lat.as_micros().max(1) as u64);
            }
            Err(e) => {
                errors += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    let wall = start.elapsed().as_secs_f64();
    Run {
        rate,
        sent: n,
        errors,
        achieved: hist.len() as f64 / wall,
        hist,
        first_error,
    }
}

fn list_images(dir: &std::path::Path) -> anyhow::Result<Vec<PathBuf>> {
    cbir_gateway::index_jobs::walk_images(dir)
        .with_context(|| format!("cannot read {}", dir.display()))
}

async fn add_through_gateway(
    client: &SearchServiceClient<tonic::transport::Channel>,
    collection: &str,
    files: &[PathBuf],
) -> anyhow::Result<(Vec<(u64, String)>, f64)> {
    use futures::StreamExt;
    let started = Instant::now();
    let mut out = Vec::new();
    let mut stream = futures::stream::iter(files.chunks(16).map(|chunk| {
        let mut c = client.clone();
        let collection = collection.to_string();
        let chunk = chunk.to_vec();
        async move {
            let mut images = Vec::new();
            for p in &chunk {
                images.push(cbir_gateway::index_jobs::read_image(p).await?);
            }
            let labels: Vec<String> = images.iter().map(|i| i.label.clone()).collect();
            let r = c
                .add_images(pb::AddImagesRequest {
                    replace: false,
                    collection,
                    images,
                    create_collection: false,
                })
                .await
                .map_err(|s| anyhow::anyhow!("AddImages: {}", s.message()))?
                .into_inner();
            anyhow::Ok(
                r.results
                    .into_iter()
                    .zip(labels)
                    .filter(|(r, _)| r.error.is_empty())
                    .map(|(r, l)| (r.id, l))
                    .collect::<Vec<_>>(),
            )
        }
    }))
    .buffered(3);
    while let Some(r) = stream.next().await {
        out.extend(r?);
    }
    Ok((out, started.elapsed().as_secs_f64()))
}

/// Real seeds through the gateway, then noisy copies of their features in
/// the same partitions until the collection holds `size` vectors.
async fn seed(
    args: &Args,
    client: &SearchServiceClient<tonic::transport::Channel>,
    files: &[PathBuf],
) -> anyhow::Result<()> {
    let mut c = client.clone();
    let stats = c
        .get_stats(pb::StatsRequest {
            collection: args.collection.clone(),
        })
        .await;
    if let Ok(s) = &stats {
        if s.get_ref().count as usize >= args.size {
            eprintln!(
                "bench: collection {} holds {} vectors already",
                args.collection,
                s.get_ref().count
            );
            return Ok(());
        }
    }
    c.create_collection(pb::CreateGatewayCollectionRequest {
        name: args.collection.clone(),
        description: "gateway-bench".into(),
        if_not_exists: true,
    })
    .await
    .map_err(|s| anyhow::anyhow!("create: {}", s.message()))?;
    let step = (files.len() / args.seeds.max(1)).max(1);
    let seeds: Vec<PathBuf> = files
        .iter()
        .step_by(step)
        .take(args.seeds)
        .cloned()
        .collect();
    eprintln!(
        "bench: indexing {} real seed images through the gateway",
        seeds.len()
    );
    let (ids, secs) = add_through_gateway(client, &args.collection, &seeds).await?;
    eprintln!("bench: {} seeds in {secs:.1} s", ids.len());
    let channel = tonic::transport::Endpoint::from_shared(args.index.clone())?
        .connect()
        .await
        .with_context(|| format!("cannot reach the index service at {}", args.index))?;
    // The index service takes calls from the cbir services only: the
    // internal token goes with every one.
    let mut index = IndexServiceClient::with_interceptor(channel, with_token as TokenFn)
        .max_encoding_message_size(256 << 20)
        .max_decoding_message_size(256 << 20);
    let mut feats = Vec::with_capacity(ids.len());
    for (id, label) in &ids {
        let r = index
            .get_image(pb::GetImageRequest {
                collection: args.collection.clone(),
                id: *id,
                include_feature: true,
                ..Default::default()
            })
            .await?
            .into_inner()
            .image
            .context("image")?;
        feats.push((r.feature, r.predicted_class, label.clone()));
    }
    let count = index
        .stats(pb::StatsRequest {
            collection: args.collection.clone(),
        })
        .await?
        .into_inner()
        .count as usize;
    let missing = args.size.saturating_sub(count);
    eprintln!("bench: writing {missing} synthetic neighbours to the index service");
    write_neighbours(args, &mut index, &feats, count, missing).await
}

/// Noisy copies of the seeds' features (feature, class, label), `missing`
/// of them, written straight to the index service; the collection held
/// `count` before.
async fn write_neighbours(
    args: &Args,
    index: &mut IndexClient,
    feats: &[(Vec<f32>, i32, String)],
    count: usize,
    missing: usize,
) -> anyhow::Result<()> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let dims = feats.first().map_or(1280, |f| f.0.len());
    // Noise of norm about 0.6: neighbours as far from their seed as
    // same-class images are from each other.
    let sigma = 0.6 / (dims as f32).sqrt();
    let started = Instant::now();
    let mut written = 0;
    while written < missing {
        let n = (missing - written).min(1000);
        let mut records = Vec::with_capacity(n);
        for _ in 0..n {
            let (f, class, label) = &feats[rng.random_range(0..feats.len())];
            let mut v: Vec<f32> = f
                .iter()
                .map(|x| {
                    // Box-Muller.
                    let u1: f32 = rng.random_range(1e-7..1.0);
                    let u2: f32 = rng.random_range(0.0..1.0);
                    x + sigma * (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
                })
                .collect();
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
            v.iter_mut().for_each(|x| *x /= norm);
            let hash: [u8; 32] = rng.random();
            records.push(pb::ImageRecord {
                content_hash: hash.iter().map(|b| format!("{b:02x}")).collect(),
                file_name: format!("synthetic-{}.jpg", count + written + records.len()),
                label: label.clone(),
                predicted_class: *class,
                feature: v,
                ..Default::default()
            });
        }
        index
            .upsert(pb::UpsertRequest {
                replace: false,
                collection: args.collection.clone(),
                records,
            })
            .await
            .map_err(|s| anyhow::anyhow!("upsert: {}", s.message()))?;
        written += n;
    }
    eprintln!(
        "bench: {written} synthetic vectors in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn report(label: &str, r: &Run) -> serde_json::Value {
    println!(
        "{label:<10} rate {:>5.1}/s  sent {:>5}  ok {:>5}  errors {:>3}  achieved {:>5.1}/s  p50 {:>7.1} ms  p90 {:>7.1} ms  p99 {:>7.1} ms  max {:>7.1} ms",
        r.rate,
        r.sent,
        r.hist.len(),
        r.errors,
        r.achieved,
        q(&r.hist, 0.5),
        q(&r.hist, 0.9),
        q(&r.hist, 0.99),
        r.hist.max() as f64 / 1000.0
    );
    if let Some(e) = &r.first_error {
        println!("           first error: {e}");
    }
    json!({
        "rate": r.rate, "sent": r.sent, "errors": r.errors, "achieved": r.achieved,
        "p50_ms": q(&r.hist, 0.5), "p90_ms": q(&r.hist, 0.9), "p99_ms": q(&r.hist, 0.99),
        "max_ms": r.hist.max() as f64 / 1000.0,
    })
}

type TokenFn = fn(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status>;
type IndexClient = IndexServiceClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, TokenFn>,
>;

fn with_token(mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
    cbir_common::grpc::attach_internal_token(req.metadata_mut());
    Ok(req)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Seeding writes to the index service directly, with the internal
    // token: CBIR_INTERNAL_TOKEN, else the one `cbir up` keeps in --data-dir.
    let token = match std::env::var("CBIR_INTERNAL_TOKEN") {
        Ok(t) => Some(t),
        Err(_) => cbir_common::token::read(&args.data_dir).map_err(anyhow::Error::msg)?,
    };
    cbir_common::grpc::set_outgoing_internal_token(token.as_deref()).map_err(anyhow::Error::msg)?;
    let files = list_images(&args.images)?;
    anyhow::ensure!(
        !files.is_empty(),
        "no images under {}",
        args.images.display()
    );
    let channel = tonic::transport::Endpoint::from_shared(args.gateway.clone())?
        .connect()
        .await
        .with_context(|| {
            format!(
                "cannot reach the gateway at {}: is `cbir up` running?",
                args.gateway
            )
        })?;
    let client = SearchServiceClient::new(channel)
        .max_encoding_message_size(256 << 20)
        .max_decoding_message_size(256 << 20);
    let mut out = serde_json::Map::new();

    if args.index_images > 0 {
        let coll = format!("bench-indexing-{}", std::process::id());
        let mut c = client.clone();
        c.create_collection(pb::CreateGatewayCollectionRequest {
            name: coll.clone(),
            description: "gateway-bench indexing rate".into(),
            if_not_exists: true,
        })
        .await
        .map_err(|s| anyhow::anyhow!("create: {}", s.message()))?;
        let step = files
            .len()
            .checked_div(args.index_images)
            .unwrap_or(1)
            .max(1);
        let pick: Vec<PathBuf> = files
            .iter()
            .skip(1)
            .step_by(step)
            .take(args.index_images)
            .cloned()
            .collect();
        let (ids, secs) = add_through_gateway(&client, &coll, &pick).await?;
        let rate = ids.len() as f64 / secs;
        println!(
            "indexing   {} images through the gateway in {secs:.1} s: {rate:.1} images/s",
            ids.len()
        );
        out.insert("indexing_images_per_second".into(), json!(rate));
        let _ = c
            .delete_collection(pb::DeleteCollectionRequest { name: coll })
            .await;
    }

    seed(&args, &client, &files).await?;
    // Query JPEGs not among the seeds.
    let queries: Arc<Vec<Vec<u8>>> = Arc::new(
        files
            .iter()
            .skip(3)
            .step_by((files.len() / 300).max(1))
            .take(300)
            .map(std::fs::read)
            .collect::<Result<_, _>>()?,
    );
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .tcp_nodelay(true)
        .build()?;
    // Warm-up: connections, caches, the allocator.
    let _ = steady(&http, &args, &queries, 5.0, 4).await;
    let main = steady(&http, &args, &queries, args.rate, args.seconds).await;
    out.insert("steady".into(), report("steady", &main));
    if args.find_max {
        let mut best = (main.errors == 0 && q(&main.hist, 0.99) <= args.p99_bound_ms)
            .then(|| out["steady"].clone());
        let mut rate = args.rate;
        loop {
            rate = (rate * 1.25).round().max(rate + 1.0);
            let r = steady(&http, &args, &queries, rate, args.step_seconds).await;
            let v = report("step", &r);
            if r.errors > 0 || q(&r.hist, 0.99) > args.p99_bound_ms {
                break;
            }
            best = Some(v);
            if rate > 500.0 {
                break;
            }
        }
        if let Some(b) = &best {
            println!(
                "highest sustained rate with p99 under {} ms: {} requests/s",
                args.p99_bound_ms, b["rate"]
            );
        }
        out.insert(
            "max_sustained".into(),
            best.unwrap_or(serde_json::Value::Null),
        );
    }
    println!("{}", serde_json::Value::Object(out));
    Ok(())
}
