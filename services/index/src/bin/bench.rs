//! Index benchmark on synthetic clustered 1280-d vectors: search latency
//! per mode, throughput with 2 concurrent clients, recall@10 of probe and
//! partition against exact, the same with a label filter admitting 10% of
//! the vectors ("+filter"), memory per vector, and the time to load from
//! SQLite. Prints Markdown rows.
//!
//! cargo run --release -p cbir-index --bin index-bench -- --sizes 100000 --classes 20,1000
//! cargo run --release -p cbir-index --bin index-bench -- --service 10000000 --db-keep --db-dir /big

use std::time::Instant;

use std::collections::HashMap;

use cbir_index::mem::{
    Entry, Filter, MemIndex, Meta, Mode, ProbeRule, Query, ScanBatch, Storage, VectorSource,
};
use clap::Parser;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

#[derive(Parser)]
struct Args {
    #[arg(long, value_delimiter = ',', default_value = "100000,1000000")]
    sizes: Vec<usize>,
    #[arg(long, value_delimiter = ',', default_value = "20,1000")]
    classes: Vec<usize>,
    #[arg(long, default_value_t = 1280)]
    dims: usize,
    #[arg(long, default_value_t = 200)]
    queries: usize,
    /// Also write this many vectors to a SQLite file and time loading them.
    #[arg(long, default_value_t = 0)]
    db_load: usize,
    /// Folder for the SQLite file.
    #[arg(long, default_value = "/tmp")]
    db_dir: std::path::PathBuf,
    /// Keep the SQLite file (cbir-bench-N.db) and, when it exists, only
    /// time the load.
    #[arg(long)]
    db_keep: bool,
    /// `full` or `compact` (int8 codes in memory; the exact vectors a
    /// search re-ranks by are read from a copy the bench keeps, standing
    /// for the database).
    #[arg(long, default_value = "full")]
    storage: String,
    /// Instead of the in-memory runs: this many vectors through the
    /// service's own path (SQLite, compact storage, `Index::search`); see
    /// bench/service.rs. With --db-keep the file is kept and reused.
    #[arg(long, default_value_t = 0)]
    service: usize,
    /// Classes of the --service run.
    #[arg(long, default_value_t = 1000)]
    service_classes: usize,
    /// --service: skip the brute force (a pass over the whole file) and
    /// report no recall; for timing and profiling searches.
    #[arg(long)]
    service_no_truth: bool,
}

#[path = "bench/service.rs"]
mod service;

/// The exact vectors, as the database holds them.
struct Exact(HashMap<u64, Vec<f32>>);

impl VectorSource for Exact {
    fn fetch(&self, ids: &[u64]) -> Result<Vec<(u64, Vec<f32>)>, String> {
        Ok(ids
            .iter()
            .filter_map(|id| Some((*id, self.0.get(id)?.clone())))
            .collect())
    }

    fn scan(&self, each: &mut ScanBatch<'_>) -> Result<(), String> {
        for (id, v) in &self.0 {
            each(*id, v);
        }
        Ok(())
    }
}

fn normalize(v: &mut [f32]) {
    let n: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter_mut().for_each(|x| *x /= n);
}

fn gaussian(rng: &mut SmallRng) -> f32 {
    // Irwin-Hall: close enough to normal for synthetic data, and fast.
    (0..4).map(|_| rng.random::<f32>()).sum::<f32>() - 2.0
}

/// Real CNN features of one class form several modes (poses, backgrounds),
/// and classes come in families of look-alikes (dog breeds): classes are
/// grouped by 5 around a family centre, each class gets 4 sub-centres, and
/// members scatter around a sub-centre with cosine about 0.75.
struct Generator {
    dims: usize,
    subs: Vec<Vec<Vec<f32>>>,
    noise: f32,
}

/// Classes per family of look-alikes.
const FAMILY: usize = 5;

impl Generator {
    fn new(rng: &mut SmallRng, classes: usize, dims: usize) -> Self {
        let per_dim = 1.0 / (dims as f32).sqrt();
        let families: Vec<Vec<f32>> = (0..classes.div_ceil(FAMILY))
            .map(|_| (0..dims).map(|_| gaussian(rng) * per_dim).collect())
            .collect();
        let subs = (0..classes)
            .map(|k| {
                let f = &families[k / FAMILY];
                let c: Vec<f32> = f
                    .iter()
                    .map(|x| x + 0.8 * gaussian(rng) * per_dim)
                    .collect();
                (0..4)
                    .map(|_| {
                        let mut s: Vec<f32> = c
                            .iter()
                            .map(|x| x + 0.7 * gaussian(rng) * per_dim)
                            .collect();
                        normalize(&mut s);
                        s
                    })
                    .collect()
            })
            .collect();
        Self {
            dims,
            subs,
            noise: 0.9 * per_dim / (1.0f32 / 3.0).sqrt() * 0.5,
        }
    }

