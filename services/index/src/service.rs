//! gRPC handlers: validate, call the domain, map the answer.

use std::pin::Pin;
use std::sync::Arc;

use cbir_api::v1 as pb;
use cbir_api::v1::index_service_server::IndexService;
use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use crate::duplicates::Duplicates;
use crate::index::{Index, ListRequest, Record};
use crate::rebuild::Rebuilder;

mod convert;

use convert::{batch_error, collection_msg, search_request, search_response};
pub use convert::{filter_from, mode_from, mode_to, sort_from};

#[derive(Clone)]
pub struct IndexGrpc {
    pub index: Arc<Index>,
    pub rebuilder: Arc<Rebuilder>,
    pub duplicates: Arc<Duplicates>,
    pub refresher: Arc<crate::refine::Refresher>,
}

#[tonic::async_trait]
impl IndexService for IndexGrpc {
    async fn create_collection(
        &self,
        request: Request<pb::CreateCollectionRequest>,
    ) -> Result<Response<pb::CreateCollectionResponse>, Status> {
        let r = request.into_inner();
        let model = r
            .model
            .ok_or_else(|| Status::invalid_argument("missing field `model` (name and version)"))?;
        let c = self
            .index
            .create_collection(
                &r.name,
                &model.name,
                &model.version,
                r.dims,
                &r.description,
                r.if_not_exists,
            )
            .await?;
        Ok(Response::new(pb::CreateCollectionResponse {
            collection: Some(collection_msg(&r.name, &c)),
        }))
    }

    async fn get_collection(
        &self,
        request: Request<pb::GetCollectionRequest>,
    ) -> Result<Response<pb::GetCollectionResponse>, Status> {
        let name = request.into_inner().name;
        let c = self.index.resolve(&name)?;
        Ok(Response::new(pb::GetCollectionResponse {
            collection: Some(collection_msg(&name, &c)),
        }))
    }

    async fn list_collections(
        &self,
        _request: Request<pb::ListCollectionsRequest>,
    ) -> Result<Response<pb::ListCollectionsResponse>, Status> {
        Ok(Response::new(pb::ListCollectionsResponse {
            collections: self
                .index
                .collections()
                .iter()
                .map(|(a, c)| collection_msg(a, c))
                .collect(),
        }))
    }

    async fn delete_collection(
        &self,
        request: Request<pb::DeleteCollectionRequest>,
    ) -> Result<Response<pb::DeleteCollectionResponse>, Status> {
        self.index
            .delete_collection(&request.into_inner().name)
            .await?;
        Ok(Response::new(pb::DeleteCollectionResponse {}))
    }

    async fn upsert(
        &self,
        request: Request<pb::UpsertRequest>,
    ) -> Result<Response<pb::UpsertResponse>, Status> {
        let r = request.into_inner();
        let records: Vec<Record> = r
            .records
            .into_iter()
            .map(|x| Record {
                content_hash: x.content_hash,
                file_name: x.file_name,
                path: x.path,
                label: x.label,
                predicted_class: x.predicted_class,
                feature: x.feature,
                thumbnail: x.thumbnail,
                source: x.source_image,
            })
            .collect();
        let hashes: Vec<String> = records
            .iter()
            .map(|r| r.content_hash.to_lowercase())
            .collect();
        let out = self.index.upsert(&r.collection, records, r.replace).await?;
        Ok(Response::new(pb::UpsertResponse {
            results: out
                .into_iter()
                .zip(hashes)
                .map(|(o, content_hash)| pb::UpsertResult {
                    id: o.id,
                    content_hash,
                    created: o.created,
                })
                .collect(),
        }))
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        let r = request.into_inner();
        let deleted = self.index.delete(&r.collection, &r.ids).await?;
        Ok(Response::new(pb::DeleteResponse { deleted }))
    }

    async fn search(
        &self,
        request: Request<pb::IndexSearchRequest>,
    ) -> Result<Response<pb::IndexSearchResponse>, Status> {
        let req = search_request(request.into_inner())?;
        let res = self.index.search(req).await?;
        Ok(Response::new(search_response(res)))
    }

