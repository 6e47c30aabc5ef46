//! Fine-tunes on a folder-per-class directory outside the service and
//! prints the timings: for measuring the trainer alone.
//!
//! `train-folder DIR [--epochs N] [--min-per-class N] [--out FILE]`

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use clap::Parser;

#[derive(Parser)]
struct Args {
    dir: PathBuf,
    #[arg(long, default_value_t = 6)]
    epochs: u32,
    #[arg(long, default_value_t = 2)]
    views: u32,
    #[arg(long, default_value_t = 2)]
    tune_blocks: u32,
    #[arg(long, default_value_t = 10)]
    min_per_class: u32,
    #[arg(long, default_value_t = 0)]
    threads: i32,
    #[arg(long)]
    out: Option<PathBuf>,
    #[arg(long, env = "CBIR_WEIGHTS")]
    weights: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    cbir_common::telemetry::init_for_tests();
    if a.threads > 0 {
        tch::set_num_threads(a.threads);
    }
    let params = cbir_training::trainer::Params {
        epochs: a.epochs,
        augment_views: a.views,
        tune_blocks: a.tune_blocks,
        min_images_per_class: a.min_per_class,
        ..Default::default()
    };
    let t = std::time::Instant::now();
    let ds = cbir_training::dataset::scan(
        &a.dir,
        params.min_images_per_class as usize,
        params.validation_fraction,
        params.seed,
        // The operator's own folder: links may point anywhere.
        cbir_training::dataset::Links::Within(&[PathBuf::from("/")]),
    )?;
    println!(
        "scan: {} classes, {} train, {} validation, {} skipped, {:.1} s",
        ds.classes.len(),
        ds.train.len(),
        ds.validation.len(),
        ds.skipped.len(),
        t.elapsed().as_secs_f64()
    );
    let cancel = AtomicBool::new(false);
    let setup = cbir_training::trainer::Setup {
        base_weights: &a.weights,
        device: tch::Device::cuda_if_available(),
        limits: cbir_imaging::Limits::default(),
        cancel: &cancel,
    };
    let mut last_phase = String::new();
    let mut last_print = std::time::Instant::now();
    let mut report = |p: &cbir_api::v1::JobProgress, point: Option<cbir_api::v1::CurvePoint>| {
        let phase_kind = p.phase.split(" (").next().unwrap_or_default().to_string();
        let val = point
            .as_ref()
            .is_some_and(|c| !c.validation_accuracy.is_nan());
        if phase_kind != last_phase || val || last_print.elapsed().as_secs() >= 20 {
            last_print = std::time::Instant::now();
            println!(
                "{:7.1} s  {:<40} epoch {}/{} it {}/{} loss {:.3} train {:.3} val {:.3} {:.0} img/s eta {:.0} s",
                p.elapsed_seconds, p.phase, p.epoch, p.epochs, p.iteration, p.iterations,
                p.loss, p.train_accuracy, p.validation_accuracy, p.images_per_second, p.eta_seconds
            );
            last_phase = phase_kind;
        }
    };
    let trained = cbir_training::trainer::train(&setup, &ds, &params, &mut report)?;
    println!(
        "done in {:.1} s: validation accuracy {:.4}, {} iterations, {} epochs, {} bytes",
        t.elapsed().as_secs_f64(),
        trained.validation_accuracy,
        trained.iterations,
        trained.epochs,
        trained.weights.len()
    );
    if let Some(out) = a.out {
        std::fs::write(&out, &trained.weights)?;
        std::fs::write(out.with_extension("classes.txt"), ds.classes.join("\n"))?;
    }
    Ok(())
}
