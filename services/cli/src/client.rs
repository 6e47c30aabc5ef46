//! `cbir index ...`: the gateway's public gRPC API from the command line,
//! and the connection every command shares.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use cbir_api::v1 as pb;
use cbir_api::v1::search_service_client::SearchServiceClient;
use futures::StreamExt;
use serde_json::json;
use tonic::transport::Channel;

/// Images per AddImages call and calls in flight: keeps the inference
/// batcher busy without holding many files in memory.
pub const BATCH: usize = 16;
pub const IN_FLIGHT: usize = 3;
/// Bytes per AddImages call, well under the gateway's message limit.
const BATCH_BYTES: u64 = 64 << 20;

/// Sends `CBIR_API_KEY` (when set) as the `x-api-key` of every call.
#[derive(Clone)]
pub struct ApiKey(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for ApiKey {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(k) = &self.0 {
            req.metadata_mut().insert("x-api-key", k.clone());
        }
        Ok(req)
    }
}

pub type Client = SearchServiceClient<tonic::codegen::InterceptedService<Channel, ApiKey>>;

pub async fn connect(url: &str) -> anyhow::Result<Client> {
    let channel = cbir_common::tls::endpoint(url)
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("bad gateway URL {url}"))?
        .tcp_nodelay(true)
        .connect()
        .await
        .with_context(|| format!("cannot reach the gateway at {url}: is `cbir up` running?"))?;
    let key = match std::env::var("CBIR_API_KEY") {
        Ok(k) if !k.trim().is_empty() => Some(
            k.trim()
                .parse()
                .context("CBIR_API_KEY must be printable ASCII")?,
        ),
        _ => None,
    };
    Ok(SearchServiceClient::with_interceptor(channel, ApiKey(key))
        .max_encoding_message_size(512 << 20)
        .max_decoding_message_size(512 << 20))
}

/// A failed call as one line: the gateway's message already names the
/// service and what to do.
pub fn status_error(what: &str, s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{what} failed ({:?}): {}", s.code(), s.message())
}

