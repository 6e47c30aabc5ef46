//! Inference benchmark: images/s and p50/p99 latency of the network alone
//! (batch sizes) and of the gRPC service end to end (concurrent clients,
//! dynamic batching on and off). Prints a Markdown table.
//!
//! cargo run --release -p cbir-inference --bin inference-bench -- --help

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use cbir_api::v1 as pb;
use cbir_inference::{build_backend, Config, DeviceConfig, ModelSpec};
use clap::Parser;
use hdrhistogram::Histogram;

#[derive(Parser)]
struct Args {
    /// safetensors weights.
    #[arg(
        long,
        env = "CBIR_WEIGHTS",
        default_value = "data/models/efficientnet-lite0-imagenet.safetensors"
    )]
    weights: PathBuf,
    /// Folder with imagenet-sample-300/ (real JPEGs to decode and run).
    #[arg(long, env = "CBIR_SHARED_DATA", default_value = "../shared/data")]
    data: PathBuf,
    #[arg(long, default_value = "cpu")]
    device: String,
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Seconds per measured row.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    #[arg(long, value_delimiter = ',', default_value = "1,2,8,32")]
    batch_sizes: Vec<usize>,
    #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
    clients: Vec<usize>,
    /// Also measure the unfused trainable module at these batch sizes
    /// (0: not at all).
    #[arg(long, value_delimiter = ',', default_value = "1")]
    unfused_batch_sizes: Vec<usize>,
    /// Engines of the network-only rows: tch (fused), onnx (ONNX Runtime).
    #[arg(long, value_delimiter = ',', default_value = "tch,onnx")]
    backends: Vec<String>,
    /// Engine of the service rows: auto, tch or onnx.
    #[arg(long, default_value = "auto")]
    service_backend: String,
    /// Intra-op threads (libtorch and ONNX Runtime); 0 = one per core.
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Let ONNX Runtime's threads spin between passes (`device.spin_wait`
    /// of the service, and ONNX Runtime's own default).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    spin_wait: bool,
    /// Write the served network's ONNX graph here and exit (for
    /// `scripts/bench_onnxruntime.py --model`).
    #[arg(long)]
    write_onnx: Option<PathBuf>,
    /// Skip the end-to-end service rows.
    #[arg(long)]
    model_only: bool,
}

struct Row {
    what: String,
    batch: String,
    images_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds")
}

fn jpegs(data: &std::path::Path) -> anyhow::Result<Vec<Vec<u8>>> {
    let dir = data.join("imagenet-sample-300");
    let csv = std::fs::read_to_string(dir.join("labels.csv"))
        .with_context(|| format!("no imagenet-sample-300 under {}", data.display()))?;
    csv.lines()
        .skip(1)
        .filter_map(|l| l.split(',').next())
        .map(|p| std::fs::read(dir.join(p)).with_context(|| p.to_string()))
        .collect()
}

fn spec(args: &Args) -> ModelSpec {
    ModelSpec {
        name: "efficientnet-lite0".into(),
        version: "imagenet".into(),
        class_names: vec![],
        weights: args.weights.clone(),
    }
}

fn model_rows(
    args: &Args,
    images: &[Vec<u8>],
    engine: &str,
    fuse: bool,
    sizes: &[usize],
) -> anyhow::Result<Vec<Row>> {
    let spec = spec(args);
    let dev = DeviceConfig {
        device: args.device.clone(),
        dtype: args.dtype.clone(),
        fuse,
        backend: engine.to_string(),
        torch_threads: args.threads,
        spin_wait: args.spin_wait,
        ..Default::default()
    };
    let weights = std::fs::read(&spec.weights)?;
    let mut backend = build_backend(&spec, &weights, &dev)?;
    let engine_name = backend.meta().backend.clone();
    let crops: Vec<Vec<u8>> = images
        .iter()
        .take(64)
        .map(|b| {
            let d = cbir_imaging::decode(b, &cbir_imaging::Limits::default())?;
            Ok(cbir_imaging::preprocess(&d.image)?)
        })
        .collect::<anyhow::Result<_>>()?;
    let mut rows = Vec::new();
    for &bs in sizes {
        let batch: Vec<&[u8]> = (0..bs).map(|i| crops[i % crops.len()].as_slice()).collect();
        for _ in 0..3 {
            backend.infer(&batch).map_err(anyhow::Error::msg)?;
        }
        let mut h = hist();
        let start = Instant::now();
        let mut n = 0usize;
        while start.elapsed().as_secs_f64() < args.seconds || n < 3 {
            let t = Instant::now();
            backend.infer(&batch).map_err(anyhow::Error::msg)?;
            h.record(t.elapsed().as_micros() as u64)?;
            n += 1;
        }
        let secs = start.elapsed().as_secs_f64();
        rows.push(Row {
            what: format!(
                "network only ({engine_name}, {}, {}{})",
                args.device,
                args.dtype,
                if fuse { ", fused" } else { ", unfused module" }
            ),
            batch: bs.to_string(),
            images_per_s: (n * bs) as f64 / secs,
            p50_ms: h.value_at_quantile(0.5) as f64 / 1e3,
            p99_ms: h.value_at_quantile(0.99) as f64 / 1e3,
        });
        print_row(rows.last().expect("row"));
    }
    Ok(rows)
}

