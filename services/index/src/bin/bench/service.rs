//! `--service N`: the index service's own path at scale. N synthetic
//! vectors are written to a SQLite file, loaded by `Index::open` in compact
//! storage (as the service starts), and searched through `Index::search`,
//! which re-ranks its short list with f32 vectors read from the database.
//! Recall@10 is against a true brute force: one pass over every stored
//! vector for all queries at once. Resident memory comes from
//! /proc/self/status (VmRSS after the load, VmHWM the peak).

use std::time::Instant;

use cbir_index::index::SearchRequest;
use cbir_index::mem::{Filter, Mode, ProbeRule, Storage};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::{pct, synthetic_image, Args, Generator, FAMILY};

/// Rows per read of the brute-force pass.
const PAGE: u64 = 5_000;

/// A field of /proc/self/status, in bytes.
fn proc_status(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix(field)?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse()
                .ok()
        })
        .map_or(0, |kb: u64| kb * 1024)
}

fn gib(b: u64) -> f64 {
    b as f64 / (1u64 << 30) as f64
}

pub async fn run(args: &Args) -> anyhow::Result<()> {
    let n = args.service;
    let classes = args.service_classes;
    let path = args
        .db_dir
        .join(format!("cbir-bench-service-{n}-{classes}.db"));
    let url = format!("sqlite://{}", path.display());
    let mut rng = SmallRng::seed_from_u64(42);
    let gen = Generator::new(&mut rng, classes, args.dims);
    if !(args.db_keep && path.exists()) {
        write(&url, &gen, &mut rng, n, classes, args.dims).await?;
    } else {
        println!("reusing {}", path.display());
    }
    let rss_before = proc_status("VmRSS:");
    // The service's own pool size: a short list is read over that many
    // connections at once.
    let store =
        cbir_index::Store::connect(&url, cbir_index::Config::default().max_connections).await?;
    let t = Instant::now();
    let mut index = cbir_index::Index::open(
        store.clone(),
        cbir_index::Limits::default(),
        ProbeRule::default(),
        cbir_index::mem::Refine::default(),
        cbir_index::Layout {
            storage: Storage::Compact,
            ..Default::default()
        },
    )
    .await?;
    let load_s = t.elapsed().as_secs_f64();
    let stats = index.stats("bench")?;
    let (rss, peak) = (proc_status("VmRSS:"), proc_status("VmHWM:"));
    println!();
    println!("| vectors | classes | load from SQLite | resident after load | peak resident | index memory per vector |");
    println!("|---|---|---|---|---|---|");
    println!(
        "| {} | {classes} | {:.1} s ({:.0} vectors/s) | {:.2} GiB ({:.2} GiB before) | {:.2} GiB | {:.0} bytes |",
        stats.count,
        load_s,
        stats.count as f64 / load_s,
        gib(rss),
        gib(rss_before),
        gib(peak),
        stats.bytes as f64 / stats.count.max(1) as f64
    );

    let queries: Vec<(Vec<f32>, i32)> = (0..args.queries)
        .map(|_| {
            let class = rng.random_range(0..classes);
            (gen.sample(&mut rng, class), class as i32)
        })
        .collect();
    let t = Instant::now();
    let coll = store.collections().await?.remove(0);
    let truth = if args.service_no_truth {
        vec![Vec::new(); queries.len()]
    } else {
        let truth = brute_force(&store, coll.id, &queries).await?;
        println!(
            "\nbrute force for {} queries: {:.1} s (one pass over the database)",
            queries.len(),
            t.elapsed().as_secs_f64()
        );
        truth
    };
    println!();
    println!("| vectors | mode | p50 ms | p99 ms | max ms | recall@10 vs exact | vectors read |");
    println!("|---|---|---|---|---|---|---|");
    // The default order of promise (classes ranked first at this size),
    // then, to compare, every cell's centroid ranked. Every mode searches
    // the same queries, so a later mode finds some of the rows its short
    // lists read in the page cache: the default mode goes first.
    let every_cell = ProbeRule {
        class_first_cells: 0,
        ..ProbeRule::default()
    };
    for (name, mode, rule) in [
        ("refined (default)", Mode::Refined, ProbeRule::default()),
        ("probe", Mode::Probe, ProbeRule::default()),
        ("partition", Mode::Partition, ProbeRule::default()),
        ("probe, every cell ranked", Mode::Probe, every_cell),
        ("refined, every cell ranked", Mode::Refined, every_cell),
    ] {
        index.probe = rule;
        let mut lat = Vec::new();
        let (mut found, mut read) = (0usize, 0u64);
        for ((v, class), want) in queries.iter().zip(&truth) {
            let t = Instant::now();
            let r = index
                .search(SearchRequest {
                    collection: "bench".into(),
                    vector: v.clone(),
                    predicted_class: Some(*class),
                    top_k: 10,
                    mode: Some(mode),
                    min_similarity: 0.0,
                    exclude_id: None,
                    model: None,
                    filter: Filter::default(),
                    offset: 0,
                    expansion: Default::default(),
                })
                .await?;
            lat.push(t.elapsed().as_secs_f64() * 1e3);
            found += r.hits.iter().filter(|h| want.contains(&h.id)).count();
            read += r.stats.vectors_scanned;
        }
        println!(
            "| {} | {name} | {:.2} | {:.2} | {:.2} | {:.3} | {:.2}% |",
            stats.count,
            pct(&mut lat, 0.5),
            pct(&mut lat, 0.99),
            pct(&mut lat, 1.0),
            found as f64 / (10 * queries.len()) as f64,
            100.0 * read as f64 / (stats.count as f64 * queries.len() as f64)
        );
    }
    Ok(())
}

