//! `cbir collection export|import` and `cbir backup`: whole collections as
//! export files (the format of `cbir_api::export_file`) and the copy of the
//! index's SQLite database, over the gateway's public gRPC API. Files are
//! streamed both ways and written under a temporary name first, so that a
//! broken transfer never leaves a file that looks whole.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use cbir_api::export_file::{encode, Decoder, MAGIC};
use cbir_api::v1 as pb;
use futures::StreamExt;

use crate::client::{connect, status_error};
use crate::progress;

#[derive(clap::Subcommand)]
pub enum CollectionCommand {
    /// Write collection NAME whole to FILE: its model, and every image's
    /// feature, thumbnail, rendition, label, path and creation time.
    Export { name: String, file: PathBuf },
    /// Create a collection from an export FILE, named as in the file unless
    /// --name says otherwise; refused when that name exists.
    Import {
        file: PathBuf,
        #[arg(long)]
        name: Option<String>,
    },
}

/// Bytes read from an export file at a time.
const READ_PIECE: usize = 1 << 20;
const BAR: &str = "{msg} [{bar:40}] {pos}/{len} images ({per_sec}, {eta})";

pub async fn collection(url: &str, command: CollectionCommand) -> anyhow::Result<ExitCode> {
    match command {
        CollectionCommand::Export { name, file } => export(url, &name, &file).await,
        CollectionCommand::Import { file, name } => import(url, &file, name).await,
    }
}

/// `FILE.part` beside `file`, renamed to `file` once complete.
fn part_of(file: &Path) -> PathBuf {
    let mut p = file.as_os_str().to_owned();
    p.push(".part");
    PathBuf::from(p)
}

fn create(file: &Path) -> anyhow::Result<(PathBuf, std::io::BufWriter<std::fs::File>)> {
    let part = part_of(file);
    let f = std::fs::File::create(&part)
        .with_context(|| format!("cannot create {}", part.display()))?;
    Ok((part, std::io::BufWriter::with_capacity(READ_PIECE, f)))
}

fn finish(part: &Path, out: std::io::BufWriter<std::fs::File>, file: &Path) -> anyhow::Result<u64> {
    let f = out
        .into_inner()
        .map_err(|e| e.into_error())
        .with_context(|| format!("cannot write {}", part.display()))?;
    f.sync_all()
        .with_context(|| format!("cannot write {}", part.display()))?;
    let bytes = f.metadata().map(|m| m.len()).unwrap_or(0);
    std::fs::rename(part, file)
        .with_context(|| format!("cannot rename {} to {}", part.display(), file.display()))?;
    Ok(bytes)
}

async fn export(url: &str, name: &str, file: &Path) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let mut client = connect(url).await?;
    let mut stream = client
        .export_collection(pb::ExportCollectionRequest {
            collection: name.to_string(),
            batch_size: 0,
        })
        .await
        .map_err(|s| status_error("export", s))?
        .into_inner();
    let (part, mut out) = create(file)?;
    let written = async {
        out.write_all(MAGIC)?;
        let mut bar = None;
        while let Some(chunk) = stream
            .next()
            .await
            .transpose()
            .map_err(|s| status_error("export", s))?
        {
            match &chunk.chunk {
                Some(pb::export_chunk::Chunk::Header(h)) => {
                    let b = progress::bar(h.count, BAR);
                    b.set_message(format!("exporting {name}"));
                    bar = Some(b);
                }
                Some(pb::export_chunk::Chunk::Images(b)) => {
                    if let Some(bar) = &bar {
                        bar.inc(b.records.len() as u64);
                    }
                }
                None => {}
            }
            out.write_all(&encode(&chunk))?;
        }
        let images = bar.as_ref().map_or(0, |b| b.position());
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        anyhow::Ok(images)
    }
    .await;
    let images = match written {
        Ok(n) => n,
        Err(e) => {
            drop(out);
            let _ = std::fs::remove_file(&part);
            return Err(e).with_context(|| format!("cannot export {name} to {}", file.display()));
        }
    };
    let bytes = finish(&part, out, file)?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "exported {images} images of {name} to {} ({bytes} bytes) in {secs:.1} s ({:.0} images/s)",
        file.display(),
        images as f64 / secs.max(1e-9)
    );
    Ok(ExitCode::SUCCESS)
}

