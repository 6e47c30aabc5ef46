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

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

#[derive(Parser)]
struct Args {
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

const SERVICES: [&str; 4] = ["inference", "index", "training", "gateway"];

/// The service processes; killed when dropped.
struct Fleet {
    children: Vec<(&'static str, Child)>,
    dir: tempfile::TempDir,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for (_, c) in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Fleet {
    fn pid(&self, name: &str) -> u32 {
        self.children
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, c)| c.id())
            .unwrap_or(0)
    }

    /// Fails when a service has exited (a crash is an error of the soak).
    fn check_alive(&mut self) -> anyhow::Result<()> {
        for (name, c) in &mut self.children {
            if let Some(status) = c.try_wait()? {
                bail!(
                    "the {name} service exited ({status}); its log: {}",
                    self.dir.path().join(format!("{name}.log")).display()
                );
            }
        }
        Ok(())
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn start(args: &Args) -> anyhow::Result<(Fleet, String)> {
    let bin_dir = match &args.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("no folder for this executable")?
            .to_path_buf(),
    };
    let weights = std::fs::canonicalize(&args.weights).with_context(|| {
        format!(
            "the weights {} are missing: run scripts/setup.sh",
            args.weights.display()
        )
    })?;
    let dir = tempfile::tempdir()?;
    let ports: Vec<u16> = (0..4).map(|_| free_port()).collect::<anyhow::Result<_>>()?;
    let url = |i: usize| format!("http://127.0.0.1:{}", ports[i]);
    let token = format!("soak-{:016x}", rand::random::<u64>());
    let d = dir.path();
    let envs: [Vec<(String, String)>; 4] = [
        vec![
            ("INFERENCE_LISTEN".into(), format!("127.0.0.1:{}", ports[0])),
            (
                "INFERENCE_MODEL__WEIGHTS".into(),
                weights.display().to_string(),
            ),
        ],
        vec![
            ("INDEX_LISTEN".into(), format!("127.0.0.1:{}", ports[1])),
            (
                "INDEX_DATABASE_URL".into(),
                format!("sqlite://{}", d.join("index.db").display()),
            ),
            ("INDEX_INFERENCE_URL".into(), url(0)),
        ],
        vec![
            ("TRAINING_LISTEN".into(), format!("127.0.0.1:{}", ports[2])),
            (
                "TRAINING_DATABASE_URL".into(),
                format!("sqlite://{}", d.join("training.db").display()),
            ),
            (
                "TRAINING_DATA_DIR".into(),
                d.join("training").display().to_string(),
            ),
            (
                "TRAINING_BASE_WEIGHTS".into(),
                weights.display().to_string(),
            ),
            ("TRAINING_INFERENCE_URL".into(), url(0)),
            ("TRAINING_INDEX_URL".into(), url(1)),
        ],
        vec![
            ("GATEWAY_LISTEN".into(), format!("127.0.0.1:{}", ports[3])),
            ("GATEWAY_INFERENCE_URLS".into(), url(0)),
            ("GATEWAY_INDEX_URLS".into(), url(1)),
            ("GATEWAY_TRAINING_URLS".into(), url(2)),
        ],
    ];
    let mut children = Vec::new();
    for (name, env) in SERVICES.iter().zip(envs) {
        let bin = bin_dir.join(format!("cbir-{name}"));
        let log = std::fs::File::create(d.join(format!("{name}.log")))?;
        let prefix = name.to_uppercase();
        let child = Command::new(&bin)
            .envs(env)
            .env(format!("{prefix}_INTERNAL_TOKEN"), &token)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| {
                format!(
                    "cannot start {}: build the services first \
                     (cargo build --release --bins)",
                    bin.display()
                )
            })?;
        children.push((*name, child));
    }
    Ok((Fleet { children, dir }, url(3)))
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

async fn wait_healthy(http: &reqwest::Client, base: &str, fleet: &mut Fleet) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        fleet.check_alive()?;
        if let Ok(r) = http.get(format!("{base}/api/health")).send().await {
            if let Ok(v) = r.json::<Value>().await {
                if v["status"] == "ok" {
                    return Ok(());
                }
            }
        }
        if Instant::now() > deadline {
            bail!("the system did not become healthy in 180 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn image_part(path: &Path, data: Vec<u8>) -> anyhow::Result<reqwest::multipart::Part> {
    let class = path
        .parent()
        .and_then(|p| p.file_name())
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default();
    let name = path
        .file_name()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default();
    Ok(reqwest::multipart::Part::bytes(data)
        .file_name(format!("set/{class}/{name}"))
        .mime_str("image/jpeg")?)
}

async fn upload(
    http: &reqwest::Client,
    base: &str,
    coll: &str,
    files: &[PathBuf],
) -> Result<u64, String> {
    let mut form = reqwest::multipart::Form::new();
    for f in files {
        let data = tokio::fs::read(f).await.map_err(|e| e.to_string())?;
        form = form.part("files", image_part(f, data).map_err(|e| e.to_string())?);
    }
    let v = answer(
        http.post(format!("{base}/api/collections/{coll}/images"))
            .multipart(form)
            .send()
            .await,
    )
    .await?;
    let results = v["results"].as_array().cloned().unwrap_or_default();
    let failed: Vec<&Value> = results
        .iter()
        .filter(|r| r["error"].as_str().is_some_and(|e| !e.is_empty()))
        .collect();
    if let Some(f) = failed.first() {
        return Err(format!("an image was refused: {f}"));
    }
    Ok(results.len() as u64)
}

/// The JSON body of a successful answer; otherwise the status and body.
async fn answer(r: reqwest::Result<reqwest::Response>) -> Result<Value, String> {
    let r = r.map_err(|e| e.to_string())?;
    let status = r.status();
    if status.is_success() {
        r.json().await.map_err(|e| e.to_string())
    } else {
        let v: Value = r.json().await.unwrap_or(Value::Null);
        Err(format!("HTTP {status}: {v}"))
    }
}

async fn post_json(http: &reqwest::Client, url: String, body: Value) -> Result<Value, String> {
    answer(http.post(url).json(&body).send().await).await
}

/// One finished search or indexing request.
struct Done {
    at: Instant,
    search: bool,
    latency: Duration,
    images: u64,
    error: Option<String>,
}

#[derive(Default)]
struct Window {
    searches: u64,
    errors: u64,
    indexed: u64,
    hist: Option<Histogram<u64>>,
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
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
    // A fixed, shuffled order: the searched set, then the churn set.
    for i in (1..files.len()).rev() {
        files.swap(i, rng.random_range(0..=i));
    }
    let (searched, rest) = files.split_at(args.collection_size);
    let churn: Vec<PathBuf> = rest.to_vec();

    let (mut fleet, base) = start(&args)?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()?;
    eprintln!(
        "soak: services starting (logs in {})",
        fleet.dir.path().display()
    );
    wait_healthy(&http, &base, &mut fleet).await?;
    let uploaders = args.uploaders.max(1);
    let churn_names: Vec<String> = (0..args.churn_collections.max(1))
        .map(|k| format!("churn-{k}"))
        .collect();
    for coll in std::iter::once("soak").chain(churn_names.iter().map(String::as_str)) {
        post_json(
            &http,
            format!("{base}/api/collections"),
            json!({"name": coll, "if_not_exists": true}),
        )
        .await
        .map_err(anyhow::Error::msg)?;
    }
    let t0 = Instant::now();
    for chunk in searched.chunks(16) {
        upload(&http, &base, "soak", chunk)
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
        uploaders,
        churn_names.len(),
        args.index_batch,
        args.index_every_s
    );

    let queries: Arc<Vec<PathBuf>> = Arc::new(files.clone());
    let total = Duration::from_secs(args.warmup_seconds + args.seconds);
    let start = Instant::now() + Duration::from_millis(200);
    let end = start + total;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Done>();

    // Open-loop searches: request i is due at start + i / rate.
    let searches = {
        let (http, base, tx, queries) = (http.clone(), base.clone(), tx.clone(), queries.clone());
        let rate = args.search_rate;
        tokio::spawn(async move {
            let n = (rate * total.as_secs_f64()) as u64;
            for i in 0..n {
                let due = start + Duration::from_secs_f64(i as f64 / rate);
                tokio::time::sleep_until(due.into()).await;
                let (http, base, tx) = (http.clone(), base.clone(), tx.clone());
                let q = queries[(i as usize * 7919) % queries.len()].clone();
                tokio::spawn(async move {
                    let r = async {
                        let data = tokio::fs::read(&q).await.map_err(|e| e.to_string())?;
                        let form = reqwest::multipart::Form::new()
                            .part("image", image_part(&q, data).map_err(|e| e.to_string())?)
                            .text("collection", "soak")
                            .text("top_k", "20");
                        let v = answer(
                            http.post(format!("{base}/api/search"))
                                .multipart(form)
                                .send()
                                .await,
                        )
                        .await?;
                        if v["results"].as_array().map_or(0, Vec::len) == 0 {
                            return Err("a search found nothing".into());
                        }
                        Ok(())
                    }
                    .await;
                    let _ = tx.send(Done {
                        at: Instant::now(),
                        search: true,
                        latency: due.elapsed(),
                        images: 0,
                        error: r.err(),
                    });
                });
            }
        })
    };
    // Indexing: each uploader sends one batch every index_every_s (closed
    // loop: its next batch waits for the previous) into its collection,
    // which is cleared when it is full. Uploaders sharing a collection share
    // its count, so one of them clears it while the others keep writing.
    let indexed_total = Arc::new(AtomicU64::new(0));
    let held: Arc<Vec<AtomicU64>> =
        Arc::new(churn_names.iter().map(|_| AtomicU64::new(0)).collect());
    let churn = Arc::new(churn);
    let mut indexing = Vec::new();
    for k in 0..uploaders {
        let (http, base, tx) = (http.clone(), base.clone(), tx.clone());
        let (batch, every, churn_size) = (
            args.index_batch,
            Duration::from_secs_f64(args.index_every_s),
            args.churn_size,
        );
        let (indexed_total, held, churn) = (indexed_total.clone(), held.clone(), churn.clone());
        let c = k % churn_names.len();
        let coll = churn_names[c].clone();
        // Uploaders start spread over one period, each at its own place in
        // the image list.
        let first = start + every.mul_f64(k as f64 / uploaders as f64);
        indexing.push(tokio::spawn(async move {
            let mut next = (k * churn.len() / uploaders) % churn.len();
            let mut tick = tokio::time::interval_at(first.into(), every);
            while Instant::now() < end {
                tick.tick().await;
                if held[c].load(Ordering::Relaxed) + batch as u64 > churn_size {
                    held[c].store(0, Ordering::Relaxed);
                    let t = Instant::now();
                    let r = post_json(
                        &http,
                        format!("{base}/api/collections/{coll}/clear"),
                        json!({}),
                    )
                    .await;
                    let _ = tx.send(Done {
                        at: Instant::now(),
                        search: false,
                        latency: t.elapsed(),
                        images: 0,
                        error: r.err().map(|e| format!("clear {coll}: {e}")),
                    });
                    continue;
                }
                let chunk: Vec<PathBuf> = (0..batch)
                    .map(|i| churn[(next + i) % churn.len()].clone())
                    .collect();
                next = (next + batch) % churn.len();
                let t = Instant::now();
                let r = upload(&http, &base, &coll, &chunk).await;
                if let Ok(n) = &r {
                    held[c].fetch_add(*n, Ordering::Relaxed);
                    indexed_total.fetch_add(*n, Ordering::Relaxed);
                }
                let _ = tx.send(Done {
                    at: Instant::now(),
                    search: false,
                    latency: t.elapsed(),
                    images: *r.as_ref().unwrap_or(&0),
                    error: r.err().map(|e| format!("indexing into {coll}: {e}")),
                });
            }
        }));
    }
    drop(tx);

    let window = Duration::from_secs(args.window_s);
    let warm_end = start + Duration::from_secs(args.warmup_seconds);
    let mut windows: BTreeMap<u64, Window> = BTreeMap::new();
    let mut rows: Vec<Value> = Vec::new();
    let mut baseline: Option<[u64; 4]> = None;
    let mut peak = [0u64; 4];
    let mut errors: Vec<String> = Vec::new();
    let mut all = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    let mut next_report = start + window;
    let mut sampler = tokio::time::interval(Duration::from_secs(1));
    println!(
        "{:>6} {:>8} {:>6} {:>8} {:>8} {:>8} {:>10} {:>10} {:>10} {:>10}",
        "t_s",
        "searches",
        "errors",
        "p50_ms",
        "p99_ms",
        "indexed",
        "inf_MiB",
        "index_MiB",
        "train_MiB",
        "gw_MiB"
    );
    let mut open = true;
    // Until every request has finished and every window up to the end is
    // reported.
    while open || next_report <= end {
        tokio::select! {
            d = rx.recv(), if open => match d {
                Some(d) => {
                    let w = windows
                        .entry(d.at.saturating_duration_since(start).as_secs() / args.window_s)
                        .or_default();
                    if let Some(e) = &d.error {
                        w.errors += 1;
                        if errors.len() < 20 {
                            errors.push(e.clone());
                        }
                    } else if d.search {
                        w.searches += 1;
                        let us = d.latency.as_micros().max(1) as u64;
                        let h = w.hist.get_or_insert_with(|| {
                            Histogram::new_with_bounds(1, 600_000_000, 3).expect("histogram")
                        });
                        let _ = h.record(us);
                        if d.at >= warm_end {
                            let _ = all.record(us);
                        }
                    } else {
                        w.indexed += d.images;
                    }
                }
                None => open = false,
            },
            _ = sampler.tick() => {
                fleet.check_alive()?;
                let now = Instant::now();
                let rss: [u64; 4] = SERVICES.map(|s| rss_kib(fleet.pid(s)));
                if now >= warm_end {
                    baseline.get_or_insert(rss);
                    for (p, r) in peak.iter_mut().zip(rss) {
                        *p = (*p).max(r);
                    }
                }
                if now >= next_report {
                    let k = next_report.saturating_duration_since(start).as_secs() / args.window_s - 1;
                    let w = windows.remove(&k).unwrap_or_default();
                    let (p50, p99) = w.hist.as_ref().map_or((0.0, 0.0), |h| (ms(h, 0.5), ms(h, 0.99)));
                    let t = (k + 1) * args.window_s;
                    println!(
                        "{:>6} {:>8} {:>6} {:>8.1} {:>8.1} {:>8} {:>10.1} {:>10.1} {:>10.1} {:>10.1}",
                        t, w.searches, w.errors, p50, p99, w.indexed,
                        rss[0] as f64 / 1024.0, rss[1] as f64 / 1024.0,
                        rss[2] as f64 / 1024.0, rss[3] as f64 / 1024.0
                    );
                    rows.push(json!({
                        "t_s": t, "warmup": t <= args.warmup_seconds,
                        "searches": w.searches, "errors": w.errors,
                        "p50_ms": p50, "p99_ms": p99, "indexed": w.indexed,
                        "rss_mib": {
                            "inference": rss[0] as f64 / 1024.0,
                            "index": rss[1] as f64 / 1024.0,
                            "training": rss[2] as f64 / 1024.0,
                            "gateway": rss[3] as f64 / 1024.0,
                        },
                    }));
                    next_report += window;
                    if now >= end + window {
                        break;
                    }
                }
            }
        }
    }
    searches.await?;
    for h in indexing {
        h.await?;
    }
    let last: [u64; 4] = SERVICES.map(|s| rss_kib(fleet.pid(s)));
    let baseline = baseline.unwrap_or(last);
    let total_errors: u64 = rows
        .iter()
        .map(|r| r["errors"].as_u64().unwrap_or(0))
        .sum::<u64>()
        + windows.values().map(|w| w.errors).sum::<u64>();
    println!();
    println!(
        "measured {} s after {} s warm-up: {} searches, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; \
         {} images indexed in all; {} errors",
        args.seconds,
        args.warmup_seconds,
        all.len(),
        ms(&all, 0.5),
        ms(&all, 0.99),
        all.max() as f64 / 1000.0,
        indexed_total.load(Ordering::Relaxed),
        total_errors
    );
    let mut growth_ok = true;
    let mut memory = serde_json::Map::new();
    println!("| service | RSS after warm-up (MiB) | RSS at end (MiB) | peak (MiB) | growth |");
    println!("|---|---|---|---|---|");
    for (i, s) in SERVICES.iter().enumerate() {
        let g = (last[i] as f64 - baseline[i] as f64) / baseline[i].max(1) as f64 * 100.0;
        growth_ok &= g <= args.max_growth_pct;
        println!(
            "| {s} | {:.1} | {:.1} | {:.1} | {:+.1}% |",
            baseline[i] as f64 / 1024.0,
            last[i] as f64 / 1024.0,
            peak[i] as f64 / 1024.0,
            g
        );
        memory.insert(
            s.to_string(),
            json!({"after_warmup_mib": baseline[i] as f64 / 1024.0,
                   "end_mib": last[i] as f64 / 1024.0,
                   "peak_mib": peak[i] as f64 / 1024.0, "growth_pct": g}),
        );
    }
    for e in &errors {
        eprintln!("soak: error: {e}");
    }
    if let Some(path) = &args.json {
        std::fs::write(
            path,
            serde_json::to_string_pretty(&json!({
                "seconds": args.seconds, "warmup_seconds": args.warmup_seconds,
                "search_rate": args.search_rate, "collection_size": args.collection_size,
                "index_batch": args.index_batch, "index_every_s": args.index_every_s,
                "uploaders": uploaders, "churn_collections": churn_names.len(),
                "searches": all.len(), "errors": total_errors,
                "p50_ms": ms(&all, 0.5), "p99_ms": ms(&all, 0.99),
                "max_ms": all.max() as f64 / 1000.0,
                "indexed": indexed_total.load(Ordering::Relaxed),
                "windows": rows, "memory": memory, "first_errors": errors,
            }))?,
        )?;
    }
    if total_errors > 0 || !growth_ok {
        eprintln!(
            "soak: FAILED ({} errors, memory growth within {}%: {})",
            total_errors, args.max_growth_pct, growth_ok
        );
        std::process::exit(1);
    }
    eprintln!("soak: passed");
    Ok(())
}
