//! Collections whole: an export reads one snapshot of the database page by
//! page; an import fills a collection no name points at and gives it its
//! name only once it is complete (a failure drops it); a backup is an
//! online copy of the SQLite file.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use cbir_api::v1 as pb;
use futures::{Stream, StreamExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{Collection, Index, Record};
use crate::error::{Error, Result};
use crate::store::{now_ms, ExportedImage, NewImage};

/// Exports at once: each holds a database connection for its snapshot.
const MAX_EXPORTS: usize = 2;
/// Records per export chunk when the caller does not say.
const DEFAULT_EXPORT_BATCH: usize = 256;
/// A chunk is cut before it grows past this many bytes of records, far
/// under the gRPC message limit whatever the images' renditions weigh.
const CHUNK_BYTES: usize = 8 << 20;
/// Bytes per message of a backup stream.
const BACKUP_CHUNK: usize = 1 << 20;
/// Version of the export stream this index writes and reads.
pub const EXPORT_VERSION: u32 = 1;

pub(super) struct Transfers {
    exports: Arc<Semaphore>,
    /// One backup at a time: each needs as much disk as the database.
    backups: Arc<Semaphore>,
}

impl Default for Transfers {
    fn default() -> Self {
        Self {
            exports: Arc::new(Semaphore::new(MAX_EXPORTS)),
            backups: Arc::new(Semaphore::new(1)),
        }
    }
}

pub type RecordStream = Pin<Box<dyn Stream<Item = Result<Vec<pb::ImageRecord>>> + Send>>;

/// A collection on its way out: what the header says, then its records.
pub struct Export {
    pub collection: Arc<Collection>,
    /// Images in the snapshot: exactly the records that follow.
    pub count: u64,
    pub batches: RecordStream,
}

/// The header of an import, checked.
struct ImportHeader {
    name: String,
    model_name: String,
    model_version: String,
    dims: u32,
    description: String,
    count: u64,
}

/// The copy of the database made for a backup; the file is removed when
/// this is dropped (the stream ended, or its client went away).
pub struct BackupCopy {
    path: PathBuf,
    pub bytes: u64,
    _permit: OwnedSemaphorePermit,
}

impl Drop for BackupCopy {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.path) {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot remove a backup copy");
        }
    }
}

impl BackupCopy {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The copy's bytes in pieces; the file goes once they are read or the
    /// stream is dropped.
    pub fn into_chunks(self) -> impl Stream<Item = Result<Vec<u8>>> + Send {
        async_stream::try_stream! {
            use tokio::io::AsyncReadExt;
            let mut file = tokio::fs::File::open(self.path())
                .await
                .map_err(|e| Error::Internal(format!("opening the backup copy: {e}")))?;
            loop {
                let mut buf = vec![0; BACKUP_CHUNK];
                let n = file
                    .read(&mut buf)
                    .await
                    .map_err(|e| Error::Internal(format!("reading the backup copy: {e}")))?;
                if n == 0 {
                    break;
                }
                buf.truncate(n);
                yield buf;
            }
            drop(self);
        }
    }
}

fn record_of(e: ExportedImage) -> pb::ImageRecord {
    pb::ImageRecord {
        id: e.image.id,
        content_hash: e.image.content_hash,
        file_name: e.image.file_name,
        path: e.image.path,
        label: e.image.label,
        predicted_class: e.image.predicted_class,
        feature: e.image.feature,
        thumbnail: e.thumbnail,
        created_at_ms: e.created_at_ms,
        class_probabilities: Vec::new(),
        has_source: !e.source.is_empty(),
        source_image: e.source,
    }
}

