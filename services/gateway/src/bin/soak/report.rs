//! What a soak run measured: a line per window while it runs, and the
//! summary (with the JSON report) at the end.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::fleet::{rss_kib, Fleet, SERVICES};
use crate::load::{Done, Span};
use crate::Args;

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

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("histogram")
}

/// The measurements of a run so far.
pub struct Recorder {
    window_s: u64,
    warmup_seconds: u64,
    start: Instant,
    warm_end: Instant,
    windows: BTreeMap<u64, Window>,
    rows: Vec<Value>,
    baseline: Option<[u64; 4]>,
    peak: [u64; 4],
    errors: Vec<String>,
    all: Histogram<u64>,
}

impl Recorder {
    fn new(args: &Args, start: Instant) -> Self {
        Self {
            window_s: args.window_s,
            warmup_seconds: args.warmup_seconds,
            start,
            warm_end: start + Duration::from_secs(args.warmup_seconds),
            windows: BTreeMap::new(),
            rows: Vec::new(),
            baseline: None,
            peak: [0; 4],
            errors: Vec::new(),
            all: histogram(),
        }
    }

    fn record(&mut self, d: Done) {
        let w = self
            .windows
            .entry(d.at.saturating_duration_since(self.start).as_secs() / self.window_s)
            .or_default();
        if let Some(e) = &d.error {
            w.errors += 1;
            if self.errors.len() < 20 {
                self.errors.push(e.clone());
            }
        } else if d.search {
            w.searches += 1;
            let us = d.latency.as_micros().max(1) as u64;
            let _ = w.hist.get_or_insert_with(histogram).record(us);
            if d.at >= self.warm_end {
                let _ = self.all.record(us);
            }
        } else {
            w.indexed += d.images;
        }
    }

    /// Memory now; past the warm-up, the baseline and the peaks.
    fn sample(&mut self, fleet: &Fleet, now: Instant) -> [u64; 4] {
        let rss: [u64; 4] = SERVICES.map(|s| rss_kib(fleet.pid(s)));
        if now >= self.warm_end {
            self.baseline.get_or_insert(rss);
            for (p, r) in self.peak.iter_mut().zip(rss) {
                *p = (*p).max(r);
            }
        }
        rss
    }

    /// Prints the window that ended at `ended`.
    fn report(&mut self, ended: Instant, rss: [u64; 4]) {
        let k = ended.saturating_duration_since(self.start).as_secs() / self.window_s - 1;
        let w = self.windows.remove(&k).unwrap_or_default();
        let (p50, p99) = w
            .hist
            .as_ref()
            .map_or((0.0, 0.0), |h| (ms(h, 0.5), ms(h, 0.99)));
        let t = (k + 1) * self.window_s;
        let mib = rss.map(|r| r as f64 / 1024.0);
        println!(
            "{:>6} {:>8} {:>6} {:>8.1} {:>8.1} {:>8} {:>10.1} {:>10.1} {:>10.1} {:>10.1}",
            t, w.searches, w.errors, p50, p99, w.indexed, mib[0], mib[1], mib[2], mib[3]
        );
        self.rows.push(json!({
            "t_s": t, "warmup": t <= self.warmup_seconds,
            "searches": w.searches, "errors": w.errors,
            "p50_ms": p50, "p99_ms": p99, "indexed": w.indexed,
            "rss_mib": {
                "inference": mib[0],
                "index": mib[1],
                "training": mib[2],
                "gateway": mib[3],
            },
        }));
    }
}

/// Records every finished request and reports every window, until every
/// request has finished and every window up to the end is reported.
pub async fn collect(
    args: &Args,
    fleet: &mut Fleet,
    mut rx: UnboundedReceiver<Done>,
    span: Span,
) -> anyhow::Result<Recorder> {
    let mut rec = Recorder::new(args, span.start);
    let window = Duration::from_secs(args.window_s);
    let mut next_report = span.start + window;
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
    while open || next_report <= span.end {
        tokio::select! {
            d = rx.recv(), if open => match d {
                Some(d) => rec.record(d),
                None => open = false,
            },
            _ = sampler.tick() => {
                fleet.check_alive()?;
                let now = Instant::now();
                let rss = rec.sample(fleet, now);
                if now >= next_report {
                    rec.report(next_report, rss);
                    next_report += window;
                    if now >= span.end + window {
                        break;
                    }
                }
            }
        }
    }
    Ok(rec)
}

/// Prints the summary and writes the JSON report; whether the run passed.
pub fn summarize(
    args: &Args,
    fleet: &Fleet,
    rec: Recorder,
    indexed: u64,
    churn_collections: usize,
) -> anyhow::Result<bool> {
    let last: [u64; 4] = SERVICES.map(|s| rss_kib(fleet.pid(s)));
    let baseline = rec.baseline.unwrap_or(last);
    let all = &rec.all;
    let total_errors: u64 = rec
        .rows
        .iter()
        .map(|r| r["errors"].as_u64().unwrap_or(0))
        .sum::<u64>()
        + rec.windows.values().map(|w| w.errors).sum::<u64>();
    println!();
    println!(
        "measured {} s after {} s warm-up: {} searches, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; \
         {} images indexed in all; {} errors",
        args.seconds,
        args.warmup_seconds,
        all.len(),
        ms(all, 0.5),
        ms(all, 0.99),
        all.max() as f64 / 1000.0,
        indexed,
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
            rec.peak[i] as f64 / 1024.0,
            g
        );
        memory.insert(
            s.to_string(),
            json!({"after_warmup_mib": baseline[i] as f64 / 1024.0,
                   "end_mib": last[i] as f64 / 1024.0,
                   "peak_mib": rec.peak[i] as f64 / 1024.0, "growth_pct": g}),
        );
    }
    for e in &rec.errors {
        eprintln!("soak: error: {e}");
    }
    if let Some(path) = &args.json {
        std::fs::write(
            path,
            serde_json::to_string_pretty(&json!({
                "seconds": args.seconds, "warmup_seconds": args.warmup_seconds,
                "search_rate": args.search_rate, "collection_size": args.collection_size,
                "index_batch": args.index_batch, "index_every_s": args.index_every_s,
                "uploaders": args.uploaders.max(1), "churn_collections": churn_collections,
                "searches": all.len(), "errors": total_errors,
                "p50_ms": ms(all, 0.5), "p99_ms": ms(all, 0.99),
                "max_ms": all.max() as f64 / 1000.0,
                "indexed": indexed,
                "windows": rec.rows, "memory": memory, "first_errors": rec.errors,
            }))?,
        )?;
    }
    if total_errors > 0 || !growth_ok {
        eprintln!(
            "soak: FAILED ({} errors, memory growth within {}%: {})",
            total_errors, args.max_growth_pct, growth_ok
        );
        return Ok(false);
    }
    Ok(true)
}