    fn sample(&self, rng: &mut SmallRng, class: usize) -> Vec<f32> {
        let s = &self.subs[class][rng.random_range(0..4)];
        let mut v: Vec<f32> = (0..self.dims)
            .map(|i| s[i] + self.noise * gaussian(rng) / 0.577)
            .collect();
        normalize(&mut v);
        v
    }
}

/// The nearest-rank percentile: the smallest value at least a share `p`
/// of the samples are at or below (of 100, p99 is the 99th, not the
/// largest).
fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    let rank = (v.len() as f64 * p).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    println!("kernels: {}", cbir_index::kernels::kernel_name());
    if args.service > 0 {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        return rt.block_on(service::run(&args));
    }
    println!("| vectors | classes | mode | p50 ms | p99 ms | qps (2 clients) | recall@10 vs exact | vectors read |");
    println!("|---|---|---|---|---|---|---|---|");
    let mut memory_rows = Vec::new();
    for &n in &args.sizes {
        for &classes in &args.classes {
            let mut rng = SmallRng::seed_from_u64(42);
            let gen = Generator::new(&mut rng, classes, args.dims);
            let build_started = Instant::now();
            let storage = if args.storage == "compact" {
                Storage::Compact
            } else {
                Storage::Full
            };
            let (idx, exact) = build(&mut rng, &gen, n, classes, args.dims, storage);
            let build_s = build_started.elapsed().as_secs_f64();
            memory_rows.push(format!(
                "| {n} | {classes} | {:.0} bytes | {:.1} s |",
                idx.bytes() as f64 / n as f64,
                build_s
            ));
            let queries: Vec<(Vec<f32>, i32)> = (0..args.queries)
                .map(|_| {
                    let class = rng.random_range(0..classes);
                    (gen.sample(&mut rng, class), class as i32)
                })
                .collect();
            measure(&idx, &exact, &queries, n, classes);
        }
    }
    println!();
    println!("| vectors | classes | memory per vector | build in memory |");
    println!("|---|---|---|---|");
    for r in memory_rows {
        println!("{r}");
    }
    if args.db_load > 0 {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        rt.block_on(db_load(&args))?;
    }
    Ok(())
}

/// An index of `n` vectors of `classes` classes, refreshed (split) as the
/// service leaves it after loading.
fn build(
    rng: &mut SmallRng,
    gen: &Generator,
    n: usize,
    classes: usize,
    dims: usize,
    storage: Storage,
) -> (MemIndex, Exact) {
    let mut idx = MemIndex::with_storage(dims, storage);
    let mut exact = Exact(HashMap::new());
    // Ten labels, one per id modulo 10: a filter on one admits 10%.
    let metas: Vec<Meta> = (0..LABELS)
        .map(|l| Meta::new("", "synthetic.jpg", "", &format!("l{l}"), 0))
        .collect();
    let mut id = 1u64;
    while (id as usize) <= n {
        let chunk: Vec<Entry> = (0..10_000.min(n + 1 - id as usize))
            .map(|_| {
                let class = rng.random_range(0..classes);
                let e = Entry {
                    id,
                    // A classifier is wrong sometimes: 10% land in the
                    // partition of a look-alike class.
                    class: if rng.random::<f32>() < 0.1 {
                        let base = class / FAMILY * FAMILY;
                        (base + rng.random_range(0..FAMILY)).min(classes - 1) as i32
                    } else {
                        class as i32
                    },
                    feature: gen.sample(rng, class),
                    meta: metas[id as usize % LABELS].clone(),
                };
                id += 1;
                e
            })
            .collect();
        idx.upsert(&chunk);
        if storage == Storage::Compact {
            exact.0.extend(chunk.into_iter().map(|e| (e.id, e.feature)));
        }
    }
    idx.refresh();
    (idx, exact)
}

/// Labels of the synthetic vectors (see `build`).
const LABELS: usize = 10;

/// Prints one row per mode: latency, throughput of two clients, recall@10
/// against exact search and the share of vectors read.
fn measure(idx: &MemIndex, exact: &Exact, queries: &[(Vec<f32>, i32)], n: usize, classes: usize) {
    for filter in [
        Filter::default(),
        Filter {
            labels_in: vec!["l3".into()],
            ..Filter::default()
        },
    ] {
        measure_with(idx, exact, queries, n, classes, &filter);
    }
}