/// Image files under `paths` (files as given, folders recursively), with
/// their labels (the parent folder's name).
pub fn collect_images(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        let meta = std::fs::metadata(p).with_context(|| format!("cannot open {}", p.display()))?;
        if meta.is_dir() {
            out.extend(
                cbir_common::images::walk_images(p, cbir_common::images::Links::Follow)
                    .with_context(|| format!("cannot read folder {}", p.display()))?,
            );
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

pub fn label_of(p: &Path) -> String {
    p.parent()
        .and_then(|d| d.file_name())
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default()
}

/// Groups files into calls of at most BATCH images and about BATCH_BYTES.
fn batches(files: &[PathBuf]) -> Vec<Vec<PathBuf>> {
    let mut out: Vec<Vec<PathBuf>> = Vec::new();
    let mut bytes = 0;
    for p in files {
        let size = std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        let start_new = match out.last() {
            None => true,
            Some(b) => b.len() >= BATCH || bytes + size > BATCH_BYTES,
        };
        if start_new {
            out.push(Vec::new());
            bytes = 0;
        }
        bytes += size;
        if let Some(b) = out.last_mut() {
            b.push(p.clone());
        }
    }
    out
}

#[derive(Default)]
pub struct AddSummary {
    pub added: u64,
    pub created: u64,
    pub failed: Vec<(String, String)>,
    pub ids: Vec<(PathBuf, u64)>,
    pub seconds: f64,
}

/// Sends `files` to the gateway in batches, a few in flight, reporting
/// progress on stderr when `progress` is set.
pub async fn add_files(
    client: &Client,
    collection: &str,
    files: &[PathBuf],
    progress: bool,
) -> anyhow::Result<AddSummary> {
    let started = Instant::now();
    let total = files.len();
    // Created once up front: the batches below run concurrently.
    client
        .clone()
        .create_collection(pb::CreateGatewayCollectionRequest {
            name: collection.to_string(),
            description: String::new(),
            if_not_exists: true,
        })
        .await
        .map_err(|s| status_error("creating the collection", s))?;
    let mut summary = AddSummary::default();
    let mut stream = futures::stream::iter(batches(files).into_iter().map(|batch| {
        let mut client = client.clone();
        let collection = collection.to_string();
        async move {
            let mut images = Vec::with_capacity(batch.len());
            let mut unreadable = Vec::new();
            let mut sent = Vec::new();
            for p in batch {
                match cbir_gateway::index_jobs::read_image(&p).await {
                    Ok(img) => {
                        images.push(img);
                        sent.push(p);
                    }
                    Err(e) => {
                        unreadable.push((p.display().to_string(), format!("cannot read: {e}")))
                    }
                }
            }
            let r = if images.is_empty() {
                Ok(pb::AddImagesResponse::default())
            } else {
                client
                    .add_images(pb::AddImagesRequest {
                        replace: false,
                        collection,
                        images,
                        create_collection: true,
                    })
                    .await
                    .map(tonic::Response::into_inner)
            };
            (r, sent, unreadable)
        }
    }))
    .buffered(IN_FLIGHT);
    let bar = progress.then(|| {
        crate::progress::bar(
            total as u64,
            "[{bar:30}] {pos}/{len}  {msg} failed  {per_sec}  ETA {eta}",
        )
    });
    while let Some((r, sent, unreadable)) = stream.next().await {
        let seen = (sent.len() + unreadable.len()) as u64;
        summary.failed.extend(unreadable);
        let r = r.map_err(|s| status_error("adding images", s))?;
        for (item, path) in r.results.into_iter().zip(sent) {
            if item.error.is_empty() {
                summary.added += 1;
                summary.created += u64::from(item.created);
                summary.ids.push((path, item.id));
            } else {
                summary
                    .failed
                    .push((path.display().to_string(), item.error));
            }
        }
        if let Some(bar) = &bar {
            bar.set_message(summary.failed.len().to_string());
            bar.inc(seen);
        }
    }
    if let Some(bar) = bar {
        bar.finish();
    }
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

pub async fn index_add(
    url: &str,
    collection: &str,
    paths: &[PathBuf],
    as_json: bool,
) -> anyhow::Result<ExitCode> {
    let client = connect(url).await?;
    let files = collect_images(paths)?;
    if files.is_empty() {
        anyhow::bail!("no image files (jpg, png, gif, bmp, webp, tiff) under the given paths");
    }
    let s = add_files(&client, collection, &files, !as_json).await?;
    let rate = s.added as f64 / s.seconds.max(1e-3);
    if as_json {
        println!(
            "{}",
            json!({
                "collection": collection,
                "files": files.len(),
                "added": s.added,
                "new": s.created,
                "failed": s.failed.len(),
                "failures": s.failed.iter().map(|(p, r)| json!({"path": p, "reason": r})).collect::<Vec<_>>(),
                "seconds": s.seconds,
                "images_per_second": rate,
            })
        );
    } else {
        println!(
            "collection {collection}: {} of {} images added ({} new, {} already there), {} failed, in {:.1} s ({rate:.1} images/s)",
            s.added,
            files.len(),
            s.created,
            s.added - s.created,
            s.failed.len(),
            s.seconds
        );
        for (p, r) in s.failed.iter().take(20) {
            println!("  failed: {p}: {r}");
        }
        if s.failed.len() > 20 {
            println!("  ... and {} more", s.failed.len() - 20);
        }
    }
    Ok(if s.failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

pub async fn stats(url: &str, collection: &str, as_json: bool) -> anyhow::Result<ExitCode> {
    let mut client = connect(url).await?;
    let s = client
        .get_stats(pb::StatsRequest {
            collection: collection.to_string(),
        })
        .await
        .map_err(|s| status_error("stats", s))?
        .into_inner();
    let c = s.collection.clone().unwrap_or_default();
    let model = c
        .model
        .as_ref()
        .map_or_else(String::new, |m| format!("{}:{}", m.name, m.version));
    let mut parts = s.partitions.clone();
    parts.sort_by_key(|p| std::cmp::Reverse(p.count));
    if as_json {
        println!(
            "{}",
            json!({
                "collection": c.name,
                "physical_name": c.physical_name,
                "model": model,
                "count": s.count,
                "dims": s.dims,
                "bytes_in_memory": s.bytes_in_memory,
                "partitions": parts.iter().map(|p| json!({
                    "class_index": p.class_index, "class_name": p.class_name,
                    "count": p.count, "bytes_in_memory": p.bytes_in_memory,
                })).collect::<Vec<_>>(),
                "labels": s.labels.iter().map(|l| json!({
                    "label": l.label, "count": l.count,
                })).collect::<Vec<_>>(),
            })
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "collection {} ({}), model {model}: {} images, {} dims, {} partitions, {:.1} MiB in memory",
        c.name,
        c.physical_name,
        s.count,
        s.dims,
        parts.len(),
        s.bytes_in_memory as f64 / (1 << 20) as f64
    );
    for p in parts.iter().take(20) {
        println!("  {:>7}  {:>4} {}", p.count, p.class_index, p.class_name);
    }
    if parts.len() > 20 {
        println!("  ... and {} more partitions", parts.len() - 20);
    }
    println!("{} labels:", s.labels.len());
    for l in s.labels.iter().take(20) {
        let name = if l.label.is_empty() {
            "(unlabelled)"
        } else {
            &l.label
        };
        println!("  {:>7}  {name}", l.count);
    }
    if s.labels.len() > 20 {
        println!("  ... and {} more labels", s.labels.len() - 20);
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn clear(url: &str, collection: &str) -> anyhow::Result<ExitCode> {
    let mut client = connect(url).await?;
    let r = client
        .clear_collection(pb::ClearRequest {
            collection: collection.to_string(),
        })
        .await
        .map_err(|s| status_error("clear", s))?
        .into_inner();
    println!("collection {collection}: {} images removed", r.removed);
    Ok(ExitCode::SUCCESS)
}
