//! The load of a soak run: open-loop searches and closed-loop uploaders.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::mpsc::UnboundedSender;
use tokio::task::JoinHandle;

use crate::Args;

/// One finished search or indexing request.
pub struct Done {
    pub at: Instant,
    pub search: bool,
    pub latency: Duration,
    pub images: u64,
    pub error: Option<String>,
}

/// When the load runs: from `start` to `end` (warm-up included).
#[derive(Clone, Copy)]
pub struct Span {
    pub start: Instant,
    pub end: Instant,
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

pub async fn upload(
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

pub async fn post_json(http: &reqwest::Client, url: String, body: Value) -> Result<Value, String> {
    answer(http.post(url).json(&body).send().await).await
}

/// One search by an uploaded image, which must find something.
async fn search_once(http: &reqwest::Client, base: &str, q: &Path) -> Result<(), String> {
    let data = tokio::fs::read(q).await.map_err(|e| e.to_string())?;
    let form = reqwest::multipart::Form::new()
        .part("image", image_part(q, data).map_err(|e| e.to_string())?)
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

/// Open-loop searches: request i is due at start + i / rate.
pub fn spawn_searches(
    args: &Args,
    http: &reqwest::Client,
    base: &str,
    queries: Arc<Vec<PathBuf>>,
    span: Span,
    tx: &UnboundedSender<Done>,
) -> JoinHandle<()> {
    let (http, base, tx) = (http.clone(), base.to_string(), tx.clone());
    let rate = args.search_rate;
    let total = span.end - span.start;
    tokio::spawn(async move {
        let n = (rate * total.as_secs_f64()) as u64;
        for i in 0..n {
            let due = span.start + Duration::from_secs_f64(i as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
            let (http, base, tx) = (http.clone(), base.clone(), tx.clone());
            let q = queries[(i as usize * 7919) % queries.len()].clone();
            tokio::spawn(async move {
                let r = search_once(&http, &base, &q).await;
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
}

/// What the uploaders share.
pub struct Uploaders {
    pub handles: Vec<JoinHandle<()>>,
    pub indexed_total: Arc<AtomicU64>,
}

/// Indexing: each uploader sends one batch every index_every_s (closed
/// loop: its next batch waits for the previous) into its collection,
/// which is cleared when it is full. Uploaders sharing a collection share
/// its count, so one of them clears it while the others keep writing.
pub fn spawn_uploaders(
    args: &Args,
    http: &reqwest::Client,
    base: &str,
    churn: Vec<PathBuf>,
    churn_names: &[String],
    span: Span,
    tx: &UnboundedSender<Done>,
) -> Uploaders {
    let uploaders = args.uploaders.max(1);
    let indexed_total = Arc::new(AtomicU64::new(0));
    let held: Arc<Vec<AtomicU64>> =
        Arc::new(churn_names.iter().map(|_| AtomicU64::new(0)).collect());
    let churn = Arc::new(churn);
    let mut handles = Vec::new();
    for k in 0..uploaders {
        let c = k % churn_names.len();
        let u = Uploader {
            http: http.clone(),
            base: base.to_string(),
            tx: tx.clone(),
            batch: args.index_batch,
            every: Duration::from_secs_f64(args.index_every_s),
            churn_size: args.churn_size,
            indexed_total: indexed_total.clone(),
            held: held.clone(),
            churn: churn.clone(),
            c,
            coll: churn_names[c].clone(),
        };
        // Uploaders start spread over one period, each at its own place in
        // the image list.
        let first = span.start + u.every.mul_f64(k as f64 / uploaders as f64);
        let next = (k * churn.len() / uploaders) % churn.len();
        handles.push(tokio::spawn(u.run(first, next, span.end)));
    }
    Uploaders {
        handles,
        indexed_total,
    }
}

struct Uploader {
    http: reqwest::Client,
    base: String,
    tx: UnboundedSender<Done>,
    batch: usize,
    every: Duration,
    churn_size: u64,
    indexed_total: Arc<AtomicU64>,
    held: Arc<Vec<AtomicU64>>,
    churn: Arc<Vec<PathBuf>>,
    /// Its collection: `coll`, number `c` of the churn collections.
    c: usize,
    coll: String,
}

impl Uploader {
    async fn run(self, first: Instant, mut next: usize, end: Instant) {
        let (batch, c, coll) = (self.batch, self.c, &self.coll);
        let (http, base, churn) = (&self.http, &self.base, &self.churn);
        let mut tick = tokio::time::interval_at(first.into(), self.every);
        while Instant::now() < end {
            tick.tick().await;
            if self.held[c].load(Ordering::Relaxed) + batch as u64 > self.churn_size {
                self.held[c].store(0, Ordering::Relaxed);
                let t = Instant::now();
                let r = post_json(
                    http,
                    format!("{base}/api/collections/{coll}/clear"),
                    json!({}),
                )
                .await;
                let _ = self.tx.send(Done {
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
            let r = upload(http, base, coll, &chunk).await;
            if let Ok(n) = &r {
                self.held[c].fetch_add(*n, Ordering::Relaxed);
                self.indexed_total.fetch_add(*n, Ordering::Relaxed);
            }
            let _ = self.tx.send(Done {
                at: Instant::now(),
                search: false,
                latency: t.elapsed(),
                images: *r.as_ref().unwrap_or(&0),
                error: r.err().map(|e| format!("indexing into {coll}: {e}")),
            });
        }
    }
}
