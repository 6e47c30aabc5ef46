//! `cbir train` and `cbir model ...`: fine-tuning and the model registry
//! through the gateway's REST API (the same calls the web UI makes).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use serde_json::{json, Value};

pub struct TrainArgs {
    pub gateway: String,
    pub dir: PathBuf,
    pub name: String,
    pub epochs: u32,
    pub min_per_class: u32,
    /// DIR is a folder on the training service's machine.
    pub server: bool,
    pub activate: bool,
    pub json: bool,
}

fn http() -> anyhow::Result<reqwest::Client> {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Ok(k) = std::env::var("CBIR_API_KEY") {
        if !k.trim().is_empty() {
            headers.insert(
                "x-api-key",
                k.trim()
                    .parse()
                    .context("CBIR_API_KEY must be printable ASCII")?,
            );
        }
    }
    let mut builder = reqwest::Client::builder().default_headers(headers);
    if let Some(ca) = std::env::var_os("CBIR_TLS_CA") {
        let pem = std::fs::read(&ca)
            .with_context(|| format!("cannot read CBIR_TLS_CA {}", ca.to_string_lossy()))?;
        builder = builder.add_root_certificate(
            reqwest::Certificate::from_pem(&pem).context("CBIR_TLS_CA is not a PEM certificate")?,
        );
    }
    Ok(builder.build()?)
}

/// The JSON body, or the gateway's error message as the error.
async fn answer(what: &str, r: reqwest::Response) -> anyhow::Result<Value> {
    let status = r.status();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    if status.is_success() {
        return Ok(body);
    }
    let msg = body["error"]["message"]
        .as_str()
        .or_else(|| body["message"].as_str())
        .unwrap_or("no message");
    anyhow::bail!("{what} failed ({status}): {msg}")
}

fn base(gateway: &str) -> String {
    gateway.trim_end_matches('/').to_string()
}

/// An uncompressed tar of the image files under `dir`, with paths relative
/// to it (class folder / file); links are followed, as they are the
/// user's own files.
fn tar_folder(dir: &Path) -> anyhow::Result<(Vec<u8>, usize)> {
    let files = crate::client::collect_images(&[dir.to_path_buf()])?;
    let mut b = tar::Builder::new(Vec::new());
    for f in &files {
        let rel = f.strip_prefix(dir).unwrap_or(f);
        b.append_path_with_name(f, rel)
            .with_context(|| format!("adding {} to the upload", f.display()))?;
    }
    Ok((b.into_inner()?, files.len()))
}

/// Steps of the job's bar: its position is a fraction of the job.
const BAR_STEPS: u64 = 1000;

