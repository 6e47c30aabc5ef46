//! A sharded index against one node on the same data, through the
//! gateway's own search path (`Gateway::search`, vector queries): the top
//! 10 of each mode compared query by query, and the latency of each (the
//! difference is the fan-out and merge). The index services run apart, on
//! one database (scripts/bench_shards.sh starts them); queries are stored
//! vectors with noise, each with its stored predicted class.
//!
//! shard-bench --one http://127.0.0.1:7000 \
//!   --shards http://127.0.0.1:7001,http://127.0.0.1:7002,http://127.0.0.1:7003

use std::sync::Arc;
use std::time::Instant;

use cbir_api::v1 as pb;
use cbir_api::v1::index_service_client::IndexServiceClient;
use clap::Parser;
use rand::{Rng, SeedableRng};

#[derive(Parser)]
struct Args {
    /// The one-node index service.
    #[arg(long)]
    one: String,
    /// One index service per shard, in shard order.
    #[arg(long, value_delimiter = ',')]
    shards: Vec<String>,
    #[arg(long, default_value = "bench")]
    collection: String,
    /// Queries of probe, refined and partition mode.
    #[arg(long, default_value_t = 200)]
    queries: usize,
    /// Queries of exact mode (each reads every vector from the database).
    #[arg(long, default_value_t = 5)]
    exact_queries: usize,
    /// First recompute every augmented vector (full storage) on the one
    /// node and on every shard at once, and report how long each took
    /// (with `peers` set, the shards sum neighbours across shards).
    #[arg(long)]
    refresh: bool,
}

/// Asks the index service at `url` to recompute every augmented vector of
/// `collection`, and waits until none is stale: seconds taken.
async fn refresh(url: String, collection: String) -> anyhow::Result<f64> {
    let t = Instant::now();
    let mut c = IndexServiceClient::connect(url.clone()).await?;
    c.refine_collection(pb::RefineCollectionRequest {
        collection: collection.clone(),
    })
    .await?;
    settled(url, collection).await?;
    Ok(t.elapsed().as_secs_f64())
}

/// Waits until no augmented vector of `collection` is stale at `url`.
async fn settled(url: String, collection: String) -> anyhow::Result<()> {
    let t = Instant::now();
    let mut c = IndexServiceClient::connect(url.clone()).await?;
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        let s = c
            .stats(pb::StatsRequest {
                collection: collection.clone(),
            })
            .await?
            .into_inner();
        let r = s.refinement.unwrap_or_default();
        if r.stale == 0 && r.operation_id.is_empty() {
            return Ok(());
        }
        anyhow::ensure!(
            t.elapsed().as_secs() < 3600,
            "{url} did not refresh in an hour"
        );
    }
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 * p) as usize).min(v.len() - 1)]
}

async fn gateway(index_shards: Vec<Vec<String>>) -> anyhow::Result<Arc<cbir_gateway::Gateway>> {
    let mut cfg = cbir_gateway::Config {
        // No inference service: vector queries do not need one, and a
        // refused connection is not retried.
        inference_urls: vec!["http://127.0.0.1:9".into()],
        index_shards,
        retries: 0,
        ..Default::default()
    };
    // Exact mode in compact storage reads every vector from the database.
    cfg.timeouts.search_ms = 600_000;
    Ok(cbir_gateway::Gateway::new(Arc::new(cfg)).await?)
}