    async fn get_image(
        &self,
        request: Request<pb::GetImageRequest>,
    ) -> Result<Response<pb::GetImageResponse>, Status> {
        let r = request.into_inner();
        let img = self
            .index
            .get_image(&r.collection, r.id, r.include_thumbnail || r.include_source)
            .await?;
        Ok(Response::new(pb::GetImageResponse {
            image: Some(pb::ImageRecord {
                id: img.image.id,
                content_hash: img.image.content_hash,
                file_name: img.image.file_name,
                path: img.image.path,
                label: img.image.label,
                predicted_class: img.image.predicted_class,
                feature: if r.include_feature {
                    img.image.feature
                } else {
                    Vec::new()
                },
                thumbnail: if r.include_thumbnail {
                    img.thumbnail.unwrap_or_default()
                } else {
                    Vec::new()
                },
                created_at_ms: img.created_at_ms,
                class_probabilities: Vec::new(),
                source_image: if r.include_source {
                    img.source.unwrap_or_default()
                } else {
                    Vec::new()
                },
                has_source: img.has_source,
            }),
        }))
    }

    async fn update_label(
        &self,
        request: Request<pb::UpdateLabelRequest>,
    ) -> Result<Response<pb::UpdateLabelResponse>, Status> {
        let r = request.into_inner();
        self.index
            .update_label(&r.collection, r.id, &r.label)
            .await?;
        Ok(Response::new(pb::UpdateLabelResponse {}))
    }

    async fn stats(
        &self,
        request: Request<pb::StatsRequest>,
    ) -> Result<Response<pb::StatsResponse>, Status> {
        let name = request.into_inner().collection;
        let s = self.index.stats(&name)?;
        let c = self.index.resolve(&name)?;
        Ok(Response::new(pb::StatsResponse {
            collection: Some(collection_msg(&name, &c)),
            labels: self
                .index
                .label_counts(&name)?
                .into_iter()
                .map(|l| pb::LabelCount {
                    label: l.label,
                    count: l.count,
                })
                .collect(),
            partitions: s
                .partitions
                .iter()
                .map(|p| pb::PartitionStats {
                    class_index: p.class,
                    class_name: String::new(),
                    count: p.count,
                    bytes_in_memory: p.bytes,
                })
                .collect(),
            bytes_in_memory: s.bytes,
            dims: s.row.dims,
            count: s.count,
            refinement: Some({
                let operation_id = self.refresher.running(c.row.id).unwrap_or_default();
                let mem = c.mem.read();
                pb::Refinement {
                    stale: mem.refine_state().stale as u64,
                    operation_id,
                    bytes: mem.augmented_bytes() as u64,
                }
            }),
        }))
    }

    async fn clear(
        &self,
        request: Request<pb::ClearRequest>,
    ) -> Result<Response<pb::ClearResponse>, Status> {
        let removed = self.index.clear(&request.into_inner().collection).await?;
        Ok(Response::new(pb::ClearResponse { removed }))
    }

    async fn rebuild(
        &self,
        request: Request<pb::RebuildRequest>,
    ) -> Result<Response<pb::RebuildResponse>, Status> {
        let r = request.into_inner();
        let model = r
            .model
            .ok_or_else(|| Status::invalid_argument("missing field `model` (name and version)"))?;
        let operation_id = self
            .rebuilder
            .start(self.index.clone(), r.collection, model.name, model.version)
            .await?;
        Ok(Response::new(pb::RebuildResponse { operation_id }))
    }

    type WatchOperationStream =
        Pin<Box<dyn Stream<Item = Result<pb::OperationProgress, Status>> + Send + 'static>>;

    async fn watch_operation(
        &self,
        request: Request<pb::WatchOperationRequest>,
    ) -> Result<Response<Self::WatchOperationStream>, Status> {
        use futures::StreamExt;
        let id = request.into_inner().operation_id;
        // A rebuild or a refresh lives in the memory of the replica running
        // it; a near-duplicates run in the database, for every replica.
        let mut rx = match self.rebuilder.watch(&id) {
            Ok(rx) => rx,
            Err(crate::Error::NotFound(_)) if self.refresher.watch(&id).is_some() => {
                self.refresher.watch(&id).expect("checked")
            }
            Err(crate::Error::NotFound(msg)) => {
                let first = self
                    .duplicates
                    .progress(&id)
                    .await?
                    .ok_or_else(|| Status::not_found(msg))?;
                let stream = self
                    .duplicates
                    .watch(first)
                    .map(|r| r.map_err(Status::from));
                return Ok(Response::new(Box::pin(stream)));
            }
            Err(e) => return Err(e.into()),
        };
        let stream = async_stream::stream! {
            loop {
                let p = rx.borrow_and_update().clone();
                let done = p.state >= pb::operation_progress::State::Succeeded as i32;
                yield Ok(p);
                if done || rx.changed().await.is_err() {
                    break;
                }
            }
        };
        Ok(Response::new(Box::pin(stream)))
    }

