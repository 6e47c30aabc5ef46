//! Backups through the gateway: a collection exported as a stream, an
//! export imported (refused when its model is not served here), and the
//! online copy of the index's SQLite database (the caller's role is checked
//! by the HTTP and gRPC layers).

use std::time::Duration;

use axum::body::Body;
use cbir_api::export_file::{Decoder, MAGIC};
use cbir_api::v1 as pb;
use futures::{Stream, StreamExt};
use parking_lot::Mutex;

use crate::error::{Error, Result};
use crate::gateway::Gateway;
use crate::upstream::{request, Client, IndexClient};

/// An export, import or backup stream may stay open this long: a large
/// collection over a slow link takes a while, but not forever.
const TRANSFER_DEADLINE: Duration = Duration::from_secs(6 * 3600);

impl Gateway {
    /// A collection's export stream from the index: the header, then its
    /// records in batches.
    pub async fn export_collection(
        &self,
        collection: &str,
    ) -> Result<tonic::Streaming<pb::ExportChunk>> {
        let msg = pb::ExportCollectionRequest {
            collection: self.collection_name(collection)?,
            batch_size: 0,
        };
        self.index_rpc(
            "ExportCollection",
            TRANSFER_DEADLINE,
            msg,
            |mut c, r| async move { c.export_collection(r).await },
        )
        .await
    }

    /// The export stream as the bytes of an export file.
    pub async fn export_file(
        &self,
        collection: &str,
    ) -> Result<impl Stream<Item = Result<Vec<u8>>> + Send + 'static> {
        let chunks = self.export_collection(collection).await?;
        let bytes = chunks.map(|c| {
            c.map(|c| cbir_api::export_file::encode(&c))
                .map_err(|s| Error::upstream(crate::error::Upstream::Index, s))
        });
        Ok(futures::stream::once(async { Ok(MAGIC.to_vec()) }).chain(bytes))
    }

    /// Imports an export stream (header first). Its model must be served
    /// here: the one inference serves now, or one of the model registry.
    /// An error of the stream (a corrupt or truncated file, a client that
    /// went away) cancels the import, and the index drops what it stored.
    pub async fn import_collection<S>(&self, chunks: S) -> Result<pb::ImportCollectionResponse>
    where
        S: Stream<Item = Result<pb::ExportChunk>> + Send + 'static,
    {
        let mut chunks = Box::pin(chunks);
        let first = chunks.next().await.transpose()?.ok_or_else(|| {
            Error::InvalidArgument("the export is empty: it starts with its header".into())
        })?;
        let Some(pb::export_chunk::Chunk::Header(h)) = &first.chunk else {
            return Err(Error::InvalidArgument(
                "the export does not start with its header: the file is corrupt".into(),
            ));
        };
        let model = h
            .collection
            .as_ref()
            .and_then(|c| c.model.clone())
            .unwrap_or_default();
        self.check_model_served(&model).await?;
        let (fail_tx, fail_rx) = tokio::sync::oneshot::channel::<Error>();
        let mut fail_tx = Some(fail_tx);
        let body = async_stream::stream! {
            yield first;
            while let Some(c) = chunks.next().await {
                match c {
                    Ok(c) => yield c,
                    Err(e) => {
                        // Ending here would look like a whole export; the
                        // call is cancelled instead (below).
                        if let Some(tx) = fail_tx.take() {
                            let _ = tx.send(e);
                        }
                        futures::future::pending::<()>().await;
                    }
                }
            }
        };
        // A stream can be sent once: no retry on another replica.
        let body = Mutex::new(Some(body));
        let max = self.max_msg();
        // The first shard imports into the shared database; the others are
        // told of the new collection below.
        let call =
            self.index
                .pool(0)
                .call("ImportCollection", TRANSFER_DEADLINE, false, |ch, t| {
                    let s = body.lock().take();
                    async move {
                        let s = s.ok_or_else(|| {
                            tonic::Status::unavailable(
                                "the import cannot be sent twice: import again",
                            )
                        })?;
                        IndexClient::on(ch, max)
                            .import_collection(request(s, t))
                            .await
                            .map(tonic::Response::into_inner)
                    }
                });
        let r = tokio::select! {
            r = call => r?,
            Ok(e) = fail_rx => return Err(e),
        };
        if let Some(c) = &r.collection {
            self.forget_collection(&c.name);
            self.announce_collection(c, self.admin_timeout()).await?;
        }
        Ok(r)
    }

    /// An export file's bytes (a request body) as export chunks, refused
    /// past `max_import_bytes`; `name` replaces the header's name.
    pub fn import_body(
        &self,
        name: String,
        body: Body,
    ) -> impl Stream<Item = Result<pb::ExportChunk>> + Send + 'static {
        let limit = self.cfg.limits.max_import_bytes;
        let mut decoder = Decoder::new(self.max_msg());
        let mut data = body.into_data_stream();
        async_stream::try_stream! {
            let mut total = 0u64;
            let mut first = true;
            while let Some(bytes) = data.next().await {
                let bytes = bytes.map_err(|e| {
                    Error::InvalidArgument(format!("the export upload broke off: {e}"))
                })?;
                total += bytes.len() as u64;
                if total > limit {
                    Err(Error::TooLarge(format!(
                        "the export is over the limit of {limit} bytes (limits.max_import_bytes)"
                    )))?;
                }
                decoder.push(&bytes);
                while let Some(mut c) = decoder.next_chunk().map_err(Error::InvalidArgument)? {
                    if first {
                        c.target_name.clone_from(&name);
                        first = false;
                    }
                    yield c;
                }
            }
            decoder.finish().map_err(Error::InvalidArgument)?;
        }
    }

    /// Whether searches can embed queries for `model`: it is the model
    /// inference serves now, or the model registry holds it.
    async fn check_model_served(&self, model: &pb::ModelRef) -> Result<()> {
        if model.name.is_empty() {
            return Err(Error::InvalidArgument(
                "the export header names no model: the file is corrupt".into(),
            ));
        }
        let served = self
            .model_info(self.admin_timeout())
            .await?
            .info
            .and_then(|i| i.model);
        if served.as_ref() == Some(model) {
            return Ok(());
        }
        match self.model(model.name.clone(), model.version.clone()).await {
            Ok(_) => Ok(()),
            Err(Error::NotFound(_)) => Err(Error::FailedPrecondition(format!(
                "the export's model {}:{} is not in the model registry, so its features cannot \
                 be searched here: train or register that model first (cbir model list shows \
                 the registry)",
                cbir_api::names::quoted(&model.name),
                cbir_api::names::quoted(&model.version)
            ))),
            Err(e) => Err(e),
        }
    }

    /// The index's online SQLite copy, streamed.
    pub async fn backup_database(&self) -> Result<tonic::Streaming<pb::BackupChunk>> {
        self.index_rpc(
            "BackupDatabase",
            TRANSFER_DEADLINE,
            pb::BackupDatabaseRequest {},
            |mut c, r| async move { c.backup_database(r).await },
        )
        .await
    }
}