/// Writes `n` vectors of `classes` classes (10% in a look-alike class's
/// partition, as a classifier errs) in batches of 1000.
async fn write(
    url: &str,
    gen: &Generator,
    rng: &mut SmallRng,
    n: usize,
    classes: usize,
    dims: usize,
) -> anyhow::Result<()> {
    let store = cbir_index::Store::connect(url, 4).await?;
    let c = store
        .create_collection("bench", "bench", "synthetic", "1", dims as u32, "")
        .await?;
    let t = Instant::now();
    let mut written = 0usize;
    while written < n {
        let batch: Vec<cbir_index::store::NewImage> = (0..1000.min(n - written))
            .map(|i| {
                let class = rng.random_range(0..classes);
                let partition = if rng.random::<f32>() < 0.1 {
                    let base = class / FAMILY * FAMILY;
                    (base + rng.random_range(0..FAMILY)).min(classes - 1)
                } else {
                    class
                };
                synthetic_image(written + i, partition as i32, gen.sample(rng, class))
            })
            .collect();
        written += batch.len();
        store.upsert(c.id, &batch, false).await?;
        if written.is_multiple_of(1_000_000) {
            eprintln!("written {written} in {:.0} s", t.elapsed().as_secs_f64());
        }
    }
    let s = t.elapsed().as_secs_f64();
    println!(
        "wrote {n} vectors in {s:.1} s ({:.0} vectors/s)",
        n as f64 / s
    );
    Ok(())
}

/// The exact top 10 ids of every query: every stored vector read once,
/// the queries split over two threads.
async fn brute_force(
    store: &cbir_index::Store,
    collection: i64,
    queries: &[(Vec<f32>, i32)],
) -> anyhow::Result<Vec<Vec<u64>>> {
    let mut tops: Vec<Vec<(f32, u64)>> = vec![Vec::new(); queries.len()];
    let mut after = 0u64;
    loop {
        let page = store.load_page(collection, after, PAGE).await?;
        let Some(last) = page.last() else { break };
        after = last.id;
        let half = queries.len().div_ceil(2).max(1);
        std::thread::scope(|s| {
            for (qs, ts) in queries.chunks(half).zip(tops.chunks_mut(half)) {
                let page = &page;
                s.spawn(move || {
                    for ((q, _), top) in qs.iter().zip(ts.iter_mut()) {
                        for img in page {
                            let dot = cbir_index::kernels::dot(q, &img.feature);
                            if top.len() < 10 || dot > top[top.len() - 1].0 {
                                let at = top.partition_point(|(d, _)| *d >= dot);
                                top.insert(at, (dot, img.id));
                                top.truncate(10);
                            }
                        }
                    }
                });
            }
        });
        if (page.len() as u64) < PAGE {
            break;
        }
    }
    Ok(tops
        .into_iter()
        .map(|t| t.into_iter().map(|(_, id)| id).collect())
        .collect())
}
