//! `cbir bench-ingest`: where the time of `cbir index add` goes. Each stage
//! of the ingest path runs alone in this process on a sample of the files
//! (read, hash, decode and crop, thumbnail and rendition, the network on
//! its engine, the index's upsert into a private SQLite index), with its
//! rate and the CPU it takes per image; then the files go through a running
//! system exactly as `cbir index add` sends them. The CPU per image of the
//! stages bounds what the cores can ingest; the end-to-end rate against
//! that bound says whether the pipeline waits somewhere.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use cbir_api::v1 as pb;
use cbir_api::v1::index_service_client::IndexServiceClient;

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Folders (or files) of images, as `cbir index add` takes them.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// Images of the per-stage sample.
    #[arg(long, default_value_t = 800)]
    sample: usize,
    /// Skip the end-to-end run through the gateway.
    #[arg(long)]
    stages_only: bool,
    /// Keep the collection the end-to-end run fills.
    #[arg(long)]
    keep: bool,
    /// Inference engine of the network stage: auto, tch or onnx.
    #[arg(long, default_value = "auto")]
    backend: String,
    /// Weights of the network stage.
    #[arg(
        long,
        env = "CBIR_WEIGHTS",
        default_value = "data/models/efficientnet-lite0-imagenet.safetensors"
    )]
    weights: PathBuf,
}

/// CPU seconds this process has used, all threads (`/proc/self/stat`).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name, which is in parentheses.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 here, in
    // USER_HZ (100 on Linux).
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// Busy and total jiffies of the whole machine (`/proc/stat`).
fn machine_jiffies() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let cpu: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let total: f64 = cpu.iter().sum();
    // idle and iowait.
    let idle = cpu.get(3).copied().unwrap_or(0.0) + cpu.get(4).copied().unwrap_or(0.0);
    (total - idle, total)
}

struct Stage {
    name: &'static str,
    images: usize,
    wall: f64,
    cpu: f64,
}

impl Stage {
    fn rate(&self) -> f64 {
        self.images as f64 / self.wall.max(1e-9)
    }
    fn cpu_ms(&self) -> f64 {
        self.cpu * 1e3 / self.images.max(1) as f64
    }
}

fn measure<T>(name: &'static str, images: usize, f: impl FnOnce() -> T) -> (Stage, T) {
    let (c0, t0) = (cpu_seconds(), Instant::now());
    let out = f();
    let stage = Stage {
        name,
        images,
        wall: t0.elapsed().as_secs_f64(),
        cpu: cpu_seconds() - c0,
    };
    println!(
        "| {} | {} | {:.1} | {:.2} |",
        stage.name,
        stage.images,
        stage.rate(),
        stage.cpu_ms()
    );
    (stage, out)
}