/// Reads an export file on a thread of its own and sends its chunks, or
/// the reason it cannot be read, in order.
fn read_chunks(
    file: PathBuf,
    max_chunk: usize,
) -> tokio::sync::mpsc::Receiver<Result<pb::ExportChunk, String>> {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    std::thread::spawn(move || {
        let read = || -> Result<(), String> {
            let mut f = std::fs::File::open(&file)
                .map_err(|e| format!("cannot open {}: {e}", file.display()))?;
            let mut decoder = Decoder::new(max_chunk);
            let mut buf = vec![0; READ_PIECE];
            loop {
                let n = f
                    .read(&mut buf)
                    .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
                if n == 0 {
                    return decoder.finish();
                }
                decoder.push(&buf[..n]);
                while let Some(c) = decoder.next_chunk()? {
                    if tx.blocking_send(Ok(c)).is_err() {
                        return Ok(());
                    }
                }
            }
        };
        if let Err(e) = read() {
            let _ = tx.blocking_send(Err(e));
        }
    });
    rx
}

async fn import(url: &str, file: &Path, name: Option<String>) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let mut client = connect(url).await?;
    let mut rx = read_chunks(
        file.to_path_buf(),
        cbir_common::grpc::DEFAULT_MAX_MESSAGE_BYTES,
    );
    // The file's first chunk names the collection and its size.
    let mut first = match rx.recv().await {
        Some(Ok(c)) => c,
        Some(Err(e)) => anyhow::bail!("{e}"),
        None => anyhow::bail!("{} is empty", file.display()),
    };
    let Some(pb::export_chunk::Chunk::Header(h)) = &first.chunk else {
        anyhow::bail!(
            "{} does not start with an export header: it is corrupt",
            file.display()
        );
    };
    let target = name.unwrap_or_else(|| h.collection.clone().unwrap_or_default().name);
    let bar = progress::bar(h.count, BAR);
    bar.set_message(format!("importing {target}"));
    first.target_name.clone_from(&target);
    let (fail_tx, fail_rx) = tokio::sync::oneshot::channel::<String>();
    let state = (Some(first), rx, Some(fail_tx), bar.clone());
    let chunks = futures::stream::unfold(state, |(first, mut rx, mut fail, sent)| async move {
        if let Some(f) = first {
            return Some((f, (None, rx, fail, sent)));
        }
        match rx.recv().await? {
            Ok(c) => {
                if let Some(pb::export_chunk::Chunk::Images(b)) = &c.chunk {
                    sent.inc(b.records.len() as u64);
                }
                Some((c, (None, rx, fail, sent)))
            }
            Err(e) => {
                // Ending the stream would look like a whole file: the call
                // is cancelled instead, and the import undone.
                if let Some(tx) = fail.take() {
                    let _ = tx.send(e);
                }
                futures::future::pending::<()>().await;
                None
            }
        }
    });
    let r = tokio::select! {
        r = client.import_collection(chunks) => r.map_err(|s| status_error("import", s)),
        Ok(e) = fail_rx => Err(anyhow::anyhow!("{e}")),
    };
    bar.finish_and_clear();
    let r = r
        .with_context(|| format!("cannot import {} into {target}", file.display()))?
        .into_inner();
    let secs = started.elapsed().as_secs_f64();
    println!(
        "imported {} images into {} in {secs:.1} s ({:.0} images/s)",
        r.imported,
        r.collection.map(|c| c.name).unwrap_or(target),
        r.imported as f64 / secs.max(1e-9)
    );
    Ok(ExitCode::SUCCESS)
}

/// `cbir backup FILE`: the index's SQLite database, copied online.
pub async fn backup(url: &str, file: &Path) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let mut client = connect(url).await?;
    let mut stream = client
        .backup_database(pb::BackupDatabaseRequest {})
        .await
        .map_err(|s| status_error("backup", s))?
        .into_inner();
    let (part, mut out) = create(file)?;
    let written = async {
        let mut bar = None;
        while let Some(c) = stream
            .next()
            .await
            .transpose()
            .map_err(|s| status_error("backup", s))?
        {
            let b = bar.get_or_insert_with(|| {
                progress::bar(
                    c.total_bytes,
                    "backup [{bar:40}] {bytes}/{total_bytes} ({bytes_per_sec})",
                )
            });
            b.inc(c.data.len() as u64);
            out.write_all(&c.data)?;
        }
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        anyhow::Ok(())
    }
    .await;
    if let Err(e) = written {
        drop(out);
        let _ = std::fs::remove_file(&part);
        return Err(e).with_context(|| format!("cannot back up to {}", file.display()));
    }
    let bytes = finish(&part, out, file)?;
    println!(
        "backed up the index database to {} ({bytes} bytes) in {:.1} s",
        file.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}