/// Splits a page into chunks of at most `CHUNK_BYTES` (one record at least).
fn by_size(page: Vec<pb::ImageRecord>) -> Vec<Vec<pb::ImageRecord>> {
    let mut out = Vec::new();
    let (mut cur, mut bytes) = (Vec::new(), 0);
    for r in page {
        let size = r.feature.len() * 4 + r.thumbnail.len() + r.source_image.len() + 512;
        if !cur.is_empty() && bytes + size > CHUNK_BYTES {
            out.push(std::mem::take(&mut cur));
            bytes = 0;
        }
        bytes += size;
        cur.push(r);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

impl Index {
    /// A collection's records, read page by page from one snapshot of the
    /// database, in id order: memory holds one page at a time.
    pub async fn export(&self, name: &str, batch_size: u32) -> Result<Export> {
        let batch = match batch_size as usize {
            0 => DEFAULT_EXPORT_BATCH,
            n if n > self.limits.max_records_per_upsert => {
                return Err(Error::InvalidArgument(format!(
                    "batch_size is {n}, the limit is {} (an import upserts each batch)",
                    self.limits.max_records_per_upsert
                )))
            }
            n => n,
        };
        let permit = self
            .transfers
            .exports
            .clone()
            .try_acquire_owned()
            .map_err(|_| {
                Error::Unavailable(format!(
                    "{MAX_EXPORTS} exports are running already: retry when one is done"
                ))
            })?;
        let collection = self.resolve(name)?;
        let snapshot = self.store.snapshot().await?;
        let id = collection.row.id;
        let count = snapshot.count(id).await?;
        let batches = async_stream::try_stream! {
            let _permit = permit;
            let mut after = 0;
            loop {
                let page = snapshot.page(id, after, batch as u64).await?;
                let Some(last) = page.last() else { break };
                after = last.image.id;
                let full = page.len() == batch;
                for chunk in by_size(page.into_iter().map(record_of).collect()) {
                    yield chunk;
                }
                if !full {
                    break;
                }
            }
        };
        Ok(Export {
            collection,
            count,
            batches: Box::pin(batches),
        })
    }

    /// Creates a collection from an export stream: the header first, then
    /// batches of records. The collection gets its name only once every
    /// record is stored and loaded; on any failure (a bad record, a stream
    /// that ends early or breaks) it is dropped and nothing is left.
    /// Returns the collection, its name and the number of images.
    pub async fn import<S>(&self, mut chunks: S) -> Result<(Arc<Collection>, String, u64)>
    where
        S: Stream<Item = Result<pb::ExportChunk>> + Unpin + Send,
    {
        let header = match chunks.next().await.transpose()? {
            Some(first) => self.import_header(first)?,
            None => {
                return Err(Error::InvalidArgument(
                    "the import stream is empty: it starts with the export's header".into(),
                ))
            }
        };
        if self.resolve(&header.name).is_ok() {
            return Err(Error::AlreadyExists(format!(
                "collection {} exists already: import under another name or delete it first",
                cbir_api::names::quoted(&header.name)
            )));
        }
        let coll = self
            .create_physical(
                &format!("{}.i{}", header.name, now_ms()),
                &header.model_name,
                &header.model_version,
                header.dims,
                &header.description,
            )
            .await?;
        let filled = match self.fill(&coll, header.count, &mut chunks).await {
            Ok(()) => self.name_imported(&coll, &header.name).await,
            Err(e) => Err(e),
        };
        if let Err(e) = filled {
            if let Err(e2) = self.drop_physical(&coll).await {
                tracing::error!(collection = %coll.row.name, error = %e2, "cannot drop a failed import");
            }
            return Err(e);
        }
        Ok((coll, header.name, header.count))
    }

    fn import_header(&self, first: pb::ExportChunk) -> Result<ImportHeader> {
        let Some(pb::export_chunk::Chunk::Header(h)) = first.chunk else {
            return Err(Error::InvalidArgument(
                "an import starts with the export's header chunk".into(),
            ));
        };
        if h.version != EXPORT_VERSION {
            return Err(Error::InvalidArgument(format!(
                "export format version {} is not supported: this index reads version {EXPORT_VERSION}",
                h.version
            )));
        }
        let c = h.collection.ok_or_else(|| {
            Error::InvalidArgument("the export header names no collection".into())
        })?;
        let model = c.model.unwrap_or_default();
        let name = if first.target_name.is_empty() {
            c.name
        } else {
            first.target_name
        };
        self.check_new_collection(&name, &model.name, &model.version, c.dims, &c.description)?;
        Ok(ImportHeader {
            name,
            model_name: model.name,
            model_version: model.version,
            dims: c.dims,
            description: c.description,
            count: h.count,
        })
    }

    /// Stores every batch of the stream in `coll`, then loads it into
    /// memory.
    async fn fill<S>(&self, coll: &Arc<Collection>, count: u64, chunks: &mut S) -> Result<()>
    where
        S: Stream<Item = Result<pb::ExportChunk>> + Unpin + Send,
    {
        let mut imported = 0u64;
        while let Some(chunk) = chunks.next().await.transpose()? {
            let batch = match chunk.chunk {
                Some(pb::export_chunk::Chunk::Images(b)) => b.records,
                Some(pb::export_chunk::Chunk::Header(_)) => {
                    return Err(Error::InvalidArgument(
                        "a second header in the import stream: send one export at a time".into(),
                    ))
                }
                None => {
                    return Err(Error::InvalidArgument(
                        "an export chunk holds neither a header nor images".into(),
                    ))
                }
            };
            if batch.len() > self.limits.max_records_per_upsert {
                return Err(Error::InvalidArgument(format!(
                    "{} records in one export chunk, the limit is {}",
                    batch.len(),
                    self.limits.max_records_per_upsert
                )));
            }
            imported += batch.len() as u64;
            if imported > count {
                return Err(Error::InvalidArgument(format!(
                    "the export holds more images than the {count} its header announces: the file is corrupt"
                )));
            }
            let now = now_ms();
            let mut created = Vec::with_capacity(batch.len());
            let mut images = Vec::with_capacity(batch.len());
            for r in batch {
                created.push(if r.created_at_ms > 0 {
                    r.created_at_ms
                } else {
                    now
                });
                let mut rec = Record {
                    content_hash: r.content_hash,
                    file_name: r.file_name,
                    path: r.path,
                    label: r.label,
                    predicted_class: r.predicted_class,
                    feature: r.feature,
                    thumbnail: r.thumbnail,
                    source: r.source_image,
                };
                self.validate(coll, &mut rec)?;
                images.push(NewImage {
                    content_hash: rec.content_hash,
                    predicted_class: rec.predicted_class,
                    file_name: rec.file_name,
                    path: rec.path,
                    label: rec.label,
                    feature: rec.feature,
                    thumbnail: rec.thumbnail,
                    source: rec.source,
                });
            }
            if !images.is_empty() {
                self.store
                    .insert_imported(coll.row.id, &images, &created)
                    .await?;
            }
        }
        if imported != count {
            return Err(Error::InvalidArgument(format!(
                "the export ended after {imported} of the {count} images its header announces: \
                 the file is truncated, nothing was imported"
            )));
        }
        let fresh = self.load_collection(coll.row.clone()).await?;
        let mem = std::mem::replace(
            &mut *fresh.mem.write(),
            self.new_mem(coll.row.dims as usize),
        );
        *coll.mem.write() = mem;
        let seq = self.store.write_seqs().await?;
        coll.seen_seq.store(
            seq.get(&coll.row.id).copied().unwrap_or(0),
            std::sync::atomic::Ordering::SeqCst,
        );
        Ok(())
    }

    /// Points `name` at the imported collection, unless another collection
    /// took the name while the import ran.
    async fn name_imported(&self, coll: &Arc<Collection>, name: &str) -> Result<()> {
        let _catalog = self.creating.lock().await;
        if self.resolve(name).is_ok() {
            return Err(Error::AlreadyExists(format!(
                "collection {} was created while the import ran: import under another name",
                cbir_api::names::quoted(name)
            )));
        }
        self.store.switch_alias(name, coll.row.id).await?;
        self.catalog
            .write()
            .aliases
            .insert(name.to_string(), coll.row.id);
        Ok(())
    }

    /// An online, consistent copy of the SQLite database in a file beside
    /// it, removed when the returned copy is dropped.
    pub async fn backup(&self) -> Result<BackupCopy> {
        let permit = self
            .transfers
            .backups
            .clone()
            .try_acquire_owned()
            .map_err(|_| {
                Error::Unavailable("a backup is running already: retry when it is done".into())
            })?;
        let path = self.store.backup_copy().await?;
        let bytes = match std::fs::metadata(&path) {
            Ok(m) => m.len(),
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                return Err(Error::Internal(format!("reading the backup copy: {e}")));
            }
        };
        Ok(BackupCopy {
            path,
            bytes,
            _permit: permit,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(source: usize) -> pb::ImageRecord {
        pb::ImageRecord {
            feature: vec![0.0; 1280],
            source_image: vec![0; source],
            ..Default::default()
        }
    }

    #[test]
    fn chunks_stay_under_their_byte_budget() {
        let page: Vec<_> = (0..256).map(|_| rec(100_000)).collect();
        let chunks = by_size(page);
        assert_eq!(chunks.iter().map(Vec::len).sum::<usize>(), 256);
        assert!(chunks.len() > 1);
        for c in &chunks {
            let bytes: usize = c.iter().map(|r| r.source_image.len() + 5120 + 512).sum();
            assert!(bytes <= CHUNK_BYTES, "{bytes}");
        }
        // A record over the budget travels alone.
        let chunks = by_size(vec![rec(1000), rec(CHUNK_BYTES + 1), rec(1000)]);
        assert_eq!(chunks.iter().map(Vec::len).collect::<Vec<_>>(), [1, 1, 1]);
        assert!(by_size(Vec::new()).is_empty());
    }
}