/// An index service of this process on a temporary SQLite database, and a
/// client of it.
async fn private_index(
    dir: &std::path::Path,
    model: pb::ModelRef,
    dims: u32,
) -> anyhow::Result<(
    IndexServiceClient<tonic::transport::Channel>,
    tokio::sync::oneshot::Sender<()>,
)> {
    let cfg = cbir_index::Config {
        database_url: format!("sqlite://{}", dir.join("index.db").display()),
        ..Default::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(cbir_index::serve(cfg, listener, async move {
        let _ = stopped.await;
    }));
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?.connect_lazy();
    let mut client = IndexServiceClient::new(channel)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
    let mut last = None;
    for _ in 0..200 {
        let r = client
            .create_collection(pb::CreateCollectionRequest {
                name: "bench".into(),
                model: Some(model.clone()),
                dims,
                ..Default::default()
            })
            .await;
        match r {
            Ok(_) => return Ok((client, stop)),
            // Not listening yet.
            Err(e) if e.code() == tonic::Code::Unavailable => last = Some(e),
            Err(e) => {
                return Err(crate::client::status_error(
                    "creating the bench collection",
                    e,
                ))
            }
        }
        if server.is_finished() {
            server.await??;
            anyhow::bail!("the private index service stopped");
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    anyhow::bail!("the private index service did not start: {last:?}")
}

pub async fn run(gateway: &str, args: BenchArgs) -> anyhow::Result<()> {
    let files = crate::client::collect_images(&args.paths)?;
    anyhow::ensure!(!files.is_empty(), "no image files under the given paths");
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let step = (files.len() / args.sample.max(1)).max(1);
    let sample: Vec<PathBuf> = files
        .iter()
        .step_by(step)
        .take(args.sample)
        .cloned()
        .collect();
    let n = sample.len();
    println!(
        "{} files, a sample of {n} for the stages, {cores} cores\n",
        files.len()
    );
    println!("| stage (alone, this process) | images | images/s | CPU ms per image |");
    println!("|---|---|---|---|");
    let (read, images) = measure("read the files", n, || {
        sample
            .iter()
            .map(|p| std::fs::read(p).with_context(|| p.display().to_string()))
            .collect::<anyhow::Result<Vec<Vec<u8>>>>()
    });
    let images = images?;
    let (hash, hashes) = measure("content hash (1 thread)", n, || {
        images
            .iter()
            .map(|b| cbir_imaging::content_hash(b))
            .collect::<Vec<_>>()
    });
    let limits = cbir_imaging::Limits::default();
    let (decode, decoded) = measure("decode + crop to 224 (1 thread)", n, || {
        images
            .iter()
            .map(|b| {
                let d = cbir_imaging::decode(b, &limits)?;
                let crop = cbir_imaging::preprocess(&d.image)?;
                Ok((d.image, crop))
            })
            .collect::<Result<Vec<_>, cbir_imaging::Error>>()
    });
    let decoded = decoded?;
    let (forms, stored) = measure("thumbnail + rendition (1 thread)", n, || {
        decoded
            .iter()
            .zip(&images)
            .map(|((img, _), b)| cbir_imaging::stored_forms(img, b.len()))
            .collect::<Result<Vec<_>, cbir_imaging::Error>>()
    });
    let stored = stored?;
    let crops: Vec<Vec<u8>> = decoded.into_iter().map(|(_, c)| c).collect();

    let spec = cbir_inference::ModelSpec {
        name: "efficientnet-lite0".into(),
        version: "imagenet".into(),
        class_names: vec![],
        weights: args.weights.clone(),
    };
    let device = cbir_inference::DeviceConfig {
        backend: args.backend.clone(),
        ..Default::default()
    };
    let weights = std::fs::read(&args.weights)
        .with_context(|| format!("weights {}", args.weights.display()))?;
    let mut backend = cbir_inference::build_backend(&spec, &weights, &device)?;
    let batch = backend.useful_batch().unwrap_or(16);
    let engine = backend.meta().backend.clone();
    // Warm up (first passes plan and allocate).
    backend
        .infer(&[crops[0].as_slice()])
        .map_err(anyhow::Error::msg)?;
    let name: &'static str = if engine == "onnxruntime" {
        "network, onnxruntime (all cores)"
    } else {
        "network, tch (all cores)"
    };
    let (network, outputs) = measure(name, n, || {
        let mut out = Vec::with_capacity(n);
        for chunk in crops.chunks(batch) {
            let inputs: Vec<&[u8]> = chunk.iter().map(Vec::as_slice).collect();
            out.extend(backend.infer(&inputs)?);
        }
        Ok::<_, String>(out)
    });
    let outputs = outputs.map_err(anyhow::Error::msg)?;
    let meta = backend.meta();
    drop(backend);

    let tmp = tempfile::tempdir()?;
    let model = pb::ModelRef {
        name: meta.name.clone(),
        version: meta.version.clone(),
    };
    let (mut index, stop) = private_index(tmp.path(), model, meta.embedding_dim as u32).await?;
    let records: Vec<pb::ImageRecord> = outputs
        .into_iter()
        .zip(stored)
        .zip(&images)
        .zip(hashes)
        .zip(&sample)
        .map(|((((o, forms), bytes), content_hash), path)| {
            let predicted = o
                .probabilities
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map_or(0, |(i, _)| i as i32);
            pb::ImageRecord {
                content_hash,
                file_name: path
                    .file_name()
                    .map(|f| f.to_string_lossy().to_string())
                    .unwrap_or_default(),
                path: path.display().to_string(),
                label: path
                    .parent()
                    .and_then(|p| p.file_name())
                    .map(|f| f.to_string_lossy().to_string())
                    .unwrap_or_default(),
                predicted_class: predicted,
                feature: o.feature,
                thumbnail: forms.thumbnail,
                source_image: forms.rendition.unwrap_or_else(|| bytes.clone()),
                ..Default::default()
            }
        })
        .collect();
    let (c0, t0) = (cpu_seconds(), Instant::now());
    for chunk in records.chunks(crate::client::BATCH) {
        index
            .upsert(pb::UpsertRequest {
                collection: "bench".into(),
                records: chunk.to_vec(),
                replace: false,
            })
            .await
            .context("upserting into the private index")?;
    }
    let store = Stage {
        name: "index upsert, SQLite (batches of 16)",
        images: n,
        wall: t0.elapsed().as_secs_f64(),
        cpu: cpu_seconds() - c0,
    };
    println!(
        "| {} | {} | {:.1} | {:.2} |",
        store.name,
        store.images,
        store.rate(),
        store.cpu_ms()
    );
    let _ = stop.send(());

    let stages = [&read, &hash, &decode, &forms, &network, &store];
    let cpu_ms: f64 = stages.iter().map(|s| s.cpu_ms()).sum();
    let bound = cores as f64 * 1e3 / cpu_ms;
    println!(
        "\nCPU per image, all stages: {cpu_ms:.2} ms; {cores} cores can ingest at most \
         {bound:.1} images/s if nothing waits. The network alone: {:.1} images/s.",
        network.rate()
    );
    if args.stages_only {
        return Ok(());
    }

    let client = crate::client::connect(gateway).await?;
    let collection = format!("bench-ingest-{}", std::process::id());
    let (b0, t0) = machine_jiffies();
    let summary = crate::client::add_files(&client, &collection, &files, false).await?;
    let (b1, t1) = machine_jiffies();
    let rate = summary.added as f64 / summary.seconds.max(1e-9);
    println!(
        "\nend to end, `cbir index add` through {gateway}: {} of {} images in {:.1} s = \
         {rate:.1} images/s ({} failed); the machine was {:.0}% busy; {:.0}% of the CPU bound",
        summary.added,
        files.len(),
        summary.seconds,
        summary.failed.len(),
        100.0 * (b1 - b0) / (t1 - t0).max(1.0),
        100.0 * rate / bound
    );
    if !args.keep {
        client
            .clone()
            .delete_collection(pb::DeleteCollectionRequest { name: collection })
            .await
            .map_err(|s| crate::client::status_error("deleting the benchmark collection", s))?;
    }
    Ok(())
}