    async fn refine_collection(
        &self,
        request: Request<pb::RefineCollectionRequest>,
    ) -> Result<Response<pb::RefineCollectionResponse>, Status> {
        let operation_id = self
            .refresher
            .request(&request.into_inner().collection)
            .await?;
        Ok(Response::new(pb::RefineCollectionResponse { operation_id }))
    }

    async fn neighbours(
        &self,
        request: Request<pb::NeighboursRequest>,
    ) -> Result<Response<pb::NeighboursResponse>, Status> {
        let r = request.into_inner();
        let vectors = r.queries.into_iter().map(|q| q.vector).collect();
        let lists = self
            .index
            .neighbours(r.collection_id, r.k as usize, vectors)
            .await?;
        Ok(Response::new(pb::NeighboursResponse {
            lists: lists
                .into_iter()
                .map(|l| pb::NeighbourList {
                    neighbours: l
                        .into_iter()
                        .map(|(id, dot)| pb::Neighbour { id, dot })
                        .collect(),
                })
                .collect(),
        }))
    }

    async fn mark_stale(
        &self,
        request: Request<pb::MarkStaleRequest>,
    ) -> Result<Response<pb::MarkStaleResponse>, Status> {
        let r = request.into_inner();
        let changes = r
            .changes
            .into_iter()
            .map(|c| {
                let near = c.neighbours.into_iter().map(|n| (n.id, n.dot)).collect();
                (c.id, near)
            })
            .collect();
        let marked = self.index.mark_stale(r.collection_id, changes).await?;
        Ok(Response::new(pb::MarkStaleResponse { marked }))
    }

    async fn save_index_job(
        &self,
        request: Request<pb::SaveIndexJobRequest>,
    ) -> Result<Response<pb::SaveIndexJobResponse>, Status> {
        let r = request.into_inner();
        let job = r
            .job
            .ok_or_else(|| Status::invalid_argument("missing field `job`"))?;
        crate::jobs::validate(&job, r.lease_ms)?;
        self.index.store().save_job(&job, r.lease_ms).await?;
        Ok(Response::new(pb::SaveIndexJobResponse {}))
    }

    async fn load_index_job(
        &self,
        request: Request<pb::LoadIndexJobRequest>,
    ) -> Result<Response<pb::LoadIndexJobResponse>, Status> {
        let id = request.into_inner().id;
        let job = self
            .index
            .store()
            .load_job(&id)
            .await?
            .ok_or_else(|| Status::not_found(format!("no indexing job {id:?}")))?;
        Ok(Response::new(pb::LoadIndexJobResponse { job: Some(job) }))
    }

    async fn list_index_jobs(
        &self,
        _request: Request<pb::ListIndexJobsRequest>,
    ) -> Result<Response<pb::ListIndexJobsResponse>, Status> {
        Ok(Response::new(pb::ListIndexJobsResponse {
            jobs: self.index.store().list_jobs().await?,
        }))
    }

    async fn list_images(
        &self,
        request: Request<pb::ListImagesRequest>,
    ) -> Result<Response<pb::ListImagesResponse>, Status> {
        let r = request.into_inner();
        let page = self
            .index
            .list_images(ListRequest {
                sort: sort_from(r.sort)?,
                collection: r.collection,
                descending: r.descending,
                page_size: r.page_size,
                cursor: r.cursor,
                filter: filter_from(r.filter),
                include_thumbnail: r.include_thumbnail,
            })
            .await?;
        Ok(Response::new(pb::ListImagesResponse {
            images: page
                .images
                .into_iter()
                .map(|i| pb::ImageRecord {
                    id: i.id,
                    content_hash: i.content_hash,
                    file_name: i.file_name,
                    path: i.path,
                    label: i.label,
                    predicted_class: i.predicted_class,
                    thumbnail: i.thumbnail.unwrap_or_default(),
                    created_at_ms: i.created_at_ms,
                    has_source: i.has_source,
                    ..Default::default()
                })
                .collect(),
            next_cursor: page.next_cursor,
            total: page.total,
        }))
    }