async fn service_rows(
    args: &Args,
    images: Arc<Vec<Vec<u8>>>,
    batching: bool,
) -> anyhow::Result<Vec<Row>> {
    let mut cfg = Config::default();
    cfg.model.weights = args.weights.clone();
    cfg.device.device = args.device.clone();
    cfg.device.dtype = args.dtype.clone();
    cfg.device.backend = args.service_backend.clone();
    cfg.device.torch_threads = args.threads;
    cfg.device.spin_wait = args.spin_wait;
    if batching {
        cfg.batcher.max_batch_size = 32;
        cfg.batcher.max_queue_delay_us = 2_000;
    } else {
        cfg.batcher.max_batch_size = 1;
        cfg.batcher.max_queue_delay_us = 0;
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(cbir_inference::serve(cfg, listener, async move {
        let _ = stopped.await;
    }));
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?.connect_lazy();
    let client = pb::inference_service_client::InferenceServiceClient::new(channel);
    // Wait for the model.
    let mut c = client.clone();
    for _ in 0..600 {
        if c.get_model_info(pb::GetModelInfoRequest::default())
            .await
            .is_ok()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut rows = Vec::new();
    for &clients in &args.clients {
        // Warm up.
        let mut c = client.clone();
        for i in 0..3 {
            c.embed_image(req(&images[i])).await?;
        }
        let deadline = Instant::now() + Duration::from_secs_f64(args.seconds);
        let start = Instant::now();
        let mut tasks = Vec::new();
        for k in 0..clients {
            let mut c = client.clone();
            let images = images.clone();
            tasks.push(tokio::spawn(async move {
                let mut h = hist();
                let mut i = k * 17;
                let mut errors = 0u64;
                while Instant::now() < deadline {
                    let t = Instant::now();
                    match c.embed_image(req(&images[i % images.len()])).await {
                        Ok(_) => h.record(t.elapsed().as_micros() as u64).expect("record"),
                        Err(_) => errors += 1,
                    }
                    i += 1;
                }
                (h, errors)
            }));
        }
        let mut all = hist();
        let mut errors = 0;
        for t in tasks {
            let (h, e) = t.await?;
            all.add(&h)?;
            errors += e;
        }
        let secs = start.elapsed().as_secs_f64();
        anyhow::ensure!(errors == 0, "{errors} requests failed");
        rows.push(Row {
            what: format!(
                "gRPC EmbedImage ({}), JPEG decode included, batching {}",
                args.service_backend,
                if batching { "on (max 32, 2 ms)" } else { "off" }
            ),
            batch: format!("{clients} clients"),
            images_per_s: all.len() as f64 / secs,
            p50_ms: all.value_at_quantile(0.5) as f64 / 1e3,
            p99_ms: all.value_at_quantile(0.99) as f64 / 1e3,
        });
        print_row(rows.last().expect("row"));
    }
    let _ = stop.send(());
    server.await??;
    Ok(rows)
}

fn req(data: &[u8]) -> pb::EmbedImageRequest {
    pb::EmbedImageRequest {
        image: Some(pb::ImageInput {
            id: String::new(),
            data: data.to_vec(),
        }),
        priority: pb::Priority::Interactive as i32,
        include_probabilities: false,
        ..Default::default()
    }
}

fn print_row(r: &Row) {
    println!(
        "| {} | {} | {:.1} | {:.2} | {:.2} |",
        r.what, r.batch, r.images_per_s, r.p50_ms, r.p99_ms
    );
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.weights.is_file(),
        "weights {} not found: run scripts/setup.sh or pass --weights",
        args.weights.display()
    );
    if let Some(out) = &args.write_onnx {
        let weights = std::fs::read(&args.weights)?;
        let graph = cbir_inference::onnx::graph_of_weights(&spec(&args), &weights)?;
        std::fs::write(out, &graph).with_context(|| out.display().to_string())?;
        println!("wrote {} ({} bytes)", out.display(), graph.len());
        return Ok(());
    }
    if args.threads > 0 {
        tch::set_num_threads(args.threads as i32);
    }
    let images = Arc::new(jpegs(&args.data)?);
    println!(
        "libtorch threads: {}, cores: {}",
        tch::get_num_threads(),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!("| what | batch | images/s | p50 ms | p99 ms |");
    println!("|---|---|---|---|---|");
    for engine in &args.backends {
        model_rows(&args, &images, engine, true, &args.batch_sizes)?;
    }
    let unfused: Vec<usize> = args
        .unfused_batch_sizes
        .iter()
        .copied()
        .filter(|&b| b > 0)
        .collect();
    if !unfused.is_empty() {
        model_rows(&args, &images, "tch", false, &unfused)?;
    }
    if !args.model_only {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            service_rows(&args, images.clone(), true).await?;
            service_rows(&args, images.clone(), false).await
        })?;
    }
    Ok(())
}