fn duration(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

/// The job's progress: the fraction done and what the bar shows after it.
fn progress_line(job: &Value) -> (f64, String) {
    let p = &job["progress"];
    let f = |k: &str| p[k].as_f64().unwrap_or(0.0);
    let phase = p["phase"].as_str().unwrap_or_default();
    let frac = if f("iterations") > 0.0 {
        f("iteration") / f("iterations")
    } else {
        // Before the first step the phase names its own count:
        // "extracting features (640/10985 images)".
        phase
            .split_once('(')
            .and_then(|(_, r)| r.split_once(' '))
            .and_then(|(n, _)| n.split_once('/'))
            .and_then(|(a, b)| Some(a.parse::<f64>().ok()? / b.parse::<f64>().ok()?))
            .unwrap_or(0.0)
    };
    let line = format!(
        "{phase} | epoch {}/{} it {}/{} | loss {:.3} train {:.3} val {:.3} | {:.0} img/s | ETA {}",
        f("epoch"),
        f("epochs"),
        f("iteration"),
        f("iterations"),
        f("loss"),
        f("train_accuracy"),
        f("validation_accuracy"),
        f("images_per_second"),
        duration(f("eta_seconds")),
    );
    (frac.clamp(0.0, 1.0), line)
}

/// Follows the job's event stream until it ends; returns its last state.
async fn follow(
    client: &reqwest::Client,
    base: &str,
    id: &str,
    json_out: bool,
) -> anyhow::Result<Value> {
    let mut resp = client
        .get(format!("{base}/api/training/jobs/{id}/events"))
        .send()
        .await
        .context("cannot reach the gateway")?;
    if !resp.status().is_success() {
        answer("watching the job", resp).await?;
        anyhow::bail!("watching the job failed");
    }
    let mut buf = String::new();
    let mut last = Value::Null;
    let bar =
        (!json_out).then(|| crate::progress::bar(BAR_STEPS, "[{bar:24}] {percent:>3}% {wide_msg}"));
    while let Some(chunk) = resp.chunk().await.context("the event stream broke")? {
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find('\n') {
            let line: String = buf.drain(..=end).collect();
            let Some(data) = line.trim_end().strip_prefix("data:") else {
                continue;
            };
            let Ok(job) = serde_json::from_str::<Value>(data.trim()) else {
                continue;
            };
            if job.get("id").is_none() {
                anyhow::bail!(
                    "the job's event stream failed: {}",
                    job["message"].as_str().unwrap_or_default()
                );
            }
            match &bar {
                None => println!("{job}"),
                Some(bar) => {
                    let (frac, line) = progress_line(&job);
                    bar.set_position((frac * BAR_STEPS as f64).round() as u64);
                    bar.set_message(line);
                }
            }
            last = job;
        }
    }
    if let Some(bar) = bar {
        bar.finish();
    }
    // The stream ends with the job; read the stored end state in case the
    // last event was missed.
    let job = answer(
        "reading the job",
        client
            .get(format!("{base}/api/training/jobs/{id}"))
            .send()
            .await?,
    )
    .await
    .unwrap_or(last);
    Ok(job)
}

pub async fn train(a: TrainArgs) -> anyhow::Result<ExitCode> {
    let client = http()?;
    let base = base(&a.gateway);
    let dataset = if a.server {
        let p = a
            .dir
            .canonicalize()
            .unwrap_or_else(|_| a.dir.clone())
            .display()
            .to_string();
        json!({"server_path": p})
    } else {
        let dir = a.dir.clone();
        let (tarball, n) = tokio::task::spawn_blocking(move || tar_folder(&dir)).await??;
        eprintln!(
            "uploading {n} images ({:.1} MB) from {}",
            tarball.len() as f64 / 1e6,
            a.dir.display()
        );
        let up = answer(
            "uploading the dataset",
            client
                .post(format!(
                    "{base}/api/training/datasets?file_name=dataset.tar"
                ))
                .header("content-type", "application/x-tar")
                .body(tarball)
                .send()
                .await
                .with_context(|| {
                    format!("cannot reach the gateway at {base}: is `cbir up` running?")
                })?,
        )
        .await?;
        json!({"dataset_id": up["dataset_id"]})
    };
    let mut body = json!({
        "name": a.name,
        "params": {"epochs": a.epochs, "min_images_per_class": a.min_per_class},
    });
    if let (Some(b), Some(d)) = (body.as_object_mut(), dataset.as_object()) {
        b.extend(d.clone());
    }
    let job = answer(
        "submitting the job",
        client
            .post(format!("{base}/api/training/jobs"))
            .json(&body)
            .send()
            .await?,
    )
    .await?;
    let id = job["id"].as_str().unwrap_or_default().to_string();
    eprintln!(
        "job {id}: {} classes, {} training and {} validation images{}",
        job["class_names"].as_array().map_or(0, Vec::len),
        job["train_images"],
        job["validation_images"],
        match job["skipped"].as_array().map_or(0, Vec::len) {
            0 => String::new(),
            n => format!(", {n} files skipped"),
        }
    );
    for s in job["skipped"].as_array().into_iter().flatten().take(20) {
        eprintln!("  skipped {}", s.as_str().unwrap_or_default());
    }
    let end = follow(&client, &base, &id, a.json).await?;
    let state = end["state"].as_str().unwrap_or_default();
    let elapsed = end["progress"]["elapsed_seconds"].as_f64().unwrap_or(0.0);
    if state != "succeeded" {
        eprintln!(
            "job {id} {state}: {}",
            end["message"].as_str().unwrap_or_default()
        );
        return Ok(ExitCode::FAILURE);
    }
    let model = &end["model"];
    let (name, version) = (
        model["name"].as_str().unwrap_or_default().to_string(),
        model["version"].as_str().unwrap_or_default().to_string(),
    );
    eprintln!(
        "registered {name}:{version} in {} ({}): validation accuracy {:.4}",
        duration(elapsed),
        end["message"].as_str().unwrap_or_default(),
        end["progress"]["validation_accuracy"]
            .as_f64()
            .unwrap_or(0.0)
    );
    if !a.json {
        println!("{name}:{version}");
    }
    if a.activate {
        return activate(&client, &base, &name, &version, true).await;
    }
    Ok(ExitCode::SUCCESS)
}

async fn activate(
    client: &reqwest::Client,
    base: &str,
    name: &str,
    version: &str,
    wait: bool,
) -> anyhow::Result<ExitCode> {
    let r = answer(
        "activating the model",
        client
            .post(format!("{base}/api/models/{name}/{version}/activate"))
            .send()
            .await?,
    )
    .await?;
    let ops: Vec<String> = r["rebuild_operation_ids"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(String::from))
        .collect();
    eprintln!(
        "{name}:{version} is active; rebuilding {} collection(s)",
        ops.len()
    );
    if !wait {
        return Ok(ExitCode::SUCCESS);
    }
    let mut ok = true;
    for op in ops {
        let bar = crate::progress::bar(0, "[{bar:24}] {pos}/{len} {msg}");
        loop {
            let o = answer(
                "reading the rebuild",
                client
                    .get(format!("{base}/api/operations/{op}"))
                    .send()
                    .await?,
            )
            .await?;
            let state = o["state"].as_str().unwrap_or_default().to_string();
            bar.set_length(o["total"].as_u64().unwrap_or(0));
            bar.set_position(o["done"].as_u64().unwrap_or(0));
            bar.set_message(o["message"].as_str().unwrap_or_default().to_string());
            if !matches!(state.as_str(), "pending" | "running") {
                bar.finish();
                ok &= state == "succeeded";
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

pub enum ModelCommand {
    List {
        json: bool,
    },
    Activate {
        name: String,
        version: String,
        no_wait: bool,
    },
    Delete {
        name: String,
        version: String,
    },
}

pub async fn model(gateway: &str, cmd: ModelCommand) -> anyhow::Result<ExitCode> {
    let client = http()?;
    let base = base(gateway);
    match cmd {
        ModelCommand::List { json: as_json } => {
            let r = answer(
                "listing models",
                client.get(format!("{base}/api/models")).send().await?,
            )
            .await?;
            for m in r["models"].as_array().into_iter().flatten() {
                if as_json {
                    println!("{m}");
                    continue;
                }
                let trained = m["job_id"].as_str().is_some_and(|j| !j.is_empty());
                println!(
                    "{}{}:{}  classes {}  validation {}  epochs {}  iterations {}  {}  by {}",
                    if m["active"].as_bool().unwrap_or(false) {
                        "* "
                    } else {
                        "  "
                    },
                    m["name"].as_str().unwrap_or_default(),
                    m["version"].as_str().unwrap_or_default(),
                    m["class_names"].as_array().map_or(0, Vec::len),
                    if trained {
                        format!("{:.4}", m["validation_accuracy"].as_f64().unwrap_or(0.0))
                    } else {
                        "-".into()
                    },
                    m["epochs"],
                    m["iterations"],
                    duration(m["duration_seconds"].as_f64().unwrap_or(0.0)),
                    m["trained_by"].as_str().unwrap_or_default(),
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        ModelCommand::Activate {
            name,
            version,
            no_wait,
        } => activate(&client, &base, &name, &version, !no_wait).await,
        ModelCommand::Delete { name, version } => {
            answer(
                "deleting the model",
                client
                    .delete(format!("{base}/api/models/{name}/{version}"))
                    .send()
                    .await?,
            )
            .await?;
            eprintln!("deleted {name}:{version}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

pub enum DatasetCommand {
    List { json: bool },
    Rm { id: String },
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
}

pub async fn dataset(gateway: &str, cmd: DatasetCommand) -> anyhow::Result<ExitCode> {
    let client = http()?;
    let base = base(gateway);
    match cmd {
        DatasetCommand::List { json: as_json } => {
            let r = answer(
                "listing datasets",
                client
                    .get(format!("{base}/api/training/datasets"))
                    .send()
                    .await?,
            )
            .await?;
            for d in r["datasets"].as_array().into_iter().flatten() {
                if as_json {
                    println!("{d}");
                    continue;
                }
                let jobs: Vec<&str> = d["job_ids"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                let expires = d["expires_at_ms"].as_i64().unwrap_or(0);
                let left = (expires - now_ms()).max(0) as f64 / 1000.0;
                println!(
                    "{}  {}  {}",
                    d["id"].as_str().unwrap_or_default(),
                    mib(d["bytes"].as_u64().unwrap_or(0)),
                    if jobs.is_empty() {
                        format!("unused, deleted in {}", duration(left))
                    } else {
                        format!("used by {}", jobs.join(", "))
                    }
                );
            }
            if !as_json {
                eprintln!(
                    "{} of {} (max_datasets_bytes) in use",
                    mib(r["used_bytes"].as_u64().unwrap_or(0)),
                    mib(r["quota_bytes"].as_u64().unwrap_or(0))
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        DatasetCommand::Rm { id } => {
            let r = answer(
                "deleting the dataset",
                client
                    .delete(format!("{base}/api/training/datasets/{id}"))
                    .send()
                    .await?,
            )
            .await?;
            eprintln!(
                "deleted {id} ({} freed)",
                mib(r["freed_bytes"].as_u64().unwrap_or(0))
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

use cbir_common::time::now_ms;