    async fn search_batch(
        &self,
        request: Request<pb::IndexSearchBatchRequest>,
    ) -> Result<Response<pb::IndexSearchBatchResponse>, Status> {
        let queries = request.into_inner().queries;
        self.index.check_search_batch(queries.len())?;
        // A query that cannot even be read fails its own item only.
        let mut items: Vec<Option<pb::IndexSearchBatchItem>> = Vec::with_capacity(queries.len());
        let mut valid = Vec::new();
        for q in queries {
            match search_request(q) {
                Ok(r) => {
                    valid.push(r);
                    items.push(None);
                }
                Err(status) => items.push(Some(batch_error(&status))),
            }
        }
        let mut answers = self.index.search_batch(valid).await?.into_iter();
        let items = items
            .into_iter()
            .map(|item| match item {
                Some(failed) => failed,
                None => match answers.next() {
                    Some(Ok(res)) => pb::IndexSearchBatchItem {
                        response: Some(search_response(res)),
                        error: None,
                    },
                    Some(Err(e)) => batch_error(&Status::from(e)),
                    None => batch_error(&Status::internal("a batch query went unanswered")),
                },
            })
            .collect();
        Ok(Response::new(pb::IndexSearchBatchResponse { items }))
    }

    async fn find_duplicates(
        &self,
        request: Request<pb::FindDuplicatesRequest>,
    ) -> Result<Response<pb::FindDuplicatesResponse>, Status> {
        let r = request.into_inner();
        let operation_id = self
            .duplicates
            .start(&r.collection, r.min_similarity)
            .await?;
        Ok(Response::new(pb::FindDuplicatesResponse { operation_id }))
    }

    async fn list_duplicates(
        &self,
        request: Request<pb::ListDuplicatesRequest>,
    ) -> Result<Response<pb::ListDuplicatesResponse>, Status> {
        Ok(Response::new(
            self.duplicates
                .list(&request.into_inner().collection)
                .await?,
        ))
    }

    type ExportCollectionStream =
        Pin<Box<dyn Stream<Item = Result<pb::ExportChunk, Status>> + Send + 'static>>;

    async fn export_collection(
        &self,
        request: Request<pb::ExportCollectionRequest>,
    ) -> Result<Response<Self::ExportCollectionStream>, Status> {
        let r = request.into_inner();
        let export = self.index.export(&r.collection, r.batch_size).await?;
        let mut collection = collection_msg(&r.collection, &export.collection);
        collection.count = export.count;
        let header = pb::ExportChunk {
            chunk: Some(pb::export_chunk::Chunk::Header(pb::ExportHeader {
                version: crate::index::EXPORT_VERSION,
                collection: Some(collection),
                count: export.count,
            })),
            target_name: String::new(),
        };
        let batches = export.batches.map(|b| {
            b.map(|records| pb::ExportChunk {
                chunk: Some(pb::export_chunk::Chunk::Images(pb::ImageBatch { records })),
                target_name: String::new(),
            })
            .map_err(Status::from)
        });
        Ok(Response::new(Box::pin(
            futures::stream::once(async { Ok(header) }).chain(batches),
        )))
    }

    async fn import_collection(
        &self,
        request: Request<tonic::Streaming<pb::ExportChunk>>,
    ) -> Result<Response<pb::ImportCollectionResponse>, Status> {
        let chunks = request.into_inner().map(|c| {
            c.map_err(|s| {
                crate::Error::Unavailable(format!(
                    "the import stream broke ({}): nothing was imported",
                    s.message()
                ))
            })
        });
        // A task of its own: a client that goes away mid-import cancels this
        // handler, and the import must still see its stream break and drop
        // the half-made collection.
        let index = self.index.clone();
        let (coll, name, imported) = tokio::spawn(async move { index.import(chunks).await })
            .await
            .map_err(|e| Status::internal(format!("import task: {e}")))??;
        Ok(Response::new(pb::ImportCollectionResponse {
            collection: Some(collection_msg(&name, &coll)),
            imported,
        }))
    }

    type BackupDatabaseStream =
        Pin<Box<dyn Stream<Item = Result<pb::BackupChunk, Status>> + Send + 'static>>;

    async fn backup_database(
        &self,
        _request: Request<pb::BackupDatabaseRequest>,
    ) -> Result<Response<Self::BackupDatabaseStream>, Status> {
        let copy = self.index.backup().await?;
        let total_bytes = copy.bytes;
        let chunks = copy.into_chunks().map(move |c| {
            c.map(|data| pb::BackupChunk { data, total_bytes })
                .map_err(Status::from)
        });
        Ok(Response::new(Box::pin(chunks)))
    }
}