/// Waits until the index service at `url` has loaded and answers.
async fn wait_loaded(url: &str, collection: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + std::time::Duration::from_secs(900);
    loop {
        if let Ok(mut c) = IndexServiceClient::connect(url.to_string()).await {
            let r = c
                .get_collection(pb::GetCollectionRequest {
                    name: collection.to_string(),
                })
                .await;
            if r.is_ok() {
                return Ok(());
            }
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{url} did not load in 15 minutes"
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let t = Instant::now();
    for url in std::iter::once(&args.one).chain(&args.shards) {
        wait_loaded(url, &args.collection).await?;
    }
    println!(
        "index services loaded in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    if args.refresh {
        // The refresh every service starts after its load, done first.
        for url in std::iter::once(&args.one).chain(&args.shards) {
            settled(url.clone(), args.collection.clone()).await?;
        }
        // One node alone first, then the shards together: each on the
        // machine's cores without the others.
        let t_one = refresh(args.one.clone(), args.collection.clone()).await?;
        let t = Instant::now();
        let each = futures::future::try_join_all(
            args.shards
                .iter()
                .map(|u| refresh(u.clone(), args.collection.clone())),
        )
        .await?;
        println!(
            "augmented vectors refreshed: one node {t_one:.1} s; {} shards {:.1} s together (each {})",
            args.shards.len(),
            t.elapsed().as_secs_f64(),
            each.iter()
                .map(|s| format!("{s:.1} s"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let one = gateway(vec![vec![args.one.clone()]]).await?;
    let sharded = gateway(args.shards.iter().map(|s| vec![s.clone()]).collect()).await?;
    // Queries: stored vectors (ids spread over the collection) with noise.
    let mut index = IndexServiceClient::connect(args.one.clone())
        .await?
        .max_decoding_message_size(64 << 20);
    let coll = index
        .get_collection(pb::GetCollectionRequest {
            name: args.collection.clone(),
        })
        .await?
        .into_inner()
        .collection
        .ok_or_else(|| anyhow::anyhow!("no collection {}", args.collection))?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let mut queries = Vec::new();
    while queries.len() < args.queries.max(args.exact_queries) {
        let id = rng.random_range(1..=coll.count);
        let Ok(r) = index
            .get_image(pb::GetImageRequest {
                collection: args.collection.clone(),
                id,
                include_feature: true,
                ..Default::default()
            })
            .await
        else {
            continue;
        };
        let Some(img) = r.into_inner().image else {
            continue;
        };
        let scale = 0.5 / (img.feature.len() as f32).sqrt();
        let v: Vec<f32> = img
            .feature
            .iter()
            .map(|x| x + scale * (rng.random::<f32>() * 2.0 - 1.0))
            .collect();
        queries.push((v, img.predicted_class));
    }
    println!(
        "{} vectors, {} shards, {} queries ({} exact)",
        coll.count,
        args.shards.len(),
        args.queries,
        args.exact_queries
    );
    println!();
    println!("| mode | one node p50 / p99 ms | {} shards p50 / p99 ms | identical top 10 | recall@10 vs exact, one node / sharded |", args.shards.len());
    println!("|---|---|---|---|---|");
    let search = |gw: Arc<cbir_gateway::Gateway>, q: (Vec<f32>, i32), mode: pb::SearchMode| {
        let collection = args.collection.clone();
        async move {
            let t = Instant::now();
            let r = gw
                .search(pb::SearchRequest {
                    query: Some(pb::search_request::Query::Vector(pb::VectorQuery {
                        values: q.0,
                        predicted_class: q.1,
                        class_probabilities: Vec::new(),
                    })),
                    collection,
                    top_k: 10,
                    mode: mode as i32,
                    ..Default::default()
                })
                .await?;
            let ids: Vec<u64> = r.results.iter().map(|h| h.id).collect();
            anyhow::Ok((t.elapsed().as_secs_f64() * 1e3, ids))
        }
    };
    let mut exact: Vec<(Vec<u64>, Vec<u64>)> = Vec::new();
    for mode in [
        pb::SearchMode::Exact,
        pb::SearchMode::Probe,
        // Two passes over the shards: expansion terms, then the ranking.
        pb::SearchMode::Refined,
        pb::SearchMode::Partition,
    ] {
        let n = if mode == pb::SearchMode::Exact {
            args.exact_queries
        } else {
            args.queries
        };
        let (mut lat_one, mut lat_sharded) = (Vec::new(), Vec::new());
        let (mut same, mut found_one, mut found_sharded, mut judged) = (0, 0, 0, 0);
        for (i, q) in queries.iter().take(n).enumerate() {
            let (t1, a) = search(one.clone(), q.clone(), mode).await?;
            let (t2, b) = search(sharded.clone(), q.clone(), mode).await?;
            lat_one.push(t1);
            lat_sharded.push(t2);
            same += usize::from(a == b);
            if mode == pb::SearchMode::Exact {
                exact.push((a, b));
            } else if let Some((ea, eb)) = exact.get(i) {
                judged += 10;
                found_one += a.iter().filter(|id| ea.contains(id)).count();
                found_sharded += b.iter().filter(|id| eb.contains(id)).count();
            }
        }
        let recall = if judged > 0 {
            format!(
                "{:.3} / {:.3} (first {} queries)",
                found_one as f64 / judged as f64,
                found_sharded as f64 / judged as f64,
                judged / 10
            )
        } else {
            "(is exact)".into()
        };
        println!(
            "| {} | {:.2} / {:.2} | {:.2} / {:.2} | {same} of {n} | {recall} |",
            mode.as_str_name(),
            pct(&mut lat_one, 0.5),
            pct(&mut lat_one, 0.99),
            pct(&mut lat_sharded, 0.5),
            pct(&mut lat_sharded, 0.99),
        );
    }
    Ok(())
}