fn measure_with(
    idx: &MemIndex,
    exact_src: &Exact,
    queries: &[(Vec<f32>, i32)],
    n: usize,
    classes: usize,
    filter: &Filter,
) {
    let rule = ProbeRule::default();
    let run = |mode: Mode, q: &(Vec<f32>, i32)| {
        idx.search_with(
            &Query {
                vector: &q.0,
                predicted_class: Some(q.1),
                top_k: 10,
                mode,
                min_similarity: 0.0,
                exclude_id: None,
                filter,
            },
            rule,
            exact_src,
        )
        .expect("the bench's vectors are in memory")
    };
    let exact: Vec<Vec<u64>> = queries
        .iter()
        .map(|q| run(Mode::Exact, q).0.iter().map(|h| h.id).collect())
        .collect();
    let suffix = if filter.is_empty() { "" } else { "+filter" };
    for (name, mode) in [
        ("exact", Mode::Exact),
        ("probe", Mode::Probe),
        ("partition", Mode::Partition),
    ] {
        let mut lat = Vec::new();
        let mut hit = 0usize;
        let mut read = 0u64;
        for (q, truth) in queries.iter().zip(&exact) {
            let t = Instant::now();
            let (hits, stats) = run(mode, q);
            lat.push(t.elapsed().as_secs_f64() * 1e3);
            hit += hits.iter().filter(|h| truth.contains(&h.id)).count();
            read += stats.vectors_scanned;
        }
        // Two clients at once.
        let t = Instant::now();
        std::thread::scope(|s| {
            for half in queries.chunks(queries.len().div_ceil(2)) {
                let run = &run;
                s.spawn(move || {
                    for q in half {
                        let _ = run(mode, q);
                    }
                });
            }
        });
        let qps = queries.len() as f64 / t.elapsed().as_secs_f64();
        println!(
            "| {n} | {classes} | {name}{suffix} | {:.2} | {:.2} | {:.0} | {:.3} | {:.1}% |",
            pct(&mut lat, 0.5),
            pct(&mut lat, 0.99),
            qps,
            hit as f64 / (10 * queries.len()) as f64,
            100.0 * read as f64 / (n * queries.len()) as f64
        );
    }
}

/// Image `n` of a synthetic collection, as the database stores it.
fn synthetic_image(n: usize, class: i32, feature: Vec<f32>) -> cbir_index::store::NewImage {
    cbir_index::store::NewImage {
        content_hash: format!("{n:064x}"),
        predicted_class: class,
        file_name: format!("img{n}.jpg"),
        path: String::new(),
        label: String::new(),
        feature,
        thumbnail: Vec::new(),
        source: Vec::new(),
    }
}

async fn db_load(args: &Args) -> anyhow::Result<()> {
    let path = if args.db_keep {
        args.db_dir.join(format!("cbir-bench-{}.db", args.db_load))
    } else {
        args.db_dir
            .join(format!("cbir-bench-{}.db", std::process::id()))
    };
    let url = format!("sqlite://{}", path.display());
    let reuse = args.db_keep && path.exists();
    let store = cbir_index::Store::connect(&url, 4).await?;
    let mut rng = SmallRng::seed_from_u64(7);
    let gen = Generator::new(&mut rng, 20, args.dims);
    let t = Instant::now();
    let mut written = 0usize;
    let c = if reuse {
        written = args.db_load;
        store.collections().await?.remove(0)
    } else {
        store
            .create_collection("bench", "bench", "synthetic", "1", args.dims as u32, "")
            .await?
    };
    while written < args.db_load {
        let batch: Vec<cbir_index::store::NewImage> = (0..1000.min(args.db_load - written))
            .map(|i| {
                let class = rng.random_range(0..20);
                synthetic_image(written + i, class as i32, gen.sample(&mut rng, class))
            })
            .collect();
        written += batch.len();
        store.upsert(c.id, &batch, false).await?;
    }
    let write_s = t.elapsed().as_secs_f64();
    drop(store);
    let store = cbir_index::Store::connect(&url, 4).await?;
    let t = Instant::now();
    let index = cbir_index::Index::open(
        store,
        cbir_index::Limits::default(),
        ProbeRule::default(),
        cbir_index::mem::Refine::default(),
        cbir_index::Layout::default(),
    )
    .await?;
    let load_s = t.elapsed().as_secs_f64();
    let stats = index.stats("bench")?;
    println!();
    println!("| vectors in SQLite | write (bulk upsert) | load at start |");
    println!("|---|---|---|");
    println!(
        "| {} | {:.1} s ({:.0} vectors/s) | {:.1} s ({:.0} vectors/s) |",
        stats.count,
        write_s,
        written as f64 / write_s,
        load_s,
        stats.count as f64 / load_s
    );
    if !args.db_keep {
        for ext in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{ext}", path.display()));
        }
    }
    Ok(())
}
