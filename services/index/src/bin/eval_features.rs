//! Retrieval quality of the search modes on real features (written by the
//! inference crate's `embed-folder`): leave-one-out P@1/5/10 and mAP@100
//! per mode, with the share of vectors each mode reads.
//!
//! cargo run --release -p cbir-index --bin eval-features -- data/features/caltech101.bin

use std::io::Read;
use std::path::PathBuf;

use cbir_index::mem::{Entry, Filter, MemIndex, Meta, Mode, ProbeRule, Query};
use clap::Parser;

#[derive(Parser)]
struct Args {
    features: PathBuf,
    /// Queries (every n-th image; 1 = all).
    #[arg(long, default_value_t = 1)]
    every: usize,
    #[arg(long, default_value_t = 2)]
    min_partitions: usize,
    #[arg(long, default_value_t = 3)]
    patience: usize,
}

/// (label, predicted class, feature) of one image.
type Labelled = (String, i32, Vec<f32>);

fn read(path: &PathBuf) -> anyhow::Result<(usize, Vec<Labelled>)> {
    let mut b = Vec::new();
    std::fs::File::open(path)?.read_to_end(&mut b)?;
    let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    let n = u32_at(0) as usize;
    let dims = u32_at(4) as usize;
    let mut o = 8;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let ll = u16::from_le_bytes([b[o], b[o + 1]]) as usize;
        let label = String::from_utf8_lossy(&b[o + 2..o + 2 + ll]).into_owned();
        o += 2 + ll;
        let pl = u16::from_le_bytes([b[o], b[o + 1]]) as usize;
        o += 2 + pl;
        let class = u32_at(o) as i32;
        o += 4;
        let f: Vec<f32> = (0..dims)
            .map(|i| {
                f32::from_le_bytes([
                    b[o + 4 * i],
                    b[o + 4 * i + 1],
                    b[o + 4 * i + 2],
                    b[o + 4 * i + 3],
                ])
            })
            .collect();
        o += 4 * dims;
        out.push((label, class, f));
    }
    Ok((dims, out))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (dims, data) = read(&args.features)?;
    let mut idx = MemIndex::new(dims);
    let entries: Vec<Entry> = data
        .iter()
        .enumerate()
        .map(|(i, (label, class, f))| Entry {
            id: i as u64 + 1,
            class: *class,
            feature: f.clone(),
            meta: Meta::new("", "", "", label, 0),
        })
        .collect();
    idx.upsert(&entries);
    idx.refresh();
    let rule = ProbeRule {
        min_partitions: args.min_partitions,
        patience: args.patience,
        ..ProbeRule::default()
    };
    idx.mark_all_stale();
    let started = std::time::Instant::now();
    idx.augment_stale(rule);
    println!(
        "augmented vectors: {:.1} s for {} images",
        started.elapsed().as_secs_f64(),
        data.len()
    );
    println!(
        "{} images, {} partitions, {} labels",
        data.len(),
        idx.partitions().len(),
        {
            let mut l: Vec<&String> = data.iter().map(|d| &d.0).collect();
            l.sort();
            l.dedup();
            l.len()
        }
    );
    println!("| mode | P@1 | P@5 | P@10 | mAP@100 | vectors read | queries/s |");
    println!("|---|---|---|---|---|---|---|");
    for (name, mode) in [
        ("refined", Mode::Refined),
        ("exact", Mode::Exact),
        ("probe", Mode::Probe),
        ("partition", Mode::Partition),
    ] {
        let (mut p1, mut p5, mut p10, mut ap, mut read, mut q) = (0.0, 0.0, 0.0, 0.0, 0u64, 0usize);
        let started = std::time::Instant::now();
        for (i, (label, class, f)) in data.iter().enumerate().step_by(args.every) {
            let relevant = data.iter().filter(|d| &d.0 == label).count() - 1;
            if relevant == 0 {
                continue;
            }
            let (hits, stats) = idx.search(
                &Query {
                    vector: f,
                    predicted_class: Some(*class),
                    top_k: 100,
                    mode,
                    min_similarity: 0.0,
                    exclude_id: Some(i as u64 + 1),
                    filter: &Filter::default(),
                },
                rule,
            );
            let rel: Vec<bool> = hits.iter().map(|h| h.meta.label() == label).collect();
            let prec = |k: usize| rel.iter().take(k).filter(|r| **r).count() as f64 / k as f64;
            p1 += prec(1);
            p5 += prec(5);
            p10 += prec(10);
            let mut found = 0.0;
            let mut sum = 0.0;
            for (r, is) in rel.iter().enumerate() {
                if *is {
                    found += 1.0;
                    sum += found / (r + 1) as f64;
                }
            }
            ap += sum / relevant.min(100) as f64;
            read += stats.vectors_scanned;
            q += 1;
        }
        let n = q as f64;
        println!(
            "| {name} | {:.4} | {:.4} | {:.4} | {:.4} | {:.1}% | {:.0} |",
            p1 / n,
            p5 / n,
            p10 / n,
            ap / n,
            100.0 * read as f64 / (n * data.len() as f64),
            n / started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
